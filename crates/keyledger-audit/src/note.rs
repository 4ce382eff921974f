//! Signed checkpoints in the C2SP `signed-note` format with Ed25519 (CONTRACT.md "Verifiable
//! audit log"), so that any standard note verifier (Go's `golang.org/x/mod/sumdb/note`,
//! Cloudflare's `signed_note`) accepts what keyledger signs.
//!
//! - A note is its text (ending in a newline), a blank line, then one line per signature:
//!   `— <name> <base64(key hash ‖ signature)>`.
//! - The key hash is the first 4 bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`; `0x01`
//!   names Ed25519.
//! - The verifier key is `<name>+<hash8hex>+<base64(0x01 ‖ public key)>`.
//! - A checkpoint's text (C2SP tlog-checkpoint) is `<origin>\n<size>\n<base64 root>\n`.
//!
//! Signing and signature checks are `ed25519-dalek`'s; this module only frames the bytes.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use keyledger_domain::{AuditCheckpointSigned, AuditLog, OrgId, RootHash};
use keyledger_store::merkle::Hash;
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in note keys (C2SP signed-note).
pub const ALGORITHM_ED25519: u8 = 0x01;

/// Notes larger than this are refused before parsing: a checkpoint is well under 1 KiB, and a
/// verifier must not be made to scan an unbounded input.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// Why a note, a key or a checkpoint is refused. The messages never quote key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// A signer or origin name that C2SP forbids (empty, with a space or a `+`). Fix the
    /// configured `audit.origin`.
    #[error("{0:?} is not a valid note name (it must be non-empty, with no space and no '+')")]
    InvalidName(String),
    /// A verifier key that is not `<name>+<hash8hex>+<base64(0x01 ‖ key)>`, or whose hash does
    /// not match its name and key. The caller was given a wrong or damaged key.
    #[error("invalid verifier key: {0}")]
    InvalidVerifierKey(&'static str),
    /// The note is not framed as a signed note (too large, control characters, no blank line
    /// before the signatures, a malformed signature line).
    #[error("the checkpoint is not a signed note: {0}")]
    Malformed(&'static str),
    /// No signature line is from this verifier's key: signed by another key or name.
    #[error("the checkpoint has no signature from {name} (key hash {key_hash:08x})")]
    NoSignatureFrom { name: String, key_hash: u32 },
    /// The signature from this verifier's key does not verify: the text or the signature was
    /// changed.
    #[error("the checkpoint's signature from {name} does not verify")]
    BadSignature { name: String },
    /// The signed text is not a checkpoint `<origin>\n<size>\n<base64 root>\n`.
    #[error("the signed text is not a checkpoint: {0}")]
    NotACheckpoint(&'static str),
}

/// A signed tree head: the log's origin, its size and its root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
}

impl Checkpoint {
    /// A checkpoint of the log named `origin` with `size` leaves and this `root`.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Result<Self, NoteError> {
        let origin = origin.into();
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return Err(NoteError::InvalidName(origin));
        }
        Ok(Self { origin, size, root })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The note text: `<origin>\n<size>\n<base64 root>\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parses a checkpoint text. Extension lines after the root (C2SP tlog-checkpoint) are
    /// allowed and ignored; keyledger writes none.
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(NoteError::NotACheckpoint("the text does not end with a newline"))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(NoteError::NotACheckpoint("fewer than three lines"));
        };
        if origin.is_empty() {
            return Err(NoteError::NotACheckpoint("the origin line is empty"));
        }
        let canonical_decimal = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|_| canonical_decimal)
            .ok_or(NoteError::NotACheckpoint("the size line is not a decimal number"))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
            .ok_or(NoteError::NotACheckpoint(
                "the root line is not a base64 SHA-256 hash",
            ))?;
        Self::new(origin, size, root)
    }
}

/// The origin of an organization's log: `<audit.origin>/org/<org_id>`.
pub fn org_origin(audit_origin: &str, org: OrgId) -> String {
    format!("{audit_origin}/org/{org}")
}

/// The origin of the global log: `<audit.origin>/global`.
pub fn global_origin(audit_origin: &str) -> String {
    format!("{audit_origin}/global")
}

/// Checks a signer name against C2SP: non-empty, no Unicode space, no `+`.
pub fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(NoteError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// The key hash of a note key: the first 4 bytes, big-endian, of
/// `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`.
pub fn key_hash(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALGORITHM_ED25519]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A note verifier key: a name and an Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_hash: u32,
    key: VerifyingKey,
}

impl Verifier {
    /// The verifier of `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_hash: key_hash(name, &key),
            key,
        })
    }

    /// Parses `<name>+<hash8hex>+<base64(0x01 ‖ public key)>` and checks the hash.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        // The name may not hold '+' (the base64 key may), so the first two '+' separate the
        // fields.
        let mut fields = text.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(NoteError::InvalidVerifierKey("expected <name>+<hash>+<key>"));
        };
        check_name(name).map_err(|_| NoteError::InvalidVerifierKey("the name is not valid"))?;
        if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NoteError::InvalidVerifierKey("the hash is not 8 hex digits"));
        }
        let hash = u32::from_str_radix(hash, 16)
            .map_err(|_| NoteError::InvalidVerifierKey("the hash is not 8 hex digits"))?;
        let bytes = B64
            .decode(key)
            .map_err(|_| NoteError::InvalidVerifierKey("the key is not base64"))?;
        let Some((&ALGORITHM_ED25519, public)) = bytes.split_first() else {
            return Err(NoteError::InvalidVerifierKey(
                "the key is not an Ed25519 key (0x01)",
            ));
        };
        let public = <[u8; 32]>::try_from(public)
            .map_err(|_| NoteError::InvalidVerifierKey("the Ed25519 key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::InvalidVerifierKey("the Ed25519 key is not a curve point"))?;
        let verifier = Self::new(name, key)?;
        if verifier.key_hash != hash {
            return Err(NoteError::InvalidVerifierKey(
                "the hash does not match the name and key",
            ));
        }
        Ok(verifier)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl FromStr for Verifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, NoteError> {
        Self::parse(s)
    }
}

/// The verifier key text, `<name>+<hash8hex>+<base64(0x01 ‖ public key)>`.
impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = Vec::with_capacity(33);
        key.push(ALGORITHM_ED25519);
        key.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.key_hash, B64.encode(key))
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({self})")
    }
}

