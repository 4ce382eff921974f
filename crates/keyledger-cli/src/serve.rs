//! `keyledger serve`: the HTTP service with its projection runners, key-health monitor and audit
//! checkpointer.
//!
//! With no `--config` and no `KEYLEDGER_*` variables it runs dev mode (DESIGN.md §8): SQLite
//! in `./keyledger-data/`, the in-process simulated vault, and a demo connection and one token
//! per role printed on stderr. Stdout carries exactly one line, `listening on http://ADDR:PORT`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use keyledger_app::HealthConfig;
use keyledger_domain::{HostAllowList, OrgId, Role, TenantId};
use keyledger_keys::{KeyAccess, RetryPolicy};
use keyledger_server::background;
use keyledger_server::dev::{DemoVault, demo_tokens, role_name};
use keyledger_server::{EntraConfig, EntraIssuer, ServerConfig, Services, TokenGrant, Tokens};
use keyledger_store::KeyRing;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Config, Origin, VaultKind};
use crate::key_file;
use crate::report::Failure;
use crate::store_url::{Backend, Create, OpenedStore, StoreUrl};

pub(crate) fn run(config_file: Option<PathBuf>) -> ExitCode {
    let (config, origin) = match config::load(config_file.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("keyledger: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Failure::new("cannot start the async runtime", &e).report(),
    };
    match runtime.block_on(serve(config, origin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives right after the listening line still
/// drains instead of killing the process.
fn termination() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        async move {
            match streams {
                Ok((mut term, mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn grants(config: &Config) -> Result<Vec<TokenGrant>, Failure> {
    fn ids<T: std::str::FromStr + Ord>(values: &[String]) -> Option<std::collections::BTreeSet<T>> {
        if values.iter().any(|v| v == "*") {
            None
        } else {
            Some(values.iter().filter_map(|v| v.parse().ok()).collect())
        }
    }
    if config.auth.tokens.is_empty() && config.auth.entra.is_empty() {
        return Err(Failure::msg(
            "invalid configuration",
            "auth.tokens: at least one token (or an [[auth.entra]] issuer) is needed, or nobody can call the API",
        ));
    }
    Ok(config
        .auth
        .tokens
        .iter()
        .map(|t| TokenGrant {
            token: t.token.clone(),
            subject: t.subject.clone(),
            roles: t.roles.clone(),
            organizations: ids::<OrgId>(&t.organizations),
            tenants: ids::<TenantId>(&t.tenants),
        })
        .collect())
}

/// The `[[auth.entra]]` issuers; a `ca_cert` that cannot be read or parsed stops the start.
fn entra_issuers(config: &Config) -> Result<Vec<EntraIssuer>, Failure> {
    config
        .auth
        .entra
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let key = |f: &str| format!("auth.entra[{i}].{f}");
            let ca_cert_pem = match &e.ca_cert {
                None => None,
                Some(path) => Some(std::fs::read(path).map_err(|err| {
                    Failure::new(
                        format!("{}: cannot read {}", key("ca_cert"), path.display()),
                        &err,
                    )
                })?),
            };
            EntraIssuer::new(EntraConfig {
                roles_claim: e.roles_claim.clone(),
                organizations_claim: e.organizations_claim.clone(),
                tenants_claim: e.tenants_claim.clone(),
                ca_cert_pem,
                ..EntraConfig::new(&e.issuer, &e.audience, &e.jwks_uri)
            })
            .map_err(|err| Failure::new(format!("auth.entra[{i}]"), &err))
        })
        .collect()
}

fn azure_key_access(config: &Config) -> Result<Arc<dyn KeyAccess>, Failure> {
    let azure = &config.keys.azure;
    let ca_cert_pem =
        match &azure.ca_cert {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Failure::new(format!("keys.azure.ca_cert: cannot read {}", path.display()), &e)
            })?),
        };
    let adapter = keyledger_azure::AzureKeyAccess::new(keyledger_azure::AzureConfig {
        authority_host: azure.authority_host.clone(),
        allowed_vault_hosts: HostAllowList::new(azure.allowed_vault_hosts.iter()),
        ca_cert_pem,
        request_timeout: azure.request_timeout,
        ..keyledger_azure::AzureConfig::default()
    })
    .map_err(|e| Failure::new("keys.azure", &e))?;
    Ok(Arc::new(adapter.retrying(RetryPolicy {
        request_timeout: azure.request_timeout,
        ..RetryPolicy::default()
    })))
}

/// The simulated vault's demo connection and, in dev mode, the tokens it generated.
fn print_dev_banner(demo: &DemoVault, tokens: &[TokenGrant]) {
    eprintln!();
    eprintln!(
        "keyledger with the simulated vault (in process; kept in dev-vault.json beside the internal keys)."
    );
    eprintln!("Demo connection (for \"Test and save\"):");
    eprintln!("  directory_id    {}", demo.directory_id);
    eprintln!("  application_id  {}", demo.application_id);
    eprintln!("  client_secret   {}", demo.client_secret);
    for key in &demo.key_identifiers {
        eprintln!("  key_identifier  {key}");
    }
    if tokens.is_empty() {
        eprintln!("Tokens: the configured [[auth.tokens]] (not shown).");
    } else {
        eprintln!("Tokens (Authorization: Bearer <token>):");
        for t in tokens {
            let role = t.roles.first().copied().unwrap_or(Role::Auditor);
            eprintln!("  {:<10} {}", role_name(role), t.token);
        }
    }
    eprintln!();
}

fn ensure_parent(path: &Path) -> Result<(), Failure> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::new(format!("cannot create {}", dir.display()), &e))?;
    }
    Ok(())
}

