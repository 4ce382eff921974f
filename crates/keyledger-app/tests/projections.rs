//! Projection runners over the application's events: rebuild equality after a randomized run,
//! and crash safety between a batch's rows and its checkpoint.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use common::FakeVault;
use keyledger_app::*;
use keyledger_domain::testing::{self, billing, platform, system};
use keyledger_domain::*;
use keyledger_postgres::testing::TestDatabase;
use keyledger_projection::*;
use keyledger_store::merkle::{Hash, NodeAddr, TreeError};
use keyledger_store::{EventStore, InMemoryStore, KeyRing};
use secrecy::SecretString;

fn org(i: u32) -> OrgId {
    format!("01900000-0000-7000-8000-{:012x}", 0x1000 + i)
        .parse()
        .unwrap()
}

fn key(name: &str, version: &str) -> KeyIdentifier {
    KeyIdentifier::parse_shape(&format!("https://contoso.vault.azure.net/keys/{name}/{version}")).unwrap()
}

fn connection(k: &KeyIdentifier) -> Connection {
    let mut c = testing::connection(k);
    c.client_secret = SecretString::from("projection-test-secret");
    c
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as u32
    }
}

fn admin_of(_: OrgId) -> Actor {
    testing::admin_of_any_org()
}

async fn random_run(app: &App, orgs: u32, commands: u32, seed: u64) -> u32 {
    let mut rng = Lcg(seed);
    let mut accepted = 0;
    for i in 0..orgs {
        let r = app
            .handle(CommandRequest {
                org_id: org(i),
                actor: platform(),
                source_ip: None,
                command_id: None,
                correlation_id: None,
                if_match: None,
                intent: Intent::Register {
                    name: format!("Org {i}"),
                    plan: Plan::enterprise("standard"),
                    tenants: vec![
                        Tenant {
                            tenant_id: testing::tenant_id((i % 200) as u8),
                            name: "A".into(),
                        },
                        Tenant {
                            tenant_id: org(1000 + i).as_uuid().to_string().parse().unwrap(),
                            name: "B".into(),
                        },
                    ],
                },
            })
            .await;
        r.unwrap();
    }
    let keys = [key("cmk", "v1"), key("cmk", "v2"), key("cmk-2027", "v1")];
    for _ in 0..commands {
        let o = org(rng.next(orgs));
        let (actor, intent) = match rng.next(9) {
            0 | 1 => (
                billing(),
                Intent::ChangePlan {
                    plan: [Plan::free(), Plan::enterprise("standard"), Plan::pro()][rng.next(3) as usize]
                        .clone(),
                    reason: "random".into(),
                },
            ),
            2 => (
                admin_of(o),
                Intent::EnableCustomerManagedKey(connection(&keys[rng.next(3) as usize])),
            ),
            3 => (
                admin_of(o),
                Intent::RotateCustomerManagedKey(ConnectionPatch {
                    key_identifier: Some(keys[rng.next(3) as usize].clone()),
                    ..Default::default()
                }),
            ),
            4 => (
                admin_of(o),
                Intent::EditCustomerManagedKey(ConnectionPatch {
                    client_secret: Some(SecretString::from(format!("s{}", rng.next(3)))),
                    ..Default::default()
                }),
            ),
            5 => (
                admin_of(o),
                Intent::SwitchToProviderManagedKey {
                    abandon_lost_data: false,
                },
            ),
            6 => (
                system(),
                Intent::RecordKeyHealth {
                    status: [
                        HealthStatus::Healthy,
                        HealthStatus::KeyDisabled,
                        HealthStatus::VaultUnreachable,
                    ][rng.next(3) as usize],
                    detail: None,
                },
            ),
            7 => (
                platform(),
                Intent::AddTenant(Tenant {
                    tenant_id: testing::tenant_id(u8::try_from(rng.next(250)).unwrap()),
                    name: "T".into(),
                }),
            ),
            _ => (
                platform(),
                Intent::RemoveTenant(testing::tenant_id(u8::try_from(rng.next(250)).unwrap())),
            ),
        };
        let r = app
            .handle(CommandRequest {
                org_id: o,
                actor,
                source_ip: None,
                command_id: None,
                correlation_id: None,
                if_match: None,
                intent,
            })
            .await;
        match r {
            Ok(_) => accepted += 1,
            Err(AppError::Rejected(_)) => {}
            Err(e) => panic!("unexpected failure: {e:?}"),
        }
    }
    accepted
}

