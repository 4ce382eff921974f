//! `keyledger serve` as a process, for the tests that run the shipped binary: a configuration
//! with the simulated vault and configured tokens, a server started on 127.0.0.1:0 and read
//! back from its listening line, stopped with SIGTERM or killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

pub(crate) fn keyledger() -> &'static str {
    env!("CARGO_BIN_EXE_keyledger")
}

/// A configuration file at `path` for `store` with the simulated vault, the internal key file
/// `key_file`, `[[auth.tokens]]` of the given (token, role) pairs, and extra lines for the
/// `[server]` and `[store]` tables.
pub(crate) fn write_config(
    path: &Path,
    store: &str,
    key_file: &Path,
    tokens: &[(&str, &str)],
    server_extra: &str,
    store_extra: &str,
) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n[store]\nurl = \"{store}\"\n{store_extra}\n\n\
         [keys]\ninternal_key_file = \"{}\"\nvault = \"simulated\"\n\n\
         [audit]\nsigning_key_file = \"{}\"\n",
        key_file.display(),
        audit_key_file(key_file).display(),
    );
    for (token, role) in tokens {
        text.push_str(&format!(
            "\n[[auth.tokens]]\ntoken = \"{token}\"\nsubject = \"{role}@example.com\"\nroles = [\"{role}\"]\n"
        ));
    }
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// The audit signing key file of a test configuration: beside its internal key file.
pub(crate) fn audit_key_file(key_file: &Path) -> PathBuf {
    key_file.with_file_name("audit-signing-key")
}

/// `keyledger serve --config config`, its stderr written to `log`, its stdout piped.
pub(crate) fn serve_command(config: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(keyledger());
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("KEYLEDGER_STORE__URL")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// A running `keyledger serve`; killed when dropped, if the test did not stop it.
pub(crate) struct Serving {
    pub child: Child,
    pub base: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    /// Starts `serve` with `config` and waits for its listening line.
    pub(crate) fn start(config: &Path, log: &Path) -> Self {
        Self::spawn(serve_command(config, log), log)
    }

    /// Spawns `cmd` (a `serve_command`) and waits for its listening line; a server that ends
    /// first fails the test with its log.
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> Self {
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(base) = line.trim_end().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "first stdout line {line:?}; stderr: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        Self {
            base: base.to_owned(),
            child,
        }
    }

    /// SIGTERM, and the exit status.
    pub(crate) fn stop(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// SIGKILL: no drain, no lease release.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A child process killed when dropped.
pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line a child prints on stdout.
pub(crate) fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim_end().to_owned()
}

/// The `akv-emulator` binary as a process (HTTPS with its own CA), and a client of its
/// control API.
pub(crate) struct Emulator {
    pub vault: String,
    pub authority_host: String,
    pub ca_cert: String,
    /// The directory the vault belongs to (and the issuer's tenant).
    pub tenant_id: String,
    pub control: reqwest::Client,
    _child: Killed,
}

impl Emulator {
    /// Starts the emulator with its state in `dir`.
    pub(crate) fn start(dir: &Path) -> Self {
        let binary = Path::new(keyledger()).with_file_name("akv-emulator");
        assert!(
            binary.exists(),
            "{} is missing: build it with `cargo build -p akv-emulator` (cargo test --workspace does)",
            binary.display()
        );
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let startup: serde_json::Value = serde_json::from_str(&first_line(&mut child)).unwrap();
        let field = |name: &str| startup[name].as_str().unwrap().to_owned();
        let ca_cert = field("ca_cert");
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_cert).unwrap()).unwrap();
        Self {
            vault: field("vault_url"),
            authority_host: field("authority_host"),
            ca_cert,
            tenant_id: field("tenant_id"),
            control: reqwest::Client::builder().tls_certs_merge([ca]).build().unwrap(),
            _child: Killed(child),
        }
    }

    /// `method /_emulator/{path}` with a JSON body; the status.
    pub(crate) async fn control(&self, method: &str, path: &str, body: serde_json::Value) -> u16 {
        self.control
            .request(
                method.parse().unwrap(),
                format!("{}/_emulator/{path}", self.vault),
            )
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: (CA certificate, server chain, server key).
pub(crate) fn certificates(dir: &Path) -> (Vec<u8>, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "keyledger test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let (chain, key_file) = (dir.join("server-chain.pem"), dir.join("server-key.pem"));
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_cert.pem().into_bytes(), chain, key_file)
}

/// A client of keyledger's HTTP API that keeps every response body (for secret sweeps).
pub(crate) struct Api {
    pub http: reqwest::Client,
    pub base: String,
    transcript: std::sync::Mutex<Vec<String>>,
}

impl Api {
    pub(crate) fn new(http: reqwest::Client, base: String) -> Self {
        Self {
            http,
            base,
            transcript: Default::default(),
        }
    }

    /// Every response body so far.
    pub(crate) fn transcript(&self) -> Vec<String> {
        self.transcript.lock().unwrap().clone()
    }

    /// `method path` with the bearer `token` and a JSON body: the status and the JSON answer
    /// (`null` when it is not JSON).
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        self.transcript.lock().unwrap().push(text.clone());
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// [`Api::call`] that must succeed (2xx).
    pub(crate) async fn ok(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    /// [`Api::call`] that must be refused (4xx or 5xx).
    pub(crate) async fn refused(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(status >= 400, "{method} {path}: {status} {v}");
        v
    }
}
