//! The vault model: keys with versions and attributes, soft delete, backup and restore, app
//! registrations with key permissions, tokens, and fault injection. No HTTP here; see
//! [`crate::http`].
//!
//! [`Vault`] and its shared state live here; each concern keeps its types and its `impl Vault`
//! block in its own module: `keys` (keys, versions, bundles), `crypto`
//! (wrap/unwrap/encrypt/decrypt), `deleted` (soft delete, recover, purge), `backup` (backup,
//! restore, state file), `apps` (app registrations, tokens, access policy), `issuer` (keyledger access tokens and
//! their JWKS) and `faults`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngCore;
use serde_json::{Value, json};

use crate::clock::Clock;

mod apps;
mod backup;
mod crypto;
mod deleted;
mod faults;
mod issuer;
mod keys;

pub use apps::{AppClaims, AppPatch, AppRegistration, Caller, DemoConnection, EntraError, KEY_PERMISSIONS};
pub use crypto::CryptoOp;
pub use faults::Faults;
pub use issuer::{KEYLEDGER_AUDIENCE, KEYLEDGER_SCOPE};
pub use keys::{DEFAULT_EC_KEY_OPS, DEFAULT_RSA_KEY_OPS, KeyPatch, NewKey};

use apps::Token;
use deleted::DeletedEntry;
use keys::KeyEntry;

/// How the simulated vault presents itself.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// The directory the vault belongs to. Tokens from other tenants are refused (401).
    pub tenant_id: String,
    /// Named in the 401 challenge (`authorization="{authority_host}/{tenant_id}"`).
    pub authority_host: String,
    /// The challenge `resource`; the token scope must be `{resource}/.default`.
    pub resource: String,
    /// Soft-delete retention (`recoverableDays`), 7 to 90 in Key Vault.
    pub retention_days: u32,
    /// Token lifetime, measured on the real monotonic clock (the SDK caches tokens by real
    /// time, so the simulated clock must not expire them).
    pub token_lifetime: Duration,
    /// How many purge or recover requests after a delete see 409 `ObjectIsBeingDeleted`, as
    /// Key Vault answers while a deletion is still in progress. 0 = deletion is immediate.
    pub deletion_settle_requests: u32,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            authority_host: "https://login.microsoftonline.com".into(),
            resource: "https://vault.azure.net".into(),
            retention_days: 90,
            token_lifetime: Duration::from_secs(3600),
            deletion_settle_requests: 0,
        }
    }
}

/// An error the vault answers with: `{"error":{"code","message","innererror"?:{"code"}}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkvError {
    pub status: u16,
    pub code: &'static str,
    pub inner: Option<&'static str>,
    pub message: String,
}

impl AkvError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            inner: None,
            message: message.into(),
        }
    }
    fn forbidden(inner: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 403,
            code: "Forbidden",
            inner: Some(inner),
            message: message.into(),
        }
    }
    pub(crate) fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(400, "BadParameter", message)
    }
    fn key_not_found(name: &str) -> Self {
        Self::new(
            404,
            "KeyNotFound",
            format!("A key with (name/id) {name} was not found in this key vault."),
        )
    }
    fn conflict(inner: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 409,
            code: "Conflict",
            inner: Some(inner),
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner {
            error["innererror"] = json!({"code": inner});
        }
        json!({ "error": error })
    }
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub(super) fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, KeyEntry>,
    deleted: BTreeMap<String, DeletedEntry>,
    apps: BTreeMap<String, AppRegistration>,
    tokens: BTreeMap<String, Token>,
    faults: Faults,
}

/// The simulated vault. Share it as `Arc<Vault>`.
pub struct Vault {
    config: VaultConfig,
    clock: Clock,
    state: Mutex<State>,
    requests: AtomicU64,
    issuer: issuer::Issuer,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("config", &self.config)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(config: VaultConfig, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            config,
            clock,
            state: Mutex::default(),
            requests: AtomicU64::new(0),
            issuer: issuer::Issuer::default(),
        })
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Data-plane and token requests seen so far (the control API is not counted).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock with the state half-changed; a poisoned
        // lock (a panic in a test thread) still holds consistent data.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.unix();
        s.deleted.retain(|_, d| d.scheduled_purge > now);
        s
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
