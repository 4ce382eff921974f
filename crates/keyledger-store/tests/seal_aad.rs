//! The seal AAD of EDEKs (ADR 0017): new seals bind the DEK id, and values sealed before,
//! which bind the array position, still open (checked-in vector
//! `tests/golden/sealed-rewrap-v1-aad.json`, made by the code before ADR 0017; never
//! regenerate it).

use std::path::PathBuf;

use keyledger_domain::event::{DataKeysRewrapped, RewrappedDataKey};
use keyledger_domain::{DekId, Edek, Event, KeyIdentifier, Protected, StreamVersion, WrappedBy};
use keyledger_store::StoredEvent;
use keyledger_store::chain::{NewEvent, StreamHead, prepare_append};
use keyledger_store::conformance::{metadata, new_stream};
use keyledger_store::{InternalKey, KeyRing, StoreError, open_event};
use secrecy::SecretBox;
use serde_json::Value;

/// The golden test key of `golden.rs`: never use a fixed key outside tests.
fn golden_ring() -> KeyRing {
    let key = InternalKey::from_secret(
        "ik-golden".into(),
        chrono::DateTime::UNIX_EPOCH,
        &SecretBox::new(Box::new([0x42; 32])),
    );
    KeyRing::from_keys(vec![key]).unwrap()
}

fn rewrapped(deks: &[(u32, &[u8])]) -> NewEvent {
    NewEvent {
        event: Event::DataKeysRewrapped(DataKeysRewrapped {
            wrapped_by: WrappedBy::Customer {
                key_identifier: KeyIdentifier::parse_shape(
                    "https://contoso.vault.azure.net/keys/cmk/0000000000000000000000000000000b",
                )
                .unwrap(),
            },
            data_keys: deks
                .iter()
                .map(|(id, edek)| RewrappedDataKey {
                    dek_id: DekId(*id),
                    edek: Protected::Open(Edek(edek.to_vec())),
                })
                .collect(),
        }),
        metadata: metadata(),
    }
}

/// (dek id, EDEK bytes) of an opened `DataKeysRewrapped`.
fn opened(event: Event) -> Vec<(u32, Vec<u8>)> {
    let Event::DataKeysRewrapped(e) = event else {
        panic!("unexpected {}", event.event_type())
    };
    e.data_keys
        .into_iter()
        .map(|k| (k.dek_id.0, k.edek.open().expect("opened").0.clone()))
        .collect()
}

fn sealed(ring: &KeyRing, deks: &[(u32, &[u8])]) -> StoredEvent {
    prepare_append(
        ring,
        new_stream(),
        StreamVersion::NONE,
        &StreamHead::empty(),
        vec![rewrapped(deks)],
        None,
    )
    .unwrap()
    .remove(0)
}

#[test]
fn an_edek_sealed_under_one_dek_id_does_not_open_under_another() {
    let ring = golden_ring();
    let stored = sealed(&ring, &[(1, b"edek-of-one"), (2, b"edek-of-two")]);
    assert_eq!(
        opened(open_event(&ring, &stored).unwrap()),
        vec![(1, b"edek-of-one".to_vec()), (2, b"edek-of-two".to_vec())]
    );
    // Swap the DEK ids and leave the sealed EDEKs where they are: DEK 1 would get DEK 2's
    // EDEK. Opening must refuse rather than hand out the wrong key.
    let mut tampered = stored.clone();
    tampered.payload["data_keys"][0]["dek_id"] = 2.into();
    tampered.payload["data_keys"][1]["dek_id"] = 1.into();
    let err = open_event(&ring, &tampered).expect_err("a moved EDEK does not open");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

fn legacy_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sealed-rewrap-v1-aad.json")
}

#[test]
fn an_edek_rewrap_sealed_before_the_aad_marker_still_opens() {
    let text = std::fs::read_to_string(legacy_path()).expect("checked-in legacy vector");
    let stored: StoredEvent = serde_json::from_str(&text).unwrap();
    assert!(
        stored.payload["data_keys"][0]["edek"]["sealed"]
            .get("aad")
            .is_none(),
        "the vector predates the marker"
    );
    assert_eq!(
        opened(open_event(&golden_ring(), &stored).unwrap()),
        vec![(1, b"edek-of-one".to_vec()), (2, b"edek-of-two".to_vec())]
    );
}

#[test]
fn new_seals_record_their_aad_scheme_and_a_rewritten_marker_does_not_open() {
    let ring = golden_ring();
    let stored = sealed(&ring, &[(7, b"edek-of-seven")]);
    let sealed_box: &Value = &stored.payload["data_keys"][0]["edek"]["sealed"];
    assert_eq!(sealed_box["aad"], "v2", "{sealed_box}");
    // Dropping the marker (a downgrade to the position-bound AAD) makes the value fail to
    // open: the scheme is authenticated through the AAD's own tag.
    let mut downgraded = stored.clone();
    downgraded.payload["data_keys"][0]["edek"]["sealed"]
        .as_object_mut()
        .unwrap()
        .remove("aad");
    assert!(open_event(&ring, &downgraded).is_err());
    assert_eq!(
        opened(open_event(&ring, &stored).unwrap()),
        vec![(7, b"edek-of-seven".to_vec())]
    );
}
