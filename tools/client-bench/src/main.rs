//! Benchmarks of `keyledger-client` against what ships (issue 14). The tool starts the
//! `akv-emulator` binary (an HTTPS Azure Key Vault with its own CA) and `keyledger serve`
//! (`--keyledger-bin`, `--emulator-bin`; by default both next to this tool in cargo's target
//! directory) as child processes, serve with a generated configuration: SQLite in a temporary
//! directory, TLS with an rcgen CA, `vault = "azure"` pointing at the emulator, configured
//! admin and platform tokens. It measures:
//!
//! 1. cache-hit `Client::encrypt` of 64-byte records on one core: a current_thread runtime,
//!    one task, after the first release is cached; ops/s over `--encrypt-seconds`, best of
//!    `--encrypt-rounds`;
//! 2. revocation → eviction: one enterprise organization with its customer-managed key on,
//!    `--revocation-clients` clients each following the stream; per round the key version is
//!    disabled in the emulator, t0 = just before `POST …/key-health/probe` is sent, t1 = when
//!    its 200 arrives, and each client's first directory change with an eviction for that
//!    organization gives `applied_at − t0` (upper bound: includes the vault probe) and
//!    `applied_at − t1` (lower bound); then re-enable, probe, all clients caught up;
//! 3. provider-managed releases: `--release-clients` closed-loop HTTPS clients releasing the
//!    `active` DEK of `--release-orgs` `pro` organizations for `--seconds`;
//! 4. customer-managed releases against the emulator: `--release-orgs` CMK organizations, the
//!    clients releasing by DEK id round-robin over their active DEKs, once with
//!    `keys.release_single_flight = true` and once with `false`, each on a fresh serve and
//!    store (same emulator).
//!
//! ```sh
//! cargo build --release -p keyledger-cli -p akv-emulator -p client-bench
//! target/release/client-bench [--keyledger-bin PATH] [--emulator-bin PATH]
//!     [--encrypt-seconds 3] [--encrypt-rounds 5] [--revocation-clients 100]
//!     [--revocation-rounds 10] [--seconds 10] [--warmup 1] [--release-clients 32]
//!     [--release-orgs 8]
//! ```
//!
//! Each serve's stderr goes to `serve.log` in its own temporary directory and is echoed on
//! failure. No token, secret or data key is printed.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_figures::{Summary, ms, round2, summarize};
use clap::Parser;
use keyledger_client::{Client, MemoryPositionStore};
use keyledger_domain::OrgId;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

// ---------------------------------------------------------------------------------------------
// Arguments

/// Benchmarks of keyledger-client: cache-hit encrypt, revocation latency, DEK releases.
#[derive(Debug, Clone, Parser)]
#[command(name = "client-bench")]
struct Args {
    /// The `keyledger` binary to run (default: `keyledger` next to this tool).
    #[arg(long)]
    keyledger_bin: Option<PathBuf>,
    /// The `akv-emulator` binary to run (default: `akv-emulator` next to this tool).
    #[arg(long)]
    emulator_bin: Option<PathBuf>,
    /// Seconds of each cache-hit encrypt round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    encrypt_seconds: u64,
    /// Cache-hit encrypt rounds (the best is the figure).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    encrypt_rounds: u32,
    /// Clients following the stream in the revocation measurement.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    revocation_clients: u32,
    /// Disable → probe → evictions rounds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    revocation_rounds: u32,
    /// Measured seconds of each release window.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Unmeasured seconds before each release window.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Closed-loop release clients.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    release_clients: u32,
    /// Organizations (and so DEKs) the releases go to.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    release_orgs: u32,
}

impl Args {
    fn binary(&self, given: Option<&PathBuf>, name: &str) -> Result<PathBuf, String> {
        let path = match given {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name(name),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "no {name} binary at {} (build it: cargo build --release -p keyledger-cli -p akv-emulator, or pass --{name}-bin)",
                path.display()
            ))
        }
    }
}

