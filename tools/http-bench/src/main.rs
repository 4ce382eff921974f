//! HTTP load tool: drives what `keyledger serve` ships. It starts the `keyledger` binary
//! (`--keyledger-bin`, by default the one next to this tool in cargo's target directory) as a
//! child process with a generated configuration file (simulated vault, configured tokens, the
//! store under test), waits for its `listening on` line, and drives it over loopback sockets
//! with `reqwest` (HTTP/1.1 keep-alive). Nothing is wired by hand: every figure is of the
//! service with its own configuration. One run measures:
//!
//! 1. plan changes (`PUT /v1/organizations/{org}/plan`, billing token) from closed-loop clients
//!    for a fixed time: requests/s, p50, p99, max, and every non-200 counted;
//! 2. the SSE delivery rate to one consumer reading `GET /v1/events/stream?after=0` over
//!    `--sse-events` events, checked against the positions of `GET /v1/events`. The log is
//!    filled first with more plan changes over HTTP (the serve process holds the SQLite writer
//!    lock, so HTTP is the only honest way in);
//! 3. the lag from append to SSE delivery: one consumer tails the live stream while plan
//!    changes are issued at a steady rate; lag = when the consumer has parsed the event − just
//!    before the request was sent, matched by the request's unique `reason`;
//! 4. the CPU the serve process spends on idle SSE streams: N streams connected at the head,
//!    nothing appended, utime + stime of the process from `/proc/<pid>/stat` over a window,
//!    for each N of `--idle-streams`;
//! 5. the lag again (as 3) with the largest N of those streams connected and reading.
//!
//! ```sh
//! cargo build --release -p keyledger-cli -p http-bench
//! target/release/http-bench [--keyledger-bin PATH] [--store sqlite|postgres://root@127.0.0.1:5432/postgres]
//!     [--seconds 10] [--warmup 2] [--clients 32] [--orgs 256] [--sse-events 100000]
//!     [--lag-rate 500] [--lag-seconds 5] [--max-connections 16]
//!     [--idle-streams 0,200,1000] [--idle-seconds 10]
//! ```
//!
//! SQLite lives in a temporary directory. With a PostgreSQL URL the tool creates a scratch
//! database `http_bench_<pid>` next to the one named and drops it afterwards. The serve
//! process's stderr goes to `serve.log` in the temporary directory and is echoed on failure.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench_figures::{Summary, ms, round2, summarize};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use sqlx::Connection as _;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Arguments

/// Load tool for `keyledger serve`: plan changes, SSE rate and lag, idle-stream CPU.
#[derive(Debug, Clone, Parser)]
#[command(name = "http-bench")]
struct Args {
    /// The `keyledger` binary to run (default: `keyledger` next to this tool).
    #[arg(long)]
    keyledger_bin: Option<PathBuf>,
    /// `sqlite` or a PostgreSQL URL naming the admin database.
    #[arg(long, default_value = "sqlite", value_parser = parse_store)]
    store: String,
    /// Measured seconds of plan changes.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds before the plan changes are measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Closed-loop plan-change clients.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Organizations registered (at least `--clients`).
    #[arg(long, default_value_t = 256)]
    orgs: usize,
    /// Events the SSE consumer reads from `after=0`.
    #[arg(long, default_value_t = 100_000)]
    sse_events: u64,
    /// Plan changes per second during the lag phases.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    lag_rate: u32,
    /// Seconds of each lag phase.
    #[arg(long, default_value_t = 5)]
    lag_seconds: u64,
    /// PostgreSQL: `store.max_connections` in the generated configuration.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Numbers of idle SSE streams whose CPU is measured (the largest is kept for the second lag).
    #[arg(long, value_delimiter = ',', default_value = "0,200,1000")]
    idle_streams: Vec<usize>,
    /// The window over which idle CPU is measured, in seconds.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// serve's `audit.checkpoint_interval` (its default: 1m).
    #[arg(long, default_value = "1m")]
    checkpoint_interval: String,
    /// Instead of the full run: this many rounds of the plan-change window on a fresh store with
    /// the checkpointer effectively off (`audit.checkpoint_interval = "24h"`) and then on
    /// (`--checkpoint-interval`), and the ratio of their request rates per round.
    #[arg(long, default_value_t = 0)]
    checkpointer_rounds: u32,
    /// Instead of the full run: one organization with this many events (plan changes over
    /// HTTP), then `--proofs` inclusion proofs of random versions through
    /// `GET …/audit/proof`, timed one after another.
    #[arg(long, default_value_t = 0)]
    proof_events: u64,
    /// Inclusion proofs timed with `--proof-events`.
    #[arg(long, default_value_t = 5000)]
    proofs: usize,
}

