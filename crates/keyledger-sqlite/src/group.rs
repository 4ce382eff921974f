//! Group commit: every append waiting for the writer task goes into one transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::row::{EnvelopeColumns, to_i64};
use keyledger_store::subscribe::CommitSignal;
use keyledger_store::{AppendResult, KeyRing, NewEvent, StoreError, StreamHead};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::oneshot;

use crate::backend;
use crate::head_cache::HeadCache;
use crate::sql::{begin_group, command_result, stream_head};
use crate::writer::WriteRequest;

pub(crate) async fn commit_group(
    pool: &SqlitePool,
    signal: &CommitSignal,
    written_up_to: &AtomicU64,
    batch: &mut Vec<WriteRequest>,
    cache: &mut HeadCache,
) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => return fail_group(cache, batch.drain(..).map(|r| r.reply), &e),
    };
    // The transaction is begun and ended by hand: `BEGIN IMMEDIATE` goes in one round trip to
    // the driver's thread with the first read, and `COMMIT` in one with the inserts, so a
    // group takes two round trips instead of five (issue 12). Every failure rolls back.
    let last = match begin_group(&mut conn).await {
        Ok((data_version, last)) => {
            cache.check(data_version);
            last
        }
        Err(e) => {
            rollback(&mut conn).await;
            return fail_group(cache, batch.drain(..).map(|r| r.reply), &e);
        }
    };
    let tx = &mut *conn;
    // Every append is checked and prepared first, its events numbered from the next free
    // position; then the whole group's rows go in with one round trip to the driver's thread.
    let mut next = last + 1;
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
        let outcome =
            match check_and_prepare(tx, &ring, stream, expected, events, command_id.as_ref(), known).await {
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
    match insert_and_commit(tx, &rows, &commands).await {
        Ok(()) => {
            cache.extend(written);
            written_up_to.fetch_max(next - 1, Ordering::Relaxed);
            signal.notify();
            for (reply, result) in outcomes {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            // An insert or the commit failed: nothing of the group is stored.
            rollback(tx).await;
            let text = e.to_string();
            cache.clear();
            for (reply, result) in outcomes {
                let _ = reply.send(result.and(Err(StoreError::backend(text.clone()))));
            }
        }
    }
}

/// Ends a failed group's transaction. There may be none left to end (`BEGIN` itself failed, or
/// SQLite rolled back on its own), so the answer is ignored.
async fn rollback(conn: &mut SqliteConnection) {
    let _ = sqlx::raw_sql("ROLLBACK").execute(conn).await;
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

/// Events per multi-row insert (14 values each, well under SQLite's 32,766 variables).
const ROWS_PER_INSERT: usize = 500;

/// Inserts a group's numbered events and its command ids, and commits: the statements go to
/// the driver's thread as one query (each statement binds its own share of the values).
async fn insert_and_commit(
    conn: &mut SqliteConnection,
    events: &[StoredEvent],
    commands: &HashMap<CommandId, AppendResult>,
) -> Result<(), StoreError> {
    let mut query = sqlx::QueryBuilder::<Sqlite>::new("");
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let rows = chunk
            .iter()
            .map(|e| Ok((to_i64(e.global_position.0)?, EnvelopeColumns::from_event(e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        query.push(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
             schema_version, occurred_at, actor, command_id, correlation_id, causation_id, payload, \
             prev_hash, hash) ",
        );
        query.push_values(rows, |mut b, (position, c)| {
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
        query.push("; ");
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
        query.push(
            "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
             first_position, last_position) ",
        );
        query.push_values(rows, |mut b, (command, stream, [fv, lv, fp, lp])| {
            b.push_bind(command)
                .push_bind(stream)
                .push_bind(fv)
                .push_bind(lv)
                .push_bind(fp)
                .push_bind(lp);
        });
        query.push("; ");
    }
    query.push("COMMIT");
    query.build().execute(&mut *conn).await.map_err(backend)?;
    Ok(())
}

enum Prepared {
    /// The command id was seen before: its first result.
    Repeat(AppendResult),
    Events(Vec<StoredEvent>),
}

/// Reads only: the command id's earlier result, or the stream head and the prepared events.
async fn check_and_prepare(
    tx: &mut SqliteConnection,
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
