//! `keyledger audit verify`, run as the real binary on bundles built from a store's events
//! (the in-memory store, with sealed fields) and signed with a real audit key: offline, exit 0
//! with a summary, exit 3 naming the leaf or the checkpoint, exit 2 for a malformed key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use keyledger_audit::{AuditSigner, Bundle, Checkpoint, org_origin};
use keyledger_domain::{OrgId, StreamId, StreamVersion};
use keyledger_store::conformance::{cmk_enabled, dek_generated, tenant_added};
use keyledger_store::{EventStore, InMemoryStore, KeyRing, StoredEvent, merkle};

const ORIGIN: &str = "keyledger.test";
const SECRET: &str = "client-secret-that-must-not-leak";

struct Fixture {
    dir: tempfile::TempDir,
    signer: AuditSigner,
    org: OrgId,
    events: Vec<StoredEvent>,
}

impl Fixture {
    /// An organization with `n` events in a store, and a fresh audit signing key.
    async fn new(n: usize) -> Self {
        let store = InMemoryStore::new(Arc::new(KeyRing::generate()));
        let org = OrgId::new_v7();
        let stream = StreamId::for_org(org);
        let mut batch = vec![cmk_enabled(SECRET), dek_generated(b"edek")];
        batch.extend((2..n).map(|i| tenant_added(&format!("tenant {i}"))));
        store
            .append(stream, StreamVersion::NONE, batch, None)
            .await
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            signer: AuditSigner::generate(ORIGIN).unwrap(),
            org,
            events: store.read_stream(stream, StreamVersion(1)).await.unwrap(),
        }
    }

    /// The signed checkpoint note of the first `size` events.
    fn checkpoint(&self, events: &[StoredEvent]) -> String {
        let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
        let size = u64::try_from(leaves.len()).unwrap();
        let checkpoint = Checkpoint::new(org_origin(ORIGIN, self.org), size, merkle::root(&leaves)).unwrap();
        self.signer.sign_checkpoint(&checkpoint)
    }

    fn bundle(&self) -> Bundle {
        Bundle::build(self.org, &self.events, self.checkpoint(&self.events))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn write_bundle(&self, name: &str, bundle: &Bundle) -> PathBuf {
        self.write(name, &serde_json::to_string_pretty(bundle).unwrap())
    }
}

fn audit_verify(bundle: &Path, key: &str, previous: Option<&Path>) -> Output {
    let mut cmd = Command::new(common::keyledger());
    cmd.args(["audit", "verify", "--bundle"])
        .arg(bundle)
        .args(["--verifier-key", key]);
    if let Some(p) = previous {
        cmd.arg("--previous").arg(p);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    (stdout, stderr)
}

#[tokio::test]
async fn an_intact_bundle_passes_with_a_one_line_summary() {
    let f = Fixture::new(6).await;
    let bundle = f.write_bundle("bundle.json", &f.bundle());
    assert!(!std::fs::read_to_string(&bundle).unwrap().contains(SECRET));
    let (stdout, _) = assert_exit(&audit_verify(&bundle, &f.signer.verifier_key(), None), 0);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!("verified organization {}: 6 leaves", f.org)),
        "{stdout}"
    );
    assert!(stdout.contains(&org_origin(ORIGIN, f.org)), "{stdout}");
}

