//! The key-health probe and DEK releases through the official SDK adapter against the AKV
//! emulator over real HTTPS (the emulator is started in process on 127.0.0.1:0).

mod emulated;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use emulated::{CLIENT, Enabled as Setup};
use keyledger_app::*;
use keyledger_domain::testing::{self, platform};
use keyledger_domain::*;
use keyledger_vault_sim::AppPatch;

async fn enabled(test: &str) -> Setup {
    enabled_with(test, AppConfig::default()).await
}

async fn enabled_with(test: &str, app_config: AppConfig) -> Setup {
    emulated::enabled(&format!("probe-{test}"), None, app_config).await
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
