//! Group commit: every append waiting for the writer thread goes into one transaction, on the
//! writer thread's own connection (ADR 0037).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::row::{EnvelopeColumns, to_i64};
use keyledger_store::subscribe::CommitSignal;
use keyledger_store::{AppendResult, KeyRing, NewEvent, StoreError, StreamHead};
use rusqlite::{Connection, ToSql, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::head_cache::HeadCache;
use crate::sql::{
    INSERT_NUMBERED, command_result, command_values, envelope_params, group_start, stream_head,
};
use crate::writer::WriteRequest;

pub(crate) fn commit_group(
    conn: &mut Connection,
    signal: &CommitSignal,
    written_up_to: &AtomicU64,
    batch: &mut Vec<WriteRequest>,
    cache: &mut HeadCache,
) {
    // `BEGIN IMMEDIATE` takes the write lock up front, so the head reads and the inserts see
    // one state even when another process writes the file. A transaction not committed rolls
    // back when dropped, so every failure below leaves nothing behind.
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_group(cache, batch.drain(..).map(|r| r.reply), &e),
    };
    let last = match group_start(&tx) {
        Ok((data_version, last)) => {
            cache.check(data_version);
            last
        }
        Err(e) => return fail_group(cache, batch.drain(..).map(|r| r.reply), &e),
    };
    // Every append is checked and prepared first, its events numbered from the next free
    // position; then the whole group's rows go in.
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
            match check_and_prepare(&tx, &ring, stream, expected, events, command_id.as_ref(), known) {
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
    match insert_and_commit(tx, &rows, &commands) {
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
            let text = e.to_string();
            cache.clear();
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

/// Inserts a group's numbered events and its command ids, and commits. Statements are prepared
/// once per connection (SQLite's statement cache) and run on this thread, one row each.
fn insert_and_commit(
    tx: Transaction<'_>,
    events: &[StoredEvent],
    commands: &HashMap<CommandId, AppendResult>,
) -> Result<(), StoreError> {
    let backend = StoreError::backend;
    {
        let mut insert = tx.prepare_cached(INSERT_NUMBERED).map_err(backend)?;
        for e in events {
            let c = EnvelopeColumns::from_event(e)?;
            let position = to_i64(e.global_position.0)?;
            let params = envelope_params(&c).into_iter().chain([&position as &dyn ToSql]);
            insert
                .execute(rusqlite::params_from_iter(params))
                .map_err(backend)?;
        }
        let mut record = tx
            .prepare_cached(
                "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
                 first_position, last_position) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(backend)?;
        for (c, r) in commands {
            let (command, stream, [fv, lv, fp, lp]) = command_values(c, r)?;
            record
                .execute(rusqlite::params![command, stream, fv, lv, fp, lp])
                .map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)
}

enum Prepared {
    /// The command id was seen before: its first result.
    Repeat(AppendResult),
    Events(Vec<StoredEvent>),
}

/// Reads only: the command id's earlier result, or the stream head and the prepared events.
fn check_and_prepare(
    tx: &Connection,
    ring: &KeyRing,
    stream: StreamId,
    expected: StreamVersion,
    events: Vec<NewEvent>,
    command_id: Option<&CommandId>,
    known: Option<StreamHead>,
) -> Result<Prepared, StoreError> {
    if let Some(c) = command_id
        && let Some(previous) = command_result(tx, c)?
    {
        return previous.for_repeat(c, stream).map(Prepared::Repeat);
    }
    let head = match known {
        Some(head) => head,
        None => stream_head(tx, stream)?.unwrap_or_else(StreamHead::empty),
    };
    keyledger_store::prepare_append(ring, stream, expected, &head, events, command_id).map(Prepared::Events)
}
