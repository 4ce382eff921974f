//! What `keyledger serve` refuses at start and never prints, run as the real binary:
//!
//! - an internal key file that is missing, or holds none of the keys the store was sealed
//!   with, stops `serve` with exit 1 naming the file, and no stray ring is created;
//! - configured bearer tokens never reach stderr or stdout;
//! - a password in a store URL is never printed, whatever form the URL takes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Serving, keyledger, serve_command};
use serde_json::json;

const PLATFORM: &str = "guards-configured-platform-token-7c1d";
const TENANT: &str = "01900000-0000-7000-8000-00000000000a";

/// A configuration with the simulated vault, a SQLite store and one configured token.
fn write_config(dir: &Path, key_file: &Path) -> PathBuf {
    common::write_config(
        &dir.join("keyledger.toml"),
        &format!("sqlite://{}", dir.join("data/keyledger.db").display()),
        key_file,
        &[(PLATFORM, "platform")],
        "",
        "",
    )
}

/// `serve` with debug logs: a secret must not reach even those.
fn serve(config: &Path, stderr: &Path) -> Command {
    let mut cmd = serve_command(config, stderr);
    cmd.env("RUST_LOG", "debug");
    cmd
}

/// Starts `serve` and returns it with its base URL once it listens.
fn start(config: &Path, stderr: &Path) -> (Serving, String) {
    let server = Serving::spawn(serve(config, stderr), stderr);
    let base = server.base.clone();
    (server, base)
}

fn terminate(server: Serving) {
    let exit = server.stop();
    assert!(exit.success(), "serve exited with {exit}");
}

/// Runs `serve` to its end (it must fail before listening) with a bounded wait.
fn serve_to_failure(config: &Path, stderr: &Path) -> (Option<i32>, String) {
    let mut child = serve(config, stderr).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop: {}", std::fs::read_to_string(stderr).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(stderr).unwrap())
}

