//! Starts the built `akv-emulator` binary and talks to it over real HTTPS: the control API with
//! reqwest, the data plane with the official SDK through keyledger-azure, trusting the
//! emulator's CA through `ca_cert`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyledger_azure::{AzureConfig, AzureKeyAccess};
use keyledger_domain::{Connection, HostAllowList, KeyIdentifier};
use keyledger_keys::{Dek, KeyAccess, Reason, RetryPolicy, test_connection};
use secrecy::SecretString;
use serde_json::{Value, json};

const CLIENT: &str = "5d7c0000-aaaa-4bbb-8ccc-000000000001";
const SECRET: &str = "emulator-secret";

struct Running {
    child: Child,
    startup: Value,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// SIGTERM, as an operator would stop it; the emulator saves its state and exits 0.
    fn terminate(mut self) {
        // The shell's built-in kill: no extra package, and no unsafe libc call.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "emulator exit status {exit:?}");
    }
}

/// A fresh state directory per test (tests of one binary run in one process, in parallel).
fn state_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("akv-emulator-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(state_dir: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_akv-emulator"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the emulator starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let startup: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("start-up line {line:?}: {e}"));
    assert_eq!(
        PathBuf::from(startup["ca_cert"].as_str().unwrap()),
        state_dir.join("ca.pem")
    );
    Running { child, startup }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_talks_to_the_emulator_over_https() {
    let dir = state_dir("sdk");
    let emu = start(&dir);
    let vault_url = emu.startup["vault_url"].as_str().unwrap().to_owned();
    let authority = emu.startup["authority_host"].as_str().unwrap().to_owned();
    assert!(vault_url.starts_with("https://127.0.0.1:"), "{vault_url}");
    let ca_pem = std::fs::read(emu.startup["ca_cert"].as_str().unwrap()).unwrap();

    // Control API over HTTPS, trusting only the emulator's CA.
    let http = http_for(&ca_pem);
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let r = http
        .post(format!("{vault_url}/_emulator/apps"))
        .json(
            &json!({"tenant_id": tenant, "client_id": CLIENT, "client_secret": SECRET,
                      "key_permissions": ["get", "wrapKey", "unwrapKey"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{vault_url}/_emulator/keys"))
        .json(&json!({"name": "cmk", "kty": "RSA", "size": 2048}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let kid = r.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(kid.starts_with(&format!("{vault_url}/keys/cmk/")));

    // The SDK, through keyledger-azure, with the emulator's CA as an extra root.
    // The emulator's address with its port: an entry without one allows only port 443.
    let allow = HostAllowList::new([vault_url.trim_start_matches("https://")]);
    let config = AzureConfig {
        authority_host: authority.clone(),
        allowed_vault_hosts: allow.clone(),
        ca_cert_pem: Some(ca_pem.clone()),
        request_timeout: Duration::from_secs(10),
        // Left on: the adapter skips the check by itself for an IP-literal vault host.
        verify_challenge_resource: true,
    };
    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        request_timeout: Duration::from_secs(10),
    };
    let access = AzureKeyAccess::new(config.clone())
        .unwrap()
        .retrying(policy.clone());
    let connection = Connection {
        directory_id: tenant.parse().unwrap(),
        application_id: CLIENT.parse().unwrap(),
        client_secret: SecretString::from(SECRET),
        key_identifier: KeyIdentifier::parse(&format!("{vault_url}/keys/cmk"), &allow).unwrap(),
    };
    let t = test_connection(&access, &connection, chrono::Utc::now()).await;
    let key = t
        .outcome
        .as_ref()
        .unwrap_or_else(|e| panic!("connection test over HTTPS: {e}"));
    assert_eq!(key.key().to_string(), kid);
    let dek = Dek::generate();
    let wrapped = access.wrap(key.connection(), &dek).await.unwrap();
    assert_eq!(
        access.unwrap(key.connection(), wrapped.edek()).await.unwrap(),
        dek
    );

    // Faults set through the control API reach the SDK as reasons.
    let put_faults = |body: Value| {
        let http = http.clone();
        let url = format!("{vault_url}/_emulator/faults");
        async move { http.put(url).json(&body).send().await.unwrap().status() }
    };
    assert_eq!(put_faults(json!({"status": 503})).await, 200);
    let e = access.unwrap(key.connection(), wrapped.edek()).await.unwrap_err();
    assert_eq!(e.reason, Reason::VaultError);
    assert_eq!(put_faults(json!({"status": 429})).await, 200);
    assert_eq!(
        access.describe(key.connection()).await.unwrap_err().reason,
        Reason::Throttled
    );
    assert_eq!(
        http.delete(format!("{vault_url}/_emulator/faults"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        access.unwrap(key.connection(), wrapped.edek()).await.unwrap(),
        dek
    );

    // Unreachable: the connection is closed without an answer; the control API still works.
    assert_eq!(put_faults(json!({"unreachable": true})).await, 200);
    let e = access.unwrap(key.connection(), wrapped.edek()).await.unwrap_err();
    assert_eq!(e.reason, Reason::VaultUnreachable, "{e}");
    assert_eq!(
        http.delete(format!("{vault_url}/_emulator/faults"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        access.unwrap(key.connection(), wrapped.edek()).await.unwrap(),
        dek
    );

    // Disabled key, over the wire.
    let version = kid.rsplit('/').next().unwrap();
    let r = http
        .patch(format!("{vault_url}/_emulator/keys/cmk/{version}"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        access
            .unwrap(key.connection(), wrapped.edek())
            .await
            .unwrap_err()
            .reason,
        Reason::KeyDisabled
    );

    // Without the emulator's CA, TLS fails: the vault is unreachable, not "invalid".
    let untrusting = AzureKeyAccess::new(AzureConfig {
        ca_cert_pem: None,
        ..config
    })
    .unwrap()
    .retrying(policy);
    let e = untrusting.describe(&connection).await.unwrap_err();
    assert_eq!(e.reason, Reason::VaultUnreachable, "{e}");

    // Stop and start again on a new port with the same state directory: the key (same
    // version), the app and the CA key survive; the ca.pem read before still verifies.
    emu.terminate();
    let state = dir.join("state.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state.json holds secrets");
    }
    let emu = start(&dir);
    let vault_url = emu.startup["vault_url"].as_str().unwrap().to_owned();
    let allow = HostAllowList::new([vault_url.trim_start_matches("https://")]);
    let access = AzureKeyAccess::new(AzureConfig {
        authority_host: emu.startup["authority_host"].as_str().unwrap().to_owned(),
        allowed_vault_hosts: allow.clone(),
        ca_cert_pem: Some(ca_pem.clone()),
        request_timeout: Duration::from_secs(10),
        verify_challenge_resource: true,
    })
    .unwrap();
    let moved = Connection {
        key_identifier: KeyIdentifier::parse(&format!("{vault_url}/keys/cmk/{version}"), &allow).unwrap(),
        ..connection
    };
    assert_eq!(
        access.unwrap(&moved, wrapped.edek()).await.unwrap_err().reason,
        Reason::KeyDisabled,
        "still disabled after the restart"
    );
    let r = http_for(&ca_pem)
        .patch(format!("{vault_url}/_emulator/keys/cmk/{version}"))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(access.unwrap(&moved, wrapped.edek()).await.unwrap(), dek);
    emu.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_refuses_an_app_of_another_directory() {
    let dir = state_dir("tenants");
    let emu = start(&dir);
    let vault_url = emu.startup["vault_url"].as_str().unwrap().to_owned();
    let tenant = emu.startup["tenant_id"]
        .as_str()
        .expect("the start line names the vault's directory")
        .to_owned();
    let ca_pem = std::fs::read(emu.startup["ca_cert"].as_str().unwrap()).unwrap();
    let http = http_for(&ca_pem);
    let create = |body: Value| {
        let http = http.clone();
        let url = format!("{vault_url}/_emulator/apps");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let app = |tenant: &str, client: &str, secret: &str| {
        json!({"tenant_id": tenant, "client_id": client, "client_secret": secret,
               "key_permissions": ["get"]})
    };

    let other = "00000000-1111-4222-8333-444444444444";
    let (status, body) = create(app(other, CLIENT, SECRET)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tenant_id") && body.contains(&tenant), "{body}");
    let (status, body) = create(app(&tenant, "", SECRET)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("client_id"), "{body}");
    let (status, body) = create(app(&tenant, CLIENT, "")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("client_secret") && !body.contains(SECRET), "{body}");
    let (status, body) = create(app(&tenant, CLIENT, SECRET)).await;
    assert_eq!(status, 201, "{body}");
    // A secret cannot be emptied later either.
    let r = http
        .patch(format!("{vault_url}/_emulator/apps/{CLIENT}"))
        .json(&json!({"client_secret": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    emu.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_for(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem).unwrap()])
        .build()
        .unwrap()
}
