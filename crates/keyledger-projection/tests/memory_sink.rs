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
