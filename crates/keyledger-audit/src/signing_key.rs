//! The audit signing key file (`audit.signing_key_file`), and the guard that keeps it
//! (CONTRACT.md "Verifiable audit log"; the same rule as the internal key file, ADR 0019).
//!
//! The file holds one line in the format of Go's `note.GenerateKey` signer keys, so standard
//! tools can use it: `PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01 ‖ Ed25519 seed)>`. It is
//! created with mode 0600 and refused when group or others may read it.
//!
//! It is created only while the store holds no checkpoint: a new key beside existing
//! checkpoints would sign checkpoints that no published verifier key accepts, and would break
//! every witness's chain of checkpoints.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::note::{ALGORITHM_ED25519, AuditSigner, NoteError, open_note};

const PREFIX: &str = "PRIVATE+KEY+";

/// Why the signing key file cannot be used. Each message names the file and never shows the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningKeyError {
    /// The file cannot be read or written. Fix the path or its permissions.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Group or others may access the file: `chmod 600` it.
    #[error("{path}: mode {mode:o} lets group or others read the signing key; chmod 600 it")]
    InsecurePermissions { path: String, mode: u32 },
    /// The file is not a note signer key.
    #[error("{path}: not an audit signing key ({detail})")]
    Invalid { path: String, detail: &'static str },
    /// The file's signer name is not `audit.origin`. Restore the file of this origin, or set
    /// `audit.origin` back: a renamed signer has another verifier key.
    #[error("{path}: the key signs as {in_file:?}, but audit.origin is {configured:?}")]
    OtherName {
        path: String,
        in_file: String,
        configured: String,
    },
    /// The file is missing while the store holds checkpoints: restore it from backup.
    #[error(
        "{path}: the file is missing, but the store holds checkpoints signed by {signed_by}; \
         restore the file from backup (a new key would sign checkpoints no one can verify \
         with the published key)"
    )]
    MissingBesideCheckpoints { path: String, signed_by: String },
    /// The file's key did not sign the store's checkpoints (a copy from another deployment,
    /// an old backup): restore the right file.
    #[error(
        "{path}: the file's key ({verifier_key}) did not sign the store's checkpoints; it \
         belongs to another store or is an old copy: restore the right file"
    )]
    NotTheCheckpointKey { path: String, verifier_key: String },
    /// `audit.origin` is not a valid signer name.
    #[error(transparent)]
    Name(#[from] NoteError),
}

/// Whether the signing key file was there or was created now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileOutcome {
    Loaded,
    Created,
}

impl AuditSigner {
    /// Reads a signing key file. Refuses a file readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, SigningKeyError> {
        check_permissions(path)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io_err(path, e))?);
        let invalid = |detail| SigningKeyError::Invalid {
            path: path.display().to_string(),
            detail,
        };
        let rest = text
            .trim_end()
            .strip_prefix(PREFIX)
            .ok_or(invalid("it does not start with PRIVATE+KEY+"))?;
        // The name may not hold '+' (the base64 key may).
        let mut fields = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(seed)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(invalid("expected PRIVATE+KEY+<name>+<hash>+<key>"));
        };
        let bytes = Zeroizing::new(B64.decode(seed).map_err(|_| invalid("the key is not base64"))?);
        let Some((&ALGORITHM_ED25519, seed)) = bytes.split_first() else {
            return Err(invalid("the key is not an Ed25519 key"));
        };
        let seed =
            Zeroizing::new(<[u8; 32]>::try_from(seed).map_err(|_| invalid("the key is not 32 bytes"))?);
        let signer = AuditSigner::from_signing_key(name, SigningKey::from_bytes(&seed))
            .map_err(|_| invalid("the name is not a valid note name"))?;
        if format!("{:08x}", signer.verifier().key_hash()) != hash {
            return Err(invalid("the key hash does not match the name and key"));
        }
        Ok(signer)
    }

    /// Writes the key to a new file with mode 0600. Never replaces an existing file.
    pub fn create_file(&self, path: &Path) -> Result<(), SigningKeyError> {
        let mut seed = Zeroizing::new(Vec::with_capacity(33));
        seed.push(ALGORITHM_ED25519);
        seed.extend_from_slice(self.signing_key().as_bytes());
        let line = Zeroizing::new(format!(
            "{PREFIX}{}+{:08x}+{}\n",
            self.name(),
            self.verifier().key_hash(),
            B64.encode(&*seed)
        ));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(path, e))?;
        }
        let mut f = keyledger_store::private_file::create(path).map_err(|e| io_err(path, e))?;
        f.write_all(line.as_bytes()).map_err(|e| io_err(path, e))?;
        f.sync_all().map_err(|e| io_err(path, e))
    }
}

