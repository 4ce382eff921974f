//! Proofs from stored nodes (RFC 9162 §2.1.3.1 and §2.1.4.1).
//!
//! Each hash of a proof, and a root, is the tree hash of a range of leaves `[start, end)` as
//! the RFC's recursion cuts it. Such a range starts at a multiple of the power of two at or
//! above its width, so it splits into complete subtrees: the stored nodes. A proof is planned
//! as ranges, the nodes they cover are read in one go, and the ranges are hashed from them.

use std::collections::{BTreeMap, BTreeSet};

use super::{Hash, NodeAddr, largest_power_of_two_below, node_hash};

/// Leaves `[start, end)`, `start < end`.
pub(crate) type Range = (u64, u64);

/// The ranges of the inclusion proof of leaf `index` in the tree of `size` leaves
/// (`index < size`): RFC 9162 `PATH(m, D[n])`, leaf side first.
pub(crate) fn inclusion_ranges(index: u64, size: u64) -> Vec<Range> {
    let mut out = Vec::new();
    path(index, 0, size, &mut out);
    out
}

fn path(m: u64, start: u64, end: u64, out: &mut Vec<Range>) {
    if end - start <= 1 {
        return;
    }
    let mid = start + largest_power_of_two_below(end - start);
    if m < mid {
        path(m, start, mid, out);
        out.push((mid, end));
    } else {
        path(m, mid, end, out);
        out.push((start, mid));
    }
}

/// The ranges of the consistency proof from `size1` to `size2` leaves
/// (`0 < size1 < size2`): RFC 9162 `PROOF(m, D[n]) = SUBPROOF(m, D[n], true)`.
pub(crate) fn consistency_ranges(size1: u64, size2: u64) -> Vec<Range> {
    let mut out = Vec::new();
    subproof(size1, 0, size2, true, &mut out);
    out
}

fn subproof(m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Range>) {
    if m == end {
        if !whole {
            out.push((start, end));
        }
        return;
    }
    let mid = start + largest_power_of_two_below(end - start);
    if m <= mid {
        subproof(m, start, mid, whole, out);
        out.push((mid, end));
    } else {
        subproof(m, mid, end, false, out);
        out.push((start, mid));
    }
}

/// The complete subtrees whose hashes give the tree hash of `[start, end)`, left to right.
pub(crate) fn cover((start, end): Range, out: &mut impl Extend<NodeAddr>) {
    let width = end - start;
    if width.is_power_of_two() {
        let level = u8::try_from(width.trailing_zeros()).unwrap_or(u8::MAX);
        out.extend([NodeAddr {
            level,
            index: start >> level,
        }]);
        return;
    }
    let mid = start + largest_power_of_two_below(width);
    cover((start, mid), out);
    cover((mid, end), out);
}

/// Every node that `ranges` cover, each once, in order.
pub(crate) fn nodes_for(ranges: &[Range]) -> Vec<NodeAddr> {
    let mut set = BTreeSet::new();
    for r in ranges {
        cover(*r, &mut set);
    }
    set.into_iter().collect()
}

/// The tree hash of `range` from the nodes read (`None`: a node it needs was not read).
pub(crate) fn range_hash(range: Range, nodes: &BTreeMap<NodeAddr, Hash>) -> Option<Hash> {
    let mut parts = Vec::new();
    cover(range, &mut parts);
    let mut hashes = parts.iter().rev().map(|a| nodes.get(a));
    let last = *hashes.next()??;
    hashes.try_fold(last, |right, left| Some(node_hash(left?, &right)))
}