/// A count from the arguments, as a `usize`.
fn count(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------
// The processes

const ADMIN_TOKEN: &str = "client-bench-admin-token-0123456789abcdef";
const PLATFORM_TOKEN: &str = "client-bench-platform-token-0123456789abcdef";
const APP: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000b1";
const DIRECTORY: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "client-bench-app-secret-4c2e";
/// The emulator key the revocation organization uses (disabled and re-enabled each round).
const REVOKE_KEY: &str = "bench-revoke";
/// The emulator key the customer-managed release organizations use.
const RELEASE_KEY: &str = "bench-cmk";

/// A child process killed when dropped.
#[derive(Debug)]
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn first_line(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_owned())
}

/// The `akv-emulator` process and a client of its control API.
#[derive(Debug)]
struct Emulator {
    vault: String,
    authority_host: String,
    ca_cert: String,
    control: reqwest::Client,
    _child: Killed,
}

impl Emulator {
    fn start(bin: &Path, dir: &Path) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let line = first_line(&mut child)?;
        let child = Killed(child);
        let startup: Value =
            serde_json::from_str(&line).map_err(|e| format!("emulator printed {line:?}: {e}"))?;
        let field = |name: &str| {
            startup[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("emulator startup line lacks {name}"))
        };
        let ca_cert = field("ca_cert")?;
        let pem = std::fs::read(&ca_cert).map_err(|e| format!("{ca_cert}: {e}"))?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
        let control = reqwest::Client::builder()
            .tls_certs_merge([ca])
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            vault: field("vault_url")?,
            authority_host: field("authority_host")?,
            ca_cert,
            control,
            _child: child,
        })
    }

    /// `method /_emulator/{path}` with a JSON body; fails unless the status is `expect`.
    async fn control(&self, method: &str, path: &str, body: Value, expect: u16) -> Result<(), String> {
        let method: reqwest::Method = method.parse().map_err(|_| format!("bad method {method}"))?;
        let status = self
            .control
            .request(method.clone(), format!("{}/_emulator/{path}", self.vault))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?
            .status()
            .as_u16();
        if status == expect {
            Ok(())
        } else {
            Err(format!("emulator {method} {path}: {status}, expected {expect}"))
        }
    }
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: (CA certificate, server chain file, server key file).
fn certificates(dir: &Path) -> Result<(Vec<u8>, PathBuf, PathBuf), String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "client-bench CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).map_err(e)?;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &issuer).map_err(e)?;
    let (chain, key_file) = (dir.join("server-chain.pem"), dir.join("server-key.pem"));
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca_cert.pem())).map_err(|e| e.to_string())?;
    std::fs::write(&key_file, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok((ca_cert.pem().into_bytes(), chain, key_file))
}

/// A running `keyledger serve`; killed when dropped.
#[derive(Debug)]
struct Serve {
    child: Killed,
    base: String,
    log: PathBuf,
}

