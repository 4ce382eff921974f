//! Entra ID access tokens on `/v1`, through the emulator's issuer over real HTTPS sockets: the
//! akv-emulator issues RS256 tokens from its token endpoint and serves the JWKS, a keyledger
//! server on 127.0.0.1:0 checks them (CONTRACT.md "Console and sign-in", ADR 0033).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{AUDITOR, Backend, PLATFORM, Server, TENANT_A, TENANT_B, test_config, tokens};
use keyledger_server::{EntraConfig, EntraIssuer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The emulator as the issuer, with a client that trusts its CA.
struct Issuer {
    emu: akv_emulator::Emulator,
    http: reqwest::Client,
    ca_pem: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Issuer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let emu = akv_emulator::start("127.0.0.1:0".parse().unwrap(), dir.path())
            .await
            .unwrap();
        let ca_pem = std::fs::read(&emu.ca_cert).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
            .build()
            .unwrap();
        Self {
            emu,
            http,
            ca_pem,
            _dir: dir,
        }
    }

    fn tenant(&self) -> &str {
        &self.emu.tenant_id
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.authority_host)
    }

    /// `POST /_emulator/apps` with the claims of its keyledger tokens.
    async fn add_app(
        &self,
        client_id: &str,
        roles: &[&str],
        orgs: Option<&[&str]>,
        tenants: Option<&[&str]>,
    ) {
        let mut app = json!({
            "tenant_id": self.tenant(), "client_id": client_id, "client_secret": "s3cret-value",
            "key_permissions": [], "roles": roles,
        });
        if let Some(o) = orgs {
            app["organizations"] = json!(o);
        }
        if let Some(t) = tenants {
            app["tenants"] = json!(t);
        }
        let r = self
            .http
            .post(self.url("/_emulator/apps"))
            .header("content-type", "application/json")
            .body(app.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    /// A keyledger token from the token endpoint (client credentials).
    async fn token(&self, client_id: &str) -> String {
        let r = self
            .http
            .post(self.url(&format!("/{}/oauth2/v2.0/token", self.tenant())))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_id={client_id}&client_secret=s3cret-value&scope=api%3A%2F%2Fkeyledger%2F.default"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// `POST /_emulator/signing-keys/roll`; the new `kid`.
    async fn roll(&self) -> String {
        let r = self
            .http
            .post(self.url("/_emulator/signing-keys/roll"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        body["kid"].as_str().unwrap().to_owned()
    }

    async fn jwks(&self) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/{}/discovery/v2.0/keys", self.tenant())))
            .send()
            .await
            .unwrap();
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }

    fn jwks_requests(&self) -> u64 {
        self.emu.vault.jwks_requests()
    }

    /// The `[[auth.entra]]` entry for this issuer, trusting its CA.
    fn entra(&self, refetch_interval: Duration) -> EntraIssuer {
        let vault = &self.emu.vault;
        EntraIssuer::new(EntraConfig {
            ca_cert_pem: Some(self.ca_pem.clone()),
            refetch_interval,
            ..EntraConfig::new(
                vault.issuer_url(self.tenant()),
                "api://keyledger",
                vault.jwks_url(self.tenant()),
            )
        })
        .unwrap()
    }

    /// The claims the token endpoint would issue `client_id` now.
    fn claims(&self, client_id: &str, roles: &[&str]) -> Value {
        let app = keyledger_vault_sim::AppClaims {
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            organizations: Some(vec!["*".into()]),
            tenants: Some(vec!["*".into()]),
        };
        self.emu.vault.keyledger_claims(self.tenant(), client_id, &app)
    }

    /// `claims` signed with the issuer's current key.
    fn sign(&self, claims: &Value) -> String {
        self.emu.vault.sign_jwt(claims)
    }
}

async fn server(issuer: &Issuer, refetch_interval: Duration) -> Server {
    let tokens = tokens().with_entra(vec![issuer.entra(refetch_interval)]);
    Server::start_with_tokens(Backend::Sqlite, test_config(), tokens)
        .await
        .unwrap()
}

/// A server whose tenant A audit exists (registered with a static token).
async fn server_with_tenant_a(issuer: &Issuer, refetch_interval: Duration) -> Server {
    let s = server(issuer, refetch_interval).await;
    s.register(&new_org()).await;
    s.tenant_known(TENANT_A).await;
    s
}

fn new_org() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Every log line of this test binary, at debug level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_works_with_its_roles_and_scope() {
    let issuer = Issuer::start().await;
    let s = server(&issuer, Duration::from_secs(30)).await;
    issuer
        .add_app("app-platform", &["platform"], Some(&["*"]), Some(&["*"]))
        .await;
    issuer
        .add_app(
            "app-auditor-a",
            &["auditor", "no_such_role", "system"],
            None,
            Some(&[TENANT_A]),
        )
        .await;
    let platform = issuer.token("app-platform").await;
    let auditor_a = issuer.token("app-auditor-a").await;

    // The platform app registers an organization with tenants A and B.
    let org = new_org();
    s.call(
        "POST",
        "/v1/organizations",
        &platform,
        Some(json!({
            "org_id": org, "name": "Contoso", "plan": {"kind": "enterprise", "tier": "standard"},
            "tenants": [{"tenant_id": TENANT_A, "name": "Default"}, {"tenant_id": TENANT_B, "name": "Finance"}],
        })),
    )
    .await
    .expect(201);
    s.tenant_known(TENANT_A).await;
    s.tenant_known(TENANT_B).await;
    // The auditor of tenant A reads tenant A's audit only; its unknown roles (and `system`)
    // grant nothing, and it may not register organizations.
    s.call("GET", &format!("/v1/tenants/{TENANT_A}/audit"), &auditor_a, None)
        .await
        .expect(200);
    s.call("GET", &format!("/v1/tenants/{TENANT_B}/audit"), &auditor_a, None)
        .await
        .problem(403, "forbidden");
    s.call(
        "POST",
        "/v1/organizations",
        &auditor_a,
        Some(json!({"org_id": new_org(), "name": "x", "plan": {"kind": "free"},
                    "tenants": [{"tenant_id": TENANT_A, "name": "x"}]})),
    )
    .await
    .problem(403, "forbidden");
    // Without an organizations claim it reaches no organization.
    s.call("GET", &format!("/v1/organizations/{org}"), &auditor_a, None)
        .await
        .problem(403, "forbidden");
    // An Idempotency-Key request authenticates in the idempotency layer too.
    s.send(
        "PUT",
        &format!("/v1/organizations/{org}/plan"),
        Some(&platform),
        Some(r#"{"plan":{"kind":"enterprise","tier":"premium"},"reason":"upsell"}"#),
        &[("idempotency-key", "entra-1")],
    )
    .await;
    // Static tokens keep working next to the issuer.
    s.call("GET", &format!("/v1/tenants/{TENANT_B}/audit"), AUDITOR, None)
        .await
        .expect(200);
    s.call("GET", &format!("/v1/organizations/{org}"), PLATFORM, None)
        .await
        .expect(200);
    // One JWKS fetch served every token.
    assert_eq!(issuer.jwks_requests(), 1);
    s.shutdown().await;
}

/// HMAC-SHA256 (RFC 2104), written out so the forged token needs no HMAC crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn encode(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrong_audience_wrong_issuer_forged_none_and_hs256_tokens_are_401() {
    let logs = captured_logs();
    let issuer = Issuer::start().await;
    let s = server_with_tenant_a(&issuer, Duration::from_secs(30)).await;
    issuer
        .add_app("app-auditor", &["auditor"], Some(&["*"]), Some(&["*"]))
        .await;
    let path = format!("/v1/tenants/{TENANT_A}/audit");
    let valid = issuer.token("app-auditor").await;
    s.call("GET", &path, &valid, None).await.expect(200);

    let claims = issuer.claims("app-auditor", &["auditor"]);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        issuer.sign(&c)
    };
    let now = unix_now();
    // Within the 60 s leeway an expired token still works…
    let just_expired = with(&|c| {
        c["iat"] = json!(now - 3630);
        c["nbf"] = json!(now - 3630);
        c["exp"] = json!(now - 30);
    });
    s.call("GET", &path, &just_expired, None).await.expect(200);
    let kid = jsonwebtoken_kid(&valid);
    let mut refused: Vec<(&str, String)> = vec![
        (
            "expired",
            with(&|c| {
                c["iat"] = json!(now - 3720);
                c["nbf"] = json!(now - 3720);
                c["exp"] = json!(now - 120);
            }),
        ),
        (
            "not yet valid",
            with(&|c| {
                c["nbf"] = json!(now + 600);
                c["exp"] = json!(now + 4200);
            }),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("api://someone-else")),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://login.microsoftonline.com/another-tenant/v2.0")),
        ),
        ("wrong tid", with(&|c| c["tid"] = json!("another-tenant"))),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
    ];
    // A forged payload: the valid token's claims with a role added, the signature kept.
    let parts: Vec<&str> = valid.split('.').collect();
    let mut forged_claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    forged_claims["roles"] = json!(["auditor", "org_admin", "platform"]);
    refused.push((
        "forged payload",
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(forged_claims.to_string()),
            parts[2]
        ),
    ));
    // A signature from another token.
    let other = with(&|c| c["sub"] = json!("someone"));
    refused.push((
        "signature of another token",
        format!("{}.{}.{}", parts[0], parts[1], other.split('.').nth(2).unwrap()),
    ));
    // alg none, with and without the kid of the real key, with and without a signature.
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "none", "kid": kid}),
    ] {
        for signature in ["", parts[2]] {
            refused.push(("alg none", format!("{}.{signature}", encode(&header, &claims))));
        }
    }
    // HS256 "signed" with the public key's bytes (the key-confusion attack): the PEM forms, the
    // DER, the modulus, and the JWK itself as the HMAC key.
    let jwks = issuer.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()
        .clone();
    let n = B64.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = B64.decode(jwk["e"].as_str().unwrap()).unwrap();
    let public =
        rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(&n), rsa::BigUint::from_bytes_be(&e)).unwrap();
    let secrets: Vec<Vec<u8>> = {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        use rsa::pkcs8::EncodePublicKey as _;
        vec![
            public
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .into_bytes(),
            public
                .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .into_bytes(),
            public.to_public_key_der().unwrap().into_vec(),
            n.clone(),
            jwk.to_string().into_bytes(),
        ]
    };
    for secret in &secrets {
        for header in [
            json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            json!({"alg": "HS256", "typ": "JWT"}),
        ] {
            let message = encode(&header, &claims);
            let mac = hmac_sha256(secret, message.as_bytes());
            refused.push((
                "HS256 with the public key",
                format!("{message}.{}", B64.encode(mac)),
            ));
        }
    }
    // RS256 in name, but no kid, or a kid of no key.
    refused.push((
        "no kid",
        format!(
            "{}.{}",
            encode(&json!({"alg": "RS256", "typ": "JWT"}), &claims),
            parts[2]
        ),
    ));
    for (what, token) in &refused {
        let r = s.call("GET", &path, token, None).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "unauthenticated"),
            "{what}: {}",
            r.text
        );
    }
    // Still one JWKS fetch: none of these made the server fetch again.
    assert_eq!(
        issuer.jwks_requests(),
        2,
        "the test's own JWKS read is the second"
    );
    // The refusals were logged, and no token appears in the log.
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("bearer token refused"), "{logs}");
    for (what, token) in refused
        .iter()
        .map(|(w, t)| (*w, t.as_str()))
        .chain([("valid", valid.as_str())])
    {
        for part in token.split('.').filter(|p| p.len() > 16) {
            assert!(!logs.contains(part), "{what}: a token part is in the log");
        }
    }
    s.shutdown().await;
}

