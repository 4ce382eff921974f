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
