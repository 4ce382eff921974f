//! `App::release` records every release in the organization's release stream: concurrent
//! releases of one organization are group-committed, none is lost or recorded twice, and two
//! apps over one store (two instances) both land theirs (ADR 0030).

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::FakeVault;
use keyledger_app::*;
use keyledger_domain::testing::{self, platform, tenant_a};
use keyledger_domain::*;
use keyledger_store::{EventStore, InMemoryStore, KeyRing};

fn app(store: Arc<InMemoryStore>) -> App {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    App::new(store, Arc::new(FakeVault::default()), clock, AppConfig::default())
}

fn release_request() -> ReleaseRequest {
    ReleaseRequest {
        org_id: testing::org_id(),
        actor: platform(),
        of: ReleaseOf::Active,
        source_ip: None,
        correlation_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_releases_on_two_instances_are_each_recorded_once() {
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let (one, two) = (app(store.clone()), app(store.clone()));
    one.handle(CommandRequest {
        org_id: testing::org_id(),
        actor: platform(),
        source_ip: None,
        command_id: None,
        correlation_id: None,
        if_match: None,
        intent: Intent::Register {
            name: "Contoso".into(),
            plan: Plan::pro(),
            tenants: vec![tenant_a()],
        },
    })
    .await
    .unwrap();
    let releases = (0..40).map(|i| {
        let app = if i % 2 == 0 { &one } else { &two };
        app.release(release_request())
    });
    let released = futures::future::join_all(releases).await;
    let first = released[0].as_ref().unwrap();
    for r in &released {
        let r = r.as_ref().unwrap();
        assert_eq!((r.dek_id, &r.key), (first.dek_id, &first.key));
    }
    let stream = StreamId::releases_of(testing::org_id());
    let recorded = store.read_stream(stream, StreamVersion(1)).await.unwrap();
    assert_eq!(recorded.len(), 40, "every release recorded once");
    assert!(recorded.iter().all(|e| e.event_type == "DataKeyReleased"));
    // The organization's own stream did not move.
    let org = store
        .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(1))
        .await
        .unwrap();
    assert_eq!(org.len(), 2);
}
