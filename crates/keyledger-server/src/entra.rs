//! Entra ID access tokens (CONTRACT.md "Console and sign-in", ADR 0033): RS256 JWTs from the
//! issuers of `[[auth.entra]]`, next to the static tokens.
//!
//! - The header's `alg` must be `RS256` and the key the JWKS holds under the header's `kid` must
//!   be an RSA key; the token never picks the algorithm (`none`, HS256 and the rest are refused
//!   before any key is looked at).
//! - `iss`, `aud`, `exp` and `nbf` are required and checked with [`LEEWAY`]; `tid` must be the
//!   issuer's tenant.
//! - Roles and reach come from the configured claims: unknown role names (and `system`) are
//!   ignored, a missing organizations or tenants claim is no reach, `"*"` is every one.
//! - The JWKS is fetched on first use and cached by `kid`. An unknown `kid` refetches it at
//!   most once per [`EntraConfig::refetch_interval`] (30 s): concurrent unknown kids wait for
//!   one fetch, and a storm of them makes one fetch per window.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyledger_domain::{Actor, ActorKind, OrgId, Reach, Role, Scope, TenantId};
use serde::Deserialize;
use serde_json::Value;

/// The clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(60);
/// The shortest time between two JWKS fetches for unknown `kid`s.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One `[[auth.entra]]` entry.
#[derive(Clone)]
pub struct EntraConfig {
    /// The exact `iss`: `https://login.microsoftonline.com/<tid>/v2.0`. Its first path
    /// segment is the tenant `tid` must name.
    pub issuer: String,
    /// The exact `aud`, e.g. `api://keyledger`.
    pub audience: String,
    pub jwks_uri: String,
    /// The claim holding the app roles (`roles`).
    pub roles_claim: String,
    /// The claim holding the organization ids (`keyledger_orgs`).
    pub organizations_claim: String,
    /// The claim holding the tenant ids (`keyledger_tenants`).
    pub tenants_claim: String,
    /// An extra trust root (PEM) for `jwks_uri`, next to the platform's.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// At most one JWKS fetch for unknown `kid`s per this long ([`REFETCH_INTERVAL`]).
    pub refetch_interval: Duration,
    /// The JWKS request's timeout.
    pub fetch_timeout: Duration,
}

impl EntraConfig {
    /// An entry with the contract's claim names and timings.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, jwks_uri: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_uri: jwks_uri.into(),
            roles_claim: "roles".into(),
            organizations_claim: "keyledger_orgs".into(),
            tenants_claim: "keyledger_tenants".into(),
            ca_cert_pem: None,
            refetch_interval: REFETCH_INTERVAL,
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for EntraConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_uri", &self.jwks_uri)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Why an `[[auth.entra]]` entry cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntraSetupError {
    /// The issuer has no tenant path segment (`https://host/<tid>/v2.0`): fix the entry.
    #[error("issuer: expected https://<host>/<tenant id>/v2.0")]
    IssuerTenant,
    /// `ca_cert` is not a PEM certificate: fix the file.
    #[error("ca_cert: not a PEM certificate")]
    BadCaCert,
    /// The HTTP client could not be built (TLS set-up): a platform problem.
    #[error("the JWKS client could not be built")]
    HttpClient,
}

