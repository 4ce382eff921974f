//! The application service over the in-memory store and a small in-memory vault. (The same
//! flows through the official SDK against the simulated vault, on SQLite and PostgreSQL, are
//! the acceptance tests.)

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::FakeVault;
use keyledger_app::*;
use keyledger_domain::testing::{self, admin, billing, platform, system, tenant_a, tenant_b};
use keyledger_domain::*;
use keyledger_keys::Reason;
use keyledger_projection::EncryptionMode;
use keyledger_store::{EventStore, InMemoryStore, KeyRing, StoredEvent};
use secrecy::SecretString;

const SECRET: &str = "app-test-client-secret";

fn kid(name: &str, version: &str) -> KeyIdentifier {
    KeyIdentifier::parse_shape(&format!("https://contoso.vault.azure.net/keys/{name}/{version}")).unwrap()
}

fn connection(key: &KeyIdentifier) -> Connection {
    let mut c = testing::connection(key);
    c.client_secret = SecretString::from(SECRET);
    c
}

struct Fixture {
    app: App,
    clock: Arc<ManualClock>,
    store: Arc<InMemoryStore>,
    vault: Arc<FakeVault>,
}

fn fixture() -> Fixture {
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let vault = Arc::new(FakeVault::default());
    vault.add("cmk", "v1");
    vault.add("cmk", "v2");
    vault.add("cmk-2027", "v1");
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app = App::new(store.clone(), vault.clone(), clock.clone(), AppConfig::default());
    Fixture {
        app,
        clock,
        store,
        vault,
    }
}

fn request(actor: Actor, intent: Intent) -> CommandRequest {
    CommandRequest {
        org_id: testing::org_id(),
        actor,
        source_ip: Some("192.0.2.1".into()),
        command_id: None,
        correlation_id: None,
        if_match: None,
        intent,
    }
}

async fn run(f: &Fixture, actor: Actor, intent: Intent) -> Result<Outcome, AppError> {
    f.app.handle(request(actor, intent)).await
}

async fn registered() -> Fixture {
    let f = fixture();
    run(
        &f,
        platform(),
        Intent::Register {
            name: "Contoso".into(),
            plan: Plan::enterprise("standard"),
            tenants: vec![tenant_a(), tenant_b()],
        },
    )
    .await
    .unwrap();
    f
}

async fn enabled() -> Fixture {
    let f = registered().await;
    run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v1").versionless())),
    )
    .await
    .unwrap();
    f
}

async fn version(f: &Fixture) -> u64 {
    f.store
        .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(1))
        .await
        .unwrap()
        .len() as u64
}

fn rotate_to(key: KeyIdentifier) -> Intent {
    Intent::RotateCustomerManagedKey(ConnectionPatch {
        key_identifier: Some(key),
        ..Default::default()
    })
}

#[tokio::test]
async fn register_starts_provider_managed() {
    let f = registered().await;
    let view = f.app.view(testing::org_id()).await.unwrap().unwrap();
    assert_eq!(view.version, 2);
    assert_eq!(view.encryption.mode, EncryptionMode::ProviderManaged);
    assert!(view.encryption.can_enable_customer_managed_key);
}

#[tokio::test]
async fn test_and_save_pins_the_latest_version_and_records_a_customer_dek() {
    let f = enabled().await;
    let view = f.app.view(testing::org_id()).await.unwrap().unwrap();
    let k = view.encryption.customer_managed_key.unwrap();
    assert_eq!(k.key_version.as_deref(), Some("v2"), "latest version pinned");
    assert_eq!(view.encryption.active_data_key_id, DekId(2));
    assert_eq!(view.version, 4);
}

