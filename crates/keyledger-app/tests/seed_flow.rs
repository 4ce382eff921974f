//! End-to-end tests of the seed, through the official Azure SDK adapter against the simulated
//! vault (in process), on SQLite and on PostgreSQL. After each step they check the view, the
//! tenant audit rows and the data-key inventory (projections caught up through the runner).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use keyledger_app::*;
use keyledger_azure::{AzureConfig, AzureKeyAccess, InProcessTransport};
use keyledger_domain::testing::{admin, billing, platform, tenant_a, tenant_b};
use keyledger_domain::*;
use keyledger_keys::{KeyAccess, Reason, RetryPolicy};
use keyledger_projection::{
    AuditQuery, DataKeyInventory, EncryptionMode, Projection, ProjectionSink, Runner,
};
use keyledger_store::{EventStore, KeyRing};
use keyledger_vault_sim::{
    AppPatch, AppRegistration, Clock as SimClock, KeyPatch, NewKey, Vault, VaultConfig,
};
use secrecy::SecretString;

const BASE: &str = "https://contoso.vault.azure.net";
const CLIENT: &str = "0b6f5d4e-1111-4222-8333-444455556666";
const SECRET: &str = "seed-flow-secret-1";
const SECRET_2: &str = "seed-flow-secret-2";

struct Env {
    app: App,
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    vault: Arc<Vault>,
    tenant: String,
    org: OrgId,
}

fn keys_for(vault: Arc<Vault>) -> Arc<dyn KeyAccess> {
    let config = AzureConfig {
        request_timeout: Duration::from_secs(5),
        ..AzureConfig::default()
    };
    Arc::new(
        AzureKeyAccess::with_transport(config, InProcessTransport::transport(vault)).retrying(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            request_timeout: Duration::from_secs(5),
        }),
    )
}

impl Env {
    fn new(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>) -> Self {
        let start = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
        let vault = Vault::new(VaultConfig::default(), SimClock::fixed(start));
        let tenant = vault.config().tenant_id.clone();
        vault.register_app(AppRegistration::new(
            &tenant,
            CLIENT,
            SECRET,
            &["get", "wrapKey", "unwrapKey"],
        ));
        for name in ["cmk", "cmk-2", "cmk-3"] {
            vault.create_key(BASE, NewKey::rsa(name, 2048)).unwrap();
        }
        let app = App::new(
            store.clone(),
            keys_for(vault.clone()),
            Arc::new(ManualClock::new(start)),
            AppConfig::default(),
        );
        Self {
            app,
            store,
            sink,
            vault,
            tenant,
            org: testing_org(),
        }
    }

    fn connection(&self, name: &str, secret: &str) -> Connection {
        Connection {
            directory_id: self.tenant.parse().unwrap(),
            application_id: CLIENT.parse().unwrap(),
            client_secret: SecretString::from(secret.to_owned()),
            key_identifier: KeyIdentifier::parse(
                &format!("{BASE}/keys/{name}"),
                &HostAllowList::azure_public_clouds(),
            )
            .unwrap(),
        }
    }

    async fn run(&self, actor: Actor, intent: Intent) -> Result<Outcome, AppError> {
        self.app
            .handle(CommandRequest {
                org_id: self.org,
                actor,
                source_ip: Some("198.51.100.7".into()),
                command_id: None,
                correlation_id: None,
                if_match: None,
                intent,
            })
            .await
    }

