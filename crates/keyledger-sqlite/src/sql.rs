//! The queries the writer and the readers share, and the mapping of rows to values.

use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::row::EnvelopeColumns;
use keyledger_store::{AppendResult, StoreError, StreamHead};
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use crate::backend;

/// The last position in the log (0 when it is empty).
pub(crate) async fn last_position<'e>(db: impl sqlx::SqliteExecutor<'e>) -> Result<u64, StoreError> {
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(db)
        .await
        .map_err(backend)?;
    Ok(non_negative(last))
}

/// Begins a group's transaction and reads what the group needs first, in one round trip to the
/// driver's thread: `BEGIN IMMEDIATE` takes the write lock up front (so the head reads and the
/// inserts see one state even when another process writes the file), then this connection's
/// `data_version` and the last position (as [`last_position`]). Should the read fail after
/// `BEGIN`, the caller rolls back.
pub(crate) async fn begin_group(conn: &mut SqliteConnection) -> Result<(i64, u64), sqlx::Error> {
    let (data_version, last): (i64, i64) = sqlx::query_as(
        "BEGIN IMMEDIATE; \
         SELECT data_version, (SELECT coalesce(max(position), 0) FROM events) FROM pragma_data_version",
    )
    .fetch_one(conn)
    .await?;
    Ok((data_version, non_negative(last)))
}

pub(crate) async fn command_result(
    conn: &mut SqliteConnection,
    command_id: &CommandId,
) -> Result<Option<AppendResult>, StoreError> {
    let row = sqlx::query(
        "SELECT stream_id, first_version, last_version, first_position, last_position \
             FROM commands WHERE command_id = ?",
    )
    .bind(command_id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(backend)?;
    row.map(|r| command_row(&r)).transpose()
}

/// The last version and hash of `stream`; `None` when it has no event.
pub(crate) async fn stream_head(
    conn: &mut SqliteConnection,
    stream: StreamId,
) -> Result<Option<StreamHead>, StoreError> {
    sqlx::query(
        "SELECT stream_version, hash FROM events WHERE stream_id = ? \
             ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(stream.to_string())
    .fetch_optional(&mut *conn)
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

pub(crate) fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

pub(crate) fn command_row(r: &SqliteRow) -> Result<AppendResult, StoreError> {
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

pub(crate) const SELECT_EVENTS: &str = "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
     occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash FROM events";

pub(crate) fn event_row(r: &SqliteRow) -> Result<StoredEvent, StoreError> {
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
