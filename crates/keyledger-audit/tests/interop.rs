//! Issue 13: "Checkpoints must verify with an independent note verifier". The independent
//! implementation is Cloudflare's `signed_note` (azul), a port of Go's
//! `golang.org/x/mod/sumdb/note`: it verifies what keyledger signs, keyledger verifies what it
//! signs, and the two read each other's verifier and signer keys.

use keyledger_audit::{AuditSigner, Checkpoint, NoteError, Verifier, open_checkpoint};
use keyledger_store::merkle;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

const NAME: &str = "keyledger.test";

fn checkpoint(size: u64) -> Checkpoint {
    let leaves: Vec<_> = (0..size).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
    Checkpoint::new(
        format!("{NAME}/org/0193a1b2-0000-7000-8000-000000000001"),
        size,
        merkle::root(&leaves),
    )
    .unwrap()
}

fn their_verifiers(vkey: &str) -> VerifierList {
    VerifierList::new(vec![Box::new(StandardVerifier::new(vkey).unwrap())])
}

#[test]
fn signed_note_verifies_keyledger_checkpoints() {
    let signer = AuditSigner::generate(NAME).unwrap();
    for size in [0, 1, 7, 10_000] {
        let note = signer.sign_checkpoint(&checkpoint(size));
        let parsed = Note::from_bytes(note.as_bytes()).unwrap();
        let (verified, unverified) = parsed.verify(&their_verifiers(&signer.verifier_key())).unwrap();
        assert_eq!(verified.len(), 1);
        assert!(unverified.is_empty());
        assert_eq!(verified[0].name(), NAME);
        assert_eq!(parsed.text(), checkpoint(size).body().as_bytes());
    }
}

#[test]
fn signed_note_refuses_a_changed_keyledger_checkpoint() {
    let signer = AuditSigner::generate(NAME).unwrap();
    let note = signer
        .sign_checkpoint(&checkpoint(7))
        .replacen("\n7\n", "\n6\n", 1);
    let parsed = Note::from_bytes(note.as_bytes()).unwrap();
    assert!(parsed.verify(&their_verifiers(&signer.verifier_key())).is_err());
}

#[test]
fn keyledger_verifies_notes_signed_by_signed_note() {
    let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, NAME);
    let their_signer = StandardSigner::new(&skey).unwrap();
    let mut note = Note::new(checkpoint(42).body().as_bytes(), &[]).unwrap();
    note.add_sigs(&[&their_signer]).unwrap();
    let text = String::from_utf8(note.to_bytes()).unwrap();

    let verifier = Verifier::parse(&vkey).unwrap();
    assert_eq!(verifier.to_string(), vkey);
    assert_eq!(open_checkpoint(&text, &verifier).unwrap(), checkpoint(42));

    // Another key under the same name is not this verifier.
    let (_, other) = signed_note::generate_key(&mut rand::rngs::OsRng, NAME);
    assert!(matches!(
        open_checkpoint(&text, &Verifier::parse(&other).unwrap()),
        Err(NoteError::NoSignatureFrom { .. })
    ));
}

#[test]
fn a_witness_cosignature_is_ignored_and_keeps_ours_valid() {
    let signer = AuditSigner::generate(NAME).unwrap();
    let (witness_skey, witness_vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, "witness.test");
    let ours = signer.sign_checkpoint(&checkpoint(9));
    let mut note = Note::from_bytes(ours.as_bytes()).unwrap();
    note.add_sigs(&[&StandardSigner::new(&witness_skey).unwrap()])
        .unwrap();
    let cosigned = String::from_utf8(note.to_bytes()).unwrap();
    assert!(cosigned.contains("\u{2014} witness.test "));
    assert_eq!(
        open_checkpoint(&cosigned, signer.verifier()).unwrap(),
        checkpoint(9)
    );
    assert!(open_checkpoint(&cosigned, &Verifier::parse(&witness_vkey).unwrap()).is_ok());
}

#[test]
fn the_signing_key_file_is_a_standard_signer_key() {
    let dir = tempfile::tempdir().unwrap();
    // Ours, read by signed_note: the same signature line as ours.
    let path = dir.path().join("audit-signing-key");
    let signer = AuditSigner::generate(NAME).unwrap();
    signer.create_file(&path).unwrap();
    let skey = std::fs::read_to_string(&path).unwrap();
    let theirs = StandardSigner::new(skey.trim_end()).unwrap();
    let mut note = Note::new(checkpoint(3).body().as_bytes(), &[]).unwrap();
    note.add_sigs(&[&theirs]).unwrap();
    assert_eq!(
        note.to_bytes(),
        signer.sign_checkpoint(&checkpoint(3)).into_bytes()
    );

    // Theirs, read by keyledger.
    let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, NAME);
    let path = dir.path().join("theirs");
    write_private(&path, &skey);
    let loaded = AuditSigner::from_file(&path).unwrap();
    assert_eq!(loaded.verifier_key(), vkey);
}

fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).unwrap().write_all(text.as_bytes()).unwrap();
}
