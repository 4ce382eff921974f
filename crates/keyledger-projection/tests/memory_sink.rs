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
