//! The vault model: keys with versions and attributes, soft delete, backup and restore, app
//! registrations with key permissions, tokens, and fault injection. No HTTP here; see
//! [`crate::http`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clock::Clock;

/// Every key permission of an access policy that the simulated vault checks.
pub const KEY_PERMISSIONS: &[&str] = &[
    "get",
    "list",
    "create",
    "update",
    "delete",
    "recover",
    "purge",
    "backup",
    "restore",
    "wrapKey",
    "unwrapKey",
    "encrypt",
    "decrypt",
];

/// The key_ops Key Vault gives an RSA key created without explicit ones.
pub const DEFAULT_RSA_KEY_OPS: &[&str] = &["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"];

/// The key_ops Key Vault gives an EC key created without explicit ones.
pub const DEFAULT_EC_KEY_OPS: &[&str] = &["sign", "verify"];

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

/// An Entra ID token endpoint error: `{"error","error_description","error_codes":[..],..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub description: String,
}

impl EntraError {
    pub fn body(&self) -> Value {
        json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {}", self.code, self.description),
            "error_codes": [self.code],
            "timestamp": Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": random_hex(16),
            "correlation_id": random_hex(16),
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        })
    }
}

/// An app registration: client credentials and the key permissions granted to it in the
/// vault's access policy.
#[derive(Clone, Deserialize)]
pub struct AppRegistration {
    pub tenant_id: String,
    pub client_id: String,
    client_secret: ClientSecret,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub key_permissions: BTreeSet<String>,
}

#[derive(Clone)]
struct ClientSecret(Zeroizing<String>);

impl<'de> Deserialize<'de> for ClientSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| ClientSecret(Zeroizing::new(s)))
    }
}

impl AppRegistration {
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        key_permissions: &[&str],
    ) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: ClientSecret(Zeroizing::new(client_secret.into())),
            expires_at: None,
            key_permissions: key_permissions.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    pub fn with_expiry(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }
}

impl fmt::Debug for AppRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppRegistration")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<hidden>")
            .field("expires_at", &self.expires_at)
            .field("key_permissions", &self.key_permissions)
            .finish()
    }
}

/// A change to an app registration (control API `PATCH /_emulator/apps/{client_id}`).
#[derive(Default, Deserialize)]
pub struct AppPatch {
    #[serde(default)]
    client_secret: Option<ClientSecret>,
    /// `Some(None)` clears the expiry.
    #[serde(default, with = "double_option")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default)]
    pub key_permissions: Option<BTreeSet<String>>,
}

impl AppPatch {
    /// Whether the patch would empty the client secret (the control API refuses that).
    pub fn empties_secret(&self) -> bool {
        self.client_secret.as_ref().is_some_and(|s| s.0.is_empty())
    }

    /// Sets (or with `None`, clears) the secret's expiry.
    pub fn expires(mut self, expires_at: Option<DateTime<Utc>>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(ClientSecret(Zeroizing::new(secret.into())));
        self
    }
}

impl fmt::Debug for AppPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppPatch")
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<hidden>"))
            .field("expires_at", &self.expires_at)
            .field("key_permissions", &self.key_permissions)
            .finish()
    }
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

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
    #[serde(default, with = "double_option")]
    pub exp: Option<Option<i64>>,
    #[serde(default, with = "double_option")]
    pub nbf: Option<Option<i64>>,
    pub key_ops: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// Faults applied to the data plane and the token endpoint (not to the control API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// 429, 500 or 503.
    #[serde(default)]
    pub status: Option<u16>,
    /// The share of requests that get `status`, 0..=1. Absent means every request.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Added to every request.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Requests never reach the vault: transports drop the connection.
    #[serde(default)]
    pub unreachable: bool,
    /// Only the next `count` requests get `status` (beyond CONTRACT.md: makes "fails twice,
    /// then succeeds" deterministic). Absent means no limit.
    #[serde(default)]
    pub count: Option<u32>,
    /// Every request is answered `307 Temporary Redirect` to this base URL plus the request's
    /// path and query (beyond CONTRACT.md: shows that clients do not follow a vault's or the
    /// token endpoint's redirect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_to: Option<String>,
}

