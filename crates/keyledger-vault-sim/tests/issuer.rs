//! The simulated Entra ID as an issuer of keyledger access tokens: `POST /_emulator/apps` with
//! roles and reach, the client-credentials grant for `api://keyledger/.default`, the JWKS, and
//! the signing-key roll. The tokens are checked with `jsonwebtoken` on aws-lc-rs, an
//! implementation the issuer (which signs with the `rsa` crate) does not use, and their
//! signature once more with the `openssl` command, which keyledger does not use either.

use axum::body::Body;
use axum::http::{Method, Request, header};
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyledger_vault_sim::{Clock, KEYLEDGER_AUDIENCE, Vault, VaultConfig, router_with_control};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const CLIENT: &str = "8a1f0000-0000-4000-8000-00000000e17a";
const ORG: &str = "01900000-0000-7000-8000-0000000000aa";

struct Sim {
    vault: std::sync::Arc<Vault>,
    router: axum::Router,
    tenant: String,
}

impl Sim {
    fn new() -> Self {
        let vault = Vault::new(VaultConfig::default(), Clock::system());
        Self {
            router: router_with_control(vault.clone()),
            tenant: vault.config().tenant_id.clone(),
            vault,
        }
    }

    async fn send(&self, method: Method, path: &str, content_type: &str, body: String) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "login.example")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn add_app(&self, extra: Value) {
        let mut app = json!({
            "tenant_id": self.tenant, "client_id": CLIENT, "client_secret": "s3cret",
            "key_permissions": [],
        });
        app.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, body) = self
            .send(
                Method::POST,
                "/_emulator/apps",
                "application/json",
                app.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    async fn token(&self, scope: &str) -> (u16, Value) {
        let form = format!(
            "grant_type=client_credentials&client_id={CLIENT}&client_secret=s3cret&scope={}",
            scope.replace(':', "%3A").replace('/', "%2F")
        );
        self.send(
            Method::POST,
            &format!("/{}/oauth2/v2.0/token", self.tenant),
            "application/x-www-form-urlencoded",
            form,
        )
        .await
    }

    async fn jwks(&self) -> JwkSet {
        let (status, body) = self
            .send(
                Method::GET,
                &format!("/{}/discovery/v2.0/keys", self.tenant),
                "application/json",
                String::new(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }
}

/// Verifies `token` against `jwks` with jsonwebtoken: RS256 only, the key found by `kid`.
fn verify(token: &str, jwks: &JwkSet, issuer: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(token)?;
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("a kid header");
    let jwk = jwks.find(&kid).ok_or_else(|| {
        jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)
    })?;
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[KEYLEDGER_AUDIENCE]);
    validation.set_issuer(&[issuer]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims)
}

#[tokio::test]
async fn a_keyledger_token_carries_the_apps_roles_and_reach_and_verifies_against_the_jwks() {
    let sim = Sim::new();
    sim.add_app(json!({"roles": ["auditor", "billing"], "organizations": [ORG], "tenants": ["*"]}))
        .await;
    let (status, body) = sim.token("api://keyledger/.default").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    let claims = verify(token, &sim.jwks().await, &sim.vault.issuer_url(&sim.tenant)).unwrap();
    assert_eq!(claims["aud"], "api://keyledger");
    assert_eq!(
        claims["iss"],
        format!("https://login.microsoftonline.com/{}/v2.0", sim.tenant)
    );
    assert_eq!(claims["tid"], sim.tenant.as_str());
    assert_eq!(claims["sub"], CLIENT);
    assert_eq!(claims["roles"], json!(["auditor", "billing"]));
    assert_eq!(claims["keyledger_orgs"], json!([ORG]));
    assert_eq!(claims["keyledger_tenants"], json!(["*"]));
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!((nbf, exp - iat), (iat, 3600));
    assert_eq!(sim.vault.jwks_requests(), 1);
}

#[tokio::test]
async fn an_app_without_reach_gets_a_token_without_the_reach_claims() {
    let sim = Sim::new();
    sim.add_app(json!({"roles": ["platform"]})).await;
    let (_, body) = sim.token("api://keyledger/.default").await;
    let claims = verify(
        body["access_token"].as_str().unwrap(),
        &sim.jwks().await,
        &sim.vault.issuer_url(&sim.tenant),
    )
    .unwrap();
    assert!(claims.get("keyledger_orgs").is_none(), "{claims}");
    assert!(claims.get("keyledger_tenants").is_none(), "{claims}");
}