fn app_on(store: Arc<dyn EventStore>) -> App {
    let vault = Arc::new(FakeVault::default());
    vault.add("cmk", "v1");
    vault.add("cmk", "v2");
    vault.add("cmk-2027", "v1");
    App::new(
        store,
        vault,
        Arc::new(ManualClock::new(Utc::now())),
        AppConfig::default(),
    )
}

/// The position of the last committed event of the run's organizations (not subject to the
/// catch-up fence, unlike `read_all`).
async fn committed_end(store: &dyn EventStore, orgs: u32) -> u64 {
    let mut end = 0;
    for i in 0..orgs {
        let events = store
            .read_stream(StreamId::for_org(org(i)), StreamVersion(1))
            .await
            .unwrap();
        end = end.max(events.last().map_or(0, |e| e.global_position.0));
    }
    end
}

/// Every tenant the randomized run can create.
fn tenants() -> Vec<TenantId> {
    let mut t: Vec<TenantId> = (0..=255u8).map(testing::tenant_id).collect();
    t.extend((0..50).map(|i| org(1000 + i).as_uuid().to_string().parse::<TenantId>().unwrap()));
    t
}

/// Every row of every projection for the run's organizations and tenants.
#[derive(Debug, PartialEq)]
struct Snapshot {
    checkpoints: Vec<u64>,
    docs: Vec<(Projection, Vec<(OrgId, serde_json::Value)>)>,
    audit: Vec<AuditEntry>,
}

async fn snapshot(sink: &dyn ProjectionSink, orgs: u32) -> Snapshot {
    let ids: Vec<OrgId> = (0..orgs).map(org).collect();
    let mut docs = Vec::new();
    let mut checkpoints = Vec::new();
    for p in Projection::ALL {
        checkpoints.push(sink.checkpoint(p).await.unwrap());
        let mut d: Vec<(OrgId, serde_json::Value)> = sink.load(p, &ids).await.unwrap().into_iter().collect();
        d.sort_by_key(|(o, _)| *o);
        docs.push((p, d));
    }
    let mut audit = Vec::new();
    for t in tenants() {
        audit.extend(sink.audit(&AuditQuery::all(t)).await.unwrap());
    }
    audit.sort_by(|x, y| x.id.cmp(&y.id));
    Snapshot {
        checkpoints,
        docs,
        audit,
    }
}