/// The audit signing key: an Ed25519 key under the signer name `audit.origin`. The secret
/// half is `ed25519-dalek`'s `SigningKey`, which zeroizes itself on drop; this type's Debug
/// shows only the verifier key.
pub struct AuditSigner {
    verifier: Verifier,
    key: SigningKey,
}

impl AuditSigner {
    /// A new random key for signer `name`.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        Self::from_signing_key(name, SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub(crate) fn from_signing_key(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        Ok(Self {
            verifier: Verifier::new(name, key.verifying_key())?,
            key,
        })
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The signer name (`audit.origin`).
    pub fn name(&self) -> &str {
        self.verifier.name()
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// What `GET /v1/audit/public-key` publishes: `<name>+<hash8hex>+<base64(0x01 ‖ key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier.to_string()
    }

    /// The signed note of `checkpoint`: its text, a blank line, and this key's signature line.
    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// The checkpoint of `log` at `size` leaves with `root`, signed now: the event the
    /// checkpointer records in stream `audit`, its origin under this key's name.
    pub fn sign_log(
        &self,
        log: AuditLog,
        size: u64,
        root: Hash,
        signed_at: DateTime<Utc>,
    ) -> Result<AuditCheckpointSigned, NoteError> {
        let origin = match log {
            AuditLog::Global => global_origin(self.name()),
            AuditLog::Org(org) => org_origin(self.name(), org),
        };
        let checkpoint = Checkpoint::new(origin.clone(), size, root)?;
        Ok(AuditCheckpointSigned {
            log,
            origin,
            tree_size: size,
            root_hash: RootHash(root),
            note: self.sign_checkpoint(&checkpoint),
            signed_at,
        })
    }

    /// Signs a note text (which ends with a newline).
    fn sign_text(&self, text: &str) -> String {
        let signature: Signature = self.key.sign(text.as_bytes());
        let mut framed = Vec::with_capacity(68);
        framed.extend_from_slice(&self.verifier.key_hash.to_be_bytes());
        framed.extend_from_slice(&signature.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.verifier.name, B64.encode(framed))
    }
}

impl fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSigner")
            .field("verifier_key", &self.verifier_key())
            .finish_non_exhaustive()
    }
}

/// Opens a signed note: checks that it carries a valid signature from `verifier` (signatures
/// of other keys are ignored, as C2SP allows co-signers) and parses its text as a checkpoint.
pub fn open_checkpoint(note: &str, verifier: &Verifier) -> Result<Checkpoint, NoteError> {
    let text = open_note(note, verifier)?;
    Checkpoint::parse_body(text)
}

