//! Errors at the boundary: every failure becomes an `application/problem+json` body with a
//! CONTRACT.md code. Internal text (SQL, store details) stays in the logs.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyledger_app::AppError;
use keyledger_domain::DomainError;
use serde::Serialize;

/// What a 503 `store_unavailable` asks the client to wait.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One invalid field of a request (400 `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A problem+json body (RFC 9457) with keyledger's `code` and extensions.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `key_validation_failed` and `key_vault_unavailable`: the DESIGN.md §4 reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For `key_validation_failed`: `"old"` or `"new"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'static str>,
    /// For `invalid_request`: the failing fields. Absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    #[schemars(skip)]
    pub retry_after: Option<Duration>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, title: &str) -> Self {
        Self {
            type_uri: format!("urn:keyledger:problem:{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            code,
            detail: None,
            reason: None,
            key: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Asks the client to retry after `after` (the `Retry-After` header of a 503).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required",
        )
        .with_detail("send Authorization: Bearer <token>")
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is invalid",
        );
        p.errors = errors;
        p
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .with_detail("the token's roles or scope do not cover this request")
    }

    pub fn organization_not_found() -> Self {
        domain(&DomainError::OrganizationNotFound)
    }

    pub fn tenant_not_found() -> Self {
        domain(&DomainError::TenantNotFound)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
        )
        .with_detail(format!("the body must be at most {limit} bytes"))
    }

    /// 503 `store_unavailable` with `Retry-After`: the event store gave no connection in time
    /// (or does not answer). Nothing was recorded; the caller may retry.
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "The event store is not answering",
        )
        .with_detail("the event store is busy or unreachable; nothing was recorded; retry")
        .with_retry_after(STORE_RETRY_AFTER)
    }

    /// A 500 whose cause the caller logged; it is never sent.
    pub fn internal_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
        )
        .with_detail("the failure was logged; retry later or contact the operator")
    }
}

fn domain(e: &DomainError) -> Problem {
    let (status, title) = match e {
        DomainError::Forbidden => (StatusCode::FORBIDDEN, "Forbidden"),
        DomainError::OrganizationNotFound => (StatusCode::NOT_FOUND, "Organization not found"),
        DomainError::TenantNotFound => (StatusCode::NOT_FOUND, "Tenant not found"),
        DomainError::InvalidRequest { field, message } => {
            return Problem::invalid(vec![FieldError {
                field: (*field).to_owned(),
                message: message.clone(),
            }]);
        }
        DomainError::EvidenceMismatch(_) => {
            tracing::error!(error = %e, "key-test evidence did not match the state");
            return Problem::internal_error();
        }
        DomainError::NotOpen(_) => {
            tracing::error!(error = %e, "a protected field of the loaded state is not open");
            return Problem::internal_error();
        }
        DomainError::AlreadyRegistered { .. } => (StatusCode::CONFLICT, "Already registered"),
        DomainError::CmkAlreadyEnabled => (StatusCode::CONFLICT, "Customer-managed key already enabled"),
        DomainError::CmkNotEnabled => (StatusCode::CONFLICT, "Customer-managed key not enabled"),
        DomainError::CmkLockedByPlan => (StatusCode::CONFLICT, "Customer-managed key locked by the plan"),
        DomainError::PlanNotEligible { .. } => (StatusCode::CONFLICT, "Plan not eligible"),
        DomainError::DataLost => (StatusCode::CONFLICT, "Customer data declared lost"),
        DomainError::SameKey => (StatusCode::CONFLICT, "Same key"),
        DomainError::DataKeyNotFound { .. } => (StatusCode::NOT_FOUND, "Data key not found"),
        DomainError::KeyUnavailable { reason } => {
            let mut p = Problem::new(StatusCode::CONFLICT, e.code(), "Key unavailable").with_detail(format!(
                "{e}; no data key under it is released until a probe records a recovery"
            ));
            p.reason = Some(reason.as_str());
            return p;
        }
        // A new domain error must get its status here; until then it is a server bug.
        _ => {
            tracing::error!(error = %e, "domain error without an HTTP mapping");
            return Problem::internal_error();
        }
    };
    Problem::new(status, e.code(), title).with_detail(e.to_string())
}

impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Self {
        domain(&e)
    }
}

/// A store failure: 503 when no connection came in time, otherwise a 500 whose cause is logged.
impl From<keyledger_store::StoreError> for Problem {
    fn from(e: keyledger_store::StoreError) -> Self {
        Problem::from(&AppError::Store(e))
    }
}

