//! HTTP load tool (issue "HTTP service"): the real service wired in process the way
//! `keyledger serve` wires it (`keyledger_server::run` on a loopback listener, the application
//! service, the health monitor, the projection runners, SQLite or PostgreSQL), driven over real
//! sockets with `reqwest` (HTTP/1.1 keep-alive). On PostgreSQL it runs what `serve` ships: the
//! pool of `store.max_connections` (default [`PostgresOptions::default`], as in `serve`; set
//! with `--max-connections`) shared by requests, runners and the monitor, and the projection
//! runners led by advisory-lock leases (`background::led_projection_runners`, as in `serve`).
//! One run measures:
//!
//! 1. plan changes (`PUT /v1/organizations/{org}/plan`, billing token) from closed-loop clients
//!    for a fixed time: requests/s, p50, p99, max, and every non-200 counted;
//! 2. the SSE delivery rate to one consumer reading `GET /v1/events/stream?after=0` over
//!    `--sse-events` events, checked against the positions of `GET /v1/events`;
//! 3. the lag from append to SSE delivery: one consumer tails the live stream while plan
//!    changes are issued at a steady rate; lag = when the consumer has parsed the event − just
//!    before the request was sent, matched by the request's unique `reason`.
//!
//! ```sh
//! cargo run --release -p http-bench -- [--store sqlite|postgres://root@127.0.0.1:5432/postgres]
//!     [--seconds 10] [--warmup 2] [--clients 32] [--orgs 256] [--sse-events 100000]
//!     [--lag-rate 500] [--lag-seconds 5] [--max-connections 16] [--no-background]
//! ```
//!
//! `--no-background` is a diagnostic: it leaves out the projection runners and the health
//! monitor to show their share of the request path's cost.
//!
//! SQLite lives in a temporary directory. With a PostgreSQL URL the tool creates a scratch
//! database `http_bench_<pid>` next to the one named and drops it afterwards.
//!
//! The server runs on its own Tokio runtime, the clients on another, so neither starves the
//! other's scheduler; both share the machine's cores, like a load generator on the same host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use keyledger_app::HealthConfig;
use keyledger_domain::event::PlanChanged;
use keyledger_domain::{Actor, Event, OrgId, Plan, Role, StreamId, StreamVersion};
use keyledger_postgres::PostgresOptions;
use keyledger_projection::{Projection, ProjectionSink};
use keyledger_server::dev::{DemoVault, demo_tokens};
use keyledger_server::{ServerConfig, Services, Tokens};
use keyledger_store::envelope::{EnvelopeActor, EventMetadata, truncate_to_micros};
use keyledger_store::{EventStore, KeyRing, NewEvent};
use serde::Deserialize;
use serde_json::json;
use sqlx::Connection as _;
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    /// `sqlite` or a PostgreSQL URL naming the admin database.
    store: String,
    seconds: u64,
    warmup: u64,
    clients: usize,
    orgs: usize,
    sse_events: u64,
    lag_rate: u32,
    lag_seconds: u64,
    /// PostgreSQL: `store.max_connections` (the pool `serve` opens).
    max_connections: u32,
    /// Diagnostic: serve without the projection runners and the health monitor, to see what
    /// they cost the request path. Not how `keyledger serve` runs.
    no_background: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        store: "sqlite".into(),
        seconds: 10,
        warmup: 2,
        clients: 32,
        orgs: 256,
        sse_events: 100_000,
        lag_rate: 500,
        lag_seconds: 5,
        max_connections: PostgresOptions::default().max_connections,
        no_background: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String, f: &str| v.parse::<u64>().map_err(|e| format!("{f}: {e}"));
        match flag.as_str() {
            "--store" => a.store = value()?,
            "--seconds" => a.seconds = num(value()?, &flag)?,
            "--warmup" => a.warmup = num(value()?, &flag)?,
            "--clients" => a.clients = num(value()?, &flag)? as usize,
            "--orgs" => a.orgs = num(value()?, &flag)? as usize,
            "--sse-events" => a.sse_events = num(value()?, &flag)?,
            "--lag-rate" => a.lag_rate = num(value()?, &flag)? as u32,
            "--lag-seconds" => a.lag_seconds = num(value()?, &flag)?,
            "--max-connections" => a.max_connections = num(value()?, &flag)? as u32,
            "--no-background" => a.no_background = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(a.store == "sqlite" || a.store.starts_with("postgres://") || a.store.starts_with("postgresql://")) {
        return Err(format!(
            "--store: expected sqlite or a postgres:// URL, got {}",
            a.store
        ));
    }
    if a.clients == 0 || a.orgs < a.clients || a.lag_rate == 0 || a.max_connections == 0 {
        return Err(
            "--clients must be ≥ 1, --orgs ≥ --clients, --lag-rate ≥ 1, --max-connections ≥ 1".into(),
        );
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// The service, in process

/// The running service and what the tool needs from it.
struct Server {
    addr: SocketAddr,
    platform_token: String,
    billing_token: String,
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    stop_http: oneshot::Sender<()>,
    stop_background: watch::Sender<bool>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Wires the service as `keyledger serve` does and starts it on 127.0.0.1:0. Call on the server
/// runtime: the store's writer task and the background work are spawned there.
async fn start(backend: Backend, background_work: bool) -> Server {
    let Backend {
        store,
        sink,
        postgres,
        ..
    } = backend;
    let vault = DemoVault::new();
    let grants = demo_tokens();
    let token = |role: Role| {
        grants
            .iter()
            .find(|g| g.roles.contains(&role))
            .map(|g| g.token.clone())
            .expect("demo_tokens has one token per role")
    };
    let (platform_token, billing_token) = (token(Role::Platform), token(Role::Billing));
    let services = Services::new(
        store.clone(),
        sink.clone(),
        vault.key_access(),
        HealthConfig::default(),
        Tokens::new(&grants),
    );
    let monitor = services.monitor.clone();
    let (stop_background, stopping) = watch::channel(false);
    let mut background = Vec::new();
    if background_work {
        background = match &postgres {
            // As `serve` on PostgreSQL: each runner folds while it holds its projection's lease.
            Some((url, pg_sink)) => keyledger_server::background::led_projection_runners(
                url,
                store.clone(),
                pg_sink.clone(),
                stopping.clone(),
            ),
            None => keyledger_server::background::projection_runners(
                store.clone(),
                sink.clone(),
                stopping.clone(),
            ),
        };
        background.push(keyledger_server::background::health_monitor(
            monitor.clone(),
            store.clone(),
            stopping,
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop_http, stop) = oneshot::channel::<()>();
    let http = tokio::spawn(keyledger_server::run(
        listener,
        services,
        ServerConfig::default(),
        async move {
            let _ = stop.await;
        },
    ));
    Server {
        addr,
        platform_token,
        billing_token,
        store,
        sink,
        stop_http,
        stop_background,
        http,
        background,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop_http.send(());
        let _ = self.stop_background.send(true);
        match self.http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("http-bench: server ended with {e}"),
            Err(e) => eprintln!("http-bench: server task failed: {e}"),
        }
        for h in self.background {
            let _ = h.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    platform: String,
    billing: String,
}

fn plan_body(premium: bool, reason: &str) -> Vec<u8> {
    let tier = if premium { "premium" } else { "standard" };
    json!({"plan": {"kind": "enterprise", "tier": tier}, "reason": reason})
        .to_string()
        .into_bytes()
}

impl Api {
    fn new(addr: SocketAddr, platform: String, billing: String) -> Self {
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        Self {
            client,
            base: format!("http://{addr}"),
            platform,
            billing,
        }
    }

    /// Registers an enterprise-standard organization with one tenant.
    async fn register(&self, org: Uuid) -> Result<(), String> {
        let body = json!({
            "org_id": org,
            "name": "Bench",
            "plan": {"kind": "enterprise", "tier": "standard"},
            "tenants": [{"tenant_id": Uuid::now_v7(), "name": "T"}],
        });
        let r = self
            .client
            .post(format!("{}/v1/organizations", self.base))
            .bearer_auth(&self.platform)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| e.to_string())?;
        if status.as_u16() == 201 {
            Ok(())
        } else {
            Err(format!("register {org}: {status} {text}"))
        }
    }

    /// One plan change; the status once the body has been read (0 for a transport error).
    async fn change_plan(&self, org: Uuid, premium: bool, reason: &str) -> u16 {
        let sent = self
            .client
            .put(format!("{}/v1/organizations/{org}/plan", self.base))
            .bearer_auth(&self.billing)
            .header("content-type", "application/json")
            .body(plan_body(premium, reason))
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

    /// A page of `GET /v1/events`: the positions and `next_after`.
    async fn events_page(&self, after: u64, limit: u32) -> Result<(Vec<u64>, u64), String> {
        #[derive(Deserialize)]
        struct Page {
            events: Vec<PageEvent>,
            next_after: u64,
        }
        #[derive(Deserialize)]
        struct PageEvent {
            sequence: String,
        }
        let r = self
            .client
            .get(format!("{}/v1/events?after={after}&limit={limit}", self.base))
            .bearer_auth(&self.platform)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        if status.as_u16() != 200 {
            return Err(format!("GET /v1/events: {status}"));
        }
        let page: Page = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let positions = page
            .events
            .iter()
            .map(|e| {
                e.sequence
                    .parse()
                    .map_err(|_| format!("bad sequence {}", e.sequence))
            })
            .collect::<Result<_, _>>()?;
        Ok((positions, page.next_after))
    }

    /// The position of the last event and how many events follow `after`, paging. Positions
    /// need not be dense (PostgreSQL's are not), so sizes are counted, never derived.
    async fn scan(&self, mut after: u64) -> Result<(u64, u64), String> {
        let mut count = 0u64;
        loop {
            let (positions, next) = self.events_page(after, 1000).await?;
            if positions.is_empty() {
                return Ok((after, count));
            }
            count += positions.len() as u64;
            after = next;
        }
    }

    /// Opens the SSE stream after `after`.
    async fn stream(&self, after: u64) -> Result<reqwest::Response, String> {
        let r = self
            .client
            .get(format!("{}/v1/events/stream?after={after}", self.base))
            .bearer_auth(&self.platform)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().as_u16() != 200 {
            return Err(format!("GET /v1/events/stream: {}", r.status()));
        }
        Ok(r)
    }
}

/// One SSE message: its `id` and its `data` (CloudEvent JSON).
#[derive(Debug)]
struct SseMessage {
    id: Option<u64>,
    data: String,
}

/// An incremental `text/event-stream` parser (lines end with LF, CRLF or CR-free LF).
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    id: Option<u64>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds a chunk; calls `on` for every complete message.
    fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(SseMessage)) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.line.is_empty() {
                self.process(head, &mut on);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.process(&line, &mut on);
            }
        }
        self.line.extend_from_slice(rest);
    }

    fn process(&mut self, line: &[u8], on: &mut impl FnMut(SseMessage)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                on(SseMessage {
                    id: self.id.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return; // a comment: the heartbeat
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => self.id = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                match std::str::from_utf8(value) {
                    Ok(v) => self.data.push_str(v),
                    Err(_) => self.data.push_str(&String::from_utf8_lossy(value)),
                }
                self.has_data = true;
            }
            _ => {}
        }
    }
}

/// The parts of a CloudEvent the consumer looks at; the rest is skipped, not built.
#[derive(Deserialize)]
struct CloudEvent {
    sequence: String,
    #[serde(rename = "type")]
    kind: String,
    data: CloudEventData,
}

/// A plan change's `reason` (the lag phase's tag); other payloads have none.
#[derive(Deserialize)]
struct CloudEventData {
    #[serde(default)]
    reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort_unstable();
    let pct = |p: f64| {
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied().unwrap_or_default()
    };
    Summary {
        n: v.len(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: v.last().copied().unwrap_or_default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Default)]
struct PlanFigures {
    latency: Summary,
    per_second: f64,
    non_200: BTreeMap<u16, u64>,
}

#[derive(Debug, Default)]
struct SseFigures {
    events: u64,
    seconds: f64,
    per_second: f64,
    /// Body chunks the client read: how many events the server hands over per write.
    chunks: u64,
    increasing: bool,
    matches_page: bool,
}

#[derive(Debug, Default)]
struct LagFigures {
    sent: usize,
    lag: Summary,
    /// The plan changes' own latency at this rate (sent → response read): the part of the lag
    /// before the event is committed and acknowledged.
    request: Summary,
    missing: usize,
    non_200: BTreeMap<u16, u64>,
}

// ---------------------------------------------------------------------------------------------
// 1. Plan changes

/// Closed-loop clients for `warmup` + `seconds`; client `c` owns the organizations `i` with
/// `i % clients == c`, so requests never race for a stream, and flips each one's plan between
/// enterprise standard and premium: every request is a real change that appends one event.
/// Returns the figures and each organization's plan afterwards (`true` = premium).
async fn plan_changes(api: &Api, orgs: &[Uuid], args: &Args) -> (PlanFigures, Vec<bool>) {
    let start = Instant::now();
    let measured_from = start + Duration::from_secs(args.warmup);
    let end = measured_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let api = api.clone();
        let mine: Vec<(usize, Uuid)> = orgs
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % args.clients == c)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut premium = vec![false; mine.len()];
            let mut lat = Vec::with_capacity(8192);
            let mut non_200: BTreeMap<u16, u64> = BTreeMap::new();
            let mut k = 0usize;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let j = k % mine.len();
                k += 1;
                let want = !premium[j];
                let status = api.change_plan(mine[j].1, want, "bench").await;
                let took = t0.elapsed();
                if status == 200 {
                    premium[j] = want;
                }
                if t0 >= measured_from {
                    lat.push(took);
                    if status != 200 {
                        *non_200.entry(status).or_default() += 1;
                    }
                }
            }
            let finals: Vec<(usize, bool)> = mine.iter().map(|(i, _)| *i).zip(premium).collect();
            (lat, non_200, finals)
        }));
    }
    let mut all = Vec::new();
    let mut non_200 = BTreeMap::new();
    let mut finals = vec![false; orgs.len()];
    for t in tasks {
        let (lat, n, f) = t.await.expect("client task");
        all.extend(lat);
        for (status, count) in n {
            *non_200.entry(status).or_default() += count;
        }
        for (i, p) in f {
            finals[i] = p;
        }
    }
    let elapsed = measured_from.elapsed().as_secs_f64();
    let latency = summarize(all);
    (
        PlanFigures {
            per_second: latency.n as f64 / elapsed,
            latency,
            non_200,
        },
        finals,
    )
}

