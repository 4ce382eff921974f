//! The stored Merkle trees against the RFC 9162 reference and an independent implementation:
//!
//! - a property test: for random logs and random sizes `n1 <= n2`, every inclusion proof and
//!   the consistency proof come out as the reference computes them from the full leaf list,
//!   verify, and fail once any one bit of any hash is flipped;
//! - interop: roots and proofs equal those of `ct-merkle` (a crate we did not write), and
//!   verify with its checker;
//! - events folded in memory give each organization's log and the global log.

use std::sync::Arc;

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use keyledger_domain::{GlobalPosition, StreamVersion};
use keyledger_store::conformance::{new_stream, tenant_added};
use keyledger_store::merkle::reference::{consistency_proof, inclusion_proof};
use keyledger_store::merkle::{
    AuditLog, AuditTrees, Hash, MemoryTrees, NodeAddr, TreeError, event_leaf_hash, leaf_hash, root,
    verify_consistency, verify_inclusion,
};
use keyledger_store::{EventStore, InMemoryStore, KeyRing};
use proptest::prelude::*;
use sha2::Sha256;

fn leaves(count: usize, seed: u64) -> Vec<Hash> {
    (0..u(count))
        .map(|i| leaf_hash(&(seed ^ i.rotate_left(17)).to_le_bytes()))
        .collect()
}

fn u(n: usize) -> u64 {
    u64::try_from(n).unwrap()
}

fn stored(leaves: &[Hash]) -> MemoryTrees {
    let trees = MemoryTrees::default();
    trees.append_leaves(AuditLog::Global, leaves);
    trees
}

fn flip(proof: &[Hash], which: usize, bit: usize) -> Vec<Hash> {
    let mut bad = proof.to_vec();
    let i = which % bad.len();
    bad[i][(bit / 8) % 32] ^= 1 << (bit % 8);
    bad
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_proof_verifies_and_a_flipped_bit_fails(
        count in 1usize..300, seed in any::<u64>(), a in any::<usize>(), b in any::<usize>(),
        which in any::<usize>(), bit in 0usize..256,
    ) {
        let all = leaves(count, seed);
        let trees = stored(&all);
        let log = AuditLog::Global;
        let n2u = 1 + b % count;
        let n1u = a % (n2u + 1);
        let (n1, n2) = (u(n1u), u(n2u));
        block_on(async {
            let r2 = trees.root(log, n2).await.unwrap();
            prop_assert_eq!(r2, root(&all[..n2u]));
            for (m, leaf) in all[..n2u].iter().enumerate() {
                let p = trees.inclusion_proof(log, u(m), n2).await.unwrap();
                prop_assert_eq!(&p, &inclusion_proof(m, &all[..n2u]));
                prop_assert_eq!(verify_inclusion(leaf, u(m), n2, &p, &r2), Ok(()));
                if !p.is_empty() {
                    prop_assert!(verify_inclusion(leaf, u(m), n2, &flip(&p, which, bit), &r2).is_err());
                }
                let bad_leaf = flip(&[*leaf], 0, bit)[0];
                prop_assert!(verify_inclusion(&bad_leaf, u(m), n2, &p, &r2).is_err());
                let bad_root = flip(&[r2], 0, bit)[0];
                prop_assert!(verify_inclusion(leaf, u(m), n2, &p, &bad_root).is_err());
            }
            let r1 = trees.root(log, n1).await.unwrap();
            prop_assert_eq!(r1, root(&all[..n1u]));
            let c = trees.consistency_proof(log, n1, n2).await.unwrap();
            if n1 > 0 {
                prop_assert_eq!(&c, &consistency_proof(n1u, &all[..n2u]));
            } else {
                prop_assert!(c.is_empty());
            }
            prop_assert_eq!(verify_consistency(n1, n2, &r1, &r2, &c), Ok(()));
            if !c.is_empty() {
                prop_assert!(verify_consistency(n1, n2, &r1, &r2, &flip(&c, which, bit)).is_err());
            }
            if 0 < n1 {
                let bad_r1 = flip(&[r1], 0, bit)[0];
                prop_assert!(verify_consistency(n1, n2, &bad_r1, &r2, &c).is_err());
                let bad_r2 = flip(&[r2], 0, bit)[0];
                prop_assert!(verify_consistency(n1, n2, &r1, &bad_r2, &c).is_err());
            }
            Ok(())
        })?;
    }
}

/// Roots and proofs equal those of `ct-merkle`, an RFC 6962 implementation we did not write,
/// and verify with its checker.
#[tokio::test]
async fn roots_and_proofs_match_an_independent_rfc_6962_implementation() {
    let inputs: Vec<Vec<u8>> = (0..70u32)
        .map(|i| format!("leaf input {i}").into_bytes())
        .collect();
    let trees = MemoryTrees::default();
    let log = AuditLog::Global;
    trees.append_leaves(log, &inputs.iter().map(|i| leaf_hash(i)).collect::<Vec<_>>());
    let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
    let mut their_roots: Vec<RootHash<Sha256>> = Vec::new();
    for (n, input) in (1u64..).zip(&inputs) {
        theirs.push(input.clone());
        let their_root = theirs.root();
        let ours = trees.root(log, n).await.unwrap();
        assert_eq!(their_root.as_bytes().as_slice(), ours, "root of {n}");
        for m in 0..n {
            let proof = trees.inclusion_proof(log, m, n).await.unwrap();
            let idx = usize::try_from(m).unwrap();
            assert_eq!(
                theirs.prove_inclusion(idx).as_bytes(),
                proof.concat().as_slice(),
                "inclusion of {m} in {n}"
            );
            their_root
                .verify_inclusion(&inputs[idx], m, &InclusionProof::from_bytes(proof.concat()))
                .unwrap();
        }
        for (old, old_root) in (1u64..).zip(&their_roots) {
            let proof = trees.consistency_proof(log, old, n).await.unwrap();
            let additions = usize::try_from(n - old).unwrap();
            assert_eq!(
                theirs.prove_consistency(additions).as_bytes(),
                proof.concat().as_slice(),
                "consistency {old} -> {n}"
            );
            let parsed = ConsistencyProof::<Sha256>::try_from_bytes(proof.concat()).unwrap();
            their_root.verify_consistency(old_root, &parsed).unwrap();
        }
        their_roots.push(their_root);
    }
}