/// One issuer's settings and JWKS cache.
pub struct EntraIssuer {
    config: EntraConfig,
    tenant: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// When the JWKS was last fetched (or a fetch was tried); held during a fetch, so that
    /// concurrent unknown kids wait for it rather than fetch again.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for EntraIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraIssuer")
            .field("config", &self.config)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused, for the debug log (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotAJwt,
    Algorithm,
    NoKid,
    UnknownIssuer,
    UnknownKid,
    Invalid(&'static str),
    Tenant,
    Subject,
}

impl EntraIssuer {
    pub fn new(config: EntraConfig) -> Result<Self, EntraSetupError> {
        let tenant = issuer_tenant(&config.issuer).ok_or(EntraSetupError::IssuerTenant)?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.fetch_timeout)
            .connect_timeout(config.fetch_timeout);
        if let Some(pem) = &config.ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|_| EntraSetupError::BadCaCert)?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder.build().map_err(|_| EntraSetupError::HttpClient)?;
        Ok(Self {
            config,
            tenant,
            http,
            keys: RwLock::default(),
            fetched: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The actor of a token this issuer signed, or why not.
    pub(crate) async fn authenticate(&self, token: &str, header_kid: &str) -> Result<Actor, Refusal> {
        let key = self.key(header_kid).await.ok_or(Refusal::UnknownKid)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| Refusal::Invalid(validation_reason(e.kind())))?
            .claims;
        if claims.get("tid").and_then(Value::as_str) != Some(self.tenant.as_str()) {
            return Err(Refusal::Tenant);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or(Refusal::Subject)?;
        Ok(self.actor(subject, &claims))
    }

    fn actor(&self, subject: &str, claims: &Value) -> Actor {
        let roles: BTreeSet<Role> = strings(claims.get(&self.config.roles_claim))
            .filter_map(|r| serde_json::from_value::<Role>(Value::String(r.to_owned())).ok())
            .filter(|r| *r != Role::System)
            .collect();
        // People administer and audit; services provision, bill and consume streams (as for
        // static tokens).
        let kind = if roles
            .iter()
            .any(|r| matches!(r, Role::OrgAdmin | Role::Auditor | Role::Support))
        {
            ActorKind::User
        } else {
            ActorKind::Service
        };
        let scope = Scope {
            organizations: reach::<OrgId>(claims.get(&self.config.organizations_claim)),
            tenants: reach::<TenantId>(claims.get(&self.config.tenants_claim)),
        };
        Actor::new(kind, subject.to_owned(), roles, scope)
    }

    /// The RSA key under `kid`, fetching the JWKS if it is unknown and the last fetch is at
    /// least `refetch_interval` old.
    async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        let mut fetched = self.fetched.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        if fetched.is_some_and(|at| at.elapsed() < self.config.refetch_interval) {
            return None;
        }
        *fetched = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "fetched the Entra ID JWKS");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "fetching the Entra ID JWKS failed");
            }
        }
        self.cached(kid)
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    /// The JWKS's RSA signing keys by `kid`; other keys are left out.
    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let response = self
            .http
            .get(&self.config.jwks_uri)
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > u64::try_from(MAX_JWKS_BYTES).unwrap_or(u64::MAX))
        {
            return Err("the JWKS is too large".into());
        }
        let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("the JWKS is too large".into());
        }
        parse_jwks(&body)
    }
}

/// A JWKS entry, as far as keyledger reads it.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
    #[derive(Deserialize)]
    struct Jwks {
        keys: Vec<Value>,
    }
    let jwks: Jwks = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(jwks
        .keys
        .into_iter()
        // An entry of another shape is skipped, not fatal: the others still work.
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| k.kty == "RSA")
        .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == "RS256"))
        .filter_map(|k| {
            let key = DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
            Some((k.kid?, Arc::new(key)))
        })
        .collect())
}

/// The tenant of `https://host/<tenant>/v2.0`: the first path segment.
fn issuer_tenant(issuer: &str) -> Option<String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))?;
    let (_, path) = rest.split_once('/')?;
    path.split('/')
        .next()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A claim's strings: an array's string items, or a single string.
fn strings(claim: Option<&Value>) -> impl Iterator<Item = &str> {
    let items: Vec<&str> = match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => Vec::new(),
    };
    items.into_iter()
}

/// A reach claim: missing is nothing, `"*"` is everything, ids that do not parse are ignored.
fn reach<T: std::str::FromStr + Ord>(claim: Option<&Value>) -> Reach<T> {
    let values: Vec<&str> = strings(claim).collect();
    if values.contains(&"*") {
        return Reach::All;
    }
    Reach::Only(values.iter().filter_map(|v| v.parse().ok()).collect())
}