/// The text of a signed note, once `verifier`'s signature on it holds.
pub fn open_note<'a>(note: &'a str, verifier: &Verifier) -> Result<&'a str, NoteError> {
    let (text, signatures) = split_note(note)?;
    let mut found = None;
    for line in signatures.split('\n') {
        let (name, encoded) = line
            .strip_prefix("\u{2014} ")
            .and_then(|rest| rest.split_once(' '))
            .ok_or(NoteError::Malformed(
                "a signature line is not '— <name> <signature>'",
            ))?;
        let bytes = B64
            .decode(encoded)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if check_name(name).is_err() || bytes.len() < 5 {
            return Err(NoteError::Malformed(
                "a signature line is not '— <name> <signature>'",
            ));
        }
        let hash = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if name == verifier.name && hash == verifier.key_hash {
            found = Some(bytes);
        }
    }
    let bytes = found.ok_or_else(|| NoteError::NoSignatureFrom {
        name: verifier.name.clone(),
        key_hash: verifier.key_hash,
    })?;
    let bad = || NoteError::BadSignature {
        name: verifier.name.clone(),
    };
    let signature = Signature::from_slice(&bytes[4..]).map_err(|_| bad())?;
    verifier
        .key
        .verify_strict(text.as_bytes(), &signature)
        .map_err(|_| bad())?;
    Ok(text)
}

/// The text of a signed note, its signatures **not checked**: for a reader with no verifier
/// key, who can still compare the text with what else claims to state it (`keyledger verify`
/// without `--verifier-key`). The framing is checked as by [`open_note`].
pub fn note_text(note: &str) -> Result<&str, NoteError> {
    split_note(note).map(|(text, _)| text)
}

/// A note's text (ending in its newline) and its signature lines (without the last newline).
fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::Malformed("larger than 64 KiB"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("a control character other than newline"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let signatures = signatures.strip_suffix('\n').ok_or(NoteError::Malformed(
        "the last signature line does not end with a newline",
    ))?;
    Ok((text, signatures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_store::merkle::leaf_hash;

    fn checkpoint() -> Checkpoint {
        Checkpoint::new("keyledger.test/global", 7, leaf_hash(b"x")).unwrap()
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_verifier() {
        let signer = AuditSigner::generate("keyledger.test").unwrap();
        let note = signer.sign_checkpoint(&checkpoint());
        assert!(note.starts_with("keyledger.test/global\n7\n"), "{note}");
        assert!(note.contains("\n\n\u{2014} keyledger.test "), "{note}");
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(open_checkpoint(&note, &verifier).unwrap(), checkpoint());
    }

    #[test]
    fn another_key_or_a_changed_text_is_refused() {
        let signer = AuditSigner::generate("keyledger.test").unwrap();
        let other = AuditSigner::generate("keyledger.test").unwrap();
        let note = signer.sign_checkpoint(&checkpoint());
        assert!(matches!(
            open_checkpoint(&note, other.verifier()),
            Err(NoteError::NoSignatureFrom { .. })
        ));
        let changed = note.replacen("\n7\n", "\n8\n", 1);
        assert_eq!(
            open_checkpoint(&changed, signer.verifier()),
            Err(NoteError::BadSignature {
                name: "keyledger.test".into()
            })
        );
    }

    #[test]
    fn the_verifier_key_round_trips_and_a_wrong_hash_is_refused() {
        // Base64 keys often hold '+' (half of random keys do): the name never does.
        for _ in 0..32 {
            let text = AuditSigner::generate("keyledger.test").unwrap().verifier_key();
            assert_eq!(Verifier::parse(&text).unwrap().to_string(), text);
        }
        let signer = AuditSigner::generate("keyledger.test").unwrap();
        let text = signer.verifier_key();
        let mut fields = text.splitn(3, '+');
        let (name, hash, key) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        let wrong = format!("{name}+{:08x}+{key}", u32::from_str_radix(hash, 16).unwrap() ^ 1);
        assert!(Verifier::parse(&wrong).is_err());
        assert!(Verifier::parse("keyledger.test+0000+AQ==").is_err());
        assert!(AuditSigner::generate("has space").is_err());
        assert!(AuditSigner::generate("a+b").is_err());
    }

    #[test]
    fn the_signer_debug_shows_no_secret() {
        let signer = AuditSigner::generate("keyledger.test").unwrap();
        let debug = format!("{signer:?}");
        let seed = B64.encode(signer.signing_key().to_bytes());
        assert!(!debug.contains(&seed), "{debug}");
        assert!(debug.contains(&signer.verifier_key()), "{debug}");
    }

    #[test]
    fn malformed_notes_and_bodies_are_typed_errors() {
        let signer = AuditSigner::generate("keyledger.test").unwrap();
        let v = signer.verifier();
        for note in [
            "",
            "a\nb\n",
            "a\n\nnot a signature\n",
            "a\n\n\u{2014} n !!!\n",
            "x\u{7}\n\n",
        ] {
            assert!(
                matches!(open_checkpoint(note, v), Err(NoteError::Malformed(_))),
                "{note:?}"
            );
        }
        for body in [
            "o\n1\n",
            "o\n01\nAA==\n",
            "o\nx\nAA==\n",
            "o\n1\nAA==\n",
            "o\n1\nAA==",
        ] {
            assert!(
                matches!(Checkpoint::parse_body(body), Err(NoteError::NotACheckpoint(_))),
                "{body:?}"
            );
        }
    }
}
