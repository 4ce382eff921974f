//! `keyledger serve` on PostgreSQL as it ships: the real binary, its own connection pool and
//! projection leases, one or two instances on one fresh database, real sockets. Protects the
//! pool against starvation (issue 11, item 14) and acknowledged commands against a killed
//! instance. Skips when PostgreSQL does not answer, unless `KEYLEDGER_REQUIRE_POSTGRES=1`.

mod common;

use keyledger_store::StoredEvent;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Serving;
use keyledger_postgres::testing::TestDatabase;
use serde_json::{Value, json};
use sqlx::Connection as _;

const PLATFORM: &str = "pg-serve-platform-token-0001";
const BILLING: &str = "pg-serve-billing-token-00001";

/// Starts `keyledger serve` on `store` with the shipped defaults (the simulated vault, so
/// commands need no network beyond 127.0.0.1). `name` separates the instances' files.
fn start(dir: &Path, name: &str, store: &str) -> Serving {
    start_with(dir, name, store, "", "")
}

/// [`start`] with extra lines for the `[server]` and `[store]` tables.
fn start_with(dir: &Path, name: &str, store: &str, server_extra: &str, store_extra: &str) -> Serving {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = common::write_config(
        &dir.join(format!("{name}.toml")),
        store,
        // Both instances share one key ring, as instances of one deployment do.
        &data.join("internal-keys.json"),
        &[(PLATFORM, "platform"), (BILLING, "billing")],
        server_extra,
        store_extra,
    );
    Serving::start(&config, &dir.join(format!("{name}.log")))
}

fn tenant(n: usize) -> String {
    format!("01900000-0000-7000-8000-{n:012x}")
}

/// What one command got: its status, `Retry-After` and body, or the transport error (a killed
/// instance). The error text is read through `Debug`, in failure messages.
#[derive(Debug)]
#[allow(dead_code)]
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

