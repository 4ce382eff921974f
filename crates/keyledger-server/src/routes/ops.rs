//! Liveness, readiness and metrics; no token needed.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use keyledger_domain::GlobalPosition;
use serde_json::{Value, json};

use crate::Shared;
use crate::problem::Problem;

/// How long readiness waits for the store.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 only while the store answers a read.
pub(crate) async fn readyz(State(state): State<Shared>) -> Result<Json<Value>, Problem> {
    let read = state.services.store.read_all(GlobalPosition(0), 1);
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, read).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store failed");
            Err(Problem::store_unavailable())
        }
        Err(_) => {
            tracing::warn!("readiness: the store did not answer in time");
            Err(Problem::store_unavailable())
        }
    }
}

pub(crate) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