#[tokio::test]
async fn a_failed_test_and_save_appends_nothing_and_names_the_reason() {
    let f = registered().await;
    f.vault.disable("cmk", "v2");
    let err = run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v2"))),
    )
    .await
    .unwrap_err();
    match err {
        AppError::KeyValidationFailed { key, error, .. } => {
            assert_eq!(key, KeyRole::New);
            assert_eq!(error.reason, Reason::KeyDisabled);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(version(&f).await, 2);
}

#[tokio::test]
async fn an_unreachable_vault_is_transient_and_appends_nothing() {
    let f = registered().await;
    *f.vault.down.lock().unwrap() = true;
    let err = run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v1"))),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AppError::VaultUnavailable { .. }), "{err:?}");
    assert_eq!(version(&f).await, 2);
}

#[tokio::test]
async fn rotation_with_both_keys_valid_rewraps_and_the_new_key_unwraps() {
    let f = enabled().await;
    let out = run(&f, admin(), rotate_to(kid("cmk-2027", "v1"))).await.unwrap();
    assert_eq!(out.appended, 2);
    let k = out.view.encryption.customer_managed_key.unwrap();
    assert_eq!(k.key_name, "cmk-2027");
    assert_eq!(out.view.key_history.len(), 2);
    // The DEK now unwraps with the new key: rotate back proves it (it unwraps with cmk-2027).
    let back = run(&f, admin(), rotate_to(kid("cmk", "v2"))).await.unwrap();
    assert_eq!(back.view.key_history.len(), 3);
}

#[tokio::test]
async fn rotation_refused_when_the_new_key_is_disabled_names_the_new_key() {
    let f = enabled().await;
    f.vault.disable("cmk-2027", "v1");
    let before = version(&f).await;
    match run(&f, admin(), rotate_to(kid("cmk-2027", "v1")))
        .await
        .unwrap_err()
    {
        AppError::KeyValidationFailed { key, error, .. } => {
            assert_eq!((key, error.reason), (KeyRole::New, Reason::KeyDisabled));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(version(&f).await, before);
}

#[tokio::test]
async fn rotation_refused_when_the_old_key_is_gone_names_the_old_key() {
    let f = enabled().await;
    f.vault.delete("cmk");
    let before = version(&f).await;
    match run(&f, admin(), rotate_to(kid("cmk-2027", "v1")))
        .await
        .unwrap_err()
    {
        AppError::KeyValidationFailed { key, error, .. } => {
            assert_eq!((key, error.reason), (KeyRole::Old, Reason::KeyNotFound));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(version(&f).await, before);
}

#[tokio::test]
async fn rotation_to_the_key_in_use_is_refused_before_any_vault_call() {
    let f = enabled().await;
    let calls = f.vault.calls();
    let err = run(&f, admin(), rotate_to(kid("cmk", "v2"))).await.unwrap_err();
    assert!(matches!(err, AppError::Rejected(DomainError::SameKey)), "{err:?}");
    assert_eq!(f.vault.calls(), calls);
}

/// A versionless identifier is pinned by the key test; when that pins the key in use, `decide`
/// refuses the rotation on the test's result (no unwrap proof is made up for it).
#[tokio::test]
async fn rotation_to_a_versionless_key_that_resolves_to_the_key_in_use_is_refused() {
    let f = enabled().await;
    let before = version(&f).await;
    let in_use = f.app.view(testing::org_id()).await.unwrap().unwrap();
    let in_use = in_use.encryption.customer_managed_key.unwrap().key_identifier;
    let err = run(&f, admin(), rotate_to(in_use.versionless()))
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Rejected(DomainError::SameKey)), "{err:?}");
    assert_eq!(version(&f).await, before);
}

#[tokio::test]
async fn editing_the_secret_is_recorded_without_it() {
    let f = enabled().await;
    let out = run(
        &f,
        admin(),
        Intent::EditCustomerManagedKey(ConnectionPatch {
            client_secret: Some(SecretString::from("the-new-secret")),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(out.appended, 1);
    let raw = String::from_utf8_lossy(&f.store.raw_bytes()).to_string();
    assert!(!raw.contains("the-new-secret"));
    assert!(!raw.contains(SECRET));
}

#[tokio::test]
async fn an_edit_with_a_new_key_is_a_rotation() {
    let f = enabled().await;
    let out = run(
        &f,
        admin(),
        Intent::EditCustomerManagedKey(ConnectionPatch {
            key_identifier: Some(kid("cmk-2027", "v1")),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let events = f
        .store
        .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(5))
        .await
        .unwrap();
    assert_eq!(events[0].event_type, "CustomerManagedKeyRotated");
    assert_eq!(
        out.view.encryption.customer_managed_key.unwrap().key_name,
        "cmk-2027"
    );
}

#[tokio::test]
async fn the_downgrade_path_of_the_seed() {
    let f = enabled().await;
    let plan = |p: Plan| Intent::ChangePlan {
        plan: p,
        reason: "billing".into(),
    };
    let out = run(&f, billing(), plan(Plan::free())).await.unwrap();
    assert!(out.view.encryption.locked);
    let edit = Intent::EditCustomerManagedKey(ConnectionPatch {
        client_secret: Some(SecretString::from("x")),
        ..Default::default()
    });
    let err = run(&f, admin(), edit).await.unwrap_err();
    assert!(
        matches!(err, AppError::Rejected(DomainError::CmkLockedByPlan)),
        "{err:?}"
    );
    let out = run(
        &f,
        admin(),
        Intent::SwitchToProviderManagedKey {
            abandon_lost_data: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.view.encryption.mode, EncryptionMode::ProviderManaged);
    let err = run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v1"))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, AppError::Rejected(DomainError::PlanNotEligible { .. })),
        "{err:?}"
    );
    run(&f, billing(), plan(Plan::enterprise("standard")))
        .await
        .unwrap();
    let out = run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v1"))),
    )
    .await
    .unwrap();
    assert_eq!(out.view.encryption.mode, EncryptionMode::CustomerManaged);
}

#[tokio::test]
async fn a_switch_rewraps_under_the_internal_key_which_opens_them() {
    let f = enabled().await;
    run(
        &f,
        admin(),
        Intent::SwitchToProviderManagedKey {
            abandon_lost_data: false,
        },
    )
    .await
    .unwrap();
    let state = f.app.state(testing::org_id()).await.unwrap();
    let org = state.org().unwrap();
    for dek in org.data_keys.values() {
        let WrappedBy::Provider { internal_key_id } = &dek.wrapped_by else {
            panic!("dek {} still customer-wrapped", dek.dek_id)
        };
        let Protected::Open(edek) = &dek.edek else {
            panic!("open")
        };
        let clear = keyledger_store::provider::unwrap_dek(
            f.store.key_ring(),
            testing::org_id(),
            dek.dek_id,
            internal_key_id,
            edek,
        )
        .unwrap();
        assert_eq!(clear.len(), 32);
    }
}

#[tokio::test]
async fn a_stale_if_match_is_a_version_mismatch() {
    let f = enabled().await;
    let mut r = request(
        billing(),
        Intent::ChangePlan {
            plan: Plan::free(),
            reason: "x".into(),
        },
    );
    r.if_match = Some(StreamVersion(2));
    let err = f.app.handle(r).await.unwrap_err();
    assert!(matches!(err, AppError::VersionMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn a_caller_outside_the_scope_learns_nothing_from_if_match() {
    let f = enabled().await;
    for actor in [testing::admin_of_other_org(), admin()] {
        // Another organization's administrator, and a role that may not change the plan.
        let mut r = request(
            actor,
            Intent::ChangePlan {
                plan: Plan::free(),
                reason: "x".into(),
            },
        );
        r.if_match = Some(StreamVersion(999));
        let err = f.app.handle(r).await.unwrap_err();
        assert!(
            matches!(err, AppError::Rejected(DomainError::Forbidden)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn health_changes_come_from_the_engine() {
    let f = enabled().await;
    let out = run(
        &f,
        system(),
        Intent::RecordKeyHealth {
            status: HealthStatus::KeyDisabled,
            detail: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        out.view.encryption.health.unwrap().status,
        HealthStatus::KeyDisabled
    );
    let again = run(
        &f,
        system(),
        Intent::RecordKeyHealth {
            status: HealthStatus::KeyDisabled,
            detail: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(again.appended, 0);
}

/// A second instance on the same store, with its own cache.
fn other_instance(f: &Fixture) -> App {
    App::new(
        f.store.clone(),
        f.vault.clone(),
        f.clock.clone(),
        AppConfig::default(),
    )
}

fn change_plan(plan: Plan) -> Intent {
    Intent::ChangePlan {
        plan,
        reason: "billing".into(),
    }
}

#[tokio::test]
async fn a_stale_cached_state_records_nothing_decided_on_it() {
    // `f.app` caches the organization with CMK on; another instance then switches to the
    // provider-managed key. A downgrade decided on the stale cache would lock CMK; the one
    // recorded must be decided on the stored state: a plan change alone.
    let f = enabled().await;
    let other = other_instance(&f);
    other
        .handle(request(
            admin(),
            Intent::SwitchToProviderManagedKey {
                abandon_lost_data: false,
            },
        ))
        .await
        .unwrap();
    let before = version(&f).await;
    let out = run(&f, billing(), change_plan(Plan::pro())).await.unwrap();
    assert_eq!(out.view.encryption.mode, EncryptionMode::ProviderManaged);
    assert!(!out.view.encryption.locked);
    let events = f
        .store
        .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(before + 1))
        .await
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["PlanChanged"], "{types:?}");
}

#[tokio::test]
async fn a_stale_cached_state_never_answers_a_no_op() {
    // `f.app` caches the "gold" plan; another instance then sets "standard" again. On the
    // cache, "gold" would be a no-op; on the stored state it is a change, and it is recorded.
    let f = enabled().await;
    run(&f, billing(), change_plan(Plan::enterprise("gold")))
        .await
        .unwrap();
    let other = other_instance(&f);
    other
        .handle(request(billing(), change_plan(Plan::enterprise("standard"))))
        .await
        .unwrap();
    let before = version(&f).await;
    let out = run(&f, billing(), change_plan(Plan::enterprise("gold")))
        .await
        .unwrap();
    assert_eq!(out.appended, 1);
    assert_eq!(out.view.version, before + 1);
    assert_eq!(version(&f).await, before + 1);
}

#[tokio::test]
async fn a_refusal_is_never_decided_on_a_stale_cached_state_alone() {
    // `f.app` caches the organization on the free plan (CMK refused); another instance
    // upgrades it. Enabling through `f.app` must see the upgrade.
    let f = registered().await;
    run(&f, billing(), change_plan(Plan::free())).await.unwrap();
    let other = other_instance(&f);
    other
        .handle(request(billing(), change_plan(Plan::enterprise("standard"))))
        .await
        .unwrap();
    let out = run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v1").versionless())),
    )
    .await
    .unwrap();
    assert_eq!(out.view.encryption.mode, EncryptionMode::CustomerManaged);
}

#[tokio::test]
async fn two_instances_serialize_concurrent_commands_by_version() {
    let f = enabled().await;
    let other = Arc::new(App::new(
        f.store.clone(),
        f.vault.clone(),
        Arc::new(SystemClock),
        AppConfig::default(),
    ));
    let first = Arc::new(f.app);
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let app = if i % 2 == 0 { first.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let plan = if i % 2 == 0 {
                Plan::enterprise("a")
            } else {
                Plan::enterprise("b")
            };
            app.handle(request(
                billing(),
                Intent::ChangePlan {
                    plan,
                    reason: format!("r{i}"),
                },
            ))
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events = f
        .store
        .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(1))
        .await
        .unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.stream_version.0, i as u64 + 1);
    }
    // Each instance sees the other's writes.
    let a = first.view(testing::org_id()).await.unwrap().unwrap();
    let b = other.view(testing::org_id()).await.unwrap().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.version, events.len() as u64);
}

async fn monitored() -> (Fixture, Arc<HealthMonitor>) {
    let f = enabled().await;
    let app = Arc::new(App::new(
        f.store.clone(),
        f.vault.clone(),
        f.clock.clone(),
        AppConfig::default(),
    ));
    let monitor = Arc::new(HealthMonitor::new(app, f.vault.clone(), HealthConfig::default()));
    (f, monitor)
}

#[tokio::test]
async fn health_follows_the_troubleshooting_table() {
    let (f, m) = monitored().await;
    let org = testing::org_id();
    let probe = m.probe(org).await.unwrap();
    assert_eq!((probe.status, probe.changed), (HealthStatus::Healthy, false));
    f.vault.disable("cmk", "v2");
    assert_eq!(m.probe(org).await.unwrap().status, HealthStatus::KeyDisabled);
    f.vault.enable("cmk", "v2");
    assert_eq!(m.probe(org).await.unwrap().status, HealthStatus::Healthy);
    *f.vault.secret_expired.lock().unwrap() = true;
    assert_eq!(
        m.probe(org).await.unwrap().status,
        HealthStatus::CredentialsExpired
    );
    *f.vault.secret_expired.lock().unwrap() = false;
    assert_eq!(m.probe(org).await.unwrap().status, HealthStatus::Healthy);
    f.vault.delete("cmk");
    assert_eq!(m.probe(org).await.unwrap().status, HealthStatus::KeyNotFound);
}

#[tokio::test]
async fn an_outage_reads_as_unreachable_only_after_the_grace_period() {
    let (f, m) = monitored().await;
    let org = testing::org_id();
    *f.vault.down.lock().unwrap() = true;
    for _ in 0..10 {
        let p = m.probe(org).await.unwrap();
        assert_eq!(p.status, HealthStatus::Healthy, "a 503 blip is not a revocation");
        assert!(!p.changed);
        f.clock.advance(chrono::Duration::minutes(1));
    }
    f.clock.advance(chrono::Duration::minutes(5));
    let p = m.probe(org).await.unwrap();
    assert_eq!((p.status, p.changed), (HealthStatus::VaultUnreachable, true));
    *f.vault.down.lock().unwrap() = false;
    assert_eq!(m.probe(org).await.unwrap().status, HealthStatus::Healthy);
    // Only the two changes were recorded.
    let events = f
        .store
        .read_stream(StreamId::for_org(org), StreamVersion(1))
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "KeyHealthChanged")
            .count(),
        2
    );
}

#[tokio::test]
async fn probing_a_provider_managed_org_is_refused() {
    let f = registered().await;
    let app = Arc::new(App::new(
        f.store.clone(),
        f.vault.clone(),
        f.clock.clone(),
        AppConfig::default(),
    ));
    let m = HealthMonitor::new(app, f.vault.clone(), HealthConfig::default());
    let err = m.probe(testing::org_id()).await.unwrap_err();
    assert!(
        matches!(err, AppError::Rejected(DomainError::CmkNotEnabled)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_probes_every_customer_managed_org_each_interval() {
    let f = enabled().await;
    // A second, provider-managed organization is not probed.
    let other = testing::other_org_id();
    f.app
        .handle(CommandRequest {
            org_id: other,
            ..request(
                platform(),
                Intent::Register {
                    name: "Other".into(),
                    plan: Plan::free(),
                    tenants: vec![],
                },
            )
        })
        .await
        .unwrap();
    let app = Arc::new(App::new(
        f.store.clone(),
        f.vault.clone(),
        f.clock.clone(),
        AppConfig::default(),
    ));
    let config = HealthConfig {
        probe_interval: std::time::Duration::from_millis(100),
        ..HealthConfig::default()
    };
    let monitor = Arc::new(HealthMonitor::new(app, f.vault.clone(), config));
    f.vault.disable("cmk", "v2");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(monitor.clone().run(f.store.clone(), async move {
        let _ = stop_rx.await;
    }));
    let org = testing::org_id();
    let mut recorded = false;
    for _ in 0..200 {
        let view = f.app.view(org).await.unwrap().unwrap();
        if view.encryption.health.unwrap().status == HealthStatus::KeyDisabled {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    task.await.unwrap();
    assert!(recorded, "the scheduled probe recorded the disabled key");
    assert!(monitor.last_probe_at(org).is_some());
    assert!(
        monitor.last_probe_at(other).is_none(),
        "provider-managed orgs are not probed"
    );
}

/// Registers `org` with one tenant.
async fn register(app: &App, org: OrgId) {
    app.handle(CommandRequest {
        org_id: org,
        ..request(
            platform(),
            Intent::Register {
                name: format!("org {org}"),
                plan: Plan::enterprise("standard"),
                tenants: vec![tenant_a()],
            },
        )
    })
    .await
    .unwrap();
}

fn add_tenant(org: OrgId, n: u8, command_id: Option<&str>) -> CommandRequest {
    CommandRequest {
        org_id: org,
        command_id: command_id.map(|c| CommandId::parse(c).unwrap()),
        ..request(
            platform(),
            Intent::AddTenant(Tenant {
                tenant_id: testing::tenant_id(n),
                name: format!("tenant {n}"),
            }),
        )
    }
}

/// Issue 11, defect 1: a command id used on organization A and reused on B is refused; B
/// records nothing, its view does not show the tenant, and B's next command succeeds.
#[tokio::test]
async fn a_command_id_reused_on_another_org_is_refused_and_records_nothing() {
    let f = fixture();
    let (a, b) = (testing::org_id(), testing::other_org_id());
    register(&f.app, a).await;
    register(&f.app, b).await;
    f.app.handle(add_tenant(a, 1, Some("k1"))).await.unwrap();
    let reused = f.app.handle(add_tenant(b, 2, Some("k1"))).await;
    assert!(matches!(reused, Err(AppError::CommandIdReused)), "{reused:?}");
    let stored = f
        .store
        .read_stream(StreamId::for_org(b), StreamVersion(1))
        .await
        .unwrap();
    assert!(
        stored.iter().all(|e| e.event_type != "TenantAdded"),
        "nothing of the refused command is stored"
    );
    let view = f.app.view(b).await.unwrap().unwrap();
    assert_eq!((view.version, view.tenants.len()), (stored.len() as u64, 1));
    let next = f.app.handle(add_tenant(b, 3, None)).await.unwrap();
    assert_eq!((next.appended, next.view.version), (1, view.version + 1));
}

/// A store that answers a known command id with its first result whatever the stream (what
/// every backend did before issue 11).
struct AnswersAnyStream {
    inner: InMemoryStore,
    seen: std::sync::Mutex<std::collections::HashMap<CommandId, keyledger_store::AppendResult>>,
}

#[async_trait::async_trait]
impl EventStore for AnswersAnyStream {
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<keyledger_store::NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<keyledger_store::AppendResult, keyledger_store::StoreError> {
        if let Some(previous) = command_id
            .as_ref()
            .and_then(|c| self.seen.lock().unwrap().get(c).copied())
        {
            return Ok(previous);
        }
        let result = self
            .inner
            .append(stream, expected, events, command_id.clone())
            .await?;
        if let Some(c) = command_id {
            self.seen.lock().unwrap().insert(c, result);
        }
        Ok(result)
    }
    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, keyledger_store::StoreError> {
        self.inner.read_stream(stream, from).await
    }
    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, keyledger_store::StoreError> {
        self.inner.read_all(after, limit).await
    }
    fn subscribe(&self, after: GlobalPosition) -> keyledger_store::EventStream {
        self.inner.subscribe(after)
    }
    async fn import(
        &self,
        events: Vec<StoredEvent>,
        batch: keyledger_store::ImportBatch,
    ) -> Result<usize, keyledger_store::StoreError> {
        self.inner.import(events, batch).await
    }
    fn key_ring(&self) -> &KeyRing {
        self.inner.key_ring()
    }
}

/// The app applies a command's events to its cache only when the store says it wrote them to
/// this stream at the versions asked for: a result about another stream is an error, not a
/// success, and leaves the cache as the store is.
#[tokio::test]
async fn the_app_believes_only_what_the_store_says_it_wrote() {
    let store = Arc::new(AnswersAnyStream {
        inner: InMemoryStore::new(Arc::new(KeyRing::generate())),
        seen: Default::default(),
    });
    let app = App::new(
        store.clone(),
        Arc::new(FakeVault::default()),
        Arc::new(SystemClock),
        AppConfig::default(),
    );
    let (a, b) = (testing::org_id(), testing::other_org_id());
    register(&app, a).await;
    register(&app, b).await;
    let before = app.view(b).await.unwrap().unwrap();
    // A is one version ahead of B after this: its append is exactly what B's would have been.
    app.handle(add_tenant(a, 1, Some("k1"))).await.unwrap();
    let answered = app.handle(add_tenant(b, 2, Some("k1"))).await;
    assert!(matches!(answered, Err(AppError::CommandIdReused)), "{answered:?}");
    assert_eq!(app.view(b).await.unwrap().unwrap(), before);
    let next = app.handle(add_tenant(b, 3, None)).await.unwrap();
    assert_eq!((next.appended, next.view.version), (1, before.version + 1));
}

/// The store, whose first subscription ends at once with a backend error (a lost
/// connection); later ones are the store's own.
struct FirstSubscriptionFails {
    inner: Arc<InMemoryStore>,
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl EventStore for FirstSubscriptionFails {
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<keyledger_store::NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<keyledger_store::AppendResult, keyledger_store::StoreError> {
        self.inner.append(stream, expected, events, command_id).await
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, keyledger_store::StoreError> {
        self.inner.read_stream(stream, from).await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, keyledger_store::StoreError> {
        self.inner.read_all(after, limit).await
    }

    fn subscribe(&self, after: GlobalPosition) -> keyledger_store::EventStream {
        use futures::StreamExt as _;
        if self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.inner.subscribe(after)
        } else {
            futures::stream::iter([Err(keyledger_store::StoreError::backend(
                "injected: connection lost",
            ))])
            .boxed()
        }
    }

    async fn import(
        &self,
        events: Vec<StoredEvent>,
        batch: keyledger_store::ImportBatch,
    ) -> Result<usize, keyledger_store::StoreError> {
        self.inner.import(events, batch).await
    }

    fn key_ring(&self) -> &KeyRing {
        self.inner.key_ring()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follower_survives_a_store_error() {
    let f = registered().await;
    let app = Arc::new(App::new(
        f.store.clone(),
        f.vault.clone(),
        f.clock.clone(),
        AppConfig::default(),
    ));
    let config = HealthConfig {
        probe_interval: std::time::Duration::from_millis(50),
        ..HealthConfig::default()
    };
    let monitor = Arc::new(HealthMonitor::new(app, f.vault.clone(), config));
    let failing = Arc::new(FirstSubscriptionFails {
        inner: f.store.clone(),
        failed: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(monitor.clone().run(failing.clone(), async move {
        let _ = stop_rx.await;
    }));
    // The follower's first subscription has failed; the organization enables its key after.
    for _ in 0..100 {
        if failing.failed.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(failing.failed.load(std::sync::atomic::Ordering::SeqCst));
    run(
        &f,
        admin(),
        Intent::EnableCustomerManagedKey(connection(&kid("cmk", "v1").versionless())),
    )
    .await
    .unwrap();
    f.vault.disable("cmk", "v2");
    let org = testing::org_id();
    let mut recorded = false;
    for _ in 0..250 {
        let view = f.app.view(org).await.unwrap().unwrap();
        if view.encryption.health.unwrap().status == HealthStatus::KeyDisabled {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    task.await.unwrap();
    assert!(recorded, "a key enabled after the store error is still probed");
}
