//! The internal key ring: the provider's own AES-256 keys that seal protected fields (client
//! secrets, EDEKs) in stored events (DESIGN.md §1). The newest key seals; every key opens.
//!
//! The ring lives in a JSON file created with mode 0600 when absent (ADR 0006):
//!
//! ```json
//! {"format":"keyledger-internal-keys/v1",
//!  "keys":[{"kid":"ik-…","created_at":"2026-…Z","key":"<base64url, 32 bytes>"}]}
//! ```
//!
//! Keys are listed oldest first; the last one seals. Key material is zeroized on drop and never
//! appears in `Debug` output or errors.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use keyledger_domain::{AadScheme, SealedBox};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{KeyRingError, OpenError, SealError};

/// The `format` tag of the key ring file.
pub const KEY_RING_FORMAT: &str = "keyledger-internal-keys/v1";

/// One internal AES-256 key with its id.
pub struct InternalKey {
    kid: String,
    created_at: DateTime<Utc>,
    material: SecretBox<[u8; 32]>,
    cipher: Aes256Gcm,
}

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InternalKey(kid={}, <hidden>)", self.kid)
    }
}

impl InternalKey {
    /// A fresh random key with a new id.
    pub fn generate() -> Self {
        let mut bytes = Aes256Gcm::generate_key(OsRng);
        let mut material = Zeroizing::new([0u8; 32]);
        material.copy_from_slice(bytes.as_slice());
        bytes.as_mut_slice().zeroize();
        let kid = format!("ik-{}", uuid::Uuid::now_v7().simple());
        Self::from_parts(kid, Utc::now(), &material)
    }

    /// A key with the given id and material (imports, tests).
    pub fn from_secret(kid: String, created_at: DateTime<Utc>, material: &SecretBox<[u8; 32]>) -> Self {
        Self::from_parts(kid, created_at, material.expose_secret())
    }

