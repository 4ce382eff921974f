//! The PostgreSQL event store, for scale: many keyledger instances on one database
//! (DESIGN.md §5).
//!
//! Global order uses a transaction-id fence (ADR 0005): an event's position is
//! `xid * 65536 + index`, and readers only read below `pg_snapshot_xmin(pg_current_snapshot())`,
//! so a catch-up reader never skips an event that commits later.
//!
//! An append costs at most two round trips: one query reads the stream head (last version and
//! hash) and the command id's earlier result (skipped for a new stream or a cached head); one
//! statement inserts the events and the command id, shared with the appends waiting at the same
//! time ([`group`]: group commit). The `(stream_id, stream_version)` unique constraint settles
//! races; a violation is classified by its error kind and re-read as a typed conflict or an
//! idempotent repeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::import::{check_import, imported_commands};
use keyledger_store::row::{EnvelopeColumns, to_i64};
use keyledger_store::subscribe::{CommitSignal, PollConfig, poll_subscription};
use keyledger_store::{
    AppendResult, EventStore, EventStream, ImportBatch, KeyRing, NewEvent, StoreError, StreamHead,
    VerifyReport, VerifyScope,
};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Postgres, Row as _};

mod audit_tree;
mod group;
mod listen;
pub mod projections;
#[cfg(feature = "test-hooks")]
pub mod testing;

pub use projections::{LEASE_CHECK, Lease, PgProjections, lease_key, run_leading, run_led, task_lease_key};

/// The embedded migrations (`migrations/postgres/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// How to connect. The defaults are those of `keyledger serve` (`store.max_connections`,
/// `store.acquire_timeout`).
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool. Every user takes one at a time and never waits for another
    /// while it holds one (ADR 0015), so any size makes progress; the size sets throughput.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
    /// Live subscription polling (commits of other instances, and events held behind the
    /// fence by an open transaction).
    pub poll: PollConfig,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            // Well inside a request's 30 s, so a starved request is answered 503
            // `store_unavailable` (retry) instead of running into the request timeout.
            acquire_timeout: Duration::from_secs(5),
            poll: PollConfig::default(),
        }
    }
}

/// An event store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The committer tasks that appends are queued to (group commit).
    group: group::GroupCommit,
    heads: HeadCache,
    ring: Arc<KeyRing>,
    signal: CommitSignal,
    poll: PollConfig,
    /// Commit notifications to and from other instances; stop with the last handle.
    _notifications: Arc<listen::Notifications>,
}

/// A pool that gave no connection in time is [`StoreError::Unavailable`] (HTTP 503); anything
/// else is a backend failure.
fn backend(e: sqlx::Error) -> StoreError {
    if is_no_connection(&e) {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::backend(e)
    }
}

/// Whether `e` means that no connection could be had (nothing was sent to the database).
pub(crate) fn is_no_connection(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

const HEAD_SQL: &str = "SELECT e.stream_version, e.hash, \
       c.stream_id AS c_stream, c.first_version, c.last_version, c.first_position, c.last_position \
     FROM (SELECT 1) AS one \
     LEFT JOIN LATERAL (SELECT stream_version, hash FROM events WHERE stream_id = $1 \
                        ORDER BY stream_version DESC LIMIT 1) AS e ON true \
     LEFT JOIN commands AS c ON c.command_id = $2";

const INSERT_SQL: &str = "WITH ins AS ( \
       INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
         occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash) \
       SELECT (pg_current_xact_id()::text::bigint << 16) + t.ord, t.event_id, $14, t.stream_version, \
         t.event_type, t.schema_version, t.occurred_at, t.actor, t.command_id, t.correlation_id, \
         t.causation_id, t.payload, t.prev_hash, t.hash \
       FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[], \
                   $8::text[], $9::text[], $10::text[], $11::text[], $12::text[]) WITH ORDINALITY \
         AS t(event_id, stream_version, event_type, schema_version, occurred_at, actor, command_id, \
              correlation_id, causation_id, payload, prev_hash, hash, ord) \
       RETURNING position), \
     cmd AS ( \
       INSERT INTO commands (command_id, stream_id, first_version, last_version, first_position, last_position) \
       SELECT $13, $14, $15, $16, min(position), max(position) FROM ins HAVING $13::text IS NOT NULL \
       RETURNING 1) \
     SELECT min(position) AS first_position, max(position) AS last_position, \
            (SELECT count(*) FROM cmd) AS commands FROM ins";

