//! The AKV emulator: keyledger-vault-sim's Key Vault and Entra ID router over HTTPS with a
//! self-signed CA, plus the control API of CONTRACT.md for loopback peers.
//!
//! [`start`] binds, writes `STATE_DIR/ca.pem`, and serves until the returned [`Emulator`] is
//! shut down or dropped. The state directory also keeps the CA key (`ca-key.pem`, so a restart
//! keeps clients' trust) and, after a clean shutdown, the vault's keys and apps
//! (`state.json`, loaded at the next start). Both files hold secrets in clear and are written
//! with mode 0600: test data only. The `akv-emulator` binary is a thin wrapper that prints the start-up
//! line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use keyledger_vault_sim::{Clock, Vault, VaultConfig, router, router_with_control};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The listen address could not be bound, or the state directory written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Certificate generation, TLS configuration, or the state file failed.
    #[error("tls or state: {0}")]
    Setup(String),
}

/// A running emulator.
#[derive(Debug)]
pub struct Emulator {
    pub addr: SocketAddr,
    pub vault_url: String,
    pub authority_host: String,
    /// The directory (Entra ID tenant) the vault belongs to: only its apps get in.
    pub tenant_id: String,
    pub ca_cert: PathBuf,
    pub vault: Arc<Vault>,
    state_file: PathBuf,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// The start-up line: `{"vault_url":…,"authority_host":…,"ca_cert":…,"tenant_id":…}`.
    pub fn startup_line(&self) -> String {
        // Keys in the order CONTRACT.md shows them (serde_json's map would sort them); the
        // second phase's `tenant_id` comes last, so a reader of the first three is unaffected.
        let q = |v: &str| json!(v).to_string();
        format!(
            "{{\"vault_url\":{},\"authority_host\":{},\"ca_cert\":{},\"tenant_id\":{}}}",
            q(&self.vault_url),
            q(&self.authority_host),
            q(&self.ca_cert.display().to_string()),
            q(&self.tenant_id)
        )
    }

    /// Stops accepting, waits for the accept loop to end, and saves the vault state.
    pub async fn shutdown(self) -> Result<(), StartError> {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let state = self
            .vault
            .save_state()
            .map_err(|e| StartError::Setup(e.message))?;
        write_private(&self.state_file, &state)?;
        Ok(())
    }

    /// Serves until `signal` completes.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> Result<(), StartError> {
        signal.await;
        self.shutdown().await
    }
}

struct Tls {
    ca_pem: String,
    config: rustls::ServerConfig,
}

/// A CA and a leaf for `127.0.0.1`, `localhost` and the listen IP, signed by that CA. (A
/// self-signed leaf given as a root is refused by rustls-platform-verifier, so the CA is
/// separate.)
fn make_tls(ip: std::net::IpAddr, ca_key: rcgen::KeyPair) -> Result<Tls, StartError> {
    let err = |e: rcgen::Error| StartError::Setup(e.to_string());
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "akv-emulator test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut leaf_params = rcgen::CertificateParams::new(names).map_err(err)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "akv-emulator");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(err)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca_cert.der().clone()];
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| StartError::Setup(e.to_string()))?;
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        config,
    })
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// The injected "vault unreachable" fault, as a service error that makes hyper close the
/// connection without a response.
#[derive(Debug)]
struct Unreachable;

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated unreachable vault")
    }
}

impl std::error::Error for Unreachable {}

/// Binds `listen`, writes `state_dir/ca.pem` and starts serving.
pub async fn start(listen: SocketAddr, state_dir: &Path) -> Result<Emulator, StartError> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(state_dir)?;
    // The same CA key across restarts: a client that trusts an earlier ca.pem (same subject,
    // same key) keeps trusting the emulator.
    let ca_key_file = state_dir.join("ca-key.pem");
    let ca_key = match std::fs::read_to_string(&ca_key_file) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| StartError::Setup(e.to_string()))?,
        Err(_) => {
            let key = rcgen::KeyPair::generate().map_err(|e| StartError::Setup(e.to_string()))?;
            write_private(&ca_key_file, key.serialize_pem().as_bytes())?;
            key
        }
    };
    let tls = make_tls(addr.ip(), ca_key)?;
    let ca_cert = state_dir.join("ca.pem");
    std::fs::write(&ca_cert, &tls.ca_pem)?;

    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let base = format!("https://{host}");
    let config = VaultConfig {
        authority_host: base.clone(),
        ..VaultConfig::default()
    };
    let vault = Vault::new(config, Clock::system());
    let state_file = state_dir.join("state.json");
    if let Ok(bytes) = std::fs::read(&state_file) {
        vault
            .load_state(&bytes)
            .map_err(|e| StartError::Io(std::io::Error::other(e.message)))?;
    }
    let (shutdown, rx) = watch::channel(false);
    let acceptor = TlsAcceptor::from(Arc::new(tls.config));
    let task = tokio::spawn(accept_loop(listener, acceptor, vault.clone(), rx));
    Ok(Emulator {
        addr,
        vault_url: base.clone(),
        authority_host: base,
        tenant_id: vault.config().tenant_id.clone(),
        ca_cert,
        vault,
        state_file,
        shutdown,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    vault: Arc<Vault>,
    mut stop: watch::Receiver<bool>,
) {
    let data_plane = router(vault.clone());
    let with_control = router_with_control(vault.clone());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        // The control API has no authentication: only loopback peers get it.
        let app = if peer.ip().is_loopback() {
            with_control.clone()
        } else {
            data_plane.clone()
        };
        let acceptor = acceptor.clone();
        let vault = vault.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            // Fault injection: while "unreachable", a data-plane request gets no response at
            // all; the connection is closed (hyper drops it when the service fails). The
            // control API stays reachable so that the fault can be cleared.
            let service = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let vault = vault.clone();
                async move {
                    if vault.faults().unreachable && !req.uri().path().starts_with("/_emulator/") {
                        return Err(Unreachable);
                    }
                    app.oneshot(req).await.map_err(|never| match never {})
                }
            });
            let service = TowerToHyperService::new(service);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
