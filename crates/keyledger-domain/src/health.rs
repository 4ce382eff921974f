//! Key health statuses (R10), following the seed's troubleshooting table.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    /// Still unwraps; the seed recommends switching to a new key.
    KeyExpired,
    /// Expires within 30 days (beyond the seed).
    KeyNearExpiry,
    CredentialsInvalid,
    CredentialsExpired,
    PermissionDenied,
    KeyDisabled,
    /// Deleted (restorable during retention) or purged.
    KeyNotFound,
    /// Transient failures that lasted past the grace period.
    VaultUnreachable,
}

impl HealthStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::KeyExpired => "key_expired",
            HealthStatus::KeyNearExpiry => "key_near_expiry",
            HealthStatus::CredentialsInvalid => "credentials_invalid",
            HealthStatus::CredentialsExpired => "credentials_expired",
            HealthStatus::PermissionDenied => "permission_denied",
            HealthStatus::KeyDisabled => "key_disabled",
            HealthStatus::KeyNotFound => "key_not_found",
            HealthStatus::VaultUnreachable => "vault_unreachable",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