impl Serve {
    /// Writes a configuration into `dir` (a fresh SQLite store there) and starts serve on it.
    fn start(
        bin: &Path,
        dir: &Path,
        emulator: &Emulator,
        tls: (&Path, &Path),
        single_flight: bool,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let token = |t: &str, role: &str| {
            format!(
                "\n[[auth.tokens]]\ntoken = \"{t}\"\nsubject = \"{role}@bench.example\"\nroles = [\"{role}\"]\n"
            )
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n\
             [store]\nurl = \"sqlite://{}\"\n\n\
             [keys]\ninternal_key_file = \"{}\"\nvault = \"azure\"\nrelease_single_flight = {single_flight}\n\n\
             [keys.azure]\nauthority_host = \"{}\"\nallowed_vault_hosts = [\"{}\"]\nca_cert = \"{}\"\nrequest_timeout = \"10s\"\n\n\
             [health]\nprobe_interval = \"1h\"\ntransient_grace = \"15m\"\n\n\
             [audit]\nsigning_key_file = \"{}\"\n{}{}",
            tls.0.display(),
            tls.1.display(),
            dir.join("data/keyledger.db").display(),
            dir.join("data/internal-keys.json").display(),
            emulator.authority_host,
            // The emulator's host with its port: an entry without one allows only port 443.
            emulator.vault.trim_start_matches("https://"),
            emulator.ca_cert,
            dir.join("data/audit-signing-key").display(),
            token(ADMIN_TOKEN, "org_admin"),
            token(PLATFORM_TOKEN, "platform"),
        );
        let config = dir.join("keyledger.toml");
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let log = dir.join("serve.log");
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("KEYLEDGER_STORE__URL")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let line = first_line(&mut child)?;
        let serve = Self {
            child: Killed(child),
            base: String::new(),
            log,
        };
        match line.strip_prefix("listening on ") {
            Some(base) if base.starts_with("https://") => Ok(Self {
                base: base.to_owned(),
                ..serve
            }),
            _ => Err(format!("serve printed {line:?}; its log:\n{}", serve.log_text())),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 30 s; the drop kills it after that).
    fn stop(mut self) {
        let pid = self.child.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                if !status.success() {
                    eprintln!(
                        "client-bench: serve ended with {status}; its log:\n{}",
                        self.log_text()
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("client-bench: serve did not stop within 30 s of SIGTERM; killed");
    }
}

// ---------------------------------------------------------------------------------------------
// The API

#[derive(Debug, Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str, ca: &[u8]) -> Result<Self, String> {
        let ca = reqwest::Certificate::from_pem(ca).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            base: base.to_owned(),
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let m: reqwest::Method = method.parse().map_err(|_| format!("bad method {method}"))?;
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A call that must succeed (2xx); its body. The error shows the problem's code only.
    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Result<Value, String> {
        let (status, v) = self.call(method, path, token, body).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(format!("{method} {path}: {status} {}", v["code"]))
        }
    }

    /// Registers an organization on `plan` (`{"kind": …}`).
    async fn register(&self, plan: Value) -> Result<OrgId, String> {
        let org = OrgId::new_v7();
        let body = json!({"org_id": org, "name": "Bench", "plan": plan,
                          "tenants": [{"tenant_id": uuid::Uuid::now_v7(), "name": "T"}]});
        self.ok("POST", "/v1/organizations", PLATFORM_TOKEN, Some(body))
            .await?;
        Ok(org)
    }

    /// An enterprise organization with its customer-managed key on `key`: (org, key version,
    /// active DEK id).
    async fn customer_managed_org(
        &self,
        emulator: &Emulator,
        key: &str,
    ) -> Result<(OrgId, String, u64), String> {
        let org = self
            .register(json!({"kind": "enterprise", "tier": "standard"}))
            .await?;
        let connection = json!({"directory_id": DIRECTORY, "application_id": APP, "client_secret": SECRET,
                                "key_identifier": format!("{}/keys/{key}", emulator.vault)});
        let view = self
            .ok(
                "POST",
                &format!("/v1/organizations/{org}/customer-managed-key"),
                ADMIN_TOKEN,
                Some(connection),
            )
            .await?;
        let version = view["encryption"]["customer_managed_key"]["key_version"]
            .as_str()
            .ok_or("the view has no key_version")?
            .to_owned();
        let dek = view["encryption"]["active_data_key_id"]
            .as_u64()
            .ok_or("the view has no active_data_key_id")?;
        Ok((org, version, dek))
    }

    /// `POST …/key-health/probe`: the status it recorded.
    async fn probe(&self, org: OrgId) -> Result<String, String> {
        let v = self
            .ok(
                "POST",
                &format!("/v1/organizations/{org}/key-health/probe"),
                ADMIN_TOKEN,
                None,
            )
            .await?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    }

    /// The position of the last event in the log.
    async fn head(&self) -> Result<u64, String> {
        let mut after = 0;
        loop {
            let page = self
                .ok(
                    "GET",
                    &format!("/v1/events?after={after}&limit=1000"),
                    PLATFORM_TOKEN,
                    None,
                )
                .await?;
            let next = page["next_after"].as_u64().ok_or("no next_after")?;
            let empty = page["events"].as_array().is_none_or(Vec::is_empty);
            if empty || next == after {
                return Ok(after);
            }
            after = next;
        }
    }

    /// One release (platform token, no body); the status once the body is read, 0 for a
    /// transport error. The body (it holds the key) is dropped unread.
    async fn release(&self, path: &str) -> u16 {
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(PLATFORM_TOKEN)
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Counts of operations far below 2^52: exact as f64.
#[allow(clippy::cast_precision_loss)]
fn to_f64(n: u64) -> f64 {
    n as f64
}

// ---------------------------------------------------------------------------------------------
// 1. Cache-hit encrypt on one core

#[derive(Debug, Default)]
struct EncryptFigures {
    rounds: Vec<f64>,
    best: f64,
    /// Release calls after the first: must be 0 for a cache-hit figure.
    extra_releases: u64,
}

/// On its own thread: a current_thread runtime, one task, one client; the first encrypt
/// releases the active DEK, then every round seals 64-byte records as fast as it can.
fn encrypt_rate(base: &str, ca: &[u8], org: OrgId, args: &Args) -> Result<EncryptFigures, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = Client::builder(base, PLATFORM_TOKEN)
            .ca_cert_pem(ca)
            .position_store(MemoryPositionStore::new())
            .build()
            .map_err(|e| e.to_string())?;
        let record = [0x5au8; 64];
        let context = b"records/0";
        client
            .encrypt(org, &record, context)
            .await
            .map_err(|e| format!("first encrypt: {e}"))?;
        let releases = client.releases();
        let window = Duration::from_secs(args.encrypt_seconds);
        let mut figures = EncryptFigures::default();
        for _ in 0..args.encrypt_rounds {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < window {
                for _ in 0..1024 {
                    let sealed = client
                        .encrypt(org, &record, context)
                        .await
                        .map_err(|e| format!("encrypt: {e}"))?;
                    std::hint::black_box(sealed);
                }
                n += 1024;
            }
            let rate = to_f64(n) / start.elapsed().as_secs_f64();
            figures.best = figures.best.max(rate);
            figures.rounds.push(rate);
        }
        figures.extra_releases = client.releases() - releases;
        Ok(figures)
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Revocation → eviction

#[derive(Debug, Default)]
struct RevocationFigures {
    clients: usize,
    rounds: u32,
    /// applied_at − t0 (just before the probe request was sent).
    upper: Summary,
    /// applied_at − t1 (the probe's 200 arrived), 0 when the eviction came first.
    lower: Summary,
    /// Evictions applied before the probe's response arrived.
    before_response: usize,
    /// Clients that saw no eviction within 30 s of a round's probe.
    missing: usize,
    /// The probe request's own latency (t1 − t0).
    probe: Summary,
}

/// Waits (up to 60 s) until every client has applied `position`.
async fn all_caught_up(clients: &[Client], position: u64) -> Result<(), String> {
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c.caught_up(position))
            .await
            .map_err(|_| {
                format!(
                    "a client did not reach position {position}; it is at {}",
                    c.position()
                )
            })?;
    }
    Ok(())
}

async fn revocation(
    api: &Api,
    emulator: &Emulator,
    ca: &[u8],
    args: &Args,
) -> Result<RevocationFigures, String> {
    let (org, version, _) = api.customer_managed_org(emulator, REVOKE_KEY).await?;
    let mut clients = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..args.revocation_clients {
        let client = Client::builder(api.base.clone(), PLATFORM_TOKEN)
            .ca_cert_pem(ca)
            .position_store(MemoryPositionStore::new())
            .build()
            .map_err(|e| e.to_string())?;
        consumers.push(client.spawn_consumer());
        clients.push(client);
    }
    all_caught_up(&clients, api.head().await?).await?;
    // Each client holds the organization's DEK, as a service using it would.
    for c in &clients {
        c.encrypt(org, b"warm", b"records/0")
            .await
            .map_err(|e| format!("warm-up encrypt: {e}"))?;
    }
    let key_path = format!("keys/{REVOKE_KEY}/{version}");
    let (mut upper, mut lower, mut probe) = (Vec::new(), Vec::new(), Vec::new());
    let mut figures = RevocationFigures {
        clients: clients.len(),
        rounds: args.revocation_rounds,
        ..RevocationFigures::default()
    };
    for round in 0..args.revocation_rounds {
        let waiters: Vec<_> = clients
            .iter()
            .map(|c| {
                let mut rx = c.subscribe();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(change) if change.org == org && change.eviction.is_some() => {
                                return Some(change.applied_at);
                            }
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => return None,
                        }
                    }
                })
            })
            .collect();
        emulator
            .control("PATCH", &key_path, json!({"enabled": false}), 200)
            .await?;
        let t0 = Instant::now();
        let status = api.probe(org).await?;
        let t1 = Instant::now();
        if status != "key_disabled" {
            return Err(format!(
                "round {round}: the probe recorded {status}, not key_disabled"
            ));
        }
        probe.push(t1 - t0);
        let deadline = tokio::time::Instant::from_std(t1 + Duration::from_secs(30));
        for w in waiters {
            let abort = w.abort_handle();
            match tokio::time::timeout_at(deadline, w).await {
                Ok(Ok(Some(at))) => {
                    upper.push(at.saturating_duration_since(t0));
                    lower.push(at.saturating_duration_since(t1));
                    if at < t1 {
                        figures.before_response += 1;
                    }
                }
                _ => {
                    abort.abort();
                    figures.missing += 1;
                }
            }
        }
        emulator
            .control("PATCH", &key_path, json!({"enabled": true}), 200)
            .await?;
        let status = api.probe(org).await?;
        if status != "healthy" {
            return Err(format!("round {round}: the recovery probe recorded {status}"));
        }
        all_caught_up(&clients, api.head().await?).await?;
    }
    for c in &consumers {
        c.abort();
    }
    figures.upper = summarize(upper);
    figures.lower = summarize(lower);
    figures.probe = summarize(probe);
    Ok(figures)
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. Releases

