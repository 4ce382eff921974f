//! Group commit of appends (ADR 0005, issue 12): appends that wait at the same time go into one
//! statement, so one transaction (one commit, one WAL flush, one round trip) serves many.
//!
//! An append is prepared as before (head, expected version, hash chain) by its caller and then
//! queued here. A few committer tasks each take every append waiting in the queue (up to
//! [`MAX_GROUP`] appends and 65,535 events, the positions one transaction id can number) and
//! insert them with one statement. Positions stay `xid << 16 + index`, the index running over the
//! whole group, so each append's events are consecutive and the global order fence is unchanged.
//!
//! The statement is all or nothing. When it fails on a unique constraint (a concurrent append
//! took a version, or a command id was used), each append of the group is inserted again on its
//! own, so only the appends that really lost get the violation (which the caller turns into a
//! typed conflict or an idempotent repeat); any other failure is every append's failure, as it
//! would have been for each of them alone.

use std::sync::Arc;

use keyledger_domain::{CommandId, GlobalPosition, StreamId};
use keyledger_store::AppendResult;
use keyledger_store::StoredEvent;
use keyledger_store::row::{EnvelopeColumns, to_i64};
use sqlx::Row as _;
use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{PostgresStore, bind_envelope_columns, is_unique_violation, non_negative};

/// The most appends committed in one statement.
pub(crate) const MAX_GROUP: usize = 64;

/// Events one transaction can number (the index is the low 16 bits of a position).
const MAX_GROUP_EVENTS: usize = 65_535;

/// Committer tasks, each with a transaction of its own in flight.
const COMMITTERS: usize = 4;

/// One prepared append waiting to be committed.
pub(crate) struct Pending {
    pub(crate) stream: StreamId,
    pub(crate) rows: Vec<StoredEvent>,
    pub(crate) command_id: Option<CommandId>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, sqlx::Error>>,
}

