//! The checked-in event JSON Schemas match the code and reject a payload that breaks them, and
//! an old (v0) event is upcast to the current shape. The envelope schema and the golden stored
//! events are checked by `keyledger-store`'s `tests/envelope_schema.rs`.
//!
//! After an intended change to an event type, regenerate with
//! `KEYLEDGER_BLESS=1 cargo test -p keyledger-domain --test schemas` and review the diff. A
//! changed payload also needs a new schema version and an upcaster (DESIGN.md §3).

use std::path::{Path, PathBuf};

use keyledger_domain::schema::event_schema_files;
use keyledger_domain::*;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bless() -> bool {
    std::env::var_os("KEYLEDGER_BLESS").is_some()
}

#[test]
fn checked_in_event_schemas_match_the_code() {
    let dir = repo().join("schemas/events");
    let files = event_schema_files();
    assert_eq!(files.len(), 16);
    let mut drift = Vec::new();
    for (name, text) in &files {
        let path = dir.join(name);
        if bless() {
            std::fs::write(&path, text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == *text => {}
            Ok(_) => drift.push(format!("{name} differs from the code")),
            Err(_) => drift.push(format!("{name} is missing")),
        }
    }
    // No stale schema for a type or version the code no longer has.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !files.iter().any(|(n, _)| *n == name) {
            drift.push(format!("{name} has no event type in the code"));
        }
    }
    assert!(
        drift.is_empty(),
        "event schemas drifted from the code (rerun with KEYLEDGER_BLESS=1 and review): {drift:#?}"
    );
}

fn schema_for(event_type: &str, version: u32) -> jsonschema::Validator {
    let path = repo().join(format!("schemas/events/{event_type}.v{version}.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

const GOLDEN: &str = "tests/golden/events.v1.jsonl";

#[test]
fn a_schema_rejects_a_payload_that_breaks_it() {
    let validator = schema_for("PlanChanged", 1);
    assert!(validator.is_valid(&json!({"from":{"kind":"enterprise"},"to":{"kind":"free"},"reason":"x"})));
    assert!(!validator.is_valid(&json!({"from":{"kind":"gold"},"to":{"kind":"free"},"reason":"x"})));
    assert!(!validator.is_valid(&json!({"from":{"kind":"free"},"to":{"kind":"free"}})));
    let validator = schema_for("CustomerManagedKeyEnabled", 1);
    let golden = std::fs::read_to_string(repo().join(GOLDEN)).unwrap();
    let mut enabled: Value = golden
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event_type"] == "CustomerManagedKeyEnabled")
        .unwrap()["payload"]
        .take();
    assert!(validator.is_valid(&enabled));
    enabled["connection"]["client_secret"] = json!("plain text secret");
    assert!(
        !validator.is_valid(&enabled),
        "a clear secret must not pass the schema"
    );
}

#[test]
fn a_v0_plan_change_is_upcast_to_v1() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/golden/PlanChanged.v0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(fixture["schema_version"], json!(0));
    let event = Event::decode("PlanChanged", 0, fixture["payload"].clone()).unwrap();
    let Event::PlanChanged(p) = &event else {
        panic!("{event:?}")
    };
    assert_eq!(p.from, Plan::new(PlanKind::Enterprise, None).unwrap());
    assert_eq!(p.to, Plan::free());
    assert!(p.reason.contains("unspecified"));
    // The upcast payload is a valid v1 payload.
    assert!(schema_for("PlanChanged", 1).is_valid(&event.payload_json().unwrap()));
}

#[test]
fn a_v0_event_without_an_upcaster_is_a_typed_error() {
    let err = Event::decode("TenantRemoved", 0, json!({})).unwrap_err();
    assert_eq!(
        err,
        DecodeError::NoUpcaster {
            event_type: "TenantRemoved".into(),
            found: 0
        }
    );
}

#[test]
fn a_malformed_v0_payload_is_a_typed_error_not_a_panic() {
    let err = Event::decode("PlanChanged", 0, json!({"from_plan": 3})).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
}
