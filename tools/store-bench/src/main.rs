//! Event store benchmark (issue #3): append throughput with 1, 8 and 32 writers, append cost
//! on a long stream against a new one, catch-up over a large log (read_all pages, and through
//! subscribe as consumers read), on SQLite and PostgreSQL, and a pgbench baseline of single-row
//! inserts for PostgreSQL.
//!
//! ```sh
//! cargo run --release -p store-bench -- [--seconds 5] [--events 1000000] [--sqlite-sync full|normal]
//!     [--postgres-url URL] [--skip-postgres] [--skip-sqlite]
//! ```
//!
//! `--audit-tree` measures the audit log's Merkle tree instead (issue 13, `audit.rs`):
//! inclusion-proof latency on an organization log of `--org-events` events, and append
//! throughput at 32 writers with the tree folding live against none.
//!
//! PostgreSQL runs in a fresh database (dropped afterwards) on the server of
//! `--postgres-url`, default `KEYLEDGER_TEST_POSTGRES_URL` or postgres://root@127.0.0.1:5432/postgres.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

mod audit;
use keyledger_domain::event::TenantAdded;
use keyledger_domain::{ActorKind, Event, GlobalPosition, OrgId, Role, StreamId, StreamVersion, TenantId};
use keyledger_postgres::{PostgresOptions, PostgresStore};
use keyledger_sqlite::{Durability, SqliteOptions, SqliteStore};
use keyledger_store::{EnvelopeActor, EventMetadata};
use keyledger_store::{EventStore, KeyRing, NewEvent};
use sqlx::Connection as _;

/// Append and catch-up throughput of the event store backends, with a pgbench baseline.
#[derive(Debug, Clone, Parser)]
#[command(about)]
struct Args {
    /// Seconds per append run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Events in the log for the catch-up runs (seeded when the log holds fewer).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// SQLite's `synchronous` setting.
    #[arg(long, value_enum, default_value_t = SqliteSync::Full)]
    sqlite_sync: SqliteSync,
    /// The PostgreSQL server to run on (in a fresh database, dropped afterwards).
    #[arg(
        long,
        env = "KEYLEDGER_TEST_POSTGRES_URL",
        hide_env_values = true,
        default_value = "postgres://root@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Leave PostgreSQL out.
    #[arg(long)]
    skip_postgres: bool,
    /// Leave SQLite out.
    #[arg(long)]
    skip_sqlite: bool,
    /// Seconds of the pgbench baseline.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    /// Only seed and measure catch-up.
    #[arg(long)]
    catch_up_only: bool,
    /// Keep the SQLite database in this file (reused by later runs) instead of a temporary one.
    #[arg(long)]
    sqlite_path: Option<std::path::PathBuf>,
    /// Measure the audit tree (proof latency, append throughput with the tree on and off)
    /// instead of the store.
    #[arg(long)]
    audit_tree: bool,
    /// Events of the organization log whose inclusion proofs are timed (`--audit-tree`).
    #[arg(long, default_value_t = 100_000)]
    org_events: u64,
    /// Inclusion proofs timed (`--audit-tree`).
    #[arg(long, default_value_t = 5_000)]
    proofs: usize,
}

/// SQLite's `synchronous` setting: when a commit is durable.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SqliteSync {
    Full,
    Normal,
}

impl From<SqliteSync> for Durability {
    fn from(s: SqliteSync) -> Self {
        match s {
            SqliteSync::Full => Durability::Full,
            SqliteSync::Normal => Durability::Normal,
        }
    }
}

fn event(name: &str) -> NewEvent {
    NewEvent {
        event: Event::TenantAdded(TenantAdded {
            tenant_id: TenantId::new_v7(),
            name: name.to_owned(),
        }),
        metadata: EventMetadata {
            occurred_at: chrono::Utc::now(),
            actor: EnvelopeActor {
                kind: ActorKind::Service,
                id: "bench".into(),
                roles: BTreeSet::from([Role::Platform]),
                source_ip: None,
            },
            correlation_id: None,
            causation_id: None,
        },
    }
}