#[derive(Debug, Default)]
struct ReleaseFigures {
    released: u64,
    per_second: f64,
    latency: Summary,
    non_200: BTreeMap<u16, u64>,
}

/// `clients` closed-loop tasks POSTing the release `paths` round-robin (client `c` starts at
/// path `c`) for `warmup` + `seconds`; only requests sent after the warm-up count.
async fn releases(api: &Api, paths: Vec<String>, args: &Args) -> Result<ReleaseFigures, String> {
    let paths = Arc::new(paths);
    let start = Instant::now();
    let measured_from = start + Duration::from_secs(args.warmup);
    let end = measured_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..count(args.release_clients) {
        let (api, paths) = (api.clone(), Arc::clone(&paths));
        tasks.push(tokio::spawn(async move {
            let mut latency = Vec::with_capacity(16_384);
            let mut non_200: BTreeMap<u16, u64> = BTreeMap::new();
            let mut k = c;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let status = api.release(&paths[k % paths.len()]).await;
                k += 1;
                if t0 >= measured_from {
                    latency.push(t0.elapsed());
                    if status != 200 {
                        *non_200.entry(status).or_default() += 1;
                    }
                }
            }
            (latency, non_200)
        }));
    }
    let mut latency = Vec::new();
    let mut figures = ReleaseFigures::default();
    for t in tasks {
        let (l, n) = t.await.map_err(|e| e.to_string())?;
        latency.extend(l);
        for (status, k) in n {
            *figures.non_200.entry(status).or_default() += k;
        }
    }
    let failed: u64 = figures.non_200.values().sum();
    let sent = u64::try_from(latency.len()).unwrap_or(u64::MAX);
    figures.released = sent.saturating_sub(failed);
    figures.per_second = to_f64(figures.released) / Duration::from_secs(args.seconds).as_secs_f64();
    figures.latency = summarize(latency);
    Ok(figures)
}