#[tokio::test]
async fn an_edited_payload_fails_naming_the_version() {
    let f = Fixture::new(6).await;
    let mut bundle = f.bundle();
    bundle.entries[3].leaf["payload"]["name"] = "someone else".into();
    let path = f.write_bundle("edited.json", &bundle);
    let (_, stderr) = assert_exit(&audit_verify(&path, &f.signer.verifier_key(), None), 3);
    assert!(stderr.contains("leaf 4:"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn an_edited_payload_with_a_recomputed_input_fails_naming_the_checkpoint() {
    use base64::Engine as _;
    let f = Fixture::new(6).await;
    let mut bundle = f.bundle();
    let entry = &mut bundle.entries[2];
    entry.leaf["payload"]["name"] = "someone else".into();
    entry.leaf_input = base64::engine::general_purpose::STANDARD.encode(merkle::leaf_input(&entry.leaf));
    let path = f.write_bundle("recomputed.json", &bundle);
    let (_, stderr) = assert_exit(&audit_verify(&path, &f.signer.verifier_key(), None), 3);
    assert!(
        stderr.contains(&format!("checkpoint {} at size 6", org_origin(ORIGIN, f.org))),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_bundle_must_extend_the_previous_checkpoint() {
    let f = Fixture::new(8).await;
    let bundle = f.write_bundle("bundle.json", &f.bundle());
    let key = f.signer.verifier_key();

    let earlier = f.write("earlier.checkpoint", &f.checkpoint(&f.events[..5]));
    let (stdout, _) = assert_exit(&audit_verify(&bundle, &key, Some(&earlier)), 0);
    assert!(
        stdout.contains("extends the previous checkpoint at size 5"),
        "{stdout}"
    );
    // Saved with an extra newline (as `jq -r .checkpoint` writes it): the same checkpoint.
    let saved = f.write("saved.checkpoint", &format!("{}\n", f.checkpoint(&f.events[..5])));
    assert_exit(&audit_verify(&bundle, &key, Some(&saved)), 0);

    // The earlier checkpoint saw another history: event 3 was rewritten since.
    let mut other_history = f.events[..5].to_vec();
    other_history[2].payload["name"] = "before the rewrite".into();
    let forked = f.write("forked.checkpoint", &f.checkpoint(&other_history));
    let (_, stderr) = assert_exit(&audit_verify(&bundle, &key, Some(&forked)), 3);
    assert!(stderr.contains("previous checkpoint at size 5"), "{stderr}");
    assert!(stderr.contains("does not extend"), "{stderr}");

    // The log was cut short after a checkpoint of all 8 events.
    let all = f.write("all.checkpoint", &f.checkpoint(&f.events));
    let short = Bundle::build(f.org, &f.events[..6], f.checkpoint(&f.events[..6]));
    let short = f.write_bundle("short.json", &short);
    let (_, stderr) = assert_exit(&audit_verify(&short, &key, Some(&all)), 3);
    assert!(stderr.contains("previous checkpoint at size 8"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_verifier_key_fails_naming_the_checkpoint() {
    let f = Fixture::new(4).await;
    let bundle = f.write_bundle("bundle.json", &f.bundle());
    let stranger = AuditSigner::generate(ORIGIN).unwrap();
    let (_, stderr) = assert_exit(&audit_verify(&bundle, &stranger.verifier_key(), None), 3);
    assert!(
        stderr.contains("checkpoint: the checkpoint has no signature from keyledger.test"),
        "{stderr}"
    );
}

#[tokio::test]
async fn usage_and_file_errors_are_not_verification_failures() {
    let f = Fixture::new(3).await;
    let bundle = f.write_bundle("bundle.json", &f.bundle());
    // A malformed verifier key is a usage error.
    let (_, stderr) = assert_exit(&audit_verify(&bundle, "not-a-key", None), 2);
    assert!(stderr.contains("--verifier-key"), "{stderr}");
    // A missing file is a failure to run (exit 1), naming the file.
    let missing = f.dir.path().join("missing.json");
    let (_, stderr) = assert_exit(&audit_verify(&missing, &f.signer.verifier_key(), None), 1);
    assert!(stderr.contains("missing.json"), "{stderr}");
    // A file that is not a bundle cannot verify (exit 3).
    let junk = f.write("junk.json", "{\"format\": 1}");
    let (_, stderr) = assert_exit(&audit_verify(&junk, &f.signer.verifier_key(), None), 3);
    assert!(stderr.contains("not a keyledger audit bundle"), "{stderr}");
}
