//! The route table and the middleware around it.

pub(crate) mod audit;
mod audit_log;
mod customer_key;
mod data_keys;
mod events;
mod ops;
mod organizations;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::Shared;
use crate::problem::Problem;

/// The path of the SSE stream: the one route without a request timeout.
pub(crate) const STREAM_PATH: &str = "/v1/events/stream";

pub(crate) fn build(state: Shared) -> Router {
    let org = "/v1/organizations/{org}";
    let cmk = "/v1/organizations/{org}/customer-managed-key";
    let v1 = Router::new()
        .route("/v1/organizations", post(organizations::register))
        .route(org, get(organizations::view))
        .route(
            &format!("{org}/plan"),
            axum::routing::put(organizations::change_plan),
        )
        .route(&format!("{org}/tenants"), post(organizations::add_tenant))
        .route(
            &format!("{org}/tenants/{{tenant}}"),
            axum::routing::delete(organizations::remove_tenant),
        )
        .route(&format!("{cmk}/test"), post(customer_key::test))
        .route(
            cmk,
            post(customer_key::enable)
                .patch(customer_key::edit)
                .delete(customer_key::switch_to_provider),
        )
        .route(&format!("{cmk}/rotation"), post(customer_key::rotate))
        .route(&format!("{org}/data-loss"), post(customer_key::declare_data_lost))
        .route(&format!("{org}/key-health"), get(customer_key::health))
        .route(&format!("{org}/key-health/probe"), post(customer_key::probe))
        .route(&format!("{org}/data-keys"), get(organizations::data_keys))
        .route(&format!("{org}/events"), get(organizations::events))
        .route(&format!("{org}/audit/checkpoint"), get(audit_log::org_checkpoint))
        .route(&format!("{org}/audit/proof"), get(audit_log::inclusion_proof))
        .route(
            &format!("{org}/audit/consistency"),
            get(audit_log::consistency_proof),
        )
        .route(&format!("{org}/audit/bundle"), get(audit_log::bundle))
        .route("/v1/audit/checkpoint", get(audit_log::global_checkpoint))
        .route("/v1/audit/public-key", get(audit_log::public_key))
        .route("/v1/tenants/{tenant}/audit", get(audit::tenant_audit))
        .route("/v1/events", get(events::page))
        .route(STREAM_PATH, get(events::stream))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::layer,
        ));
    // Outside the idempotency layer: see `data_keys`.
    let releases = Router::new()
        .route(
            &format!("{org}/data-keys/active/release"),
            post(data_keys::release_active),
        )
        .route(
            &format!("{org}/data-keys/{{dek_id}}/release"),
            post(data_keys::release_by_id),
        );
    Router::new()
        .merge(v1)
        .merge(releases)
        // The console: HTML pages outside `/v1`, the idempotency layer and the OpenAPI document.
        .merge(crate::console::routes())
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(refuse_unknown_methods))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_oversized_bodies,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            Problem::internal_error().into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The most of an oversized body that is read (and dropped) so its client gets the 413.
const OVERSIZED_READ: usize = 1024 * 1024;

/// A body whose `Content-Length` is over `max_body_bytes` (and at most [`OVERSIZED_READ`]) is
/// read to its end before the request goes on, with only its first `max_body_bytes + 1` bytes
/// kept, so the handler still answers 413 (after authentication, as before). Answering while
/// the client is still sending makes the server close a connection with unread data, and the
/// client may then see a reset instead of the 413.
async fn read_oversized_bodies(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if !declared.is_some_and(|n| n > limit && n <= OVERSIZED_READ) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let kept = match axum::body::to_bytes(body, OVERSIZED_READ).await {
        Ok(bytes) => bytes.slice(..bytes.len().min(limit.saturating_add(1))),
        Err(_) => axum::body::Bytes::new(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(kept)))
        .await
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found").with_detail("no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
    .with_detail("the Allow header lists the methods this route serves")
}

/// The methods the API knows, each its own metric label; any other is [`OTHER_METHOD`].
const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const OTHER_METHOD: &str = "other";

/// A bounded metric label for `method`: a caller cannot add labels by making methods up.
fn method_label(method: &Method) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or(OTHER_METHOD)
}

/// 405 for a method the API does not know. On a route, the route's own 405 answers (it
/// names the allowed methods); elsewhere no method is allowed, not even this one.
async fn refuse_unknown_methods(request: Request, next: Next) -> Response {
    let on_route = request.extensions().get::<MatchedPath>().is_some();
    if on_route || method_label(request.method()) != OTHER_METHOD {
        return next.run(request).await;
    }
    let mut response = method_not_allowed().await.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(""));
    response
}

/// Ends a request that takes longer than `server.request_timeout` with a 503. The SSE stream
/// is exempt: it is meant to stay open.
async fn timeout(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if request.uri().path() == STREAM_PATH {
        return next.run(request).await;
    }
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            "The request took too long",
        )
        .with_detail("the request was abandoned; nothing was recorded unless a retry shows it was")
        .with_retry_after(std::time::Duration::from_secs(1))
        .into_response(),
    }
}

/// Counts each request by method, route and status. Every label comes from a bounded set:
/// a known method or `other`, a route pattern or `unmatched`, a status the service sends.
async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    if method != "OPTIONS" {
        state
            .metrics
            .request(method, &route, response.status().as_u16(), started.elapsed());
    }
    response
}