/// The listener's TLS configuration from `server.tls_cert` and `server.tls_key` (both or
/// neither, checked with the configuration), HTTP/1.1 over TLS 1.2 and 1.3.
fn tls_config(server: &config::ServerConfig) -> Result<Option<Arc<rustls::ServerConfig>>, Failure> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) else {
        return Ok(None);
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| Failure::msg(format!("server.tls_cert: cannot read {}", cert.display()), e))?;
    if chain.is_empty() {
        return Err(Failure::msg(
            format!("server.tls_cert: cannot read {}", cert.display()),
            "no CERTIFICATE in the file",
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Failure::msg(format!("server.tls_key: cannot read {}", key.display()), e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::msg("cannot set up TLS", e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| Failure::msg("server.tls_key: does not fit server.tls_cert", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The audit signing key (`audit.signing_key_file`): created on the first start, and
/// otherwise loaded and held to the checkpoints the store already has, so it is never
/// replaced beside them (ADR 0026).
async fn audit_signer(
    config: &Config,
    store: &dyn keyledger_store::EventStore,
) -> Result<keyledger_audit::AuditSigner, Failure> {
    let path = &config.audit.signing_key_file;
    ensure_parent(path)?;
    let stored = latest_checkpoint_note(store).await?;
    let (signer, outcome) =
        keyledger_audit::settle_signing_key(path, &config.audit.origin, stored.as_deref())
            .map_err(|e| Failure::msg("audit.signing_key_file", e))?;
    if outcome == keyledger_audit::KeyFileOutcome::Created {
        tracing::info!(path = %path.display(), verifier_key = %signer.verifier_key(), "created the audit signing key");
    }
    Ok(signer)
}

/// The note of the last checkpoint recorded in stream `audit`, if any.
async fn latest_checkpoint_note(store: &dyn keyledger_store::EventStore) -> Result<Option<String>, Failure> {
    let events = store
        .read_stream(
            keyledger_domain::StreamId::Audit,
            keyledger_domain::StreamVersion(1),
        )
        .await
        .map_err(|e| Failure::new("cannot read the audit checkpoints", &e))?;
    for stored in events.iter().rev() {
        let event = stored
            .decode()
            .map_err(|e| Failure::new("cannot read the audit checkpoints", &e))?;
        if let keyledger_domain::Event::AuditCheckpointSigned(c) = event {
            return Ok(Some(c.note));
        }
    }
    Ok(None)
}

async fn serve(config: Config, origin: Origin) -> Result<(), Failure> {
    let dev = origin == Origin::DevMode;
    let simulated = dev || config.keys.vault == VaultKind::Simulated;
    let key_file = &config.keys.internal_key_file;
    ensure_parent(key_file)?;
    // The simulated vault is kept next to the internal keys, so a restart finds its keys.
    let demo = if simulated {
        let path = key_file.with_file_name("dev-vault.json");
        Some(DemoVault::open_or_create(&path).map_err(|e| Failure::msg("the simulated vault", e))?)
    } else {
        None
    };
    let keys = match &demo {
        Some(d) => d.key_access(),
        None => azure_key_access(&config)?,
    };
    let grants = if dev { demo_tokens() } else { grants(&config)? };
    let entra = if dev { Vec::new() } else { entra_issuers(&config)? };
    // Read before anything is opened: a bad certificate or key stops the start early.
    let tls = tls_config(&config.server)?;

    let loaded = key_file::load(key_file)?;
    let ring_loaded = loaded.is_some();
    let ring = Arc::new(loaded.unwrap_or_else(KeyRing::generate));
    let url = StoreUrl::parse(&config.store.url)?;
    // One projection writer per SQLite file (ADR 0014), held until the process ends; taken
    // before the store is opened, so a refused start touches nothing.
    let _writer = match &url {
        StoreUrl::Sqlite(path) => {
            ensure_parent(path)?;
            Some(
                keyledger_sqlite::WriterLock::acquire(path)
                    .map_err(|e| Failure::msg(format!("cannot serve {url}"), e))?,
            )
        }
        StoreUrl::Postgres(_) => None,
    };
    let opened = OpenedStore::open_with(
        &url,
        ring.clone(),
        Create::IfMissing,
        config.store.postgres_options(),
    )
    .await?;
    let store = opened.store.clone();
    if let Err(failure) = key_file::settle(key_file, &ring, ring_loaded, store.as_ref()).await {
        opened.close().await;
        return Err(failure);
    }

    let audit_signer = match audit_signer(&config, store.as_ref()).await {
        Ok(signer) => signer,
        Err(failure) => {
            opened.close().await;
            return Err(failure);
        }
    };

    let services = Services::with_app_config(
        store.clone(),
        opened.sink.clone(),
        keys,
        HealthConfig {
            probe_interval: config.health.probe_interval,
            transient_grace: config.health.transient_grace,
            ..HealthConfig::default()
        },
        audit_signer,
        Tokens::new(&grants).with_entra(entra),
        keyledger_app::AppConfig {
            release_single_flight: config.keys.release_single_flight,
            ..keyledger_app::AppConfig::default()
        },
    );
    let monitor = services.monitor.clone();
    let checkpoint_interval = config.audit.checkpoint_interval;

    let (stop, stopping) = watch::channel(false);
    let mut tasks: Vec<JoinHandle<()>> = match &opened.backend {
        Backend::Sqlite(_) => {
            let mut tasks =
                background::projection_runners(store.clone(), opened.sink.clone(), stopping.clone());
            tasks.push(background::checkpointer(
                services.checkpointer.clone(),
                checkpoint_interval,
                stopping.clone(),
            ));
            tasks
        }
        // Several instances may share the database: each projection runs where its lease is held.
        Backend::Postgres(pg) => {
            let StoreUrl::Postgres(raw) = &url else {
                unreachable!("a PostgreSQL backend comes from a postgres URL")
            };
            let mut tasks = background::led_projection_runners(
                raw,
                store.clone(),
                keyledger_postgres::PgProjections::new(pg),
                stopping.clone(),
            );
            tasks.push(background::led_checkpointer(
                raw,
                services.checkpointer.clone(),
                checkpoint_interval,
                stopping.clone(),
            ));
            tasks
        }
    };
    tasks.push(background::health_monitor(
        monitor.clone(),
        store.clone(),
        stopping.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            Failure::new(
                format!("server.listen: cannot listen on {}", config.server.listen),
                &e,
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new("cannot read the listening address", &e))?;
    let terminated = termination();
    if let Some(demo) = &demo {
        // Only tokens that dev mode generated are shown; configured ones are the operator's.
        print_dev_banner(demo, if dev { &grants } else { &[] });
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "serving plain HTTP on a non-loopback address: tokens and responses cross the network \
             in clear; set server.tls_cert and server.tls_key"
        );
    }
    println!("listening on {scheme}://{addr}");
    tracing::info!(%addr, store = %url, dev, "keyledger is serving");

    let server_config = ServerConfig {
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: config.server.request_timeout,
        header_read_timeout: config.server.header_read_timeout,
        max_connections: config.server.max_connections,
        max_streams: config.server.max_streams,
        allowed_vault_hosts: if simulated {
            HostAllowList::azure_public_clouds()
        } else {
            HostAllowList::new(config.keys.azure.allowed_vault_hosts.iter())
        },
        tls,
        external_cache_ttl: config.keys.external_cache_ttl,
        internal_cache_ttl: config.keys.internal_cache_ttl,
        ..ServerConfig::default()
    };
    let served = keyledger_server::run(listener, services, server_config, terminated).await;
    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    }
    opened.close().await;
    served.map_err(|e| Failure::new("the server failed", &e))?;
    tracing::info!("stopped");
    Ok(())
}
