//! The audit log's Merkle trees in the projection file (ADR 0024, "Decision: the tree
//! storage"): written by the `audit_tree` projection's commits, in the same transaction as its
//! checkpoint, and read through [`AuditTrees`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use keyledger_store::merkle::rows::{all_leaves, sql_int, stored_hash, stored_log, stored_size};
use keyledger_store::merkle::{AuditLog, AuditTrees, Frontier, Hash, NodeAddr, TreeChanges, TreeError};
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnection, SqlitePool};

use crate::projections::SqliteProjections;

/// Rows per multi-row insert: 4 parameters each, far below SQLite's limit.
const INSERT_CHUNK: usize = 200;
/// Point lookups per compound select (SQLite allows 500).
const LOOKUP_CHUNK: usize = 200;

/// Writes a batch's nodes and frontiers inside the commit's transaction. A node stored
/// already (a primary key) fails the whole commit.
pub(crate) async fn write(tx: &mut SqliteConnection, changes: &TreeChanges) -> Result<(), TreeError> {
    for chunk in changes.nodes.chunks(INSERT_CHUNK) {
        let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!("INSERT INTO audit_tree_nodes (log, level, idx, hash) VALUES {values}");
        let mut q = sqlx::query(&sql);
        for n in chunk {
            q = q
                .bind(n.log.to_string())
                .bind(i64::from(n.addr.level))
                .bind(sql_int(n.addr.index)?)
                .bind(n.hash.as_slice());
        }
        q.execute(&mut *tx).await.map_err(TreeError::backend)?;
    }
    let heads: Vec<_> = changes.heads.iter().collect();
    for chunk in heads.chunks(INSERT_CHUNK) {
        let values = vec!["(?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO audit_tree_heads (log, size, frontier) VALUES {values} \
             ON CONFLICT (log) DO UPDATE SET size = excluded.size, frontier = excluded.frontier"
        );
        let mut q = sqlx::query(&sql);
        for (log, head) in chunk {
            q = q
                .bind(log.to_string())
                .bind(sql_int(head.size())?)
                .bind(head.to_bytes());
        }
        q.execute(&mut *tx).await.map_err(TreeError::backend)?;
    }
    Ok(())
}

/// Deletes every log, inside the reset's transaction.
pub(crate) async fn clear(tx: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM audit_tree_nodes")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM audit_tree_heads")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The frontiers of `logs`, read on `pool` (the write connection, for the fold: it must see
/// its own last commit).
pub(crate) async fn heads(
    pool: &SqlitePool,
    logs: &[AuditLog],
) -> Result<BTreeMap<AuditLog, Frontier>, TreeError> {
    let mut out = BTreeMap::new();
    for chunk in logs.chunks(500) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql = format!("SELECT log, size, frontier FROM audit_tree_heads WHERE log IN ({placeholders})");
        let mut q = sqlx::query(&sql);
        for log in chunk {
            q = q.bind(log.to_string());
        }
        for r in q.fetch_all(pool).await.map_err(TreeError::backend)? {
            let log = stored_log(r.get(0))?;
            let size = stored_size(log, r.get(1))?;
            out.insert(log, Frontier::from_bytes(log, size, r.get(2))?);
        }
    }
    Ok(out)
}

#[async_trait]
impl AuditTrees for SqliteProjections {
    async fn tree_size(&self, log: AuditLog) -> Result<u64, TreeError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM audit_tree_heads WHERE log = ?")
            .bind(log.to_string())
            .fetch_optional(self.reader())
            .await
            .map_err(TreeError::backend)?;
        size.map_or(Ok(0), |s| stored_size(log, s))
    }

    async fn tree_sizes(&self) -> Result<BTreeMap<AuditLog, u64>, TreeError> {
        let rows = sqlx::query("SELECT log, size FROM audit_tree_heads WHERE size > 0")
            .fetch_all(self.reader())
            .await
            .map_err(TreeError::backend)?;
        rows.iter()
            .map(|r| {
                let log = stored_log(r.get(0))?;
                Ok((log, stored_size(log, r.get(1))?))
            })
            .collect()
    }

    async fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Result<Vec<Option<Hash>>, TreeError> {
        let key = log.to_string();
        let mut out = Vec::with_capacity(addrs.len());
        for chunk in addrs.chunks(LOOKUP_CHUNK) {
            // One primary-key lookup per node, in one statement; `i` keeps the order.
            let sql = (0..chunk.len())
                .map(|i| {
                    format!("SELECT {i}, hash FROM audit_tree_nodes WHERE log = ? AND level = ? AND idx = ?")
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let mut q = sqlx::query(&sql);
            for a in chunk {
                q = q.bind(&key).bind(i64::from(a.level)).bind(sql_int(a.index)?);
            }
            let rows = q.fetch_all(self.reader()).await.map_err(TreeError::backend)?;
            let mut found: Vec<Option<Hash>> = vec![None; chunk.len()];
            for r in &rows {
                let i = usize::try_from(r.get::<i64, _>(0)).map_err(TreeError::backend)?;
                if let Some(slot) = found.get_mut(i) {
                    *slot = Some(stored_hash(log, r.get(1))?);
                }
            }
            out.extend(found);
        }
        Ok(out)
    }

    async fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        let rows = sqlx::query(
            "SELECT idx, hash FROM audit_tree_nodes WHERE log = ? AND level = 0 AND idx >= ? AND idx < ? \
             ORDER BY idx",
        )
        .bind(log.to_string())
        .bind(sql_int(start)?)
        .bind(sql_int(end)?)
        .fetch_all(self.reader())
        .await
        .map_err(TreeError::backend)?;
        let hashes: Vec<Hash> = rows
            .iter()
            .map(|r| stored_hash(log, r.get(1)))
            .collect::<Result<_, _>>()?;
        all_leaves(log, start, end, hashes)
    }
}
