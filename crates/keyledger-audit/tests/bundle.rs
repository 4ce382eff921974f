//! Bundles built from a real (in-memory) store: an intact bundle verifies, and each kind of
//! tampering is refused naming the leaf or the checkpoint.

use std::sync::Arc;

use keyledger_audit::{
    AuditSigner, BUNDLE_FORMAT, Bundle, BundleError, Checkpoint, NoteError, verify_bundle,
};
use keyledger_audit::{Verifier, org_origin};
use keyledger_domain::{OrgId, StreamId, StreamVersion};
use keyledger_store::conformance::{cmk_enabled, dek_generated, tenant_added};
use keyledger_store::{EventStore, InMemoryStore, KeyRing, StoredEvent, merkle};

const ORIGIN: &str = "keyledger.test";
const SECRET: &str = "client-secret-that-must-not-leak";

/// An organization's stream of `n` events (>= 3), one of them with a sealed client secret and
/// one with a sealed EDEK.
async fn org_events(n: usize) -> (OrgId, Vec<StoredEvent>) {
    let store = InMemoryStore::new(Arc::new(KeyRing::generate()));
    let org = OrgId::new_v7();
    let stream = StreamId::for_org(org);
    let mut events = vec![
        cmk_enabled(SECRET),
        dek_generated(b"edek-bytes-never-in-a-bundle"),
    ];
    events.extend((2..n).map(|i| tenant_added(&format!("tenant {i}"))));
    store
        .append(stream, StreamVersion::NONE, events, None)
        .await
        .unwrap();
    (org, store.read_stream(stream, StreamVersion(1)).await.unwrap())
}

fn checkpoint_note(signer: &AuditSigner, org: OrgId, events: &[StoredEvent]) -> String {
    let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
    let size = u64::try_from(leaves.len()).unwrap();
    signer.sign_checkpoint(&Checkpoint::new(org_origin(ORIGIN, org), size, merkle::root(&leaves)).unwrap())
}

async fn signed_bundle(n: usize) -> (AuditSigner, Bundle, Vec<StoredEvent>) {
    let signer = AuditSigner::generate(ORIGIN).unwrap();
    let (org, events) = org_events(n).await;
    let note = checkpoint_note(&signer, org, &events);
    (signer, Bundle::build(org, &events, note), events)
}

#[tokio::test]
async fn an_intact_bundle_verifies_and_holds_no_secret() {
    let (signer, bundle, _) = signed_bundle(6).await;
    let verified = verify_bundle(&bundle, signer.verifier(), None).unwrap();
    assert_eq!(verified.checkpoint.size(), 6);
    assert_eq!(verified.extends, None);
    let json = serde_json::to_string(&bundle).unwrap();
    assert!(json.contains(BUNDLE_FORMAT));
    assert!(!json.contains(SECRET), "the client secret is in the bundle");
    assert!(!json.contains("\"sealed\""), "a sealed value is in the bundle");
    assert!(json.contains("sealed_sha256"));
    // It survives its own JSON round trip.
    let back: Bundle = serde_json::from_str(&json).unwrap();
    verify_bundle(&back, signer.verifier(), None).unwrap();
}

#[tokio::test]
async fn an_edited_document_names_its_leaf() {
    let (signer, mut bundle, _) = signed_bundle(6).await;
    bundle.entries[4].leaf["payload"]["name"] = "renamed".into();
    assert_eq!(
        verify_bundle(&bundle, signer.verifier(), None),
        Err(BundleError::LeafInputMismatch { version: 5 })
    );
}

#[tokio::test]
async fn an_edited_leaf_with_a_recomputed_input_breaks_the_root() {
    let (signer, mut bundle, _) = signed_bundle(6).await;
    let entry = &mut bundle.entries[3];
    entry.leaf["payload"]["name"] = "renamed".into();
    entry.leaf_input = base64_of(&merkle::leaf_input(&entry.leaf));
    let err = verify_bundle(&bundle, signer.verifier(), None).unwrap_err();
    assert!(matches!(err, BundleError::RootMismatch { size: 6, .. }), "{err}");
    assert!(
        err.to_string().contains(&org_origin(ORIGIN, bundle.organization)),
        "{err}"
    );
}

