//! Proof checks of RFC 9162: inclusion (§2.1.3.2) and consistency (§2.1.4.2).

use super::{Hash, node_hash};

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree sizes {from} and {to} are not in order")]
    SizesOutOfOrder { from: u64, to: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with this `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `size2` leaves with `root2` extends the tree of `size1` leaves with
/// `root1`. Every tree extends the empty tree (`size1 == 0`, empty proof).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesOutOfOrder {
            from: size1,
            to: size2,
        });
    }
    if size1 == size2 || size1 == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if size1 == size2 && root1 != root2 {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *root1 || sr != *root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::reference::{consistency_proof, inclusion_proof};
    use super::super::{leaf_hash, root};
    use super::*;

    #[test]
    fn every_proof_of_small_trees_verifies_and_a_flipped_bit_fails() {
        let leaves: Vec<Hash> = (0..40u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let tree = &leaves[..n];
            let r = root(tree);
            for m in 0..n {
                let p = inclusion_proof(m, tree);
                verify_inclusion(&tree[m], m as u64, n as u64, &p, &r).unwrap();
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i][0] ^= 1;
                    assert!(verify_inclusion(&tree[m], m as u64, n as u64, &bad, &r).is_err());
                }
                assert!(verify_inclusion(&tree[m], m as u64 + 1, n as u64, &p, &r).is_err() || n == 1);
            }
            for m in 1..=n {
                let p = consistency_proof(m, tree);
                let r1 = root(&tree[..m]);
                verify_consistency(m as u64, n as u64, &r1, &r, &p).unwrap();
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i][31] ^= 0x80;
                    assert!(verify_consistency(m as u64, n as u64, &r1, &r, &bad).is_err());
                }
                if m < n {
                    let mut other = r1;
                    other[5] ^= 1;
                    assert!(verify_consistency(m as u64, n as u64, &other, &r, &p).is_err());
                }
            }
        }
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        let l = leaf_hash(b"x");
        assert_eq!(
            verify_inclusion(&l, 1, 1, &[], &l),
            Err(ProofError::IndexOutOfRange { index: 1, size: 1 })
        );
        assert!(matches!(
            verify_consistency(3, 2, &l, &l, &[]),
            Err(ProofError::SizesOutOfOrder { .. })
        ));
        assert_eq!(verify_consistency(0, 5, &l, &l, &[]), Ok(()));
    }
}
