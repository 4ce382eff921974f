//! Application benchmark (issue "Application service"): command latency and throughput for
//! plan changes and for enable/rotate (key tests against the in-process simulated vault through
//! the official SDK adapter), on SQLite and PostgreSQL; the cost of a command on a 10,000-event
//! stream against a new one; and the projection rebuild rate over a large log.
//!
//! ```sh
//! cargo run --release -p app-bench -- [--backend sqlite|postgres|both] [--commands 2000]
//!     [--concurrency 32] [--rate 500] [--rebuild-events 1000000] [--long-stream 10000]
//! ```
//!
//! PostgreSQL runs in a fresh database on `KEYLEDGER_TEST_POSTGRES_URL` (default
//! postgres://root@127.0.0.1:5432/postgres), dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::{Parser, ValueEnum};
use keyledger_app::{App, AppConfig, CommandRequest, SystemClock};
use keyledger_azure::AzureKeyAccess;
use keyledger_domain::{
    Actor, ActorKind, Connection, ConnectionPatch, HealthStatus, HostAllowList, Intent, KeyIdentifier, OrgId,
    Plan, Role, Scope, StreamId, Tenant,
};
use keyledger_projection::{Projection, ProjectionSink, Runner};
use keyledger_store::{EnvelopeActor, EventMetadata};
use keyledger_store::{EventStore, KeyRing, NewEvent};
use keyledger_vault_sim::{Clock as SimClock, Vault, VaultConfig};
use secrecy::SecretString;
use sqlx::Connection as _;

/// Command latency and throughput, flat cost on long streams, and projection rebuild rate.
#[derive(Debug, Clone, Parser)]
#[command(name = "app-bench")]
struct Args {
    /// Which event stores to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    backend: Which,
    /// Plan changes from the concurrent clients in all; the other command runs scale from it.
    #[arg(long, default_value_t = 2000)]
    commands: u64,
    /// Concurrent clients (one organization each).
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Plan changes per second of the open-loop run.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Events in the log the projection rebuild replays (0 skips the rebuild).
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: u64,
    /// Events on the long stream of the flat-cost run.
    #[arg(long, default_value_t = 10_000)]
    long_stream: u64,
    /// The PostgreSQL server; the benchmark creates and drops its own database there.
    #[arg(
        long,
        env = "KEYLEDGER_TEST_POSTGRES_URL",
        default_value = "postgres://root@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    Both,
}

impl Args {
    fn sqlite(&self) -> bool {
        self.backend != Which::Postgres
    }

    fn postgres(&self) -> bool {
        self.backend != Which::Sqlite
    }
}

const BASE: &str = "https://contoso.vault.azure.net";

struct Backend {
    name: &'static str,
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
}

struct Latencies(Vec<Duration>);

impl Latencies {
    /// The `percent`th percentile (nearest rank, rounded half up).
    fn pct(&mut self, percent: usize) -> Duration {
        self.0.sort_unstable();
        let i = (self.0.len().saturating_sub(1) * percent + 50) / 100;
        self.0.get(i).copied().unwrap_or_default()
    }
    fn report(&mut self, what: &str, backend: &str, elapsed: Duration) {
        let n = self.0.len();
        println!(
            "{backend:8} {what:44} {n:6} cmds  {:9.0} cmds/s  p50 {:7.2} ms  p99 {:7.2} ms",
            per_second(n, elapsed),
            self.pct(50).as_secs_f64() * 1000.0,
            self.pct(99).as_secs_f64() * 1000.0,
        );
    }
}

/// `n` per second of `elapsed`. The counts measured here stay far below `u32::MAX`, whose
/// conversion to `f64` is exact.
fn per_second(n: impl TryInto<u32>, elapsed: Duration) -> f64 {
    f64::from(n.try_into().unwrap_or(u32::MAX)) / elapsed.as_secs_f64()
}

fn org(i: u64) -> OrgId {
    OrgId::from_uuid(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_8000_0000_0000_0000 | (u128::from(i) + 1),
    ))
    .expect("not nil")
}

fn actor(role: Role) -> Actor {
    Actor::new(ActorKind::Service, "bench", [role], Scope::everything())
}

