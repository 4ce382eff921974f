//! The writer's cache of stream heads.

use std::collections::HashMap;

use keyledger_domain::StreamId;
use keyledger_store::StreamHead;
use sqlx::sqlite::SqliteConnection;

/// The heads of streams the writer task appended to, so that an append to a known stream skips
/// the head query (one round trip to the driver's thread of two). It is emptied whenever
/// another connection may have written (`PRAGMA data_version` changed, checked at the start of
/// each group under the write lock), after an import and after a failed group. Should it still
/// be stale, the `(stream_id, stream_version)` unique constraint refuses the insert and the
/// group fails as a whole (retryable); it can never fork a stream.
#[derive(Debug, Default)]
pub(crate) struct HeadCache {
    pub(crate) heads: HashMap<StreamId, StreamHead>,
    data_version: Option<i64>,
}

/// Heads kept before the cache is emptied.
const HEAD_CACHE_LIMIT: usize = 100_000;

impl HeadCache {
    pub(crate) fn clear(&mut self) {
        self.heads.clear();
        self.data_version = None;
    }

    /// Begins the group's transaction (`BEGIN IMMEDIATE` takes the write lock up front, so the
    /// head reads and the inserts see one state even when another process writes the file),
    /// empties the cache unless the database is as this connection last left it, and returns
    /// the log's last position (0 when empty): one round trip to the driver's thread.
    pub(crate) async fn begin(&mut self, conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
        let (version, last): (i64, i64) = sqlx::query_as(
            "BEGIN IMMEDIATE; \
             SELECT data_version, (SELECT coalesce(max(position), 0) FROM events) FROM pragma_data_version",
        )
        .fetch_one(&mut *conn)
        .await?;
        if self.data_version != Some(version) {
            self.heads.clear();
            self.data_version = Some(version);
        }
        Ok(u64::try_from(last).unwrap_or_default())
    }

    /// Keeps the heads a committed group wrote.
    pub(crate) fn extend(&mut self, written: HashMap<StreamId, StreamHead>) {
        if self.heads.len() + written.len() > HEAD_CACHE_LIMIT {
            self.heads.clear();
        }
        self.heads.extend(written);
    }
}