fn validation_reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => "signature",
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not yet valid",
        K::InvalidIssuer => "issuer",
        K::InvalidAudience => "audience",
        K::InvalidAlgorithm => "algorithm",
        K::MissingRequiredClaim(_) => "missing claim",
        _ => "malformed",
    }
}

/// The issuers of `[[auth.entra]]`, picking the one a token names.
#[derive(Debug, Default)]
pub(crate) struct EntraIssuers {
    issuers: Vec<EntraIssuer>,
}

impl EntraIssuers {
    pub(crate) fn new(issuers: Vec<EntraIssuer>) -> Self {
        Self { issuers }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The actor of an Entra ID token, or why not. The header must say RS256 and carry a
    /// `kid`; the (not yet verified) `iss` only picks the issuer whose keys and rules then
    /// check everything.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Actor, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::NotAJwt)?;
        if header.alg != Algorithm::RS256 {
            return Err(Refusal::Algorithm);
        }
        let kid = header.kid.ok_or(Refusal::NoKid)?;
        #[derive(Deserialize)]
        struct Iss {
            iss: String,
        }
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
            .map_err(|_| Refusal::UnknownIssuer)?
            .iss;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(Refusal::UnknownIssuer)?;
        issuer.authenticate(token, &kid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_tenant_is_the_issuers_first_path_segment() {
        assert_eq!(
            issuer_tenant("https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0")
                .as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(issuer_tenant("https://login.microsoftonline.com"), None);
        assert_eq!(issuer_tenant("https://login.microsoftonline.com/"), None);
        assert_eq!(issuer_tenant("login.microsoftonline.com/t/v2.0"), None);
    }

    #[test]
    fn a_missing_reach_claim_is_no_reach_and_a_star_is_every_one() {
        assert_eq!(reach::<OrgId>(None), Reach::Only(BTreeSet::new()));
        assert_eq!(reach::<OrgId>(Some(&json!(["*"]))), Reach::All);
        assert_eq!(reach::<OrgId>(Some(&json!("*"))), Reach::All);
        let org: OrgId = "01900000-0000-7000-8000-0000000000aa".parse().unwrap();
        assert_eq!(
            reach::<OrgId>(Some(&json!(["01900000-0000-7000-8000-0000000000aa", "junk", 7]))),
            Reach::Only([org].into())
        );
        assert_eq!(
            reach::<OrgId>(Some(&json!({"a": 1}))),
            Reach::Only(BTreeSet::new())
        );
    }

    #[test]
    fn only_rsa_signing_keys_enter_the_cache() {
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let body = json!({"keys": [
            {"kty": "RSA", "kid": "good", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "no-alg", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "a", "y": "b"},
            {"kty": "RSA", "n": n, "e": "AQAB"},
            "junk",
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["good", "no-alg"]);
    }

    #[tokio::test]
    async fn none_hs256_and_other_algorithms_are_refused_before_any_key_lookup() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let issuers = EntraIssuers::new(vec![
            EntraIssuer::new(EntraConfig::new(
                "https://login.example/t/v2.0",
                "api://keyledger",
                // Never fetched: the algorithm is refused first.
                "https://127.0.0.1:9/t/discovery/v2.0/keys",
            ))
            .unwrap(),
        ]);
        let claims = B64.encode(json!({"iss": "https://login.example/t/v2.0"}).to_string());
        for alg in ["none", "HS256", "RS384", "PS256", "ES256", "EdDSA", "rs256", "XX"] {
            let header = B64.encode(json!({"alg": alg, "typ": "JWT", "kid": "k"}).to_string());
            for signature in ["", "c2ln"] {
                let token = format!("{header}.{claims}.{signature}");
                let refused = issuers.authenticate(&token).await.unwrap_err();
                assert!(
                    matches!(refused, Refusal::Algorithm | Refusal::NotAJwt),
                    "{alg}: {refused:?}"
                );
            }
        }
    }
}
