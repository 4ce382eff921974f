//! A small in-memory vault for the application tests.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use keyledger_domain::*;
use keyledger_keys::{Dek, KeyAccess, KeyAccessError, KeyDescription, Reason};
use zeroize::Zeroizing;

/// A vault of named keys with versions. Wrapping XORs with a byte derived from the version:
/// enough to show which version wrapped a DEK, not cryptography.
#[derive(Default)]
pub(crate) struct FakeVault {
    keys: Mutex<HashMap<String, FakeKey>>,
    calls: Mutex<u32>,
    pub down: Mutex<bool>,
    pub secret_expired: Mutex<bool>,
}

#[derive(Clone)]
struct FakeKey {
    versions: Vec<String>,
    disabled: Vec<String>,
    deleted: bool,
}

impl FakeVault {
    pub(crate) fn add(&self, name: &str, version: &str) {
        let mut keys = self.keys.lock().unwrap();
        let k = keys.entry(name.into()).or_insert(FakeKey {
            versions: vec![],
            disabled: vec![],
            deleted: false,
        });
        k.versions.push(version.into());
    }
    pub(crate) fn disable(&self, name: &str, version: &str) {
        self.keys
            .lock()
            .unwrap()
            .get_mut(name)
            .unwrap()
            .disabled
            .push(version.into());
    }
    pub(crate) fn enable(&self, name: &str, version: &str) {
        self.keys
            .lock()
            .unwrap()
            .get_mut(name)
            .unwrap()
            .disabled
            .retain(|v| v != version);
    }
    pub(crate) fn delete(&self, name: &str) {
        self.keys.lock().unwrap().get_mut(name).unwrap().deleted = true;
    }
    pub(crate) fn calls(&self) -> u32 {
        *self.calls.lock().unwrap()
    }
    fn resolve(&self, c: &Connection) -> Result<(KeyIdentifier, u8), KeyAccessError> {
        *self.calls.lock().unwrap() += 1;
        if *self.down.lock().unwrap() {
            return Err(KeyAccessError::new(Reason::VaultError));
        }
        use secrecy::ExposeSecret;
        if *self.secret_expired.lock().unwrap() {
            return Err(KeyAccessError::new(Reason::CredentialsExpired));
        }
        if c.client_secret.expose_secret() == "wrong" {
            return Err(KeyAccessError::new(Reason::CredentialsInvalid));
        }
        let keys = self.keys.lock().unwrap();
        let k = keys
            .get(c.key_identifier.name())
            .filter(|k| !k.deleted)
            .ok_or(KeyAccessError::new(Reason::KeyNotFound))?;
        let version = match c.key_identifier.version() {
            Some(v) if k.versions.iter().any(|x| x == v) => v.to_owned(),
            Some(_) => return Err(KeyAccessError::new(Reason::KeyNotFound)),
            None => k
                .versions
                .last()
                .cloned()
                .ok_or(KeyAccessError::new(Reason::KeyNotFound))?,
        };
        if k.disabled.contains(&version) {
            return Err(KeyAccessError::new(Reason::KeyDisabled));
        }
        let tag = version
            .bytes()
            .fold(0x5Au8, |a, b| a.wrapping_mul(31).wrapping_add(b));
        Ok((c.key_identifier.with_version(&version).unwrap(), tag))
    }
}

#[async_trait]
impl KeyAccess for FakeVault {
    async fn describe(&self, c: &Connection) -> Result<KeyDescription, KeyAccessError> {
        let (kid, _) = self.resolve(c)?;
        Ok(KeyDescription {
            key_identifier: kid,
            kty: "RSA".into(),
            key_size: Some(2048),
            key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
            enabled: true,
            expires_at: None,
            not_before: None,
        })
    }
    async fn wrap(&self, c: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError> {
        let (kid, tag) = self.resolve(c)?;
        let edek = dek.expose().iter().map(|b| b ^ tag).collect();
        Ok(testing_wrapped(kid, edek))
    }
    async fn unwrap(&self, c: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError> {
        let (_, tag) = self.resolve(c)?;
        Ok(Dek::from_bytes(Zeroizing::new(
            edek.0.iter().map(|b| b ^ tag).collect(),
        )))
    }
}

fn testing_wrapped(kid: KeyIdentifier, edek: Vec<u8>) -> WrappedDek {
    WrappedDek::attest(WrappedBy::Customer { key_identifier: kid }, Edek(edek))
}
