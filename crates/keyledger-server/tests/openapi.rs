//! `schemas/openapi.json` is generated from the code: it must not drift, it must describe
//! every served route, and every route it describes must be served.
//!
//! After an intended API change: `KEYLEDGER_BLESS=1 cargo test -p keyledger-server --test
//! openapi`, then review the diff.

mod common;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use keyledger_server::openapi::{ROUTES, document, document_text, status_of};
use tower::ServiceExt as _;

fn checked_in() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json")
}

#[test]
fn the_checked_in_document_matches_the_code() {
    let text = document_text();
    if std::env::var_os("KEYLEDGER_BLESS").is_some() {
        std::fs::write(checked_in(), &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(checked_in()).unwrap_or_default();
    assert!(
        on_disk == text,
        "schemas/openapi.json is stale; run KEYLEDGER_BLESS=1 cargo test -p keyledger-server --test openapi"
    );
}

#[test]
fn every_contract_error_code_is_documented_with_its_status() {
    let contract = [
        ("invalid_request", 400),
        ("unauthenticated", 401),
        ("forbidden", 403),
        ("organization_not_found", 404),
        ("tenant_not_found", 404),
        ("already_registered", 409),
        ("cmk_already_enabled", 409),
        ("cmk_not_enabled", 409),
        ("cmk_locked_by_plan", 409),
        ("plan_not_eligible", 409),
        ("data_lost", 409),
        ("same_key", 409),
        ("idempotency_key_reused", 409),
        ("version_mismatch", 412),
        ("payload_too_large", 413),
        ("key_validation_failed", 422),
        ("key_vault_unavailable", 503),
        ("method_not_allowed", 405),
        ("too_many_streams", 503),
    ];
    let doc = document().to_string();
    for (code, status) in contract {
        assert_eq!(status_of(code), status, "{code}");
        assert!(doc.contains(code), "{code} is not documented");
    }
    // Every request and response body has a schema.
    let doc = document();
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method];
        assert!(op.is_object(), "{} {} missing", route.method, route.path);
        if route.body.is_some() {
            assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object());
        }
    }
    assert!(doc["components"]["schemas"]["OrganizationView"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let store = Arc::new(keyledger_store::InMemoryStore::new(Arc::new(
        keyledger_store::KeyRing::generate(),
    )));
    let sink = Arc::new(keyledger_projection::MemorySink::default());
    let demo = keyledger_server::dev::DemoVault::new();
    let services = common::services(store, sink, &demo);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let router = keyledger_server::router(services, common::test_config(), stopped);
    let id = "01900000-0000-7000-8000-0000000000aa";
    for route in ROUTES {
        let path = route.path.replace("{org}", id).replace("{tenant}", id);
        let request = Request::builder()
            .method(route.method.to_uppercase().as_str())
            .uri(&path)
            .body(Body::empty())
            .unwrap();
        let status = router.clone().oneshot(request).await.unwrap().status().as_u16();
        let expected = if route.roles.is_empty() { 200 } else { 401 };
        assert_eq!(status, expected, "{} {}", route.method, route.path);
    }
    // And an undocumented one is not.
    let request = Request::builder()
        .uri("/v1/undocumented")
        .body(Body::empty())
        .unwrap();
    assert_eq!(router.oneshot(request).await.unwrap().status(), 404);
}

/// What the document says of numbers and `If-Match`, the service does (issue 11, item 13):
/// a position above the documented maximum (`i64::MAX - 1`) or a `limit` outside 1–1000 is a
/// 400, the largest position is not a 500, and an empty `If-Match` sets no precondition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_keeps_the_documented_ranges() {
    use common::{Backend, PLATFORM, Server, TENANT_A};
    let s = Server::start(Backend::Sqlite).await.unwrap();
    let org = common::new_org();
    s.register(&org).await;
    s.tenant_known(TENANT_A).await;
    let too_big = "9223372036854775807";
    for path in [
        format!("/v1/events?after={too_big}"),
        "/v1/events?limit=0".to_owned(),
        "/v1/events?limit=1001".to_owned(),
        format!("/v1/organizations/{org}/events?after_version={too_big}"),
        format!("/v1/organizations/{org}/events?limit=0"),
        format!("/v1/tenants/{TENANT_A}/audit?after={too_big}"),
        format!("/v1/tenants/{TENANT_A}/audit?limit=1001"),
    ] {
        let token = if path.contains("/audit") {
            common::AUDITOR
        } else {
            PLATFORM
        };
        s.send("GET", &path, Some(token), None, &[])
            .await
            .problem(400, "invalid_request");
    }
    s.send(
        "GET",
        "/v1/events/stream",
        Some(PLATFORM),
        None,
        &[("last-event-id", too_big)],
    )
    .await
    .problem(400, "invalid_request");
    let largest = keyledger_server::api::MAX_POSITION.to_string();
    for path in [
        format!("/v1/events?after={largest}&limit=1000"),
        format!("/v1/organizations/{org}/events?after_version={largest}&limit=1"),
        format!("/v1/tenants/{TENANT_A}/audit?after={largest}&limit=1"),
    ] {
        let token = if path.contains("/audit") {
            common::AUDITOR
        } else {
            PLATFORM
        };
        s.send("GET", &path, Some(token), None, &[]).await.expect(200);
    }
    let body = r#"{"plan":{"kind":"enterprise","tier":"premium"},"reason":"r"}"#;
    let plan = format!("/v1/organizations/{org}/plan");
    let reply = s
        .send(
            "PUT",
            &plan,
            Some(common::BILLING),
            Some(body),
            &[("if-match", "")],
        )
        .await
        .expect(200);
    let weak = format!("W/{}", reply.header("etag").unwrap());
    for refused in ["7", "\"\"", "\"+7\"", "\"7", "*", "\"99999999999999999999\""] {
        s.send(
            "PUT",
            &plan,
            Some(common::BILLING),
            Some(body),
            &[("if-match", refused)],
        )
        .await
        .problem(400, "invalid_request");
    }
    s.send(
        "PUT",
        &plan,
        Some(common::BILLING),
        Some(body),
        &[("if-match", &weak)],
    )
    .await
    .expect(200);
    s.shutdown().await;
}
