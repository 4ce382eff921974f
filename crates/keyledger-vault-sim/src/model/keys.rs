//! Keys and their versions: create, get, update, and the key bundle Key Vault answers with.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::RsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::deleted::deleted_conflict;
use super::{AkvError, Vault, random_hex};

/// The key_ops Key Vault gives an RSA key created without explicit ones.
pub const DEFAULT_RSA_KEY_OPS: &[&str] = &["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"];

/// The key_ops Key Vault gives an EC key created without explicit ones.
pub const DEFAULT_EC_KEY_OPS: &[&str] = &["sign", "verify"];
/// A new key or key version (control API `POST /_emulator/keys`, REST `create`).
#[derive(Debug, Clone, Deserialize)]
pub struct NewKey {
    /// Taken from the path in the REST API.
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_kty")]
    pub kty: String,
    /// For EC keys: only `P-256` is modelled.
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default = "default_size", alias = "key_size")]
    pub size: u32,
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Unix seconds.
    #[serde(default)]
    pub exp: Option<i64>,
    /// Unix seconds.
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

fn default_kty() -> String {
    "RSA".into()
}
fn default_size() -> u32 {
    2048
}

impl NewKey {
    pub fn rsa(name: impl Into<String>, size: u32) -> Self {
        Self {
            name: name.into(),
            kty: "RSA".into(),
            crv: None,
            size,
            key_ops: None,
            enabled: None,
            exp: None,
            nbf: None,
            tags: None,
        }
    }

    /// An EC P-256 key (keyledger refuses it as `unsupported_key`; modelled for fidelity).
    pub fn ec_p256(name: impl Into<String>) -> Self {
        Self {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            ..Self::rsa(name, 0)
        }
    }
}

/// A change to a key version's attributes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyPatch {
    pub enabled: Option<bool>,
    #[serde(default, with = "super::double_option")]
    pub exp: Option<Option<i64>>,
    #[serde(default, with = "super::double_option")]
    pub nbf: Option<Option<i64>>,
    pub key_ops: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// The private key of a version.
#[derive(Clone)]
pub(super) enum KeyMaterial {
    Rsa(Arc<RsaPrivateKey>),
    EcP256(Arc<p256::SecretKey>),
}

