//! Backup and restore of one key, and the emulator's state file (every key, deleted key and
//! app).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::apps::{AppClaims, AppRegistration, ClientSecret};
use super::deleted::{DeletedEntry, deleted_conflict};
use super::keys::{KeyEntry, KeyMaterial, KeyVersion, name_id, validate_name};
use super::{AkvError, Vault};

impl Vault {
    /// `POST keys/{name}/backup`: an opaque blob holding the name and every version.
    ///
    /// The blob is base64url JSON with the private keys in PKCS#8, NOT encrypted: Key Vault
    /// protects its backups with an HSM key that a simulator does not have. Test data only.
    pub fn backup_key(&self, name: &str) -> Result<Value, AkvError> {
        let s = self.lock();
        let entry = s
            .keys
            .get(&name_id(name))
            .ok_or_else(|| AkvError::key_not_found(name))?;
        let blob = to_backup(entry)?;
        let json = Zeroizing::new(
            serde_json::to_vec(&blob).map_err(|_| AkvError::new(500, "InternalError", "could not encode"))?,
        );
        Ok(json!({ "value": B64.encode(&*json) }))
    }

    /// `POST keys/restore`: the key comes back with its name and every version. Refused while
    /// a key of that name exists, deleted or not.
    pub fn restore_key(&self, base: &str, value: &str) -> Result<Value, AkvError> {
        let bad = || AkvError::bad_parameter("Backup blob is corrupt or not from this vault.");
        let json = Zeroizing::new(B64.decode(value.trim_end_matches('=')).map_err(|_| bad())?);
        let blob: Backup = serde_json::from_slice(&json).map_err(|_| bad())?;
        if blob.format != BACKUP_FORMAT || blob.versions.is_empty() {
            return Err(bad());
        }
        let entry = from_backup(blob).ok_or_else(bad)?;
        let id = name_id(&entry.name);
        let mut s = self.lock();
        if s.deleted.contains_key(&id) {
            return Err(deleted_conflict(&entry.name));
        }
        if s.keys.contains_key(&id) {
            return Err(AkvError::conflict(
                "KeyAlreadyExists",
                format!("Key {} already exists.", entry.name),
            ));
        }
        let body = self.current_bundle(base, &entry);
        s.keys.insert(id, entry);
        Ok(body)
    }

