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

/// A runner folds past checkpoints of stream `audit` (ADR 0025): its checkpoint reaches the
/// last event, and the organization's document is there and unaffected.
#[tokio::test]
async fn a_runner_moves_past_the_audit_stream() {
    use keyledger_domain::event::{OrganizationRegistered, Tenant};
    use keyledger_domain::{AuditLog, Event, OrgId, Plan, StreamId, StreamVersion, TenantId};
    use keyledger_projection::{Projection, Runner};
    use keyledger_store::NewEvent;
    use keyledger_store::conformance::{checkpoint_signed, metadata};

    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new(Arc::new(KeyRing::generate())));
    let sink = Arc::new(MemorySink::default());
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
