//! The stored trees in memory: the rows the SQL sinks keep in tables, for tests and the
//! in-memory projection sink.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    AuditLog, AuditTrees, Frontier, Hash, NodeAddr, TreeChanges, TreeError, fold_events, logs_fed_by,
};
use crate::envelope::StoredEvent;

/// The tree rows: each log's frontier (with its size) and every complete subtree's hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TreeRows {
    heads: BTreeMap<AuditLog, Frontier>,
    nodes: BTreeMap<(AuditLog, NodeAddr), Hash>,
}

impl TreeRows {
    /// The stored frontiers of `logs` (absent: an empty log).
    pub fn heads(&self, logs: &[AuditLog]) -> BTreeMap<AuditLog, Frontier> {
        logs.iter()
            .filter_map(|l| self.heads.get(l).map(|h| (*l, h.clone())))
            .collect()
    }

    /// Whether `changes` can be written: none of its nodes is stored already (as a primary key
    /// in the SQL tables). Check before [`TreeRows::apply`] so a refused commit writes nothing.
    pub fn check(&self, changes: &TreeChanges) -> Result<(), TreeError> {
        match changes
            .nodes
            .iter()
            .find(|n| self.nodes.contains_key(&(n.log, n.addr)))
        {
            Some(n) => Err(TreeError::Backend(
                format!("node {:?} of log {} is stored already", n.addr, n.log).into(),
            )),
            None => Ok(()),
        }
    }

    /// Writes `changes` (checked with [`TreeRows::check`]).
    pub fn apply(&mut self, changes: TreeChanges) {
        for n in changes.nodes {
            self.nodes.insert((n.log, n.addr), n.hash);
        }
        self.heads.extend(changes.heads);
    }

    /// Deletes every log.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn size(&self, log: AuditLog) -> u64 {
        self.heads.get(&log).map_or(0, Frontier::size)
    }

    pub fn sizes(&self) -> BTreeMap<AuditLog, u64> {
        self.heads
            .iter()
            .filter(|(_, h)| h.size() > 0)
            .map(|(l, h)| (*l, h.size()))
            .collect()
    }

    pub fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Vec<Option<Hash>> {
        addrs
            .iter()
            .map(|a| self.nodes.get(&(log, *a)).copied())
            .collect()
    }

    pub fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        (start..end)
            .map(|i| {
                self.nodes
                    .get(&(log, NodeAddr::leaf(i)))
                    .copied()
                    .ok_or_else(|| TreeError::Corrupt {
                        log,
                        detail: format!("leaf {i} is missing"),
                    })
            })
            .collect()
    }

    /// Removes a node (tests of damaged storage).
    pub fn remove_node(&mut self, log: AuditLog, addr: NodeAddr) -> Option<Hash> {
        self.nodes.remove(&(log, addr))
    }
}

/// A tree store in memory that folds events itself: for unit and property tests of the
/// proofs without a projection runner.
#[derive(Debug, Default)]
pub struct MemoryTrees {
    rows: Mutex<TreeRows>,
}

impl MemoryTrees {
    /// Folds `events` (in global order, after the ones folded before).
    pub fn fold(&self, events: &[StoredEvent]) -> Result<(), TreeError> {
        let mut rows = self.lock();
        let changes = fold_events(rows.heads(&logs_fed_by(events)), events)?;
        rows.check(&changes)?;
        rows.apply(changes);
        Ok(())
    }

    /// Folds leaves that are not events into one log (property tests over random hashes).
    pub fn append_leaves(&self, log: AuditLog, leaves: &[Hash]) {
        let mut rows = self.lock();
        let mut head = rows.heads(&[log]).remove(&log).unwrap_or_default();
        let mut nodes = Vec::new();
        for leaf in leaves {
            head.append(*leaf, |addr, hash| {
                nodes.push(super::TreeNode { log, addr, hash })
            });
        }
        rows.apply(TreeChanges {
            nodes,
            heads: [(log, head)].into(),
        });
    }

    /// A copy of the rows.
    pub fn rows(&self) -> TreeRows {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TreeRows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl From<TreeRows> for MemoryTrees {
    fn from(rows: TreeRows) -> Self {
        Self {
            rows: Mutex::new(rows),
        }
    }
}

#[async_trait]
impl AuditTrees for MemoryTrees {
    async fn tree_size(&self, log: AuditLog) -> Result<u64, TreeError> {
        Ok(self.lock().size(log))
    }

    async fn tree_sizes(&self) -> Result<BTreeMap<AuditLog, u64>, TreeError> {
        Ok(self.lock().sizes())
    }

    async fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Result<Vec<Option<Hash>>, TreeError> {
        Ok(self.lock().nodes(log, addrs))
    }

    async fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        self.lock().leaf_hashes(log, start, end)
    }
}