// ---------------------------------------------------------------------------------------------
// 2. Filling the log and the SSE delivery rate

/// Appends plan changes straight to the store (as the command handler would, `from` matching
/// the stream's current plan) on `filler` organizations registered over HTTP, until the log
/// holds `need` more events. Runs on the server runtime, 4 streams at a time (group commit).
async fn fill(store: Arc<dyn EventStore>, filler: Vec<Uuid>, need: u64) -> u64 {
    const PER_APPEND: u64 = 500;
    let per_org = need.div_ceil(filler.len().max(1) as u64);
    let actor = EnvelopeActor::from_actor(
        &Actor::new(
            keyledger_domain::ActorKind::Service,
            "http-bench",
            [Role::Billing],
            keyledger_domain::Scope::everything(),
        ),
        None,
    );
    let mut tasks = tokio::task::JoinSet::new();
    let mut appended = 0u64;
    for (i, org) in filler.into_iter().enumerate() {
        if i >= 4 {
            appended += tasks.join_next().await.map_or(0, |r| r.expect("fill task"));
        }
        let store = store.clone();
        let actor = actor.clone();
        tasks.spawn(async move {
            let org = OrgId::from_uuid(org).expect("a v7 id is not nil");
            // Registration appended two events: OrganizationRegistered, DataKeyGenerated.
            let mut version = 2u64;
            let mut premium = false;
            let mut done = 0u64;
            while done < per_org {
                let n = PER_APPEND.min(per_org - done);
                let batch: Vec<NewEvent> = (0..n)
                    .map(|_| {
                        let (from, to) = if premium {
                            (Plan::enterprise("premium"), Plan::enterprise("standard"))
                        } else {
                            (Plan::enterprise("standard"), Plan::enterprise("premium"))
                        };
                        premium = !premium;
                        NewEvent {
                            event: Event::PlanChanged(PlanChanged {
                                from,
                                to,
                                reason: "fill".into(),
                            }),
                            metadata: EventMetadata {
                                occurred_at: truncate_to_micros(Utc::now()),
                                actor: actor.clone(),
                                correlation_id: None,
                                causation_id: None,
                            },
                        }
                    })
                    .collect();
                store
                    .append(StreamId::for_org(org), StreamVersion(version), batch, None)
                    .await
                    .expect("append filler events");
                version += n;
                done += n;
            }
            done
        });
    }
    while let Some(r) = tasks.join_next().await {
        appended += r.expect("fill task");
    }
    appended
}

