//! The writer: a thread that owns the one write connection and takes the appends and imports
//! queued for it, appends in groups ([`crate::group`]), an import batch alone
//! ([`crate::import`]). It calls SQLite itself, so a group commit waits for no other thread
//! (ADR 0037).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyledger_domain::{CommandId, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::subscribe::CommitSignal;
use keyledger_store::{AppendResult, ImportBatch, KeyRing, NewEvent, StoreError};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::Durability;
use crate::group::commit_group;
use crate::head_cache::HeadCache;
use crate::import::import_batch;

/// Work for the writer thread.
pub(crate) enum Request {
    Append(WriteRequest),
    Import(ImportRequest),
    /// Commit what came before, close the connection (checkpointing the WAL when it is the
    /// file's last), then answer; later requests find the writer stopped.
    Close(oneshot::Sender<()>),
}

/// One import batch waiting for the writer thread; it commits in a transaction of its own.
pub(crate) struct ImportRequest {
    pub(crate) events: Vec<StoredEvent>,
    pub(crate) batch: ImportBatch,
    pub(crate) reply: oneshot::Sender<Result<usize, StoreError>>,
}

/// One append waiting for the writer thread.
pub(crate) struct WriteRequest {
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) stream: StreamId,
    pub(crate) expected: StreamVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) command_id: Option<CommandId>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// The writer's connection: WAL (set by the migrations' connection already), the store's
/// durability, temporary storage in memory (ADR 0036), foreign keys on.
pub(crate) fn open_connection(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(StoreError::backend)?;
    conn.busy_timeout(busy_timeout).map_err(StoreError::backend)?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
         PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = ON;"
    ))
    .map_err(StoreError::backend)?;
    Ok(conn)
}

/// The most appends committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// Owns the write side on its thread: takes every waiting append into one transaction (group
/// commit). An import batch commits alone, in queue order. Returns when every sender is gone.
pub(crate) fn writer_loop(
    mut conn: Connection,
    signal: CommitSignal,
    written_up_to: Arc<AtomicU64>,
    mut requests: mpsc::Receiver<Request>,
) {
    let mut waiting = Vec::with_capacity(MAX_GROUP);
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut heads = HeadCache::default();
    let mut closed = None;
    while closed.is_none()
        && let Some(first) = requests.blocking_recv()
    {
        waiting.push(first);
        while waiting.len() < MAX_GROUP
            && let Ok(more) = requests.try_recv()
        {
            waiting.push(more);
        }
        for request in waiting.drain(..) {
            match request {
                Request::Append(a) => group.push(a),
                Request::Import(i) => {
                    if !group.is_empty() {
                        commit_group(&mut conn, &signal, &written_up_to, &mut group, &mut heads);
                    }
                    heads.clear();
                    let result = import_batch(&mut conn, i.events, i.batch);
                    if let Ok((_, Some(last))) = result {
                        written_up_to.fetch_max(last.0, Ordering::Relaxed);
                        signal.notify();
                    }
                    let _ = i.reply.send(result.map(|(stored, _)| stored));
                }
                Request::Close(done) => {
                    closed = Some(done);
                    break;
                }
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, &signal, &written_up_to, &mut group, &mut heads);
        }
    }
    // Requests queued behind a close are dropped unanswered: their callers see the writer
    // stopped.
    drop(conn);
    if let Some(done) = closed {
        let _ = done.send(());
    }
}
