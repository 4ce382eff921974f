//! Folding events into stored trees, like a projection.
//!
//! A log stores the hash of every *complete* subtree, addressed by [`NodeAddr`] (level,
//! index): once written, a node never changes, so a root or a proof of any earlier size reads
//! only O(log n) of them. Appending a leaf needs only the log's [`Frontier`], the roots of
//! its complete subtrees along the right edge, which is stored beside its size.

use std::collections::BTreeMap;

use super::{AuditLog, Hash, TreeError, empty_root, event_leaf_hash, log, node_hash};
use crate::envelope::StoredEvent;

/// The root of the complete subtree of `2^level` leaves that starts at leaf
/// `index << level`. Level 0 holds the leaf hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr {
    pub level: u8,
    pub index: u64,
}

impl NodeAddr {
    pub fn leaf(index: u64) -> Self {
        Self { level: 0, index }
    }
}

/// A node to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeNode {
    pub log: AuditLog,
    pub addr: NodeAddr,
    pub hash: Hash,
}

/// A log's size and the roots of its complete subtrees along the right edge, largest first:
/// one per bit set in the size. It is all an append needs, and it gives the current root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty log.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads a stored frontier: `bytes` are its hashes, concatenated. A frontier whose hash
    /// count is not the number of bits set in `size` is [`TreeError::Corrupt`].
    pub fn from_bytes(log: AuditLog, size: u64, bytes: &[u8]) -> Result<Self, TreeError> {
        let corrupt = || TreeError::Corrupt {
            log,
            detail: format!("a frontier of {} bytes for size {size}", bytes.len()),
        };
        let (chunks, rest) = bytes.as_chunks::<32>();
        if !rest.is_empty() || u32::try_from(chunks.len()).ok() != Some(size.count_ones()) {
            return Err(corrupt());
        }
        Ok(Self {
            size,
            hashes: chunks.to_vec(),
        })
    }

    /// The stored form: the hashes, concatenated (at most 64 × 32 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// How many leaves the log holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the whole log: its complete subtrees folded from the right, as RFC 9162
    /// §2.1.1 splits a tree at the largest power of two below its size.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Appends a leaf and gives `emit` every node it completes: the leaf itself, then each
    /// inner node whose right child it completes.
    pub fn append(&mut self, leaf: Hash, mut emit: impl FnMut(NodeAddr, Hash)) {
        let mut addr = NodeAddr::leaf(self.size);
        let mut hash = leaf;
        emit(addr, hash);
        while addr.index & 1 == 1 {
            // A right child: its left sibling is the smallest complete subtree so far. The
            // frontier holds one hash per bit set in the size, and this bit is set.
            let Some(left) = self.hashes.pop() else { break };
            hash = node_hash(&left, &hash);
            addr = NodeAddr {
                level: addr.level + 1,
                index: addr.index >> 1,
            };
            emit(addr, hash);
        }
        self.hashes.push(hash);
        self.size += 1;
    }
}

/// Everything a batch of events adds to the trees: new nodes and the logs' new frontiers,
/// written with the fold's checkpoint in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TreeChanges {
    pub nodes: Vec<TreeNode>,
    pub heads: BTreeMap<AuditLog, Frontier>,
}

/// The logs `events` feed, each once: what a fold must load the frontiers of.
pub fn logs_fed_by(events: &[StoredEvent]) -> Vec<AuditLog> {
    let mut logs: Vec<AuditLog> = events.iter().flat_map(|e| log::fed_by(e.stream_id)).collect();
    logs.sort_unstable();
    logs.dedup();
    logs
}

/// Folds `events` (in global order, right after the trees' checkpoint) into the logs whose
/// frontiers are `heads` (a log absent from `heads` is empty).
///
/// An event whose stream version is not its organization log's size + 1 is
/// [`TreeError::LeafOutOfOrder`]: the log and the tree disagree, nothing is folded.
pub fn fold_events(
    mut heads: BTreeMap<AuditLog, Frontier>,
    events: &[StoredEvent],
) -> Result<TreeChanges, TreeError> {
    let mut nodes = Vec::with_capacity(events.len() * 4);
    for event in events {
        let leaf = event_leaf_hash(event);
        for log in log::fed_by(event.stream_id) {
            let head = heads.entry(log).or_default();
            if let AuditLog::Org(_) = log
                && head.size + 1 != event.stream_version.0
            {
                return Err(TreeError::LeafOutOfOrder {
                    log,
                    version: event.stream_version.0,
                    size: head.size,
                });
            }
            head.append(leaf, |addr, hash| nodes.push(TreeNode { log, addr, hash }));
        }
    }
    Ok(TreeChanges { nodes, heads })
}

#[cfg(test)]
mod tests {
    use super::super::{leaf_hash, root};
    use super::*;

    #[test]
    fn the_frontier_root_is_the_tree_hash_and_the_nodes_are_complete_subtrees() {
        let leaves: Vec<Hash> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::empty();
        let mut stored = BTreeMap::new();
        for (n, leaf) in leaves.iter().enumerate() {
            assert_eq!(frontier.root(), root(&leaves[..n]));
            frontier.append(*leaf, |addr, hash| {
                assert!(stored.insert(addr, hash).is_none(), "{addr:?} written twice");
            });
            let back = Frontier::from_bytes(AuditLog::Global, frontier.size(), &frontier.to_bytes()).unwrap();
            assert_eq!(back, frontier);
        }
        assert_eq!(frontier.root(), root(&leaves));
        for (addr, hash) in stored {
            let start = usize::try_from(addr.index << addr.level).unwrap();
            let end = start + (1 << addr.level);
            assert_eq!(hash, root(&leaves[start..end]), "{addr:?}");
        }
    }

    #[test]
    fn a_frontier_of_the_wrong_length_is_corrupt() {
        let h = leaf_hash(b"x");
        assert!(Frontier::from_bytes(AuditLog::Global, 3, &h).is_err());
        assert!(Frontier::from_bytes(AuditLog::Global, 1, &h[..31]).is_err());
        assert!(Frontier::from_bytes(AuditLog::Global, 2, &h).is_ok());
    }
}
