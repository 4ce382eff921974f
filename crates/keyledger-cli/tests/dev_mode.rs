//! `keyledger serve` with no configuration: dev mode on 127.0.0.1:8080 in the working
//! directory. The demo connection and tokens printed on stderr work with the API, and a
//! restart keeps the store and the simulated vault, so the organization's key is still there.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

struct Started {
    child: Child,
    banner: Vec<String>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Started {
    fn value(&self, label: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(label)).then(|| words.next().unwrap_or_default().to_owned())
            })
            .unwrap_or_else(|| panic!("{label} not in the banner: {:#?}", self.banner))
    }

    fn stop(mut self) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(self.child.wait().unwrap().success());
    }
}

/// Starts dev mode in `dir`; `None` when port 8080 is taken on this machine.
fn start(dir: &std::path::Path) -> Option<Started> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    cmd.arg("serve")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYLEDGER_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        // Keep reading after the receiver is gone: a closed pipe would fail the server's logging.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdout = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut stdout)
        .unwrap();
    let banner: Vec<String> = rx.try_iter().collect();
    if stdout.is_empty() {
        let _ = child.wait();
        let text = banner.join("\n");
        assert!(text.contains("cannot listen"), "dev mode did not start: {text}");
        eprintln!("port 8080 is taken; skipping the dev-mode test");
        return None;
    }
    assert_eq!(stdout.trim_end(), "listening on http://127.0.0.1:8080");
    // The banner comes before the listening line; give the reader thread a moment.
    std::thread::sleep(Duration::from_millis(200));
    let banner = banner.into_iter().chain(rx.try_iter()).collect();
    Some(Started { child, banner })
}

async fn call(token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://127.0.0.1:8080{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_works_with_what_it_prints_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(first) = start(dir.path()) else { return };
    let org = "01900000-0000-7000-8000-0000000000d1";
    let (status, _) = call(
        &first.value("platform"),
        "POST",
        "/v1/organizations",
        Some(json!({"org_id": org, "name": "Dev", "plan": {"kind": "enterprise", "tier": "standard"}})),
    )
    .await;
    assert_eq!(status, 201);
    let connection = json!({
        "directory_id": first.value("directory_id"),
        "application_id": first.value("application_id"),
        "client_secret": first.value("client_secret"),
        "key_identifier": first.value("key_identifier"),
    });
    let (status, v) = call(
        &first.value("org_admin"),
        "POST",
        &format!("/v1/organizations/{org}/customer-managed-key"),
        Some(connection),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let secret = first.value("client_secret");
    first.stop();

    let data = dir.path().join("keyledger-data");
    for file in ["keyledger.db", "internal-keys.json", "dev-vault.json"] {
        assert!(data.join(file).exists(), "{file} missing");
    }
    #[cfg(unix)]
    for file in ["internal-keys.json", "dev-vault.json"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others");
    }

    // Same store, same vault: the key still answers a probe.
    let Some(second) = start(dir.path()) else { return };
    assert_eq!(second.value("client_secret"), secret);
    let (status, h) = call(
        &second.value("support"),
        "POST",
        &format!("/v1/organizations/{org}/key-health/probe"),
        None,
    )
    .await;
    assert_eq!((status, h["status"].as_str()), (200, Some("healthy")), "{h}");
    second.stop();
}