/// Registers an organization and returns its id.
async fn register_org(base: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/organizations"))
        .bearer_auth(PLATFORM)
        .header("content-type", "application/json")
        .body(
            json!({"name": "Contoso", "plan": {"kind": "enterprise", "tier": "standard"},
                   "tenants": [{"tenant_id": TENANT, "name": "Default"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let view: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    view["org_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_foreign_internal_key_file_beside_sealed_data_stops_serve_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("data/internal-keys.json");
    let config = write_config(dir.path(), &key_file);
    let log = dir.path().join("serve.log");

    // A new store: the ring is created, and registering an organization seals its first DEK.
    let (server, base) = start(&config, &log);
    let org = register_org(&base).await;
    terminate(server);
    assert!(key_file.exists());
    let original = std::fs::read(&key_file).unwrap();

    // The file moved away: serve refuses, names the file, and creates no stray ring.
    let aside = dir.path().join("internal-keys.json.aside");
    std::fs::rename(&key_file, &aside).unwrap();
    let (code, stderr) = serve_to_failure(&config, &log);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&key_file.display().to_string()),
        "stderr: {stderr}"
    );
    assert!(!key_file.exists(), "a stray key ring was created");

    // A file holding only other keys (a ring minted for another store): the same refusal.
    let other = tempfile::tempdir().unwrap();
    let other_key_file = other.path().join("data/internal-keys.json");
    let other_config = write_config(other.path(), &other_key_file);
    let (server, _) = start(&other_config, &other.path().join("serve.log"));
    terminate(server);
    std::fs::copy(&other_key_file, &key_file).unwrap();
    let (code, stderr) = serve_to_failure(&config, &log);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&key_file.display().to_string()),
        "stderr: {stderr}"
    );
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        std::fs::read(&other_key_file).unwrap()
    );

    // The right file back: the store serves its organization again.
    std::fs::rename(&aside, &key_file).unwrap();
    assert_eq!(std::fs::read(&key_file).unwrap(), original);
    let (server, base) = start(&config, &log);
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/organizations/{org}/tenants"))
        .bearer_auth(PLATFORM)
        .header("content-type", "application/json")
        .body(json!({"tenant_id": "01900000-0000-7000-8000-00000000000b", "name": "Second"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    terminate(server);
}

/// The global checkpoint once the audit tree has folded an event (503 until then).
async fn global_checkpoint(base: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v1/audit/checkpoint"))
            .bearer_auth(PLATFORM)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        if status == 200 {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{status}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn verifier_key(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/v1/audit/public-key")).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    body["verifier_key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_signing_key_is_created_private_and_never_replaced_beside_checkpoints() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("data/internal-keys.json");
    let audit_key = common::audit_key_file(&key_file);
    let config = write_config(dir.path(), &key_file);
    let log = dir.path().join("serve.log");

    // First start: the key file is created 0600, and checkpoints verify with its key.
    let (server, base) = start(&config, &log);
    register_org(&base).await;
    let vkey = verifier_key(&base).await;
    let note = global_checkpoint(&base).await;
    terminate(server);
    let mode = std::fs::metadata(&audit_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let verifier = keyledger_audit::Verifier::parse(&vkey).unwrap();
    keyledger_audit::open_checkpoint(&note, &verifier).unwrap();
    let original = std::fs::read(&audit_key).unwrap();

    // The file moved away beside stored checkpoints: serve refuses, names it, creates none.
    let aside = dir.path().join("audit-signing-key.aside");
    std::fs::rename(&audit_key, &aside).unwrap();
    let (code, stderr) = serve_to_failure(&config, &log);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&audit_key.display().to_string()),
        "stderr: {stderr}"
    );
    assert!(
        !audit_key.exists(),
        "a new signing key was created beside the checkpoints"
    );

    // Another key in its place: the same refusal; the file is left as it is.
    keyledger_audit::AuditSigner::generate("keyledger.localhost")
        .unwrap()
        .create_file(&audit_key)
        .unwrap();
    let foreign = std::fs::read(&audit_key).unwrap();
    let (code, stderr) = serve_to_failure(&config, &log);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&audit_key.display().to_string()),
        "stderr: {stderr}"
    );
    assert_eq!(std::fs::read(&audit_key).unwrap(), foreign);

    // A copy others may read: refused too.
    std::fs::remove_file(&audit_key).unwrap();
    std::fs::copy(&aside, &audit_key).unwrap();
    std::fs::set_permissions(&audit_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = serve_to_failure(&config, &log);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&audit_key.display().to_string()),
        "stderr: {stderr}"
    );

    // The right file back: the same verifier key.
    std::fs::set_permissions(&audit_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::read(&audit_key).unwrap(), original);
    let (server, base) = start(&config, &log);
    assert_eq!(verifier_key(&base).await, vkey);
    terminate(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_tokens_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("data/internal-keys.json");
    let config = write_config(dir.path(), &key_file);
    let log = dir.path().join("serve.log");
    let (server, base) = start(&config, &log);
    register_org(&base).await;
    // A wrong token as well: a refusal must not echo what was sent or what was expected.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(format!("{PLATFORM}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    terminate(server);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("client_secret"),
        "the simulated vault's demo connection is shown: {stderr}"
    );
    assert!(
        !stderr.contains(PLATFORM),
        "a configured token was printed: {stderr}"
    );
}

#[test]
fn a_password_in_the_store_url_is_never_printed() {
    const PASSWORD: &str = "Pw-9f2e-never-shown";
    let urls = [
        format!("postgres://root:{PASSWORD}@127.0.0.1:5432/kl_guards_no_such_db"),
        format!("postgresql://root@127.0.0.1:5432/kl_guards_no_such_db?password={PASSWORD}"),
        format!("postgres://root@127.0.0.1:5432/kl_guards_no_such_db?sslmode=disable&password={PASSWORD}"),
        // Not percent-encoded, as people write them: a parser may split it anywhere.
        format!("postgres://root:a/{PASSWORD}@127.0.0.1:5432/kl_guards_no_such_db"),
        format!("postgres://root:a@{PASSWORD}@127.0.0.1:5432/kl_guards_no_such_db"),
        format!("postgres://root:{PASSWORD}@[::1/kl_guards_no_such_db"),
    ];
    for url in &urls {
        let Output {
            stdout,
            stderr,
            status,
        } = Command::new(keyledger())
            .args(["verify", "--store", url])
            .env_remove("KEYLEDGER_STORE__URL")
            .output()
            .unwrap();
        assert_eq!(status.code(), Some(1), "{url}");
        for out in [&stdout, &stderr] {
            let text = String::from_utf8_lossy(out);
            assert!(!text.contains(PASSWORD), "{url} printed its password: {text}");
        }
        assert!(!stderr.is_empty(), "{url}: a failure says what failed");
    }
}