#[tokio::test]
async fn the_vault_scope_still_gets_an_opaque_vault_token() {
    let sim = Sim::new();
    sim.add_app(json!({"key_permissions": ["get"]})).await;
    let (status, body) = sim.token("https://vault.azure.net/.default").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].as_str().unwrap().starts_with("sim."));
    let (status, body) = sim.token("api://other/.default").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn a_tampered_payload_fails_verification() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let sim = Sim::new();
    sim.add_app(json!({"roles": ["auditor"]})).await;
    let (_, body) = sim.token("api://keyledger/.default").await;
    let token = body["access_token"].as_str().unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["org_admin"]);
    parts[1] = B64.encode(claims.to_string());
    let forged = parts.join(".");
    let err = verify(&forged, &sim.jwks().await, &sim.vault.issuer_url(&sim.tenant)).unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidSignature);
}

#[tokio::test]
async fn a_roll_makes_a_new_key_and_keeps_the_previous_one_in_the_jwks() {
    let sim = Sim::new();
    sim.add_app(json!({"roles": ["auditor"]})).await;
    let (_, before) = sim.token("api://keyledger/.default").await;
    let (status, rolled) = sim
        .send(
            Method::POST,
            "/_emulator/signing-keys/roll",
            "application/json",
            String::new(),
        )
        .await;
    assert_eq!(status, 200, "{rolled}");
    assert_ne!(rolled["kid"], rolled["previous_kid"]);
    let (_, after) = sim.token("api://keyledger/.default").await;
    let after = after["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(after).unwrap();
    assert_eq!(header.kid.as_deref(), rolled["kid"].as_str());
    let jwks = sim.jwks().await;
    assert_eq!(jwks.keys.len(), 2);
    let issuer = sim.vault.issuer_url(&sim.tenant);
    verify(after, &jwks, &issuer).unwrap();
    verify(before["access_token"].as_str().unwrap(), &jwks, &issuer).unwrap();
    // A second roll drops the oldest key.
    sim.vault.roll_signing_key();
    let jwks = sim.jwks().await;
    assert_eq!(jwks.keys.len(), 2);
    assert!(verify(before["access_token"].as_str().unwrap(), &jwks, &issuer).is_err());
    verify(after, &jwks, &issuer).unwrap();
}

#[tokio::test]
async fn the_jwks_of_another_tenant_is_not_served() {
    let sim = Sim::new();
    let (status, body) = sim
        .send(
            Method::GET,
            "/00000000-0000-0000-0000-000000000000/discovery/v2.0/keys",
            "application/json",
            String::new(),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_tenant")));
}

/// OpenSSL, which neither the issuer (the `rsa` crate) nor keyledger (jsonwebtoken on
/// aws-lc-rs) uses, verifies the token's RS256 signature against the JWKS key. Skipped with a
/// note where the `openssl` command is missing, unless `CI=true`.
#[tokio::test]
async fn openssl_verifies_the_signature_against_the_jwks_key() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use rsa::pkcs8::EncodePublicKey as _;
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "openssl is required in CI"
        );
        eprintln!("skipped: no openssl command");
        return;
    }
    let sim = Sim::new();
    sim.add_app(json!({"roles": ["auditor"]})).await;
    let (_, body) = sim.token("api://keyledger/.default").await;
    let token = body["access_token"].as_str().unwrap();
    let (message, signature) = token.rsplit_once('.').unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = sim.jwks().await.find(&kid).unwrap().clone();
    let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa_params) = &jwk.algorithm else {
        panic!("not an RSA JWK");
    };
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&B64.decode(&rsa_params.n).unwrap()),
        rsa::BigUint::from_bytes_be(&B64.decode(&rsa_params.e).unwrap()),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("vault-sim-openssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("public.pem");
    std::fs::write(
        &pem,
        public.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("signature"), B64.decode(signature).unwrap()).unwrap();
    let verify = |data: &[u8]| {
        std::fs::write(dir.join("message"), data).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(dir.join("signature"))
            .arg(dir.join("message"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = verify(message.as_bytes());
    assert!(ok && out.contains("Verified OK"), "{out}");
    let (ok, _) = verify(format!("{message}x").as_bytes());
    assert!(!ok);
    let _ = std::fs::remove_dir_all(&dir);
}
