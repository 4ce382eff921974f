//! The keyledger HTTP API (CONTRACT.md) on axum: organization commands and reads, the tenant
//! audit, the CloudEvents page and SSE stream, and the operational endpoints.
//!
//! - [`router`] builds the routes; [`run`] serves them on a listener until a shutdown signal,
//!   draining in-flight requests and ending open streams, within the connection limits of
//!   [`ServerConfig`] (ADR 0016);
//! - [`problem`]: every failure as `application/problem+json` with a CONTRACT.md code;
//! - [`auth`]: bearer tokens → actors with roles and scopes; [`entra`]: Entra ID access tokens;
//! - [`idempotency`]: `Idempotency-Key` replays;
//! - [`openapi`]: the route table and `schemas/openapi.json`.

// `Problem` is every handler's error: its size (~170 bytes) is nothing next to an HTTP round trip.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod background;
pub mod cloudevent;
mod console;
pub mod dev;
pub mod entra;
mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod problem;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use keyledger_app::{App, Checkpointer, HealthMonitor};
use keyledger_audit::AuditSigner;
use keyledger_domain::HostAllowList;
use keyledger_projection::ProjectionSink;
use keyledger_store::EventStore;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

pub use auth::{TokenGrant, Tokens, Unauthenticated};
pub use entra::{EntraConfig, EntraIssuer, EntraSetupError};
pub use problem::{FieldError, Problem};

/// Limits and timings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Larger request bodies get 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// A request (other than the SSE stream) that takes longer gets 503.
    pub request_timeout: Duration,
    /// How often the SSE stream sends a comment heartbeat.
    pub heartbeat: Duration,
    /// Vault hosts a key identifier may name.
    pub allowed_vault_hosts: HostAllowList,
    /// A connection that has not sent a request's full headers this long after it started
    /// sending them (or after it opened) is closed.
    pub header_read_timeout: Duration,
    /// Open connections at most; past it the server accepts no more until one closes.
    pub max_connections: usize,
    /// Open SSE streams at most; past it a stream gets 503 `too_many_streams`.
    pub max_streams: usize,
    /// With a TLS configuration the listener serves HTTPS only; its handshake must finish
    /// within `header_read_timeout`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a platform service may cache a released customer-managed DEK
    /// (`keys.external_cache_ttl`).
    pub external_cache_ttl: Duration,
    /// How long a platform service may cache a released provider-managed DEK
    /// (`keys.internal_cache_ttl`).
    pub internal_cache_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 65536,
            request_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
            allowed_vault_hosts: HostAllowList::azure_public_clouds(),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_streams: 1000,
            tls: None,
            external_cache_ttl: Duration::from_secs(3600),
            internal_cache_ttl: Duration::from_secs(900),
        }
    }
}

/// What the routes work with.
pub struct Services {
    pub app: Arc<App>,
    pub monitor: Arc<HealthMonitor>,
    pub store: Arc<dyn EventStore>,
    /// Where the projections live (the tenant audit is read from here).
    pub projections: Arc<dyn ProjectionSink>,
    /// Signs the audit logs' checkpoints (on request, and in the background where serve
    /// runs it).
    pub checkpointer: Arc<Checkpointer>,
    pub tokens: Tokens,
}

impl Services {
    /// The service over `store`: the application on the system clock, and a health monitor
    /// with `health`, both testing keys through `keys`; audit checkpoints signed by
    /// `audit_signer` over the trees of `projections`.
    pub fn new(
        store: Arc<dyn EventStore>,
        projections: Arc<dyn ProjectionSink>,
        keys: Arc<dyn keyledger_keys::KeyAccess>,
        health: keyledger_app::HealthConfig,
        audit_signer: AuditSigner,
        tokens: Tokens,
    ) -> Self {
        let app_config = keyledger_app::AppConfig::default();
        Self::with_app_config(store, projections, keys, health, audit_signer, tokens, app_config)
    }

    /// [`Services::new`] with the application's tunables.
    pub fn with_app_config(
        store: Arc<dyn EventStore>,
        projections: Arc<dyn ProjectionSink>,
        keys: Arc<dyn keyledger_keys::KeyAccess>,
        health: keyledger_app::HealthConfig,
        audit_signer: AuditSigner,
        tokens: Tokens,
        app_config: keyledger_app::AppConfig,
    ) -> Self {
        let app = Arc::new(App::new(
            store.clone(),
            keys.clone(),
            Arc::new(keyledger_app::SystemClock),
            app_config,
        ));
        let monitor = Arc::new(HealthMonitor::new(app.clone(), keys, health));
        let checkpointer = Arc::new(Checkpointer::new(app.clone(), projections.clone(), audit_signer));
        Self {
            app,
            monitor,
            store,
            projections,
            checkpointer,
            tokens,
        }
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// Shared by every handler.
pub(crate) struct Context {
    pub services: Services,
    pub config: ServerConfig,
    pub idempotency: idempotency::Replays,
    pub metrics: metrics::Metrics,
    /// Turns true when the server starts shutting down; open streams end.
    pub shutdown: watch::Receiver<bool>,
    /// One permit per open SSE stream (`max_streams`).
    pub streams: Arc<Semaphore>,
    /// SSE messages rendered once for every open stream.
    pub rendered: cloudevent::Rendered,
    /// The console's signed-in sessions.
    pub sessions: console::session::Sessions,
}

pub(crate) type Shared = Arc<Context>;

/// The routes, with their middleware. `shutdown` ends open SSE streams when it turns true.
pub fn router(services: Services, config: ServerConfig, shutdown: watch::Receiver<bool>) -> Router {
    let streams = Arc::new(Semaphore::new(config.max_streams.min(Semaphore::MAX_PERMITS)));
    let state = Arc::new(Context {
        services,
        config,
        idempotency: idempotency::Replays::default(),
        metrics: metrics::Metrics::default(),
        shutdown,
        streams,
        rendered: cloudevent::Rendered::default(),
        sessions: console::session::Sessions::default(),
    });
    routes::build(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, ends open
/// streams and waits for in-flight requests.
///
/// HTTP/1.1 only, over TLS when `config.tls` is set (a connection whose handshake does not
/// finish within `header_read_timeout` is closed). A connection that takes longer than `header_read_timeout` to send a
/// request's headers is closed. At `max_connections` open connections the server accepts no
/// more until one closes; the others wait in the listener's backlog (ADR 0016).
pub async fn run(
    listener: TcpListener,
    services: Services,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let slots = Arc::new(Semaphore::new(
        config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let handshake_timeout = config.header_read_timeout;
    let app = router(services, config, rx);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        // The semaphore is never closed, so acquiring only waits.
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let watcher = connections.watcher();
        let (http, tls) = (http.clone(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake took too long; closed");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    tracing::info!("shutting down: draining in-flight requests");
    drop(listener);
    let _ = tx.send(true);
    connections.shutdown().await;
    Ok(())
}

/// A failed accept: a connection the peer gave up on is nothing; anything else (out of file
/// descriptors, say) is logged, and accepting pauses for a second so the loop does not spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