/// A fresh serve and store on the emulator: `release_orgs` CMK organizations, releases by DEK
/// id round-robin over their active DEKs.
async fn customer_managed_releases(
    bin: &Path,
    dir: &Path,
    emulator: &Emulator,
    tls: (&Path, &Path),
    ca: &[u8],
    single_flight: bool,
    args: &Args,
) -> Result<ReleaseFigures, String> {
    let serve = Serve::start(bin, dir, emulator, tls, single_flight)?;
    let measured = async {
        let api = Api::new(&serve.base, ca)?;
        let mut paths = Vec::new();
        for _ in 0..args.release_orgs {
            let (org, _, dek) = api.customer_managed_org(emulator, RELEASE_KEY).await?;
            paths.push(format!("/v1/organizations/{org}/data-keys/{dek}/release"));
        }
        releases(&api, paths, args).await
    }
    .await;
    if measured.is_err() {
        eprintln!("client-bench: serve's log:\n{}", serve.log_text());
    }
    serve.stop();
    measured
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Debug, Default)]
struct Figures {
    encrypt: EncryptFigures,
    revocation: RevocationFigures,
    provider: ReleaseFigures,
    single_flight: ReleaseFigures,
    no_single_flight: ReleaseFigures,
}

fn stamp(what: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    eprintln!("client-bench: {what} (load {})", load.join(" "));
}

