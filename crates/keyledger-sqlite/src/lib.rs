//! The SQLite event store: one file in WAL mode, the embedded default backend (DESIGN.md §5).
//!
//! - One writer connection, owned by a writer task: appends are serialized, so the rowid
//!   global position is commit order and catch-up readers never skip an event.
//! - Group commit: the writer task takes every append waiting in its queue (up to
//!   [`MAX_GROUP`]) into one transaction, so one fsync serves many appends. Each append is
//!   checked on its own (command id, expected version) against the database and the appends
//!   before it in the group, so a refused append does not affect the others; then the group's
//!   events go in with a few multi-row inserts. A write that fails rolls the whole group back
//!   and every append in it gets a backend error (safe to retry with the same command id).
//! - A pool of read connections: WAL lets them read while the writer commits.
//! - An append reads only the stream's head (last version and hash) through the
//!   `(stream_id, stream_version)` index, or not at all when the writer knows it; it never
//!   loads the stream.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keyledger_domain::{CommandId, GlobalPosition, StoredEvent, StreamId, StreamVersion};
use keyledger_store::import::{check_import, imported_commands};
use keyledger_store::row::{EnvelopeColumns, to_i64};
use keyledger_store::subscribe::{CommitSignal, PollConfig, poll_subscription};
use keyledger_store::{
    AppendResult, EventStore, EventStream, ImportBatch, KeyRing, NewEvent, StoreError, StreamHead,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row as _, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

mod page;
pub mod projections;
pub mod writer_lock;
pub use projections::SqliteProjections;
pub use writer_lock::{WriterLock, WriterLockError};

/// The embedded migrations (`migrations/sqlite/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// When a commit is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss once `append` returns.
    #[default]
    Full,
    /// `synchronous=NORMAL`: WAL commits are not fsynced one by one; a power loss can drop the
    /// last commits (never corrupts). Faster; for dev mode and throwaway data.
    Normal,
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// Read connections (the writer has its own). A long `read_all` page uses up to
    /// [`MAX_PARTS`] at once; a subscription reads one page ahead.
    pub read_connections: u32,
    /// How long a writer waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Live subscription polling (for commits of other processes).
    pub poll: PollConfig,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            read_connections: 8,
            busy_timeout: Duration::from_secs(5),
            poll: PollConfig::default(),
        }
    }
}

/// An event store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    writer: mpsc::Sender<Request>,
    read: SqlitePool,
    ring: Arc<KeyRing>,
    signal: CommitSignal,
    /// The last position this process committed (or found at open): how far ahead of a
    /// reader the log is known to be.
    written_up_to: Arc<AtomicU64>,
    poll: PollConfig,
}

/// A pool that gave no connection in time is [`StoreError::Unavailable`] (HTTP 503).
fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => StoreError::Unavailable(Box::new(e)),
        e => StoreError::backend(e),
    }
}

impl SqliteStore {
    /// Opens (creating when absent) the database file at `path` and runs the migrations.
    pub async fn open(path: &Path, ring: Arc<KeyRing>) -> Result<Self, StoreError> {
        Self::open_with(path, ring, SqliteOptions::default()).await
    }

    /// Opens with explicit options.
    pub async fn open_with(
        path: &Path,
        ring: Arc<KeyRing>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(backend)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        // One connection for the life of the store: the writer's head cache relies on its
        // `PRAGMA data_version`, which only compares within one connection.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(connect.clone())
            .await
            .map_err(backend)?;
        MIGRATOR.run(&write).await.map_err(StoreError::backend)?;
        let read = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .acquire_timeout(Duration::from_secs(60))
            // Catch-up reads pages of thousands of rows: a large row buffer lets the driver's
            // worker thread hand them over without a wake-up per few rows.
            .connect_with(connect.read_only(true).row_buffer_size(4096))
            .await
            .map_err(backend)?;
        let signal = CommitSignal::default();
        let written_up_to = Arc::new(AtomicU64::new(last_position(&write).await?));
        let (writer, requests) = mpsc::channel(1024);
        tokio::spawn(writer_loop(
            write.clone(),
            signal.clone(),
            written_up_to.clone(),
            requests,
        ));
        Ok(Self {
            write,
            writer,
            read,
            ring,
            signal,
            written_up_to,
            poll: options.poll,
        })
    }