fn request(o: OrgId, role: Role, intent: Intent) -> CommandRequest {
    CommandRequest {
        org_id: o,
        actor: actor(role),
        source_ip: None,
        command_id: None,
        correlation_id: None,
        if_match: None,
        intent,
    }
}

struct Sim {
    vault: Arc<Vault>,
    tenant: String,
}

fn sim() -> Sim {
    let vault = Vault::new(VaultConfig::default(), SimClock::system());
    let tenant = vault.config().tenant_id.clone();
    vault.register_app(keyledger_vault_sim::AppRegistration::new(
        &tenant,
        "0b6f5d4e-1111-4222-8333-444455556666",
        "bench-secret",
        &["get", "wrapKey", "unwrapKey"],
    ));
    for name in ["cmk-a", "cmk-b"] {
        vault
            .create_key(BASE, keyledger_vault_sim::NewKey::rsa(name, 2048))
            .expect("create key");
    }
    Sim { vault, tenant }
}

fn connection(s: &Sim, name: &str) -> Connection {
    Connection {
        directory_id: s.tenant.parse().expect("uuid"),
        application_id: "0b6f5d4e-1111-4222-8333-444455556666".parse().expect("uuid"),
        client_secret: SecretString::from("bench-secret"),
        key_identifier: KeyIdentifier::parse(
            &format!("{BASE}/keys/{name}"),
            &HostAllowList::azure_public_clouds(),
        )
        .expect("key id"),
    }
}

fn app(b: &Backend, s: &Sim) -> Arc<App> {
    Arc::new(App::new(
        b.store.clone(),
        Arc::new(AzureKeyAccess::simulated(s.vault.clone())),
        Arc::new(SystemClock),
        AppConfig::default(),
    ))
}

async fn register(app: &App, o: OrgId) {
    app.handle(request(
        o,
        Role::Platform,
        Intent::Register {
            name: "Bench".into(),
            plan: Plan::enterprise("standard"),
            tenants: vec![Tenant {
                tenant_id: uuid::Uuid::now_v7().to_string().parse().expect("uuid"),
                name: "T".into(),
            }],
        },
    ))
    .await
    .expect("register");
}

/// Plan changes from `concurrency` closed-loop clients on distinct organizations.
async fn plan_changes(b: &Backend, s: &Sim, args: &Args) {
    let app = app(b, s);
    let orgs = args.concurrency;
    for i in 0..orgs {
        register(&app, org(i)).await;
    }
    let per = args.commands / args.concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for n in 0..per {
                let plan = if n % 2 == 0 {
                    Plan::enterprise("a")
                } else {
                    Plan::enterprise("b")
                };
                let t = Instant::now();
                app.handle(request(
                    org(c),
                    Role::Billing,
                    Intent::ChangePlan {
                        plan,
                        reason: "bench".into(),
                    },
                ))
                .await
                .expect("plan change");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    Latencies(all).report(
        &format!("plan change, {} clients", args.concurrency),
        b.name,
        start.elapsed(),
    );

    // Open loop at a fixed rate: latency at a given load, not at saturation.
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let total = args
        .rate
        .saturating_mul(5)
        .min(u32::try_from(args.commands.saturating_mul(2)).unwrap_or(u32::MAX));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..total {
        let due = start + interval * n;
        tokio::time::sleep_until(due.into()).await;
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let plan = if n % 2 == 0 {
                Plan::enterprise("c")
            } else {
                Plan::enterprise("d")
            };
            let t = Instant::now();
            app.handle(request(
                org(u64::from(n) % orgs),
                Role::Billing,
                Intent::ChangePlan {
                    plan,
                    reason: "r".into(),
                },
            ))
            .await
            .expect("plan change");
            t.elapsed()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("task"));
    }
    Latencies(all).report(
        &format!("plan change, open loop at {}/s", args.rate),
        b.name,
        start.elapsed(),
    );
}

