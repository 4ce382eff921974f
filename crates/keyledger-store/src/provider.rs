//! The provider-managed key: DEKs wrapped by the internal key ring (DESIGN.md §1, "KEK … the
//! provider's internal key when off").

use keyledger_domain::{AadScheme, DekId, Edek, OrgId, SealedBox, WrappedBy, WrappedDek};
use zeroize::Zeroizing;

use crate::error::{OpenError, SealError};
use crate::keyring::KeyRing;

fn aad(org: OrgId, dek: DekId) -> Vec<u8> {
    format!("keyledger:provider-dek:org-{org}:{dek}").into_bytes()
}

/// Wraps `dek` (clear bytes) for DEK `dek_id` of `org` with the newest internal key. The EDEK
/// is the 96-bit nonce followed by the AES-256-GCM ciphertext and tag; the key id is in
/// `wrapped_by`.
pub fn wrap_dek(ring: &KeyRing, org: OrgId, dek_id: DekId, dek: &[u8]) -> Result<WrappedDek, SealError> {
    let sealed = ring.seal(&aad(org, dek_id), dek)?;
    let mut edek = sealed.nonce;
    edek.extend_from_slice(&sealed.ct);
    Ok(WrappedDek::attest(
        WrappedBy::Provider {
            internal_key_id: sealed.kid,
        },
        Edek(edek),
    ))
}

/// Unwraps a provider-wrapped DEK.
pub fn unwrap_dek(
    ring: &KeyRing,
    org: OrgId,
    dek_id: DekId,
    internal_key_id: &str,
    edek: &Edek,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if edek.0.len() < 12 {
        return Err(OpenError::BadNonce(edek.0.len()));
    }
    let (nonce, ct) = edek.0.split_at(12);
    let sealed = SealedBox {
        kid: internal_key_id.to_owned(),
        nonce: nonce.to_vec(),
        ct: ct.to_vec(),
        aad: AadScheme::V1,
    };
    ring.open(&sealed, &aad(org, dek_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_deks_round_trip_and_are_bound_to_their_org_and_id() {
        let ring = KeyRing::generate();
        let org: OrgId = "01900000-0000-7000-8000-0000000000aa".parse().unwrap();
        let wrapped = wrap_dek(&ring, org, DekId(1), &[7u8; 32]).unwrap();
        let WrappedBy::Provider { internal_key_id } = wrapped.wrapped_by() else {
            panic!("provider")
        };
        let clear = unwrap_dek(&ring, org, DekId(1), internal_key_id, wrapped.edek()).unwrap();
        assert_eq!(&clear[..], &[7u8; 32]);
        assert!(unwrap_dek(&ring, org, DekId(2), internal_key_id, wrapped.edek()).is_err());
        assert!(!wrapped.edek().0.windows(32).any(|w| w == [7u8; 32]));
    }
}
