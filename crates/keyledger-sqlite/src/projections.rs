//! The projection file: the sink of the projection runners, in a SQLite file of its own beside
//! the event log (ADR 0021). Its commits take its own write lock, never the log's, so a runner's
//! commit does not queue in front of the appends; each commit keeps the checkpoint and the rows
//! in one transaction of this file.
//!
//! The file is written with `synchronous=NORMAL`: a power loss can take its last commits, and
//! the checkpoint goes back with the rows, so the runners fold those events again from the log.
//! A projection is never ahead of the log it folds: at open, a projection whose checkpoint is
//! past the log's end (a log that lost its last commits, possible only with
//! [`Durability::Normal`](crate::Durability::Normal)) is reset and rebuilt from 0.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use keyledger_domain::{OrgId, TenantId};
use keyledger_projection::{AuditEntry, AuditQuery, Changes, Projection, ProjectionSink, SinkError};
use keyledger_store::StoreError;
use keyledger_store::merkle::{AuditLog, Frontier};
use serde_json::Value;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{PROJECTIONS_MIGRATOR, SqliteOptions, SqliteStore, backend};

fn sink_err(e: impl std::error::Error + Send + Sync + 'static) -> SinkError {
    SinkError::Backend(Box::new(e))
}

/// The pools of a projection file: one write connection (commits, and the loads a runner folds
/// on, so it reads its own last commit) and a few readers.
#[derive(Debug, Clone)]
pub(crate) struct ProjectionFile {
    write: SqlitePool,
    read: SqlitePool,
}

impl ProjectionFile {
    /// Opens (creating when absent) the projection file at `path`, runs its migrations and resets
    /// every projection whose checkpoint is past `log_end`, the log's last position.
    pub(crate) async fn open(path: &Path, options: &SqliteOptions, log_end: u64) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(backend)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // A commit's statement journal stays in memory (see the log's options).
            .pragma("temp_store", "memory")
            // A commit touches pages all over the audit tree (every organization's log), more
            // than SQLite's default 2 MiB cache holds, and a checkpoint every 1,000 pages
            // copies the same hot pages again and again. Up to 64 MiB of cache and a
            // checkpoint every 10,000 pages cut the file's reads ninefold and its writes by
            // about 40% under load (ADR 0036).
            .pragma("cache_size", "-65536")
            .pragma("wal_autocheckpoint", "10000")
            .busy_timeout(options.busy_timeout);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(connect.clone())
            .await
            .map_err(backend)?;
        PROJECTIONS_MIGRATOR
            .run(&write)
            .await
            .map_err(StoreError::backend)?;
        let read = SqlitePoolOptions::new()
            .max_connections(options.read_connections.clamp(1, 4))
            .acquire_timeout(Duration::from_secs(60))
            // Readers keep SQLite's default cache; the large one is for the writer's commits.
            .connect_with(connect.read_only(true).pragma("cache_size", "-2000"))
            .await
            .map_err(backend)?;
        let file = Self { write, read };
        let sink = SqliteProjections { file: file.clone() };
        for projection in Projection::ALL {
            let at = sink.checkpoint(projection).await.map_err(StoreError::backend)?;
            if at > log_end {
                sink.reset(projection).await.map_err(StoreError::backend)?;
            }
        }
        Ok(file)
    }

    pub(crate) async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// The projection rows of one SQLite store, in its projection file.
#[derive(Debug, Clone)]
pub struct SqliteProjections {
    file: ProjectionFile,
}

impl SqliteProjections {
    pub fn new(store: &SqliteStore) -> Self {
        Self {
            file: store.projections.clone(),
        }
    }

    /// Every document of a projection, by organization (tests and rebuild comparisons).
    pub async fn documents(&self, projection: Projection) -> Result<Vec<(OrgId, Value)>, SinkError> {
        let rows =
            sqlx::query("SELECT org_id, doc FROM projection_documents WHERE projection = ? ORDER BY org_id")
                .bind(projection.name())
                .fetch_all(&self.file.read)
                .await
                .map_err(sink_err)?;
        rows.iter()
            .map(|r| {
                let org: String = r.get(0);
                let doc: String = r.get(1);
                Ok((
                    org.parse().map_err(sink_err)?,
                    serde_json::from_str(&doc).map_err(sink_err)?,
                ))
            })
            .collect()
    }

