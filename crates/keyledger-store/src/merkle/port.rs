//! The read port of the stored trees: sizes, roots and proofs of any size a log has reached.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::proof::{Range, consistency_ranges, inclusion_ranges, nodes_for, range_hash};
use super::{AuditLog, Hash, NodeAddr, empty_root};
use crate::error::BoxError;

/// Why a tree read or fold failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The log holds fewer leaves than asked for (the fold may not have reached it yet). A
    /// client error (HTTP 400): ask for a size at most `tree_size`.
    #[error("log {log} holds {tree_size} leaves, not {size}")]
    SizeBeyondTree {
        log: AuditLog,
        size: u64,
        tree_size: u64,
    },
    /// A leaf index at or past the tree size of the proof. A client error (HTTP 400).
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// A consistency proof from a larger tree to a smaller one. A client error (HTTP 400).
    #[error("tree sizes {from} and {to} are not in order")]
    SizesOutOfOrder { from: u64, to: u64 },
    /// An event does not continue its organization's log: its version is not one more than
    /// the log's size. The event log and the tree disagree; nothing was folded. Investigate the log
    /// (`keyledger verify`), then rebuild the tree (`keyledger projections rebuild`).
    #[error("version {version} does not continue log {log}, which holds {size} leaves")]
    LeafOutOfOrder { log: AuditLog, version: u64, size: u64 },
    /// A stored node or frontier is missing or malformed: the tree storage lost rows or was
    /// edited. Rebuild the tree (`keyledger projections rebuild`).
    #[error("the stored tree of log {log} is damaged: {detail}")]
    Corrupt { log: AuditLog, detail: String },
    /// No connection came free in time. Retry after a pause (HTTP 503 `store_unavailable`).
    #[error("no connection to the tree storage in time")]
    Unavailable(#[source] BoxError),
    /// The storage failed otherwise (usually transient).
    #[error("tree storage failed: {0}")]
    Backend(#[source] BoxError),
}

/// Reads the stored Merkle trees. Implemented by the projection sinks of every backend (SQLite
/// and PostgreSQL tables, memory); object safe.
///
/// A backend implements the four storage reads; roots and proofs come from them, each from
/// one read of O(log n) nodes, whatever the log's size. That read includes the last leaf of
/// the size asked for: leaves are stored in order, with the size, so its presence shows the
/// log has reached that size without reading the size too.
#[async_trait]
pub trait AuditTrees: Send + Sync {
    /// How many leaves of `log` are folded (0 for a log with no event yet).
    async fn tree_size(&self, log: AuditLog) -> Result<u64, TreeError>;

    /// Every log that has leaves, with its size (which logs grew since the last checkpoint).
    async fn tree_sizes(&self) -> Result<BTreeMap<AuditLog, u64>, TreeError>;

    /// The stored hashes of `addrs`, in the same order, read in one go (`None`: not stored).
    async fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Result<Vec<Option<Hash>>, TreeError>;

    /// The leaf hashes `start..end` of `log`, in order (`end` at most the tree size).
    async fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError>;

    /// The root of the first `size` leaves of `log` (RFC 9162 §2.1.1).
    async fn root(&self, log: AuditLog, size: u64) -> Result<Hash, TreeError> {
        if size == 0 {
            return Ok(empty_root());
        }
        let mut hashes = range_hashes(self, log, size, &[(0, size)]).await?;
        hashes.pop().ok_or_else(|| TreeError::Corrupt {
            log,
            detail: "no root".into(),
        })
    }

    /// The inclusion proof (RFC 9162 §2.1.3.1) of leaf `index` in the tree of `size` leaves.
    async fn inclusion_proof(&self, log: AuditLog, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        if index >= size {
            return Err(TreeError::IndexOutOfRange { index, size });
        }
        range_hashes(self, log, size, &inclusion_ranges(index, size)).await
    }

    /// The consistency proof (RFC 9162 §2.1.4.1) that the tree of `size2` leaves extends the
    /// tree of `size1`. Empty when `size1` is 0 or equals `size2`.
    async fn consistency_proof(&self, log: AuditLog, size1: u64, size2: u64) -> Result<Vec<Hash>, TreeError> {
        if size1 > size2 {
            return Err(TreeError::SizesOutOfOrder {
                from: size1,
                to: size2,
            });
        }
        if size1 == 0 || size1 == size2 {
            within(self, log, size2).await?;
            return Ok(Vec::new());
        }
        range_hashes(self, log, size2, &consistency_ranges(size1, size2)).await
    }
}

/// Fails with [`TreeError::SizeBeyondTree`] unless `log` holds at least `size` leaves.
async fn within<T: AuditTrees + ?Sized>(trees: &T, log: AuditLog, size: u64) -> Result<(), TreeError> {
    let tree_size = trees.tree_size(log).await?;
    if size > tree_size {
        return Err(TreeError::SizeBeyondTree { log, size, tree_size });
    }
    Ok(())
}

/// The tree hashes of `ranges` of a tree of `size` leaves (`size > 0`), from one read of the
/// nodes they cover and of the last leaf.
async fn range_hashes<T: AuditTrees + ?Sized>(
    trees: &T,
    log: AuditLog,
    size: u64,
    ranges: &[Range],
) -> Result<Vec<Hash>, TreeError> {
    let last_leaf = NodeAddr::leaf(size - 1);
    let mut addrs = nodes_for(ranges);
    addrs.push(last_leaf);
    let hashes = trees.nodes(log, &addrs).await?;
    if hashes.len() != addrs.len() {
        return Err(TreeError::Corrupt {
            log,
            detail: format!("{} nodes read for {} asked", hashes.len(), addrs.len()),
        });
    }
    if hashes.last().is_none_or(Option::is_none) {
        // The log has not reached `size`, or lost its last leaf.
        within(trees, log, size).await?;
        return Err(TreeError::Corrupt {
            log,
            detail: format!("leaf {} is missing", size - 1),
        });
    }
    let nodes: BTreeMap<NodeAddr, Hash> = addrs
        .into_iter()
        .zip(hashes)
        .filter_map(|(a, h)| Some((a, h?)))
        .collect();
    ranges
        .iter()
        .map(|r| {
            range_hash(*r, &nodes).ok_or_else(|| TreeError::Corrupt {
                log,
                detail: format!("a node of leaves {}..{} is missing", r.0, r.1),
            })
        })
        .collect()
}
