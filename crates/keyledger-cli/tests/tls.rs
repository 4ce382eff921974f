//! `[server] tls_cert` and `tls_key` (CONTRACT.md "Data keys for platform services"): the real
//! binary serves HTTPS with them and says so on its start line; plain HTTP on a non-loopback
//! address is served with a warning; bad TLS files stop the start, naming the setting.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Serving, certificates, serve_command};

const PLATFORM: &str = "tls-configured-platform-token-5e2a";

/// A configuration with `server_extra` lines in `[server]` (listening on `listen`).
fn config(dir: &Path, listen: &str, server_extra: &str) -> PathBuf {
    let key_file = dir.join("data/internal-keys.json");
    let path = common::write_config(
        &dir.join("keyledger.toml"),
        &format!("sqlite://{}", dir.join("data/keyledger.db").display()),
        &key_file,
        &[(PLATFORM, "platform")],
        server_extra,
        "",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `serve` until it exits (it must fail before listening).
fn serve_fails(config: &Path, log: &Path) -> (Option<i32>, String) {
    let mut child = serve_command(config, log).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), std::fs::read_to_string(log).unwrap());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop: {}", std::fs::read_to_string(log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_and_key_serve_speaks_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, chain, key) = certificates(dir.path());
    let config = config(
        dir.path(),
        "127.0.0.1:0",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            chain.display(),
            key.display()
        ),
    );
    let log = dir.path().join("serve.log");
    let server = Serving::start(&config, &log);
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);

    // A client trusting the CA reaches the API over TLS.
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let resp = trusting
        .get(format!("{}/v1/events?limit=1", server.base))
        .bearer_auth(PLATFORM)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    // A client that does not trust it refuses the certificate; plain HTTP gets no answer.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_err()
    );
    let plain = server.base.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    // The service still answers after both.
    let again = trusting
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);

    let exit = server.stop();
    assert!(exit.success(), "serve exited with {exit}");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!stderr.contains("plain HTTP"), "{stderr}");
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(!stderr.contains(key_body), "the TLS key reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_non_loopback_address_is_served_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = Serving::start(&config(dir.path(), "0.0.0.0:0", ""), &log);
    assert!(server.base.starts_with("http://0.0.0.0:"), "{}", server.base);
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(server.stop().success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("WARN") && stderr.contains("plain HTTP on a non-loopback address"),
        "{stderr}"
    );

    // On loopback: no warning.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = Serving::start(&config(dir.path(), "127.0.0.1:0", ""), &log);
    assert!(server.stop().success());
    assert!(!std::fs::read_to_string(&log).unwrap().contains("plain HTTP"));
}

#[test]
fn bad_tls_files_stop_serve_naming_the_setting_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, chain, key) = certificates(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = certificates(other.path());
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    for (cert, key, named) in [
        (&missing, &key, "server.tls_cert"),
        (&not_pem, &key, "server.tls_cert"),
        (&chain, &missing, "server.tls_key"),
        (&chain, &not_pem, "server.tls_key"),
        (&chain, &other_key, "server.tls_key"),
    ] {
        let config = config(
            dir.path(),
            "127.0.0.1:0",
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                cert.display(),
                key.display()
            ),
        );
        let log = dir.path().join("serve.log");
        let (code, stderr) = serve_fails(&config, &log);
        assert_eq!(code, Some(1), "{cert:?} {key:?}: {stderr}");
        assert!(stderr.contains(named), "{cert:?} {key:?}: {stderr}");
        assert!(
            !dir.path().join("data/keyledger.db").exists(),
            "a store was created"
        );
    }

    // Only one of the two: a configuration error (exit 2) naming the missing one.
    let config = config(
        dir.path(),
        "127.0.0.1:0",
        &format!("tls_cert = \"{}\"", chain.display()),
    );
    let out = Command::new(common::keyledger())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.tls_key"));
}
