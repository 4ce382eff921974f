//! Dev mode's parts (DESIGN.md §8): an in-process simulated vault with a demo app
//! registration and keys, reached through the official Azure SDK adapter, and one token per
//! role. Also used by the HTTP tests and the load tool.

use std::sync::Arc;
use std::time::Duration;

use keyledger_azure::{AzureConfig, AzureKeyAccess, InProcessTransport};
use keyledger_domain::Role;
use keyledger_keys::{KeyAccess, RetryPolicy};
use keyledger_vault_sim::{AppRegistration, Clock, NewKey, Vault, VaultConfig};
use rand::Rng as _;
use rand::distributions::Alphanumeric;

use crate::auth::TokenGrant;

/// The demo vault's URL. Its host is on the default allow-list.
pub const DEMO_VAULT_URL: &str = "https://demo.vault.azure.net";
/// The demo keys: enable with the first, rotate to the second.
pub const DEMO_KEYS: [&str; 2] = ["cmk", "cmk-2"];
/// The demo application (client) id.
pub const DEMO_APPLICATION_ID: &str = "5e1c0a4e-7d1f-4b8a-9c3e-0d2f6a8b1c4d";

fn random(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A simulated vault with an app registration that may get, wrap and unwrap, and two keys.
pub struct DemoVault {
    pub vault: Arc<Vault>,
    pub directory_id: String,
    pub application_id: String,
    /// Random per start; printed once in dev mode.
    pub client_secret: String,
    pub key_identifiers: Vec<String>,
}

impl std::fmt::Debug for DemoVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoVault")
            .field("directory_id", &self.directory_id)
            .field("application_id", &self.application_id)
            .field("client_secret", &"<hidden>")
            .finish_non_exhaustive()
    }
}

impl DemoVault {
    /// A fresh vault on the system clock.
    pub fn new() -> Self {
        let vault = Vault::new(VaultConfig::default(), Clock::system());
        let directory_id = vault.config().tenant_id.clone();
        let client_secret = format!("demo-{}", random(32));
        vault.register_app(AppRegistration::new(
            &directory_id,
            DEMO_APPLICATION_ID,
            &client_secret,
            &["get", "wrapKey", "unwrapKey"],
        ));
        let key_identifiers = DEMO_KEYS
            .iter()
            .map(|name| {
                vault
                    .create_key(DEMO_VAULT_URL, NewKey::rsa(*name, 2048))
                    .expect("the simulated vault creates a demo key");
                format!("{DEMO_VAULT_URL}/keys/{name}")
            })
            .collect();
        Self {
            vault,
            directory_id,
            application_id: DEMO_APPLICATION_ID.to_owned(),
            client_secret,
            key_identifiers,
        }
    }

    /// Key access to this vault through the official SDK adapter, in process.
    pub fn key_access(&self) -> Arc<dyn KeyAccess> {
        simulated_key_access(self.vault.clone())
    }
}

/// What dev mode keeps of its vault between starts (test data: the file is 0600).
#[derive(serde::Serialize, serde::Deserialize)]
struct DemoFile {
    client_secret: String,
    key_identifiers: Vec<String>,
    vault: serde_json::Value,
}

impl DemoVault {
    /// The demo vault kept in `path`: loaded when the file exists, created and saved when it
    /// does not. Without it, a restart of dev mode would find the keys of the organizations
    /// already in the store gone.
    pub fn open_or_create(path: &std::path::Path) -> Result<Self, String> {
        let describe = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
        if path.exists() {
            let bytes = std::fs::read(path).map_err(|e| describe("cannot read", &e))?;
            let file: DemoFile = serde_json::from_slice(&bytes).map_err(|e| describe("cannot parse", &e))?;
            let vault = Vault::new(VaultConfig::default(), Clock::system());
            let state = serde_json::to_vec(&file.vault).map_err(|e| describe("cannot parse", &e))?;
            vault
                .load_state(&state)
                .map_err(|e| describe("cannot load", &e.message))?;
            let directory_id = vault.config().tenant_id.clone();
            return Ok(Self {
                vault,
                directory_id,
                application_id: DEMO_APPLICATION_ID.to_owned(),
                client_secret: file.client_secret,
                key_identifiers: file.key_identifiers,
            });
        }
        let demo = Self::new();
        let state = demo
            .vault
            .save_state()
            .map_err(|e| describe("cannot save", &e.message))?;
        let file = DemoFile {
            client_secret: demo.client_secret.clone(),
            key_identifiers: demo.key_identifiers.clone(),
            vault: serde_json::from_slice(&state).map_err(|e| describe("cannot save", &e))?,
        };
        let text = serde_json::to_vec(&file).map_err(|e| describe("cannot save", &e))?;
        write_private(path, &text).map_err(|e| describe("cannot write", &e))?;
        Ok(demo)
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

impl Default for DemoVault {
    fn default() -> Self {
        Self::new()
    }
}

/// The official SDK adapter on an in-process transport to `vault`, with retries.
pub fn simulated_key_access(vault: Arc<Vault>) -> Arc<dyn KeyAccess> {
    let config = AzureConfig {
        request_timeout: Duration::from_secs(10),
        ..AzureConfig::default()
    };
    Arc::new(
        AzureKeyAccess::with_transport(config, InProcessTransport::transport(vault))
            .retrying(RetryPolicy::default()),
    )
}

/// One random token per role, over everything.
pub fn demo_tokens() -> Vec<TokenGrant> {
    [
        (Role::OrgAdmin, "admin@example.com"),
        (Role::Auditor, "auditor@example.com"),
        (Role::Platform, "platform"),
        (Role::Billing, "billing"),
        (Role::Support, "support@example.com"),
    ]
    .into_iter()
    .map(|(role, subject)| TokenGrant {
        token: format!("dev-{}-{}", role_name(role), random(24)),
        subject: subject.to_owned(),
        roles: vec![role],
        organizations: None,
        tenants: None,
    })
    .collect()
}

/// The configuration name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::OrgAdmin => "org_admin",
        Role::Auditor => "auditor",
        Role::Platform => "platform",
        Role::Billing => "billing",
        Role::Support => "support",
        Role::System => "system",
    }
}