/// Live runners follow a randomized run of 2,000 commands over 50 organizations; a rebuild
/// from 0 then gives exactly the same rows.
async fn rebuild_equality(store: Arc<dyn EventStore>, live: Arc<dyn ProjectionSink>) {
    let app = app_on(store.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut runners = Vec::new();
    for p in Projection::ALL {
        let runner = Runner::new(store.clone(), live.clone(), p).with_batch(37);
        let mut stop = stop_rx.clone();
        runners.push(tokio::spawn(async move {
            runner
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    let accepted = random_run(&app, 50, 2000, 7).await;
    assert!(
        accepted > 500,
        "the run should exercise the rules, accepted {accepted}"
    );
    // Let the live runners reach the end of the log, then stop them.
    let end = committed_end(store.as_ref(), 50).await;
    for _ in 0..1000 {
        let mut done = true;
        for p in Projection::ALL {
            done &= live.checkpoint(p).await.unwrap() >= end;
        }
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for r in runners {
        r.await.unwrap().unwrap();
    }
    let live_rows = snapshot(live.as_ref(), 50).await;
    assert!(live_rows.checkpoints.iter().all(|c| *c == end));
    assert!(
        live_rows.audit.len() > 100,
        "audit rows: {}",
        live_rows.audit.len()
    );
    // The views the application computes from events agree with the projection.
    let org_docs = &live_rows.docs[0].1;
    for (o, doc) in org_docs {
        let view = app.view(*o).await.unwrap().unwrap();
        assert_eq!(serde_json::to_value(&view).unwrap(), *doc);
    }
    assert!(!format!("{live_rows:?}").contains("projection-test-secret"));
    // Rebuild in place from position 0.
    Runner::rebuild_all(store.clone(), live.clone(), 500, |_| {})
        .await
        .unwrap();
    let rebuilt_rows = snapshot(live.as_ref(), 50).await;
    assert_eq!(live_rows, rebuilt_rows);
}

/// A sink that fails every commit after the first `ok` ones: a crash between folding a batch
/// and committing its rows and checkpoint.
struct CrashingSink {
    inner: Arc<dyn ProjectionSink>,
    ok: u32,
    commits: AtomicU32,
}

#[async_trait]
impl ProjectionSink for CrashingSink {
    async fn checkpoint(&self, p: Projection) -> Result<u64, SinkError> {
        self.inner.checkpoint(p).await
    }
    async fn load(
        &self,
        p: Projection,
        orgs: &[OrgId],
    ) -> Result<std::collections::HashMap<OrgId, serde_json::Value>, SinkError> {
        self.inner.load(p, orgs).await
    }
    async fn commit(&self, p: Projection, changes: Changes) -> Result<(), SinkError> {
        if self.commits.fetch_add(1, Ordering::SeqCst) >= self.ok {
            return Err(SinkError::Injected);
        }
        self.inner.commit(p, changes).await
    }
    async fn reset(&self, p: Projection) -> Result<(), SinkError> {
        self.inner.reset(p).await
    }
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, SinkError> {
        self.inner.audit(query).await
    }
    async fn tenant_known(&self, tenant: TenantId) -> Result<bool, SinkError> {
        self.inner.tenant_known(tenant).await
    }
    async fn organizations(&self, p: Projection, limit: u32) -> Result<Vec<OrgId>, SinkError> {
        self.inner.organizations(p, limit).await
    }
    async fn tree_heads(
        &self,
        logs: &[keyledger_store::merkle::AuditLog],
    ) -> Result<
        std::collections::BTreeMap<keyledger_store::merkle::AuditLog, keyledger_store::merkle::Frontier>,
        SinkError,
    > {
        self.inner.tree_heads(logs).await
    }
}

#[async_trait]
impl keyledger_store::merkle::AuditTrees for CrashingSink {
    async fn tree_size(&self, log: AuditLog) -> Result<u64, TreeError> {
        self.inner.tree_size(log).await
    }
    async fn tree_sizes(&self) -> Result<std::collections::BTreeMap<AuditLog, u64>, TreeError> {
        self.inner.tree_sizes().await
    }
    async fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Result<Vec<Option<Hash>>, TreeError> {
        self.inner.nodes(log, addrs).await
    }
    async fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        self.inner.leaf_hashes(log, start, end).await
    }
}

/// A runner killed between folding a batch and committing its rows and checkpoint: after a
/// restart from the checkpoint no row is lost or doubled.
async fn crash_safety(
    store: Arc<dyn EventStore>,
    inner: Arc<dyn ProjectionSink>,
    reference: Arc<dyn ProjectionSink>,
) {
    let app = app_on(store.clone());
    random_run(&app, 10, 300, 11).await;
    // On PostgreSQL, wait until catch-up readers can see the whole run (the xid fence).
    let end = committed_end(store.as_ref(), 10).await;
    let log = loop {
        let log = store.read_all(GlobalPosition(0), usize::MAX).await.unwrap();
        if log.last().is_some_and(|e| e.global_position.0 >= end) {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    for p in Projection::ALL {
        let crashing = Arc::new(CrashingSink {
            inner: inner.clone(),
            ok: 3,
            commits: AtomicU32::new(0),
        });
        let err = Runner::new(store.clone(), crashing, p)
            .with_batch(16)
            .catch_up()
            .await
            .unwrap_err();
        assert!(matches!(err, RunnerError::Sink(SinkError::Injected)), "{err:?}");
        // Three batches of 16 committed, the fourth was lost whole.
        assert_eq!(
            inner.checkpoint(p).await.unwrap(),
            log[3 * 16 - 1].global_position.0
        );
        // Restart: resume from the committed checkpoint.
        Runner::new(store.clone(), inner.clone(), p)
            .with_batch(16)
            .catch_up()
            .await
            .unwrap();
    }
    Runner::rebuild_all(store.clone(), reference.clone(), 1000, |_| {})
        .await
        .unwrap();
    let after_restart = snapshot(inner.as_ref(), 10).await;
    let expected = snapshot(reference.as_ref(), 10).await;
    assert!(!expected.audit.is_empty());
    assert_eq!(after_restart, expected, "no row lost or doubled");
}

fn memory_store() -> Arc<dyn EventStore> {
    Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rebuild_gives_the_rows_of_the_live_runners() {
    rebuild_equality(memory_store(), Arc::new(MemorySink::default())).await;
}

#[tokio::test]
async fn memory_crash_between_rows_and_checkpoint_loses_and_doubles_nothing() {
    crash_safety(
        memory_store(),
        Arc::new(MemorySink::default()),
        Arc::new(MemorySink::default()),
    )
    .await;
}

/// One runner over every projection (how `serve` runs them on SQLite) resumes each projection
/// from its own checkpoint: projections left at different positions end with the rows of a
/// rebuild, none lost or doubled.
async fn one_runner_resumes_each_projection(
    store: Arc<dyn EventStore>,
    inner: Arc<dyn ProjectionSink>,
    reference: Arc<dyn ProjectionSink>,
) {
    let app = app_on(store.clone());
    random_run(&app, 10, 300, 12).await;
    let end = committed_end(store.as_ref(), 10).await;
    let wait = std::time::Duration::from_secs(30);
    // Key health folded to the end, the tenant audit to position 48 (three batches of 16
    // committed, then a crash), the other two not at all.
    assert!(
        Runner::new(store.clone(), inner.clone(), Projection::KeyHealth)
            .catch_up_to(end, wait)
            .await
            .unwrap()
    );
    let crashing = Arc::new(CrashingSink {
        inner: inner.clone(),
        ok: 3,
        commits: AtomicU32::new(0),
    });
    Runner::new(store.clone(), crashing, Projection::TenantAudit)
        .with_batch(16)
        .catch_up()
        .await
        .unwrap_err();
    let checkpoints: Vec<u64> = futures::future::try_join_all(Projection::ALL.map(|p| inner.checkpoint(p)))
        .await
        .unwrap();
    assert_eq!(
        checkpoints
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "{checkpoints:?}"
    );
    assert!(
        Runner::over(store.clone(), inner.clone(), Projection::ALL.to_vec())
            .with_batch(50)
            .catch_up_to(end, wait)
            .await
            .unwrap()
    );
    Runner::rebuild_all(store.clone(), reference.clone(), 1000, |_| {})
        .await
        .unwrap();
    assert_eq!(
        snapshot(inner.as_ref(), 10).await,
        snapshot(reference.as_ref(), 10).await
    );
}

#[tokio::test]
async fn memory_one_runner_resumes_each_projection_from_its_checkpoint() {
    one_runner_resumes_each_projection(
        memory_store(),
        Arc::new(MemorySink::default()),
        Arc::new(MemorySink::default()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_runner_resumes_each_projection_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = sqlite(&dir, "k.db").await;
    one_runner_resumes_each_projection(store, sink, Arc::new(MemorySink::default())).await;
}

async fn sqlite(dir: &tempfile::TempDir, name: &str) -> (Arc<dyn EventStore>, Arc<dyn ProjectionSink>) {
    let store = keyledger_sqlite::SqliteStore::open(&dir.path().join(name), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
    (Arc::new(store), sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rebuild_gives_the_rows_of_the_live_runners() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = sqlite(&dir, "k.db").await;
    rebuild_equality(store, sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_between_rows_and_checkpoint_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = sqlite(&dir, "k.db").await;
    crash_safety(store, sink, Arc::new(MemorySink::default())).await;
}

async fn postgres(prefix: &str) -> Option<(Arc<dyn EventStore>, Arc<dyn ProjectionSink>, TestDatabase)> {
    let db = TestDatabase::create(prefix).await?;
    let store = keyledger_postgres::PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let sink = Arc::new(keyledger_postgres::PgProjections::new(&store));
    Some((Arc::new(store), sink, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rebuild_gives_the_rows_of_the_live_runners() {
    let Some((store, sink, _db)) = postgres("kl_rebuild").await else {
        return;
    };
    rebuild_equality(store, sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_between_rows_and_checkpoint_loses_and_doubles_nothing() {
    let Some((store, sink, _db)) = postgres("kl_crash").await else {
        return;
    };
    crash_safety(store, sink, Arc::new(MemorySink::default())).await;
}
