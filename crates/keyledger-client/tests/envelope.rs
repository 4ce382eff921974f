//! The envelope format: round trips, every binding (organization, context, DEK, header), and
//! interop with an AES-GCM implementation keyledger does not use for envelopes (`aes-gcm`,
//! RustCrypto), in both directions, from the documented layout alone.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyledger_client::envelope::{self, DataKey, EnvelopeError, HEADER_LEN, OVERHEAD};
use keyledger_domain::{DekId, OrgId};
use proptest::prelude::*;

const KEY: [u8; 32] = [0x42; 32];

fn key(id: u32) -> DataKey {
    DataKey::new(DekId(id), &KEY).unwrap()
}

#[test]
fn an_envelope_opens_only_for_its_organization_context_and_dek() {
    let (org, other_org) = (OrgId::new_v7(), OrgId::new_v7());
    let sealed = envelope::seal(org, &key(3), b"secret rows", b"table=invoices").unwrap();
    assert_eq!(sealed.len(), OVERHEAD + 11);
    assert_eq!(sealed[0], envelope::VERSION);
    assert_eq!(envelope::dek_of(&sealed).unwrap(), DekId(3));
    assert_eq!(
        &envelope::open(org, &key(3), &sealed, b"table=invoices").unwrap()[..],
        b"secret rows"
    );
    assert_eq!(
        envelope::open(other_org, &key(3), &sealed, b"table=invoices"),
        Err(EnvelopeError::Rejected)
    );
    assert_eq!(
        envelope::open(org, &key(3), &sealed, b"table=payments"),
        Err(EnvelopeError::Rejected)
    );
    assert_eq!(
        envelope::open(org, &key(4), &sealed, b"table=invoices"),
        Err(EnvelopeError::OtherDek {
            envelope: 3,
            given: 4
        })
    );
    // The same bytes under another id (a header edited to name it) do not open either.
    let mut renamed = sealed.clone();
    renamed[1..5].copy_from_slice(&4u32.to_be_bytes());
    assert_eq!(
        envelope::open(org, &key(4), &renamed, b"table=invoices"),
        Err(EnvelopeError::Rejected)
    );
    // Two seals of the same plaintext differ (fresh nonces).
    assert_ne!(
        sealed,
        envelope::seal(org, &key(3), b"secret rows", b"table=invoices").unwrap()
    );
}

#[test]
fn malformed_envelopes_are_typed_errors() {
    let org = OrgId::new_v7();
    assert_eq!(envelope::dek_of(&[1; 32]), Err(EnvelopeError::TooShort(32)));
    let mut sealed = envelope::seal(org, &key(1), b"", b"").unwrap();
    assert_eq!(sealed.len(), OVERHEAD);
    sealed[0] = 2;
    assert_eq!(envelope::dek_of(&sealed), Err(EnvelopeError::UnknownVersion(2)));
    assert_eq!(
        envelope::open(org, &key(1), &sealed, b""),
        Err(EnvelopeError::UnknownVersion(2))
    );
}

#[test]
fn the_key_never_shows_in_debug_output() {
    let printed = format!("{:?}", key(9));
    assert!(printed.contains('9'), "{printed}");
    assert!(!printed.contains("42") && !printed.contains("66"), "{printed}");
}

/// The layout of the module docs, applied with RustCrypto's `aes-gcm`.
fn their_aad(org: OrgId, dek: u32, context: &[u8]) -> Vec<u8> {
    let mut aad = b"keyledger-envelope/v1\0".to_vec();
    aad.extend_from_slice(org.as_uuid().as_bytes());
    aad.push(1);
    aad.extend_from_slice(&dek.to_be_bytes());
    aad.extend_from_slice(context);
    aad
}

proptest! {
    #[test]
    fn rustcrypto_opens_ours_and_we_open_theirs(
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
        // Past 85 bytes the AAD is built on the heap rather than the stack: both paths.
        context in proptest::collection::vec(any::<u8>(), 0..400),
        dek in 1u32..u32::MAX,
        nonce in any::<[u8; 12]>(),
        flip in any::<usize>(),
    ) {
        let org = OrgId::new_v7();
        let theirs = Aes256Gcm::new_from_slice(&KEY).unwrap();

        // Ours, opened by theirs.
        let sealed = envelope::seal(org, &key(dek), &plaintext, &context).unwrap();
        let opened = theirs
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER_LEN]),
                Payload { msg: &sealed[HEADER_LEN..], aad: &their_aad(org, dek, &context) },
            )
            .unwrap();
        prop_assert_eq!(&opened, &plaintext);

        // Theirs, laid out by hand, opened by ours.
        let mut built = vec![1u8];
        built.extend_from_slice(&dek.to_be_bytes());
        built.extend_from_slice(&nonce);
        built.extend(
            theirs
                .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: &their_aad(org, dek, &context) })
                .unwrap(),
        );
        let ours = envelope::open(org, &key(dek), &built, &context).unwrap();
        prop_assert_eq!(&ours[..], &plaintext[..]);

        // One flipped bit anywhere after the DEK id is refused.
        let mut tampered = sealed.clone();
        let at = 5 + flip % (tampered.len() - 5);
        tampered[at] ^= 1 << (flip % 8);
        prop_assert_eq!(envelope::open(org, &key(dek), &tampered, &context), Err(EnvelopeError::Rejected));
    }
}
