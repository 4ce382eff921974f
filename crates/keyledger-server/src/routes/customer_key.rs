//! The customer-managed key: test, enable ("Test and save"), edit, rotate, switch back to
//! provider-managed, declare data lost, and key health.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyledger_app::{AppError, KeyRole};
use keyledger_domain::{Connection, ConnectionPatch, HostAllowList, Intent};

use super::organizations::{execute, org_path, readable_view};
use crate::Shared;
use crate::api::{
    CheckResult, ConnectionBody, ConnectionPatchBody, DataLossBody, KeyHealth, RotationBody, SwitchQuery,
    TestResult, TestedKey,
};
use crate::extract::{Caller, CommandHeaders, JsonBody, Query, key_identifier};
use crate::problem::Problem;

fn connection(body: ConnectionBody, hosts: &HostAllowList) -> Result<Connection, Problem> {
    Ok(Connection {
        directory_id: body.directory_id,
        application_id: body.application_id,
        key_identifier: key_identifier("key_identifier", &body.key_identifier, hosts)?,
        client_secret: body.client_secret,
    })
}

pub(crate) async fn test(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<ConnectionBody>,
) -> Result<Json<TestResult>, Problem> {
    let org = org_path(&org)?;
    let connection = connection(body, &state.config.allowed_vault_hosts)?;
    let report = state
        .services
        .app
        .test_connection(org, &actor, &connection)
        .await
        .map_err(|e| Problem::from(&e))?;
    let checks = report
        .checks
        .iter()
        .map(|c| CheckResult {
            name: serde_json::to_value(c.name)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            ok: c.ok,
        })
        .collect();
    match report.outcome {
        Ok(validated) => {
            let key = validated.key();
            let properties = validated.properties();
            Ok(Json(TestResult {
                ok: true,
                reason: None,
                checks,
                key: Some(TestedKey {
                    key_identifier: key.to_string(),
                    key_version: key.version().map(str::to_owned),
                    kty: properties.kty.clone(),
                    key_size: properties.key_size,
                    expires_at: properties.expires_at,
                }),
            }))
        }
        // An outage is not a verdict on the key: 503, try again.
        Err(error) if error.reason.is_transient() => Err(Problem::from(&AppError::VaultUnavailable {
            key: KeyRole::New,
            error,
            retry_after: std::time::Duration::from_secs(5),
        })),
        Err(error) => Ok(Json(TestResult {
            ok: false,
            reason: Some(error.reason.code().to_owned()),
            checks,
            key: None,
        })),
    }
}

pub(crate) async fn enable(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<ConnectionBody>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let connection = connection(body, &state.config.allowed_vault_hosts)?;
    let intent = Intent::EnableCustomerManagedKey(connection);
    execute(&state, actor, org, headers, intent, StatusCode::CREATED).await
}

pub(crate) async fn edit(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<ConnectionPatchBody>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let key_identifier = body
        .key_identifier
        .map(|k| key_identifier("key_identifier", &k, &state.config.allowed_vault_hosts))
        .transpose()?;
    let patch = ConnectionPatch {
        directory_id: body.directory_id,
        application_id: body.application_id,
        client_secret: body.client_secret,
        key_identifier,
    };
    let intent = Intent::EditCustomerManagedKey(patch);
    execute(&state, actor, org, headers, intent, StatusCode::OK).await
}

pub(crate) async fn rotate(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<RotationBody>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let key = key_identifier(
        "key_identifier",
        &body.key_identifier,
        &state.config.allowed_vault_hosts,
    )?;
    let patch = ConnectionPatch {
        directory_id: body.directory_id,
        application_id: body.application_id,
        client_secret: body.client_secret,
        key_identifier: Some(key),
    };
    let intent = Intent::RotateCustomerManagedKey(patch);
    execute(&state, actor, org, headers, intent, StatusCode::OK).await
}

pub(crate) async fn switch_to_provider(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    Query(q): Query<SwitchQuery>,
    headers: CommandHeaders,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let intent = Intent::SwitchToProviderManagedKey {
        abandon_lost_data: q.abandon_lost_data,
    };
    execute(&state, actor, org, headers, intent, StatusCode::OK).await
}

pub(crate) async fn declare_data_lost(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<DataLossBody>,
) -> Result<Response, Problem> {
    let org = org_path(&org)?;
    let intent = Intent::DeclareDataLost {
        reason: body.reason,
        ticket: body.ticket,
    };
    execute(&state, actor, org, headers, intent, StatusCode::OK).await
}

pub(crate) async fn health(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
) -> Result<Json<KeyHealth>, Problem> {
    let org = org_path(&org)?;
    let view = readable_view(&state, &actor, keyledger_domain::Read::View, org).await?;
    let health = view
        .encryption
        .health
        .ok_or(keyledger_domain::DomainError::CmkNotEnabled)?;
    Ok(Json(KeyHealth {
        status: health.status,
        since: health.since,
        detail: health.detail,
        recoverable_until: health.recoverable_until,
        last_probe_at: state.services.monitor.last_probe_at(org),
    }))
}

pub(crate) async fn probe(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
) -> Result<Json<KeyHealth>, Problem> {
    let org = org_path(&org)?;
    let result = state
        .services
        .monitor
        .probe_for(&actor, org)
        .await
        .map_err(|e| Problem::from(&e))?;
    Ok(Json(KeyHealth {
        status: result.status,
        since: result.since,
        detail: result.detail,
        recoverable_until: result.recoverable_until,
        last_probe_at: Some(result.last_probe_at),
    }))
}
