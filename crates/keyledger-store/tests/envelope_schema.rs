//! The stored envelope: its checked-in JSON Schema matches the code, and the golden stored
//! events (one of each type) validate against their event schemas, decode, and form an intact
//! hash chain under the canonical bytes.
//!
//! After an intended change, regenerate with
//! `KEYLEDGER_BLESS=1 cargo test -p keyledger-store --test envelope_schema` and review the diff.

use std::path::{Path, PathBuf};

use keyledger_domain::event::DataKeyReleased;
use keyledger_domain::testing::*;
use keyledger_domain::*;
use keyledger_store::{EnvelopeActor, GENESIS_HASH, StoredEvent};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bless() -> bool {
    std::env::var_os("KEYLEDGER_BLESS").is_some()
}

fn schema_for(event_type: &str, version: u32) -> jsonschema::Validator {
    let path = repo().join(format!("schemas/events/{event_type}.v{version}.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// A deterministic stand-in for sealing: the golden file must not depend on randomness.
fn golden_seal(stream: &StreamId, version: u64, event: &mut Event) {
    event.for_each_protected(|path, slot| {
        let clear = slot.clear_bytes().unwrap();
        // By position, as when the golden file was made (ADR 0017 kept the file as it was).
        let path = path.by_position();
        let digest = Sha256::digest([stream.to_string().as_bytes(), path.as_bytes(), &clear].concat());
        slot.set_sealed(SealedBox {
            kid: "ik-golden".into(),
            aad: keyledger_domain::AadScheme::V1,
            nonce: digest[..12].to_vec(),
            ct: [digest.as_slice(), &version.to_be_bytes()].concat(),
        });
    });
}

/// One organization history that emits every organization event type.
fn golden_history() -> Vec<Event> {
    cmk_org()
        .run(platform(), |_| Scripted::AddTenant {
            tenant: Tenant {
                tenant_id: tenant_id(3),
                name: "Research".into(),
            },
        })
        .run(platform(), |_| Scripted::RemoveTenant {
            tenant_id: tenant_id(3),
        })
        .run(admin(), |s| edit_secret_kind(s, "second-secret"))
        .rotate(&key_b())
        .plan(Plan::free())
        .plan(Plan::enterprise("standard"))
        .health(HealthStatus::KeyNotFound)
        .declare_lost()
        .run(admin(), |_| abandon_switch_kind())
        .events()
}

fn golden_envelopes() -> Vec<StoredEvent> {
    let stream = StreamId::for_org(org_id());
    let mut prev = GENESIS_HASH.to_owned();
    golden_history()
        .into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            let version = i as u64 + 1;
            golden_seal(&stream, version, &mut event);
            let mut stored = StoredEvent {
                event_id: format!("01900000-0000-7000-9000-{version:012x}").parse().unwrap(),
                stream_id: stream,
                stream_version: StreamVersion(version),
                global_position: GlobalPosition(version),
                event_type: event.event_type().into(),
                schema_version: event.schema_version(),
                occurred_at: at_minutes(i64::try_from(i).expect("a short history")),
                actor: EnvelopeActor::from_actor(&admin(), Some("192.0.2.10".into())),
                command_id: Some(CommandId::parse(&format!("cmd-{version}")).unwrap()),
                correlation_id: None,
                causation_id: None,
                payload: event.payload_json().unwrap(),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            stored.hash = hex::encode(Sha256::digest(stored.canonical_bytes()));
            prev = stored.hash.clone();
            stored
        })
        .collect()
}

/// The checkpoint the service would sign of that organization's log once the history above
/// was written: stream `audit`, version 1, after the organization's events. The note's
/// signature line is a fixed stand-in (the golden file pins the envelope, not a signature).
fn golden_checkpoint(after: &StoredEvent) -> StoredEvent {
    let origin = format!("keyledger.example.com/org/{}", org_id());
    let root_hash = RootHash(Sha256::digest(b"golden root").into());
    let tree_size = after.stream_version.0;
    let note = format!(
        "{origin}\n{tree_size}\n{}\n\n\u{2014} keyledger.example.com Z29sZGVuLXNpZ25hdHVyZS1zdGFuZC1pbg==\n",
        root_hash.to_base64()
    );
    let event = Event::AuditCheckpointSigned(AuditCheckpointSigned {
        log: AuditLog::Org(org_id()),
        origin,
        tree_size,
        root_hash,
        note,
        signed_at: at_minutes(60),
    });
    let position = after.global_position.0 + 1;
    let mut stored = StoredEvent {
        event_id: format!("01900000-0000-7000-9000-{position:012x}")
            .parse()
            .unwrap(),
        stream_id: StreamId::Audit,
        stream_version: StreamVersion(1),
        global_position: GlobalPosition(position),
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        occurred_at: at_minutes(60),
        actor: EnvelopeActor::from_actor(&Actor::system(), None),
        command_id: Some(CommandId::parse(&format!("audit-checkpoint:{}:{tree_size}", org_id())).unwrap()),
        correlation_id: None,
        causation_id: None,
        payload: event.payload_json().unwrap(),
        prev_hash: GENESIS_HASH.to_owned(),
        hash: String::new(),
    };
    stored.hash = hex::encode(Sha256::digest(stored.canonical_bytes()));
    stored
}

/// A platform service's release of the organization's active DEK after the checkpoint:
/// stream `releases-<org>`, version 1 (ADR 0030).
fn golden_release(after: &StoredEvent, wrapped_by: WrappedBy) -> StoredEvent {
    let event = Event::DataKeyReleased(DataKeyReleased {
        dek_id: DekId(3),
        wrapped_by,
        active: true,
    });
    let position = after.global_position.0 + 1;
    let platform = Actor::new(
        ActorKind::Service,
        "reports",
        [Role::Platform],
        Scope::everything(),
    );
    let mut stored = StoredEvent {
        event_id: format!("01900000-0000-7000-9000-{position:012x}")
            .parse()
            .unwrap(),
        stream_id: StreamId::releases_of(org_id()),
        stream_version: StreamVersion(1),
        global_position: GlobalPosition(position),
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        occurred_at: at_minutes(61),
        actor: EnvelopeActor::from_actor(&platform, Some("10.0.0.7".into())),
        command_id: None,
        correlation_id: None,
        causation_id: None,
        payload: event.payload_json().unwrap(),
        prev_hash: GENESIS_HASH.to_owned(),
        hash: String::new(),
    };
    stored.hash = hex::encode(Sha256::digest(stored.canonical_bytes()));
    stored
}

/// Every golden envelope: the organization's stream, then stream `audit`, then the
/// organization's release stream.
fn golden_log() -> Vec<StoredEvent> {
    let mut log = golden_envelopes();
    let checkpoint = golden_checkpoint(log.last().expect("a history"));
    let release = golden_release(
        &checkpoint,
        WrappedBy::Customer {
            key_identifier: key_b(),
        },
    );
    log.push(checkpoint);
    log.push(release);
    log
}

const GOLDEN: &str = "tests/golden/events.v1.jsonl";

#[test]
fn golden_events_cover_every_type_and_validate_against_their_schemas() {
    let path = repo().join(GOLDEN);
    if bless() {
        let text: String = golden_log()
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut heads = std::collections::HashMap::new();
    for line in text.lines() {
        let stored: StoredEvent = serde_json::from_str(line).unwrap();
        let validator = schema_for(&stored.event_type, stored.schema_version);
        let errors: Vec<String> = validator
            .iter_errors(&stored.payload)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} fails its schema: {errors:?}",
            stored.event_type
        );
        // The payload decodes, and re-encodes to the same JSON.
        let event = stored.decode().unwrap();
        assert_eq!(event.payload_json().unwrap(), stored.payload);
        // Each stream's golden chain is intact under the canonical form.
        let prev = heads
            .entry(stored.stream_id)
            .or_insert_with(|| GENESIS_HASH.to_owned());
        assert_eq!(stored.prev_hash, *prev);
        assert_eq!(stored.hash, hex::encode(Sha256::digest(stored.canonical_bytes())));
        *prev = stored.hash.clone();
        seen.insert(stored.event_type.clone());
    }
    assert_eq!(
        seen.len(),
        EVENT_TYPES.len(),
        "golden events miss a type: {seen:?}"
    );
    assert_eq!(
        heads
            .keys()
            .map(StreamId::kind)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "golden events cover every kind of stream"
    );
}

/// The organization's golden lines are the ones written before stream `audit` existed:
/// adding a stream kind changed none of their bytes.
#[test]
fn the_organization_lines_are_unchanged_by_stream_kinds() {
    let text = std::fs::read_to_string(repo().join(GOLDEN)).unwrap();
    let org_lines: String = golden_envelopes()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    assert!(text.starts_with(&org_lines));
    let stored: Vec<StoredEvent> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let checkpoint = stored.iter().find(|e| e.stream_id == StreamId::Audit).unwrap();
    let Event::AuditCheckpointSigned(cp) = checkpoint.decode().unwrap() else {
        panic!("the last golden event is a checkpoint")
    };
    assert_eq!(cp.log, AuditLog::Org(org_id()));
    assert_eq!(cp.tree_size, 17);
}

#[test]
fn golden_events_hold_no_secret_in_clear() {
    let text = std::fs::read_to_string(repo().join(GOLDEN)).unwrap();
    assert!(!text.contains(FIXTURE_SECRET));
    assert!(!text.contains("second-secret"));
}

#[test]
fn the_envelope_schema_matches_the_code() {
    let path = repo().join("schemas/envelope.v1.json");
    let text = serde_json::to_string_pretty(&schemars::schema_for!(StoredEvent)).unwrap() + "\n";
    if bless() {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "rerun with KEYLEDGER_BLESS=1"
    );
    let validator = jsonschema::validator_for(&serde_json::from_str::<Value>(&text).unwrap()).unwrap();
    let golden = std::fs::read_to_string(repo().join(GOLDEN)).unwrap();
    for line in golden.lines() {
        assert!(validator.is_valid(&serde_json::from_str::<Value>(line).unwrap()));
    }
}