    fn from_parts(kid: String, created_at: DateTime<Utc>, material: &[u8; 32]) -> Self {
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(material.as_slice()));
        let secret = SecretBox::init_with_mut(|b: &mut [u8; 32]| b.copy_from_slice(material));
        Self {
            kid,
            created_at,
            material: secret,
            cipher,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

/// Several internal keys; the newest seals and every one opens.
#[derive(Debug)]
pub struct KeyRing {
    /// Oldest first; never empty.
    keys: Vec<InternalKey>,
}

#[derive(Serialize, Deserialize)]
struct RingFile {
    format: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct KeyEntry {
    kid: String,
    #[zeroize(skip)]
    created_at: DateTime<Utc>,
    key: String,
}

impl KeyRing {
    /// A ring with one fresh key (tests, dev mode without a file).
    pub fn generate() -> Self {
        Self {
            keys: vec![InternalKey::generate()],
        }
    }

    /// A ring of the given keys, oldest first. `None` when empty or when ids repeat.
    pub fn from_keys(keys: Vec<InternalKey>) -> Option<Self> {
        let mut ids: Vec<&str> = keys.iter().map(InternalKey::kid).collect();
        ids.sort_unstable();
        ids.dedup();
        if keys.is_empty() || ids.len() != keys.len() {
            return None;
        }
        Some(Self { keys })
    }

    /// Adds a fresh key that seals from now on; returns its id.
    pub fn rotate(&mut self) -> &str {
        self.keys.push(InternalKey::generate());
        self.newest().kid()
    }

    /// The key that seals.
    pub fn newest(&self) -> &InternalKey {
        // Invariant: the constructors never build an empty ring and keys are never removed.
        &self.keys[self.keys.len() - 1]
    }

    /// The ids of every key, oldest first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(InternalKey::kid).collect()
    }

    fn find(&self, kid: &str) -> Option<&InternalKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Seals `clear` with the newest key, a fresh 96-bit nonce and `aad`.
    ///
    /// The box records [`AadScheme::V1`], the scheme of a caller-built `aad` such as the
    /// provider-wrapped DEKs'. Event fields are sealed through `chain::seal_event`, which builds
    /// a v2 AAD and records `V2`: a caller that builds its own v2 AAD must set `aad` likewise,
    /// or the box will not open.
    pub fn seal(&self, aad: &[u8], clear: &[u8]) -> Result<SealedBox, SealError> {
        let key = self.newest();
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = key
            .cipher
            .encrypt(&nonce, Payload { msg: clear, aad })
            .map_err(|_| SealError::Cipher)?;
        Ok(SealedBox {
            kid: key.kid.clone(),
            nonce: nonce.to_vec(),
            ct,
            aad: AadScheme::V1,
        })
    }

    /// Opens a sealed value with the key named by its id.
    pub fn open(&self, sealed: &SealedBox, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let key = self.find(&sealed.kid).ok_or_else(|| OpenError::UnknownKey {
            kid: sealed.kid.clone(),
        })?;
        if sealed.nonce.len() != 12 {
            return Err(OpenError::BadNonce(sealed.nonce.len()));
        }
        let nonce = Nonce::from_slice(&sealed.nonce);
        key.cipher
            .decrypt(nonce, Payload { msg: &sealed.ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Authentication {
                kid: sealed.kid.clone(),
            })
    }

    /// Writes the ring to a new file at `path` (mode 0600). Never replaces an existing file:
    /// that fails with [`KeyRingError::Io`] (`AlreadyExists`).
    pub fn create_file(&self, path: &Path) -> Result<(), KeyRingError> {
        self.write_new(path)
    }

    /// Loads the ring from an existing file. Refuses a file readable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyRingError> {
        check_permissions(path)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io_err(path, e))?);
        let invalid = |detail: &str| KeyRingError::Invalid {
            path: path.display().to_string(),
            detail: detail.to_owned(),
        };
        // serde_json's error text may quote input; never forward it, it could hold key bytes.
        let file: RingFile =
            serde_json::from_str(&text).map_err(|_| invalid("not a key ring JSON document"))?;
        if file.format != KEY_RING_FORMAT {
            return Err(invalid("unknown format tag"));
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in &file.keys {
            let bytes = Zeroizing::new(
                B64.decode(entry.key.as_bytes())
                    .map_err(|_| invalid("a key is not base64url"))?,
            );
            if bytes.len() != 32 {
                return Err(invalid("a key is not 32 bytes"));
            }
            let mut material = Zeroizing::new([0u8; 32]);
            material.copy_from_slice(&bytes);
            keys.push(InternalKey::from_parts(
                entry.kid.clone(),
                entry.created_at,
                &material,
            ));
        }
        Self::from_keys(keys).ok_or_else(|| invalid("no key, or a repeated key id"))
    }

    /// Writes the ring to `path` (replacing it atomically), with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyRingError> {
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        self.write_new(&tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    }

    fn write_new(&self, path: &Path) -> Result<(), KeyRingError> {
        let file = RingFile {
            format: KEY_RING_FORMAT.to_owned(),
            keys: self
                .keys
                .iter()
                .map(|k| KeyEntry {
                    kid: k.kid.clone(),
                    created_at: k.created_at,
                    key: B64.encode(k.material.expose_secret()),
                })
                .collect(),
        };
        let text = Zeroizing::new(
            serde_json::to_vec_pretty(&file).map_err(|e| KeyRingError::Invalid {
                path: path.display().to_string(),
                detail: format!("serialization failed: {e}"),
            })?,
        );
        let mut f = crate::private_file::create(path).map_err(|e| io_err(path, e))?;
        f.write_all(&text).map_err(|e| io_err(path, e))?;
        f.sync_all().map_err(|e| io_err(path, e))
    }
}

fn io_err(path: &Path, source: std::io::Error) -> KeyRingError {
    KeyRingError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses a key file that its group or others may read: it may have leaked.
fn check_permissions(path: &Path) -> Result<(), KeyRingError> {
    match crate::private_file::shared_mode(path).map_err(|e| io_err(path, e))? {
        Some(mode) => Err(KeyRingError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_seals_and_every_key_opens() {
        let mut ring = KeyRing::generate();
        let old = ring.seal(b"aad", b"first").unwrap();
        let new_kid = ring.rotate().to_owned();
        let new = ring.seal(b"aad", b"second").unwrap();
        assert_eq!(new.kid, new_kid);
        assert_ne!(old.kid, new.kid);
        assert_eq!(&*ring.open(&old, b"aad").unwrap(), b"first");
        assert_eq!(&*ring.open(&new, b"aad").unwrap(), b"second");
    }

    #[test]
    fn nonces_are_fresh() {
        let ring = KeyRing::generate();
        let a = ring.seal(b"x", b"same").unwrap();
        let b = ring.seal(b"x", b"same").unwrap();
        assert_eq!(a.nonce.len(), 12);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ct, b.ct);
    }

    #[test]
    fn wrong_aad_wrong_key_and_missing_key_are_typed() {
        let ring = KeyRing::generate();
        let sealed = ring.seal(b"org-1|1|edek", b"dek").unwrap();
        assert!(matches!(
            ring.open(&sealed, b"org-1|2|edek"),
            Err(OpenError::Authentication { .. })
        ));
        let other = KeyRing::generate();
        assert!(matches!(
            other.open(&sealed, b"org-1|1|edek"),
            Err(OpenError::UnknownKey { .. })
        ));
        // Same id, different material: authentication fails.
        let mut forged = sealed.clone();
        forged.kid = other.newest().kid().to_owned();
        assert!(matches!(
            other.open(&forged, b"org-1|1|edek"),
            Err(OpenError::Authentication { .. })
        ));
    }

    #[test]
    fn debug_hides_key_material() {
        let ring = KeyRing::generate();
        let text = format!("{ring:?}");
        let b64 = B64.encode(ring.newest().material.expose_secret());
        assert!(!text.contains(&b64));
        assert!(text.contains(ring.newest().kid()));
    }

    #[test]
    fn file_is_created_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("internal-keys.json");
        let mut ring = KeyRing::generate();
        ring.create_file(&path).unwrap();
        assert!(
            ring.create_file(&path).is_err(),
            "an existing file is never replaced"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let sealed = ring.seal(b"a", b"payload").unwrap();
        ring.rotate();
        ring.save(&path).unwrap();
        let again = KeyRing::load(&path).unwrap();
        assert_eq!(again.kids(), ring.kids());
        assert_eq!(&*again.open(&sealed, b"a").unwrap(), b"payload");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        KeyRing::generate().create_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyRing::load(&path),
            Err(KeyRingError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn invalid_file_errors_do_not_echo_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        crate::private_file::create(&path)
            .unwrap()
            .write_all(br#"{"format":"keyledger-internal-keys/v1","keys":[{"kid":"a","created_at":"2026-01-01T00:00:00Z","key":"c2VjcmV0"}]}"#)
            .unwrap();
        let err = KeyRing::load(&path).unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(!err.contains("c2VjcmV0"));
    }
}