fn run(args: &Args) -> Result<Figures, String> {
    let keyledger = args.binary(args.keyledger_bin.as_ref(), "keyledger")?;
    let emulator_bin = args.binary(args.emulator_bin.as_ref(), "akv-emulator")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (ca, chain, key) = certificates(dir.path())?;
    let tls = (chain.as_path(), key.as_path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let emulator = Emulator::start(&emulator_bin, &dir.path().join("emulator"))?;
    rt.block_on(async {
        let app = json!({"tenant_id": DIRECTORY, "client_id": APP, "client_secret": SECRET,
                         "key_permissions": ["get", "wrapKey", "unwrapKey"]});
        emulator.control("POST", "apps", app, 201).await?;
        for name in [REVOKE_KEY, RELEASE_KEY] {
            let key = json!({"name": name, "kty": "RSA", "size": 2048});
            emulator.control("POST", "keys", key, 201).await?;
        }
        Ok::<(), String>(())
    })?;
    let mut figures = Figures::default();

    // One serve for the encrypt rate, the revocation rounds and the provider-managed releases.
    let serve = Serve::start(&keyledger, &dir.path().join("serve-a"), &emulator, tls, true)?;
    let measured = (|| {
        let api = Api::new(&serve.base, &ca)?;
        let org = rt.block_on(api.register(json!({"kind": "pro"})))?;
        stamp("cache-hit encrypt, one core");
        let (base, ca_pem, a) = (serve.base.clone(), ca.clone(), args.clone());
        figures.encrypt = std::thread::spawn(move || encrypt_rate(&base, &ca_pem, org, &a))
            .join()
            .map_err(|_| "the encrypt thread panicked".to_owned())??;
        stamp("revocation → eviction");
        figures.revocation = rt.block_on(revocation(&api, &emulator, &ca, args))?;
        stamp("provider-managed releases");
        figures.provider = rt.block_on(async {
            let mut paths = Vec::new();
            for _ in 0..args.release_orgs {
                let org = api.register(json!({"kind": "pro"})).await?;
                paths.push(format!("/v1/organizations/{org}/data-keys/active/release"));
            }
            releases(&api, paths, args).await
        })?;
        Ok::<(), String>(())
    })();
    if measured.is_err() {
        eprintln!("client-bench: serve's log:\n{}", serve.log_text());
    }
    serve.stop();
    measured?;

    stamp("customer-managed releases, single flight on");
    figures.single_flight = rt.block_on(customer_managed_releases(
        &keyledger,
        &dir.path().join("serve-b"),
        &emulator,
        tls,
        &ca,
        true,
        args,
    ))?;
    stamp("customer-managed releases, single flight off");
    figures.no_single_flight = rt.block_on(customer_managed_releases(
        &keyledger,
        &dir.path().join("serve-c"),
        &emulator,
        tls,
        &ca,
        false,
        args,
    ))?;
    stamp("done");
    Ok(figures)
}

fn counts(m: &BTreeMap<u16, u64>) -> BTreeMap<String, u64> {
    m.iter()
        .map(|(k, v)| {
            let key = if *k == 0 {
                "transport".to_owned()
            } else {
                k.to_string()
            };
            (key, *v)
        })
        .collect()
}

fn release_json(r: &ReleaseFigures) -> Value {
    json!({
        "released": r.released,
        "per_second": r.per_second.round(),
        "p50_ms": round2(ms(r.latency.p50)),
        "p99_ms": round2(ms(r.latency.p99)),
        "max_ms": round2(ms(r.latency.max)),
        "non_200": counts(&r.non_200),
    })
}

fn release_row(r: &ReleaseFigures) -> String {
    let failed: u64 = r.non_200.values().sum();
    format!(
        "{:.0} releases/s, p50 / p99 / max {:.2} / {:.2} / {:.2} ms, non-200 {failed}",
        r.per_second,
        ms(r.latency.p50),
        ms(r.latency.p99),
        ms(r.latency.max)
    )
}

/// The summary table (issue 14 targets) and one JSON line.
fn report(args: &Args, f: &Figures) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let e = &f.encrypt;
    let r = &f.revocation;
    let p = &f.provider;
    println!();
    println!("client-bench summary (2 shared cores — compare within a run)");
    println!("| figure | measured | target | |");
    println!("|---|---|---|---|");
    println!(
        "| cache-hit `Client::encrypt`, 64 B, one core | {:.0} ops/s (best of {}; rounds {}) | ≥ 1,000,000 ops/s | {} |",
        e.best,
        e.rounds.len(),
        e.rounds
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        verdict(e.best >= 1_000_000.0 && e.extra_releases == 0)
    );
    println!(
        "| revocation → eviction, {} clients × {} rounds, from before the probe (upper) | p50 / p99 / max {:.2} / {:.2} / {:.2} ms, {} missing | p99 ≤ 1 s | {} |",
        r.clients,
        r.rounds,
        ms(r.upper.p50),
        ms(r.upper.p99),
        ms(r.upper.max),
        r.missing,
        verdict(r.upper.p99 <= Duration::from_secs(1) && r.missing == 0)
    );
    println!(
        "| same, from the probe's response (lower) | p50 / p99 / max {:.2} / {:.2} / {:.2} ms; {} of {} applied before the response | | |",
        ms(r.lower.p50),
        ms(r.lower.p99),
        ms(r.lower.max),
        r.before_response,
        r.upper.n
    );
    println!(
        "| the probe request itself | p50 / p99 / max {:.2} / {:.2} / {:.2} ms | | |",
        ms(r.probe.p50),
        ms(r.probe.p99),
        ms(r.probe.max)
    );
    println!(
        "| provider-managed releases, {} clients, {} orgs | {} | ≥ 2,000/s, p99 ≤ 20 ms | {} |",
        args.release_clients,
        args.release_orgs,
        release_row(p),
        verdict(p.per_second >= 2000.0 && ms(p.latency.p99) <= 20.0 && p.non_200.is_empty())
    );
    println!(
        "| customer-managed releases, emulator, single flight on, {} clients on {} DEKs | {} | report | |",
        args.release_clients,
        args.release_orgs,
        release_row(&f.single_flight)
    );
    println!(
        "| same, single flight off | {} | report | |",
        release_row(&f.no_single_flight)
    );
    let ratio = f.single_flight.per_second / f.no_single_flight.per_second;
    println!("| releases/s on ÷ off | {ratio:.2} | report | |");
    let line = json!({
        "tool": "client-bench",
        "encrypt": {"best_ops_per_second": e.best.round(),
                    "rounds": e.rounds.iter().map(|x| x.round()).collect::<Vec<_>>(),
                    "extra_releases": e.extra_releases},
        "revocation": {"clients": r.clients, "rounds": r.rounds, "samples": r.upper.n,
                       "missing": r.missing, "before_response": r.before_response,
                       "upper_p50_ms": round2(ms(r.upper.p50)), "upper_p99_ms": round2(ms(r.upper.p99)),
                       "upper_max_ms": round2(ms(r.upper.max)),
                       "lower_p50_ms": round2(ms(r.lower.p50)), "lower_p99_ms": round2(ms(r.lower.p99)),
                       "lower_max_ms": round2(ms(r.lower.max)),
                       "probe_p50_ms": round2(ms(r.probe.p50)), "probe_p99_ms": round2(ms(r.probe.p99))},
        "provider_releases": release_json(p),
        "customer_releases": {"single_flight": release_json(&f.single_flight),
                              "no_single_flight": release_json(&f.no_single_flight),
                              "ratio": round2(ratio)},
    });
    println!();
    println!("{line}");
}

fn main() {
    let args = Args::parse();
    println!("client-bench: {args:?}");
    match run(&args) {
        Ok(f) => report(&args, &f),
        Err(e) => {
            eprintln!("client-bench: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_sorted_vec() {
        let s = summarize((1..=100).map(Duration::from_millis).collect());
        assert_eq!(
            (s.n, s.p50, s.p99, s.max),
            (
                100,
                Duration::from_millis(51),
                Duration::from_millis(99),
                Duration::from_millis(100)
            )
        );
    }
}