/// Waits (at most `bound`) until every projection has folded the whole log.
async fn projections_reach_the_head(url: &str, bound: Duration) {
    let started = Instant::now();
    loop {
        let (checkpoints, head) = checkpoints_and_head(url).await;
        if checkpoints.len() == keyledger_projection::Projection::ALL.len()
            && checkpoints.values().all(|p| *p == head)
        {
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
    let one = start(dir.path(), "one", db.url());
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
    let one = start(dir.path(), "one", db.url());
    let two = start(dir.path(), "two", db.url());
    let (orgs, failures) = sixty_four_at_once(&[one.base.clone(), two.base.clone()]).await;
    assert!(failures.is_empty(), "{} failed: {failures:#?}", failures.len());
    assert_eq!(orgs.len(), 64);
    projections_reach_the_head(db.url(), Duration::from_secs(20)).await;
}

/// Leases held in this database (advisory locks: one per projection led, and the audit
/// checkpointer's).
async fn leases_held(url: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let _ = c.close().await;
    n
}

/// `keyledger events export`: every stored envelope, in commit order.
fn export(url: &str) -> Vec<StoredEvent> {
    let out = Command::new(common::keyledger())
        .args(["events", "export", "--store", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_no_acknowledged_command() {
    const COMMANDS: usize = 300;
    const CLIENTS: usize = 16;
    let Some(db) = TestDatabase::create("kl_serve_kill").await else {
        return;
    };
    let url = db.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    // The doomed instance starts first and takes every projection lease, so its death forces
    // the survivor to take them over.
    let mut doomed = start(dir.path(), "doomed", &url);
    let started = Instant::now();
    while leases_held(&url).await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first instance took no leases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivor = start(dir.path(), "survivor", &url);
    let bases = [doomed.base.clone(), survivor.base.clone()];

    // A bounded load on both: COMMANDS registrations from CLIENTS clients, at most 60 s.
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    // (answered by the survivor, organization)
    let acknowledged: Arc<Mutex<Vec<(bool, String)>>> = Arc::default();
    let survivor_refusals: Arc<Mutex<Vec<String>>> = Arc::default();
    let http = client();
    let load_started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, answered, http, bases) = (next.clone(), answered.clone(), http.clone(), bases.clone());
            let (acknowledged, survivor_refusals) = (acknowledged.clone(), survivor_refusals.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= COMMANDS || load_started.elapsed() > Duration::from_secs(60) {
                        return;
                    }
                    let to_survivor = n % 2 == 1;
                    let a = register(&http, &bases[n % 2], n).await;
                    match &a {
                        Answer::Http(201, _, v) => acknowledged
                            .lock()
                            .unwrap()
                            .push((to_survivor, v["org_id"].as_str().unwrap().to_owned())),
                        _ if to_survivor => survivor_refusals.lock().unwrap().push(format!("{n}: {a:?}")),
                        // The doomed instance: refused connections after the kill.
                        _ => {}
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // SIGKILL midway.
    while answered.load(Ordering::SeqCst) < COMMANDS / 3 {
        assert!(
            load_started.elapsed() < Duration::from_secs(60),
            "the load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill();
    let killed_after = answered.load(Ordering::SeqCst);
    join_all(clients).await;
    let refusals = survivor_refusals.lock().unwrap().clone();
    assert!(refusals.is_empty(), "the survivor refused: {refusals:#?}");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(killed_after < COMMANDS, "the kill came after the load");
    assert!(
        acknowledged.iter().any(|(survivor, _)| !survivor),
        "the doomed instance acknowledged nothing before it died"
    );
    let acknowledged: Vec<String> = acknowledged.into_iter().map(|(_, org)| org).collect();
    // The log goes on after the kill.
    let after_kill = register(&http, &survivor.base, COMMANDS).await;
    assert!(matches!(after_kill, Answer::Http(201, ..)), "{after_kill:?}");

    // The survivor leads every projection, and its views reach the head.
    projections_reach_the_head(&url, Duration::from_secs(30)).await;
    assert_eq!(
        leases_held(&url).await,
        // One per projection, and the audit checkpointer's.
        i64::try_from(keyledger_projection::Projection::ALL.len() + 1).unwrap(),
        "the survivor holds every lease"
    );

    // Every acknowledged command is on record, and the log has no gap.
    let events = export(&url);
    let registered: BTreeSet<String> = events
        .iter()
        .filter(|e| e.event_type == "OrganizationRegistered")
        .filter_map(|e| e.stream_id.org_id().map(|o| o.to_string()))
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|o| !registered.contains(*o)).collect();
    assert!(lost.is_empty(), "acknowledged but not on record: {lost:?}");
    assert!(
        events
            .windows(2)
            .all(|w| w[0].global_position < w[1].global_position),
        "the export is in commit order"
    );
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let _ = c.close().await;
    assert_eq!(
        i64::try_from(events.len()).unwrap(),
        rows,
        "the ordered read skips no stored event"
    );
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &events {
        versions
            .entry(e.stream_id.to_string())
            .or_default()
            .push(e.stream_version.0);
    }
    for (stream, v) in versions {
        assert!(
            v.iter().copied().eq(1..=u64::try_from(v.len()).unwrap()),
            "{stream} versions are not 1..n: {v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gets_no_connection_in_time_is_503_with_retry_after() {
    let Some(db) = TestDatabase::create("kl_serve_starved").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let one = start_with(
        dir.path(),
        "one",
        db.url(),
        "request_timeout = \"4s\"",
        "max_connections = 1\nacquire_timeout = \"1s\"",
    );
    let http = client();
    let Answer::Http(201, _, view) = register(&http, &one.base, 0).await else {
        panic!("the first registration failed");
    };
    let org = view["org_id"].as_str().unwrap().to_owned();
    // Another session locks the events table: whoever holds the one pooled connection waits
    // on the lock, and everybody else waits for the connection.
    let mut blocker = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{}/v1/organizations/{org}", one.base));
            tokio::spawn(async move { answer(http.get(url).bearer_auth(PLATFORM).send().await).await })
        })
        .collect();
    let answers = join_all(reads).await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let _ = blocker.close().await;
    let mut unavailable = 0;
    for a in &answers {
        match a {
            Answer::Http(503, Some(_), p) if p["code"] == "store_unavailable" => unavailable += 1,
            Answer::Http(503, Some(_), p) if p["code"] == "request_timeout" => {}
            other => panic!("expected 503 with Retry-After, got {other:?}"),
        }
    }
    assert!(unavailable > 0, "{answers:?}");
    // The connection is back: the same read succeeds.
    let again = answer(
        http.get(format!("{}/v1/organizations/{org}", one.base))
            .bearer_auth(PLATFORM)
            .send()
            .await,
    )
    .await;
    assert!(matches!(again, Answer::Http(200, ..)), "{again:?}");
}

/// Two instances on one database with `audit.checkpoint_interval = "1s"`: exactly one of them
/// leads the checkpointer, and the organizations' logs get checkpoints in stream `audit`
/// without anyone asking for them, each log and size once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_postgres_instances_signs_the_audit_checkpoints() {
    let Some(db) = TestDatabase::create("kl_serve_ckpt").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let instances: Vec<Serving> = ["one", "two"]
        .iter()
        .map(|name| {
            let config = common::write_config(
                &dir.path().join(format!("{name}.toml")),
                db.url(),
                &data.join("internal-keys.json"),
                &[(PLATFORM, "platform"), (BILLING, "billing")],
                "",
                "",
            );
            let log = dir.path().join(format!("{name}.log"));
            let mut cmd = common::serve_command(&config, &log);
            cmd.env("KEYLEDGER_AUDIT__CHECKPOINT_INTERVAL", "1s");
            Serving::spawn(cmd, &log)
        })
        .collect();
    let http = client();
    let mut orgs = Vec::new();
    for n in 0..6 {
        let base = &instances[n % 2].base;
        match register(&http, base, n).await {
            Answer::Http(201, _, view) => orgs.push(view["org_id"].as_str().unwrap().to_owned()),
            other => panic!("{other:?}"),
        }
    }

    // Every organization's log gets a checkpoint at its size, by the background rounds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (events, checkpoints) = loop {
        let events = export(db.url());
        let checkpoints: Vec<(String, u64)> = events
            .iter()
            .filter(|e| e.event_type == "AuditCheckpointSigned")
            .map(|e| {
                (
                    e.payload["log"].as_str().unwrap().to_owned(),
                    e.payload["tree_size"].as_u64().unwrap(),
                )
            })
            .collect();
        let covered = orgs.iter().all(|org| {
            let size = events
                .iter()
                .filter(|e| e.stream_id.to_string().ends_with(org.as_str()))
                .count();
            checkpoints
                .iter()
                .any(|(log, n)| log == org && *n == u64::try_from(size).unwrap())
        });
        if covered && checkpoints.iter().any(|(log, _)| log == "global") {
            break (events, checkpoints);
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of every log: {checkpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unique: BTreeSet<&(String, u64)> = checkpoints.iter().collect();
    assert_eq!(unique.len(), checkpoints.len(), "a checkpoint was recorded twice");
    assert!(
        events.iter().all(|e| e.event_type != "AuditCheckpointSigned"
            || e.actor.kind == keyledger_domain::ActorKind::System)
    );

    // Exactly one instance leads the checkpointer.
    drop(instances);
    let leaders = ["one", "two"]
        .iter()
        .filter(|name| {
            std::fs::read_to_string(dir.path().join(format!("{name}.log")))
                .unwrap()
                .lines()
                .any(|l| l.contains("leading the background task") && l.contains("audit-checkpointer"))
        })
        .count();
    assert_eq!(leaders, 1);
}
