//! A keyledger server on a real socket (127.0.0.1:0) over SQLite or PostgreSQL, with the
//! simulated vault behind the official SDK adapter, projection runners and fixed tokens.

#![allow(dead_code, unused_macros)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use keyledger_app::HealthConfig;
use keyledger_domain::{OrgId, Role};
use keyledger_projection::ProjectionSink;
use keyledger_server::dev::DemoVault;
use keyledger_server::{ServerConfig, Services, TokenGrant, Tokens};
use keyledger_store::{EventStore, KeyRing};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One `#[tokio::test]` per backend for each `async fn name(&Server)` listed: `sqlite::name`
/// and `postgres::name` (skipped when PostgreSQL is not available and not required).
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = super::Server::start(super::Backend::Sqlite).await.unwrap();
                    super::$name(&server).await;
                    server.shutdown().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(server) = super::Server::start(super::Backend::Postgres).await else {
                        return;
                    };
                    super::$name(&server).await;
                    server.shutdown().await;
                }
            )*
        }
    };
}

pub(crate) const ADMIN: &str = "t-admin-0123456789";
pub(crate) const AUDITOR: &str = "t-auditor-0123456789";
/// An auditor of tenant A only.
pub(crate) const AUDITOR_A: &str = "t-auditor-a-0123456789";
pub(crate) const PLATFORM: &str = "t-platform-0123456789";
pub(crate) const BILLING: &str = "t-billing-0123456789";
pub(crate) const SUPPORT: &str = "t-support-0123456789";
/// An administrator of [`OTHER_ORG`] only.
pub(crate) const ADMIN_OTHER: &str = "t-admin-other-0123456789";
/// An auditor of tenant A with `organizations = []` (CONTRACT.md "Tenant audit scope").
pub(crate) const AUDITOR_A_NO_ORGS: &str = "t-auditor-a-no-orgs-0123456789";
/// An administrator with `organizations = []` and every tenant: scoped to nothing.
pub(crate) const ADMIN_NO_ORGS: &str = "t-admin-no-orgs-0123456789";

pub(crate) const TENANT_A: &str = "01900000-0000-7000-8000-00000000000a";
pub(crate) const TENANT_B: &str = "01900000-0000-7000-8000-00000000000b";
pub(crate) const OTHER_ORG: &str = "01900000-0000-7000-8000-0000000000ff";

/// Every role's token, with its role.
pub(crate) const ROLE_TOKENS: [(Role, &str); 5] = [
    (Role::OrgAdmin, ADMIN),
    (Role::Auditor, AUDITOR),
    (Role::Platform, PLATFORM),
    (Role::Billing, BILLING),
    (Role::Support, SUPPORT),
];

fn grant(token: &str, role: Role, orgs: Option<&[&str]>, tenants: Option<&[&str]>) -> TokenGrant {
    TokenGrant {
        token: token.into(),
        subject: format!("{token}@example.com"),
        roles: vec![role],
        organizations: orgs.map(|o| o.iter().map(|s| s.parse().unwrap()).collect()),
        tenants: tenants.map(|t| t.iter().map(|s| s.parse().unwrap()).collect()),
    }
}

pub(crate) fn tokens() -> Tokens {
    Tokens::new(&[
        grant(ADMIN, Role::OrgAdmin, None, None),
        grant(AUDITOR, Role::Auditor, None, None),
        grant(AUDITOR_A, Role::Auditor, None, Some(&[TENANT_A])),
        grant(PLATFORM, Role::Platform, None, None),
        grant(BILLING, Role::Billing, None, None),
        grant(SUPPORT, Role::Support, None, None),
        grant(ADMIN_OTHER, Role::OrgAdmin, Some(&[OTHER_ORG]), None),
        grant(AUDITOR_A_NO_ORGS, Role::Auditor, Some(&[]), Some(&[TENANT_A])),
        grant(ADMIN_NO_ORGS, Role::OrgAdmin, Some(&[]), None),
    ])
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// One HTTP response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    pub(crate) fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    #[track_caller]
    pub(crate) fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected reply: {}", self.text);
        self
    }
    #[track_caller]
    pub(crate) fn problem(self, status: u16, code: &str) -> Self {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            self.text
        );
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        self
    }
}

pub(crate) struct Server {
    pub base: String,
    pub http: reqwest::Client,
    pub demo: DemoVault,
    pub store: Arc<dyn EventStore>,
    /// The SQLite store itself, to close it under the server.
    pub sqlite: Option<keyledger_sqlite::SqliteStore>,
    /// The PostgreSQL pool, to count events without the read fence.
    pub pg: Option<sqlx::PgPool>,
    /// Every response body this server sent to [`Server::call`].
    pub transcript: std::sync::Mutex<Vec<String>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
    _db: Option<keyledger_postgres::testing::TestDatabase>,
}

/// The `audit.origin` of test servers.
pub(crate) const AUDIT_ORIGIN: &str = "keyledger.localhost";

/// The service over `store`, with the demo vault behind the SDK adapter.
pub(crate) fn services(
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    demo: &DemoVault,
) -> Services {
    services_with(store, sink, demo, tokens())
}

/// [`services`] accepting `tokens`.
pub(crate) fn services_with(
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    demo: &DemoVault,
    tokens: Tokens,
) -> Services {
    Services::new(
        store,
        sink,
        demo.key_access(),
        HealthConfig::default(),
        audit_signer(),
        tokens,
    )
}

/// The audit signer of test servers: a new key named like dev mode's.
pub(crate) fn audit_signer() -> keyledger_audit::AuditSigner {
    keyledger_audit::AuditSigner::generate(AUDIT_ORIGIN).expect("a valid note name")
}