/// An import batch: envelopes as they are, several streams, at the positions of the append
/// scheme (`$1` is the transaction id, read in the same transaction, so the `xid` column's
/// default and the positions agree).
const IMPORT_SQL: &str = "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
       schema_version, occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash) \
     SELECT ($1::bigint << 16) + t.ord, t.event_id, t.stream_id, t.stream_version, t.event_type, \
       t.schema_version, t.occurred_at, t.actor, t.command_id, t.correlation_id, t.causation_id, t.payload, \
       t.prev_hash, t.hash \
     FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::text[], $8::text[], \
                 $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[]) WITH ORDINALITY \
       AS t(event_id, stream_id, stream_version, event_type, schema_version, occurred_at, actor, command_id, \
            correlation_id, causation_id, payload, prev_hash, hash, ord)";

/// The command ids of an import batch. A known id is extended only when the batch continues
/// its append (see `keyledger_store::import::imported_commands`).
const IMPORT_COMMANDS_SQL: &str = "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
       first_position, last_position) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) \
     ON CONFLICT (command_id) DO UPDATE SET last_version = EXCLUDED.last_version, \
       last_position = EXCLUDED.last_position \
     WHERE commands.stream_id = EXCLUDED.stream_id AND commands.last_version + 1 = EXCLUDED.first_version";

/// The heads of several streams.
const HEADS_SQL: &str = "SELECT DISTINCT ON (stream_id) stream_id, stream_version, hash FROM events \
     WHERE stream_id = ANY($1) ORDER BY stream_id, stream_version DESC";

/// One event, no command id: the common single-event append, without array encoding.
const INSERT_ONE_SQL: &str = "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
       schema_version, occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash) \
     VALUES ((pg_current_xact_id()::text::bigint << 16) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
       $12, $13) RETURNING position";

const SELECT_EVENTS: &str = "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
     occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash FROM events";

/// The heads of streams this process appended to. A head is only a hint: an append that trusts
/// it inserts directly (one round trip), and the `(stream_id, stream_version)` unique constraint
/// catches a stale one. Stored rows never change, so a cached `(version, hash)` is right
/// whenever version + 1 is still free.
#[derive(Debug, Clone, Default)]
struct HeadCache(Arc<Mutex<HashMap<StreamId, StreamHead>>>);

/// Heads kept before the cache is cleared.
const HEAD_CACHE_LIMIT: usize = 100_000;

impl HeadCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, StreamHead>> {
        // A map of hints: a poisoned lock holds nothing that could be inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn get(&self, stream: &StreamId) -> Option<StreamHead> {
        self.lock().get(stream).cloned()
    }
    fn set(&self, stream: StreamId, head: StreamHead) {
        let mut map = self.lock();
        if map.len() >= HEAD_CACHE_LIMIT {
            map.clear();
        }
        map.insert(stream, head);
    }
    fn forget(&self, stream: &StreamId) {
        self.lock().remove(stream);
    }
}

/// What the head query found.
struct Head {
    head: StreamHead,
    previous: Option<AppendResult>,
}

