//! An app over an in-memory store whose organization enabled key `cmk` of the AKV emulator
//! (started in process on 127.0.0.1:0) through the official SDK adapter over real HTTPS: the
//! setup of `probe_https.rs` and `countdown_https.rs`.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_app::*;
use keyledger_azure::{AzureConfig, AzureKeyAccess};
use keyledger_domain::testing::{self, admin, platform, tenant_a};
use keyledger_domain::*;
use keyledger_keys::{KeyAccess, RetryPolicy};
use keyledger_store::{InMemoryStore, KeyRing};
use keyledger_vault_sim::{AppRegistration, NewKey};
use secrecy::SecretString;

/// The emulator's app registration the organization's connection uses.
pub(crate) const CLIENT: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000a3";
pub(crate) const SECRET: &str = "emulated-over-https-secret";

pub(crate) fn request(actor: Actor, intent: Intent) -> CommandRequest {
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

pub(crate) struct Enabled {
    pub emu: akv_emulator::Emulator,
    pub app: Arc<App>,
    pub keys: Arc<dyn KeyAccess>,
    pub store: Arc<InMemoryStore>,
    pub clock: Arc<ManualClock>,
    dir: std::path::PathBuf,
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the emulator in a directory named after `test`, registers the app and key `cmk`,
/// and enables that key for the organization. With `start`, the vault's clock is set to it
/// too (whole seconds, as the vault keeps times); the app's clock starts there either way.
pub(crate) async fn enabled(test: &str, start: Option<DateTime<Utc>>, app_config: AppConfig) -> Enabled {
    let dir = std::env::temp_dir().join(format!("keyledger-app-emulated-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let emu = akv_emulator::start(([127, 0, 0, 1], 0).into(), &dir)
        .await
        .unwrap();
    if let Some(start) = start {
        emu.vault.clock().set(start);
    }
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
    let clock = Arc::new(ManualClock::new(start.unwrap_or_else(Utc::now)));
    let app = Arc::new(App::new(store.clone(), keys.clone(), clock.clone(), app_config));
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
    Enabled {
        emu,
        app,
        keys,
        store,
        clock,
        dir,
    }
}