/// Waits until every projection has folded the log up to `head`; how long that took.
async fn projections_caught_up(sink: Arc<dyn ProjectionSink>, head: u64) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let mut behind = false;
        for p in Projection::ALL {
            let at = sink.checkpoint(p).await.map_err(|e| e.to_string())?;
            behind |= at < head;
        }
        if !behind {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!("projections still behind {head} after 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One consumer from `after=0` until `count` events: the rate, and the positions checked
/// against `GET /v1/events`.
async fn sse_rate(api: &Api, count: u64) -> Result<SseFigures, String> {
    let start = Instant::now();
    let mut response = api.stream(0).await?;
    let mut parser = SseParser::default();
    let mut positions: Vec<u64> = Vec::with_capacity(count as usize);
    let mut bad: Option<String> = None;
    let mut chunks = 0u64;
    let mut progress = (0usize, Instant::now());
    while (positions.len() as u64) < count {
        // Heartbeats are chunks too: give up after 30 s without a new event.
        if positions.len() > progress.0 {
            progress = (positions.len(), Instant::now());
        } else if progress.1.elapsed() > Duration::from_secs(30) {
            return Err(format!("no event for 30 s after {} events", positions.len()));
        }
        let chunk = match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return Err(format!("stream ended after {} events", positions.len())),
            Ok(Err(e)) => return Err(format!("stream failed after {} events: {e}", positions.len())),
            Err(_) => return Err(format!("no data for 30 s after {} events", positions.len())),
        };
        chunks += 1;
        parser.feed(&chunk, |m| {
            // Parse what a consumer would: the id and the CloudEvent; they must agree.
            match serde_json::from_str::<CloudEvent>(&m.data) {
                Ok(ce) if m.id.is_some() && ce.sequence.parse().ok() == m.id && !ce.kind.is_empty() => {
                    positions.push(m.id.unwrap_or_default());
                }
                Ok(ce) => {
                    bad.get_or_insert(format!("id {:?} but sequence {}", m.id, ce.sequence));
                }
                Err(e) => {
                    bad.get_or_insert(format!("undecodable data at id {:?}: {e}", m.id));
                }
            }
        });
        if let Some(b) = bad.take() {
            return Err(b);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(response);
    positions.truncate(count as usize);
    let increasing = positions.windows(2).all(|w| w[0] < w[1]);
    // The same positions, in the same order, as the pages of GET /v1/events.
    let mut paged = Vec::with_capacity(count as usize);
    let mut after = 0;
    while (paged.len() as u64) < count {
        let (p, next) = api.events_page(after, 1000).await?;
        if p.is_empty() {
            break;
        }
        paged.extend(p);
        after = next;
    }
    paged.truncate(count as usize);
    Ok(SseFigures {
        events: positions.len() as u64,
        seconds,
        per_second: positions.len() as f64 / seconds,
        chunks,
        increasing,
        matches_page: paged == positions,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Lag from append to SSE delivery

/// A consumer tails the stream from `head` while plan changes go out at `rate`/s for `seconds`;
/// each request's reason is `lag-<n>`, which the consumer finds in the CloudEvent's data.
async fn lag(
    api: &Api,
    orgs: &[Uuid],
    premium: &mut [bool],
    head: u64,
    args: &Args,
) -> Result<LagFigures, String> {
    let total = args.lag_rate as usize * args.lag_seconds as usize;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let mut response = api.stream(head).await?;
    let deadline = Duration::from_secs(args.lag_seconds + 30);
    let consumer = tokio::spawn(async move {
        let mut received: Vec<Option<Instant>> = vec![None; total];
        let mut got = 0usize;
        let mut parser = SseParser::default();
        let start = Instant::now();
        while got < total && start.elapsed() < deadline {
            let chunk = match tokio::time::timeout(Duration::from_secs(1), response.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None) | Err(_)) => break,
                Err(_) => continue,
            };
            parser.feed(&chunk, |m| {
                let Ok(ce) = serde_json::from_str::<CloudEvent>(&m.data) else {
                    return;
                };
                let n = ce
                    .data
                    .reason
                    .as_deref()
                    .and_then(|r| r.strip_prefix("lag-"))
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some(n) = n
                    && n < total
                    && received[n].is_none()
                {
                    received[n] = Some(Instant::now());
                    got += 1;
                }
            });
        }
        received
    });
    // Let the stream reach the live tail before the writer starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The m-th request to an organization asks for the opposite of its plan after m requests,
    // so each is a change even if two requests to one organization overlap.
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.lag_rate));
    let mut writers = Vec::with_capacity(total);
    for n in 0..total {
        tokio::time::sleep_until((start + interval * n as u32).into()).await;
        let k = n % orgs.len();
        let m = n / orgs.len();
        let want = premium[k] ^ m.is_multiple_of(2);
        let (api, org, sent) = (api.clone(), orgs[k], sent.clone());
        writers.push(tokio::spawn(async move {
            let t0 = Instant::now();
            sent.lock().expect("not poisoned")[n] = Some(t0);
            let status = api.change_plan(org, want, &format!("lag-{n}")).await;
            (status, t0.elapsed())
        }));
    }
    let mut non_200: BTreeMap<u16, u64> = BTreeMap::new();
    let mut request = Vec::with_capacity(total);
    for w in writers {
        let (status, took) = w.await.expect("writer task");
        request.push(took);
        if status != 200 {
            *non_200.entry(status).or_default() += 1;
        }
    }
    // Each organization got ⌈…⌉ requests; its plan is flipped once per request.
    for (k, p) in premium.iter_mut().enumerate() {
        let requests = total / orgs.len() + usize::from(k < total % orgs.len());
        *p ^= requests % 2 == 1;
    }
    let received = consumer.await.expect("consumer task");
    let sent = sent.lock().expect("not poisoned").clone();
    let mut lags = Vec::with_capacity(total);
    let mut missing = 0usize;
    for (s, r) in sent.iter().zip(&received) {
        match (s, r) {
            (Some(s), Some(r)) => lags.push(r.saturating_duration_since(*s)),
            _ => missing += 1,
        }
    }
    Ok(LagFigures {
        sent: total,
        lag: summarize(lags),
        request: summarize(request),
        missing,
        non_200,
    })
}

// ---------------------------------------------------------------------------------------------
// The run

struct Backend {
    name: &'static str,
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    /// PostgreSQL: the scratch database (for the projection leases) and the sink the leases
    /// fence.
    postgres: Option<(String, keyledger_postgres::PgProjections)>,
}

/// A scratch PostgreSQL database, dropped by [`drop_scratch`].
struct Scratch {
    admin_url: String,
    name: String,
}

async fn open_backend(args: &Args, dir: &std::path::Path) -> Result<(Backend, Option<Scratch>), String> {
    if args.store == "sqlite" {
        let store =
            keyledger_sqlite::SqliteStore::open(&dir.join("http-bench.db"), Arc::new(KeyRing::generate()))
                .await
                .map_err(|e| e.to_string())?;
        let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
        return Ok((
            Backend {
                name: "sqlite",
                store: Arc::new(store),
                sink,
                postgres: None,
            },
            None,
        ));
    }
    let name = format!("http_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&args.store)
        .await
        .map_err(|e| format!("PostgreSQL at --store (URL not shown: it may hold a password): {e}"))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await.ok();
    let url = match args.store.rsplit_once('/') {
        Some((root, _)) => format!("{root}/{name}"),
        None => return Err("--store: the URL names no database".into()),
    };
    let options = PostgresOptions {
        max_connections: args.max_connections,
        ..PostgresOptions::default()
    };
    let store = keyledger_postgres::PostgresStore::connect_with(&url, Arc::new(KeyRing::generate()), options)
        .await
        .map_err(|e| e.to_string())?;
    let pg_sink = keyledger_postgres::PgProjections::new(&store);
    Ok((
        Backend {
            name: "postgres",
            store: Arc::new(store),
            sink: Arc::new(pg_sink.clone()),
            postgres: Some((url, pg_sink)),
        },
        Some(Scratch {
            admin_url: args.store.clone(),
            name,
        }),
    ))
}

async fn drop_scratch(s: Scratch) {
    match sqlx::PgConnection::connect(&s.admin_url).await {
        Ok(mut admin) => {
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", s.name))
                .execute(&mut admin)
                .await
            {
                eprintln!("http-bench: dropping {}: {e}", s.name);
            }
        }
        Err(e) => eprintln!("http-bench: dropping {}: {e}", s.name),
    }
}

struct Figures {
    plan: PlanFigures,
    sse: SseFigures,
    lag: LagFigures,
}

/// The three measurements against a running server. Filling the log runs on `server_rt`.
async fn bench(server_rt: &Runtime, server: &Server, name: &str, args: &Args) -> Result<Figures, String> {
    let api = Api::new(
        server.addr,
        server.platform_token.clone(),
        server.billing_token.clone(),
    );
    println!("{name:8} server listening on http://{}", server.addr);

    // Setup: the organizations, over HTTP.
    let t = Instant::now();
    let orgs: Vec<Uuid> = (0..args.orgs).map(|_| Uuid::now_v7()).collect();
    register_all(&api, &orgs, args.clients).await?;
    println!(
        "{name:8} registered {} organizations over HTTP in {:.2} s",
        orgs.len(),
        t.elapsed().as_secs_f64()
    );

    // 1. Plan changes.
    let (plan, mut premium) = plan_changes(&api, &orgs, args).await;
    println!(
        "{name:8} plan change, {} clients, {} s (after {} s warm-up): {} requests, {:.0} req/s, \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-200 {:?}",
        args.clients,
        args.seconds,
        args.warmup,
        plan.latency.n,
        plan.per_second,
        ms(plan.latency.p50),
        ms(plan.latency.p99),
        ms(plan.latency.max),
        plan.non_200,
    );

    // 2. The SSE rate over `sse_events` events.
    let (head, events) = api.scan(0).await?;
    let mut head = head;
    if events < args.sse_events {
        let need = args.sse_events - events;
        let filler: Vec<Uuid> = (0..need.div_ceil(10_000).max(1))
            .map(|_| Uuid::now_v7())
            .collect();
        register_all(&api, &filler, args.clients).await?;
        let t = Instant::now();
        let appended = server_rt
            .spawn(fill(server.store.clone(), filler, need))
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "{name:8} filled the log with {appended} plan changes straight through the store in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        head = api.scan(head).await?.0;
    }
    let caught_up = if args.no_background {
        Duration::ZERO
    } else {
        server_rt
            .spawn(projections_caught_up(server.sink.clone(), head))
            .await
            .map_err(|e| e.to_string())??
    };
    println!(
        "{name:8} log head at position {head} (positions need not be dense); projections caught up {:.1} s later",
        caught_up.as_secs_f64()
    );
    let sse = sse_rate(&api, args.sse_events).await?;
    println!(
        "{name:8} SSE from after=0: {} events in {:.2} s, {:.0} events/s, {} body chunks ({:.1} events \
         each); strictly increasing: {}; same positions as GET /v1/events: {}",
        sse.events,
        sse.seconds,
        sse.per_second,
        sse.chunks,
        sse.events as f64 / sse.chunks.max(1) as f64,
        sse.increasing,
        sse.matches_page
    );

    // 3. The lag.
    let head = api.scan(head).await?.0;
    let lag = lag(&api, &orgs, &mut premium, head, args).await?;
    println!(
        "{name:8} lag append→SSE at {}/s for {} s: {} sent, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
         missing {}, non-200 {:?}; the requests themselves: p50 {:.2} ms, p99 {:.2} ms",
        args.lag_rate,
        args.lag_seconds,
        lag.sent,
        ms(lag.lag.p50),
        ms(lag.lag.p99),
        ms(lag.lag.max),
        lag.missing,
        lag.non_200,
        ms(lag.request.p50),
        ms(lag.request.p99),
    );
    Ok(Figures { plan, sse, lag })
}

/// Registers `orgs` over HTTP, `clients` at a time.
async fn register_all(api: &Api, orgs: &[Uuid], clients: usize) -> Result<(), String> {
    for chunk in orgs.chunks(clients) {
        let mut tasks = Vec::new();
        for org in chunk {
            let (api, org) = (api.clone(), *org);
            tasks.push(tokio::spawn(async move { api.register(org).await }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
    }
    Ok(())
}

fn report(name: &str, args: &Args, f: &Figures) {
    let plan_ratio = f.plan.per_second / 2000.0;
    let p99_ratio = ms(f.plan.latency.p99) / 50.0;
    let sse_ratio = f.sse.per_second / 50_000.0;
    let lag_ratio = ms(f.lag.lag.p99) / 100.0;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!("http-bench summary ({name}; 2 shared cores — compare within a run)");
    println!("| figure | measured | target | ratio | |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| plan changes, {} clients | {:.0} req/s | ≥ 2000 req/s | {:.2}× | {} |",
        args.clients,
        f.plan.per_second,
        plan_ratio,
        verdict(plan_ratio >= 1.0)
    );
    println!(
        "| plan change p50 / p99 / max | {:.2} / {:.2} / {:.2} ms | p99 ≤ 50 ms | {:.2} of budget | {} |",
        ms(f.plan.latency.p50),
        ms(f.plan.latency.p99),
        ms(f.plan.latency.max),
        p99_ratio,
        verdict(p99_ratio <= 1.0)
    );
    println!(
        "| SSE delivery, one consumer, {} events | {:.0} events/s | ≥ 50000 events/s | {:.2}× | {} |",
        f.sse.events,
        f.sse.per_second,
        sse_ratio,
        verdict(sse_ratio >= 1.0 && f.sse.increasing && f.sse.matches_page)
    );
    println!(
        "| append→SSE lag p50 / p99 / max at {}/s | {:.2} / {:.2} / {:.2} ms | p99 ≤ 100 ms | {:.2} of budget | {} |",
        args.lag_rate,
        ms(f.lag.lag.p50),
        ms(f.lag.lag.p99),
        ms(f.lag.lag.max),
        lag_ratio,
        verdict(lag_ratio <= 1.0 && f.lag.missing == 0)
    );
    let counts = |m: &BTreeMap<u16, u64>| {
        m.iter()
            .map(|(k, v)| {
                (
                    if *k == 0 {
                        "transport".to_owned()
                    } else {
                        k.to_string()
                    },
                    *v,
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let line = json!({
        "tool": "http-bench",
        "store": name,
        "max_connections": if name == "postgres" { Some(args.max_connections) } else { None },
        "plan_change": {
            "clients": args.clients,
            "seconds": args.seconds,
            "requests": f.plan.latency.n,
            "per_second": f.plan.per_second.round(),
            "p50_ms": round2(ms(f.plan.latency.p50)),
            "p99_ms": round2(ms(f.plan.latency.p99)),
            "max_ms": round2(ms(f.plan.latency.max)),
            "non_200": counts(&f.plan.non_200),
            "throughput_vs_target": round2(plan_ratio),
            "p99_vs_target": round2(p99_ratio),
        },
        "sse": {
            "events": f.sse.events,
            "seconds": round2(f.sse.seconds),
            "per_second": f.sse.per_second.round(),
            "chunks": f.sse.chunks,
            "strictly_increasing": f.sse.increasing,
            "matches_events_page": f.sse.matches_page,
            "vs_target": round2(sse_ratio),
        },
        "lag": {
            "rate": args.lag_rate,
            "seconds": args.lag_seconds,
            "sent": f.lag.sent,
            "missing": f.lag.missing,
            "p50_ms": round2(ms(f.lag.lag.p50)),
            "p99_ms": round2(ms(f.lag.lag.p99)),
            "max_ms": round2(ms(f.lag.lag.max)),
            "non_200": counts(&f.lag.non_200),
            "request_p50_ms": round2(ms(f.lag.request.p50)),
            "request_p99_ms": round2(ms(f.lag.request.p99)),
            "p99_vs_target": round2(lag_ratio),
        },
    });
    println!();
    println!("{line}");
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("http-bench: {e}");
            std::process::exit(2);
        }
    };
    // Server warnings and errors (e.g. a 5xx) go to stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    println!("http-bench: {args:?}");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("client")
        .enable_all()
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let (backend, scratch) = match server_rt.block_on(open_backend(&args, dir.path())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("http-bench: {e}");
            std::process::exit(1);
        }
    };
    let name = backend.name;
    let server = server_rt.block_on(start(backend, !args.no_background));
    let figures = client_rt.block_on(bench(&server_rt, &server, name, &args));
    server_rt.block_on(server.stop());
    if let Some(s) = scratch {
        server_rt.block_on(drop_scratch(s));
    }
    match figures {
        Ok(f) => report(name, &args, &f),
        Err(e) => {
            eprintln!("http-bench: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(chunks: &[&[u8]]) -> Vec<(Option<u64>, String)> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |m| out.push((m.id, m.data)));
        }
        out
    }

    #[test]
    fn sse_messages_split_across_chunks() {
        let got = messages(&[
            b"id: 1\nevent: PlanChanged\nda",
            b"ta: {\"a\":1}\n\n:heartbeat\n\nid: 2\r\ndata: x\r\n",
            b"\r\n",
        ]);
        assert_eq!(got, vec![(Some(1), "{\"a\":1}".into()), (Some(2), "x".into())]);
    }

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