/// A cryptographic operation on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoOp {
    WrapKey,
    UnwrapKey,
    Encrypt,
    Decrypt,
}

impl CryptoOp {
    pub fn name(&self) -> &'static str {
        match self {
            CryptoOp::WrapKey => "wrapKey",
            CryptoOp::UnwrapKey => "unwrapKey",
            CryptoOp::Encrypt => "encrypt",
            CryptoOp::Decrypt => "decrypt",
        }
    }
    fn seals(&self) -> bool {
        matches!(self, CryptoOp::WrapKey | CryptoOp::Encrypt)
    }
}

/// The private key of a version.
#[derive(Clone)]
enum KeyMaterial {
    Rsa(Arc<RsaPrivateKey>),
    EcP256(Arc<p256::SecretKey>),
}

impl KeyMaterial {
    fn kty(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa(_) => "RSA",
            KeyMaterial::EcP256(_) => "EC",
        }
    }

    fn pkcs8(&self) -> Option<Zeroizing<Vec<u8>>> {
        use p256::pkcs8::EncodePrivateKey as _;
        let der = match self {
            KeyMaterial::Rsa(k) => k.to_pkcs8_der().ok()?,
            KeyMaterial::EcP256(k) => k.to_pkcs8_der().ok()?,
        };
        Some(Zeroizing::new(der.as_bytes().to_vec()))
    }

    fn from_pkcs8(kty: &str, der: &[u8]) -> Option<Self> {
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
struct KeyVersion {
    version: String,
    key: KeyMaterial,
    enabled: bool,
    exp: Option<i64>,
    nbf: Option<i64>,
    key_ops: Vec<String>,
    created: i64,
    updated: i64,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Clone)]
struct KeyEntry {
    name: String,
    /// Oldest first; the last is the current version.
    versions: Vec<KeyVersion>,
}

impl KeyEntry {
    fn version(&self, version: Option<&str>) -> Option<&KeyVersion> {
        match version {
            None | Some("") => self.versions.last(),
            Some(v) => self.versions.iter().find(|k| k.version.eq_ignore_ascii_case(v)),
        }
    }
    fn version_mut(&mut self, version: Option<&str>) -> Option<&mut KeyVersion> {
        match version {
            None | Some("") => self.versions.last_mut(),
            Some(v) => self
                .versions
                .iter_mut()
                .find(|k| k.version.eq_ignore_ascii_case(v)),
        }
    }
}

#[derive(Clone)]
struct DeletedEntry {
    entry: KeyEntry,
    deleted: i64,
    scheduled_purge: i64,
    settling: u32,
}

struct Token {
    tenant_id: String,
    client_id: String,
    issued: Instant,
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
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("config", &self.config)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

/// The demo connection of [`Vault::seed_demo`]. Debug hides the secret.
#[derive(Clone)]
pub struct DemoConnection {
    pub directory_id: String,
    pub application_id: String,
    pub client_secret: Zeroizing<String>,
    /// Versionless: the connection test pins the version.
    pub key_identifier: String,
}

impl fmt::Debug for DemoConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoConnection")
            .field("directory_id", &self.directory_id)
            .field("application_id", &self.application_id)
            .field("client_secret", &"<hidden>")
            .field("key_identifier", &self.key_identifier)
            .finish()
    }
}

/// A random version-4-shaped UUID string (client ids).
fn uuid_like() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The caller a bearer token stands for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client_id: String,
}

