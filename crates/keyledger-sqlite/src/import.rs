//! Import: a batch of stored envelopes committed as they are, in a transaction of its own, on
//! the writer thread's connection.

use std::collections::HashMap;

use keyledger_domain::GlobalPosition;
use keyledger_store::StoredEvent;
use keyledger_store::import::{check_import, imported_commands};
use keyledger_store::row::EnvelopeColumns;
use keyledger_store::{ImportBatch, StoreError};
use rusqlite::{Connection, TransactionBehavior};

use crate::sql::{INSERT_IMPORTED, command_values, envelope_params, non_negative, stream_head};

/// One import batch in its own transaction: the emptiness check of a first batch, the stream
/// heads, the checks of [`keyledger_store::import`], then the rows and the command ids.
/// Returns how many events it stored and the position the last one got.
pub(crate) fn import_batch(
    conn: &mut Connection,
    mut events: Vec<StoredEvent>,
    batch: ImportBatch,
) -> Result<(usize, Option<GlobalPosition>), StoreError> {
    let backend = StoreError::backend;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    if batch == ImportBatch::First {
        let any: bool = tx
            .query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))
            .map_err(backend)?;
        if any {
            return Err(StoreError::ImportTargetNotEmpty);
        }
    }
    let mut heads = HashMap::new();
    for e in &events {
        if !heads.contains_key(&e.stream_id)
            && let Some(head) = stream_head(&tx, e.stream_id)?
        {
            heads.insert(e.stream_id, head);
        }
    }
    check_import(heads, &events)?;
    {
        let mut insert = tx.prepare_cached(INSERT_IMPORTED).map_err(backend)?;
        for e in &mut events {
            let c = EnvelopeColumns::from_event(e)?;
            let position: i64 = insert
                .query_row(envelope_params(&c).as_slice(), |r| r.get(0))
                .map_err(backend)?;
            e.global_position = GlobalPosition(non_negative(position));
        }
        // A known command id is extended only when this batch continues its append (see
        // `keyledger_store::import::imported_commands`).
        let mut record = tx
            .prepare_cached(
                "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
                 first_position, last_position) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (command_id) DO UPDATE SET last_version = excluded.last_version, \
                 last_position = excluded.last_position \
                 WHERE commands.stream_id = excluded.stream_id \
                 AND commands.last_version + 1 = excluded.first_version",
            )
            .map_err(backend)?;
        for (c, r) in imported_commands(&events) {
            let (command, stream, [fv, lv, fp, lp]) = command_values(&c, &r)?;
            record
                .execute(rusqlite::params![command, stream, fv, lv, fp, lp])
                .map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)?;
    Ok((events.len(), events.last().map(|e| e.global_position)))
}
