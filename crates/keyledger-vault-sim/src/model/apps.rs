//! App registrations, the client-credentials token endpoint, and the access-policy check.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::issuer::KEYLEDGER_SCOPE;
use super::{AkvError, Vault, random_hex};
use crate::model::keys::NewKey;

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
    pub(super) client_secret: ClientSecret,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub key_permissions: BTreeSet<String>,
    /// What the app's keyledger access tokens carry (`scope=api://keyledger/.default`).
    #[serde(flatten)]
    pub claims: AppClaims,
}

/// The claims of an app's keyledger access tokens: its app roles and its reach. `None` leaves
/// the claim out of the token (keyledger then grants no reach).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppClaims {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizations: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
}

#[derive(Clone)]
pub(super) struct ClientSecret(pub(super) Zeroizing<String>);

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
            claims: AppClaims::default(),
        }
    }

    /// The roles and reach its keyledger access tokens carry.
    pub fn with_claims(mut self, claims: AppClaims) -> Self {
        self.claims = claims;
        self
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
            .field("claims", &self.claims)
            .finish()
    }
}

/// A change to an app registration (control API `PATCH /_emulator/apps/{client_id}`).
#[derive(Default, Deserialize)]
pub struct AppPatch {
    #[serde(default)]
    client_secret: Option<ClientSecret>,
    /// `Some(None)` clears the expiry.
    #[serde(default, with = "super::double_option")]
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

pub(super) struct Token {
    tenant_id: String,
    client_id: String,
    issued: Instant,
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
        if scope == Some(KEYLEDGER_SCOPE) {
            let claims = app.claims.clone();
            let client_id = client_id.to_owned();
            // Signing (and making the first signing key) happens outside the vault's lock.
            drop(s);
            return Ok(self.keyledger_token(tenant_id, &client_id, &claims));
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
}
