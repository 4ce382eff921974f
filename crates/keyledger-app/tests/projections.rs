//! Projection runners over the application's events: rebuild equality after a randomized run,
//! and crash safety between a batch's rows and its checkpoint.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use common::FakeVault;
use keyledger_app::*;
use keyledger_domain::testing::{self, admin, billing, platform, system};
use keyledger_domain::*;
use keyledger_projection::*;
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

fn admin_of(o: OrgId) -> Actor {
    let mut a = admin();
    a.scope = Scope::everything();
    let _ = o;
    a
}

async fn random_run(app: &App, orgs: u32, commands: u32, seed: u64) -> u32 {
    let mut rng = Lcg(seed);
    let mut accepted = 0;
    for i in 0..orgs {
        let r = app
            .handle(Request {
                org_id: org(i),
                actor: platform(),
                source_ip: None,
                command_id: None,
                correlation_id: None,
                if_match: None,
                action: Action::Register {
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
        let (actor, action) = match rng.next(9) {
            0 | 1 => (
                billing(),
                Action::ChangePlan {
                    plan: [Plan::free(), Plan::enterprise("standard"), Plan::pro()][rng.next(3) as usize]
                        .clone(),
                    reason: "random".into(),
                },
            ),
            2 => (
                admin_of(o),
                Action::EnableCustomerManagedKey(connection(&keys[rng.next(3) as usize])),
            ),
            3 => (
                admin_of(o),
                Action::RotateCustomerManagedKey(ConnectionPatch {
                    key_identifier: Some(keys[rng.next(3) as usize].clone()),
                    ..Default::default()
                }),
            ),
            4 => (
                admin_of(o),
                Action::EditCustomerManagedKey(ConnectionPatch {
                    client_secret: Some(SecretString::from(format!("s{}", rng.next(3)))),
                    ..Default::default()
                }),
            ),
            5 => (
                admin_of(o),
                Action::SwitchToProviderManagedKey {
                    abandon_lost_data: false,
                },
            ),
            6 => (
                system(),
                Action::RecordKeyHealth {
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
                Action::AddTenant(Tenant {
                    tenant_id: testing::tenant_id(rng.next(250) as u8),
                    name: "T".into(),
                }),
            ),
            _ => (
                platform(),
                Action::RemoveTenant(testing::tenant_id(rng.next(250) as u8)),
            ),
        };
        let r = app
            .handle(Request {
                org_id: o,
                actor,
                source_ip: None,
                command_id: None,
                correlation_id: None,
                if_match: None,
                action,
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

fn setup() -> (Arc<InMemoryStore>, App) {
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let vault = Arc::new(FakeVault::default());
    vault.add("cmk", "v1");
    vault.add("cmk", "v2");
    vault.add("cmk-2027", "v1");
    let app = App::new(
        store.clone(),
        vault,
        Arc::new(ManualClock::new(Utc::now())),
        AppConfig::default(),
    );
    (store, app)
}

async fn rebuilt(store: Arc<InMemoryStore>) -> MemoryRows {
    let sink = Arc::new(MemorySink::default());
    for p in Projection::ALL {
        Runner::new(store.clone(), sink.clone(), p)
            .rebuild(|_| {})
            .await
            .unwrap();
    }
    sink.rows()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_from_zero_gives_the_rows_of_the_live_runners() {
    let (store, app) = setup();
    let live = Arc::new(MemorySink::default());
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
    let end = store
        .read_all(GlobalPosition(0), usize::MAX)
        .await
        .unwrap()
        .last()
        .unwrap()
        .global_position
        .0;
    for _ in 0..500 {
        let rows = live.rows();
        if Projection::ALL
            .iter()
            .all(|p| rows.checkpoints.get(p) == Some(&end))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for r in runners {
        r.await.unwrap().unwrap();
    }
    let live_rows = live.rows();
    let rebuilt_rows = rebuilt(store.clone()).await;
    assert_eq!(live_rows.checkpoints, rebuilt_rows.checkpoints);
    assert_eq!(live_rows.docs, rebuilt_rows.docs);
    let mut a = live_rows.audit.clone();
    let mut b = rebuilt_rows.audit.clone();
    a.sort_by(|x, y| x.id.cmp(&y.id));
    b.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(a, b);
    assert!(!a.is_empty());
    // And the views the application computes from events agree with the projection.
    for i in 0..50 {
        let view = app.view(org(i)).await.unwrap().unwrap();
        let doc = &live_rows.docs[&(Projection::OrganizationEncryption, org(i))];
        assert_eq!(serde_json::to_value(&view).unwrap(), *doc);
    }
    // No secret reached any row.
    let all = format!("{:?}", live_rows);
    assert!(!all.contains("projection-test-secret"));
}

/// A sink that fails every commit after the first `ok` ones: a crash between folding a batch
/// and committing its rows and checkpoint.
struct CrashingSink {
    inner: Arc<MemorySink>,
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
    async fn audit(
        &self,
        tenant: TenantId,
        after: u64,
        limit: u32,
        action: Option<&str>,
    ) -> Result<Vec<AuditEntry>, SinkError> {
        self.inner.audit(tenant, after, limit, action).await
    }
}

#[tokio::test]
async fn a_runner_killed_between_rows_and_checkpoint_loses_and_doubles_nothing() {
    let (store, app) = setup();
    random_run(&app, 10, 300, 11).await;
    let inner = Arc::new(MemorySink::default());
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
        let log = store.read_all(GlobalPosition(0), usize::MAX).await.unwrap();
        assert_eq!(inner.rows().checkpoints[&p], log[3 * 16 - 1].global_position.0);
        // Restart: resume from the committed checkpoint.
        Runner::new(store.clone(), inner.clone(), p)
            .with_batch(16)
            .catch_up()
            .await
            .unwrap();
    }
    let after_restart = inner.rows();
    let reference = rebuilt(store).await;
    assert_eq!(after_restart.docs, reference.docs);
    assert_eq!(
        after_restart.audit.len(),
        reference.audit.len(),
        "no audit row lost or doubled"
    );
    assert_eq!(after_restart.audit, reference.audit);
}
