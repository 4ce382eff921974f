//! The projection-sink conformance suite on the SQLite tables.

use std::sync::Arc;

use keyledger_projection::ProjectionSink;
use keyledger_sqlite::{SqliteProjections, SqliteStore};
use keyledger_store::{EventStore, KeyRing};

async fn sqlite() -> Option<(Arc<dyn EventStore>, Arc<dyn ProjectionSink>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db"), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let sink = Arc::new(SqliteProjections::new(&store));
    Some((Arc::new(store), sink, dir))
}

keyledger_projection::sink_conformance!(sqlite);
