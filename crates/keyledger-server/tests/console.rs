//! The console over a real socket: cookie flags, CSRF and same-origin refusals, the API's
//! scope rules, and no secret on any page.

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;

/// A client that follows no redirect and keeps no cookie: each test sees them as sent.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Form fields or headers: name and value.
type Fields<'a> = Vec<(&'a str, &'a str)>;

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    fn set_cookie(&self) -> Option<&str> {
        self.headers.get("set-cookie").and_then(|v| v.to_str().ok())
    }
}

async fn request(
    server: &Server,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
    headers: &[(&str, &str)],
) -> Page {
    let mut req = client().request(method.parse().unwrap(), server.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(f) = form {
        let body = serde_urlencoded::to_string(f).unwrap();
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    server.transcript.lock().unwrap().push(text.clone());
    Page {
        status,
        headers,
        text,
    }
}

async fn get(server: &Server, path: &str, cookie: &str) -> Page {
    request(server, "GET", path, Some(cookie), None, &[]).await
}

/// Signs in with `token`; returns the `Cookie` header value of the session.
async fn sign_in(server: &Server, token: &str) -> String {
    let origin = server.base.clone();
    let page = request(
        server,
        "POST",
        "/console/sign-in",
        None,
        Some(&[("token", token)]),
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(page.status, 303, "{}", page.text);
    let set = page.set_cookie().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's sign-out form.
fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_owned()
}

/// An organization with tenants A and B, its customer-managed key enabled and rotated.
async fn seeded(server: &Server) -> String {
    let org = new_org();
    server.register(&org).await;
    let cmk = format!("/v1/organizations/{org}/customer-managed-key");
    server
        .call("POST", &cmk, ADMIN, Some(server.connection(0)))
        .await
        .expect(201);
    let second = server.demo.key_identifiers[1].clone();
    server
        .call(
            "POST",
            &format!("{cmk}/rotation"),
            ADMIN,
            Some(json!({ "key_identifier": second })),
        )
        .await
        .expect(200);
    server.audit_rows(TENANT_A, 2).await;
    org
}

async fn the_session_cookie_is_http_only_strict_and_holds_no_token(server: &Server) {
    let page = request(
        server,
        "POST",
        "/console/sign-in",
        None,
        Some(&[("token", AUDITOR)]),
        &[],
    )
    .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.headers.get("location").unwrap(), "/console");
    let set = page.set_cookie().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "no TLS here: {set}");
    assert!(!set.contains(AUDITOR), "{set}");
    let id = set.split(';').next().unwrap().split_once('=').unwrap().1;
    assert_eq!(id.len(), 64, "a 256-bit id in hex: {set}");
    // The page of the session: the caller, no token, accessible markup.
    let home = get(server, "/console", set.split(';').next().unwrap()).await;
    assert_eq!(home.status, 200);
    assert!(home.text.contains(&format!("{AUDITOR}@example.com")));
    for needle in ["<html lang=\"en\">", "<main>", "<h1>", "name=\"csrf\""] {
        assert!(home.text.contains(needle), "{needle}");
    }
    assert_eq!(home.headers.get("cache-control").unwrap(), "no-store");
    assert!(home.headers.get("content-security-policy").is_some());
}

async fn a_wrong_token_or_a_cross_site_sign_in_starts_no_session(server: &Server) {
    let wrong = request(
        server,
        "POST",
        "/console/sign-in",
        None,
        Some(&[("token", "not-a-token")]),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie().is_none());
    assert!(!wrong.text.contains("not-a-token"));
    for headers in [
        [("origin", "http://attacker.example"), ("x-other", "1")],
        [("sec-fetch-site", "cross-site"), ("x-other", "1")],
    ] {
        let page = request(
            server,
            "POST",
            "/console/sign-in",
            None,
            Some(&[("token", AUDITOR)]),
            &headers,
        )
        .await;
        assert_eq!(page.status, 403, "{headers:?}");
        assert!(page.set_cookie().is_none());
    }
}

async fn sign_out_needs_the_csrf_token_and_a_same_origin_post(server: &Server) {
    let cookie = sign_in(server, AUDITOR).await;
    let token = csrf(&get(server, "/console", &cookie).await.text);
    let own = server.base.clone();
    let wrong = "0".repeat(64);
    let refused: [(Fields, Fields); 5] = [
        (vec![], vec![("origin", own.as_str())]),
        (vec![("csrf", wrong.as_str())], vec![("origin", own.as_str())]),
        (
            vec![("csrf", token.as_str())],
            vec![("origin", "http://attacker.example")],
        ),
        (
            vec![("csrf", token.as_str())],
            vec![("sec-fetch-site", "cross-site")],
        ),
        (
            vec![("csrf", token.as_str())],
            vec![("sec-fetch-site", "same-site")],
        ),
    ];
    for (form, headers) in &refused {
        let page = request(
            server,
            "POST",
            "/console/sign-out",
            Some(&cookie),
            Some(form),
            headers,
        )
        .await;
        assert_eq!(page.status, 403, "{form:?} {headers:?}");
        assert!(page.set_cookie().is_none());
        // Nothing changed: the session still signs pages.
        let home = get(server, "/console", &cookie).await;
        assert!(home.text.contains("Sign out"), "{form:?} {headers:?}");
    }
    // No session at all: 403 too.
    let page = request(
        server,
        "POST",
        "/console/sign-out",
        None,
        Some(&[("csrf", &token)]),
        &[],
    )
    .await;
    assert_eq!(page.status, 403);
    // The real thing ends the session.
    let page = request(
        server,
        "POST",
        "/console/sign-out",
        Some(&cookie),
        Some(&[("csrf", &token)]),
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(page.status, 303);
    assert!(page.set_cookie().unwrap().contains("Max-Age=0"));
    let home = get(server, "/console", &cookie).await;
    assert!(home.text.contains("name=\"token\""), "the sign-in form again");
    let tenant = get(server, &format!("/console/tenants/{TENANT_A}/audit"), &cookie).await;
    assert_eq!(tenant.status, 303);
}

async fn the_console_keeps_the_api_scope_rules(server: &Server) {
    let org = seeded(server).await;
    let a = sign_in(server, AUDITOR_A).await;
    let b_audit = get(server, &format!("/console/tenants/{TENANT_B}/audit"), &a).await;
    assert_eq!(b_audit.status, 403);
    let b_csv = get(server, &format!("/console/tenants/{TENANT_B}/audit.csv"), &a).await;
    assert_eq!(b_csv.status, 403);
    let a_audit = get(server, &format!("/console/tenants/{TENANT_A}/audit"), &a).await;
    assert_eq!(a_audit.status, 200);
    assert!(a_audit.text.contains("CustomerManagedKeyRotated"));
    // The organization holds tenant A: its page is in scope, as on /v1.
    assert_eq!(
        get(server, &format!("/console/organizations/{org}"), &a)
            .await
            .status,
        200
    );
    let other = sign_in(server, ADMIN_OTHER).await;
    assert_eq!(
        get(server, &format!("/console/organizations/{org}"), &other)
            .await
            .status,
        403
    );
    let home = get(server, "/console", &other).await;
    assert!(!home.text.contains(&org), "an org out of scope is not listed");
    // A missing organization: 404 for an auditor of everything; a tenant-scoped auditor gets
    // 403, as on /v1 (it cannot tell a missing organization from one without its tenants).
    let missing = format!("/console/organizations/{}", new_org());
    let all = sign_in(server, AUDITOR).await;
    assert_eq!(get(server, &missing, &all).await.status, 404);
    assert_eq!(get(server, &missing, &a).await.status, 403);
    // Platform views the organization, not its data keys or audit log.
    let platform = sign_in(server, PLATFORM).await;
    let page = get(server, &format!("/console/organizations/{org}"), &platform).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Data keys are outside the scope"));
}

async fn pages_show_keys_history_and_audit_and_no_secret(server: &Server) {
    let org = seeded(server).await;
    let cookie = sign_in(server, AUDITOR).await;
    let home = get(server, "/console", &cookie).await;
    assert!(home.text.contains(&format!("/console/organizations/{org}")));
    let page = get(server, &format!("/console/organizations/{org}"), &cookie).await;
    assert_eq!(page.status, 200);
    let (first, second) = (&server.demo.key_identifiers[0], &server.demo.key_identifiers[1]);
    assert!(page.text.contains(second.as_str()), "the active key");
    assert!(page.text.contains(first.as_str()), "the history");
    assert!(page.text.contains("Audit-log verification"));
    let audit = get(
        server,
        &format!("/console/tenants/{TENANT_A}/audit?action=CustomerManagedKeyRotated"),
        &cookie,
    )
    .await;
    assert_eq!(audit.status, 200);
    assert!(audit.text.contains("CustomerManagedKeyRotated"));
    assert!(!audit.text.contains(">CustomerManagedKeyEnabled<"));
    let paged = get(
        server,
        &format!("/console/tenants/{TENANT_A}/audit?limit=1"),
        &cookie,
    )
    .await;
    assert!(paged.text.contains("rel=\"next\""), "a next page link");
    let csv = get(server, &format!("/console/tenants/{TENANT_A}/audit.csv"), &cookie).await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(csv.text.starts_with("position,occurred_at"));
    assert!(csv.text.contains("CustomerManagedKeyRotated"));
    let admin = sign_in(server, ADMIN).await;
    for c in [&cookie, &admin] {
        for path in [
            "/console".to_owned(),
            format!("/console/organizations/{org}"),
            format!("/console/tenants/{TENANT_A}/audit"),
            format!("/console/tenants/{TENANT_A}/audit.csv"),
        ] {
            get(server, &path, c).await;
        }
    }
    let secret = server.demo.client_secret.clone();
    for text in server.transcript.lock().unwrap().iter() {
        if !text.contains("<html") && !text.starts_with("position,") {
            continue; // API replies of the seeding
        }
        assert!(!text.contains(secret.as_str()), "the client secret on a page");
        // The harness names each token's subject `<token>@example.com`: a page may show who
        // signed in or acted, so the subject is taken out before looking for a bare token.
        let tokens = || ROLE_TOKENS.iter().map(|(_, t)| *t).chain([AUDITOR_A]);
        let mut shown = text.clone();
        for token in tokens() {
            shown = shown.replace(&format!("{token}@example.com"), "<subject>");
        }
        for token in tokens() {
            assert!(!shown.contains(token), "a token on a page: {shown}");
        }
        assert!(!shown.contains("edek") && !shown.contains("wrapped_key"));
    }
}

/// The customer soft-deletes the key: the organization page shows how long it can be
/// recovered (the vault's scheduled purge date).
async fn a_deleted_key_shows_its_recoverability_countdown(server: &Server) {
    let org = seeded(server).await;
    let name = server.demo.key_identifiers[1]
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    server
        .demo
        .vault
        .delete_key(keyledger_server::dev::DEMO_VAULT_URL, &name)
        .unwrap();
    let health = server
        .call(
            "POST",
            &format!("/v1/organizations/{org}/key-health/probe"),
            ADMIN,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(health["status"], "key_deleted", "{health}");
    let until = health["recoverable_until"].as_str().unwrap().to_owned();
    let cookie = sign_in(server, AUDITOR).await;
    let page = get(server, &format!("/console/organizations/{org}"), &cookie).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("id=\"countdown\""), "{}", page.text);
    assert!(page.text.contains("can be recovered until"));
    // The date shown is the vault's purge date, to the second.
    let shown = chrono::DateTime::parse_from_rfc3339(&until)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    assert!(page.text.contains(&shown), "{shown} not on the page");
    assert!(page.text.contains("days") && page.text.contains("left"));
}

on_every_backend!(
    a_deleted_key_shows_its_recoverability_countdown,
    the_session_cookie_is_http_only_strict_and_holds_no_token,
    a_wrong_token_or_a_cross_site_sign_in_starts_no_session,
    sign_out_needs_the_csrf_token_and_a_same_origin_post,
    the_console_keeps_the_api_scope_rules,
    pages_show_keys_history_and_audit_and_no_secret,
);

/// A certificate resolver with no certificate: enough for a `ServerConfig` whose presence
/// marks the server as serving TLS (the router is driven in process, without a handshake).
#[derive(Debug)]
struct NoCert;

impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

#[tokio::test]
async fn under_tls_the_cookie_is_secure() {
    use tower::ServiceExt as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert));
    let config = keyledger_server::ServerConfig {
        tls: Some(Arc::new(tls)),
        ..test_config()
    };
    let demo = keyledger_server::dev::DemoVault::new();
    let store: Arc<dyn keyledger_store::EventStore> = Arc::new(keyledger_store::InMemoryStore::new(
        Arc::new(keyledger_store::KeyRing::generate()),
    ));
    let sink: Arc<dyn keyledger_projection::ProjectionSink> =
        Arc::new(keyledger_projection::MemorySink::default());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let router = keyledger_server::router(services(store, sink, &demo), config, stopped);
    let request = axum::http::Request::post("/console/sign-in")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "keyledger.example")
        .header("origin", "https://keyledger.example")
        .body(axum::body::Body::from(format!("token={AUDITOR}")))
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"].to_str().unwrap();
    assert!(set.ends_with("; Secure"), "{set}");
    assert!(set.contains("HttpOnly; SameSite=Strict; Path=/console"), "{set}");
}