    /// The same database seen through another key ring.
    pub fn with_key_ring(&self, ring: Arc<KeyRing>) -> Self {
        Self { ring, ..self.clone() }
    }

    /// The read pool.
    pub fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    /// The writer pool (one connection), for backend-specific maintenance and tests. Appends
    /// go through the writer task, which caches stream heads: after changing a stream's rows
    /// through this pool, an append to it may fail once (the unique version catches it, and the
    /// cache is emptied).
    pub fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    /// Closes both pools (checkpointing the WAL).
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// Work for the writer task.
enum Request {
    Append(WriteRequest),
    Import(ImportRequest),
}

/// One import batch waiting for the writer task; it commits in a transaction of its own.
struct ImportRequest {
    events: Vec<StoredEvent>,
    batch: ImportBatch,
    reply: oneshot::Sender<Result<usize, StoreError>>,
}

/// One append waiting for the writer task.
struct WriteRequest {
    ring: Arc<KeyRing>,
    stream: StreamId,
    expected: StreamVersion,
    events: Vec<NewEvent>,
    command_id: Option<CommandId>,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// The most appends committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// Owns the write side: takes every waiting append into one transaction (group commit). An
/// import batch commits alone, in queue order.
async fn writer_loop(
    pool: SqlitePool,
    signal: CommitSignal,
    written_up_to: Arc<AtomicU64>,
    mut requests: mpsc::Receiver<Request>,
) {
    let mut waiting = Vec::with_capacity(MAX_GROUP);
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut heads = HeadCache::default();
    while requests.recv_many(&mut waiting, MAX_GROUP).await > 0 {
        for request in waiting.drain(..) {
            match request {
                Request::Append(a) => group.push(a),
                Request::Import(i) => {
                    if !group.is_empty() {
                        commit_group(&pool, &signal, &written_up_to, &mut group, &mut heads).await;
                    }
                    heads.clear();
                    let result = import_batch(&pool, i.events, i.batch).await;
                    if matches!(result, Ok(n) if n > 0) {
                        if let Ok(last) = last_position(&pool).await {
                            written_up_to.fetch_max(last, Ordering::Relaxed);
                        }
                        signal.notify();
                    }
                    let _ = i.reply.send(result);
                }
            }
        }
        if !group.is_empty() {
            commit_group(&pool, &signal, &written_up_to, &mut group, &mut heads).await;
        }
    }
}

/// The heads of streams the writer task appended to, so that an append to a known stream skips
/// the head query (one round trip to the driver's thread of two). It is emptied whenever
/// another connection may have written (`PRAGMA data_version` changed, checked at the start of
/// each group under the write lock), after an import and after a failed group. Should it still
/// be stale, the `(stream_id, stream_version)` unique constraint refuses the insert and the
/// group fails as a whole (retryable); it can never fork a stream.
#[derive(Debug, Default)]
struct HeadCache {
    heads: HashMap<StreamId, StreamHead>,
    data_version: Option<i64>,
}

/// Heads kept before the cache is emptied.
const HEAD_CACHE_LIMIT: usize = 100_000;

impl HeadCache {
    fn clear(&mut self) {
        self.heads.clear();
        self.data_version = None;
    }

