//! The adapter through the official SDK client against the AKV emulator over real HTTPS: the
//! emulator is started in process (`akv_emulator::start` on 127.0.0.1:0), so the adapter's own
//! reqwest client, its TLS and its redirect policy are what is tested.

use std::path::PathBuf;
use std::time::Duration;

use akv_emulator::Emulator;
use keyledger_azure::{AzureConfig, AzureKeyAccess};
use keyledger_domain::{Connection, HostAllowList, KeyIdentifier};
use keyledger_keys::{KeyAccess, Reason, RetryPolicy, Retrying};
use keyledger_vault_sim::{AppRegistration, Faults, NewKey};
use secrecy::SecretString;

const CLIENT: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000a2";
const SECRET: &str = "emulator-adapter-secret";

fn state_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keyledger-azure-emu-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An emulator with the app and an RSA key `cmk`. Emulators started on one state directory
/// share its CA key, so one `ca.pem` is trusted by all of them.
async fn emulator(dir: &std::path::Path) -> Emulator {
    let emu = akv_emulator::start(([127, 0, 0, 1], 0).into(), dir)
        .await
        .expect("the emulator starts");
    emu.vault.register_app(AppRegistration::new(
        &emu.tenant_id,
        CLIENT,
        SECRET,
        &["get", "wrapKey", "unwrapKey"],
    ));
    emu.vault
        .create_key(&emu.vault_url, NewKey::rsa("cmk", 2048))
        .expect("a key");
    emu
}

/// The allow-list entry for an emulator: its address with its port.
fn allow(emu: &Emulator) -> HostAllowList {
    HostAllowList::new([format!("127.0.0.1:{}", emu.addr.port())])
}

fn access(emu: &Emulator, authority_host: &str, allow: HostAllowList) -> Retrying<AzureKeyAccess> {
    let config = AzureConfig {
        authority_host: authority_host.to_owned(),
        allowed_vault_hosts: allow,
        ca_cert_pem: Some(std::fs::read(&emu.ca_cert).expect("ca.pem")),
        request_timeout: Duration::from_secs(10),
        verify_challenge_resource: true,
    };
    AzureKeyAccess::new(config)
        .expect("adapter")
        .retrying(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            request_timeout: Duration::from_secs(10),
        })
}

fn connection(emu: &Emulator, vault_url: &str, allow: &HostAllowList) -> Connection {
    Connection {
        directory_id: emu.tenant_id.parse().unwrap(),
        application_id: CLIENT.parse().unwrap(),
        client_secret: SecretString::from(SECRET),
        key_identifier: KeyIdentifier::parse(&format!("{vault_url}/keys/cmk"), allow).unwrap(),
    }
}

fn redirect_to(url: &str) -> Faults {
    Faults {
        redirect_to: Some(url.to_owned()),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_vault_is_not_followed() {
    let dir = state_dir("vault-redirect");
    let allowed = emulator(&dir).await;
    let elsewhere = emulator(&dir).await;
    // Only the first vault is on the allow list; it redirects everything to the second.
    allowed.vault.set_faults(redirect_to(&elsewhere.vault_url));
    let list = allow(&allowed);
    let access = access(&allowed, &allowed.authority_host, list.clone());
    let e = access
        .describe(&connection(&allowed, &allowed.vault_url, &list))
        .await
        .expect_err("a redirect is a failure");
    assert_eq!(e.reason, Reason::VaultError, "{e}");
    assert!(e.to_string().contains("307"), "{e}");
    assert_eq!(
        elsewhere.vault.request_count(),
        0,
        "the redirect target was never contacted"
    );

    // Without the redirect the same connection works: the failure was the redirect.
    allowed.vault.clear_faults();
    let works = access
        .describe(&connection(&allowed, &allowed.vault_url, &list))
        .await;
    assert!(works.is_ok(), "{works:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_token_endpoint_is_not_followed() {
    let dir = state_dir("token-redirect");
    let authority = emulator(&dir).await;
    let vault = emulator(&dir).await;
    // The token endpoint redirects to the vault's own directory, which would issue a token.
    authority.vault.set_faults(redirect_to(&vault.authority_host));
    let list = allow(&vault);
    let access = access(&vault, &authority.authority_host, list.clone());
    let e = access
        .describe(&connection(&vault, &vault.vault_url, &list))
        .await
        .expect_err("no token through a redirect");
    assert!(!e.to_string().contains(SECRET), "{e}");
    // Following it would have posted the client secret to the redirect target, whose token
    // the vault accepts: with that directory as the authority, the same connection works.
    let direct = self::access(&vault, &vault.authority_host, list.clone());
    let works = direct
        .describe(&connection(&vault, &vault.vault_url, &list))
        .await;
    assert!(works.is_ok(), "{works:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_on_a_port_off_the_allow_list_gets_no_request() {
    let dir = state_dir("port");
    let emu = emulator(&dir).await;
    // The identifier was recorded under a list that named the emulator's port; the adapter's
    // list names the host alone, which allows port 443 only.
    let recorded_under = allow(&emu);
    let access = access(&emu, &emu.authority_host, HostAllowList::new(["127.0.0.1"]));
    let e = access
        .describe(&connection(&emu, &emu.vault_url, &recorded_under))
        .await
        .expect_err("another port is another vault");
    assert_eq!(e.reason, Reason::KeyNotAllowed, "{e}");
    assert_eq!(emu.vault.request_count(), 0, "nothing was sent");
    let _ = std::fs::remove_dir_all(&dir);
}
