//! Import: a batch of stored envelopes committed as they are, in a transaction of its own.

use std::collections::HashMap;

use keyledger_domain::GlobalPosition;
use keyledger_store::StoredEvent;
use keyledger_store::import::{check_import, imported_commands};
use keyledger_store::row::{EnvelopeColumns, to_i64};
use keyledger_store::{ImportBatch, StoreError};
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};

use crate::backend;
use crate::sql::{non_negative, stream_head};

/// One import batch in its own transaction: the emptiness check of a first batch, the stream
/// heads, the checks of [`keyledger_store::import`], then the rows and the command ids.
pub(crate) async fn import_batch(
    pool: &SqlitePool,
    mut events: Vec<StoredEvent>,
    batch: ImportBatch,
) -> Result<usize, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
    if batch == ImportBatch::First {
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events)")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if any {
            return Err(StoreError::ImportTargetNotEmpty);
        }
    }
    let mut heads = HashMap::new();
    for e in &events {
        if !heads.contains_key(&e.stream_id)
            && let Some(head) = stream_head(&mut tx, e.stream_id).await?
        {
            heads.insert(e.stream_id, head);
        }
    }
    check_import(heads, &events)?;
    for e in &mut events {
        e.global_position = insert_event(&mut tx, e).await?;
    }
    for (c, r) in imported_commands(&events) {
        // A known command id is extended only when this batch continues its append (see
        // `keyledger_store::import::imported_commands`).
        sqlx::query(
            "INSERT INTO commands (command_id, stream_id, first_version, last_version, \
                 first_position, last_position) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (command_id) DO UPDATE SET last_version = excluded.last_version, \
                 last_position = excluded.last_position \
             WHERE commands.stream_id = excluded.stream_id \
               AND commands.last_version + 1 = excluded.first_version",
        )
        .bind(c.as_str())
        .bind(r.stream.to_string())
        .bind(to_i64(r.first_version.0)?)
        .bind(to_i64(r.last_version.0)?)
        .bind(to_i64(r.first_position.0)?)
        .bind(to_i64(r.last_position.0)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(events.len())
}

/// Inserts one envelope as it is; returns the position it got.
async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    e: &StoredEvent,
) -> Result<GlobalPosition, StoreError> {
    let c = EnvelopeColumns::from_event(e)?;
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
             occurred_at, actor, command_id, correlation_id, causation_id, payload, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
    )
    .bind(c.event_id)
    .bind(c.stream_id)
    .bind(c.stream_version)
    .bind(c.event_type)
    .bind(c.schema_version)
    .bind(c.occurred_at)
    .bind(c.actor)
    .bind(c.command_id)
    .bind(c.correlation_id)
    .bind(c.causation_id)
    .bind(c.payload)
    .bind(c.prev_hash)
    .bind(c.hash)
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(GlobalPosition(non_negative(position)))
}
