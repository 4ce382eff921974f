//! Key health statuses (R10), following the seed's troubleshooting table.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
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
    /// Soft-deleted: the vault still holds the key and can recover it until its scheduled
    /// purge (`recoverable_until`, from the vault's deleted-key record).
    KeyDeleted,
    /// Purged, or deleted with no deleted-key record keyledger can read.
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
            HealthStatus::KeyDeleted => "key_deleted",
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
            | HealthStatus::KeyDeleted
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

/// R10: a reminder that a soft-deleted key's purge is near, recorded once per window and
/// deletion (a `key_deleted` → `key_deleted` [`KeyHealthChanged`](crate::event::KeyHealthChanged)), so
/// an unanswered deletion is never silent. Ordered by urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PurgeReminder {
    /// The purge is at most 7 days away.
    #[serde(rename = "within_7_days")]
    Within7Days,
    /// The purge is at most 1 day away.
    #[serde(rename = "within_1_day")]
    Within1Day,
}

impl PurgeReminder {
    pub fn as_str(&self) -> &'static str {
        match self {
            PurgeReminder::Within7Days => "within_7_days",
            PurgeReminder::Within1Day => "within_1_day",
        }
    }

    /// How close the purge is when this reminder is due.
    pub fn window(&self) -> Duration {
        match self {
            PurgeReminder::Within7Days => Duration::days(7),
            PurgeReminder::Within1Day => Duration::days(1),
        }
    }

    /// The most urgent reminder due at `at` for a purge at `purge_at`, if any. A purge date in
    /// the past (the vault purges some time after it) is within a day.
    pub fn due(at: DateTime<Utc>, purge_at: DateTime<Utc>) -> Option<PurgeReminder> {
        let left = purge_at - at;
        [PurgeReminder::Within1Day, PurgeReminder::Within7Days]
            .into_iter()
            .find(|r| left <= r.window())
    }
}

impl fmt::Display for PurgeReminder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_key_is_of_the_revoked_class() {
        assert!(HealthStatus::KeyDeleted.is_revoked());
        assert_eq!(HealthStatus::KeyDeleted.as_str(), "key_deleted");
        assert_eq!(
            serde_json::to_value(HealthStatus::KeyDeleted).unwrap(),
            serde_json::json!("key_deleted")
        );
    }

    #[test]
    fn reminders_are_due_at_seven_days_and_one_day() {
        let purge = DateTime::UNIX_EPOCH + Duration::days(90);
        let at = |left: Duration| purge - left;
        assert_eq!(PurgeReminder::due(at(Duration::days(8)), purge), None);
        assert_eq!(
            PurgeReminder::due(at(Duration::days(7)), purge),
            Some(PurgeReminder::Within7Days)
        );
        assert_eq!(
            PurgeReminder::due(at(Duration::hours(25)), purge),
            Some(PurgeReminder::Within7Days)
        );
        assert_eq!(
            PurgeReminder::due(at(Duration::days(1)), purge),
            Some(PurgeReminder::Within1Day)
        );
        assert_eq!(
            PurgeReminder::due(at(-Duration::hours(2)), purge),
            Some(PurgeReminder::Within1Day)
        );
        assert!(PurgeReminder::Within1Day > PurgeReminder::Within7Days);
    }
}