/// Enable then rotate back and forth: each runs the live key test (RSA-2048 through the SDK).
async fn enable_rotate(b: &Backend, s: &Sim, args: &Args) {
    let app = app(b, s);
    let n = (args.commands / 10).max(20);
    let base = 10_000;
    for i in 0..n {
        register(&app, org(base + i)).await;
    }
    let mut lat = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        app.handle(request(
            org(base + i),
            Role::OrgAdmin,
            Intent::EnableCustomerManagedKey(connection(s, "cmk-a")),
        ))
        .await
        .expect("enable");
        lat.push(t.elapsed());
    }
    Latencies(lat).report("enable (test and save)", b.name, start.elapsed());
    let mut lat = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let key = connection(s, if i % 2 == 0 { "cmk-b" } else { "cmk-a" }).key_identifier;
        let t = Instant::now();
        let patch = ConnectionPatch {
            key_identifier: Some(key),
            ..Default::default()
        };
        app.handle(request(
            org(base + i),
            Role::OrgAdmin,
            Intent::RotateCustomerManagedKey(patch),
        ))
        .await
        .ok();
        lat.push(t.elapsed());
    }
    Latencies(lat).report("rotate (both keys tested)", b.name, start.elapsed());
}

/// A plan change on an organization whose stream holds `long_stream` events (health flaps)
/// against one on a new organization, alternating.
async fn flat_cost(b: &Backend, s: &Sim, args: &Args) {
    let app = app(b, s);
    let long = org(20_000);
    let fresh = org(20_001);
    for o in [long, fresh] {
        register(&app, o).await;
        app.handle(request(
            o,
            Role::OrgAdmin,
            Intent::EnableCustomerManagedKey(connection(s, "cmk-a")),
        ))
        .await
        .expect("enable");
    }
    let system = Actor::system();
    let mut n = app.view(long).await.ok().flatten().map_or(0, |v| v.version);
    while n < args.long_stream {
        let status = if n % 2 == 0 {
            HealthStatus::VaultUnreachable
        } else {
            HealthStatus::Healthy
        };
        let r = CommandRequest {
            actor: system.clone(),
            ..request(
                long,
                Role::Billing,
                Intent::RecordKeyHealth { status, detail: None },
            )
        };
        app.handle(r).await.expect("health");
        n += 1;
    }
    let mut lat_long = Vec::new();
    let mut lat_new = Vec::new();
    for i in 0..400 {
        for (o, lat) in [(long, &mut lat_long), (fresh, &mut lat_new)] {
            let plan = if i % 2 == 0 {
                Plan::enterprise("x")
            } else {
                Plan::enterprise("y")
            };
            let t = Instant::now();
            app.handle(request(
                o,
                Role::Billing,
                Intent::ChangePlan {
                    plan,
                    reason: "r".into(),
                },
            ))
            .await
            .expect("plan");
            lat.push(t.elapsed());
        }
    }
    let (mut a, mut b2) = (Latencies(lat_long), Latencies(lat_new));
    let (pa, pb) = (a.pct(50), b2.pct(50));
    println!(
        "{:8} plan change on a {}-event stream vs a new one: p50 {:.3} ms vs {:.3} ms, ratio {:.3}",
        b.name,
        args.long_stream,
        pa.as_secs_f64() * 1000.0,
        pb.as_secs_f64() * 1000.0,
        pa.as_secs_f64() / pb.as_secs_f64()
    );
}

