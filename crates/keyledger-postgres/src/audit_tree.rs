//! The audit log's Merkle trees in PostgreSQL tables beside the projections (ADR 0024,
//! "Decision: the tree storage"): written by the `audit_tree` projection's commits, in the same
//! transaction as its checkpoint and lease fence, and read through [`AuditTrees`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use keyledger_store::merkle::rows::{all_leaves, sql_int, stored_hash, stored_log, stored_size};
use keyledger_store::merkle::{AuditLog, AuditTrees, Frontier, Hash, NodeAddr, TreeChanges, TreeError};
use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgPool};

use crate::projections::PgProjections;

fn db_err(e: sqlx::Error) -> TreeError {
    if crate::is_no_connection(&e) {
        TreeError::Unavailable(Box::new(e))
    } else {
        TreeError::Backend(Box::new(e))
    }
}

/// Writes a batch's nodes and frontiers inside the commit's transaction, one statement each.
/// A node stored already (a primary key) fails the whole commit.
pub(crate) async fn write(tx: &mut PgConnection, changes: &TreeChanges) -> Result<(), TreeError> {
    if !changes.nodes.is_empty() {
        let mut logs = Vec::with_capacity(changes.nodes.len());
        let mut levels = Vec::with_capacity(changes.nodes.len());
        let mut idxs = Vec::with_capacity(changes.nodes.len());
        let mut hashes = Vec::with_capacity(changes.nodes.len());
        for n in &changes.nodes {
            logs.push(n.log.to_string());
            levels.push(i16::from(n.addr.level));
            idxs.push(sql_int(n.addr.index)?);
            hashes.push(n.hash.to_vec());
        }
        sqlx::query(
            "INSERT INTO audit_tree_nodes (log, level, idx, hash) \
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bytea[])",
        )
        .bind(&logs)
        .bind(&levels)
        .bind(&idxs)
        .bind(&hashes)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    if !changes.heads.is_empty() {
        let mut logs = Vec::with_capacity(changes.heads.len());
        let mut sizes = Vec::with_capacity(changes.heads.len());
        let mut frontiers = Vec::with_capacity(changes.heads.len());
        for (log, head) in &changes.heads {
            logs.push(log.to_string());
            sizes.push(sql_int(head.size())?);
            frontiers.push(head.to_bytes());
        }
        sqlx::query(
            "INSERT INTO audit_tree_heads (log, size, frontier) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) \
             ON CONFLICT (log) DO UPDATE SET size = excluded.size, frontier = excluded.frontier",
        )
        .bind(&logs)
        .bind(&sizes)
        .bind(&frontiers)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Deletes every log, inside the reset's transaction.
pub(crate) async fn clear(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("TRUNCATE audit_tree_nodes, audit_tree_heads")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The frontiers of `logs`.
pub(crate) async fn heads(
    pool: &PgPool,
    logs: &[AuditLog],
) -> Result<BTreeMap<AuditLog, Frontier>, TreeError> {
    let keys: Vec<String> = logs.iter().map(ToString::to_string).collect();
    let rows = sqlx::query("SELECT log, size, frontier FROM audit_tree_heads WHERE log = ANY($1)")
        .bind(&keys)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let log = stored_log(r.get(0))?;
            let size = stored_size(log, r.get(1))?;
            Ok((log, Frontier::from_bytes(log, size, r.get(2))?))
        })
        .collect()
}

#[async_trait]
impl AuditTrees for PgProjections {
    async fn tree_size(&self, log: AuditLog) -> Result<u64, TreeError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM audit_tree_heads WHERE log = $1")
            .bind(log.to_string())
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        size.map_or(Ok(0), |s| stored_size(log, s))
    }

    async fn tree_sizes(&self) -> Result<BTreeMap<AuditLog, u64>, TreeError> {
        let rows = sqlx::query("SELECT log, size FROM audit_tree_heads WHERE size > 0")
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let log = stored_log(r.get(0))?;
                Ok((log, stored_size(log, r.get(1))?))
            })
            .collect()
    }

    async fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Result<Vec<Option<Hash>>, TreeError> {
        let levels: Vec<i16> = addrs.iter().map(|a| i16::from(a.level)).collect();
        let idxs: Vec<i64> = addrs.iter().map(|a| sql_int(a.index)).collect::<Result<_, _>>()?;
        let rows = sqlx::query(
            "SELECT t.i, n.hash FROM unnest($2::smallint[], $3::bigint[]) WITH ORDINALITY AS t(level, idx, i) \
             JOIN audit_tree_nodes AS n ON n.log = $1 AND n.level = t.level AND n.idx = t.idx",
        )
        .bind(log.to_string())
        .bind(&levels)
        .bind(&idxs)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        let mut found: Vec<Option<Hash>> = vec![None; addrs.len()];
        for r in &rows {
            // ORDINALITY counts from 1.
            let i = usize::try_from(r.get::<i64, _>(0) - 1).map_err(TreeError::backend)?;
            if let Some(slot) = found.get_mut(i) {
                *slot = Some(stored_hash(log, r.get(1))?);
            }
        }
        Ok(found)
    }

    async fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        let rows = sqlx::query(
            "SELECT hash FROM audit_tree_nodes WHERE log = $1 AND level = 0 AND idx >= $2 AND idx < $3 \
             ORDER BY idx",
        )
        .bind(log.to_string())
        .bind(sql_int(start)?)
        .bind(sql_int(end)?)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        let hashes: Vec<Hash> = rows
            .iter()
            .map(|r| stored_hash(log, r.get(0)))
            .collect::<Result<_, _>>()?;
        all_leaves(log, start, end, hashes)
    }
}
