//! The keyledger HTTP API (CONTRACT.md) on axum: organization commands and reads, the tenant
//! audit, the CloudEvents page and SSE stream, and the operational endpoints.
//!
//! - [`router`] builds the routes; [`run`] serves them on a listener until a shutdown signal,
//!   draining in-flight requests and ending open streams;
//! - [`problem`]: every failure as `application/problem+json` with a CONTRACT.md code;
//! - [`auth`]: bearer tokens → actors with roles and scopes;
//! - [`idempotency`]: `Idempotency-Key` replays;
//! - [`openapi`]: the route table and `schemas/openapi.json`.

// `Problem` is every handler's error: its size (~170 bytes) is nothing next to an HTTP round trip.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod background;
pub mod cloudevent;
pub mod dev;
mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod problem;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use keyledger_app::{App, HealthMonitor};
use keyledger_domain::HostAllowList;
use keyledger_projection::ProjectionSink;
use keyledger_store::EventStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{TokenGrant, Tokens, Unauthenticated};
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 65536,
            request_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
            allowed_vault_hosts: HostAllowList::azure_public_clouds(),
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
    pub tokens: Tokens,
}

impl Services {
    /// The service over `store`: the application on the system clock, and a health monitor
    /// with `health`, both testing keys through `keys`.
    pub fn new(
        store: Arc<dyn EventStore>,
        projections: Arc<dyn ProjectionSink>,
        keys: Arc<dyn keyledger_keys::KeyAccess>,
        health: keyledger_app::HealthConfig,
        tokens: Tokens,
    ) -> Self {
        let app = Arc::new(App::new(
            store.clone(),
            keys.clone(),
            Arc::new(keyledger_app::SystemClock),
            keyledger_app::AppConfig::default(),
        ));
        let monitor = Arc::new(HealthMonitor::new(app.clone(), keys, health));
        Self {
            app,
            monitor,
            store,
            projections,
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
pub(crate) struct State {
    pub services: Services,
    pub config: ServerConfig,
    pub idempotency: idempotency::Replays,
    pub metrics: metrics::Metrics,
    /// Turns true when the server starts shutting down; open streams end.
    pub shutdown: watch::Receiver<bool>,
}

pub(crate) type Shared = Arc<State>;

/// The routes, with their middleware. `shutdown` ends open SSE streams when it turns true.
pub fn router(services: Services, config: ServerConfig, shutdown: watch::Receiver<bool>) -> Router {
    let state = Arc::new(State {
        services,
        config,
        idempotency: idempotency::Replays::default(),
        metrics: metrics::Metrics::default(),
        shutdown,
    });
    routes::build(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, ends open
/// streams and waits for in-flight requests.
pub async fn run(
    listener: TcpListener,
    services: Services,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let app = router(services, config, rx);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            let _ = tx.send(true);
        })
        .await
}