#[tokio::test]
async fn a_removed_swapped_or_foreign_leaf_is_named() {
    let (signer, bundle, _) = signed_bundle(6).await;
    let v = signer.verifier();

    let mut cut = bundle.clone();
    cut.entries.pop();
    assert!(matches!(
        verify_bundle(&cut, v, None),
        Err(BundleError::SizeMismatch {
            size: 6,
            entries: 5,
            ..
        })
    ));

    let mut gap = bundle.clone();
    gap.entries.remove(2);
    gap.entries.push(bundle.entries[2].clone());
    assert_eq!(
        verify_bundle(&gap, v, None),
        Err(BundleError::NotDense {
            expected: 3,
            found: 4
        })
    );

    // A leaf of another organization's stream, relabelled to sit in this log.
    let (other_org, other_events) = org_events(3).await;
    let mut foreign = bundle.clone();
    let mut entry = Bundle::build(other_org, &other_events, String::new()).entries[2].clone();
    entry.version = StreamVersion(3);
    foreign.entries[2] = entry;
    let err = verify_bundle(&foreign, v, None).unwrap_err();
    assert!(
        matches!(err, BundleError::MisplacedLeaf { version: 3, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_key_or_another_origin_is_refused_naming_the_checkpoint() {
    let (signer, bundle, events) = signed_bundle(4).await;
    let stranger = AuditSigner::generate(ORIGIN).unwrap();
    let err = verify_bundle(&bundle, stranger.verifier(), None).unwrap_err();
    assert!(
        matches!(err, BundleError::Checkpoint(NoteError::NoSignatureFrom { .. })),
        "{err}"
    );
    assert!(err.to_string().starts_with("checkpoint"), "{err}");

    // The signature is good, but the checkpoint is of another organization's log.
    let mut moved = bundle.clone();
    moved.organization = OrgId::new_v7();
    assert!(matches!(
        verify_bundle(&moved, signer.verifier(), None),
        Err(BundleError::WrongOrigin { .. })
    ));

    // A checkpoint of the same leaves under another log name.
    let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
    let global = Checkpoint::new(keyledger_audit::global_origin(ORIGIN), 4, merkle::root(&leaves)).unwrap();
    let mut relabelled = bundle.clone();
    relabelled.checkpoint = signer.sign_checkpoint(&global);
    assert!(matches!(
        verify_bundle(&relabelled, signer.verifier(), None),
        Err(BundleError::WrongOrigin { .. })
    ));
}

#[tokio::test]
async fn the_log_must_extend_the_previous_checkpoint() {
    let (signer, bundle, events) = signed_bundle(8).await;
    let v = signer.verifier();
    let org = bundle.organization;
    let earlier = checkpoint_note(&signer, org, &events[..5]);
    assert_eq!(
        verify_bundle(&bundle, v, Some(&earlier)).unwrap().extends,
        Some(5)
    );
    let same = checkpoint_note(&signer, org, &events);
    assert_eq!(verify_bundle(&bundle, v, Some(&same)).unwrap().extends, Some(8));

    // A rewritten history: the previous checkpoint saw another event 3.
    let mut rewritten = events[..5].to_vec();
    rewritten[2].payload["name"] = "what was there before".into();
    let forked = checkpoint_note(&signer, org, &rewritten);
    assert_eq!(
        verify_bundle(&bundle, v, Some(&forked)),
        Err(BundleError::DoesNotExtend { previous: 5 })
    );

    // The log was cut short after an earlier checkpoint of 8 leaves.
    let (_, short_events) = (org, &events[..6]);
    let short = Bundle::build(org, short_events, checkpoint_note(&signer, org, short_events));
    assert_eq!(
        verify_bundle(&short, v, Some(&same)),
        Err(BundleError::Shrunk { previous: 8, size: 6 })
    );

    // A previous checkpoint of another log, or by another key.
    let (other, other_events) = org_events(3).await;
    let elsewhere = checkpoint_note(&signer, other, &other_events);
    assert!(matches!(
        verify_bundle(&bundle, v, Some(&elsewhere)),
        Err(BundleError::PreviousOtherOrigin { .. })
    ));
    let stranger = AuditSigner::generate(ORIGIN).unwrap();
    let unsigned = checkpoint_note(&stranger, org, &events[..5]);
    assert!(matches!(
        verify_bundle(&bundle, v, Some(&unsigned)),
        Err(BundleError::Previous(_))
    ));
}

#[tokio::test]
async fn an_empty_log_verifies_at_size_zero() {
    let signer = AuditSigner::generate(ORIGIN).unwrap();
    let org = OrgId::new_v7();
    let bundle = Bundle::build(org, &[], checkpoint_note(&signer, org, &[]));
    let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
    assert_eq!(
        verify_bundle(&bundle, &verifier, None).unwrap().checkpoint.size(),
        0
    );
}

#[test]
fn the_checked_in_schema_matches_the_bundle_type() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/audit-bundle.v1.json");
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&schemars::schema_for!(Bundle)).unwrap()
    );
    if std::env::var_os("KEYLEDGER_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "schemas/audit-bundle.v1.json is stale; run KEYLEDGER_BLESS=1 cargo test -p keyledger-audit --test bundle"
    );
}

#[tokio::test]
async fn a_built_bundle_validates_against_the_checked_in_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/audit-bundle.v1.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let (_, bundle, _) = signed_bundle(4).await;
    let instance = serde_json::to_value(&bundle).unwrap();
    assert!(validator.is_valid(&instance));
    let mut extra = instance.clone();
    extra["private_key"] = "x".into();
    assert!(
        !validator.is_valid(&extra),
        "the schema must refuse unknown fields"
    );
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
