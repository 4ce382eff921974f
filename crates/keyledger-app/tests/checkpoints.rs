//! `App::record_checkpoint`: signed checkpoints go to stream `audit` as the engine, with
//! optimistic concurrency against other writers (another instance), once per log and size,
//! and never into an organization's state (ADR 0025).

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::FakeVault;
use keyledger_app::*;
use keyledger_domain::testing::{self, platform, tenant_a};
use keyledger_domain::*;
use keyledger_store::conformance::checkpoint_signed;
use keyledger_store::{EventStore, InMemoryStore, KeyRing};

fn app(store: Arc<InMemoryStore>) -> App {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    App::new(store, Arc::new(FakeVault::default()), clock, AppConfig::default())
}

fn checkpoint(log: AuditLog, tree_size: u64) -> AuditCheckpointSigned {
    match checkpoint_signed(log, tree_size).event {
        Event::AuditCheckpointSigned(c) => c,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn checkpoints_are_appended_by_the_engine_in_order_and_once() {
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let (one, two) = (app(store.clone()), app(store.clone()));
    let first = one
        .record_checkpoint(checkpoint(AuditLog::Global, 3))
        .await
        .unwrap();
    assert_eq!(
        (first.stream, first.last_version, first.repeat),
        (StreamId::Audit, StreamVersion(1), false)
    );
    // Another instance has not seen version 1: it finds the head and appends after it.
    let second = two
        .record_checkpoint(checkpoint(AuditLog::Global, 5))
        .await
        .unwrap();
    assert_eq!(second.last_version, StreamVersion(2));
    let third = one
        .record_checkpoint(checkpoint(AuditLog::Org(testing::org_id()), 2))
        .await
        .unwrap();
    assert_eq!(third.last_version, StreamVersion(3));
    // The same log at the same size again: the first append's result, nothing stored.
    let again = two
        .record_checkpoint(checkpoint(AuditLog::Global, 3))
        .await
        .unwrap();
    assert!(again.repeat);
    assert_eq!(again.last_position, first.last_position);

    let stored = store
        .read_stream(StreamId::Audit, StreamVersion(1))
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    for e in &stored {
        assert_eq!(e.actor.kind, ActorKind::System);
        assert_eq!(e.event_type, "AuditCheckpointSigned");
    }
    let sizes: Vec<u64> = stored
        .iter()
        .map(|e| match store.open(e).unwrap() {
            Event::AuditCheckpointSigned(c) => c.tree_size,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [3, 5, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checkpoints_from_two_instances_all_land() {
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let (one, two) = (Arc::new(app(store.clone())), Arc::new(app(store.clone())));
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let a = if i % 2 == 0 { one.clone() } else { two.clone() };
        tasks.push(tokio::spawn(async move {
            a.record_checkpoint(checkpoint(AuditLog::Global, i + 1)).await
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("every checkpoint lands, retrying lost races");
    }
    let stored = store
        .read_stream(StreamId::Audit, StreamVersion(1))
        .await
        .unwrap();
    assert_eq!(stored.len(), 10);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, e)| e.stream_version == StreamVersion(i as u64 + 1))
    );
}

#[tokio::test]
async fn a_checkpoint_changes_no_organization() {
    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let app = app(store.clone());
    let request = CommandRequest {
        org_id: testing::org_id(),
        actor: platform(),
        source_ip: None,
        command_id: None,
        correlation_id: None,
        if_match: None,
        intent: Intent::Register {
            name: "Contoso".into(),
            plan: Plan::enterprise("standard"),
            tenants: vec![tenant_a()],
        },
    };
    let registered = app.handle(request).await.unwrap();
    app.record_checkpoint(checkpoint(
        AuditLog::Org(testing::org_id()),
        registered.view.version,
    ))
    .await
    .unwrap();
    let view = app.view(testing::org_id()).await.unwrap().unwrap();
    assert_eq!(view.version, registered.view.version);
    let page = app
        .stream_page(testing::org_id(), StreamVersion(1), 100)
        .await
        .unwrap();
    assert!(
        page.iter()
            .all(|(e, _)| e.stream_id == StreamId::for_org(testing::org_id()))
    );
}
