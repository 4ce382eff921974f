//! The verifiable audit log's Merkle trees (CONTRACT.md "Verifiable audit log", ADR 0024).
//!
//! Each organization's stream is an append-only Merkle log whose leaf `i` is stream version
//! `i + 1`; one global log covers every event in commit order. Hashing is RFC 6962/9162:
//! `leaf = SHA-256(0x00 ‖ input)`, `node = SHA-256(0x01 ‖ left ‖ right)`.
//!
//! - [`leaf_document`] / [`leaf_input`]: what a leaf commits to. It is computable from public
//!   data: each sealed field enters only as the SHA-256 of its sealed form.
//! - [`root`]: the tree hash of a list of leaf hashes.
//! - [`verify_inclusion`] / [`verify_consistency`]: the RFC 9162 §2.1.3.2 and §2.1.4.2 checks.
//!
//! The stored trees (ADR 0024, "Decision: the tree storage"):
//!
//! - [`AuditLog`]: the global log or an organization's;
//! - [`fold_events`]: events to new [`TreeNode`]s and [`Frontier`]s, the pure fold that the
//!   `audit_tree` projection commits with its checkpoint;
//! - [`AuditTrees`]: the read port, roots and proofs of any size from O(log n) stored nodes;
//! - [`MemoryTrees`] / [`TreeRows`]: the same rows in memory.

mod fold;
mod log;
mod memory;
mod port;
mod proof;
#[cfg(any(test, feature = "conformance"))]
pub mod reference;
pub mod rows;
mod verify;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::envelope::{
    StoredEvent, canonical_time, write_canonical, write_canonical_members, write_canonical_with,
    write_envelope, write_string,
};

pub use fold::{Frontier, NodeAddr, TreeChanges, TreeNode, fold_events, logs_fed_by};
pub use log::{AuditLog, fed_by, org_log_of};
pub use memory::{MemoryTrees, TreeRows};
pub use port::{AuditTrees, TreeError};
pub use verify::{ProofError, verify_consistency, verify_inclusion};

/// A SHA-256 hash: a leaf hash, an inner node or a root.
pub type Hash = [u8; 32];

/// The value of `leaf` in every leaf document: names the leaf format.
pub const LEAF_FORMAT: &str = "keyledger-leaf/v1";

/// `SHA-256(0x00 ‖ input)`.
pub fn leaf_hash(input: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(input);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The Merkle tree hash (RFC 9162 §2.1.1) of these leaf hashes, in order.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly less than `n` (`n >= 2`): where RFC 9162 splits a tree.
pub fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// [`largest_power_of_two_below`] for an in-memory length.
pub fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The public document a stored event's leaf commits to: the envelope without its chain
/// hashes and global position (an import may renumber), with `"leaf": "keyledger-leaf/v1"`,
/// and with each sealed value `{"sealed": {...}}` replaced by
/// `{"sealed_sha256": hex(SHA-256(canonical JSON of the sealed object))}`. It holds no secret
/// and no key material, so it goes into audit bundles as it is.
pub fn leaf_document(event: &StoredEvent) -> Value {
    serde_json::json!({
        "leaf": LEAF_FORMAT,
        "event_id": event.event_id,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "occurred_at": canonical_time(event.occurred_at),
        "actor": {
            "kind": event.actor.kind,
            "id": event.actor.id,
            "roles": event.actor.roles,
            "source_ip": event.actor.source_ip,
        },
        "command_id": event.command_id,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "payload": hash_sealed(&event.payload),
    })
}

/// The leaf input: the canonical JSON bytes (sorted keys, no whitespace) of a leaf document.
pub fn leaf_input(document: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_canonical(document, &mut out);
    out
}

/// The leaf hash of a stored event: [`leaf_input`] of [`leaf_document`], written straight from
/// the event without building the document (the audit-tree fold hashes every event).
pub fn event_leaf_hash(event: &StoredEvent) -> Hash {
    leaf_hash(&event_leaf_input(event))
}

/// `leaf_input(&leaf_document(event))`, written member by member.
fn event_leaf_input(event: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    write_envelope(
        event,
        &[
            ("leaf", &|out: &mut Vec<u8>| write_string(LEAF_FORMAT, out)),
            ("payload", &|out: &mut Vec<u8>| {
                write_canonical_with(&event.payload, out, &write_sealed_digest);
            }),
        ],
        &mut out,
    );
    out
}

/// The sealed value `{"sealed": {...}}` as a leaf holds it: `{"sealed_sha256": "<hex>"}`.
fn sealed_digest(sealed: &Value) -> String {
    let mut bytes = Vec::new();
    write_canonical(sealed, &mut bytes);
    hex::encode(Sha256::digest(&bytes))
}

fn is_sealed(map: &Map<String, Value>) -> Option<&Value> {
    match (map.len(), map.get("sealed")) {
        (1, Some(sealed @ Value::Object(_))) => Some(sealed),
        _ => None,
    }
}

/// [`write_canonical_with`]'s replacement of a sealed value by its digest.
fn write_sealed_digest(map: &Map<String, Value>, out: &mut Vec<u8>) -> bool {
    let Some(sealed) = is_sealed(map) else {
        return false;
    };
    write_canonical_members(
        &[("sealed_sha256", &|out: &mut Vec<u8>| {
            write_string(&sealed_digest(sealed), out)
        })],
        out,
    );
    true
}

fn hash_sealed(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            if let Some(sealed) = is_sealed(map) {
                let mut out = Map::new();
                out.insert("sealed_sha256".into(), Value::String(sealed_digest(sealed)));
                return Value::Object(out);
            }
            Value::Object(map.iter().map(|(k, v)| (k.clone(), hash_sealed(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(hash_sealed).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(input: &str) -> Hash {
        leaf_hash(input.as_bytes())
    }

    #[test]
    fn hashing_follows_rfc_6962() {
        // RFC 6962 test vectors (Certificate Transparency's merkle_tree_test): the empty tree
        // and the leaf hash of the empty input.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let (a, b, c) = (h("a"), h("b"), h("c"));
        assert_eq!(root(&[a, b, c]), node_hash(&node_hash(&a, &b), &c));
    }

    #[test]
    fn the_split_is_the_largest_power_of_two_below() {
        for (n, k) in [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1 << 40, 1 << 39)] {
            assert_eq!(largest_power_of_two_below(n), k, "n = {n}");
        }
    }

    #[test]
    fn sealed_values_enter_only_as_their_hash() {
        let sealed = json!({"kid": "k1", "nonce": "bm9uY2U", "ct": "c2VjcmV0"});
        let payload = json!({"connection": {"client_secret": {"sealed": sealed}}, "n": [{"sealed": sealed}]});
        let public = hash_sealed(&payload);
        let text = public.to_string();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        let expected = hex::encode(Sha256::digest(
            br#"{"ct":"c2VjcmV0","kid":"k1","nonce":"bm9uY2U"}"#,
        ));
        assert_eq!(public["connection"]["client_secret"]["sealed_sha256"], expected);
        assert_eq!(public["n"][0]["sealed_sha256"], expected);
    }

    mod leaf_input_written_directly {
        use proptest::prelude::*;

        use super::super::{event_leaf_input, leaf_document, leaf_input};
        use crate::envelope::arbitrary::any_event;

        proptest! {
            /// The bytes the fold hashes are the bytes of the leaf document that bundles show.
            #[test]
            fn equals_the_input_of_the_leaf_document(event in any_event()) {
                prop_assert_eq!(event_leaf_input(&event), leaf_input(&leaf_document(&event)));
            }
        }
    }
}
