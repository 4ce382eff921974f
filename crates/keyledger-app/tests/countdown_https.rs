//! The recoverability countdown (R10) through the official SDK adapter against the AKV emulator
//! over real HTTPS (started in process on 127.0.0.1:0): a soft-deleted key is `key_deleted`
//! with the vault's purge date, a recovered one is `healthy` again, a purged one
//! `key_not_found`; the purge reminders at 7 days and 1 day are recorded once each, also
//! across a restart.

mod emulated;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use emulated::{Enabled as Setup, request};
use keyledger_app::*;
use keyledger_domain::testing::{self, admin, platform};
use keyledger_domain::*;
use keyledger_store::EventStore;
use keyledger_vault_sim::Faults;

impl Setup {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves both clocks to `t` (whole seconds, as the vault keeps them).
    fn set_time(&self, t: DateTime<Utc>) {
        self.clock.set(t);
        self.emu.vault.clock().set(t);
    }

    fn monitor(&self) -> HealthMonitor {
        HealthMonitor::new(self.app.clone(), self.keys.clone(), HealthConfig::default())
    }

    async fn health_changes(&self) -> Vec<serde_json::Value> {
        self.store
            .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(0))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event_type == "KeyHealthChanged")
            .map(|e| e.payload)
            .collect()
    }
}