fn parse_store(s: &str) -> Result<String, String> {
    if s == "sqlite" || s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_owned())
    } else {
        Err(format!("expected sqlite or a postgres:// URL, got {s}"))
    }
}

impl Args {
    fn clients(&self) -> usize {
        usize::try_from(self.clients).unwrap_or(usize::MAX)
    }

    fn binary(&self) -> Result<PathBuf, String> {
        if let Some(p) = &self.keyledger_bin {
            return Ok(p.clone());
        }
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        Ok(me.with_file_name("keyledger"))
    }
}

// ---------------------------------------------------------------------------------------------
// The service, as a process

const PLATFORM_TOKEN: &str = "http-bench-platform-token-0123456789abcdef";
const BILLING_TOKEN: &str = "http-bench-billing-token-0123456789abcdef";
const AUDITOR_TOKEN: &str = "http-bench-auditor-token-0123456789abcdef";

/// A running `keyledger serve`; killed when dropped.
struct Serve {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Serve {
    /// Writes the configuration into `dir` and starts `bin serve --config` on it.
    fn start(
        bin: &Path,
        dir: &Path,
        store_url: &str,
        args: &Args,
        checkpoint_interval: &str,
    ) -> Result<Self, String> {
        let max_streams = args.idle_streams.iter().copied().max().unwrap_or(0) + 16;
        let config = dir.join("keyledger.toml");
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_streams = {max_streams}\n\n\
             [store]\nurl = \"{store_url}\"\n{}\n\
             [keys]\ninternal_key_file = \"{}\"\nvault = \"simulated\"\n\n\
             [audit]\nsigning_key_file = \"{}\"\ncheckpoint_interval = \"{checkpoint_interval}\"\n",
            if store_url.starts_with("sqlite") {
                String::new()
            } else {
                format!("max_connections = {}\n", args.max_connections)
            },
            dir.join("internal-keys.json").display(),
            dir.join("audit-signing-key").display(),
        );
        for (token, role) in [
            (PLATFORM_TOKEN, "platform"),
            (BILLING_TOKEN, "billing"),
            (AUDITOR_TOKEN, "auditor"),
        ] {
            text.push_str(&format!(
                "\n[[auth.tokens]]\ntoken = \"{token}\"\nsubject = \"{role}@bench.example\"\nroles = [\"{role}\"]\n"
            ));
        }
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
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("serve has no stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let mut serve = Self {
            child,
            base: String::new(),
            log,
        };
        match line.trim_end().strip_prefix("listening on ") {
            Some(base) => {
                serve.base = base.to_owned();
                Ok(serve)
            }
            None => Err(format!("serve printed {line:?}; its log:\n{}", serve.log_text())),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 30 s, then SIGKILL).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                if !status.success() {
                    eprintln!(
                        "http-bench: serve ended with {status}; its log:\n{}",
                        self.log_text()
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("http-bench: serve did not stop within 30 s of SIGTERM; killed");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds (user + system) the process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces, so split after its ')'): state is
    // field 3, utime 14 and stime 15 (proc(5)).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or_else(|| format!("bad /proc stat field {}", i + 3))
    };
    Ok((tick(11)? + tick(12)?) / ticks_per_second)
}

/// `getconf CLK_TCK` (the unit of `/proc/<pid>/stat` times).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
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
    fn new(base: String, platform: String, billing: String) -> Self {
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        Self {
            client,
            base,
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

    /// How many events of CloudEvent type `kind` the log holds after `after`.
    async fn scan_type(&self, mut after: u64, kind: &str) -> Result<u64, String> {
        #[derive(Deserialize)]
        struct Page {
            events: Vec<TypedEvent>,
            next_after: u64,
        }
        #[derive(Deserialize)]
        struct TypedEvent {
            #[serde(rename = "type")]
            kind: String,
        }
        let mut count = 0;
        loop {
            let r = self
                .client
                .get(format!("{}/v1/events?after={after}&limit=1000", self.base))
                .bearer_auth(&self.platform)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body = r.bytes().await.map_err(|e| e.to_string())?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            if page.events.is_empty() {
                return Ok(count);
            }
            count += page.events.iter().filter(|e| e.kind == kind).count() as u64;
            after = page.next_after;
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

/// A count of things this tool holds in memory, as a `usize`.
fn in_memory(count: u64) -> usize {
    usize::try_from(count).expect("a count of events held in memory fits in usize")
}

#[derive(Debug, Default)]
struct PlanFigures {
    latency: Summary,
    /// Append→SSE lag of the measured requests, one consumer tailing meanwhile.
    lag: Summary,
    lag_missing: usize,
    per_second: f64,
    non_200: BTreeMap<u16, u64>,
    /// CPU seconds (user + system) `serve` used over the measured window.
    serve_cpu: f64,
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
///
/// Meanwhile one consumer tails the stream from `head`: each measured request's reason is
/// `load-<client>-<n>`, and its lag under load is when the consumer parsed it − just before the
/// request was sent.
async fn plan_changes(
    api: &Api,
    orgs: &[Uuid],
    head: u64,
    args: &Args,
    serve_pid: u32,
) -> Result<(PlanFigures, Vec<bool>), String> {
    let start = Instant::now();
    let (stop_tail, mut stopped) = tokio::sync::watch::channel(false);
    let mut response = api.stream(head).await?;
    let consumer = tokio::spawn(async move {
        let mut received: HashMap<String, Instant> = HashMap::new();
        let mut parser = SseParser::default();
        loop {
            let chunk = tokio::select! {
                c = response.chunk() => c,
                _ = stopped.wait_for(|s| *s) => break,
            };
            let Ok(Some(chunk)) = chunk else { break };
            parser.feed(&chunk, |m| {
                if let Ok(ce) = serde_json::from_str::<CloudEvent>(&m.data)
                    && let Some(r) = ce.data.reason
                    && r.starts_with("load-")
                {
                    received.insert(r, Instant::now());
                }
            });
        }
        received
    });
    let measured_from = start + Duration::from_secs(args.warmup);
    let end = measured_from + Duration::from_secs(args.seconds);
    // The CPU serve uses over the measured window: a figure per request that the machine's
    // other load disturbs far less than the request rate.
    let serve_cpu = tokio::spawn(async move {
        let ticks = clock_ticks();
        tokio::time::sleep_until(measured_from.into()).await;
        let c0 = cpu_seconds(serve_pid, ticks)?;
        tokio::time::sleep_until(end.into()).await;
        Ok::<f64, String>(cpu_seconds(serve_pid, ticks)? - c0)
    });
    let mut tasks = Vec::new();
    for c in 0..args.clients() {
        let api = api.clone();
        let mine: Vec<(usize, Uuid)> = orgs
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % args.clients() == c)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut premium = vec![false; mine.len()];
            let mut lat = Vec::with_capacity(8192);
            let mut non_200: BTreeMap<u16, u64> = BTreeMap::new();
            let mut sent = Vec::with_capacity(8192);
            let mut k = 0usize;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let j = k % mine.len();
                k += 1;
                let want = !premium[j];
                let reason = format!("load-{c}-{k}");
                let status = api.change_plan(mine[j].1, want, &reason).await;
                let took = t0.elapsed();
                if status == 200 {
                    premium[j] = want;
                }
                if t0 >= measured_from {
                    lat.push(took);
                    if status == 200 {
                        sent.push((reason, t0));
                    } else {
                        *non_200.entry(status).or_default() += 1;
                    }
                }
            }
            let finals: Vec<(usize, bool)> = mine.iter().map(|(i, _)| *i).zip(premium).collect();
            (lat, non_200, finals, sent)
        }));
    }
    let mut all = Vec::new();
    let mut non_200 = BTreeMap::new();
    let mut finals = vec![false; orgs.len()];
    let mut sent = Vec::new();
    for t in tasks {
        let (lat, n, f, s) = t.await.expect("client task");
        all.extend(lat);
        sent.extend(s);
        for (status, count) in n {
            *non_200.entry(status).or_default() += count;
        }
        for (i, p) in f {
            finals[i] = p;
        }
    }
    let elapsed = measured_from.elapsed().as_secs_f64();
    let serve_cpu = serve_cpu.await.map_err(|e| e.to_string())??;
    let latency = summarize(all);
    // Give the consumer time for the last events, then match.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tail.send(true);
    let received = consumer.await.map_err(|e| e.to_string())?;
    let mut lags = Vec::with_capacity(sent.len());
    let mut lag_missing = 0usize;
    for (reason, t0) in &sent {
        match received.get(reason) {
            Some(r) => lags.push(r.saturating_duration_since(*t0)),
            None => lag_missing += 1,
        }
    }
    Ok((
        PlanFigures {
            per_second: latency.n as f64 / elapsed,
            latency,
            non_200,
            lag: summarize(lags),
            lag_missing,
            serve_cpu,
        },
        finals,
    ))
}

// ---------------------------------------------------------------------------------------------
// 2. Filling the log over HTTP

/// Plan changes over HTTP from `clients` closed-loop clients (each on its own organizations, as
/// in phase 1) until `need` more events are stored; updates `premium`.
async fn fill(
    api: &Api,
    orgs: &[Uuid],
    premium: &mut [bool],
    need: u64,
    clients: usize,
) -> Result<(), String> {
    let per_client = need.div_ceil(clients as u64);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let api = api.clone();
        let mine: Vec<(usize, Uuid, bool)> = orgs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % clients == c)
            .map(|(i, o)| (i, *o, premium[i]))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut mine = mine;
            let mut done = 0u64;
            let mut k = 0usize;
            while done < per_client {
                let j = k % mine.len();
                k += 1;
                let want = !mine[j].2;
                match api.change_plan(mine[j].1, want, "fill").await {
                    200 => {
                        mine[j].2 = want;
                        done += 1;
                    }
                    status => return Err(format!("fill: plan change answered {status}")),
                }
            }
            Ok(mine)
        }));
    }
    for t in tasks {
        for (i, _, p) in t.await.map_err(|e| e.to_string())?? {
            premium[i] = p;
        }
    }
    Ok(())
}

