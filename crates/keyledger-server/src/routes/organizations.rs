//! Organizations: register, plan, tenants, and the reads of one organization.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyledger_app::{AppError, CommandRequest};
use keyledger_domain::Intent;
use keyledger_domain::{Actor, DomainError, OrgId, Read, StreamVersion, Tenant, TenantId};
use keyledger_projection::{DataKeyInventory, OrganizationView};
use keyledger_store::envelope::StoredEvent;

use crate::Shared;
use crate::api::{ChangePlan, OrgEvents, OrgEventsQuery, PublicEnvelope, RegisterOrganization};
use crate::extract::{Caller, CommandHeaders, JsonBody, Query, path_id};
use crate::problem::Problem;

/// The view with its version as the entity tag, for `If-Match`.
pub(crate) fn view_response(status: StatusCode, view: &OrganizationView) -> Response {
    (
        status,
        [(header::ETAG, format!("\"{}\"", view.version))],
        Json(view),
    )
        .into_response()
}

/// Runs a command and answers with the organization view.
pub(crate) async fn execute(
    state: &Shared,
    actor: Actor,
    org_id: OrgId,
    headers: CommandHeaders,
    intent: Intent,
    status: StatusCode,
) -> Result<Response, Problem> {
    let outcome = state
        .services
        .app
        .handle(CommandRequest {
            org_id,
            actor,
            source_ip: headers.source_ip,
            command_id: headers.command_id,
            correlation_id: headers.correlation_id,
            if_match: headers.if_match,
            intent,
        })
        .await
        .map_err(|e| Problem::from(&e))?;
    state.metrics.appended(outcome.appended);
    Ok(view_response(status, &outcome.view))
}

pub(crate) fn org_path(raw: &str) -> Result<OrgId, Problem> {
    path_id("org", raw)
}

/// The view of an organization the caller may read (the domain's read rules, through the
/// app), or 403/404.
pub(crate) async fn readable_view(
    state: &Shared,
    actor: &Actor,
    read: Read,
    org: OrgId,
) -> Result<OrganizationView, Problem> {
    match state.services.app.readable_view(actor, org, read).await {
        Ok(view) => Ok(view),
        Err(AppError::Rejected(DomainError::Forbidden)) => Err(Problem::forbidden()),
        Err(e) => Err(Problem::from(&e)),
    }
}

pub(crate) async fn register(
    State(state): State<Shared>,
    Caller(actor): Caller,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<RegisterOrganization>,
) -> Result<Response, Problem> {
    let org = match (body.org_id, &headers.command_id) {
        (Some(org), _) => org,
        (None, Some(command)) => org_for_command(command),
        (None, None) => OrgId::new_v7(),
    };
    let intent = Intent::Register {
        name: body.name,
        plan: body.plan,
        tenants: body.tenants,
    };
    execute(&state, actor, org, headers, intent, StatusCode::CREATED).await
}

/// The organization id of a registration that names none but carries an `Idempotency-Key`:
/// derived from the key's command id (a UUIDv8 of its SHA-256), so a repeat after a restart or
/// on another instance registers the same organization, and the store answers it with the first
/// append instead of refusing the key as used on another stream (ADR 0013).
fn org_for_command(command: &keyledger_domain::CommandId) -> OrgId {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::new()
        .chain_update(b"keyledger:org-for-command:")
        .chain_update(command.as_str().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8: custom
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    // Never nil: the version and variant bits are set.
    OrgId::from_uuid(uuid::Uuid::from_bytes(bytes)).unwrap_or_else(|_| OrgId::new_v7())
}

pub(crate) async fn view(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let view = readable_view(&state, &actor, Read::View, org).await?;
    Ok(view_response(StatusCode::OK, &view))
}

pub(crate) async fn change_plan(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<ChangePlan>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let intent = Intent::ChangePlan {
        plan: body.plan,
        reason: body.reason,
    };
    execute(&state, actor, org, headers, intent, StatusCode::OK).await
}

pub(crate) async fn add_tenant(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    headers: CommandHeaders,
    JsonBody(tenant): JsonBody<Tenant>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    execute(
        &state,
        actor,
        org,
        headers,
        Intent::AddTenant(tenant),
        StatusCode::OK,
    )
    .await
}

pub(crate) async fn remove_tenant(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path((org, tenant)): Path<(String, String)>,
    headers: CommandHeaders,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let tenant: TenantId = path_id("tenant", &tenant)?;
    execute(
        &state,
        actor,
        org,
        headers,
        Intent::RemoveTenant(tenant),
        StatusCode::OK,
    )
    .await
}

pub(crate) async fn data_keys(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
) -> Result<Json<DataKeyInventory>, Problem> {
    let org = org_path(&org)?;
    readable_view(&state, &actor, Read::DataKeys, org).await?;
    let inventory = state
        .services
        .app
        .data_keys(org)
        .await
        .map_err(|e| Problem::from(&e))?;
    Ok(Json(inventory))
}

pub(crate) async fn events(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    Query(q): Query<OrgEventsQuery>,
) -> Result<Json<OrgEvents>, Problem> {
    let org = org_path(&org)?;
    // `after_version` and `limit` were held to their ranges when the query was read (`api.rs`).
    let after_version = q.after_version.unwrap_or(0);
    readable_view(&state, &actor, Read::Events, org).await?;
    let limit = usize::try_from(q.limit.unwrap_or(crate::api::DEFAULT_LIMIT)).unwrap_or(usize::MAX);
    let events = state
        .services
        .app
        .stream_page(org, StreamVersion(after_version + 1), limit)
        .await
        .map_err(|e| Problem::from(&e))?
        .into_iter()
        .map(|(stored, event)| public_envelope(stored, &event))
        .collect();
    Ok(Json(OrgEvents { events }))
}

/// A stored envelope with the public payload instead of the stored one.
fn public_envelope(stored: StoredEvent, event: &keyledger_domain::Event) -> PublicEnvelope {
    PublicEnvelope {
        event_id: stored.event_id,
        stream_id: stored.stream_id.to_string(),
        stream_version: stored.stream_version,
        global_position: stored.global_position.0,
        event_type: stored.event_type,
        schema_version: stored.schema_version,
        occurred_at: stored.occurred_at,
        actor: stored.actor,
        correlation_id: stored.correlation_id,
        payload: event.public_payload(),
        prev_hash: stored.prev_hash,
        hash: stored.hash,
    }
}