pub(crate) fn test_config() -> ServerConfig {
    ServerConfig {
        max_body_bytes: 16 * 1024,
        heartbeat: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

impl Server {
    /// `None` when PostgreSQL is asked for and not available (and not required).
    pub(crate) async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, test_config()).await
    }

    pub(crate) async fn start_with(backend: Backend, config: ServerConfig) -> Option<Self> {
        Self::start_with_tokens(backend, config, tokens()).await
    }

    /// [`Server::start_with`] accepting `tokens` (the static ones of [`tokens`], say, plus
    /// Entra ID issuers).
    pub(crate) async fn start_with_tokens(
        backend: Backend,
        config: ServerConfig,
        tokens: Tokens,
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ring = Arc::new(KeyRing::generate());
        let mut db = None;
        let mut pg = None;
        let mut sqlite = None;
        let (store, sink): (Arc<dyn EventStore>, Arc<dyn ProjectionSink>) = match backend {
            Backend::Sqlite => {
                let path = dir.path().join("keyledger.db");
                let store = keyledger_sqlite::SqliteStore::open(&path, ring).await.unwrap();
                sqlite = Some(store.clone());
                let sink = keyledger_sqlite::SqliteProjections::new(&store);
                (Arc::new(store), Arc::new(sink))
            }
            Backend::Postgres => {
                let database = keyledger_postgres::testing::TestDatabase::create("kl_http").await?;
                let store = keyledger_postgres::PostgresStore::connect(database.url(), ring)
                    .await
                    .unwrap();
                let sink = keyledger_postgres::PgProjections::new(&store);
                pg = Some(store.pool().clone());
                db = Some(database);
                (Arc::new(store), Arc::new(sink))
            }
        };
        let demo = DemoVault::new();
        let services = services_with(store.clone(), sink.clone(), &demo, tokens);
        let (stop, stopped) = watch::channel(false);
        let mut tasks =
            keyledger_server::background::projection_runners(store.clone(), sink.clone(), stopped.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = keyledger_server::background::stopped(stopped);
        tasks.push(tokio::spawn(async move {
            keyledger_server::run(listener, services, config, shutdown)
                .await
                .unwrap();
        }));
        Some(Self {
            base,
            http: reqwest::Client::new(),
            demo,
            store,
            sqlite,
            pg,
            transcript: Default::default(),
            stop,
            tasks,
            _dir: dir,
            _db: db,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request; `body` is sent as is with `Content-Type: application/json`.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        self.transcript.lock().unwrap().push(text.clone());
        Reply {
            status,
            headers,
            text,
        }
    }

    pub(crate) async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        self.send(method, path, Some(token), body.as_deref(), &[]).await
    }

    /// How many events the store holds, committed ones included that readers of the global
    /// order do not see yet (on PostgreSQL they wait for older transactions to end).
    pub(crate) async fn event_count(&self) -> usize {
        if let Some(pool) = &self.pg {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(pool)
                .await
                .unwrap();
            return usize::try_from(n).unwrap();
        }
        self.published().await.len()
    }

    /// The positions `read_all` shows now.
    pub(crate) async fn published(&self) -> Vec<u64> {
        let mut all = Vec::new();
        let mut after = keyledger_domain::GlobalPosition(0);
        loop {
            let page = self.store.read_all(after, 1000).await.unwrap();
            let Some(last) = page.last() else { return all };
            after = last.global_position;
            all.extend(page.iter().map(|e| e.global_position.0));
        }
    }

    /// The positions of every stored event, once `read_all` shows them all.
    pub(crate) async fn all_published(&self) -> Vec<u64> {
        let n = self.event_count().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.published().await;
            if all.len() >= n || tokio::time::Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection to demo key `n` (0 or 1) with the demo secret.
    pub(crate) fn connection(&self, n: usize) -> Value {
        json!({
            "directory_id": self.demo.directory_id,
            "application_id": self.demo.application_id,
            "client_secret": self.demo.client_secret,
            "key_identifier": self.demo.key_identifiers[n],
        })
    }

    /// Registers an enterprise organization with tenants A and B.
    pub(crate) async fn register(&self, org: &str) -> Value {
        self.call(
            "POST",
            "/v1/organizations",
            PLATFORM,
            Some(json!({
                "org_id": org,
                "name": "Contoso",
                "plan": {"kind": "enterprise", "tier": "standard"},
                "tenants": [{"tenant_id": TENANT_A, "name": "Default"}, {"tenant_id": TENANT_B, "name": "Finance"}],
            })),
        )
        .await
        .expect(201)
        .json()
    }

    /// Waits until the tenant audit holds `n` rows for `tenant` (projections are eventually
    /// consistent).
    pub(crate) async fn audit_rows(&self, tenant: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let page = self
                .call(
                    "GET",
                    &format!("/v1/tenants/{tenant}/audit?limit=1000"),
                    AUDITOR,
                    None,
                )
                .await;
            let entries = page.json()["entries"].as_array().cloned().unwrap_or_default();
            if entries.len() >= n || tokio::time::Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the audit projection knows `tenant` (it follows the log).
    pub(crate) async fn tenant_known(&self, tenant: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self
            .call("GET", &format!("/v1/tenants/{tenant}/audit"), AUDITOR, None)
            .await
            .status
            == 404
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the shutdown: the server stops accepting, ends streams and drains requests.
    pub(crate) fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the server task has ended within `timeout`.
    pub(crate) async fn server_ended(&mut self, timeout: Duration) -> bool {
        let Some(server) = self.tasks.pop() else {
            return true;
        };
        tokio::time::timeout(timeout, server).await.is_ok()
    }

    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub(crate) fn new_org() -> String {
    OrgId::new_v7().to_string()
}