impl PostgresStore {
    /// Connects to `url` and runs the migrations.
    pub async fn connect(url: &str, ring: Arc<KeyRing>) -> Result<Self, StoreError> {
        Self::connect_with(url, ring, PostgresOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        ring: Arc<KeyRing>,
        options: PostgresOptions,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await
            .map_err(backend)?;
        Self::from_pool(pool, ring, options.poll).await
    }

    /// Uses an existing pool; runs the migrations.
    pub async fn from_pool(pool: PgPool, ring: Arc<KeyRing>, poll: PollConfig) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => backend(e),
            other => StoreError::backend(other),
        })?;
        let signal = CommitSignal::default();
        let notifications = Arc::new(listen::spawn(&pool, signal.clone()));
        Ok(Self {
            group: group::GroupCommit::start(pool.clone()),
            pool,
            heads: HeadCache::default(),
            ring,
            signal,
            poll,
            _notifications: notifications,
        })
    }

    /// The same database seen through another key ring.
    pub fn with_key_ring(&self, ring: Arc<KeyRing>) -> Self {
        Self { ring, ..self.clone() }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn head<'e>(
        &self,
        exec: impl Executor<'e, Database = Postgres>,
        stream: &str,
        command_id: Option<&CommandId>,
    ) -> Result<Head, StoreError> {
        let r = sqlx::query(HEAD_SQL)
            .bind(stream)
            .bind(command_id.map(CommandId::as_str))
            .fetch_one(exec)
            .await
            .map_err(backend)?;
        let version: Option<i64> = r.try_get("stream_version").map_err(backend)?;
        let head = match version {
            Some(v) => StreamHead {
                version: StreamVersion(non_negative(v)),
                hash: r.try_get("hash").map_err(backend)?,
            },
            None => StreamHead::empty(),
        };
        let c_stream: Option<String> = r.try_get("c_stream").map_err(backend)?;
        let previous = match c_stream {
            None => None,
            Some(s) => {
                let get = |c: &str| -> Result<u64, StoreError> {
                    Ok(non_negative(r.try_get::<i64, _>(c).map_err(backend)?))
                };
                Some(AppendResult {
                    stream: s
                        .parse()
                        .map_err(|e| StoreError::backend(format!("commands.stream_id: {e}")))?,
                    first_version: StreamVersion(get("first_version")?),
                    last_version: StreamVersion(get("last_version")?),
                    first_position: GlobalPosition(get("first_position")?),
                    last_position: GlobalPosition(get("last_position")?),
                    repeat: false,
                })
            }
        };
        Ok(Head { head, previous })
    }

    async fn insert<'e>(
        exec: impl Executor<'e, Database = Postgres>,
        stream: StreamId,
        prepared: &[StoredEvent],
        command_id: Option<&CommandId>,
    ) -> Result<AppendResult, sqlx::Error> {
        if let ([one], None) = (prepared, command_id) {
            let c = EnvelopeColumns::from_event(one).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            let position: i64 = sqlx::query_scalar(INSERT_ONE_SQL)
                .bind(c.event_id)
                .bind(c.stream_id)
                .bind(c.stream_version)
                .bind(c.event_type)
                .bind(i32::try_from(c.schema_version).unwrap_or(i32::MAX))
                .bind(c.occurred_at)
                .bind(c.actor)
                .bind(c.command_id)
                .bind(c.correlation_id)
                .bind(c.causation_id)
                .bind(c.payload)
                .bind(c.prev_hash)
                .bind(c.hash)
                .fetch_one(exec)
                .await?;
            let position = GlobalPosition(non_negative(position));
            return Ok(AppendResult {
                stream,
                first_version: one.stream_version,
                last_version: one.stream_version,
                first_position: position,
                last_position: position,
                repeat: false,
            });
        }
        let cols: Vec<EnvelopeColumns> = prepared
            .iter()
            .map(EnvelopeColumns::from_event)
            .collect::<Result<_, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let texts = |f: fn(&EnvelopeColumns) -> String| cols.iter().map(f).collect::<Vec<String>>();
        // Invariant: prepare_append refuses an empty batch, so both ends exist.
        let (first, last) = (&prepared[0], &prepared[prepared.len() - 1]);
        let r = bind_envelope_columns(sqlx::query(INSERT_SQL).bind(texts(|c| c.event_id.clone())), &cols)
            .bind(command_id.map(CommandId::as_str))
            .bind(stream.to_string())
            .bind(to_i64(first.stream_version.0).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
            .bind(to_i64(last.stream_version.0).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
            .fetch_one(exec)
            .await?;
        let first_position: i64 = r.try_get("first_position")?;
        let last_position: i64 = r.try_get("last_position")?;
        Ok(AppendResult {
            stream,
            first_version: first.stream_version,
            last_version: last.stream_version,
            first_position: GlobalPosition(non_negative(first_position)),
            last_position: GlobalPosition(non_negative(last_position)),
            repeat: false,
        })
    }

    /// After a unique violation: the command id won by a concurrent repeat, or a conflict.
    async fn settle_race(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        command_id: Option<&CommandId>,
    ) -> Result<AppendResult, StoreError> {
        let again = self.head(&self.pool, &stream.to_string(), command_id).await?;
        if let (Some(c), Some(previous)) = (command_id, again.previous) {
            return previous.for_repeat(c, stream);
        }
        Err(StoreError::Conflict {
            stream,
            expected,
            actual: again.head.version,
        })
    }

    /// Test hook: appends inside a transaction that stays open (holding its xid, below the
    /// fence of every reader) until `release` fires, then commits. `inserted` fires once the
    /// rows are written.
    #[cfg(feature = "test-hooks")]
    pub async fn append_holding(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        inserted: tokio::sync::oneshot::Sender<()>,
        release: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<AppendResult, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let found = self.head(&mut *tx, &stream.to_string(), None).await?;
        let prepared =
            keyledger_store::prepare_append(&self.ring, stream, expected, &found.head, events, None)?;
        let result = Self::insert(&mut *tx, stream, &prepared, None)
            .await
            .map_err(backend)?;
        let _ = inserted.send(());
        let _ = release.await;
        tx.commit().await.map_err(backend)?;
        self.signal.notify();
        Ok(result)
    }
}

impl PostgresStore {
    /// The stored heads of `streams` (streams with no event are left out).
    async fn heads<'e>(
        exec: impl Executor<'e, Database = Postgres>,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, StreamHead>, StoreError> {
        let names: Vec<String> = streams.iter().map(StreamId::to_string).collect();
        let rows = sqlx::query(HEADS_SQL)
            .bind(names)
            .fetch_all(exec)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let stream: String = r.try_get("stream_id").map_err(backend)?;
                let stream = stream
                    .parse()
                    .map_err(|e| StoreError::backend(format!("events.stream_id: {e}")))?;
                let head = StreamHead {
                    version: StreamVersion(non_negative(r.try_get("stream_version").map_err(backend)?)),
                    hash: r.try_get("hash").map_err(backend)?,
                };
                Ok((stream, head))
            })
            .collect()
    }

    /// One import batch in one transaction. A unique violation (a concurrent writer took a
    /// version, or an event id exists) is `Err(Ok(..))` so the caller can name the event.
    async fn import_tx(
        &self,
        events: &mut [StoredEvent],
        streams: &[StreamId],
        batch: ImportBatch,
    ) -> Result<(), Result<sqlx::Error, StoreError>> {
        let mut tx = self.pool.begin().await.map_err(|e| Err(backend(e)))?;
        if batch == ImportBatch::First {
            let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events)")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Err(backend(e)))?;
            if any {
                return Err(Err(StoreError::ImportTargetNotEmpty));
            }
        }
        let heads = Self::heads(&mut *tx, streams).await.map_err(Err)?;
        check_import(heads, events).map_err(Err)?;
        if events.is_empty() {
            return Ok(());
        }
        // The append scheme: position = xid << 16 + index in the transaction (1-based).
        let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Err(backend(e)))?;
        let cols: Vec<EnvelopeColumns> = events
            .iter()
            .map(EnvelopeColumns::from_event)
            .collect::<Result<_, _>>()
            .map_err(Err)?;
        let texts = |f: fn(&EnvelopeColumns) -> String| cols.iter().map(f).collect::<Vec<String>>();
        let query = sqlx::query(IMPORT_SQL)
            .bind(xid)
            .bind(texts(|c| c.event_id.clone()))
            .bind(texts(|c| c.stream_id.clone()));
        bind_envelope_columns(query, &cols)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Ok(e)
                } else {
                    Err(backend(e))
                }
            })?;
        for (i, e) in events.iter_mut().enumerate() {
            e.global_position = GlobalPosition(non_negative(
                (xid << 16) + i64::try_from(i).expect("a Vec index fits in i64") + 1,
            ));
        }
        let commands = imported_commands(events);
        if !commands.is_empty() {
            let num = |f: fn(&AppendResult) -> u64| {
                commands
                    .iter()
                    .map(|(_, r)| to_i64(f(r)))
                    .collect::<Result<Vec<i64>, _>>()
            };
            sqlx::query(IMPORT_COMMANDS_SQL)
                .bind(commands.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>())
                .bind(
                    commands
                        .iter()
                        .map(|(_, r)| r.stream.to_string())
                        .collect::<Vec<_>>(),
                )
                .bind(num(|r| r.first_version.0).map_err(Err)?)
                .bind(num(|r| r.last_version.0).map_err(Err)?)
                .bind(num(|r| r.first_position.0).map_err(Err)?)
                .bind(num(|r| r.last_position.0).map_err(Err)?)
                .execute(&mut *tx)
                .await
                .map_err(|e| Err(backend(e)))?;
        }
        tx.commit().await.map_err(|e| Err(backend(e)))
    }
}

