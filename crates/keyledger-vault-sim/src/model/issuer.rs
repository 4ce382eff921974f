//! The simulated Entra ID as an issuer of keyledger access tokens: RS256 JWTs for
//! `scope=api://keyledger/.default`, signed with an RSA-2048 key whose public half the JWKS
//! (`GET /{tenant}/discovery/v2.0/keys`) serves.
//!
//! The signing key is made at the first token or JWKS request (key generation is slow, and most
//! vaults never issue one), and is not saved with the vault's state: a restarted emulator signs
//! with a new key, as after a roll. [`Vault::roll_signing_key`] makes a new current key and keeps
//! the one before it in the JWKS (Entra ID also publishes a key before and after it signs with
//! it), so tokens issued before a roll stay valid; a second roll drops the oldest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::Sha256;

use super::apps::AppClaims;
use super::{Vault, random_hex};

/// The application id URI of keyledger's API: the tokens' `aud`.
pub const KEYLEDGER_AUDIENCE: &str = "api://keyledger";
/// The client-credentials scope that gets a keyledger token instead of a vault token.
pub const KEYLEDGER_SCOPE: &str = "api://keyledger/.default";

struct Key {
    kid: String,
    private: RsaPrivateKey,
}

impl Key {
    fn generate() -> Self {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            // Only fails for sizes the rsa crate refuses; 2048 is its default size.
            .expect("an RSA-2048 key can be generated");
        Self {
            kid: random_hex(16),
            private,
        }
    }

    fn jwk(&self) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": B64.encode(public.n().to_bytes_be()),
            "e": B64.encode(public.e().to_bytes_be()),
        })
    }
}

#[derive(Default)]
struct Keys {
    current: Option<Key>,
    previous: Option<Key>,
}

impl Keys {
    fn current(&mut self) -> &Key {
        self.current.get_or_insert_with(Key::generate)
    }
}

/// The issuer's signing keys and how often its JWKS was read.
#[derive(Default)]
pub(super) struct Issuer {
    keys: Mutex<Keys>,
    jwks_requests: AtomicU64,
}

impl Issuer {
    fn lock(&self) -> MutexGuard<'_, Keys> {
        // Nothing panics half-way through a change of the keys.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Vault {
    /// The `iss` of the tokens of `tenant`: `{authority_host}/{tenant}/v2.0`.
    pub fn issuer_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/v2.0",
            self.config.authority_host.trim_end_matches('/')
        )
    }

    /// Where the JWKS of `tenant` is served: `{authority_host}/{tenant}/discovery/v2.0/keys`.
    pub fn jwks_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/discovery/v2.0/keys",
            self.config.authority_host.trim_end_matches('/')
        )
    }

    /// The JWKS: the current signing key, and the previous one after a roll. Counts the read.
    pub fn jwks(&self) -> Value {
        self.issuer.jwks_requests.fetch_add(1, Ordering::SeqCst);
        let mut keys = self.issuer.lock();
        let mut list = vec![keys.current().jwk()];
        if let Some(previous) = &keys.previous {
            list.push(previous.jwk());
        }
        json!({ "keys": list })
    }

    /// How many times the JWKS was served.
    pub fn jwks_requests(&self) -> u64 {
        self.issuer.jwks_requests.load(Ordering::SeqCst)
    }

    /// Makes a new current signing key; the current one stays in the JWKS as the previous one.
    /// Returns the new key's `kid`.
    pub fn roll_signing_key(&self) -> String {
        let fresh = Key::generate();
        let kid = fresh.kid.clone();
        let mut keys = self.issuer.lock();
        keys.previous = keys.current.replace(fresh);
        kid
    }

    /// The `kid` of the current signing key.
    pub fn signing_kid(&self) -> String {
        self.issuer.lock().current().kid.clone()
    }

    /// Signs `claims` as an RS256 JWT with the current key (header `alg`, `typ`, `kid`). The
    /// token endpoint uses it; tests use it to make tokens the endpoint would not issue.
    pub fn sign_jwt(&self, claims: &Value) -> String {
        let mut keys = self.issuer.lock();
        let key = keys.current();
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid });
        let message = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signer = SigningKey::<Sha256>::new(key.private.clone());
        let signature = signer.sign(message.as_bytes()).to_vec();
        format!("{message}.{}", B64.encode(signature))
    }

    /// The claims of a keyledger access token for `client_id` of `tenant`, issued now on the
    /// vault's clock and valid for the configured token lifetime.
    pub fn keyledger_claims(&self, tenant: &str, client_id: &str, app: &AppClaims) -> Value {
        let now = self.clock.unix();
        let lifetime = i64::try_from(self.config.token_lifetime.as_secs()).unwrap_or(i64::MAX);
        let mut claims = json!({
            "aud": KEYLEDGER_AUDIENCE,
            "iss": self.issuer_url(tenant),
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(lifetime),
            "tid": tenant,
            "sub": client_id,
            "oid": client_id,
            "azp": client_id,
            "idtyp": "app",
            "ver": "2.0",
            "roles": app.roles,
        });
        if let Some(orgs) = &app.organizations {
            claims["keyledger_orgs"] = json!(orgs);
        }
        if let Some(tenants) = &app.tenants {
            claims["keyledger_tenants"] = json!(tenants);
        }
        claims
    }

    /// The token endpoint's answer for `scope=api://keyledger/.default`.
    pub(super) fn keyledger_token(&self, tenant: &str, client_id: &str, app: &AppClaims) -> Value {
        let token = self.sign_jwt(&self.keyledger_claims(tenant, client_id, app));
        let lifetime = self.config.token_lifetime.as_secs();
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        })
    }
}
