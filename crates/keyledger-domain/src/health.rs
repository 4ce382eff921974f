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

impl HealthStatus {
    /// The revoked class: the vault refuses this key to keyledger (the customer disabled or
    /// deleted it, or took keyledger's access away). No DEK under it is released, and clients
    /// evict what they cached (CONTRACT.md "Data keys for platform services"). A transient
    /// failure (`vault_unreachable`) and an expired key (which still unwraps) are not revoked.
    pub fn is_revoked(&self) -> bool {
        match self {
            HealthStatus::KeyDisabled
            | HealthStatus::KeyNotFound
            | HealthStatus::PermissionDenied
            | HealthStatus::CredentialsInvalid
            | HealthStatus::CredentialsExpired => true,
            HealthStatus::Healthy
            | HealthStatus::KeyExpired
            | HealthStatus::KeyNearExpiry
            | HealthStatus::VaultUnreachable => false,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
