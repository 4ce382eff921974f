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

/// A store with `events` tenant additions on each of `orgs` new organizations' streams.
async fn grow(store: &InMemoryStore, streams: &[StreamId], events: u64) {
    for stream in streams {
        let head = store.read_stream(*stream, StreamVersion(1)).await.unwrap().len();
        let head = StreamVersion(u64::try_from(head).unwrap());
        let new = (0..events)
            .map(|i| keyledger_store::conformance::tenant_added(&format!("tenant {i}")))
            .collect();
        store.append(*stream, head, new, None).await.unwrap();
    }
}

/// The checkpoints in stream `audit`, as (log, size), in order.
async fn recorded(store: &InMemoryStore) -> Vec<(AuditLog, u64)> {
    store
        .read_stream(StreamId::Audit, StreamVersion(1))
        .await
        .unwrap()
        .iter()
        .map(|e| match store.open(e).unwrap() {
            Event::AuditCheckpointSigned(c) => (c.log, c.tree_size),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_round_signs_the_logs_that_grew_and_the_global_log_only_with_them() {
    use keyledger_projection::{MemorySink, Projection, Runner};
    use keyledger_store::merkle::AuditTrees;

    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::over(store.clone(), sink.clone(), Projection::ALL.to_vec());
    let signer = keyledger_audit::AuditSigner::generate("keyledger.test").unwrap();
    let verifier = signer.verifier().clone();
    let app = Arc::new(app(store.clone()));
    let checkpointer = Checkpointer::new(app.clone(), sink.clone(), signer);

    // Nothing yet: nothing to sign.
    assert_eq!(checkpointer.round().await.unwrap(), Round::default());

    let (a, b) = (
        StreamId::for_org(OrgId::new_v7()),
        StreamId::for_org(OrgId::new_v7()),
    );
    let (log_a, log_b) = (
        AuditLog::Org(a.org_id().unwrap()),
        AuditLog::Org(b.org_id().unwrap()),
    );
    grow(&store, &[a, b], 3).await;
    runner.catch_up().await.unwrap();
    let round = checkpointer.round().await.unwrap();
    let signed: Vec<_> = round.organizations.iter().map(|c| (c.log, c.tree_size)).collect();
    assert_eq!(signed.len(), 2);
    assert!(signed.contains(&(log_a, 3)) && signed.contains(&(log_b, 3)));
    let global = round.global.clone().expect("the global log is signed with them");
    assert_eq!(global.tree_size, 6);
    // Each note is signed by the key, over the stored tree's root.
    for c in round.organizations.iter().chain([&global]) {
        let opened = keyledger_audit::open_checkpoint(&c.note, &verifier).unwrap();
        assert_eq!(opened.size(), c.tree_size);
        assert_eq!(*opened.root(), sink.root(c.log, c.tree_size).await.unwrap());
    }
    assert_eq!(recorded(&store).await.len(), 3);

    // The checkpoint events grow the global log, but alone they sign nothing.
    runner.catch_up().await.unwrap();
    assert_eq!(sink.tree_size(AuditLog::Global).await.unwrap(), 9);
    assert_eq!(checkpointer.round().await.unwrap(), Round::default());

    // One organization grows: it and the global log are signed, the other is not.
    grow(&store, &[b], 2).await;
    runner.catch_up().await.unwrap();
    let round = checkpointer.round().await.unwrap();
    let signed: Vec<_> = round.organizations.iter().map(|c| (c.log, c.tree_size)).collect();
    assert_eq!(signed, [(log_b, 5)]);
    assert_eq!(round.global.map(|g| g.tree_size), Some(11));

    // Events that no organization log holds (an organization's release record) grow only
    // the global log: it is signed at the next round, and a quiet round after signs nothing.
    runner.catch_up().await.unwrap();
    assert_eq!(checkpointer.round().await.unwrap(), Round::default());
    let releases = StreamId::releases_of(a.org_id().unwrap());
    let release = keyledger_store::NewEvent {
        event: Event::DataKeyReleased(keyledger_domain::event::DataKeyReleased {
            dek_id: DekId::FIRST,
            wrapped_by: WrappedBy::Provider {
                internal_key_id: "ik-1".into(),
            },
            active: true,
        }),
        metadata: keyledger_store::conformance::tenant_added("x").metadata,
    };
    store
        .append(releases, StreamVersion::NONE, vec![release], None)
        .await
        .unwrap();
    runner.catch_up().await.unwrap();
    let global_before = sink.tree_size(AuditLog::Global).await.unwrap();
    let round = checkpointer.round().await.unwrap();
    assert!(round.organizations.is_empty());
    assert_eq!(round.global.map(|g| g.tree_size), Some(global_before));
    runner.catch_up().await.unwrap();
    assert_eq!(checkpointer.round().await.unwrap(), Round::default());

    // A reader's `current` is the latest, and signs only when the log grew.
    let latest = checkpointer.current(log_a).await.unwrap().unwrap();
    assert_eq!(latest.tree_size, 3);
    let before = recorded(&store).await.len();
    grow(&store, &[a], 1).await;
    runner.catch_up().await.unwrap();
    assert_eq!(checkpointer.current(log_a).await.unwrap().unwrap().tree_size, 4);
    assert_eq!(recorded(&store).await.len(), before + 1);
    assert_eq!(checkpointer.latest(log_a).await.unwrap().unwrap().tree_size, 4);
}

#[tokio::test]
async fn two_checkpointers_on_one_store_record_each_checkpoint_once() {
    use keyledger_projection::{MemorySink, Projection, Runner};

    let store = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::over(store.clone(), sink.clone(), Projection::ALL.to_vec());
    // Two instances sharing one signing key file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit-signing-key");
    keyledger_audit::AuditSigner::generate("keyledger.test")
        .unwrap()
        .create_file(&path)
        .unwrap();
    let signer = |path| keyledger_audit::AuditSigner::from_file(path).unwrap();
    let one = Checkpointer::new(Arc::new(app(store.clone())), sink.clone(), signer(&path));
    let two = Checkpointer::new(Arc::new(app(store.clone())), sink.clone(), signer(&path));

    let org = StreamId::for_org(OrgId::new_v7());
    grow(&store, &[org], 4).await;
    runner.catch_up().await.unwrap();
    // Both decide at once: whichever records a checkpoint first, the other's append of the
    // same log and size is a repeat, with the same note (Ed25519 is deterministic).
    let (first, second) = tokio::join!(one.round(), two.round());
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        recorded(&store).await,
        [(AuditLog::Org(org.org_id().unwrap()), 4), (AuditLog::Global, 4)]
    );
    for round in [&first, &second] {
        if let Some(global) = &round.global {
            assert_eq!(global.tree_size, 4);
        }
    }
    if second.global.is_some() && first.global.is_some() {
        assert_eq!(first, second);
    }
    // A later round of either finds them recorded and signs nothing.
    assert_eq!(two.round().await.unwrap(), Round::default());
    assert_eq!(one.round().await.unwrap(), Round::default());
}