/// The emulated setup with the vault's clock and the app's set together, at whole seconds
/// (the vault reports times in Unix seconds).
async fn enabled(test: &str) -> Setup {
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    emulated::enabled(&format!("countdown-{test}"), Some(start), AppConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_deleted_is_key_deleted_until_recovered_and_purged_is_key_not_found() {
    let s = enabled("delete-recover-purge").await;
    let monitor = s.monitor();
    let org = testing::org_id();
    assert_eq!(monitor.probe(org).await.unwrap().status, HealthStatus::Healthy);

    // Soft delete: the probe reads the deleted-key record through the SDK.
    let deleted_at = s.now();
    s.emu.vault.delete_key(&s.emu.vault_url, "cmk").unwrap();
    let retention = i64::from(s.emu.vault.config().retention_days);
    let purge = deleted_at + chrono::Duration::days(retention);
    let probe = monitor.probe(org).await.unwrap();
    assert_eq!(probe.status, HealthStatus::KeyDeleted);
    assert_eq!(probe.recoverable_until, Some(purge));
    assert!(probe.changed);
    let view = s.app.view(org).await.unwrap().unwrap();
    let health = view.encryption.health.unwrap();
    assert_eq!(
        (health.status, health.recoverable_until),
        (HealthStatus::KeyDeleted, Some(purge))
    );
    // Revoked class: no DEK is released while the key is deleted.
    let refused = s
        .app
        .release(ReleaseRequest {
            org_id: org,
            actor: platform(),
            of: ReleaseOf::Active,
            source_ip: None,
            correlation_id: None,
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("key_deleted"), "{refused}");
    // The same probe again records nothing.
    assert!(!monitor.probe(org).await.unwrap().changed);
    // Declaring the data lost is refused: it can still be recovered.
    let declare = s
        .app
        .handle(request(
            admin(),
            Intent::DeclareDataLost {
                reason: "key deleted".into(),
                ticket: None,
            },
        ))
        .await
        .unwrap_err();
    assert!(declare.to_string().contains("recovered"), "{declare}");

    // Recover: healthy, no date.
    s.emu.vault.recover_key(&s.emu.vault_url, "cmk").unwrap();
    let probe = monitor.probe(org).await.unwrap();
    assert_eq!(
        (probe.status, probe.recoverable_until),
        (HealthStatus::Healthy, None)
    );

    // Delete and purge: no deleted-key record, key_not_found as before.
    s.emu.vault.delete_key(&s.emu.vault_url, "cmk").unwrap();
    s.emu.vault.purge_key("cmk").unwrap();
    let probe = monitor.probe(org).await.unwrap();
    assert_eq!(
        (probe.status, probe.recoverable_until),
        (HealthStatus::KeyNotFound, None)
    );
    let changes = s.health_changes().await;
    let to: Vec<&str> = changes.iter().map(|p| p["to"].as_str().unwrap()).collect();
    assert_eq!(to, ["key_deleted", "healthy", "key_not_found"]);
    assert_eq!(
        changes[0]["recoverable_until"],
        serde_json::json!(purge.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    );
    assert!(changes[1].get("recoverable_until").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_reminders_at_7_days_and_1_day_are_recorded_once_each_across_a_restart() {
    let s = enabled("reminders").await;
    let monitor = s.monitor();
    let org = testing::org_id();
    let deleted_at = s.now();
    s.emu.vault.delete_key(&s.emu.vault_url, "cmk").unwrap();
    let retention = i64::from(s.emu.vault.config().retention_days);
    let purge = deleted_at + chrono::Duration::days(retention);
    assert_eq!(monitor.probe(org).await.unwrap().status, HealthStatus::KeyDeleted);

    // Eight days before the purge: nothing due.
    s.set_time(purge - chrono::Duration::days(8));
    assert!(!monitor.probe(org).await.unwrap().changed);

    // Within 7 days: one reminder, recorded once.
    s.set_time(purge - chrono::Duration::days(7) + chrono::Duration::hours(1));
    let probe = monitor.probe(org).await.unwrap();
    assert!(probe.changed);
    assert_eq!(probe.status, HealthStatus::KeyDeleted);
    assert_eq!(probe.since, deleted_at, "a reminder keeps the since-time");
    assert!(
        probe.detail.as_deref().unwrap().contains("within_7_days"),
        "{probe:?}"
    );
    s.set_time(purge - chrono::Duration::days(3));
    assert!(!monitor.probe(org).await.unwrap().changed);

    // A restart: a new app and monitor over the same store remember the reminder.
    let restarted = Arc::new(App::new(
        s.store.clone(),
        s.keys.clone(),
        s.clock.clone(),
        AppConfig::default(),
    ));
    let monitor = HealthMonitor::new(restarted.clone(), s.keys.clone(), HealthConfig::default());
    assert!(!monitor.probe(org).await.unwrap().changed);

    // Within 1 day: the last reminder, once.
    s.set_time(purge - chrono::Duration::hours(20));
    let probe = monitor.probe(org).await.unwrap();
    assert!(probe.changed);
    assert!(
        probe.detail.as_deref().unwrap().contains("within_1_day"),
        "{probe:?}"
    );
    assert_eq!(probe.recoverable_until, Some(purge));
    s.set_time(purge - chrono::Duration::hours(2));
    assert!(!monitor.probe(org).await.unwrap().changed);

    let changes = s.health_changes().await;
    let reminders: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|p| {
            (
                p["from"].as_str().unwrap(),
                p["to"].as_str().unwrap(),
                p["purge_reminder"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        reminders,
        [
            ("healthy", "key_deleted", "-"),
            ("key_deleted", "key_deleted", "within_7_days"),
            ("key_deleted", "key_deleted", "within_1_day"),
        ]
    );

    // The retention ends: the vault purges the key, and the probe says so.
    s.set_time(purge + chrono::Duration::seconds(1));
    let probe = monitor.probe(org).await.unwrap();
    assert_eq!(
        (probe.status, probe.recoverable_until),
        (HealthStatus::KeyNotFound, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_blip_keeps_key_deleted_and_its_purge_date() {
    let s = enabled("blip").await;
    let monitor = s.monitor();
    let org = testing::org_id();
    s.emu.vault.delete_key(&s.emu.vault_url, "cmk").unwrap();
    let first = monitor.probe(org).await.unwrap();
    assert_eq!(first.status, HealthStatus::KeyDeleted);
    // Every vault call answers 503 for a while (within the grace period).
    s.emu.vault.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    let probe = monitor.probe(org).await.unwrap();
    assert!(!probe.changed, "{probe:?}");
    assert_eq!(
        (probe.status, probe.recoverable_until),
        (HealthStatus::KeyDeleted, first.recoverable_until)
    );
    s.emu.vault.set_faults(Faults::default());
    assert!(!monitor.probe(org).await.unwrap().changed);
    assert_eq!(s.health_changes().await.len(), 1);
}