/// The queue in front of the committer tasks.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the committer tasks on `pool`; they end when the last handle is dropped.
    pub(crate) fn start(pool: PgPool) -> Self {
        let (queue, pending) = mpsc::channel(1024);
        let pending = Arc::new(Mutex::new(pending));
        for _ in 0..COMMITTERS {
            tokio::spawn(committer(pool.clone(), pending.clone()));
        }
        Self { queue }
    }

    /// Commits `rows` (prepared, numbered by stream version) in the next group.
    pub(crate) async fn insert(
        &self,
        stream: StreamId,
        rows: Vec<StoredEvent>,
        command_id: Option<CommandId>,
    ) -> Result<AppendResult, sqlx::Error> {
        let (reply, result) = oneshot::channel();
        let stopped = || sqlx::Error::WorkerCrashed;
        self.queue
            .send(Pending {
                stream,
                rows,
                command_id,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

/// Takes every waiting append (the queue is shared: while one task commits, another collects
/// the next group) and commits them in groups.
async fn committer(pool: PgPool, pending: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let mut waiting = Vec::with_capacity(MAX_GROUP);
    loop {
        let received = pending.lock().await.recv_many(&mut waiting, MAX_GROUP).await;
        if received == 0 {
            return;
        }
        while !waiting.is_empty() {
            let mut events = 0;
            let take = waiting
                .iter()
                .take_while(|p| {
                    events += p.rows.len();
                    events <= MAX_GROUP_EVENTS
                })
                .count()
                .max(1);
            let group: Vec<Pending> = waiting.drain(..take).collect();
            commit(&pool, group).await;
        }
    }
}

/// Commits a group in one statement, or each append alone when that statement hits a unique
/// constraint.
async fn commit(pool: &PgPool, group: Vec<Pending>) {
    if let [_] = group.as_slice() {
        return commit_alone(pool, group).await;
    }
    match insert_group(pool, &group).await {
        Ok(results) => {
            for (p, result) in group.into_iter().zip(results) {
                let _ = p.reply.send(Ok(result));
            }
        }
        Err(e) if is_unique_violation(&e) => commit_alone(pool, group).await,
        Err(e) => {
            for p in group {
                let _ = p.reply.send(Err(copy(&e)));
            }
        }
    }
}

/// The group's failure for each of its appends: no connection stays no connection (HTTP 503),
/// anything else keeps its text.
fn copy(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Each append in a transaction of its own (the path without grouping).
async fn commit_alone(pool: &PgPool, group: Vec<Pending>) {
    for p in group {
        let result = PostgresStore::insert(pool, p.stream, &p.rows, p.command_id.as_ref()).await;
        let _ = p.reply.send(result);
    }
}

/// The events and command ids of several appends in one statement; each append's result.
async fn insert_group(pool: &PgPool, group: &[Pending]) -> Result<Vec<AppendResult>, sqlx::Error> {
    let encode = |e: keyledger_store::StoreError| sqlx::Error::Encode(Box::new(e));
    let mut cols = Vec::new();
    // Per append: the index of its first and last event in the group (1-based).
    let mut spans = Vec::with_capacity(group.len());
    for p in group {
        let first = cols.len() + 1;
        for e in &p.rows {
            cols.push(EnvelopeColumns::from_event(e).map_err(encode)?);
        }
        spans.push((first, cols.len()));
    }
    let index = |i: usize| i64::try_from(i).map_err(|e| sqlx::Error::Encode(Box::new(e)));
    let texts = |f: fn(&EnvelopeColumns) -> String| cols.iter().map(f).collect::<Vec<String>>();
    let mut commands = CommandColumns::default();
    for (p, &(first, last)) in group.iter().zip(&spans) {
        if let Some(c) = &p.command_id {
            // Invariant: prepare_append refuses an empty append, so both ends exist.
            let (fv, lv) = (&p.rows[0], &p.rows[p.rows.len() - 1]);
            commands.ids.push(c.as_str());
            commands.streams.push(p.stream.to_string());
            commands
                .first_versions
                .push(to_i64(fv.stream_version.0).map_err(encode)?);
            commands
                .last_versions
                .push(to_i64(lv.stream_version.0).map_err(encode)?);
            commands.first_indexes.push(index(first)?);
            commands.last_indexes.push(index(last)?);
        }
    }
    let query = sqlx::query(INSERT_GROUP_SQL)
        .bind(texts(|c| c.event_id.clone()))
        .bind(texts(|c| c.stream_id.clone()));
    let row = bind_envelope_columns(query, &cols)
        .bind(commands.ids)
        .bind(commands.streams)
        .bind(commands.first_versions)
        .bind(commands.last_versions)
        .bind(commands.first_indexes)
        .bind(commands.last_indexes)
        .fetch_one(pool)
        .await?;
    let base: i64 = row.try_get("base")?;
    let position = |i: usize| -> Result<GlobalPosition, sqlx::Error> {
        Ok(GlobalPosition(non_negative(base + index(i)?)))
    };
    group
        .iter()
        .zip(spans)
        .map(|(p, (first, last))| {
            let (fv, lv) = (&p.rows[0], &p.rows[p.rows.len() - 1]);
            Ok(AppendResult {
                stream: p.stream,
                first_version: fv.stream_version,
                last_version: lv.stream_version,
                first_position: position(first)?,
                last_position: position(last)?,
                repeat: false,
            })
        })
        .collect()
}

/// The command ids of a group, as the arrays `$14`–`$19` of [`INSERT_GROUP_SQL`].
#[derive(Debug, Default)]
struct CommandColumns<'a> {
    ids: Vec<&'a str>,
    streams: Vec<String>,
    first_versions: Vec<i64>,
    last_versions: Vec<i64>,
    /// The group index (1-based) of the append's first and last event.
    first_indexes: Vec<i64>,
    last_indexes: Vec<i64>,
}

/// A group's events (arrays `$1`–`$13`, one element per event, appends one after the other) and
/// command ids (`$14`–`$19`, one per append that has one, with the group indexes of its first
/// and last event), in one statement and so one transaction. Returns the transaction's position
/// base (`xid << 16`).
const INSERT_GROUP_SQL: &str = "WITH base AS (SELECT pg_current_xact_id()::text::bigint << 16 AS base), \
     ins AS ( \
       INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
         occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash) \
       SELECT base.base + t.ord, t.event_id, t.stream_id, t.stream_version, t.event_type, t.schema_version, \
         t.occurred_at, t.actor, t.command_id, t.correlation_id, t.causation_id, t.payload, t.prev_hash, \
         t.hash \
       FROM base, UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::text[], \
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
                         $13::text[]) WITH ORDINALITY \
         AS t(event_id, stream_id, stream_version, event_type, schema_version, occurred_at, actor, \
              command_id, correlation_id, causation_id, payload, prev_hash, hash, ord) \
       RETURNING 1), \
     cmd AS ( \
       INSERT INTO commands (command_id, stream_id, first_version, last_version, first_position, last_position) \
       SELECT c.command_id, c.stream_id, c.first_version, c.last_version, base.base + c.first_index, \
         base.base + c.last_index \
       FROM base, UNNEST($14::text[], $15::text[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[]) \
         AS c(command_id, stream_id, first_version, last_version, first_index, last_index) \
       RETURNING 1) \
     SELECT base.base, (SELECT count(*) FROM ins) AS events, (SELECT count(*) FROM cmd) AS commands FROM base";