impl Vault {
    pub fn new(config: VaultConfig, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            config,
            clock,
            state: Mutex::default(),
            requests: AtomicU64::new(0),
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

    // ---- faults ----

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// The injected failure status for this request, if the dice say so.
    pub(crate) fn roll_fault(&self) -> Option<u16> {
        let mut s = self.lock();
        let f = &mut s.faults;
        let status = f.status?;
        if f.count == Some(0) {
            return None;
        }
        let rate = f.rate.unwrap_or(1.0);
        let hit = rand::thread_rng().r#gen::<f64>() < rate;
        if hit && let Some(c) = f.count.as_mut() {
            *c -= 1;
        }
        hit.then_some(status)
    }

    // ---- apps and tokens ----

    pub fn register_app(&self, app: AppRegistration) {
        self.lock().apps.insert(app.client_id.clone(), app);
    }

    /// [`Vault::register_app`] for the control API: refuses, naming the problem, an app that
    /// could never get a token this vault accepts (another directory), or an empty client id
    /// or secret. The message never holds the secret.
    pub fn add_app(&self, app: AppRegistration) -> Result<(), String> {
        if app.client_id.trim().is_empty() {
            return Err("client_id must not be empty".into());
        }
        if app.client_secret.0.is_empty() {
            return Err("client_secret must not be empty".into());
        }
        if app.tenant_id != self.config.tenant_id {
            return Err(format!(
                "tenant_id {:?} is not this vault's directory {:?}: the vault would refuse every token of that app",
                app.tenant_id, self.config.tenant_id
            ));
        }
        self.register_app(app);
        Ok(())
    }

    /// Dev mode (DESIGN.md §8): an app registration with every key permission and a fresh
    /// random secret, and an RSA-2048 key `demo-cmk`. Returns what an administrator would type
    /// into "Test and save".
    pub fn seed_demo(&self, base: &str) -> Result<DemoConnection, AkvError> {
        let client_id = uuid_like();
        let client_secret = Zeroizing::new(format!("demo-{}", random_hex(24)));
        self.register_app(AppRegistration::new(
            &self.config.tenant_id,
            &client_id,
            client_secret.as_str(),
            KEY_PERMISSIONS,
        ));
        let bundle = self.create_key(base, NewKey::rsa("demo-cmk", 2048))?;
        let kid = bundle["key"]["kid"].as_str().unwrap_or_default();
        Ok(DemoConnection {
            directory_id: self.config.tenant_id.clone(),
            application_id: client_id,
            client_secret,
            key_identifier: kid
                .rsplit_once('/')
                .map(|(k, _)| k.to_owned())
                .unwrap_or_default(),
        })
    }

    pub fn update_app(&self, client_id: &str, patch: AppPatch) -> bool {
        let mut s = self.lock();
        let Some(app) = s.apps.get_mut(client_id) else {
            return false;
        };
        if let Some(secret) = patch.client_secret {
            app.client_secret = secret;
        }
        if let Some(exp) = patch.expires_at {
            app.expires_at = exp;
        }
        if let Some(perms) = patch.key_permissions {
            app.key_permissions = perms;
        }
        true
    }

    /// Deletes the app registration (its tokens stop working at once).
    pub fn delete_app(&self, client_id: &str) -> bool {
        let mut s = self.lock();
        s.tokens.retain(|_, t| t.client_id != client_id);
        s.apps.remove(client_id).is_some()
    }

    /// The client-credentials grant. Returns the token response body.
    pub fn issue_token(
        &self,
        tenant_id: &str,
        grant_type: Option<&str>,
        client_id: Option<&str>,
        client_secret: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Value, EntraError> {
        let err = |status, error, code, description: String| EntraError {
            status,
            error,
            code,
            description,
        };
        if grant_type != Some("client_credentials") {
            return Err(err(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.".into(),
            ));
        }
        let mut s = self.lock();
        let known_tenant =
            tenant_id == self.config.tenant_id || s.apps.values().any(|a| a.tenant_id == tenant_id);
        if !known_tenant {
            return Err(err(
                400,
                "invalid_request",
                90002,
                format!("Tenant '{tenant_id}' not found."),
            ));
        }
        let client_id = client_id.unwrap_or_default();
        let Some(app) = s.apps.get(client_id).filter(|a| a.tenant_id == tenant_id) else {
            return Err(err(
                400,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant_id}'."
                ),
            ));
        };
        let secret_ok = client_secret
            .is_some_and(|given| bool::from(given.as_bytes().ct_eq(app.client_secret.0.as_bytes())));
        if !secret_ok {
            return Err(err(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.".into(),
            ));
        }
        if app.expires_at.is_some_and(|exp| exp <= self.clock.now()) {
            return Err(err(
                401,
                "invalid_client",
                7000222,
                format!("The provided client secret keys for app '{client_id}' are expired."),
            ));
        }
        let expected_scope = format!("{}/.default", self.config.resource.trim_end_matches('/'));
        if scope.map(|s| s.trim_end_matches('/')) != Some(expected_scope.as_str()) {
            return Err(err(
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.".into(),
            ));
        }
        let token = format!("sim.{}", random_hex(32));
        let lifetime = self.config.token_lifetime.as_secs();
        s.tokens.insert(
            token.clone(),
            Token {
                tenant_id: tenant_id.to_owned(),
                client_id: client_id.to_owned(),
                issued: Instant::now(),
            },
        );
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }))
    }

    /// Resolves a bearer token. `None` means 401 with a challenge.
    pub fn authenticate(&self, bearer: &str) -> Option<Caller> {
        let s = self.lock();
        let t = s.tokens.get(bearer)?;
        if t.issued.elapsed() >= self.config.token_lifetime || t.tenant_id != self.config.tenant_id {
            return None;
        }
        Some(Caller {
            client_id: t.client_id.clone(),
        })
    }

    /// The access-policy check: 403 ForbiddenByPolicy without `permission`.
    pub fn authorize(&self, caller: &Caller, permission: &str) -> Result<(), AkvError> {
        let s = self.lock();
        let granted = s
            .apps
            .get(&caller.client_id)
            .is_some_and(|a| a.key_permissions.contains(permission));
        if granted {
            Ok(())
        } else {
            Err(AkvError::forbidden(
                "ForbiddenByPolicy",
                format!(
                    "The user, group or application 'appid={}' does not have keys {permission} permission on this key vault.",
                    caller.client_id
                ),
            ))
        }
    }

    // ---- keys ----

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
        let entry = s
            .keys
            .get(&name_id(name))
            .ok_or_else(|| AkvError::key_not_found(name))?;
        let kv = entry
            .version(version)
            .ok_or_else(|| AkvError::key_not_found(name))?;
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

    /// wrapkey / unwrapkey / encrypt / decrypt with RSA-OAEP-256. Returns `{kid, value}`.
    pub fn crypto(
        &self,
        base: &str,
        name: &str,
        version: Option<&str>,
        op: CryptoOp,
        alg: &str,
        input: &[u8],
    ) -> Result<Value, AkvError> {
        let (display_name, kv) = {
            let s = self.lock();
            let entry = s
                .keys
                .get(&name_id(name))
                .ok_or_else(|| AkvError::key_not_found(name))?;
            let kv = entry
                .version(version)
                .ok_or_else(|| AkvError::key_not_found(name))?;
            (entry.name.clone(), kv.clone())
        };
        let now = self.clock.unix();
        let op_name = op.name();
        if !kv.enabled {
            return Err(AkvError::forbidden(
                "KeyDisabled",
                format!("Operation {op_name} is not allowed on a disabled key."),
            ));
        }
        if kv.nbf.is_some_and(|nbf| nbf > now) {
            return Err(AkvError::forbidden(
                "KeyNotYetValid",
                format!("Operation {op_name} is not allowed on a key that is not yet valid."),
            ));
        }
        // An expired key still decrypts and unwraps what it protected; it no longer seals.
        if op.seals() && kv.exp.is_some_and(|exp| exp <= now) {
            return Err(AkvError::forbidden(
                "KeyExpired",
                format!("Operation {op_name} is not allowed on an expired key."),
            ));
        }
        if !kv.key_ops.iter().any(|o| o == op_name) {
            return Err(AkvError::bad_parameter(format!(
                "Operation {op_name} is not permitted on this key."
            )));
        }
        let KeyMaterial::Rsa(rsa_key) = &kv.key else {
            return Err(AkvError::bad_parameter(format!(
                "Operation {op_name} is not supported for EC keys."
            )));
        };
        if alg != "RSA-OAEP-256" {
            return Err(AkvError::bad_parameter(format!(
                "Algorithm {alg} is not supported by the simulated vault; use RSA-OAEP-256."
            )));
        }
        let output = if op.seals() {
            rsa_key
                .to_public_key()
                .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), input)
                .map_err(|_| AkvError::bad_parameter("The value is too long for this key."))?
        } else {
            rsa_key
                .decrypt(Oaep::new::<Sha256>(), input)
                .map_err(|_| AkvError::bad_parameter("The parameter value is not valid for this key."))?
        };
        let value = B64.encode(&output);
        drop(Zeroizing::new(output));
        Ok(json!({"kid": kid(base, &display_name, &kv.version), "value": value}))
    }

    /// Soft delete: the key moves to deleted keys for the retention period.
    pub fn delete_key(&self, base: &str, name: &str) -> Result<Value, AkvError> {
        let now = self.clock.unix();
        let mut s = self.lock();
        let id = name_id(name);
        let entry = s.keys.remove(&id).ok_or_else(|| AkvError::key_not_found(name))?;
        let deleted = DeletedEntry {
            entry,
            deleted: now,
            scheduled_purge: now + i64::from(self.config.retention_days) * 86_400,
            settling: self.config.deletion_settle_requests,
        };
        let body = self.deleted_bundle(base, &deleted);
        s.deleted.insert(id, deleted);
        Ok(body)
    }

    /// `GET deletedkeys/{name}`.
    pub fn deleted_key(&self, base: &str, name: &str) -> Result<Value, AkvError> {
        let s = self.lock();
        let d = s
            .deleted
            .get(&name_id(name))
            .ok_or_else(|| deleted_not_found(name))?;
        Ok(self.deleted_bundle(base, d))
    }

    /// `POST deletedkeys/{name}/recover`: the key is back with every version.
    pub fn recover_key(&self, base: &str, name: &str) -> Result<Value, AkvError> {
        let mut s = self.lock();
        let id = name_id(name);
        let d = s.deleted.get_mut(&id).ok_or_else(|| deleted_not_found(name))?;
        if d.settling > 0 {
            d.settling -= 1;
            return Err(being_deleted());
        }
        let Some(d) = s.deleted.remove(&id) else {
            unreachable!("checked above under the same lock");
        };
        let body = self.current_bundle(base, &d.entry);
        s.keys.insert(id, d.entry);
        Ok(body)
    }

    /// `DELETE deletedkeys/{name}`: gone for good.
    pub fn purge_key(&self, name: &str) -> Result<(), AkvError> {
        let mut s = self.lock();
        let id = name_id(name);
        let d = s.deleted.get_mut(&id).ok_or_else(|| deleted_not_found(name))?;
        if d.settling > 0 {
            d.settling -= 1;
            return Err(being_deleted());
        }
        s.deleted.remove(&id);
        Ok(())
    }

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

    fn bundle(&self, base: &str, name: &str, kv: &KeyVersion) -> Value {
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

    fn current_bundle(&self, base: &str, entry: &KeyEntry) -> Value {
        match entry.versions.last() {
            Some(kv) => self.bundle(base, &entry.name, kv),
            None => json!({}),
        }
    }

    fn deleted_bundle(&self, base: &str, d: &DeletedEntry) -> Value {
        let mut body = self.current_bundle(base, &d.entry);
        body["recoveryId"] = json!(format!("{base}/deletedkeys/{}", d.entry.name));
        body["deletedDate"] = json!(d.deleted);
        body["scheduledPurgeDate"] = json!(d.scheduled_purge);
        body
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

fn kid(base: &str, name: &str, version: &str) -> String {
    format!("{base}/keys/{name}/{version}")
}

fn name_id(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn validate_name(name: &str) -> Result<(), AkvError> {
    if name.is_empty() || name.len() > 127 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(AkvError::bad_parameter(
            "Key name must be 1 to 127 letters, digits or hyphens.",
        ));
    }
    Ok(())
}

fn validate_ops(ops: Vec<String>) -> Result<Vec<String>, AkvError> {
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

fn deleted_conflict(name: &str) -> AkvError {
    AkvError::conflict(
        "ObjectIsDeletedButRecoverable",
        format!(
            "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
        ),
    )
}

fn deleted_not_found(name: &str) -> AkvError {
    AkvError::new(404, "KeyNotFound", format!("Deleted Key not found: {name}"))
}

fn being_deleted() -> AkvError {
    AkvError::conflict("ObjectIsBeingDeleted", "Key is currently being deleted.")
}

fn generate_rsa(bits: u32) -> Result<RsaPrivateKey, AkvError> {
    let bits = usize::try_from(bits).map_err(|_| AkvError::bad_parameter("bad key size"))?;
    RsaPrivateKey::new(&mut rand::thread_rng(), bits)
        .map_err(|_| AkvError::new(500, "InternalError", "key generation failed"))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