    /// The read pool (queries that need not see the runner's last commit at once).
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.file.read
    }

    /// One document.
    pub async fn document(&self, projection: Projection, org: OrgId) -> Result<Option<Value>, SinkError> {
        Ok(self.load(projection, &[org]).await?.remove(&org))
    }
}

#[async_trait]
impl ProjectionSink for SqliteProjections {
    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, SinkError> {
        let since = q.since.map(keyledger_store::envelope::canonical_time);
        let until = q.until.map(keyledger_store::envelope::canonical_time);
        // Times are stored in one fixed-width RFC 3339 form, so text order is time order.
        let rows = sqlx::query(
            "SELECT entry FROM tenant_audit WHERE tenant_id = ? AND position > ? AND (? IS NULL OR action = ?) \
             AND (? IS NULL OR occurred_at >= ?) AND (? IS NULL OR occurred_at < ?) \
             ORDER BY position LIMIT ?",
        )
        .bind(q.tenant.to_string())
        .bind(i64::try_from(q.after).unwrap_or(i64::MAX))
        .bind(q.action.as_deref())
        .bind(q.action.as_deref())
        .bind(since.as_deref())
        .bind(since.as_deref())
        .bind(until.as_deref())
        .bind(until.as_deref())
        .bind(i64::from(q.limit))
        .fetch_all(&self.file.read)
        .await
        .map_err(sink_err)?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(sink_err))
            .collect()
    }

    async fn tenant_known(&self, tenant: TenantId) -> Result<bool, SinkError> {
        let id = tenant.to_string();
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM tenant_audit WHERE tenant_id = ?) \
             OR EXISTS (SELECT 1 FROM projection_documents, json_each(projection_documents.doc, '$.tenants') \
                        WHERE projection = 'tenant_audit' AND json_each.value = ?)",
        )
        .bind(&id)
        .bind(&id)
        .fetch_optional(&self.file.read)
        .await
        .map_err(sink_err)?;
        Ok(found.is_some())
    }

    async fn organizations(&self, projection: Projection, limit: u32) -> Result<Vec<OrgId>, SinkError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT org_id FROM projection_documents WHERE projection = ? ORDER BY org_id LIMIT ?",
        )
        .bind(projection.name())
        .bind(i64::from(limit))
        .fetch_all(&self.file.read)
        .await
        .map_err(sink_err)?;
        ids.iter().map(|id| id.parse().map_err(sink_err)).collect()
    }

    async fn checkpoint(&self, projection: Projection) -> Result<u64, SinkError> {
        let row = sqlx::query("SELECT position FROM projection_checkpoints WHERE projection = ?")
            .bind(projection.name())
            .fetch_optional(&self.file.read)
            .await
            .map_err(sink_err)?;
        // A negative position (never written) reads as the start, as before.
        Ok(u64::try_from(row.map(|r| r.get::<i64, _>(0)).unwrap_or(0)).unwrap_or(0))
    }

    async fn load(&self, projection: Projection, orgs: &[OrgId]) -> Result<HashMap<OrgId, Value>, SinkError> {
        let mut out = HashMap::with_capacity(orgs.len());
        // SQLite limits bound parameters; 500 per query stays far below it.
        for chunk in orgs.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT org_id, doc FROM projection_documents WHERE projection = ? AND org_id IN ({placeholders})"
            );
            let mut q = sqlx::query(&sql).bind(projection.name());
            for org in chunk {
                q = q.bind(org.to_string());
            }
            for r in q.fetch_all(&self.file.write).await.map_err(sink_err)? {
                let org: String = r.get(0);
                let doc: String = r.get(1);
                out.insert(
                    org.parse().map_err(sink_err)?,
                    serde_json::from_str(&doc).map_err(sink_err)?,
                );
            }
        }
        Ok(out)
    }

    async fn commit(&self, projection: Projection, changes: Changes) -> Result<(), SinkError> {
        let mut tx = self.file.write.begin().await.map_err(sink_err)?;
        write_changes(&mut tx, projection, &changes).await?;
        tx.commit().await.map_err(sink_err)
    }

    /// Every projection's changes in one transaction of the projection file.
    async fn commit_all(&self, changes: Vec<(Projection, Changes)>) -> Result<(), SinkError> {
        let mut tx = self.file.write.begin().await.map_err(sink_err)?;
        for (projection, c) in &changes {
            write_changes(&mut tx, *projection, c).await?;
        }
        tx.commit().await.map_err(sink_err)
    }

    async fn tree_heads(&self, logs: &[AuditLog]) -> Result<BTreeMap<AuditLog, Frontier>, SinkError> {
        crate::audit_tree::heads(&self.file.write, logs)
            .await
            .map_err(sink_err)
    }

    async fn reset(&self, projection: Projection) -> Result<(), SinkError> {
        let mut tx = self.file.write.begin().await.map_err(sink_err)?;
        sqlx::query("DELETE FROM projection_documents WHERE projection = ?")
            .bind(projection.name())
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
        if projection == Projection::TenantAudit {
            sqlx::query("DELETE FROM tenant_audit")
                .execute(&mut *tx)
                .await
                .map_err(sink_err)?;
        }
        if projection == Projection::AuditTree {
            crate::audit_tree::clear(&mut tx).await.map_err(sink_err)?;
        }
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, position) VALUES (?, 0) \
             ON CONFLICT (projection) DO UPDATE SET position = 0",
        )
        .bind(projection.name())
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        tx.commit().await.map_err(sink_err)
    }
}

