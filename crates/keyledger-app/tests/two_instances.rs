//! Two application instances on one PostgreSQL database take commands concurrently on the same
//! organizations: commands are serialized by version, nothing is lost, and each projection is
//! applied once (one leader per projection, by advisory-lock lease).

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::FakeVault;
use keyledger_app::*;
use keyledger_domain::testing::{self, billing, platform};
use keyledger_domain::*;
use keyledger_postgres::testing::TestDatabase;
use keyledger_postgres::{PgProjections, PostgresStore, run_led};
use keyledger_projection::{AuditQuery, MemorySink, Projection, ProjectionSink, Runner};
use keyledger_store::{EventStore, KeyRing};

fn org(i: u32) -> OrgId {
    format!("01900000-0000-7000-8000-{:012x}", 0x2000 + i)
        .parse()
        .unwrap()
}

fn request(o: OrgId, actor: Actor, intent: Intent) -> CommandRequest {
    CommandRequest {
        org_id: o,
        actor,
        source_ip: None,
        command_id: None,
        correlation_id: None,
        if_match: None,
        intent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_database() {
    let Some(db) = TestDatabase::create("kl_two_instances").await else {
        return;
    };
    let ring = Arc::new(KeyRing::generate());
    // Two instances: separate pools, caches and runners; one key ring file in production.
    let store_a = Arc::new(PostgresStore::connect(db.url(), ring.clone()).await.unwrap());
    let store_b = Arc::new(PostgresStore::connect(db.url(), ring.clone()).await.unwrap());
    let vault = Arc::new(FakeVault::default());
    vault.add("cmk", "v1");
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app_a = Arc::new(App::new(
        store_a.clone(),
        vault.clone(),
        clock.clone(),
        AppConfig::default(),
    ));
    let app_b = Arc::new(App::new(
        store_b.clone(),
        vault.clone(),
        clock.clone(),
        AppConfig::default(),
    ));

    // Each instance runs every projection under a lease.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut runners = Vec::new();
    for (store, instance) in [(store_a.clone(), "a"), (store_b.clone(), "b")] {
        let sink = PgProjections::new(&store);
        for p in Projection::ALL {
            let url = db.url().to_owned();
            let store: Arc<dyn EventStore> = store.clone();
            let sink = sink.clone();
            let mut stop = stop_rx.clone();
            runners.push(tokio::spawn(async move {
                let r = run_led(&url, store, sink, p, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
                (instance, r)
            }));
        }
    }

    let orgs = 5;
    for i in 0..orgs {
        let app = if i % 2 == 0 { &app_a } else { &app_b };
        app.handle(request(
            org(i),
            platform(),
            Intent::Register {
                name: format!("Org {i}"),
                plan: Plan::enterprise("standard"),
                tenants: vec![testing::tenant_a()],
            },
        ))
        .await
        .unwrap();
        let key = KeyIdentifier::parse_shape("https://contoso.vault.azure.net/keys/cmk").unwrap();
        app.handle(request(
            org(i),
            testing::admin_of_any_org(),
            Intent::EnableCustomerManagedKey(testing::connection(&key)),
        ))
        .await
        .unwrap();
    }
    // 200 plan changes, alternating instances, racing on the same five organizations.
    let mut tasks = Vec::new();
    for n in 0..200u32 {
        let app = if n % 2 == 0 { app_a.clone() } else { app_b.clone() };
        tasks.push(tokio::spawn(async move {
            let plan = if n % 3 == 0 {
                Plan::free()
            } else {
                Plan::enterprise(if n % 3 == 1 { "a" } else { "b" })
            };
            app.handle(request(
                org(n % orgs),
                billing(),
                Intent::ChangePlan {
                    plan,
                    reason: format!("n{n}"),
                },
            ))
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Serialized by version: every stream is 1..=n with no gap, and each instance sees it all.
    let mut total = 0;
    let mut plan_changes = 0;
    for i in 0..orgs {
        let events = store_a
            .read_stream(StreamId::for_org(org(i)), StreamVersion(1))
            .await
            .unwrap();
        for (k, e) in events.iter().enumerate() {
            assert_eq!(e.stream_version.0, k as u64 + 1);
        }
        total += events.len();
        plan_changes += events.iter().filter(|e| e.event_type == "PlanChanged").count();
        let a = app_a.view(org(i)).await.unwrap().unwrap();
        let b = app_b.view(org(i)).await.unwrap().unwrap();
        assert_eq!(a, b);
        // The cached states equal a full replay of the stream.
        let opened: Vec<Event> = events.iter().map(|e| store_a.open(e).unwrap()).collect();
        let replayed = State::replay(opened.iter());
        assert_eq!(app_a.state(org(i)).await.unwrap(), replayed);
        assert_eq!(app_b.state(org(i)).await.unwrap(), replayed);
        assert_eq!(usize::try_from(a.version).unwrap(), events.len());
    }
    // Accepted plan changes: each one that changed the plan appended one PlanChanged.
    // The racing plan changes were recorded (those that changed the plan), not just the setup.
    assert!(
        plan_changes > orgs as usize * 2,
        "{plan_changes} plan changes of {total} events"
    );

    // Wait for the leaders to reach the end of the log, then compare with a rebuild.
    let sink = PgProjections::new(&store_a);
    let last = store_a
        .read_all(GlobalPosition(0), usize::MAX)
        .await
        .unwrap()
        .last()
        .unwrap()
        .global_position
        .0;
    for _ in 0..500 {
        let mut done = true;
        for p in Projection::ALL {
            done &= sink.checkpoint(p).await.unwrap() >= last;
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for r in runners {
        let (_, result) = r.await.unwrap();
        result.unwrap();
    }
    let reference = Arc::new(MemorySink::default());
    for p in Projection::ALL {
        Runner::new(store_a.clone(), reference.clone(), p)
            .rebuild(|_| {})
            .await
            .unwrap();
        assert_eq!(
            sink.checkpoint(p).await.unwrap(),
            reference.checkpoint(p).await.unwrap()
        );
    }
    let orgs_list: Vec<OrgId> = (0..orgs).map(org).collect();
    for p in Projection::ALL {
        let got = sink.load(p, &orgs_list).await.unwrap();
        let want = reference.load(p, &orgs_list).await.unwrap();
        assert_eq!(got, want, "{} applied once, in order", p.name());
    }
    let got = sink
        .audit(&AuditQuery::all(testing::tenant_a().tenant_id))
        .await
        .unwrap();
    let want = reference
        .audit(&AuditQuery::all(testing::tenant_a().tenant_id))
        .await
        .unwrap();
    assert_eq!(got, want, "no audit row doubled or lost");
    assert!(
        got.len() > 10,
        "downgrades and upgrades lock and unlock: {} audit rows",
        got.len()
    );
}
