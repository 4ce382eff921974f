//! What a request can fail with. Domain refusals and key-test failures are the caller's to
//! fix; store failures are ours.

use std::time::Duration;

use keyledger_domain::{DomainError, StreamVersion};
use keyledger_keys::{Check, KeyAccessError, Reason};
use keyledger_store::StoreError;
use keyledger_store::merkle::TreeError;

/// Which key a failed key test was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// The key in use (rotation's old key, or the key a switch unwraps with).
    Old,
    /// The key being enabled, edited or rotated to.
    New,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Old => "old",
            KeyRole::New => "new",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The rules refuse the command (a CONTRACT.md 4xx code). Nothing was recorded.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// A key test failed definitively (422 `key_validation_failed`). Fix the key or the
    /// connection and try again. Nothing was recorded.
    #[error("the {} key failed its test: {}", key.as_str(), error.reason)]
    KeyValidationFailed {
        key: KeyRole,
        error: KeyAccessError,
        checks: Vec<Check>,
    },
    /// The vault could not be reached, throttled us, or failed (503 `key_vault_unavailable`).
    /// Retry after `retry_after`. Nothing was recorded.
    #[error("the key vault is unavailable: {}", error.reason)]
    VaultUnavailable {
        key: KeyRole,
        error: KeyAccessError,
        retry_after: Duration,
    },
    /// The customer's vault refused to unwrap a DEK for a release (409 `key_unavailable`,
    /// with the reason): the key is disabled, deleted, or keyledger's access was taken away.
    #[error("the customer's key refused the release: {}", error.reason)]
    KeyUnavailable { error: KeyAccessError },
    /// `If-Match` named another version (412 `version_mismatch`). Reload and decide again.
    #[error("the organization is at version {actual}, not {expected}")]
    VersionMismatch {
        expected: StreamVersion,
        actual: StreamVersion,
    },
    /// The command id (the request's `Idempotency-Key`) already names a command on another
    /// organization (409 `idempotency_key_reused`). Nothing was recorded. The caller must use
    /// a new key for a new command; retrying with the same key gives the same answer.
    #[error("the command id was already used for another organization")]
    CommandIdReused,
    /// Other writers kept winning the race for the stream (503). Retry later.
    #[error("too many concurrent changes to this organization; retry")]
    Contended,
    /// An invariant of keyledger itself broke (500, details in the logs only). A bug.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The store failed (500, details in the logs only).
    #[error("event store failure: {0}")]
    Store(#[from] StoreError),
    /// A read of the audit log's stored trees failed: a size or leaf the log has not reached
    /// (400), no connection in time (503), or a damaged tree (500, details in the logs).
    #[error(transparent)]
    Tree(#[from] TreeError),
}

impl AppError {
    pub(crate) fn from_key(key: KeyRole, error: KeyAccessError, checks: Vec<Check>) -> Self {
        if error.reason.is_transient() {
            let retry_after = match error.reason {
                Reason::Throttled => Duration::from_secs(10),
                _ => Duration::from_secs(5),
            };
            AppError::VaultUnavailable {
                key,
                error,
                retry_after,
            }
        } else {
            AppError::KeyValidationFailed { key, error, checks }
        }
    }
}
