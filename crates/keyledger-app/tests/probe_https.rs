//! The key-health probe and DEK releases through the official SDK adapter against the AKV
//! emulator over real HTTPS (the emulator is started in process on 127.0.0.1:0).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keyledger_app::*;
use keyledger_azure::{AzureConfig, AzureKeyAccess};
use keyledger_domain::testing::{self, admin, platform, tenant_a};
use keyledger_domain::*;
use keyledger_keys::{KeyAccess, RetryPolicy};
use keyledger_store::{InMemoryStore, KeyRing};
use keyledger_vault_sim::{AppPatch, AppRegistration, NewKey};
use secrecy::SecretString;

const CLIENT: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000a3";
const SECRET: &str = "probe-over-https-secret";

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

/// An emulator with the app and key `cmk`, and an app over it (in-memory store) whose
/// organization has enabled that key through the SDK adapter.
struct Setup {
    emu: akv_emulator::Emulator,
    app: Arc<App>,
    keys: Arc<dyn KeyAccess>,
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn enabled(test: &str) -> Setup {
    enabled_with(test, AppConfig::default()).await
}

async fn enabled_with(test: &str, app_config: AppConfig) -> Setup {
    let dir = std::env::temp_dir().join(format!("keyledger-app-probe-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let emu = akv_emulator::start(([127, 0, 0, 1], 0).into(), &dir)
        .await
        .unwrap();
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
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app = Arc::new(App::new(store, keys.clone(), clock, app_config));
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
    Setup { emu, app, keys, dir }
}

/// The client secret expires. The adapter still holds an access token valid for an hour,
/// which the vault would go on accepting.
fn expire_the_secret(emu: &akv_emulator::Emulator) {
    emu.vault.update_app(
        CLIENT,
        AppPatch::default().expires(Some(Utc::now() - chrono::Duration::minutes(1))),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_probe_sees_an_expired_secret_despite_a_cached_token() {
    let s = enabled("on-demand").await;
    let monitor = HealthMonitor::new(s.app.clone(), s.keys.clone(), HealthConfig::default());
    let org = testing::org_id();
    assert_eq!(monitor.probe(org).await.unwrap().status, HealthStatus::Healthy);
    expire_the_secret(&s.emu);
    let probe = monitor.probe(org).await.unwrap();
    assert_eq!(probe.status, HealthStatus::CredentialsExpired);
    assert!(probe.changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_monitor_sees_an_expired_secret_despite_a_cached_token() {
    let s = enabled("scheduled").await;
    let config = HealthConfig {
        probe_interval: Duration::from_millis(100),
        ..HealthConfig::default()
    };
    let monitor = Arc::new(HealthMonitor::new(s.app.clone(), s.keys.clone(), config));
    let org = testing::org_id();
    // The enable left a token in the adapter's cache; the secret expires behind it.
    expire_the_secret(&s.emu);
    let store = s.app.store().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(monitor.clone().run(store, async move {
        let _ = stop_rx.await;
    }));
    let mut seen = None;
    for _ in 0..200 {
        let status = s
            .app
            .view(org)
            .await
            .unwrap()
            .unwrap()
            .encryption
            .health
            .unwrap()
            .status;
        if status != HealthStatus::Healthy {
            seen = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    task.await.unwrap();
    assert_eq!(seen, Some(HealthStatus::CredentialsExpired));
}

/// `n` concurrent releases of the active DEK (a customer-managed one) while every vault
/// request takes 100 ms; the vault requests they made.
async fn concurrent_releases(setup: &Setup, n: usize) -> u64 {
    let release = || {
        setup.app.release(ReleaseRequest {
            org_id: testing::org_id(),
            actor: platform(),
            of: ReleaseOf::Active,
            source_ip: None,
            correlation_id: None,
        })
    };
    // A first release: the adapter's access token is cached from then on.
    let first = release().await.unwrap();
    setup.emu.vault.set_faults(keyledger_vault_sim::Faults {
        latency_ms: Some(100),
        ..Default::default()
    });
    let before = setup.emu.vault.request_count();
    let all = futures::future::join_all((0..n).map(|_| release())).await;
    let made = setup.emu.vault.request_count() - before;
    setup.emu.vault.set_faults(keyledger_vault_sim::Faults::default());
    for released in all {
        let released = released.unwrap();
        assert_eq!((released.dek_id, &released.key), (first.dek_id, &first.key));
    }
    made
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_releases_of_one_dek_share_one_vault_unwrap() {
    let setup = enabled("single-flight").await;
    let made = concurrent_releases(&setup, 16).await;
    assert!(made <= 2, "16 concurrent releases made {made} vault requests");
    // Later releases ask the vault again: the customer can refuse any of them.
    let before = setup.emu.vault.request_count();
    concurrent_releases(&setup, 1).await;
    assert!(setup.emu.vault.request_count() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_single_flight_every_release_asks_the_vault() {
    let config = AppConfig {
        release_single_flight: false,
        ..AppConfig::default()
    };
    let setup = enabled_with("no-single-flight", config).await;
    let made = concurrent_releases(&setup, 16).await;
    assert!(made >= 16, "16 concurrent releases made {made} vault requests");
}
