//! The SQLite event store: one file in WAL mode, the embedded default backend (DESIGN.md §5).
//!
//! - One writer connection, owned by a writer thread that calls SQLite itself (rusqlite, ADR
//!   0037): appends are serialized, so the rowid global position is commit order and catch-up
//!   readers never skip an event.
//! - Group commit: the writer takes every append waiting in its queue (up to [`MAX_GROUP`])
//!   into one transaction, so one fsync serves many appends. Each append is checked on its own
//!   (command id, expected version) against the database and the appends before it in the
//!   group, so a refused append does not affect the others; then the group's events go in
//!   through prepared statements. A write that fails rolls the whole group back and every
//!   append in it gets a backend error (safe to retry with the same command id).
//! - Through sqlx: the migrations, a pool of read connections (WAL lets them read while the
//!   writer commits) and a maintenance connection ([`SqliteStore::write_pool`]).
//! - An append reads only the stream's head (last version and hash) through the
//!   `(stream_id, stream_version)` index, or not at all when the writer knows it; it never
//!   loads the stream.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::row::to_i64;
use keyledger_store::subscribe::{CommitSignal, PollConfig, poll_subscription};
use keyledger_store::{AppendResult, EventStore, EventStream, ImportBatch, KeyRing, NewEvent, StoreError};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};

mod audit_tree;
mod group;
mod head_cache;
mod import;
mod page;
pub mod projections;
mod read;
mod sql;
mod writer;
pub mod writer_lock;
pub use projections::SqliteProjections;
pub use read::{MAX_PARTS, MIN_PART};
pub use writer::MAX_GROUP;
pub use writer_lock::{WriterLock, WriterLockError};

use sql::{SELECT_EVENTS, event_row, last_position};
use writer::{ImportRequest, Request, WriteRequest, writer_loop};

/// The embedded migrations of the event log (`migrations/sqlite/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The embedded migrations of the projection file (`migrations/sqlite-projections/`).
pub static PROJECTIONS_MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("../../migrations/sqlite-projections");

/// The projection file of the event log at `path`: `<path>-projections`, beside it (ADR 0021).
pub fn projections_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-projections");
    PathBuf::from(name)
}

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

/// An event store in one SQLite file, with its projections in a second file beside it
/// ([`projections_path`]).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    /// The projection file's pools, for [`SqliteProjections`].
    projections: projections::ProjectionFile,
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
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => StoreError::Unavailable(Box::new(e)),
        e => StoreError::backend(e),
    }
}

impl SqliteStore {
    /// Opens (creating when absent) the database file at `path` and its projection file
    /// ([`projections_path`]), and runs the migrations of both.
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
            .pragma("temp_store", "memory")
            .foreign_keys(true);
        // The migrations' and maintenance connection. Appends do not use it: the writer thread
        // has its own (below), and sees this one's writes as another connection's.
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
        let log_end = last_position(&write).await?;
        let projections =
            projections::ProjectionFile::open(&projections_path(path), &options, log_end).await?;
        let signal = CommitSignal::default();
        let written_up_to = Arc::new(AtomicU64::new(log_end));
        let (writer, requests) = mpsc::channel(1024);
        // The writer has a thread of its own and calls SQLite there through a connection of its
        // own: a group commit is the store's one serial path, and through the pool each of its
        // statements was a hand-over to the driver's thread and back, which under HTTP load
        // waited for a core each time (issue 12, ADR 0037).
        let (opened, ready) = oneshot::channel();
        let (commits, written) = (signal.clone(), written_up_to.clone());
        let (file, durability, busy_timeout) = (path.to_owned(), options.durability, options.busy_timeout);
        std::thread::Builder::new()
            .name("keyledger-sqlite-writer".into())
            .spawn(
                move || match writer::open_connection(&file, durability, busy_timeout) {
                    Ok(conn) => {
                        let _ = opened.send(Ok(()));
                        writer_loop(conn, commits, written, requests);
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                    }
                },
            )
            .map_err(StoreError::backend)?;
        ready
            .await
            .map_err(|_| StoreError::backend("the SQLite writer thread stopped while opening"))??;
        Ok(Self {
            write,
            projections,
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
    /// go through the writer thread, which caches stream heads: after changing a stream's rows
    /// through this pool, an append to it may fail once (the unique version catches it, and the
    /// cache is emptied).
    pub fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    /// Stops the writer and closes the pools of both files (checkpointing their WALs). Appends
    /// after it fail.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.writer.send(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
        self.read.close().await;
        self.write.close().await;
        self.projections.close().await;
    }
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
        let stopped = || StoreError::backend("the SQLite writer has stopped");
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
        let stopped = || StoreError::backend("the SQLite writer has stopped");
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
mod tests;