    async fn ok(&self, actor: Actor, intent: Intent) -> Outcome {
        match self.run(actor, intent).await {
            Ok(o) => o,
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    async fn version(&self) -> u64 {
        self.app.view(self.org).await.unwrap().map_or(0, |v| v.version)
    }

    /// Catches every projection up and returns (audit actions of tenant A, inventory).
    async fn projected(&self) -> (Vec<String>, DataKeyInventory) {
        // On PostgreSQL a catch-up reader stays behind the oldest transaction still open on
        // the server (the xid fence), so catching up to this organization's last event may take
        // a few rounds.
        let stream = StreamId::for_org(self.org);
        let events = self.store.read_stream(stream, StreamVersion(1)).await.unwrap();
        let last = events.last().unwrap().global_position.0;
        for p in Projection::ALL {
            let runner = Runner::new(self.store.clone(), self.sink.clone(), p);
            let done = runner.catch_up_to(last, Duration::from_secs(30)).await.unwrap();
            assert!(done, "{} did not catch up", p.name());
        }
        let audit_a = self
            .sink
            .audit(&AuditQuery::all(tenant_a().tenant_id))
            .await
            .unwrap();
        let audit_b = self
            .sink
            .audit(&AuditQuery::all(tenant_b().tenant_id))
            .await
            .unwrap();
        assert_eq!(
            audit_a.len(),
            audit_b.len(),
            "both tenants see every key-relevant event"
        );
        let docs = self
            .sink
            .load(Projection::DataKeyInventory, &[self.org])
            .await
            .unwrap();
        let inventory = serde_json::from_value(docs[&self.org].clone()).unwrap();
        let view_doc = self
            .sink
            .load(Projection::OrganizationEncryption, &[self.org])
            .await
            .unwrap();
        let view = self.app.view(self.org).await.unwrap().unwrap();
        assert_eq!(
            view_doc[&self.org],
            serde_json::to_value(&view).unwrap(),
            "projection = folded view"
        );
        (audit_a.into_iter().map(|a| a.action).collect(), inventory)
    }
}

fn testing_org() -> OrgId {
    keyledger_domain::testing::org_id()
}

fn under(inv: &DataKeyInventory, dek: u32) -> Option<String> {
    inv.data_keys
        .iter()
        .find(|d| d.dek_id == DekId(dek))
        .and_then(|d| d.wrapped_by.customer_key().map(|k| k.name().to_owned()))
}

fn rotate(env: &Env, name: &str) -> Intent {
    Intent::RotateCustomerManagedKey(crate_patch(env.connection(name, SECRET_2).key_identifier))
}

fn crate_patch(key: KeyIdentifier) -> ConnectionPatch {
    ConnectionPatch {
        key_identifier: Some(key),
        ..Default::default()
    }
}

fn key_failure(err: AppError) -> (KeyRole, Reason) {
    match err {
        AppError::KeyValidationFailed { key, error, .. } => (key, error.reason),
        other => panic!("expected a key validation failure, got {other:?}"),
    }
}

async fn seed_flow(env: Env) {
    // Register.
    let v = env
        .ok(
            platform(),
            Intent::Register {
                name: "Contoso".into(),
                plan: Plan::enterprise("standard"),
                tenants: vec![tenant_a(), tenant_b()],
            },
        )
        .await
        .view;
    assert_eq!(v.encryption.mode, EncryptionMode::ProviderManaged);
    let (audit, inv) = env.projected().await;
    assert!(audit.is_empty());
    assert_eq!(under(&inv, 1), None);

    // Enable: Test and save.
    let v = env
        .ok(
            admin(),
            Intent::EnableCustomerManagedKey(env.connection("cmk", SECRET)),
        )
        .await
        .view;
    let k = v.encryption.customer_managed_key.as_ref().unwrap();
    assert_eq!(
        k.key_version.as_deref(),
        env.vault.versions("cmk").last().map(String::as_str)
    );
    let (audit, inv) = env.projected().await;
    assert_eq!(audit, ["CustomerManagedKeyEnabled"]);
    assert_eq!(under(&inv, 2).as_deref(), Some("cmk"));

    // Edit the secret: the administrator made a new one in Azure.
    env.vault.update_app(CLIENT, AppPatch::default().secret(SECRET_2));
    let edit = Intent::EditCustomerManagedKey(ConnectionPatch {
        client_secret: Some(SecretString::from(SECRET_2)),
        ..Default::default()
    });
    env.ok(admin(), edit).await;
    let (audit, _) = env.projected().await;
    assert_eq!(
        audit.last().map(String::as_str),
        Some("CustomerManagedKeyConnectionEdited")
    );

    // Rotate, both keys valid.
    let v = env.ok(admin(), rotate(&env, "cmk-2")).await.view;
    assert_eq!(
        v.encryption.customer_managed_key.as_ref().unwrap().key_name,
        "cmk-2"
    );
    let (audit, inv) = env.projected().await;
    assert_eq!(
        audit.last().map(String::as_str),
        Some("CustomerManagedKeyRotated")
    );
    assert_eq!(under(&inv, 2).as_deref(), Some("cmk-2"));

    // Rotate refused: the new key is disabled.
    env.vault
        .update_key(
            BASE,
            "cmk-3",
            None,
            KeyPatch {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    let before = env.version().await;
    let err = env.run(admin(), rotate(&env, "cmk-3")).await.unwrap_err();
    assert_eq!(key_failure(err), (KeyRole::New, Reason::KeyDisabled));
    assert_eq!(env.version().await, before, "nothing recorded");
    env.vault
        .update_key(
            BASE,
            "cmk-3",
            None,
            KeyPatch {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .unwrap();

    // Rotate refused: the old key is gone (soft-deleted).
    env.vault.delete_key(BASE, "cmk-2").unwrap();
    let err = env.run(admin(), rotate(&env, "cmk-3")).await.unwrap_err();
    assert_eq!(key_failure(err), (KeyRole::Old, Reason::KeyNotFound));
    assert_eq!(env.version().await, before);
    env.vault.recover_key(BASE, "cmk-2").unwrap();

    // Rotate back to an older key (the disaster-recovery case): cmk is still in the vault.
    let v = env.ok(admin(), rotate(&env, "cmk")).await.view;
    assert_eq!(
        v.encryption.customer_managed_key.as_ref().unwrap().key_name,
        "cmk"
    );
    assert_eq!(v.key_history.len(), 3);
    let (_, inv) = env.projected().await;
    assert_eq!(under(&inv, 2).as_deref(), Some("cmk"));

    // Downgrade → locked → edit refused → switch allowed → re-enable refused → upgrade → enable.
    let plan = |p: Plan| Intent::ChangePlan {
        plan: p,
        reason: "licence".into(),
    };
    assert!(env.ok(billing(), plan(Plan::free())).await.view.encryption.locked);
    let (audit, _) = env.projected().await;
    assert_eq!(audit.last().map(String::as_str), Some("CustomerManagedKeyLocked"));
    let edit = Intent::EditCustomerManagedKey(ConnectionPatch {
        client_secret: Some(SecretString::from(SECRET_2)),
        ..Default::default()
    });
    let err = env.run(admin(), edit).await.unwrap_err();
    assert!(
        matches!(err, AppError::Rejected(DomainError::CmkLockedByPlan)),
        "{err:?}"
    );
    let v = env
        .ok(
            admin(),
            Intent::SwitchToProviderManagedKey {
                abandon_lost_data: false,
            },
        )
        .await
        .view;
    assert_eq!(v.encryption.mode, EncryptionMode::ProviderManaged);
    let (audit, inv) = env.projected().await;
    assert_eq!(
        audit.last().map(String::as_str),
        Some("SwitchedToProviderManagedKey")
    );
    assert!(
        inv.data_keys
            .iter()
            .all(|d| d.wrapped_by.customer_key().is_none())
    );
    let err = env
        .run(
            admin(),
            Intent::EnableCustomerManagedKey(env.connection("cmk-3", SECRET_2)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Rejected(DomainError::PlanNotEligible { .. })),
        "{err:?}"
    );
    env.ok(billing(), plan(Plan::enterprise("standard"))).await;
    let v = env
        .ok(
            admin(),
            Intent::EnableCustomerManagedKey(env.connection("cmk-3", SECRET_2)),
        )
        .await
        .view;
    assert_eq!(v.encryption.mode, EncryptionMode::CustomerManaged);

    // Data loss: the key is purged without a backup; health finds it gone; it is declared lost.
    env.vault.delete_key(BASE, "cmk-3").unwrap();
    env.vault.purge_key("cmk-3").ok();
    let monitor = HealthMonitor::new(
        Arc::new(App::new(
            env.store.clone(),
            keys_for(env.vault.clone()),
            Arc::new(SystemClock),
            AppConfig::default(),
        )),
        keys_for(env.vault.clone()),
        HealthConfig::default(),
    );
    let probe = monitor.probe(env.org).await.unwrap();
    assert_eq!(probe.status, HealthStatus::KeyNotFound);
    let v = env
        .ok(
            admin(),
            Intent::DeclareDataLost {
                reason: "purged without backup".into(),
                ticket: None,
            },
        )
        .await
        .view;
    assert!(v.encryption.data_lost);
    let (audit, inv) = env.projected().await;
    assert_eq!(audit.last().map(String::as_str), Some("CustomerDataDeclaredLost"));
    assert!(inv.data_keys.iter().any(|d| d.lost));
    let v = env
        .ok(
            admin(),
            Intent::SwitchToProviderManagedKey {
                abandon_lost_data: true,
            },
        )
        .await
        .view;
    assert_eq!(v.encryption.mode, EncryptionMode::ProviderManaged);
}

/// The seed's troubleshooting table as health transitions, through the simulated vault, with
/// controlled clocks (no sleeps).
async fn health_transitions(env: Env, clock: Arc<ManualClock>) {
    env.ok(
        platform(),
        Intent::Register {
            name: "Contoso".into(),
            plan: Plan::enterprise("standard"),
            tenants: vec![tenant_a()],
        },
    )
    .await;
    env.ok(
        admin(),
        Intent::EnableCustomerManagedKey(env.connection("cmk", SECRET)),
    )
    .await;
    let app = Arc::new(App::new(
        env.store.clone(),
        keys_for(env.vault.clone()),
        clock.clone(),
        AppConfig::default(),
    ));
    let monitor = HealthMonitor::new(app.clone(), keys_for(env.vault.clone()), HealthConfig::default());
    let probe = || monitor.probe(env.org);
    let enabled = |on: bool| KeyPatch {
        enabled: Some(on),
        ..Default::default()
    };
    assert_eq!(probe().await.unwrap().status, HealthStatus::Healthy);
    env.vault.update_key(BASE, "cmk", None, enabled(false)).unwrap();
    assert_eq!(probe().await.unwrap().status, HealthStatus::KeyDisabled);
    env.vault.update_key(BASE, "cmk", None, enabled(true)).unwrap();
    assert_eq!(probe().await.unwrap().status, HealthStatus::Healthy);
    // The client secret expires.
    // Entra ID refuses it when a token is next requested; the access token already issued stays
    // valid until it expires, as in Azure. A fresh credential (a new process, or the next token
    // refresh) sees the failure.
    let past = env.vault.clock().now() - chrono::Duration::hours(1);
    env.vault
        .update_app(CLIENT, AppPatch::default().expires(Some(past)));
    let fresh = HealthMonitor::new(app.clone(), keys_for(env.vault.clone()), HealthConfig::default());
    let p = fresh.probe(env.org).await.unwrap();
    assert_eq!(p.status, HealthStatus::CredentialsExpired, "{p:?}");
    env.vault.update_app(CLIENT, AppPatch::default().expires(None));
    assert_eq!(fresh.probe(env.org).await.unwrap().status, HealthStatus::Healthy);
    // Ten minutes of 503: still healthy. Past the 15-minute grace: vault_unreachable.
    env.vault.set_faults(keyledger_vault_sim::Faults {
        status: Some(503),
        ..Default::default()
    });
    for _ in 0..=10 {
        let p = probe().await.unwrap();
        assert_eq!((p.status, p.changed), (HealthStatus::Healthy, false));
        clock.advance(chrono::Duration::minutes(1));
    }
    clock.advance(chrono::Duration::minutes(5));
    let p = probe().await.unwrap();
    assert_eq!((p.status, p.changed), (HealthStatus::VaultUnreachable, true));
    env.vault.clear_faults();
    assert_eq!(probe().await.unwrap().status, HealthStatus::Healthy);
    // Only changes were recorded: disabled, healthy, expired, healthy, unreachable, healthy.
    let events = env
        .store
        .read_stream(StreamId::for_org(env.org), StreamVersion(1))
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "KeyHealthChanged")
            .count(),
        6
    );
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seed_flow_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            keyledger_sqlite::SqliteStore::open(&dir.path().join("k.db"), Arc::new(KeyRing::generate()))
                .await
                .unwrap();
        let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
        seed_flow(Env::new(Arc::new(store), sink)).await;
        // The secret appears nowhere in the database file.
        let mut bytes = std::fs::read(dir.path().join("k.db")).unwrap();
        bytes.extend(std::fs::read(dir.path().join("k.db-wal")).unwrap_or_default());
        for s in [SECRET, SECRET_2] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "secret in the SQLite file"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_troubleshooting_table_through_the_simulated_vault() {
    let dir = tempfile::tempdir().unwrap();
    let store = keyledger_sqlite::SqliteStore::open(&dir.path().join("k.db"), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
    ));
    health_transitions(Env::new(Arc::new(store), sink), clock).await;
}

mod postgres {
    use super::*;
    use keyledger_postgres::testing::TestDatabase;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seed_flow_on_postgres() {
        let Some(db) = TestDatabase::create("kl_seed_flow").await else {
            return;
        };
        let store = keyledger_postgres::PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let sink = Arc::new(keyledger_postgres::PgProjections::new(&store));
        seed_flow(Env::new(Arc::new(store), sink)).await;
    }
}
