//! The log's queries: the writer's (rusqlite, on the writer thread's connection), the
//! readers' mapping of rows to values (sqlx), and the last position, which both read.

use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::row::{EnvelopeColumns, to_i64};
use keyledger_store::{AppendResult, StoreError, StreamHead};
use rusqlite::{Connection, OptionalExtension as _, ToSql};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use crate::backend;

/// The last position in the log (0 when it is empty).
pub(crate) async fn last_position<'e>(db: impl sqlx::SqliteExecutor<'e>) -> Result<u64, StoreError> {
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(db)
        .await
        .map_err(backend)?;
    Ok(non_negative(last))
}

/// What a group needs first, read inside its transaction: this connection's `data_version`
/// and the last position (as [`last_position`]).
pub(crate) fn group_start(conn: &Connection) -> Result<(i64, u64), rusqlite::Error> {
    let (data_version, last): (i64, i64) = conn
        .prepare_cached(
            "SELECT data_version, (SELECT coalesce(max(position), 0) FROM events) FROM pragma_data_version",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((data_version, non_negative(last)))
}

/// The result recorded for `command_id`, if any.
pub(crate) fn command_result(
    conn: &Connection,
    command_id: &CommandId,
) -> Result<Option<AppendResult>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT stream_id, first_version, last_version, first_position, last_position \
             FROM commands WHERE command_id = ?1",
        )
        .and_then(|mut q| {
            q.query_row([command_id.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?],
                ))
            })
            .optional()
        })
        .map_err(StoreError::backend)?;
    row.map(|(stream, [fv, lv, fp, lp]): (String, [i64; 4])| {
        Ok(AppendResult {
            stream: stream
                .parse()
                .map_err(|e| StoreError::backend(format!("commands.stream_id: {e}")))?,
            first_version: StreamVersion(non_negative(fv)),
            last_version: StreamVersion(non_negative(lv)),
            first_position: GlobalPosition(non_negative(fp)),
            last_position: GlobalPosition(non_negative(lp)),
            repeat: false,
        })
    })
    .transpose()
}

/// The last version and hash of `stream`; `None` when it has no event.
pub(crate) fn stream_head(conn: &Connection, stream: StreamId) -> Result<Option<StreamHead>, StoreError> {
    conn.prepare_cached(
        "SELECT stream_version, hash FROM events WHERE stream_id = ?1 \
         ORDER BY stream_version DESC LIMIT 1",
    )
    .and_then(|mut q| {
        q.query_row([stream.to_string()], |r| {
            Ok(StreamHead {
                version: StreamVersion(non_negative(r.get(0)?)),
                hash: r.get(1)?,
            })
        })
        .optional()
    })
    .map_err(StoreError::backend)
}

/// The envelope's columns other than `position`: the order of [`envelope_params`].
macro_rules! envelope_columns {
    () => {
        "event_id, stream_id, stream_version, event_type, schema_version, occurred_at, actor, \
         command_id, correlation_id, causation_id, payload, prev_hash, hash"
    };
}

/// Inserts an event the writer numbered: [`envelope_params`], then the position (?14).
pub(crate) const INSERT_NUMBERED: &str = concat!(
    "INSERT INTO events (",
    envelope_columns!(),
    ", position) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
);

/// Inserts an imported event: [`envelope_params`]; SQLite gives the position.
pub(crate) const INSERT_IMPORTED: &str = concat!(
    "INSERT INTO events (",
    envelope_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING position"
);

/// The envelope's columns as statement parameters, in the order of `envelope_columns!`.
pub(crate) fn envelope_params(c: &EnvelopeColumns) -> [&dyn ToSql; 13] {
    [
        &c.event_id,
        &c.stream_id,
        &c.stream_version,
        &c.event_type,
        &c.schema_version,
        &c.occurred_at,
        &c.actor,
        &c.command_id,
        &c.correlation_id,
        &c.causation_id,
        &c.payload,
        &c.prev_hash,
        &c.hash,
    ]
}

/// The `commands` row of a command id's append: command id, stream, first and last version,
/// first and last position (the parameters ?1 to ?6 of an insert into `commands`).
pub(crate) fn command_values(
    c: &CommandId,
    r: &AppendResult,
) -> Result<(String, String, [i64; 4]), StoreError> {
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
}

pub(crate) fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
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
