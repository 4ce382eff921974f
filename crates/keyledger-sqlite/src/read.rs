//! Reads: a `read_all` page in parts on several read connections, each part one text value.

use std::sync::atomic::Ordering;

use keyledger_domain::GlobalPosition;
use keyledger_store::StoreError;
use keyledger_store::StoredEvent;
use keyledger_store::row::to_i64;
use sqlx::Row as _;

use crate::sql::{SELECT_EVENTS, event_row};
use crate::{SqliteStore, backend, page};

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
    pub(crate) async fn read_all_parts(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Near the head (a live reader) one query does: parts would mostly come back empty.
        let known_ahead = self.written_up_to.load(Ordering::Relaxed).saturating_sub(after.0);
        let parts = if known_ahead >= u64::try_from(limit).expect("usize fits in u64") {
            (limit / MIN_PART).clamp(1, MAX_PARTS)
        } else {
            1
        };
        let size = limit.div_ceil(parts);
        let start = |i: usize| {
            let offset = u64::try_from(i * size).expect("usize fits in u64");
            GlobalPosition(after.0.saturating_add(offset))
        };
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
    pub(crate) async fn read_text_page(
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
