//! DEK releases for platform services (CONTRACT.md "Data keys for platform services").
//!
//! These routes sit outside the `Idempotency-Key` layer: a release is not a command to
//! replay but a fresh request each time (the customer can refuse the next one), and a
//! remembered response would keep a DEK in memory. Responses say `Cache-Control: no-store`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyledger_app::{ReleaseRequest, Released};
use keyledger_domain::{Actor, DekId, OrgId, ReleaseOf, WrappedBy};
use zeroize::Zeroizing;

use crate::Shared;
use crate::api::ReleasedKey;
use crate::extract::{Caller, CommandHeaders, invalid, path_id};
use crate::problem::Problem;
use crate::routes::organizations::org_path;

pub(crate) async fn release_active(
    State(state): State<Shared>,
    Caller(actor): Caller,
    headers: CommandHeaders,
    Path(org): Path<String>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    release(&state, actor, headers, org, ReleaseOf::Active).await
}

pub(crate) async fn release_by_id(
    State(state): State<Shared>,
    Caller(actor): Caller,
    headers: CommandHeaders,
    Path((org, dek_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let dek_id = match path_id::<u32>("dek_id", &dek_id)? {
        0 => return Err(invalid("dek_id", "DEK ids start at 1")),
        n => DekId(n),
    };
    release(&state, actor, headers, org, ReleaseOf::Dek(dek_id)).await
}

async fn release(
    state: &Shared,
    actor: Actor,
    headers: CommandHeaders,
    org_id: OrgId,
    of: ReleaseOf,
) -> Result<Response, Problem> {
    let released = state
        .services
        .app
        .release(ReleaseRequest {
            org_id,
            actor,
            of,
            source_ip: headers.source_ip,
            correlation_id: headers.correlation_id,
        })
        .await
        .map_err(|e| Problem::from(&e))?;
    state.metrics.released();
    let Released {
        dek_id,
        key,
        wrapped_by,
    } = released;
    let cache_ttl = match wrapped_by {
        WrappedBy::Customer { .. } => state.config.external_cache_ttl,
        WrappedBy::Provider { .. } => state.config.internal_cache_ttl,
    };
    let encoded = Zeroizing::new(STANDARD.encode(key.expose()));
    let body = ReleasedKey {
        dek_id,
        key: encoded,
        wrapped_by,
        cache_ttl_seconds: cache_ttl.as_secs(),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