fn new_stream() -> StreamId {
    StreamId::for_org(OrgId::new_v7())
}

/// Appends single-event commands, each writer on its own stream with the expected version,
/// for `seconds`. Returns events per second.
async fn append_throughput<S: EventStore + Clone + 'static>(store: &S, writers: usize, seconds: u64) -> f64 {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = new_stream();
                let mut version = 0u64;
                while Instant::now() < deadline {
                    store
                        .append(
                            stream,
                            StreamVersion(version),
                            vec![event(&format!("w{w}-{version}"))],
                            None,
                        )
                        .await
                        .expect("append");
                    version += 1;
                }
                version
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Mean latency of single-event appends on a stream that already holds `existing` events
/// and on brand-new streams, interleaved so both see the same database state.
async fn append_latency<S: EventStore>(store: &S, existing: u64, n: u32) -> (Duration, Duration) {
    let long = new_stream();
    let mut version = 0;
    while version < existing {
        let batch = (existing - version).min(1000);
        let events = (0..batch)
            .map(|i| event(&format!("seed-{}", version + i)))
            .collect();
        store
            .append(long, StreamVersion(version), events, None)
            .await
            .expect("seed long stream");
        version += batch;
    }
    let (mut on_long, mut on_new) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        store
            .append(long, StreamVersion(version), vec![event("probe")], None)
            .await
            .expect("append");
        on_long += t.elapsed();
        version += 1;
        let t = Instant::now();
        store
            .append(new_stream(), StreamVersion::NONE, vec![event("probe")], None)
            .await
            .expect("append");
        on_new += t.elapsed();
    }
    (on_long / n, on_new / n)
}