/// The signer for `audit.origin` at start.
///
/// `stored_checkpoint` is a checkpoint note the store already holds (the latest
/// `AuditCheckpointSigned`), or `None` when it holds none:
/// - file present: loaded; its name must be `origin`, and it must have signed
///   `stored_checkpoint`;
/// - file missing, no checkpoint: a new key is written to `path` (0600);
/// - file missing beside checkpoints: refused, naming the file. Nothing is created.
pub fn settle_signing_key(
    path: &Path,
    origin: &str,
    stored_checkpoint: Option<&str>,
) -> Result<(AuditSigner, KeyFileOutcome), SigningKeyError> {
    let signer = match AuditSigner::from_file(path) {
        Ok(signer) => signer,
        Err(SigningKeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            if let Some(note) = stored_checkpoint {
                return Err(SigningKeyError::MissingBesideCheckpoints {
                    path: path.display().to_string(),
                    signed_by: signer_names(note),
                });
            }
            let signer = AuditSigner::generate(origin)?;
            signer.create_file(path)?;
            return Ok((signer, KeyFileOutcome::Created));
        }
        Err(e) => return Err(e),
    };
    if signer.name() != origin {
        return Err(SigningKeyError::OtherName {
            path: path.display().to_string(),
            in_file: signer.name().to_owned(),
            configured: origin.to_owned(),
        });
    }
    if let Some(note) = stored_checkpoint {
        open_note(note, signer.verifier()).map_err(|_| SigningKeyError::NotTheCheckpointKey {
            path: path.display().to_string(),
            verifier_key: signer.verifier_key(),
        })?;
    }
    Ok((signer, KeyFileOutcome::Loaded))
}

/// The signer names of a note's signature lines, for a message ("keyledger.example.com").
fn signer_names(note: &str) -> String {
    let names: Vec<&str> = note
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} ")?.split(' ').next())
        .collect();
    if names.is_empty() {
        "an unknown key".to_owned()
    } else {
        names.join(", ")
    }
}

fn io_err(path: &Path, source: std::io::Error) -> SigningKeyError {
    SigningKeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses a key file that its group or others may read: it may have leaked.
fn check_permissions(path: &Path) -> Result<(), SigningKeyError> {
    match keyledger_store::private_file::shared_mode(path).map_err(|e| io_err(path, e))? {
        Some(mode) => Err(SigningKeyError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Checkpoint;

    fn note_of(signer: &AuditSigner) -> String {
        signer.sign_checkpoint(&Checkpoint::new("o.test/global", 1, [7; 32]).unwrap())
    }

    #[test]
    fn the_first_start_creates_a_private_file_and_the_next_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("audit-signing-key");
        let (created, outcome) = settle_signing_key(&path, "o.test", None).unwrap();
        assert_eq!(outcome, KeyFileOutcome::Created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let note = note_of(&created);
        let (loaded, outcome) = settle_signing_key(&path, "o.test", Some(&note)).unwrap();
        assert_eq!(outcome, KeyFileOutcome::Loaded);
        assert_eq!(loaded.verifier_key(), created.verifier_key());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("PRIVATE+KEY+o.test+"), "{text}");
    }

    #[test]
    fn a_missing_file_beside_checkpoints_is_refused_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-signing-key");
        let note = note_of(&AuditSigner::generate("o.test").unwrap());
        let err = settle_signing_key(&path, "o.test", Some(&note)).unwrap_err();
        assert!(
            matches!(err, SigningKeyError::MissingBesideCheckpoints { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn a_file_of_another_key_or_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-signing-key");
        AuditSigner::generate("o.test")
            .unwrap()
            .create_file(&path)
            .unwrap();
        let foreign = note_of(&AuditSigner::generate("o.test").unwrap());
        let err = settle_signing_key(&path, "o.test", Some(&foreign)).unwrap_err();
        assert!(
            matches!(err, SigningKeyError::NotTheCheckpointKey { .. }),
            "{err}"
        );
        let err = settle_signing_key(&path, "other.test", None).unwrap_err();
        assert!(matches!(err, SigningKeyError::OtherName { .. }), "{err}");
        // create_file never replaces a file.
        assert!(
            AuditSigner::generate("o.test")
                .unwrap()
                .create_file(&path)
                .is_err()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_or_damaged_file_is_refused_without_showing_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-signing-key");
        let signer = AuditSigner::generate("o.test").unwrap();
        signer.create_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AuditSigner::from_file(&path),
            Err(SigningKeyError::InsecurePermissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen("+o.test+", "+p.test+", 1);
        std::fs::write(&path, &damaged).unwrap();
        let err = AuditSigner::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("key hash"), "{err}");
        let seed = text.trim_end().splitn(5, '+').nth(4).unwrap();
        assert!(!err.contains(seed), "{err}");
    }
}
