//! `Idempotency-Key` on POST, PUT, PATCH and DELETE (CONTRACT.md):
//!
//! - a repeat with the same method, path, `If-Match` and body returns the first response and
//!   appends nothing;
//! - the same key with another request gets 409 `idempotency_key_reused`;
//! - concurrent repeats wait for the first to finish.
//!
//! Keys are scoped by (token subject, method, path): the same key on another path is another
//! key (CONTRACT.md, second phase). Responses are remembered in this process
//! for [`RETENTION`], at most [`CAPACITY`] of them; the key is also passed down as the
//! command id, so the store refuses a second append of the same command even after a restart
//! or on another instance (ADR 0013).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyledger_domain::CommandId;
use sha2::{Digest as _, Sha256};

use crate::Shared;
use crate::extract::Authenticated;
use crate::problem::{FieldError, Problem};

/// How long a response is replayed.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How many responses are kept; the oldest go first.
pub const CAPACITY: usize = 20_000;
/// The longest accepted key.
pub const MAX_KEY_LEN: usize = 200;

/// A remembered response.
#[derive(Clone)]
struct Recorded {
    fingerprint: [u8; 32],
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Recorded>>>;

/// The remembered responses, by (subject, method, path, key).
#[derive(Default)]
pub struct Replays {
    inner: Mutex<ReplayTable>,
}

#[derive(Default)]
struct ReplayTable {
    slots: HashMap<[u8; 32], Slot>,
    order: VecDeque<[u8; 32]>,
}

impl std::fmt::Debug for Replays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replays").finish_non_exhaustive()
    }
}

impl Replays {
    fn slot(&self, id: [u8; 32]) -> Slot {
        let mut table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = table.slots.get(&id) {
            return slot.clone();
        }
        while table.order.len() >= CAPACITY {
            if let Some(old) = table.order.pop_front() {
                table.slots.remove(&old);
            }
        }
        let slot = Slot::default();
        table.slots.insert(id, slot.clone());
        table.order.push_back(id);
        slot
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(u64::try_from(p.len()).expect("usize fits in u64").to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn mutating(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The middleware. Without a key, or on a read, it does nothing.
pub(crate) async fn layer(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let Some(key) = request.headers().get("idempotency-key").cloned() else {
        return next.run(request).await;
    };
    if !mutating(request.method()) {
        return next.run(request).await;
    }
    let key = match key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
    {
        Some(k) => k.to_owned(),
        None => {
            return Problem::invalid(vec![FieldError {
                field: "idempotency-key".into(),
                message: format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            }])
            .into_response();
        }
    };
    // Unauthenticated requests go on to get their 401; keys belong to a subject.
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Ok(actor) = state.services.tokens.authenticate(authorization).await else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    // The handler's `Caller` takes this actor rather than verifying the token again.
    parts.extensions.insert(Authenticated(actor.clone()));
    let body = match to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return Problem::payload_too_large(state.config.max_body_bytes).into_response(),
    };
    // The scope of the key, and so of the command id the store sees: one command on one
    // organization's path never shares an id with a command elsewhere.
    let id = digest(&[
        actor.id.as_bytes(),
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        key.as_bytes(),
    ]);
    // What makes two requests the same: the query, the precondition and the body. A repeat
    // with another (or a malformed) `If-Match` is another request, never a replayed success.
    let if_match = parts
        .headers
        .get(header::IF_MATCH)
        .map_or(&[][..], |v| v.as_bytes());
    let fingerprint = digest(&[parts.uri.query().unwrap_or_default().as_bytes(), if_match, &body]);
    let slot = state.idempotency.slot(id);
    let mut recorded = slot.lock().await;
    if let Some(r) = recorded.as_ref().filter(|r| r.at.elapsed() < RETENTION) {
        if r.fingerprint != fingerprint {
            return Problem::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "Idempotency key reused",
            )
            .with_detail("this Idempotency-Key was used for a different request")
            .into_response();
        }
        state.metrics.idempotent_replay();
        let mut response = (r.status, r.body.clone()).into_response();
        *response.headers_mut() = r.headers.clone();
        response
            .headers_mut()
            .insert("idempotent-replayed", header::HeaderValue::from_static("true"));
        return response;
    }
    if let Ok(command_id) = CommandId::parse(&format!("idem-{}", hex::encode(&id[..16]))) {
        parts.extensions.insert(command_id);
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    // 5xx are not remembered: the client should be able to retry them.
    if response.status().is_server_error() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    *recorded = Some(Recorded {
        fingerprint,
        status: parts.status,
        headers: parts.headers.clone(),
        body: body.clone(),
        at: Instant::now(),
    });
    Response::from_parts(parts, Body::from(body))
}