/// One consumer from `after=0` until `count` events: the rate, and the positions checked
/// against `GET /v1/events`.
async fn sse_rate(api: &Api, count: u64) -> Result<SseFigures, String> {
    let start = Instant::now();
    let mut response = api.stream(0).await?;
    let mut parser = SseParser::default();
    let mut positions: Vec<u64> = Vec::with_capacity(in_memory(count));
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
    positions.truncate(in_memory(count));
    let increasing = positions.windows(2).all(|w| w[0] < w[1]);
    // The same positions, in the same order, as the pages of GET /v1/events.
    let mut paged = Vec::with_capacity(in_memory(count));
    let mut after = 0;
    while (paged.len() as u64) < count {
        let (p, next) = api.events_page(after, 1000).await?;
        if p.is_empty() {
            break;
        }
        paged.extend(p);
        after = next;
    }
    paged.truncate(in_memory(count));
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
    let total = in_memory(u64::from(args.lag_rate) * args.lag_seconds);
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
        tokio::time::sleep_until(
            (start + interval * u32::try_from(n).expect("fewer than 2^32 requests")).into(),
        )
        .await;
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
// 4. Idle streams

/// SSE streams held open and read (their bytes discarded) until dropped.
#[derive(Default)]
struct OpenStreams {
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl OpenStreams {
    /// Opens streams after `after` until `n` are open, 50 at a time.
    async fn grow_to(&mut self, api: &Api, n: usize, after: u64) -> Result<(), String> {
        while self.readers.len() < n {
            let batch = (n - self.readers.len()).min(50);
            let mut opening = Vec::with_capacity(batch);
            for _ in 0..batch {
                let api = api.clone();
                opening.push(tokio::spawn(async move { api.stream(after).await }));
            }
            for o in opening {
                let mut response = o.await.map_err(|e| e.to_string())??;
                self.readers.push(tokio::spawn(async move {
                    while let Ok(Some(_)) = response.chunk().await {}
                }));
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.readers.len()
    }
}

impl Drop for OpenStreams {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

#[derive(Debug, Default)]
struct IdleFigure {
    streams: usize,
    seconds: f64,
    /// CPU seconds of the serve process per wall second.
    cores: f64,
}

/// For each `n` (ascending): `n` streams open at the head, a settling pause, then the serve
/// process's CPU over `window`. Leaves the largest number of streams open.
async fn idle_cpu(
    api: &Api,
    pid: u32,
    counts: &[usize],
    mut head: u64,
    window: Duration,
    open: &mut OpenStreams,
) -> Result<Vec<IdleFigure>, String> {
    let ticks = clock_ticks();
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    let mut figures = Vec::new();
    for n in counts {
        head = api.scan(head).await?.0;
        open.grow_to(api, n, head).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (c0, t0) = (cpu_seconds(pid, ticks)?, Instant::now());
        tokio::time::sleep(window).await;
        let (c1, seconds) = (cpu_seconds(pid, ticks)?, t0.elapsed().as_secs_f64());
        figures.push(IdleFigure {
            streams: open.len(),
            seconds,
            cores: (c1 - c0) / seconds,
        });
    }
    Ok(figures)
}

// ---------------------------------------------------------------------------------------------
// The run

/// A scratch PostgreSQL database, dropped by [`drop_scratch`].
struct Scratch {
    admin_url: String,
    name: String,
}

/// The store URL for the configuration, and the scratch database to drop afterwards.
async fn store_url(args: &Args, dir: &Path) -> Result<(String, Option<Scratch>), String> {
    if args.store == "sqlite" {
        return Ok((format!("sqlite://{}", dir.join("keyledger.db").display()), None));
    }
    let name = format!("http_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&args.store)
        .await
        .map_err(|e| format!("PostgreSQL at --store (URL not shown: it may hold a password): {e}"))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        sqlx::query(&sql)
            .execute(&mut admin)
            .await
            .map_err(|e| e.to_string())?;
    }
    admin.close().await.ok();
    let url = match args.store.rsplit_once('/') {
        Some((root, _)) => format!("{root}/{name}"),
        None => return Err("--store: the URL names no database".into()),
    };
    Ok((
        url,
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
    idle: Vec<IdleFigure>,
    /// The lag with the largest number of idle streams connected.
    crowded_lag: Option<(usize, LagFigures)>,
}

fn print_lag(name: &str, args: &Args, streams: usize, lag: &LagFigures) {
    println!(
        "{name:8} lag append→SSE at {}/s for {} s with {streams} other streams: {} sent, p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms, missing {}, non-200 {:?}; the requests themselves: p50 {:.2} ms, p99 {:.2} ms",
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
}

/// The measurements against a running serve process.
async fn bench(serve: &Serve, name: &str, args: &Args) -> Result<Figures, String> {
    let api = Api::new(serve.base.clone(), PLATFORM_TOKEN.into(), BILLING_TOKEN.into());
    println!(
        "{name:8} keyledger serve (pid {}) listening on {}",
        serve.pid(),
        serve.base
    );

    // Setup: the organizations, over HTTP.
    let t = Instant::now();
    let orgs: Vec<Uuid> = (0..args.orgs.max(args.clients()))
        .map(|_| Uuid::now_v7())
        .collect();
    register_all(&api, &orgs, args.clients()).await?;
    println!(
        "{name:8} registered {} organizations over HTTP in {:.2} s",
        orgs.len(),
        t.elapsed().as_secs_f64()
    );

    // 1. Plan changes.
    let (head, _) = api.scan(0).await?;
    let (plan, mut premium) = plan_changes(&api, &orgs, head, args, serve.pid()).await?;
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
    println!(
        "{name:8} serve's CPU over that window: {:.2} s ({:.2} cores), {:.3} ms per request",
        plan.serve_cpu,
        plan.serve_cpu / args.seconds as f64,
        1000.0 * plan.serve_cpu / plan.latency.n.max(1) as f64,
    );
    println!(
        "{name:8} lag append→SSE under that load (one consumer): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, missing {}",
        ms(plan.lag.p50),
        ms(plan.lag.p99),
        ms(plan.lag.max),
        plan.lag_missing
    );

    // 2. The SSE rate over `sse_events` events.
    let (mut head, events) = api.scan(0).await?;
    if events < args.sse_events {
        let t = Instant::now();
        fill(
            &api,
            &orgs,
            &mut premium,
            args.sse_events - events,
            args.clients(),
        )
        .await?;
        println!(
            "{name:8} filled the log with {} plan changes over HTTP in {:.1} s",
            args.sse_events - events,
            t.elapsed().as_secs_f64()
        );
        head = api.scan(head).await?.0;
    }
    println!("{name:8} log head at position {head} (positions need not be dense)");
    // Let the projection runners finish folding the fill before the consumer starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    let alone = lag(&api, &orgs, &mut premium, head, args).await?;
    print_lag(name, args, 0, &alone);

    // 4. Idle streams, then 5. the lag with the most of them connected.
    let head = api.scan(head).await?.0;
    let mut open = OpenStreams::default();
    let window = Duration::from_secs(args.idle_seconds);
    let idle = idle_cpu(&api, serve.pid(), &args.idle_streams, head, window, &mut open).await?;
    for f in &idle {
        println!(
            "{name:8} idle: {} streams connected, nothing appended: serve used {:.3} core over {:.1} s",
            f.streams, f.cores, f.seconds
        );
    }
    let crowded_lag = if open.len() > 0 {
        let head = api.scan(head).await?.0;
        let crowded = lag(&api, &orgs, &mut premium, head, args).await?;
        print_lag(name, args, open.len(), &crowded);
        Some((open.len(), crowded))
    } else {
        None
    };
    drop(open);
    Ok(Figures {
        plan,
        sse,
        lag: alone,
        idle,
        crowded_lag,
    })
}

/// Inclusion-proof latency through `GET …/audit/proof` on one organization's log of
/// `--proof-events` events: proofs of random versions against the latest checkpoint, one at a
/// time.
async fn proof_latency(serve: &Serve, name: &str, args: &Args) -> Result<(), String> {
    let api = Api::new(serve.base.clone(), PLATFORM_TOKEN.into(), BILLING_TOKEN.into());
    let org = Uuid::now_v7();
    register_all(&api, &[org], 1).await?;
    let t = Instant::now();
    fill(&api, &[org], &mut [false], args.proof_events, 1).await?;
    println!(
        "{name:8} filled one organization with {} plan changes over HTTP in {:.1} s",
        args.proof_events,
        t.elapsed().as_secs_f64()
    );
    let get = |path: String| {
        let api = api.clone();
        async move {
            let r = api
                .client
                .get(format!("{}{path}", api.base))
                .bearer_auth(AUDITOR_TOKEN)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body = r.text().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body))
        }
    };
    // The checkpoint once the tree has folded the whole log.
    let deadline = Instant::now() + Duration::from_secs(300);
    let size: u64 = loop {
        let (status, body) = get(format!("/v1/organizations/{org}/audit/checkpoint")).await?;
        let size = body.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
        if status == 200 && size > args.proof_events {
            break size;
        }
        if Instant::now() > deadline {
            return Err(format!("no checkpoint of the whole log: {status} {body}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut times = Vec::with_capacity(args.proofs);
    for _ in 0..args.proofs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let version = seed % size + 1;
        let path = format!("/v1/organizations/{org}/audit/proof?version={version}&tree_size={size}");
        let t = Instant::now();
        let (status, body) = get(path).await?;
        times.push(t.elapsed());
        if status != 200 {
            return Err(format!("proof of version {version}: {status} {body}"));
        }
    }
    let s = summarize(times);
    println!(
        "{name:8} inclusion proof over HTTP on a {size}-event organization log, {} proofs: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 ≤ 2 ms on SQLite)",
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}

/// Plan-change throughput with the checkpointer off and on, `checkpointer_rounds` times,
/// each run on a fresh store and a fresh `serve`, off and on alternating so drift hits both.
async fn checkpointer_ratio(bin: &Path, name: &str, args: &Args) -> Result<(), String> {
    let mut ratios = Vec::new();
    for round in 1..=args.checkpointer_rounds {
        let mut rates = Vec::new();
        for (label, interval) in [("off", "24h"), ("on", args.checkpoint_interval.as_str())] {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let (url, scratch) = store_url(args, dir.path()).await?;
            let serve = Serve::start(bin, dir.path(), &url, args, interval)?;
            let api = Api::new(serve.base.clone(), PLATFORM_TOKEN.into(), BILLING_TOKEN.into());
            let orgs: Vec<Uuid> = (0..args.orgs.max(args.clients()))
                .map(|_| Uuid::now_v7())
                .collect();
            let measured = async {
                register_all(&api, &orgs, args.clients()).await?;
                let (head, _) = api.scan(0).await?;
                plan_changes(&api, &orgs, head, args, serve.pid()).await
            }
            .await;
            let checkpoints = api.scan_type(0, "keyledger.AuditCheckpointSigned.v1").await;
            if measured.is_err() {
                eprintln!("http-bench: serve's log:\n{}", serve.log_text());
            }
            serve.stop();
            if let Some(s) = scratch {
                drop_scratch(s).await;
            }
            let (plan, _) = measured?;
            println!(
                "{name:8} round {round} checkpointer {label:3} (interval {interval}): {:.0} req/s, p99 {:.2} ms, \
                 serve CPU {:.3} ms/request, {} checkpoints in the log",
                plan.per_second,
                ms(plan.latency.p99),
                1000.0 * plan.serve_cpu / plan.latency.n.max(1) as f64,
                checkpoints?,
            );
            rates.push(plan.per_second);
        }
        let ratio = rates[1] / rates[0];
        println!("{name:8} round {round} on ÷ off: {ratio:.3}");
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = (ratios[(n - 1) / 2] + ratios[n / 2]) / 2.0;
    println!(
        "{name:8} checkpointer on ÷ off over {} rounds: median {median:.3}, min {:.3}, max {:.3} (target ≥ 0.95)",
        n,
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
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

fn lag_json(l: &LagFigures) -> serde_json::Value {
    json!({
        "sent": l.sent,
        "missing": l.missing,
        "p50_ms": round2(ms(l.lag.p50)),
        "p99_ms": round2(ms(l.lag.p99)),
        "max_ms": round2(ms(l.lag.max)),
        "non_200": counts(&l.non_200),
        "request_p50_ms": round2(ms(l.request.p50)),
        "request_p99_ms": round2(ms(l.request.p99)),
    })
}

/// The summary table (issue 12 targets) and one JSON line.
fn report(name: &str, args: &Args, bin: &Path, f: &Figures) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "http-bench summary ({name}, {}; 2 shared cores — compare within a run)",
        bin.display()
    );
    println!("| figure | measured | target | |");
    println!("|---|---:|---:|---|");
    println!(
        "| plan changes, {} clients | {:.0} req/s, p50 / p99 / max {:.2} / {:.2} / {:.2} ms | p99 ≤ 20 ms | {} |",
        args.clients,
        f.plan.per_second,
        ms(f.plan.latency.p50),
        ms(f.plan.latency.p99),
        ms(f.plan.latency.max),
        verdict(ms(f.plan.latency.p99) <= 20.0)
    );
    println!(
        "| append→SSE lag p50 / p99 / max under the plan-change load | {:.2} / {:.2} / {:.2} ms | p99 ≤ 50 ms | {} |",
        ms(f.plan.lag.p50),
        ms(f.plan.lag.p99),
        ms(f.plan.lag.max),
        verdict(ms(f.plan.lag.p99) <= 50.0 && f.plan.lag_missing == 0)
    );
    println!(
        "| SSE delivery, one consumer, {} events | {:.0} events/s | ≥ 150000 events/s | {} |",
        f.sse.events,
        f.sse.per_second,
        verdict(f.sse.per_second >= 150_000.0 && f.sse.increasing && f.sse.matches_page)
    );
    println!(
        "| append→SSE lag p50 / p99 / max at {}/s | {:.2} / {:.2} / {:.2} ms | p99 ≤ 50 ms | {} |",
        args.lag_rate,
        ms(f.lag.lag.p50),
        ms(f.lag.lag.p99),
        ms(f.lag.lag.max),
        verdict(ms(f.lag.lag.p99) <= 50.0 && f.lag.missing == 0)
    );
    for i in &f.idle {
        println!(
            "| CPU of serve, {} idle streams | {:.3} core | ≤ 0.05 core | {} |",
            i.streams,
            i.cores,
            verdict(i.cores <= 0.05)
        );
    }
    if let Some((n, l)) = &f.crowded_lag {
        println!(
            "| append→SSE lag p50 / p99 / max at {}/s, {n} streams connected | {:.2} / {:.2} / {:.2} ms | p99 ≤ 100 ms | {} |",
            args.lag_rate,
            ms(l.lag.p50),
            ms(l.lag.p99),
            ms(l.lag.max),
            verdict(ms(l.lag.p99) <= 100.0 && l.missing == 0)
        );
    }
    let line = json!({
        "tool": "http-bench",
        "store": name,
        "keyledger_bin": bin.display().to_string(),
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
            "lag_p50_ms": round2(ms(f.plan.lag.p50)),
            "lag_p99_ms": round2(ms(f.plan.lag.p99)),
            "lag_max_ms": round2(ms(f.plan.lag.max)),
            "lag_missing": f.plan.lag_missing,
        },
        "sse": {
            "events": f.sse.events,
            "seconds": round2(f.sse.seconds),
            "per_second": f.sse.per_second.round(),
            "chunks": f.sse.chunks,
            "strictly_increasing": f.sse.increasing,
            "matches_events_page": f.sse.matches_page,
        },
        "lag": { "rate": args.lag_rate, "seconds": args.lag_seconds, "alone": lag_json(&f.lag),
            "crowded": f.crowded_lag.as_ref().map(|(n, l)| json!({"streams": n, "figures": lag_json(l)})) },
        "idle": f.idle.iter().map(|i| json!({"streams": i.streams, "seconds": round2(i.seconds),
            "cores": (i.cores * 1000.0).round() / 1000.0})).collect::<Vec<_>>(),
    });
    println!();
    println!("{line}");
}

fn main() {
    let args = Args::parse();
    println!("http-bench: {args:?}");
    let bin = match args.binary() {
        Ok(b) if b.is_file() => b,
        Ok(b) => {
            eprintln!(
                "http-bench: no keyledger binary at {} (build it: cargo build --release -p keyledger-cli, or pass --keyledger-bin)",
                b.display()
            );
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("http-bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let (url, scratch) = match rt.block_on(store_url(&args, dir.path())) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("http-bench: {e}");
            std::process::exit(1);
        }
    };
    let name = if scratch.is_some() { "postgres" } else { "sqlite" };
    if args.proof_events > 0 {
        let figures = match Serve::start(&bin, dir.path(), &url, &args, &args.checkpoint_interval) {
            Ok(serve) => {
                let measured = rt.block_on(proof_latency(&serve, name, &args));
                if measured.is_err() {
                    eprintln!("http-bench: serve's log:\n{}", serve.log_text());
                }
                serve.stop();
                measured
            }
            Err(e) => Err(e),
        };
        if let Some(s) = scratch {
            rt.block_on(drop_scratch(s));
        }
        if let Err(e) = figures {
            eprintln!("http-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.checkpointer_rounds > 0 {
        if let Some(s) = scratch {
            rt.block_on(drop_scratch(s));
        }
        if let Err(e) = rt.block_on(checkpointer_ratio(&bin, name, &args)) {
            eprintln!("http-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let figures = match Serve::start(&bin, dir.path(), &url, &args, &args.checkpoint_interval) {
        Ok(serve) => {
            let figures = rt.block_on(bench(&serve, name, &args));
            if figures.is_err() {
                eprintln!("http-bench: serve's log:\n{}", serve.log_text());
            }
            serve.stop();
            figures
        }
        Err(e) => Err(e),
    };
    if let Some(s) = scratch {
        rt.block_on(drop_scratch(s));
    }
    match figures {
        Ok(f) => report(name, &args, &bin, &f),
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
