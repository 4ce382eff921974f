//! Golden vectors: a stored envelope with a sealed client secret and a sealed EDEK, checked in
//! under `tests/golden/`. They pin the canonical hash form and the sealing format: a change that
//! breaks them breaks every stored log. Regenerate only on purpose:
//! `KEYLEDGER_BLESS=1 cargo test -p keyledger-store --test golden`.

use std::path::PathBuf;
use std::sync::Arc;

use keyledger_domain::{Event, StreamVersion};
use keyledger_store::chain::{StreamHead, envelope_hash, prepare_append};
use keyledger_store::conformance::{cmk_enabled, dek_generated, new_stream};
use keyledger_store::{GENESIS_HASH, StoredEvent};
use keyledger_store::{InternalKey, KeyRing, open_event};
use secrecy::{ExposeSecret as _, SecretBox};

const SECRET: &str = "golden-client-secret";
const EDEK: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// A test-only key: never use a fixed key outside tests.
fn golden_ring() -> KeyRing {
    let key = InternalKey::from_secret(
        "ik-golden".into(),
        chrono::DateTime::UNIX_EPOCH,
        &SecretBox::new(Box::new([0x42; 32])),
    );
    KeyRing::from_keys(vec![key]).unwrap()
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sealed-envelopes-v1.json")
}

#[test]
fn golden_envelopes_hash_and_open() {
    let ring = Arc::new(golden_ring());
    if std::env::var("KEYLEDGER_BLESS").is_ok_and(|v| v == "1") {
        let events = prepare_append(
            &ring,
            new_stream(),
            StreamVersion::NONE,
            &StreamHead::empty(),
            vec![cmk_enabled(SECRET), dek_generated(&EDEK)],
            None,
        )
        .unwrap();
        std::fs::create_dir_all(path().parent().unwrap()).unwrap();
        std::fs::write(path(), serde_json::to_string_pretty(&events).unwrap() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(path()).expect("golden file (bless to create)");
    let events: Vec<StoredEvent> = serde_json::from_str(&text).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].prev_hash, GENESIS_HASH);
    assert_eq!(events[1].prev_hash, events[0].hash);
    for e in &events {
        assert_eq!(envelope_hash(e), e.hash, "canonical form changed");
    }
    assert!(!text.contains(SECRET));
    match open_event(&ring, &events[0]).unwrap() {
        Event::CustomerManagedKeyEnabled(e) => {
            assert_eq!(e.connection.client_secret.open().unwrap().expose_secret(), SECRET)
        }
        other => panic!("unexpected {}", other.event_type()),
    }
    match open_event(&ring, &events[1]).unwrap() {
        Event::DataKeyGenerated(e) => assert_eq!(e.edek.open().unwrap().0, EDEK),
        other => panic!("unexpected {}", other.event_type()),
    }
}
