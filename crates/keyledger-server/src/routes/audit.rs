//! The tenant-level audit, for auditors (the seed's "Audit page in Orchestrator").

use axum::Json;
use axum::extract::{Path, State};
use keyledger_domain::{Actor, CrossRead, Reach, TenantId, authorize_cross_read};
use keyledger_projection::AuditQuery;

use crate::Shared;
use crate::api::{AuditPage, AuditQueryParams};
use crate::extract::{Caller, Query, cursor, path_id};
use crate::problem::{FieldError, Problem};

use crate::api::DEFAULT_LIMIT;

fn sink_failed(e: keyledger_projection::SinkError) -> Problem {
    if let keyledger_projection::SinkError::Unavailable(cause) = &e {
        tracing::warn!(error = %cause, "audit query refused: no connection in time");
        return Problem::store_unavailable();
    }
    tracing::error!(error = %e, "audit query failed");
    Problem::internal_error()
}

/// `GET /v1/tenants/{tenant}/audit`: auditors, organization administrators and support, each
/// within their tenant scope; a caller limited to some organizations sees only their rows.
/// `organizations = []` does not narrow: the tenant scope alone decides.
pub(crate) async fn tenant_audit(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(tenant): Path<String>,
    Query(q): Query<AuditQueryParams>,
) -> Result<Json<AuditPage>, Problem> {
    let tenant: TenantId = path_id("tenant", &tenant)?;
    audit_page(&state, &actor, tenant, &q).await.map(Json)
}

/// One page of `tenant`'s audit as `actor` may see it (403 out of scope, 404 for an unknown
/// tenant, 400 for a bad cursor): the API's `GET /v1/tenants/{tenant}/audit` and the console's
/// audit page and CSV both read through here.
pub(crate) async fn audit_page(
    state: &Shared,
    actor: &Actor,
    tenant: TenantId,
    q: &AuditQueryParams,
) -> Result<AuditPage, Problem> {
    authorize_cross_read(actor, CrossRead::TenantAudit(tenant)).map_err(|_| Problem::forbidden())?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .and_then(|after| cursor("after", after).ok())
            .ok_or_else(|| {
                Problem::invalid(vec![FieldError {
                    field: "after".into(),
                    message: "must be the `next` cursor of an earlier page".into(),
                }])
            })?,
    };
    let sink = &state.services.projections;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let rows = sink
        .audit(&AuditQuery {
            tenant,
            after,
            limit,
            action: q.action.clone(),
            since: q.since,
            until: q.until,
        })
        .await
        .map_err(sink_failed)?;
    // Only an empty page needs to ask whether the tenant exists at all.
    if rows.is_empty() && !sink.tenant_known(tenant).await.map_err(sink_failed)? {
        return Err(Problem::tenant_not_found());
    }
    let next = (rows.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| rows.last().map(|r| r.position.to_string()))
        .flatten();
    // CONTRACT.md "Tenant audit scope": `tenants` governs; `organizations` narrows the rows
    // only when it lists some (an auditor of a tenant often has no organization of its own).
    // An empty list widens nothing for a token whose tenants are "*": such a token names no
    // tenant and no organization, so it sees no row (ADR 0016).
    let entries = match (&actor.scope.organizations, &actor.scope.tenants) {
        (Reach::Only(orgs), _) if !orgs.is_empty() => {
            rows.into_iter().filter(|r| orgs.contains(&r.org_id)).collect()
        }
        (Reach::Only(_), Reach::All) => Vec::new(),
        (Reach::All, _) | (Reach::Only(_), Reach::Only(_)) => rows,
    };
    Ok(AuditPage { entries, next })
}
