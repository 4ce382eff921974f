//! The key-access port: what keyledger needs from a key vault.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyledger_domain::{Connection, Edek, KeyIdentifier, KeyProperties, WrappedDek};
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::reason::KeyAccessError;

/// A data encryption key in clear. Zeroed on drop; its Debug output shows only its length.
#[derive(Clone)]
pub struct Dek(Zeroizing<Vec<u8>>);

impl Dek {
    /// The DEK size keyledger generates (AES-256).
    pub const LEN: usize = 32;

    /// A fresh random 256-bit DEK from the OS-seeded thread RNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; Self::LEN]);
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps bytes that came back from an unwrap.
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    /// The key bytes. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Dek {
    /// Constant-time in the length-equal case (the length is not secret), so comparing a
    /// round trip leaks nothing useful.
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl Eq for Dek {}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dek(<{} bytes hidden>)", self.0.len())
    }
}

/// What the vault says about a key: `GET keys/{name}[/{version}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    /// The key identifier the vault returned (`kid`), always with a version.
    pub key_identifier: KeyIdentifier,
    /// `RSA` or `RSA-HSM` for the keys keyledger accepts.
    pub kty: String,
    /// Modulus size in bits, when the key is RSA.
    pub key_size: Option<u32>,
    pub key_ops: Vec<String>,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
}

impl KeyDescription {
    /// The properties recorded with the enable and rotate events.
    pub fn properties(&self) -> KeyProperties {
        KeyProperties {
            kty: self.kty.clone(),
            key_size: self.key_size.unwrap_or(0),
            key_ops: self.key_ops.clone(),
            expires_at: self.expires_at,
            not_before: self.not_before,
        }
    }

    pub fn has_op(&self, op: &str) -> bool {
        self.key_ops.iter().any(|o| o == op)
    }
}

/// What the vault says about a soft-deleted key: `GET deletedkeys/{name}`, its deleted-key
/// record (only the dates: keyledger needs no key material from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedKeyRecord {
    /// The vault's `recoveryId`, the URL to recover the key with.
    pub recovery_id: Option<String>,
    /// When the key was deleted (`deletedDate`).
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the vault purges it for good (`scheduledPurgeDate`): the key, and the data under
    /// it, can be recovered until then.
    pub scheduled_purge_at: Option<DateTime<Utc>>,
}

/// The key-access port. Every method talks to the vault named by the connection's key
/// identifier with the connection's credentials.
///
/// An adapter must check the identifier's host against its allow list before any network call
/// and answer `key_not_allowed` otherwise, and must map every failure to a [`crate::Reason`]
/// without putting the client secret or key material in errors or logs.
#[async_trait]
pub trait KeyAccess: Send + Sync {
    /// Reads the key (the version in the identifier, or the latest).
    async fn describe(&self, connection: &Connection) -> Result<KeyDescription, KeyAccessError>;

    /// Wraps `dek` with RSA-OAEP-256. The result names the key version that wrapped it, which is
    /// the version in the identifier or, without one, the version the vault used.
    async fn wrap(&self, connection: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError>;

    /// Unwraps `edek` with the key version in the connection's identifier (the latest version
    /// when it has none).
    async fn unwrap(&self, connection: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError>;

    /// The deleted-key record of the connection's key (by name; a deleted key keeps every
    /// version): `Ok(Some(_))` when the key is soft-deleted and recoverable, `Ok(None)` when the
    /// vault has no such record (the key was purged, or never deleted) or the adapter cannot
    /// read deleted keys. The default is the latter. A 403 is an error like any other: the
    /// caller decides what it means.
    async fn deleted_key(
        &self,
        _connection: &Connection,
    ) -> Result<Option<DeletedKeyRecord>, KeyAccessError> {
        Ok(None)
    }

    /// Drops any access token cached for `connection`, so that the next call asks the token
    /// endpoint again. A health probe calls it first: a cached token must not hide an expired
    /// or deleted secret (CONTRACT.md "On-demand probe"). Adapters that cache no token do
    /// nothing.
    fn forget_token(&self, _connection: &Connection) {}
}

#[async_trait]
impl<T: KeyAccess + ?Sized> KeyAccess for std::sync::Arc<T> {
    async fn describe(&self, connection: &Connection) -> Result<KeyDescription, KeyAccessError> {
        (**self).describe(connection).await
    }
    async fn wrap(&self, connection: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError> {
        (**self).wrap(connection, dek).await
    }
    async fn unwrap(&self, connection: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError> {
        (**self).unwrap(connection, edek).await
    }
    async fn deleted_key(&self, connection: &Connection) -> Result<Option<DeletedKeyRecord>, KeyAccessError> {
        (**self).deleted_key(connection).await
    }
    fn forget_token(&self, connection: &Connection) {
        (**self).forget_token(connection)
    }
}

#[async_trait]
impl<T: KeyAccess + ?Sized> KeyAccess for &T {
    async fn describe(&self, connection: &Connection) -> Result<KeyDescription, KeyAccessError> {
        (**self).describe(connection).await
    }
    async fn wrap(&self, connection: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError> {
        (**self).wrap(connection, dek).await
    }
    async fn unwrap(&self, connection: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError> {
        (**self).unwrap(connection, edek).await
    }
    async fn deleted_key(&self, connection: &Connection) -> Result<Option<DeletedKeyRecord>, KeyAccessError> {
        (**self).deleted_key(connection).await
    }
    fn forget_token(&self, connection: &Connection) {
        (**self).forget_token(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dek_debug_hides_bytes() {
        let d = Dek::from_bytes(Zeroizing::new(vec![0xAB; 32]));
        let s = format!("{d:?}");
        assert_eq!(s, "Dek(<32 bytes hidden>)");
        assert!(!s.to_lowercase().contains("ab, "));
    }

    #[test]
    fn generated_deks_are_32_random_bytes() {
        let a = Dek::generate();
        let b = Dek::generate();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
    }

    #[test]
    fn deks_of_different_length_are_not_equal() {
        let long = Dek::from_bytes(Zeroizing::new(vec![7u8; 32]));
        let prefix = Dek::from_bytes(Zeroizing::new(vec![7u8; 16]));
        let empty = Dek::from_bytes(Zeroizing::new(Vec::new()));
        assert_ne!(long, prefix);
        assert_ne!(prefix, long);
        assert_ne!(long, empty);
        assert_eq!(empty, empty.clone());
    }
}