fn jsonwebtoken_kid(token: &str) -> String {
    let header: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_key_rolls_an_unknown_kid_refetches_once_and_then_succeeds() {
    let issuer = Issuer::start().await;
    let interval = Duration::from_secs(2);
    let s = server_with_tenant_a(&issuer, interval).await;
    issuer
        .add_app("app-auditor", &["auditor"], Some(&["*"]), Some(&["*"]))
        .await;
    let path = format!("/v1/tenants/{TENANT_A}/audit");
    let before = issuer.token("app-auditor").await;
    s.call("GET", &path, &before, None).await.expect(200);
    assert_eq!(issuer.jwks_requests(), 1);

    let new_kid = issuer.roll().await;
    let after = issuer.token("app-auditor").await;
    assert_eq!(jsonwebtoken_kid(&after), new_kid);
    // Past the refetch interval, the unknown kid makes one fetch, and the token works.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    s.call("GET", &path, &after, None).await.expect(200);
    assert_eq!(issuer.jwks_requests(), 2);
    s.call("GET", &path, &after, None).await.expect(200);
    // The emulator keeps the previous key in the JWKS: tokens issued before the roll still work.
    s.call("GET", &path, &before, None).await.expect(200);
    assert_eq!(issuer.jwks_requests(), 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kid_unknown_within_the_refetch_interval_is_refused_without_a_fetch() {
    let issuer = Issuer::start().await;
    let s = server_with_tenant_a(&issuer, Duration::from_secs(30)).await;
    issuer
        .add_app("app-auditor", &["auditor"], Some(&["*"]), Some(&["*"]))
        .await;
    let path = format!("/v1/tenants/{TENANT_A}/audit");
    let before = issuer.token("app-auditor").await;
    s.call("GET", &path, &before, None).await.expect(200);
    issuer.roll().await;
    // The key rolled less than 30 s after the last fetch: the new kid waits for the window.
    let after = issuer.token("app-auditor").await;
    s.call("GET", &path, &after, None)
        .await
        .problem(401, "unauthenticated");
    assert_eq!(issuer.jwks_requests(), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_unknown_kids_makes_one_jwks_fetch_per_window() {
    let issuer = Issuer::start().await;
    let s = Arc::new(server_with_tenant_a(&issuer, Duration::from_secs(30)).await);
    issuer
        .add_app("app-auditor", &["auditor"], Some(&["*"]), Some(&["*"]))
        .await;
    let path = format!("/v1/tenants/{TENANT_A}/audit");
    let claims = issuer.claims("app-auditor", &["auditor"]);
    let signature = issuer.sign(&claims).split('.').nth(2).unwrap().to_owned();
    let unknown = |i: usize| {
        format!(
            "{}.{signature}",
            encode(
                &json!({"alg": "RS256", "typ": "JWT", "kid": format!("unknown-{i}")}),
                &claims
            )
        )
    };
    // 40 at once, then 40 one after the other: all refused, and one fetch in all.
    let concurrent: Vec<_> = (0..40)
        .map(|i| {
            let (s, path, token) = (s.clone(), path.clone(), unknown(i));
            tokio::spawn(async move { s.call("GET", &path, &token, None).await.status })
        })
        .collect();
    let statuses: BTreeSet<u16> = futures::future::join_all(concurrent)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(statuses, BTreeSet::from([401]));
    for i in 40..80 {
        s.call("GET", &path, &unknown(i), None)
            .await
            .problem(401, "unauthenticated");
    }
    assert_eq!(issuer.jwks_requests(), 1);
    // That one fetch brought the real key: a valid token needs no other.
    let valid = issuer.token("app-auditor").await;
    s.call("GET", &path, &valid, None).await.expect(200);
    assert_eq!(issuer.jwks_requests(), 1);
    Arc::into_inner(s).unwrap().shutdown().await;
}

/// The console's sign-in form takes an Entra ID access token as it takes a static one: the
/// session carries the token's roles and scope; a forged token starts no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_token_signs_in_to_the_console_with_its_scope() {
    let issuer = Issuer::start().await;
    let s = server_with_tenant_a(&issuer, Duration::from_secs(30)).await;
    issuer
        .add_app("app-console-auditor", &["auditor"], None, Some(&[TENANT_A]))
        .await;
    let token = issuer.token("app-console-auditor").await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |token: String| {
        browser
            .post(s.url("/console/sign-in"))
            .header("origin", s.base.clone())
            .header("sec-fetch-site", "same-origin")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([("token", token)]).unwrap())
            .send()
    };
    let signed_in = sign_in(token.clone()).await.unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = |path: String| browser.get(s.url(&path)).header("cookie", cookie.clone()).send();
    let own = page(format!("/console/tenants/{TENANT_A}/audit")).await.unwrap();
    assert_eq!(own.status(), 200);
    let html = own.text().await.unwrap();
    assert!(!html.contains(&token), "the token is on a page");
    let other = page(format!("/console/tenants/{TENANT_B}/audit")).await.unwrap();
    assert_eq!(other.status(), 403);
    // A changed payload fails its signature: no session.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    claims["keyledger_tenants"] = json!(["*"]);
    parts[1] = B64.encode(claims.to_string());
    let forged = sign_in(parts.join(".")).await.unwrap();
    assert_ne!(forged.status(), 303);
    assert!(forged.headers().get("set-cookie").is_none());
}
