//! `keyledger serve` on PostgreSQL as it ships: the real binary, its own connection pool and
//! projection leases, one or two instances on one fresh database, real sockets. Protects the
//! pool against starvation (issue 11, item 14) and acknowledged commands against a killed
//! instance. Skips when PostgreSQL does not answer, unless `KEYLEDGER_REQUIRE_POSTGRES=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyledger_postgres::testing::TestDatabase;
use serde_json::{Value, json};
use sqlx::Connection as _;

const PLATFORM: &str = "pg-serve-platform-token-0001";
const BILLING: &str = "pg-serve-billing-token-00001";

/// One `keyledger serve` process, killed when dropped.
struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// Starts `keyledger serve` on `store` with the shipped defaults (the simulated vault,
    /// so commands need no network beyond 127.0.0.1). `name` separates the instances' files.
    fn start(dir: &Path, name: &str, store: &str) -> Instance {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\nurl = \"{store}\"\n\n[keys]\n\
                 internal_key_file = \"{}\"\nvault = \"simulated\"\n\n\
                 [[auth.tokens]]\ntoken = \"{PLATFORM}\"\nsubject = \"platform@example.com\"\nroles = [\"platform\"]\n\n\
                 [[auth.tokens]]\ntoken = \"{BILLING}\"\nsubject = \"billing@example.com\"\nroles = [\"billing\"]\n",
                // Both instances share one key ring, as instances of one deployment do.
                data.join("internal-keys.json").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyledger"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("KEYLEDGER_STORE__URL")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name}: first stdout line {line:?}"))
            .to_owned();
        Instance { child, base }
    }

    fn kill(&mut self) {
        // SIGKILL: no drain, no lease release; the database sees the sessions end.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn tenant(n: usize) -> String {
    format!("01900000-0000-7000-8000-{n:012x}")
}

/// What one command got: its status and body, or the transport error (a killed instance).
#[derive(Debug)]
enum Answer {
    Http(u16, Option<String>, Value),
    Failed(String),
}

async fn register(http: &reqwest::Client, base: &str, n: usize) -> Answer {
    let body = json!({"name": format!("Org {n}"), "plan": {"kind": "enterprise", "tier": "standard"},
                      "tenants": [{"tenant_id": tenant(n), "name": "Default"}]});
    let sent = http
        .post(format!("{base}/v1/organizations"))
        .bearer_auth(PLATFORM)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    answer(sent).await
}

async fn answer(sent: reqwest::Result<reqwest::Response>) -> Answer {
    match sent {
        Err(e) => Answer::Failed(e.to_string()),
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match r.text().await {
                Ok(text) => Answer::Http(
                    status,
                    retry_after,
                    serde_json::from_str(&text).unwrap_or(Value::Null),
                ),
                Err(e) => Answer::Failed(e.to_string()),
            }
        }
    }
}

/// A plan change (billing) on `org`: one appended event.
async fn change_plan(http: &reqwest::Client, base: &str, org: &str, kind: &str) -> Answer {
    let body = json!({"plan": {"kind": kind}, "reason": "load"});
    answer(
        http.put(format!("{base}/v1/organizations/{org}/plan"))
            .bearer_auth(BILLING)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await,
    )
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 64 registrations at once, then 64 plan changes at once (one per new organization), spread
/// round-robin over `bases`. Returns the new organizations and every answer that was not a
/// success.
async fn sixty_four_at_once(bases: &[String]) -> (Vec<String>, Vec<String>) {
    let http = client();
    let registrations = (0..64)
        .map(|n| {
            let (http, base) = (http.clone(), bases[n % bases.len()].clone());
            tokio::spawn(async move { (n, register(&http, &base, n).await) })
        })
        .collect();
    let mut orgs = Vec::new();
    let mut failures = Vec::new();
    for (n, a) in join_all(registrations).await {
        match &a {
            Answer::Http(201, _, v) => orgs.push(v["org_id"].as_str().unwrap().to_owned()),
            _ => failures.push(format!("register {n}: {a:?}")),
        }
    }
    let changes = orgs
        .iter()
        .enumerate()
        .map(|(n, org)| {
            let (http, base, org) = (http.clone(), bases[n % bases.len()].clone(), org.clone());
            tokio::spawn(async move { (org.clone(), change_plan(&http, &base, &org, "pro").await) })
        })
        .collect();
    for (org, a) in join_all(changes).await {
        if !matches!(a, Answer::Http(200, ..)) {
            failures.push(format!("plan of {org}: {a:?}"));
        }
    }
    (orgs, failures)
}

/// The checkpoint of every projection, and the last position in the log (read directly, not
/// through the fence).
async fn checkpoints_and_head(url: &str) -> (BTreeMap<String, i64>, i64) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT projection, position FROM projection_checkpoints")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let head: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    (rows.into_iter().collect(), head.unwrap_or(0))
}

/// Waits (at most `bound`) until all four projections have folded the whole log.
async fn projections_reach_the_head(url: &str, bound: Duration) {
    let started = Instant::now();
    loop {
        let (checkpoints, head) = checkpoints_and_head(url).await;
        if checkpoints.len() == 4 && checkpoints.values().all(|p| *p == head) {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "projections did not reach the head {head} in {bound:?}: {checkpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_commands_on_postgres_all_succeed() {
    let Some(db) = TestDatabase::create("kl_serve64").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let one = Instance::start(dir.path(), "one", db.url());
    let (orgs, failures) = sixty_four_at_once(std::slice::from_ref(&one.base)).await;
    assert!(failures.is_empty(), "{} failed: {failures:#?}", failures.len());
    assert_eq!(orgs.len(), 64);
    projections_reach_the_head(db.url(), Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_commands_on_two_postgres_instances_all_succeed() {
    let Some(db) = TestDatabase::create("kl_serve64x2").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let one = Instance::start(dir.path(), "one", db.url());
    let two = Instance::start(dir.path(), "two", db.url());
    let (orgs, failures) = sixty_four_at_once(&[one.base.clone(), two.base.clone()]).await;
    assert!(failures.is_empty(), "{} failed: {failures:#?}", failures.len());
    assert_eq!(orgs.len(), 64);
    projections_reach_the_head(db.url(), Duration::from_secs(20)).await;
}
