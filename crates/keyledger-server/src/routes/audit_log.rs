//! The verifiable audit log (CONTRACT.md "Verifiable audit log", ADR 0024–0027): signed
//! checkpoints, inclusion and consistency proofs, and an organization's bundle for
//! `keyledger audit verify`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyledger_app::{AppError, SignedCheckpoint};
use keyledger_audit::Bundle;
use keyledger_domain::{CrossRead, OrgId, Read, StreamId, StreamVersion, authorize_cross_read};
use keyledger_store::merkle::{AuditLog, AuditTrees, Hash, TreeError};

use crate::Shared;
use crate::api::{AuditPublicKey, ConsistencyProof, ConsistencyQuery, InclusionProof, InclusionProofQuery};
use crate::extract::{Caller, Query, invalid};
use crate::openapi::CHECKPOINT_TYPE;
use crate::problem::Problem;
use crate::routes::organizations::{org_path, readable_view};

/// `GET /v1/audit/public-key`: no token needed; the key is public.
pub(crate) async fn public_key(State(state): State<Shared>) -> Json<AuditPublicKey> {
    Json(AuditPublicKey {
        verifier_key: state.services.checkpointer.verifier_key(),
        algorithm: "ed25519",
    })
}

/// `GET /v1/audit/checkpoint`: the global log's latest checkpoint.
pub(crate) async fn global_checkpoint(
    State(state): State<Shared>,
    Caller(actor): Caller,
) -> Result<Response, Problem> {
    authorize_cross_read(&actor, CrossRead::GlobalAuditLog).map_err(|_| Problem::forbidden())?;
    let checkpointer = &state.services.checkpointer;
    let latest = match checkpointer.latest(AuditLog::Global).await.map_err(app_problem)? {
        Some(latest) => Some(latest),
        // None signed yet (a new store): sign the log as it is.
        None => checkpointer
            .current(AuditLog::Global)
            .await
            .map_err(app_problem)?,
    };
    checkpoint_response(latest)
}

/// `GET /v1/organizations/{org}/audit/checkpoint`.
pub(crate) async fn org_checkpoint(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
) -> Result<Response, Problem> {
    let org = readable_org(&state, &actor, &org).await?;
    checkpoint_response(Some(current(&state, org).await?))
}

/// `GET /v1/organizations/{org}/audit/proof?version=V&tree_size=N`.
pub(crate) async fn inclusion_proof(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    Query(q): Query<InclusionProofQuery>,
) -> Result<Json<InclusionProof>, Problem> {
    let version = at_least_one("version", q.version)?;
    if q.tree_size == Some(0) {
        return Err(invalid("tree_size", "must be at least 1"));
    }
    let org = readable_org(&state, &actor, &org).await?;
    let tree_size = match q.tree_size {
        Some(size) => size,
        None => current(&state, org).await?.tree_size,
    };
    if version > tree_size {
        return Err(invalid(
            "version",
            format!("version {version} is not in the tree of size {tree_size}"),
        ));
    }
    let log = AuditLog::Org(org);
    let trees = trees(&state);
    let index = version - 1;
    let hashes = trees
        .inclusion_proof(log, index, tree_size)
        .await
        .map_err(|e| tree_problem(e, "tree_size"))?;
    let leaf = trees
        .leaf_hashes(log, index, version)
        .await
        .map_err(|e| tree_problem(e, "version"))?;
    let leaf_hash = leaf.first().ok_or_else(|| {
        tracing::error!(%org, version, "the stored tree has no leaf where its proof ends");
        Problem::internal_error()
    })?;
    Ok(Json(InclusionProof {
        leaf_index: index,
        tree_size,
        leaf_hash: B64.encode(leaf_hash),
        hashes: encode(&hashes),
    }))
}

/// `GET /v1/organizations/{org}/audit/consistency?from=N1&to=N2`.
pub(crate) async fn consistency_proof(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, Problem> {
    let from = q.from.ok_or_else(|| invalid("from", "is required"))?;
    let to = q.to.ok_or_else(|| invalid("to", "is required"))?;
    if from > to {
        return Err(invalid("from", "must be at most `to`"));
    }
    let org = readable_org(&state, &actor, &org).await?;
    let hashes = trees(&state)
        .consistency_proof(AuditLog::Org(org), from, to)
        .await
        .map_err(|e| tree_problem(e, "to"))?;
    Ok(Json(ConsistencyProof {
        from,
        to,
        hashes: encode(&hashes),
    }))
}

/// `GET /v1/organizations/{org}/audit/bundle`: every event of the organization's log up to
/// its latest checkpoint, with that checkpoint.
pub(crate) async fn bundle(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Path(org): Path<String>,
) -> Result<Json<Bundle>, Problem> {
    let org = readable_org(&state, &actor, &org).await?;
    let checkpoint = current(&state, org).await?;
    let mut events = state
        .services
        .store
        .read_stream(StreamId::for_org(org), StreamVersion(1))
        .await
        .map_err(|e| app_problem(AppError::Store(e)))?;
    let size = usize::try_from(checkpoint.tree_size).unwrap_or(usize::MAX);
    if events.len() < size {
        tracing::error!(%org, held = events.len(), size, "the store holds fewer events than the log's checkpoint");
        return Err(Problem::internal_error());
    }
    events.truncate(size);
    Ok(Json(Bundle::build(org, &events, checkpoint.note)))
}

/// The organization named by `raw`, once the caller may read its audit log (else 400, 403 or
/// 404).
async fn readable_org(state: &Shared, actor: &keyledger_domain::Actor, raw: &str) -> Result<OrgId, Problem> {
    let org = org_path(raw)?;
    readable_view(state, actor, Read::AuditLog, org).await?;
    Ok(org)
}

/// The organization log's latest checkpoint, signed now if the log grew. An organization
/// whose first event the audit tree has not folded yet has none: 503, retry in a moment.
async fn current(state: &Shared, org: OrgId) -> Result<SignedCheckpoint, Problem> {
    state
        .services
        .checkpointer
        .current(AuditLog::Org(org))
        .await
        .map_err(app_problem)?
        .ok_or_else(catching_up)
}

fn checkpoint_response(checkpoint: Option<SignedCheckpoint>) -> Result<Response, Problem> {
    let checkpoint = checkpoint.ok_or_else(catching_up)?;
    Ok(([(header::CONTENT_TYPE, CHECKPOINT_TYPE)], checkpoint.note).into_response())
}

fn catching_up() -> Problem {
    Problem::store_unavailable()
        .with_detail("the audit log has not folded this log's first event yet; retry in a moment")
}

fn trees(state: &Shared) -> &dyn AuditTrees {
    state.services.projections.as_ref()
}

fn at_least_one(field: &str, value: Option<u64>) -> Result<u64, Problem> {
    match value {
        None => Err(invalid(field, "is required")),
        Some(0) => Err(invalid(field, "must be at least 1")),
        Some(v) => Ok(v),
    }
}

fn encode(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

/// A failed tree read: sizes the log has not reached are the caller's (400 naming `field`).
fn tree_problem(e: TreeError, field: &str) -> Problem {
    match e {
        TreeError::SizeBeyondTree { size, tree_size, .. } => invalid(
            field,
            format!("the log holds {tree_size} leaves, fewer than {size}"),
        ),
        TreeError::IndexOutOfRange { .. } | TreeError::SizesOutOfOrder { .. } => {
            invalid(field, e.to_string())
        }
        other => app_problem(AppError::Tree(other)),
    }
}

fn app_problem(e: AppError) -> Problem {
    Problem::from(&e)
}