/// Sizes past the tree, indexes past the size and sizes out of order get typed errors.
#[tokio::test]
async fn out_of_range_requests_are_typed_errors() {
    let trees = stored(&leaves(5, 1));
    let log = AuditLog::Global;
    assert!(matches!(
        trees.root(log, 6).await,
        Err(TreeError::SizeBeyondTree {
            size: 6,
            tree_size: 5,
            ..
        })
    ));
    assert!(matches!(
        trees.inclusion_proof(log, 5, 5).await,
        Err(TreeError::IndexOutOfRange { index: 5, size: 5 })
    ));
    assert!(matches!(
        trees.inclusion_proof(log, 1, 6).await,
        Err(TreeError::SizeBeyondTree { .. })
    ));
    assert!(matches!(
        trees.consistency_proof(log, 4, 3).await,
        Err(TreeError::SizesOutOfOrder { from: 4, to: 3 })
    ));
    assert!(matches!(
        trees.consistency_proof(log, 0, 9).await,
        Err(TreeError::SizeBeyondTree { .. })
    ));
    let org = AuditLog::Org(new_stream().org_id().expect("an organization stream"));
    assert_eq!(trees.tree_size(org).await.unwrap(), 0);
    assert_eq!(trees.root(org, 0).await.unwrap(), root(&[]));
}

/// A node lost from storage is reported as damage, not answered with a wrong proof.
#[tokio::test]
async fn a_missing_node_is_corrupt() {
    let log = AuditLog::Global;
    let mut rows = stored(&leaves(8, 2)).rows();
    assert!(rows.remove_node(log, NodeAddr { level: 2, index: 1 }).is_some());
    let damaged = MemoryTrees::from(rows);
    assert!(matches!(
        damaged.inclusion_proof(log, 0, 8).await,
        Err(TreeError::Corrupt { .. })
    ));
    assert!(matches!(
        damaged.consistency_proof(log, 4, 8).await,
        Err(TreeError::Corrupt { .. })
    ));
    // A proof that needs only the left half still works.
    assert!(damaged.inclusion_proof(log, 0, 4).await.is_ok());
}

/// Events folded from a store give each organization's log (leaf i = version i + 1) and the
/// global log (commit order); an event that skips a version is refused.
#[tokio::test]
async fn events_feed_their_organization_log_and_the_global_log() {
    let store = InMemoryStore::new(Arc::new(KeyRing::generate()));
    let (s1, s2) = (new_stream(), new_stream());
    for i in 0..7u64 {
        let stream = if i % 3 == 0 { s2 } else { s1 };
        let at = store.read_stream(stream, StreamVersion(1)).await.unwrap().len();
        store
            .append(
                stream,
                StreamVersion(u64::try_from(at).unwrap()),
                vec![tenant_added(&format!("t{i}"))],
                None,
            )
            .await
            .unwrap();
    }
    let all = store.read_all(GlobalPosition(0), usize::MAX).await.unwrap();
    let trees = MemoryTrees::default();
    trees.fold(&all[..3]).unwrap();
    trees.fold(&all[3..]).unwrap();
    let global: Vec<Hash> = all.iter().map(event_leaf_hash).collect();
    assert_eq!(trees.root(AuditLog::Global, 7).await.unwrap(), root(&global));
    for stream in [s1, s2] {
        let events = store.read_stream(stream, StreamVersion(1)).await.unwrap();
        let leaves: Vec<Hash> = events.iter().map(event_leaf_hash).collect();
        let log = AuditLog::Org(stream.org_id().expect("an organization stream"));
        let size = u64::try_from(leaves.len()).unwrap();
        assert_eq!(trees.tree_size(log).await.unwrap(), size);
        assert_eq!(trees.root(log, size).await.unwrap(), root(&leaves));
        assert_eq!(trees.leaf_hashes(log, 0, size).await.unwrap(), leaves);
    }
    let sizes = trees.tree_sizes().await.unwrap();
    assert_eq!(sizes.len(), 3);
    assert_eq!(sizes[&AuditLog::Global], 7);
    // The second event of s1 again, as if the first were missing: out of order.
    let again = MemoryTrees::default();
    let second = all
        .iter()
        .find(|e| e.stream_id == s1 && e.stream_version == StreamVersion(2))
        .unwrap();
    assert!(matches!(
        again.fold(std::slice::from_ref(second)),
        Err(TreeError::LeafOutOfOrder {
            version: 2,
            size: 0,
            ..
        })
    ));
}