impl From<&AppError> for Problem {
    fn from(e: &AppError) -> Self {
        match e {
            AppError::Rejected(d) => domain(d),
            AppError::KeyValidationFailed { key, error, .. } => {
                let mut p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "key_validation_failed",
                    "The key failed its test",
                )
                .with_detail(format!("the {} key: {}", key.as_str(), error.reason));
                p.reason = Some(error.reason.code());
                p.key = Some(key.as_str());
                p
            }
            AppError::VaultUnavailable {
                error, retry_after, ..
            } => {
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_vault_unavailable",
                    "The key vault is unavailable",
                )
                .with_detail(format!("{}; retry later", error.reason))
                .with_retry_after(*retry_after);
                p.reason = Some(error.reason.code());
                p
            }
            AppError::KeyUnavailable { error } => {
                let mut p =
                    Problem::new(StatusCode::CONFLICT, "key_unavailable", "Key unavailable").with_detail(
                        format!("the customer's key vault refused the unwrap: {}", error.reason),
                    );
                p.reason = Some(error.reason.code());
                p
            }
            AppError::VersionMismatch { expected, actual } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                "Version mismatch",
            )
            .with_detail(format!(
                "If-Match named version {expected}; the organization is at {actual}"
            )),
            AppError::CommandIdReused => Problem::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "Idempotency key reused",
            )
            .with_detail("this Idempotency-Key was used for a command on another organization"),
            AppError::Contended => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "key_vault_unavailable",
                "Too many concurrent changes",
            )
            .with_detail("the organization is being changed concurrently; retry")
            .with_retry_after(Duration::from_secs(1)),
            AppError::Tree(keyledger_store::merkle::TreeError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "request refused: no projection-store connection in time");
                Problem::store_unavailable()
            }
            AppError::Store(keyledger_store::StoreError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "request refused: no event-store connection in time");
                Problem::store_unavailable()
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Problem::internal_error()
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_app::KeyRole;
    use keyledger_keys::{KeyAccessError, Reason};

    fn status_and_code(e: AppError) -> (u16, &'static str) {
        let p = Problem::from(&e);
        (p.status, p.code)
    }

    #[test]
    fn every_domain_error_maps_to_its_contract_status() {
        use DomainError::*;
        let cases = [
            (Forbidden, 403, "forbidden"),
            (OrganizationNotFound, 404, "organization_not_found"),
            (TenantNotFound, 404, "tenant_not_found"),
            (
                AlreadyRegistered { what: "organization" },
                409,
                "already_registered",
            ),
            (CmkAlreadyEnabled, 409, "cmk_already_enabled"),
            (CmkNotEnabled, 409, "cmk_not_enabled"),
            (CmkLockedByPlan, 409, "cmk_locked_by_plan"),
            (PlanNotEligible { plan: "free".into() }, 409, "plan_not_eligible"),
            (DataLost, 409, "data_lost"),
            (SameKey, 409, "same_key"),
            (
                InvalidRequest {
                    field: "reason",
                    message: "x".into(),
                },
                400,
                "invalid_request",
            ),
            (EvidenceMismatch("bug"), 500, "internal_error"),
        ];
        for (e, status, code) in cases {
            assert_eq!(status_and_code(AppError::Rejected(e)), (status, code));
        }
    }

    #[test]
    fn key_failures_carry_reason_and_key() {
        let p = Problem::from(&AppError::KeyValidationFailed {
            key: KeyRole::New,
            error: KeyAccessError::new(Reason::KeyDisabled),
            checks: vec![],
        });
        assert_eq!(
            (p.status, p.code, p.reason, p.key),
            (422, "key_validation_failed", Some("key_disabled"), Some("new"))
        );
        let p = Problem::from(&AppError::VaultUnavailable {
            key: KeyRole::Old,
            error: KeyAccessError::new(Reason::Throttled),
            retry_after: Duration::from_secs(10),
        });
        assert_eq!((p.status, p.code), (503, "key_vault_unavailable"));
        let response = p.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn a_command_id_reused_on_another_organization_is_409_idempotency_key_reused() {
        assert_eq!(
            status_and_code(AppError::CommandIdReused),
            (409, "idempotency_key_reused")
        );
    }

    #[test]
    fn no_store_connection_in_time_is_503_with_retry_after() {
        let e = keyledger_store::StoreError::Unavailable("pool timed out".into());
        let p = Problem::from(e);
        assert_eq!((p.status, p.code), (503, "store_unavailable"));
        let body = serde_json::to_string(&p).unwrap();
        assert!(!body.contains("pool timed out"), "{body}");
        let response = p.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn a_stale_version_is_412() {
        let e = AppError::VersionMismatch {
            expected: keyledger_domain::StreamVersion(2),
            actual: keyledger_domain::StreamVersion(5),
        };
        assert_eq!(status_and_code(e), (412, "version_mismatch"));
    }

    #[test]
    fn internal_failures_hide_their_cause() {
        let p = Problem::from(&AppError::Internal("the stored secret is not open"));
        let body = serde_json::to_string(&p).unwrap();
        assert_eq!(p.status, 500);
        assert!(!body.contains("secret"), "{body}");
    }

    #[test]
    fn the_body_has_the_contract_shape() {
        let p = Problem::from(&AppError::Rejected(DomainError::CmkLockedByPlan));
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:keyledger:problem:cmk_locked_by_plan");
        assert_eq!(v["status"], 409);
        assert_eq!(v["code"], "cmk_locked_by_plan");
        assert!(v["title"].is_string());
        assert!(v.get("errors").is_none());
    }
}
