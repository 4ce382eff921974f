//! Why a key access failed: DESIGN.md §4, the seed's troubleshooting table as types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A key operation, as named in Key Vault access policies and `key_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyOperation {
    /// Read the key (`keys/get`).
    #[serde(rename = "get")]
    Get,
    #[serde(rename = "wrapKey")]
    WrapKey,
    #[serde(rename = "unwrapKey")]
    UnwrapKey,
}

impl KeyOperation {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyOperation::Get => "get",
            KeyOperation::WrapKey => "wrapKey",
            KeyOperation::UnwrapKey => "unwrapKey",
        }
    }
}

impl fmt::Display for KeyOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason a key access failed. Each variant's doc says where it comes from and how a
/// caller handles it. Transient reasons ([`Reason::is_transient`]) are retried with backoff
/// within a bound; the others are definitive and are reported to the administrator as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// AADSTS7000215 (wrong secret), or an unknown client or tenant. Definitive: the
    /// administrator must fix the credentials ("Edit connection").
    CredentialsInvalid,
    /// AADSTS7000222: the client secret has expired. Definitive: a new secret is needed.
    CredentialsExpired,
    /// 403 ForbiddenByPolicy / ForbiddenByRbac for `operation`. Definitive: grant the
    /// permission in the vault's access policy.
    PermissionDenied { operation: KeyOperation },
    /// 403 KeyDisabled, or the key's `enabled` attribute is false. Definitive until the key is
    /// enabled again (the seed: disabling the key is how a customer revokes access).
    KeyDisabled,
    /// `exp` is in the past. Wrap is refused, unwrap still works; switch to a new key.
    KeyExpired,
    /// `nbf` is in the future. Definitive until that time.
    KeyNotYetValid,
    /// 404 KeyNotFound: soft-deleted (restorable during retention) or purged. The health probe
    /// then reads the deleted-key record to tell the two apart (`key_deleted`).
    KeyNotFound,
    /// The identifier is not https, or its host is not on the allow list. Nothing was sent.
    KeyNotAllowed,
    /// Not an RSA key, too small, or without `wrapKey`/`unwrapKey` in `key_ops`.
    UnsupportedKey,
    /// Network or TLS failure, or a timeout. Transient.
    VaultUnreachable,
    /// 429 from the vault or from Entra ID. Transient.
    Throttled,
    /// 5xx from the vault or from Entra ID. Transient.
    VaultError,
}

impl Reason {
    /// Whether a retry may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Reason::VaultUnreachable | Reason::Throttled | Reason::VaultError
        )
    }

    /// The stable snake_case code used in API errors (`reason`) and health details.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::CredentialsInvalid => "credentials_invalid",
            Reason::CredentialsExpired => "credentials_expired",
            Reason::PermissionDenied { .. } => "permission_denied",
            Reason::KeyDisabled => "key_disabled",
            Reason::KeyExpired => "key_expired",
            Reason::KeyNotYetValid => "key_not_yet_valid",
            Reason::KeyNotFound => "key_not_found",
            Reason::KeyNotAllowed => "key_not_allowed",
            Reason::UnsupportedKey => "unsupported_key",
            Reason::VaultUnreachable => "vault_unreachable",
            Reason::Throttled => "throttled",
            Reason::VaultError => "vault_error",
        }
    }

    /// The key-health status this reason shows as (R10). Transient reasons map to
    /// `vault_unreachable`; the health monitor applies the grace period before recording it.
    pub fn health_status(&self) -> keyledger_domain::HealthStatus {
        use keyledger_domain::HealthStatus as H;
        match self {
            Reason::CredentialsInvalid => H::CredentialsInvalid,
            Reason::CredentialsExpired => H::CredentialsExpired,
            Reason::PermissionDenied { .. } => H::PermissionDenied,
            Reason::KeyDisabled => H::KeyDisabled,
            Reason::KeyExpired => H::KeyExpired,
            Reason::KeyNotFound => H::KeyNotFound,
            // A key whose nbf moved into the future, or whose type changed, cannot be used:
            // the closest status in the seed's table is "disabled".
            Reason::KeyNotYetValid | Reason::UnsupportedKey => H::KeyDisabled,
            Reason::KeyNotAllowed => H::PermissionDenied,
            Reason::VaultUnreachable | Reason::Throttled | Reason::VaultError => H::VaultUnreachable,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PermissionDenied { operation } => write!(f, "permission_denied ({operation})"),
            other => f.write_str(other.code()),
        }
    }
}

/// A failed key access: the reason, plus a short detail built only from status codes and
/// service error codes (never from secrets, key material or free text that could hold them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct KeyAccessError {
    pub reason: Reason,
    pub detail: Option<String>,
    /// How long the service asked callers to wait (`Retry-After` on 429 and 503). The retry
    /// policy waits at least this long, up to its `max_delay`.
    pub retry_after: Option<std::time::Duration>,
}

impl KeyAccessError {
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            detail: None,
            retry_after: None,
        }
    }

    pub fn with_detail(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: Some(detail.into()),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, wait: Option<std::time::Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.reason.is_transient()
    }
}

impl From<Reason> for KeyAccessError {
    fn from(reason: Reason) -> Self {
        Self::new(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_throttling_and_5xx_are_transient() {
        let transient = [Reason::VaultUnreachable, Reason::Throttled, Reason::VaultError];
        let definitive = [
            Reason::CredentialsInvalid,
            Reason::CredentialsExpired,
            Reason::PermissionDenied {
                operation: KeyOperation::WrapKey,
            },
            Reason::KeyDisabled,
            Reason::KeyExpired,
            Reason::KeyNotYetValid,
            Reason::KeyNotFound,
            Reason::KeyNotAllowed,
            Reason::UnsupportedKey,
        ];
        assert!(transient.iter().all(Reason::is_transient));
        assert!(!definitive.iter().any(Reason::is_transient));
    }

    #[test]
    fn codes_are_the_design_names() {
        assert_eq!(Reason::KeyNotYetValid.code(), "key_not_yet_valid");
        let r = Reason::PermissionDenied {
            operation: KeyOperation::UnwrapKey,
        };
        assert_eq!(r.code(), "permission_denied");
        assert_eq!(r.to_string(), "permission_denied (unwrapKey)");
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::json!({"reason":"permission_denied","operation":"unwrapKey"})
        );
    }

    #[test]
    fn error_display_carries_detail() {
        let e = KeyAccessError::with_detail(Reason::KeyDisabled, "403 KeyDisabled");
        assert_eq!(e.to_string(), "key_disabled: 403 KeyDisabled");
        assert_eq!(KeyAccessError::new(Reason::Throttled).to_string(), "throttled");
    }
}
