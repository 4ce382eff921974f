//! The sink conformance suite on the in-memory sink.

use std::sync::Arc;

use keyledger_projection::{MemorySink, ProjectionSink};
use keyledger_store::{EventStore, InMemoryStore, KeyRing};

async fn memory() -> Option<(Arc<dyn EventStore>, Arc<dyn ProjectionSink>, ())> {
    Some((
        Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate()))),
        Arc::new(MemorySink::default()),
        (),
    ))
}

keyledger_projection::sink_conformance!(memory);

/// Registers a new organization (free plan, one tenant) in `store`: its stream's version 1.
async fn registered_org(store: &dyn EventStore) -> keyledger_domain::OrgId {
    use keyledger_domain::event::{OrganizationRegistered, Tenant};
    use keyledger_domain::{Event, OrgId, Plan, StreamId, StreamVersion, TenantId};
    use keyledger_store::NewEvent;
    use keyledger_store::conformance::metadata;

    let org = OrgId::new_v7();
    let registered = NewEvent {
        event: Event::OrganizationRegistered(OrganizationRegistered {
            org_id: org,
            name: "Contoso".into(),
            plan: Plan::free(),
            tenants: vec![Tenant {
                tenant_id: TenantId::new_v7(),
                name: "Default".into(),
            }],
            registered_at: chrono::Utc::now(),
        }),
        metadata: metadata(),
    };
    store
        .append(
            StreamId::for_org(org),
            StreamVersion::NONE,
            vec![registered],
            None,
        )
        .await
        .unwrap();
    org
}

/// A runner folds past checkpoints of stream `audit` (ADR 0025): its checkpoint reaches the
/// last event, and the organization's document is there and unaffected.
#[tokio::test]
async fn a_runner_moves_past_the_audit_stream() {
    use keyledger_domain::{AuditLog, StreamId, StreamVersion};
    use keyledger_projection::{Projection, Runner};
    use keyledger_store::conformance::checkpoint_signed;

    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let sink = Arc::new(MemorySink::default());
    let org = registered_org(&*store).await;
    let last = store
        .append(
            StreamId::Audit,
            StreamVersion::NONE,
            vec![checkpoint_signed(AuditLog::Global, 1)],
            None,
        )
        .await
        .unwrap()
        .last_position;
    for projection in Projection::ALL {
        let runner = Runner::new(store.clone(), sink.clone(), projection);
        assert_eq!(runner.catch_up().await.unwrap(), last.0, "{projection:?}");
        assert_eq!(sink.checkpoint(projection).await.unwrap(), last.0);
    }
    let docs = sink
        .load(Projection::OrganizationEncryption, &[org])
        .await
        .unwrap();
    assert_eq!(docs[&org]["version"], 1);
}

/// A commit writes only the documents its events changed: a plan change rewrites the
/// organization's view, not its other projections' documents (issue 12).
#[tokio::test]
async fn a_commit_writes_only_the_documents_that_changed() {
    use keyledger_domain::event::PlanChanged;
    use keyledger_domain::{Event, Plan, StreamId, StreamVersion};
    use keyledger_projection::{Projection, Runner};
    use keyledger_store::NewEvent;
    use keyledger_store::conformance::metadata;

    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let sink = Arc::new(MemorySink::default());
    let org = registered_org(&*store).await;
    let runner = Runner::over(store.clone(), sink.clone(), Projection::ALL.to_vec());
    runner.catch_up().await.unwrap();
    let view = |sink: &MemorySink| sink.rows().docs[&(Projection::OrganizationEncryption, org)].clone();
    let (written, before) = (sink.docs_written(), view(&sink));
    let changed = NewEvent {
        event: Event::PlanChanged(PlanChanged {
            from: Plan::free(),
            to: Plan::pro(),
            reason: "upgrade".into(),
        }),
        metadata: metadata(),
    };
    store
        .append(StreamId::for_org(org), StreamVersion(1), vec![changed], None)
        .await
        .unwrap();
    runner.catch_up().await.unwrap();
    assert_ne!(view(&sink), before, "the view did not take the plan change");
    assert_eq!(
        sink.docs_written() - written,
        1,
        "a plan change wrote documents it did not change"
    );
}

/// A live runner commits an event after a quiet spell at once, and gathers the events that
/// arrive within its linger of the last commit into one commit (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runner_gathers_what_arrives_within_its_linger() {
    use std::time::{Duration, Instant};

    use keyledger_domain::StreamVersion;
    use keyledger_projection::{Projection, Runner};
    use keyledger_store::conformance::{new_stream, tenant_added};

    const LINGER: Duration = Duration::from_secs(2);
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::new(store.clone(), sink.clone(), Projection::AuditTree).with_linger(LINGER);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let append = || async {
        store
            .append(new_stream(), StreamVersion::NONE, vec![tenant_added("t")], None)
            .await
            .unwrap()
            .last_position
            .0
    };
    // How long until the projection's checkpoint reaches `position`.
    let committed = |position: u64| {
        let sink = sink.clone();
        async move {
            let start = Instant::now();
            while sink.checkpoint(Projection::AuditTree).await.unwrap() < position {
                assert!(start.elapsed() < Duration::from_secs(30), "never committed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            start.elapsed()
        }
    };
    let first = append().await;
    assert!(
        committed(first).await < LINGER,
        "the first event waited for the linger"
    );
    assert_eq!(sink.commits(), 1);
    // Two events apart in time, both within the linger of the first commit: one commit.
    append().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = append().await;
    committed(third).await;
    assert_eq!(
        sink.commits(),
        2,
        "the events within the linger were committed apart"
    );
    // After a quiet spell longer than the linger, an event is committed at once again.
    tokio::time::sleep(LINGER + Duration::from_millis(100)).await;
    let fourth = append().await;
    assert!(
        committed(fourth).await < LINGER,
        "an event after a quiet spell waited"
    );
    assert_eq!(sink.commits(), 3);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

mod audit_tree {
    use std::sync::Arc;

    use keyledger_projection::{MemorySink, ProjectionSink};
    use keyledger_store::merkle::AuditTrees;
    use keyledger_store::{EventStore, InMemoryStore, KeyRing};

    type Mounted = (
        Arc<dyn EventStore>,
        Arc<dyn ProjectionSink>,
        Arc<dyn AuditTrees>,
        (),
    );

    async fn memory() -> Option<Mounted> {
        let sink = Arc::new(MemorySink::default());
        Some((
            Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate()))),
            sink.clone(),
            sink,
            (),
        ))
    }

    keyledger_projection::tree_conformance!(memory);
}
