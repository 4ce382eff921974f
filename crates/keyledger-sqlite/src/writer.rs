//! The writer task: it owns the one write connection and takes the appends and imports queued
//! for it, appends in groups ([`crate::group`]), an import batch alone ([`crate::import`]). It
//! runs on a thread of its own (ADR 0036).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyledger_domain::{CommandId, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::subscribe::CommitSignal;
use keyledger_store::{AppendResult, ImportBatch, KeyRing, NewEvent, StoreError};
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::group::commit_group;
use crate::head_cache::HeadCache;
use crate::import::import_batch;
use crate::sql::last_position;

/// Work for the writer task.
pub(crate) enum Request {
    Append(WriteRequest),
    Import(ImportRequest),
}

/// One import batch waiting for the writer task; it commits in a transaction of its own.
pub(crate) struct ImportRequest {
    pub(crate) events: Vec<StoredEvent>,
    pub(crate) batch: ImportBatch,
    pub(crate) reply: oneshot::Sender<Result<usize, StoreError>>,
}

/// One append waiting for the writer task.
pub(crate) struct WriteRequest {
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) stream: StreamId,
    pub(crate) expected: StreamVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) command_id: Option<CommandId>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// The most appends committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// Owns the write side: takes every waiting append into one transaction (group commit). An
/// import batch commits alone, in queue order.
pub(crate) async fn writer_loop(
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