/// Writes one projection's changes and moves its checkpoint, in `tx`.
async fn write_changes(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    projection: Projection,
    changes: &Changes,
) -> Result<(), SinkError> {
    let name = projection.name();
    // First the checkpoint, forward only: a commit another runner got ahead of writes
    // nothing.
    let moved = sqlx::query(
        "INSERT INTO projection_checkpoints (projection, position) VALUES (?, ?) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
             WHERE projection_checkpoints.position < excluded.position",
    )
    .bind(name)
    .bind(i64::try_from(changes.checkpoint).map_err(sink_err)?)
    .execute(&mut **tx)
    .await
    .map_err(sink_err)?;
    if moved.rows_affected() == 0 {
        let at: i64 = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = ?")
            .bind(name)
            .fetch_one(&mut **tx)
            .await
            .map_err(sink_err)?;
        return Err(SinkError::Superseded {
            projection,
            checkpoint: u64::try_from(at).unwrap_or(0),
            attempted: changes.checkpoint,
        });
    }
    // Each kind of row goes in with one statement over a JSON array of the rows: a commit
    // is a handful of statements, whatever the batch size (each statement is a round trip
    // to the connection's thread).
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (org, doc) in &changes.docs {
        match doc {
            Some(d) => upserts.push(serde_json::json!([org.to_string(), d.to_string()])),
            None => deletes.push(serde_json::json!(org.to_string())),
        }
    }
    if !upserts.is_empty() {
        sqlx::query(
                "INSERT INTO projection_documents (projection, org_id, doc) \
                 SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?) WHERE true \
                 ON CONFLICT (projection, org_id) DO UPDATE SET doc = excluded.doc",
            )
            .bind(name)
            .bind(Value::Array(upserts).to_string())
            .execute(&mut **tx)
            .await
            .map_err(sink_err)?;
    }
    if !deletes.is_empty() {
        sqlx::query(
            "DELETE FROM projection_documents WHERE projection = ? \
                 AND org_id IN (SELECT value FROM json_each(?))",
        )
        .bind(name)
        .bind(Value::Array(deletes).to_string())
        .execute(&mut **tx)
        .await
        .map_err(sink_err)?;
    }
    if !changes.audit.is_empty() {
        let mut rows = Vec::with_capacity(changes.audit.len());
        for a in &changes.audit {
            rows.push(serde_json::json!([
                a.tenant_id.to_string(),
                i64::try_from(a.position).map_err(sink_err)?,
                a.org_id.to_string(),
                keyledger_store::envelope::canonical_time(a.occurred_at),
                a.action,
                serde_json::to_string(a).map_err(sink_err)?,
            ]));
        }
        sqlx::query(
                "INSERT INTO tenant_audit (tenant_id, position, org_id, occurred_at, action, entry) \
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                        json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]') \
                 FROM json_each(?)",
            )
            .bind(Value::Array(rows).to_string())
            .execute(&mut **tx)
            .await
            .map_err(sink_err)?;
    }
    crate::audit_tree::write(tx, &changes.tree)
        .await
        .map_err(sink_err)?;
    Ok(())
}