/// A page of `read_all` below the fence, as SQL over `select` (the columns of the events).
///
/// The fence: every transaction that can still commit has an xid >= xmin, so its events sit at
/// positions >= xmin << 16 and are never read before it commits. The fence filters an ordered
/// page instead of bounding the index range: a two-sided range with a computed bound misleads
/// the planner into a bitmap scan of the whole remaining log plus a sort. Cutting an ordered
/// prefix keeps the result a gap-free prefix of the log. The fence is a scalar subquery so that
/// it is computed once per statement (an InitPlan), not per row: `pg_current_snapshot()` copies
/// the snapshot on each call. It is the same statement snapshot either way.
fn fenced_page(select: &str) -> String {
    format!(
        "SELECT * FROM ({select} WHERE position > $1 ORDER BY position LIMIT $2) AS page \
         WHERE position < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) \
         ORDER BY position"
    )
}

impl PostgresStore {
    /// Every committed event after `after`, ignoring the fence (not safe for checkpointing
    /// readers: a later commit can land before the last position returned).
    async fn read_committed(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(to_i64(after.0)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(event_row).collect()
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn event_row(r: &PgRow) -> Result<StoredEvent, StoreError> {
    let position: i64 = r.try_get(0).map_err(backend)?;
    keyledger_store::row::EnvelopeRef {
        event_id: r.try_get(1).map_err(backend)?,
        stream_id: r.try_get(2).map_err(backend)?,
        stream_version: r.try_get(3).map_err(backend)?,
        event_type: r.try_get(4).map_err(backend)?,
        schema_version: i64::from(r.try_get::<i32, _>(5).map_err(backend)?),
        occurred_at: r.try_get(6).map_err(backend)?,
        actor: r.try_get(7).map_err(backend)?,
        command_id: r.try_get(8).map_err(backend)?,
        correlation_id: r.try_get(9).map_err(backend)?,
        causation_id: r.try_get(10).map_err(backend)?,
        payload: r.try_get(11).map_err(backend)?,
        prev_hash: r.try_get(12).map_err(backend)?,
        hash: r.try_get(13).map_err(backend)?,
    }
    .into_event(position)
}

/// Rows of a `read_all` page decoded together on a blocking thread.
const DECODE_CHUNK: usize = 500;

fn decode_rows(rows: &[PgRow]) -> Result<Vec<StoredEvent>, StoreError> {
    rows.iter().map(event_row).collect()
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<AppendResult, StoreError> {
        let command_id = command_id.as_ref();
        // A known head saves the head query: a new stream's head is the genesis, and a cached
        // head is trusted when it is the expected one. A wrong guess ends in a unique violation.
        let known = if expected == StreamVersion::NONE {
            Some(StreamHead::empty())
        } else {
            self.heads.get(&stream).filter(|h| h.version == expected)
        };
        let head = match known {
            Some(head) => head,
            None => {
                let found = self.head(&self.pool, &stream.to_string(), command_id).await?;
                if let (Some(c), Some(previous)) = (command_id, found.previous) {
                    return previous.for_repeat(c, stream);
                }
                found.head
            }
        };
        // The head read and the insert need no common transaction: versions are dense and
        // unique, so if version head+1 is still free at insert time, the head read is current.
        let prepared =
            keyledger_store::prepare_append(&self.ring, stream, expected, &head, events, command_id)?;
        // Invariant: prepare_append refuses an empty batch.
        let last = &prepared[prepared.len() - 1];
        let new_head = StreamHead {
            version: last.stream_version,
            hash: last.hash.clone(),
        };
        match self.group.insert(stream, prepared, command_id.cloned()).await {
            Ok(result) => {
                self.heads.set(stream, new_head);
                self.signal.notify();
                Ok(result)
            }
            Err(e) if is_unique_violation(&e) => {
                self.heads.forget(&stream);
                self.settle_race(stream, expected, command_id).await
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version"
        ))
        .bind(stream.to_string())
        .bind(to_i64(from.0)?)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(event_row).collect()
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        // Rows, not one rendered page as on SQLite: building JSON on the server measured slower
        // here (about 90k against 120k events/s on the benchmark machine).
        let sql = format!("SELECT * FROM ({}) AS fenced", fenced_page(SELECT_EVENTS));
        let mut rows = sqlx::query(&sql)
            .bind(to_i64(after.0)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch(&self.pool);
        // Rows are decoded in chunks on blocking threads while the next ones arrive, so the
        // server sending and this process decoding overlap.
        let mut decoding = Vec::new();
        let mut chunk = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(backend)? {
            chunk.push(row);
            if chunk.len() == DECODE_CHUNK {
                let full = std::mem::take(&mut chunk);
                decoding.push(tokio::task::spawn_blocking(move || decode_rows(&full)));
            }
        }
        drop(rows);
        let mut events = Vec::new();
        for part in decoding {
            let part = part
                .await
                .map_err(|e| StoreError::backend(format!("decoding a page failed: {e}")))??;
            events.extend(part);
        }
        events.extend(decode_rows(&chunk)?);
        Ok(events)
    }

    async fn import(&self, mut events: Vec<StoredEvent>, batch: ImportBatch) -> Result<usize, StoreError> {
        let streams: Vec<StreamId> = events
            .iter()
            .map(|e| e.stream_id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        match self.import_tx(&mut events, &streams, batch).await {
            Ok(()) => {}
            Err(Err(refused)) => return Err(refused),
            Err(Ok(violation)) => {
                // A concurrent writer took a version first: the checks against the new heads
                // name the event; if they pass, an event id already exists elsewhere.
                let heads = Self::heads(&self.pool, &streams).await?;
                check_import(heads, &events)?;
                return Err(backend(violation));
            }
        }
        for s in &streams {
            self.heads.forget(s);
        }
        if !events.is_empty() {
            self.signal.notify();
        }
        Ok(events.len())
    }

    async fn verify_with_progress(
        &self,
        scope: VerifyScope,
        progress: &keyledger_store::verify::Progress<'_>,
    ) -> Result<VerifyReport, StoreError> {
        match scope {
            VerifyScope::Stream(_) => keyledger_store::verify::verify_by_reading(self, scope, progress).await,
            // Verification is not a catch-up reader: it checks everything committed, including
            // events still held behind the fence.
            VerifyScope::All => {
                keyledger_store::verify::verify_pages(
                    |after| self.read_committed(after, keyledger_store::verify::PAGE),
                    progress,
                )
                .await
            }
        }
    }

    fn subscribe(&self, after: GlobalPosition) -> EventStream {
        poll_subscription(self.clone(), after, &self.signal, self.poll)
    }

    fn key_ring(&self) -> &KeyRing {
        &self.ring
    }
}

#[cfg(all(test, feature = "test-hooks"))]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;
    use keyledger_store::conformance::{cmk_enabled, dek_generated, new_stream, tenant_added};

    #[tokio::test]
    async fn corrupt_rows_are_named_by_position() {
        let Some(db) = TestDatabase::create("kl_page").await else {
            return;
        };
        let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let stream = new_stream();
        let events = vec![tenant_added("a"), cmk_enabled("s"), dek_generated(&[9; 40])];
        let r = store
            .append(stream, StreamVersion::NONE, events, None)
            .await
            .unwrap();
        sqlx::query("UPDATE events SET payload = '{not json' WHERE position = $1")
            .bind(i64::try_from(r.first_position.0).unwrap())
            .execute(store.pool())
            .await
            .unwrap();
        // The fence may hold the row back for a moment while other tests write.
        for _ in 0..500 {
            match store.read_all(GlobalPosition::START, 10).await {
                Err(StoreError::Corrupt { position, .. }) => {
                    assert_eq!(position, r.first_position);
                    return;
                }
                Ok(page) if page.is_empty() => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                other => panic!("expected a corrupt-row error, got {other:?}"),
            }
        }
        panic!("the corrupt row never became readable");
    }
}

/// Binds the envelope columns after the event id (and stream id), from `stream_version` to
/// `hash`, as one array each: the tail that the single append, the group commit and the import
/// statements share.
pub(crate) fn bind_envelope_columns<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    cols: &[EnvelopeColumns],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let texts = |f: fn(&EnvelopeColumns) -> String| cols.iter().map(f).collect::<Vec<String>>();
    let opts =
        |f: fn(&EnvelopeColumns) -> Option<String>| cols.iter().map(f).collect::<Vec<Option<String>>>();
    query
        .bind(cols.iter().map(|c| c.stream_version).collect::<Vec<i64>>())
        .bind(texts(|c| c.event_type.clone()))
        .bind(
            cols.iter()
                .map(|c| i32::try_from(c.schema_version).unwrap_or(i32::MAX))
                .collect::<Vec<i32>>(),
        )
        .bind(texts(|c| c.occurred_at.clone()))
        .bind(texts(|c| c.actor.clone()))
        .bind(opts(|c| c.command_id.clone()))
        .bind(opts(|c| c.correlation_id.clone()))
        .bind(opts(|c| c.causation_id.clone()))
        .bind(texts(|c| c.payload.clone()))
        .bind(texts(|c| c.prev_hash.clone()))
        .bind(texts(|c| c.hash.clone()))
}