/// Appends `events` events (registrations and health flaps, 100 per append) and rebuilds every
/// projection from 0.
async fn rebuild(b: &Backend, args: &Args) {
    let system = EnvelopeActor::from_actor(&Actor::system(), None);
    const PER_ORG: u16 = 10_000;
    let orgs = args.rebuild_events.div_ceil(u64::from(PER_ORG));
    let start = Instant::now();
    for i in 0..orgs {
        let o = org(100_000 + i);
        let mut events = Vec::new();
        let ring = b.store.key_ring();
        let dek = keyledger_store::provider::wrap_dek(ring, o, keyledger_domain::DekId(1), &[7u8; 32])
            .expect("wrap");
        let (by, edek) = dek.into_parts();
        events.push(keyledger_domain::Event::OrganizationRegistered(
            keyledger_domain::event::OrganizationRegistered {
                org_id: o,
                name: "R".into(),
                plan: Plan::enterprise("standard"),
                tenants: vec![Tenant {
                    tenant_id: uuid::Uuid::now_v7().to_string().parse().expect("uuid"),
                    name: "T".into(),
                }],
                registered_at: Utc::now(),
            },
        ));
        events.push(keyledger_domain::Event::DataKeyGenerated(
            keyledger_domain::event::DataKeyGenerated {
                dek_id: keyledger_domain::DekId(1),
                wrapped_by: by,
                edek: keyledger_domain::Protected::Open(edek),
                generated_at: Utc::now(),
            },
        ));
        while events.len() < usize::from(PER_ORG) {
            let tenant = uuid::Uuid::now_v7().to_string().parse().expect("uuid");
            events.push(keyledger_domain::Event::TenantAdded(
                keyledger_domain::event::TenantAdded {
                    tenant_id: tenant,
                    name: "t".into(),
                },
            ));
            events.push(keyledger_domain::Event::TenantRemoved(
                keyledger_domain::event::TenantRemoved { tenant_id: tenant },
            ));
        }
        let mut version = 0u64;
        for chunk in events.chunks(100) {
            let batch: Vec<NewEvent> = chunk
                .iter()
                .map(|e| NewEvent {
                    event: e.clone(),
                    metadata: EventMetadata {
                        occurred_at: keyledger_store::envelope::truncate_to_micros(Utc::now()),
                        actor: system.clone(),
                        correlation_id: None,
                        causation_id: None,
                    },
                })
                .collect();
            b.store
                .append(
                    StreamId::for_org(o),
                    keyledger_domain::StreamVersion(version),
                    batch,
                    None,
                )
                .await
                .expect("append");
            version += u64::try_from(chunk.len()).expect("a chunk holds at most 100 events");
        }
    }
    let appended = orgs * u64::from(PER_ORG);
    println!(
        "{:8} appended {appended} events for the rebuild in {:.1} s",
        b.name,
        start.elapsed().as_secs_f64()
    );
    let total = Instant::now();
    for p in Projection::ALL {
        let t = Instant::now();
        let n = Runner::new(b.store.clone(), b.sink.clone(), p)
            .with_batch(5000)
            .rebuild(|_| {})
            .await;
        n.expect("rebuild");
        println!(
            "{:8} rebuild {:26} {:>9.0} events/s",
            b.name,
            p.name(),
            per_second(appended, t.elapsed())
        );
    }
    println!(
        "{:8} rebuild of the four, one after the other: {:.0} events/s of log",
        b.name,
        per_second(appended, total.elapsed())
    );
    let t = Instant::now();
    Runner::rebuild_all(b.store.clone(), b.sink.clone(), 5000, |_| {})
        .await
        .expect("rebuild all");
    println!(
        "{:8} rebuild of all four in one pass over the log: {:.0} events/s of log",
        b.name,
        per_second(appended, t.elapsed())
    );
}

async fn run(b: Backend, args: &Args) {
    let s = sim();
    plan_changes(&b, &s, args).await;
    enable_rotate(&b, &s, args).await;
    flat_cost(&b, &s, args).await;
    if args.rebuild_events > 0 {
        rebuild(&b, args).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("app-bench: {args:?}");
    if args.sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            keyledger_sqlite::SqliteStore::open(&dir.path().join("bench.db"), Arc::new(KeyRing::generate()))
                .await
                .expect("sqlite");
        let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
        run(
            Backend {
                name: "sqlite",
                store: Arc::new(store),
                sink,
            },
            &args,
        )
        .await;
    }
    if args.postgres() {
        let name = format!("kl_app_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&args.postgres_url)
            .await
            .expect("postgres server");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create db");
        let url = match args.postgres_url.rsplit_once('/') {
            Some((root, _)) => format!("{root}/{name}"),
            None => args.postgres_url.clone(),
        };
        {
            let store = keyledger_postgres::PostgresStore::connect(&url, Arc::new(KeyRing::generate()))
                .await
                .expect("postgres");
            let sink = Arc::new(keyledger_postgres::PgProjections::new(&store));
            run(
                Backend {
                    name: "postgres",
                    store: Arc::new(store),
                    sink,
                },
                &args,
            )
            .await;
        }
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .ok();
    }
}