    /// Empties the cache unless the database is as this connection last left it.
    async fn check(&mut self, tx: &mut Transaction<'static, Sqlite>) -> Result<(), sqlx::Error> {
        let version: i64 = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut **tx)
            .await?;
        if self.data_version != Some(version) {
            self.heads.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    /// Keeps the heads a committed group wrote.
    fn extend(&mut self, written: HashMap<StreamId, StreamHead>) {
        if self.heads.len() + written.len() > HEAD_CACHE_LIMIT {
            self.heads.clear();
        }
        self.heads.extend(written);
    }
}

/// One import batch in its own transaction: the emptiness check of a first batch, the stream
/// heads, the checks of [`keyledger_store::import`], then the rows and the command ids.
async fn import_batch(
    pool: &SqlitePool,
    mut events: Vec<StoredEvent>,
    batch: ImportBatch,
) -> Result<usize, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
    if batch == ImportBatch::First {
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events)")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if any {
            return Err(StoreError::ImportTargetNotEmpty);
        }
    }
    let mut heads = HashMap::new();
    for e in &events {
        if !heads.contains_key(&e.stream_id)
            && let Some(head) = stream_head(&mut tx, e.stream_id).await?
        {
            heads.insert(e.stream_id, head);
        }
    }
    check_import(heads, &events)?;
    for e in &mut events {
        e.global_position = insert_event(&mut tx, e).await?;
    }
    for (c, r) in imported_commands(&events) {
        // A known command id is extended only when this batch continues its append (see
        // `keyledger_store::import::imported_commands`).
        sqlx::query(
            "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
                 first_position, last_position) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (command_id) DO UPDATE SET last_version = excluded.last_version, \
                 last_position = excluded.last_position \
             WHERE commands.stream_id = excluded.stream_id \
               AND commands.last_version + 1 = excluded.first_version",
        )
        .bind(c.as_str())
        .bind(r.stream.to_string())
        .bind(to_i64(r.first_version.0)?)
        .bind(to_i64(r.last_version.0)?)
        .bind(to_i64(r.first_position.0)?)
        .bind(to_i64(r.last_position.0)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(events.len())
}

async fn commit_group(
    pool: &SqlitePool,
    signal: &CommitSignal,
    written_up_to: &AtomicU64,
    batch: &mut Vec<WriteRequest>,
    cache: &mut HeadCache,
) {
    // IMMEDIATE takes the write lock up front, so the head reads and the inserts see one state
    // even when another process writes the same file.
    let begun = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(mut tx) => cache.check(&mut tx).await.map(|()| tx),
        Err(e) => Err(e),
    };
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(e) => return fail_group(cache, batch.drain(..).map(|r| r.reply), &e),
    };
    // Every append is checked and prepared first, its events numbered from the next free
    // position; then the whole group's rows go in with a few multi-row inserts (one round trip
    // to the driver's thread per statement, not per event).
    let mut next = match last_position(&mut *tx).await {
        Ok(last) => last + 1,
        Err(e) => return fail_group(cache, batch.drain(..).map(|r| r.reply), &e),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    // Heads written in this group: what a later append to the same stream builds on.
    let mut written: HashMap<StreamId, StreamHead> = HashMap::new();
    // Command ids appended in this group: a repeat inside the group gets the first result.
    let mut commands: HashMap<CommandId, AppendResult> = HashMap::new();
    let mut rows: Vec<StoredEvent> = Vec::new();
    for req in batch.drain(..) {
        let WriteRequest {
            ring,
            stream,
            expected,
            events,
            command_id,
            reply,
        } = req;
        if let Some(c) = &command_id
            && let Some(first) = commands.get(c)
        {
            outcomes.push((reply, first.for_repeat(c, stream)));
            continue;
        }
        let known = match written.get(&stream) {
            Some(head) => Some(head.clone()),
            None => cache
                .heads
                .get(&stream)
                .filter(|h| h.version == expected)
                .cloned(),
        };
        let outcome = match check_and_prepare(
            &mut tx,
            &ring,
            stream,
            expected,
            events,
            command_id.as_ref(),
            known,
        )
        .await
        {
            Ok(Prepared::Repeat(previous)) => Ok(previous),
            Err(refused) => Err(refused),
            Ok(Prepared::Events(mut prepared)) => {
                for e in &mut prepared {
                    e.global_position = GlobalPosition(next);
                    next += 1;
                }
                // Invariant: prepare_append refuses an empty batch, so both ends exist.
                let (first, last) = (&prepared[0], &prepared[prepared.len() - 1]);
                let result = AppendResult {
                    stream,
                    first_version: first.stream_version,
                    last_version: last.stream_version,
                    first_position: first.global_position,
                    last_position: last.global_position,
                    repeat: false,
                };
                written.insert(
                    stream,
                    StreamHead {
                        version: last.stream_version,
                        hash: last.hash.clone(),
                    },
                );
                if let Some(c) = command_id {
                    commands.insert(c, result);
                }
                rows.extend(prepared);
                Ok(result)
            }
        };
        outcomes.push((reply, outcome));
    }
    if let Err(e) = insert_rows(&mut tx, &rows, &commands).await {
        // Dropping the transaction rolls the whole group back.
        return fail_group(cache, outcomes.into_iter().map(|(reply, _)| reply), &e);
    }
    match tx.commit().await {
        Ok(()) => {
            cache.extend(written);
            written_up_to.fetch_max(next - 1, Ordering::Relaxed);
            signal.notify();
            for (reply, result) in outcomes {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            cache.clear();
            let text = e.to_string();
            for (reply, result) in outcomes {
                let _ = reply.send(result.and(Err(StoreError::backend(text.clone()))));
            }
        }
    }
}

/// Fails every append of a group that cannot commit; the next group starts from a clean cache.
/// Each caller gets the failure with its causes (for the logs; problem responses hide it).
fn fail_group(
    cache: &mut HeadCache,
    replies: impl Iterator<Item = oneshot::Sender<Result<AppendResult, StoreError>>>,
    e: &(dyn std::error::Error + 'static),
) {
    cache.clear();
    let text = std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    for reply in replies {
        let _ = reply.send(Err(StoreError::backend(text.clone())));
    }
}

/// The last position in the log (0 when it is empty).
async fn last_position<'e>(db: impl sqlx::SqliteExecutor<'e>) -> Result<u64, StoreError> {
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(db)
        .await
        .map_err(backend)?;
    Ok(non_negative(last))
}

/// Events per multi-row insert (14 values each, well under SQLite's 32,766 variables).
const ROWS_PER_INSERT: usize = 500;

/// Inserts a group's numbered events and its command ids.
async fn insert_rows(
    tx: &mut Transaction<'static, Sqlite>,
    events: &[StoredEvent],
    commands: &HashMap<CommandId, AppendResult>,
) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let rows = chunk
            .iter()
            .map(|e| Ok((to_i64(e.global_position.0)?, EnvelopeColumns::from_event(e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
             schema_version, occurred_at, actor, command_id, correlation_id, causation_id, payload, \
             prev_hash, hash) ",
        );
        insert.push_values(rows, |mut b, (position, c)| {
            b.push_bind(position)
                .push_bind(c.event_id)
                .push_bind(c.stream_id)
                .push_bind(c.stream_version)
                .push_bind(c.event_type)
                .push_bind(c.schema_version)
                .push_bind(c.occurred_at)
                .push_bind(c.actor)
                .push_bind(c.command_id)
                .push_bind(c.correlation_id)
                .push_bind(c.causation_id)
                .push_bind(c.payload)
                .push_bind(c.prev_hash)
                .push_bind(c.hash);
        });
        insert.build().execute(&mut **tx).await.map_err(backend)?;
    }
    let commands: Vec<_> = commands.iter().collect();
    for chunk in commands.chunks(ROWS_PER_INSERT) {
        let rows = chunk
            .iter()
            .map(|(c, r)| {
                Ok((
                    c.as_str().to_owned(),
                    r.stream.to_string(),
                    [
                        to_i64(r.first_version.0)?,
                        to_i64(r.last_version.0)?,
                        to_i64(r.first_position.0)?,
                        to_i64(r.last_position.0)?,
                    ],
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
             first_position, last_position) ",
        );
        insert.push_values(rows, |mut b, (command, stream, [fv, lv, fp, lp])| {
            b.push_bind(command)
                .push_bind(stream)
                .push_bind(fv)
                .push_bind(lv)
                .push_bind(fp)
                .push_bind(lp);
        });
        insert.build().execute(&mut **tx).await.map_err(backend)?;
    }
    Ok(())
}

enum Prepared {
    /// The command id was seen before: its first result.
    Repeat(AppendResult),
    Events(Vec<StoredEvent>),
}

async fn command_result(
    tx: &mut Transaction<'static, Sqlite>,
    command_id: &CommandId,
) -> Result<Option<AppendResult>, StoreError> {
    let row = sqlx::query(
        "SELECT stream_id, first_version, last_version, first_position, last_position \
             FROM commands WHERE command_id = ?",
    )
    .bind(command_id.as_str())
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    row.map(|r| command_row(&r)).transpose()
}

/// Reads only: the command id's earlier result, or the stream head and the prepared events.
async fn check_and_prepare(
    tx: &mut Transaction<'static, Sqlite>,
    ring: &KeyRing,
    stream: StreamId,
    expected: StreamVersion,
    events: Vec<NewEvent>,
    command_id: Option<&CommandId>,
    known: Option<StreamHead>,
) -> Result<Prepared, StoreError> {
    if let Some(c) = command_id
        && let Some(previous) = command_result(tx, c).await?
    {
        return previous.for_repeat(c, stream).map(Prepared::Repeat);
    }
    let head = match known {
        Some(head) => head,
        None => stream_head(tx, stream).await?.unwrap_or_else(StreamHead::empty),
    };
    keyledger_store::prepare_append(ring, stream, expected, &head, events, command_id).map(Prepared::Events)
}

/// The last version and hash of `stream`; `None` when it has no event.
async fn stream_head(
    tx: &mut Transaction<'static, Sqlite>,
    stream: StreamId,
) -> Result<Option<StreamHead>, StoreError> {
    sqlx::query(
        "SELECT stream_version, hash FROM events WHERE stream_id = ? \
             ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(stream.to_string())
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?
    .map(|r| -> Result<StreamHead, StoreError> {
        Ok(StreamHead {
            version: StreamVersion(non_negative(r.try_get("stream_version").map_err(backend)?)),
            hash: r.try_get("hash").map_err(backend)?,
        })
    })
    .transpose()
}

/// Inserts one envelope as it is; returns the position it got.
async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    e: &StoredEvent,
) -> Result<GlobalPosition, StoreError> {
    let c = EnvelopeColumns::from_event(e)?;
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
             occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
    )
    .bind(c.event_id)
    .bind(c.stream_id)
    .bind(c.stream_version)
    .bind(c.event_type)
    .bind(c.schema_version)
    .bind(c.occurred_at)
    .bind(c.actor)
    .bind(c.command_id)
    .bind(c.correlation_id)
    .bind(c.causation_id)
    .bind(c.payload)
    .bind(c.prev_hash)
    .bind(c.hash)
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(GlobalPosition(non_negative(position)))
}

/// A `read_all` page is read in parts of at least this many events, on as many read connections
/// at once ...
pub const MIN_PART: usize = 256;
/// ... and in at most this many parts.
pub const MAX_PARTS: usize = 4;

impl SqliteStore {
    /// `read_all`: SQLite renders a page on the connection's own thread, so a long page is read
    /// as consecutive position ranges on several connections at once, to use every core. Part
    /// `i` is read from `after + i * size`, which is right only when the parts before it are
    /// full and end exactly there. Positions are the rowid of a table that one writer only
    /// appends to, so they have no gaps; should a row be missing (deleted by hand), the rest of
    /// the page is read again from the last event of the parts before. A short part is the end
    /// of the log. Parts are used only when this process knows the log to reach a full page
    /// past `after`: a reader at the head (projection runners, live streams after each commit)
    /// asks one query, not four that mostly come back empty.
    async fn read_all_parts(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Near the head (a live reader) one query does: parts would mostly come back empty.
        let known_ahead = self.written_up_to.load(Ordering::Relaxed).saturating_sub(after.0);
        let parts = if known_ahead >= limit as u64 {
            (limit / MIN_PART).clamp(1, MAX_PARTS)
        } else {
            1
        };
        let size = limit.div_ceil(parts);
        let start = |i: usize| GlobalPosition(after.0.saturating_add((i * size) as u64));
        let reads = (0..parts).map(|i| self.read_page(start(i), size.min(limit - i * size)));
        let pages = futures::future::join_all(reads).await;
        let mut events = Vec::new();
        for (i, page) in pages.into_iter().enumerate() {
            if events.len() < i * size {
                break; // a part before was short: the end of the log
            }
            let end = events.last().map_or(after, |e: &StoredEvent| e.global_position);
            if end != start(i) {
                let rest = self.read_page(end, limit - events.len()).await?;
                events.extend(rest);
                break;
            }
            events.extend(page?);
        }
        Ok(events)
    }

    /// One page, rendered by SQLite as one text value (see [`page`]). If that does not decode
    /// (e.g. a row whose stored JSON was corrupted), the row-by-row read reports the row by
    /// position.
    async fn read_page(&self, after: GlobalPosition, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        if let Some(page) = self.read_text_page(after, limit).await? {
            return Ok(page);
        }
        let rows = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE position > ? ORDER BY position LIMIT ?"
        ))
        .bind(to_i64(after.0)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend)?;
        rows.iter().map(event_row).collect()
    }

    /// A page as one text value, decoded on a blocking thread. `None` when it does not decode.
    async fn read_text_page(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        let row = sqlx::query(page::SELECT_PAGE)
            .bind(to_i64(after.0)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(&self.read)
            .await
            .map_err(backend)?;
        tokio::task::spawn_blocking(move || match row.try_get::<Option<&str>, _>(0) {
            Ok(None) => Some(Vec::new()),
            Ok(Some(text)) => page::decode(text),
            Err(_) => None,
        })
        .await
        .map_err(|e| StoreError::backend(format!("decoding a page failed: {e}")))
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn command_row(r: &SqliteRow) -> Result<AppendResult, StoreError> {
    let stream: String = r.try_get("stream_id").map_err(backend)?;
    let get = |c: &str| -> Result<u64, StoreError> { Ok(non_negative(r.try_get(c).map_err(backend)?)) };
    Ok(AppendResult {
        stream: stream
            .parse()
            .map_err(|e| StoreError::backend(format!("commands.stream_id: {e}")))?,
        first_version: StreamVersion(get("first_version")?),
        last_version: StreamVersion(get("last_version")?),
        first_position: GlobalPosition(get("first_position")?),
        last_position: GlobalPosition(get("last_position")?),
        repeat: false,
    })
}

const SELECT_EVENTS: &str = "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
     occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash FROM events";

fn event_row(r: &SqliteRow) -> Result<StoredEvent, StoreError> {
    let position: i64 = r.try_get(0).map_err(backend)?;
    EnvelopeColumns {
        event_id: r.try_get(1).map_err(backend)?,
        stream_id: r.try_get(2).map_err(backend)?,
        stream_version: r.try_get(3).map_err(backend)?,
        event_type: r.try_get(4).map_err(backend)?,
        schema_version: r.try_get(5).map_err(backend)?,
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

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<AppendResult, StoreError> {
        let (reply, result) = oneshot::channel();
        let request = Request::Append(WriteRequest {
            ring: self.ring.clone(),
            stream,
            expected,
            events,
            command_id,
            reply,
        });
        let stopped = || StoreError::backend("the SQLite writer task has stopped");
        self.writer.send(request).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version"
        ))
        .bind(stream.to_string())
        .bind(to_i64(from.0)?)
        .fetch_all(&self.read)
        .await
        .map_err(backend)?;
        rows.iter().map(event_row).collect()
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_all_parts(after, limit).await
    }

    async fn import(&self, events: Vec<StoredEvent>, batch: ImportBatch) -> Result<usize, StoreError> {
        let (reply, result) = oneshot::channel();
        let stopped = || StoreError::backend("the SQLite writer task has stopped");
        self.writer
            .send(Request::Import(ImportRequest { events, batch, reply }))
            .await
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    fn subscribe(&self, after: GlobalPosition) -> EventStream {
        poll_subscription(self.clone(), after, &self.signal, self.poll)
    }

    fn key_ring(&self) -> &KeyRing {
        &self.ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_store::conformance::{cmk_enabled, dek_generated, new_stream, tenant_added};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn text_page_equals_row_by_row_read() {
        let (_dir, store) = store().await;
        let stream = new_stream();
        let mut caused = tenant_added("caused");
        caused.metadata.correlation_id = Some(keyledger_domain::CorrelationId::new_v7());
        caused.metadata.causation_id = Some(String::new());
        let mut named = tenant_added("named");
        named.metadata.causation_id = Some("=cause".into());
        let events = vec![
            tenant_added("quote \" backslash \\ unicode é ☃ \u{1e}\u{1f}"),
            cmk_enabled("s"),
            dek_generated(&[9; 40]),
            caused,
            named,
        ];
        store
            .append(
                stream,
                StreamVersion::NONE,
                events,
                Some(CommandId::parse("c-1").unwrap()),
            )
            .await
            .unwrap();
        let page = store
            .read_text_page(GlobalPosition::START, 10)
            .await
            .unwrap()
            .expect("the fast path decodes");
        let rows = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
        assert_eq!(page, rows);
        assert!(page.iter().all(|e| keyledger_store::envelope_hash(e) == e.hash));
    }

    /// Appends that reach the writer together commit in one group: a repeated command id in the
    /// group gets the first result, a second append on the same version a typed conflict.
    #[tokio::test]
    async fn one_group_keeps_idempotency_and_conflicts() {
        let (_dir, store) = store().await;
        let (stream, other) = (new_stream(), new_stream());
        let command = CommandId::parse("same-command").unwrap();
        let repeats = (0..4).map(|_| {
            store.append(
                stream,
                StreamVersion::NONE,
                vec![tenant_added("a")],
                Some(command.clone()),
            )
        });
        let racers = (0..4).map(|_| store.append(other, StreamVersion::NONE, vec![tenant_added("b")], None));
        let (repeats, racers) = tokio::join!(
            futures::future::join_all(repeats),
            futures::future::join_all(racers)
        );
        let first = AppendResult {
            repeat: false,
            ..*repeats[0].as_ref().unwrap()
        };
        assert!(
            repeats
                .iter()
                .all(|r| r.as_ref().ok().map(|r| AppendResult { repeat: false, ..*r }) == Some(first)),
            "{repeats:?}"
        );
        assert_eq!(
            repeats
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|r| !r.repeat))
                .count(),
            1
        );
        let won = racers.iter().filter(|r| r.is_ok()).count();
        let conflicts = racers
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
            .count();
        assert_eq!((won, conflicts), (1, 3), "{racers:?}");
        let all = store.read_all(GlobalPosition::START, 100).await.unwrap();
        let positions: Vec<u64> = all.iter().map(|e| e.global_position.0).collect();
        assert_eq!(positions, [1, 2]);
    }

    /// Appends `n` events to one new stream, in commands of 500.
    async fn append_many(store: &SqliteStore, n: u64) {
        let stream = new_stream();
        for first in (0..n).step_by(500) {
            let events = (first..n.min(first + 500))
                .map(|i| tenant_added(&format!("t{i}")))
                .collect();
            store
                .append(stream, StreamVersion(first), events, None)
                .await
                .unwrap();
        }
    }

    /// Positions with gaps (rows deleted by hand): a page read in parts falls back to reading
    /// on from the last event it holds, so no event is skipped or repeated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_read_in_parts_is_whole_when_positions_have_gaps() {
        let (_dir, store) = store().await;
        append_many(&store, 3000).await;
        sqlx::query("DELETE FROM events WHERE position % 7 = 3 OR position BETWEEN 1000 AND 1400")
            .execute(store.write_pool())
            .await
            .unwrap();
        let expected: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
            .fetch_all(store.read_pool())
            .await
            .unwrap();
        for limit in [300, 1000, 1250, 5000] {
            let mut seen = Vec::new();
            let mut after = GlobalPosition::START;
            loop {
                let page = store.read_all(after, limit).await.unwrap();
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                after = last.global_position;
                seen.extend(page.iter().map(|e| e.global_position.0 as i64));
            }
            assert_eq!(seen, expected, "pages of {limit}");
        }
    }

    /// A page read in parts stops at the end of the log, wherever it falls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_read_in_parts_ends_with_the_log() {
        let (_dir, store) = store().await;
        append_many(&store, 1100).await;
        for (after, limit, expected) in [
            (0, 1000, 1000),
            (0, 5000, 1100),
            (1000, 1000, 100),
            (1099, 5000, 1),
            (1100, 5000, 0),
        ] {
            let page = store.read_all(GlobalPosition(after), limit).await.unwrap();
            let positions: Vec<u64> = page.iter().map(|e| e.global_position.0).collect();
            let want: Vec<u64> = (after + 1..=after + expected).collect();
            assert_eq!(positions, want, "after {after}, limit {limit}");
        }
    }

    /// Catch-up over many full pages (each read ahead while the previous one is consumed),
    /// then live: every event once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscription_reads_ahead_without_gap_or_duplicate() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            poll: PollConfig {
                batch: 3,
                interval: Duration::from_millis(10),
            },
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("k.db"), Arc::new(KeyRing::generate()), options)
            .await
            .unwrap();
        let streams: Vec<StreamId> = (0..4).map(|_| new_stream()).collect();
        let mut versions = [StreamVersion::NONE; 4];
        let mut append = |i: usize| {
            let (store, stream, expected) = (store.clone(), streams[i % 4], versions[i % 4]);
            versions[i % 4] = StreamVersion(expected.0 + 1);
            async move {
                store
                    .append(stream, expected, vec![tenant_added("t")], None)
                    .await
                    .unwrap()
            }
        };
        for i in 0..20 {
            append(i).await;
        }
        let mut sub = store.subscribe(GlobalPosition::START);
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(sub.next().await.unwrap().unwrap().global_position.0);
        }
        for i in 20..26 {
            append(i).await;
        }
        for _ in 20..26 {
            let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap();
            seen.push(next.unwrap().unwrap().global_position.0);
        }
        let all: Vec<u64> = store
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.global_position.0)
            .collect();
        assert_eq!(seen, all);
        assert_eq!(seen.len(), 26);
    }

    #[tokio::test]
    async fn corrupt_row_is_named_by_position() {
        let (_dir, store) = store().await;
        let stream = new_stream();
        let r = store
            .append(stream, StreamVersion::NONE, vec![tenant_added("a")], None)
            .await
            .unwrap();
        sqlx::query("UPDATE events SET payload = '{not json' WHERE position = ?")
            .bind(r.first_position.0 as i64)
            .execute(store.write_pool())
            .await
            .unwrap();
        match store.read_all(GlobalPosition::START, 10).await {
            Err(StoreError::Corrupt { position, .. }) => assert_eq!(position, r.first_position),
            other => panic!("expected a corrupt-row error, got {other:?}"),
        }
    }
}