    /// The vault's keys, deleted keys and apps as JSON (private keys and client secrets in
    /// clear: the emulator's state file, test data only). Tokens and faults are not kept.
    pub fn save_state(&self) -> Result<Zeroizing<Vec<u8>>, AkvError> {
        let s = self.lock();
        let state = StateFile {
            format: STATE_FORMAT.into(),
            keys: s.keys.values().map(to_backup).collect::<Result<_, _>>()?,
            deleted: s
                .deleted
                .values()
                .map(|d| {
                    Ok(DeletedState {
                        key: to_backup(&d.entry)?,
                        deleted: d.deleted,
                        scheduled_purge: d.scheduled_purge,
                    })
                })
                .collect::<Result<_, AkvError>>()?,
            apps: s
                .apps
                .values()
                .map(|a| AppState {
                    tenant_id: a.tenant_id.clone(),
                    client_id: a.client_id.clone(),
                    client_secret: a.client_secret.0.to_string(),
                    expires_at: a.expires_at,
                    key_permissions: a.key_permissions.clone(),
                    claims: a.claims.clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&state)
            .map_err(|_| AkvError::new(500, "InternalError", "could not encode"))?;
        let mut state = state;
        for app in &mut state.apps {
            zeroize::Zeroize::zeroize(&mut app.client_secret);
        }
        Ok(Zeroizing::new(json))
    }

    /// Replaces keys, deleted keys and apps with a `save_state` snapshot.
    pub fn load_state(&self, bytes: &[u8]) -> Result<(), AkvError> {
        let bad = || AkvError::bad_parameter("state file is corrupt or of another format");
        let state: StateFile = serde_json::from_slice(bytes).map_err(|_| bad())?;
        if state.format != STATE_FORMAT {
            return Err(bad());
        }
        let keys = state
            .keys
            .into_iter()
            .map(|b| from_backup(b).map(|e| (name_id(&e.name), e)))
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(bad)?;
        let deleted = state
            .deleted
            .into_iter()
            .map(|d| {
                from_backup(d.key).map(|entry| {
                    (
                        name_id(&entry.name),
                        DeletedEntry {
                            entry,
                            deleted: d.deleted,
                            scheduled_purge: d.scheduled_purge,
                            settling: 0,
                        },
                    )
                })
            })
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(bad)?;
        let apps = state
            .apps
            .into_iter()
            .map(|a| {
                (
                    a.client_id.clone(),
                    AppRegistration {
                        tenant_id: a.tenant_id,
                        client_id: a.client_id,
                        client_secret: ClientSecret(Zeroizing::new(a.client_secret)),
                        expires_at: a.expires_at,
                        key_permissions: a.key_permissions,
                        claims: a.claims,
                    },
                )
            })
            .collect();
        let mut s = self.lock();
        s.keys = keys;
        s.deleted = deleted;
        s.apps = apps;
        s.tokens.clear();
        Ok(())
    }
}

const BACKUP_FORMAT: &str = "keyledger-vault-sim/backup/v1";
const STATE_FORMAT: &str = "keyledger-vault-sim/state/v1";

fn to_backup(entry: &KeyEntry) -> Result<Backup, AkvError> {
    let versions = entry
        .versions
        .iter()
        .map(|kv| {
            let der = kv
                .key
                .pkcs8()
                .ok_or_else(|| AkvError::new(500, "InternalError", "could not encode the key"))?;
            Ok(BackupVersion {
                version: kv.version.clone(),
                kty: kv.key.kty().to_owned(),
                pkcs8: B64.encode(&*der),
                tags: kv.tags.clone(),
                enabled: kv.enabled,
                exp: kv.exp,
                nbf: kv.nbf,
                key_ops: kv.key_ops.clone(),
                created: kv.created,
                updated: kv.updated,
            })
        })
        .collect::<Result<Vec<_>, AkvError>>()?;
    Ok(Backup {
        format: BACKUP_FORMAT.into(),
        name: entry.name.clone(),
        versions,
    })
}

fn from_backup(blob: Backup) -> Option<KeyEntry> {
    if blob.format != BACKUP_FORMAT || blob.versions.is_empty() || validate_name(&blob.name).is_err() {
        return None;
    }
    let versions = blob
        .versions
        .into_iter()
        .map(|v| {
            let der = Zeroizing::new(B64.decode(&v.pkcs8).ok()?);
            Some(KeyVersion {
                key: KeyMaterial::from_pkcs8(&v.kty, &der)?,
                version: v.version,
                tags: v.tags,
                enabled: v.enabled,
                exp: v.exp,
                nbf: v.nbf,
                key_ops: v.key_ops,
                created: v.created,
                updated: v.updated,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(KeyEntry {
        name: blob.name,
        versions,
    })
}

/// Everything but tokens and faults, for `save_state` / `load_state`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    keys: Vec<Backup>,
    deleted: Vec<DeletedState>,
    apps: Vec<AppState>,
}

#[derive(Serialize, Deserialize)]
struct DeletedState {
    key: Backup,
    deleted: i64,
    scheduled_purge: i64,
}

#[derive(Serialize, Deserialize)]
struct AppState {
    tenant_id: String,
    client_id: String,
    client_secret: String,
    expires_at: Option<DateTime<Utc>>,
    key_permissions: BTreeSet<String>,
    /// Absent in state files written before the emulator issued keyledger tokens.
    #[serde(default)]
    claims: AppClaims,
}

#[derive(Serialize, Deserialize)]
struct Backup {
    format: String,
    name: String,
    versions: Vec<BackupVersion>,
}

#[derive(Serialize, Deserialize)]
struct BackupVersion {
    version: String,
    kty: String,
    pkcs8: String,
    tags: Option<BTreeMap<String, String>>,
    enabled: bool,
    exp: Option<i64>,
    nbf: Option<i64>,
    key_ops: Vec<String>,
    created: i64,
    updated: i64,
}