/// Fills the log to `total` events with 1000-event appends on 1000-event streams.
async fn seed<S: EventStore>(store: &S, total: u64) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        let stream = new_stream();
        let mut version = 0;
        while version < 1000 && done < total {
            let batch = (total - done).min(1000 - version);
            let events = (0..batch).map(|i| event(&format!("bulk-{}", done + i))).collect();
            store
                .append(stream, StreamVersion(version), events, None)
                .await
                .expect("seed");
            version += batch;
            done += batch;
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Reads the whole log with read_all pages; returns (events, events per second).
async fn catch_up<S: EventStore>(store: &S, page: usize) -> (u64, f64) {
    let start = Instant::now();
    let mut after = GlobalPosition::START;
    let mut n = 0u64;
    loop {
        let events = store.read_all(after, page).await.expect("read_all");
        let Some(last) = events.last() else { break };
        after = last.global_position;
        n += u64::try_from(events.len()).expect("usize fits in u64");
    }
    (n, n as f64 / start.elapsed().as_secs_f64())
}

/// Reads `n` events through `subscribe` from the start (catch-up as consumers do it: pages of
/// the subscription's batch, the next read while the current one is consumed).
async fn catch_up_subscribed<S: EventStore>(store: &S, n: u64) -> f64 {
    use futures::StreamExt as _;
    let start = Instant::now();
    let mut events = store
        .subscribe(GlobalPosition::START)
        .take(usize::try_from(n).expect("the event count fits in usize"));
    let mut seen = 0u64;
    while let Some(event) = events.next().await {
        event.expect("subscription");
        seen += 1;
    }
    assert_eq!(seen, n, "the subscription delivered every event");
    n as f64 / start.elapsed().as_secs_f64()
}

#[derive(Debug, Default)]
struct Results {
    lines: Vec<String>,
}

impl Results {
    fn add(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }
}

async fn bench_backend<S: EventStore + Clone + 'static>(
    name: &str,
    store: &S,
    args: &Args,
    out: &mut Results,
) -> f64 {
    let mut at32 = 0.0;
    let writer_counts: &[usize] = if args.catch_up_only { &[] } else { &[1, 8, 32] };
    for &writers in writer_counts {
        let rate = append_throughput(store, writers, args.seconds).await;
        out.add(format!(
            "{name}: append, {writers:>2} writers: {rate:>9.0} events/s"
        ));
        if writers == 32 {
            at32 = rate;
        }
    }
    if !args.catch_up_only {
        let (long, fresh) = append_latency(store, 10_000, 1000).await;
        out.add(format!(
            "{name}: append latency, new stream {:.1} us, stream of 10,000 events {:.1} us, ratio {:.3}",
            fresh.as_secs_f64() * 1e6,
            long.as_secs_f64() * 1e6,
            long.as_secs_f64() / fresh.as_secs_f64()
        ));
    }
    let (existing, _) = catch_up(store, 5000).await;
    let missing = args.events.saturating_sub(existing);
    let seed_rate = seed(store, missing).await;
    out.add(format!(
        "{name}: seeded {missing} events in 1000-event appends at {seed_rate:.0} events/s"
    ));
    let (n, rate) = catch_up(store, 5000).await;
    out.add(format!(
        "{name}: catch-up read_all over {n} events: {rate:>9.0} events/s"
    ));
    let rate = catch_up_subscribed(store, n).await;
    out.add(format!(
        "{name}: catch-up subscribe over {n} events: {rate:>9.0} events/s"
    ));
    at32
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = base[scheme_end..]
        .find('/')
        .map_or(base, |i| &base[..scheme_end + i]);
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

fn pgbench(url: &str, seconds: u64) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pgbench_insert.sql");
    let output = Command::new("pgbench")
        .args(["-n", "-c", "32", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "no tps in pgbench output: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

async fn run_postgres(args: &Args, out: &mut Results) -> Result<(), String> {
    let mut admin = sqlx::PgConnection::connect(&args.postgres_url)
        .await
        .map_err(|e| format!("PostgreSQL unavailable: {e}"))?;
    let db = format!("kl_bench_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    let url = with_database(&args.postgres_url, &db);
    let result = async {
        let options = PostgresOptions {
            max_connections: 40,
            ..Default::default()
        };
        let store = PostgresStore::connect_with(&url, Arc::new(KeyRing::generate()), options)
            .await
            .map_err(|e| e.to_string())?;
        if args.audit_tree {
            let sink = Arc::new(keyledger_postgres::PgProjections::new(&store));
            audit::bench("postgres", &store, sink.clone(), sink.as_ref(), args, out).await;
            store.pool().close().await;
            return Ok(());
        }
        let at32 = bench_backend("postgres", &store, args, out).await;
        sqlx::raw_sql(include_str!("../pgbench_events.sql"))
            .execute(store.pool())
            .await
            .map_err(|e| e.to_string())?;
        store.pool().close().await;
        if args.catch_up_only {
            return Ok(());
        }
        let tps = pgbench(&url, args.pgbench_seconds)?;
        out.add(format!(
            "postgres: pgbench single-row INSERT, 32 clients: {tps:>9.0} tx/s"
        ));
        out.add(format!(
            "postgres: append (32 writers) / pgbench = {:.2}",
            at32 / tps
        ));
        Ok::<(), String>(())
    }
    .await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    result
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let mut out = Results::default();
    out.add(format!(
        "store-bench: {} s per append run, {} events for catch-up, SQLite synchronous={:?}",
        args.seconds, args.events, args.sqlite_sync
    ));
    if !args.skip_sqlite {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteOptions {
            durability: args.sqlite_sync.into(),
            ..Default::default()
        };
        let path = args
            .sqlite_path
            .clone()
            .unwrap_or_else(|| dir.path().join("bench.db"));
        let store = SqliteStore::open_with(&path, Arc::new(KeyRing::generate()), options)
            .await
            .expect("open sqlite");
        if args.audit_tree {
            let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
            audit::bench("sqlite", &store, sink.clone(), sink.as_ref(), &args, &mut out).await;
        } else {
            bench_backend("sqlite", &store, &args, &mut out).await;
        }
        store.close().await;
    }
    if !args.skip_postgres
        && let Err(e) = run_postgres(&args, &mut out).await
    {
        out.add(format!("postgres: skipped: {e}"));
    }
}