impl KeyMaterial {
    pub(super) fn kty(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa(_) => "RSA",
            KeyMaterial::EcP256(_) => "EC",
        }
    }

    pub(super) fn pkcs8(&self) -> Option<Zeroizing<Vec<u8>>> {
        use p256::pkcs8::EncodePrivateKey as _;
        let der = match self {
            KeyMaterial::Rsa(k) => k.to_pkcs8_der().ok()?,
            KeyMaterial::EcP256(k) => k.to_pkcs8_der().ok()?,
        };
        Some(Zeroizing::new(der.as_bytes().to_vec()))
    }

    pub(super) fn from_pkcs8(kty: &str, der: &[u8]) -> Option<Self> {
        use p256::pkcs8::DecodePrivateKey as _;
        match kty {
            "RSA" => RsaPrivateKey::from_pkcs8_der(der)
                .ok()
                .map(|k| KeyMaterial::Rsa(Arc::new(k))),
            "EC" => p256::SecretKey::from_pkcs8_der(der)
                .ok()
                .map(|k| KeyMaterial::EcP256(Arc::new(k))),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub(super) struct KeyVersion {
    pub(super) version: String,
    pub(super) key: KeyMaterial,
    pub(super) enabled: bool,
    pub(super) exp: Option<i64>,
    pub(super) nbf: Option<i64>,
    pub(super) key_ops: Vec<String>,
    pub(super) created: i64,
    pub(super) updated: i64,
    pub(super) tags: Option<BTreeMap<String, String>>,
}

#[derive(Clone)]
pub(super) struct KeyEntry {
    pub(super) name: String,
    /// Oldest first; the last is the current version.
    pub(super) versions: Vec<KeyVersion>,
}

impl super::State {
    /// The key `name` at `version` (the current one when empty), or AKV's `KeyNotFound`.
    pub(super) fn key_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(&KeyEntry, &KeyVersion), AkvError> {
        let entry = self
            .keys
            .get(&name_id(name))
            .ok_or_else(|| AkvError::key_not_found(name))?;
        let kv = entry
            .version(version)
            .ok_or_else(|| AkvError::key_not_found(name))?;
        Ok((entry, kv))
    }
}

impl KeyEntry {
    pub(super) fn version(&self, version: Option<&str>) -> Option<&KeyVersion> {
        match version {
            None | Some("") => self.versions.last(),
            Some(v) => self.versions.iter().find(|k| k.version.eq_ignore_ascii_case(v)),
        }
    }
    pub(super) fn version_mut(&mut self, version: Option<&str>) -> Option<&mut KeyVersion> {
        match version {
            None | Some("") => self.versions.last_mut(),
            Some(v) => self
                .versions
                .iter_mut()
                .find(|k| k.version.eq_ignore_ascii_case(v)),
        }
    }
}

impl Vault {
    /// Creates a key, or a new version of an existing one. RSA key generation is slow, so it
    /// runs before the state is locked.
    pub fn create_key(&self, base: &str, new: NewKey) -> Result<Value, AkvError> {
        validate_name(&new.name)?;
        let rsa = match new.kty.as_str() {
            "RSA" | "RSA-HSM" => true,
            "EC" | "EC-HSM" => false,
            other => {
                return Err(AkvError::bad_parameter(format!(
                    "The simulated vault supports RSA and EC P-256 keys, not {other}."
                )));
            }
        };
        if rsa && ![2048, 3072, 4096].contains(&new.size) {
            return Err(AkvError::bad_parameter(
                "RSA key size must be 2048, 3072 or 4096.",
            ));
        }
        if !rsa && new.crv.as_deref().is_some_and(|c| c != "P-256") {
            return Err(AkvError::bad_parameter(
                "The simulated vault supports the EC curve P-256 only.",
            ));
        }
        let default_ops = if rsa {
            DEFAULT_RSA_KEY_OPS
        } else {
            DEFAULT_EC_KEY_OPS
        };
        let key_ops = match new.key_ops {
            Some(ops) => validate_ops(ops)?,
            None => default_ops.iter().map(|s| (*s).to_owned()).collect(),
        };
        let id = name_id(&new.name);
        if self.lock().deleted.contains_key(&id) {
            return Err(deleted_conflict(&new.name));
        }
        let key = if rsa {
            KeyMaterial::Rsa(Arc::new(generate_rsa(new.size)?))
        } else {
            KeyMaterial::EcP256(Arc::new(p256::SecretKey::random(&mut rand::thread_rng())))
        };
        let now = self.clock.unix();
        let kv = KeyVersion {
            version: random_hex(16),
            key,
            tags: new.tags,
            enabled: new.enabled.unwrap_or(true),
            exp: new.exp,
            nbf: new.nbf,
            key_ops,
            created: now,
            updated: now,
        };
        let mut s = self.lock();
        if s.deleted.contains_key(&id) {
            return Err(deleted_conflict(&new.name));
        }
        let entry = s.keys.entry(id).or_insert_with(|| KeyEntry {
            name: new.name.clone(),
            versions: Vec::new(),
        });
        entry.versions.push(kv);
        let name = entry.name.clone();
        let Some(kv) = entry.versions.last() else {
            unreachable!("a version was just pushed");
        };
        Ok(self.bundle(base, &name, kv))
    }

    /// `GET keys/{name}[/{version}]`. An empty version means the current one.
    pub fn key(&self, base: &str, name: &str, version: Option<&str>) -> Result<Value, AkvError> {
        let s = self.lock();
        let (entry, kv) = s.key_version(name, version)?;
        Ok(self.bundle(base, &entry.name, kv))
    }

    /// `PATCH keys/{name}[/{version}]`: attributes and key_ops.
    pub fn update_key(
        &self,
        base: &str,
        name: &str,
        version: Option<&str>,
        patch: KeyPatch,
    ) -> Result<Value, AkvError> {
        let key_ops = patch.key_ops.map(validate_ops).transpose()?;
        let now = self.clock.unix();
        let mut s = self.lock();
        let entry = s
            .keys
            .get_mut(&name_id(name))
            .ok_or_else(|| AkvError::key_not_found(name))?;
        let kv = entry
            .version_mut(version)
            .ok_or_else(|| AkvError::key_not_found(name))?;
        if let Some(e) = patch.enabled {
            kv.enabled = e;
        }
        if let Some(exp) = patch.exp {
            kv.exp = exp;
        }
        if let Some(nbf) = patch.nbf {
            kv.nbf = nbf;
        }
        if let Some(ops) = key_ops {
            kv.key_ops = ops;
        }
        if let Some(tags) = patch.tags {
            kv.tags = Some(tags);
        }
        kv.updated = now;
        let kv = kv.clone();
        let name = entry.name.clone();
        Ok(self.bundle(base, &name, &kv))
    }

    pub(super) fn bundle(&self, base: &str, name: &str, kv: &KeyVersion) -> Value {
        let mut attributes = json!({
            "enabled": kv.enabled,
            "created": kv.created,
            "updated": kv.updated,
            "recoveryLevel": if self.config.retention_days < 90 {
                "CustomizedRecoverable+Purgeable"
            } else {
                "Recoverable+Purgeable"
            },
            "recoverableDays": self.config.retention_days,
            "exportable": false,
            "hsmPlatform": "0",
        });
        if let Some(exp) = kv.exp {
            attributes["exp"] = json!(exp);
        }
        if let Some(nbf) = kv.nbf {
            attributes["nbf"] = json!(nbf);
        }
        let kid = kid(base, name, &kv.version);
        let key = match &kv.key {
            KeyMaterial::Rsa(k) => {
                attributes["key_size"] = json!(k.size() * 8);
                let public = k.to_public_key();
                json!({
                    "kid": kid,
                    "kty": "RSA",
                    "key_ops": kv.key_ops,
                    "n": B64.encode(public.n().to_bytes_be()),
                    "e": B64.encode(public.e().to_bytes_be()),
                })
            }
            KeyMaterial::EcP256(k) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                let point = k.public_key().to_encoded_point(false);
                json!({
                    "kid": kid,
                    "kty": "EC",
                    "key_ops": kv.key_ops,
                    "crv": "P-256",
                    "x": point.x().map(|x| B64.encode(x)).unwrap_or_default(),
                    "y": point.y().map(|y| B64.encode(y)).unwrap_or_default(),
                })
            }
        };
        let mut bundle = json!({ "key": key, "attributes": attributes });
        if let Some(tags) = &kv.tags {
            bundle["tags"] = json!(tags);
        }
        bundle
    }

    pub(super) fn current_bundle(&self, base: &str, entry: &KeyEntry) -> Value {
        match entry.versions.last() {
            Some(kv) => self.bundle(base, &entry.name, kv),
            None => json!({}),
        }
    }

    /// Every version id of a key, oldest first (tests and the control API).
    pub fn versions(&self, name: &str) -> Vec<String> {
        let s = self.lock();
        s.keys
            .get(&name_id(name))
            .map(|e| e.versions.iter().map(|v| v.version.clone()).collect())
            .unwrap_or_default()
    }
}

pub(super) fn kid(base: &str, name: &str, version: &str) -> String {
    format!("{base}/keys/{name}/{version}")
}

pub(super) fn name_id(name: &str) -> String {
    name.to_ascii_lowercase()
}

pub(super) fn validate_name(name: &str) -> Result<(), AkvError> {
    if name.is_empty() || name.len() > 127 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(AkvError::bad_parameter(
            "Key name must be 1 to 127 letters, digits or hyphens.",
        ));
    }
    Ok(())
}

pub(super) fn validate_ops(ops: Vec<String>) -> Result<Vec<String>, AkvError> {
    const OPS: &[&str] = &[
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "wrapKey",
        "unwrapKey",
        "import",
        "export",
    ];
    match ops.iter().find(|o| !OPS.contains(&o.as_str())) {
        Some(bad) => Err(AkvError::bad_parameter(format!("Unknown key operation {bad}."))),
        None => Ok(ops),
    }
}

pub(super) fn generate_rsa(bits: u32) -> Result<RsaPrivateKey, AkvError> {
    let bits = usize::try_from(bits).map_err(|_| AkvError::bad_parameter("bad key size"))?;
    RsaPrivateKey::new(&mut rand::thread_rng(), bits)
        .map_err(|_| AkvError::new(500, "InternalError", "key generation failed"))
}
