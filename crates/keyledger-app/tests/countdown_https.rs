//! The recoverability countdown (R10) through the official SDK adapter against the AKV emulator
//! over real HTTPS (started in process on 127.0.0.1:0): a soft-deleted key is `key_deleted`
//! with the vault's purge date, a recovered one is `healthy` again, a purged one
//! `key_not_found`; the purge reminders at 7 days and 1 day are recorded once each, also
//! across a restart.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_app::*;
use keyledger_azure::{AzureConfig, AzureKeyAccess};
use keyledger_domain::testing::{self, admin, platform, tenant_a};
use keyledger_domain::*;
use keyledger_keys::{KeyAccess, RetryPolicy};
use keyledger_store::{EventStore, InMemoryStore, KeyRing};
use keyledger_vault_sim::{AppRegistration, Faults, NewKey};
use secrecy::SecretString;

const CLIENT: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000c7";
const SECRET: &str = "countdown-over-https-secret";

fn request(actor: Actor, intent: Intent) -> CommandRequest {
    CommandRequest {
        org_id: testing::org_id(),
        actor,
        source_ip: None,
        command_id: None,
        correlation_id: None,
        if_match: None,
        intent,
    }
}

/// An emulator with the app and key `cmk`, an app over it (in-memory store) whose organization
/// enabled that key through the SDK adapter, and one clock for both: the vault's and the app's
/// are set together.
struct Setup {
    emu: akv_emulator::Emulator,
    app: Arc<App>,
    keys: Arc<dyn KeyAccess>,
    store: Arc<InMemoryStore>,
    clock: Arc<ManualClock>,
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

async fn enabled(test: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("keyledger-app-countdown-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let emu = akv_emulator::start(([127, 0, 0, 1], 0).into(), &dir)
        .await
        .unwrap();
    // Whole seconds: the vault reports times in Unix seconds.
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    emu.vault.clock().set(start);
    emu.vault.register_app(AppRegistration::new(
        &emu.tenant_id,
        CLIENT,
        SECRET,
        &["get", "wrapKey", "unwrapKey"],
    ));
    emu.vault
        .create_key(&emu.vault_url, NewKey::rsa("cmk", 2048))
        .unwrap();
    let allow = HostAllowList::new([emu.vault_url.trim_start_matches("https://")]);
    let config = AzureConfig {
        authority_host: emu.authority_host.clone(),
        allowed_vault_hosts: allow.clone(),
        ca_cert_pem: Some(std::fs::read(&emu.ca_cert).unwrap()),
        request_timeout: Duration::from_secs(10),
        verify_challenge_resource: true,
    };
    let keys: Arc<dyn KeyAccess> = Arc::new(AzureKeyAccess::new(config).unwrap().retrying(RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        request_timeout: Duration::from_secs(10),
    }));
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let clock = Arc::new(ManualClock::new(start));
    let app = Arc::new(App::new(
        store.clone(),
        keys.clone(),
        clock.clone(),
        AppConfig::default(),
    ));
    app.handle(request(
        platform(),
        Intent::Register {
            name: "Contoso".into(),
            plan: Plan::enterprise("standard"),
            tenants: vec![tenant_a()],
        },
    ))
    .await
    .unwrap();
    let connection = Connection {
        directory_id: emu.tenant_id.parse().unwrap(),
        application_id: CLIENT.parse().unwrap(),
        client_secret: SecretString::from(SECRET),
        key_identifier: KeyIdentifier::parse(&format!("{}/keys/cmk", emu.vault_url), &allow).unwrap(),
    };
    app.handle(request(admin(), Intent::EnableCustomerManagedKey(connection)))
        .await
        .unwrap();
    Setup {
        emu,
        app,
        keys,
        store,
        clock,
        dir,
    }
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
