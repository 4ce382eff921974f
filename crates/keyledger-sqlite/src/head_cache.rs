//! The writer's cache of stream heads.

use std::collections::HashMap;

use keyledger_domain::StreamId;
use keyledger_store::StreamHead;

/// The heads of streams the writer thread appended to, so that an append to a known stream skips
/// the head query. It is emptied whenever another connection may have written (`PRAGMA
/// data_version` changed, checked at the start of each group under the write lock), after an
/// import and after a failed group. Should it still be stale, the `(stream_id, stream_version)`
/// unique constraint refuses the insert and the group fails as a whole (retryable); it can never
/// fork a stream.
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

    /// Empties the cache unless the database is as this connection last left it
    /// (`data_version`, read at the start of the group under the write lock).
    pub(crate) fn check(&mut self, data_version: i64) {
        if self.data_version != Some(data_version) {
            self.heads.clear();
            self.data_version = Some(data_version);
        }
    }

    /// Keeps the heads a committed group wrote.
    pub(crate) fn extend(&mut self, written: HashMap<StreamId, StreamHead>) {
        if self.heads.len() + written.len() > HEAD_CACHE_LIMIT {
            self.heads.clear();
        }
        self.heads.extend(written);
    }
}
