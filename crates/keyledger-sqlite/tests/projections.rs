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

mod projection_file {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use keyledger_domain::OrgId;
    use keyledger_projection::{Changes, Projection, ProjectionSink};
    use keyledger_sqlite::{SqliteProjections, SqliteStore, projections_path};
    use keyledger_store::KeyRing;
    use sqlx::Connection as _;

    fn changes(org: OrgId, checkpoint: u64) -> Changes {
        Changes {
            docs: [(org, Some(serde_json::json!({ "at": checkpoint })))].into(),
            checkpoint,
            ..Changes::default()
        }
    }

    async fn open(path: &Path) -> (SqliteStore, SqliteProjections) {
        let store = SqliteStore::open(path, Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let sink = SqliteProjections::new(&store);
        (store, sink)
    }

    /// The projection rows live in `<log>-projections`, and a runner's commit goes through while
    /// the log's one write connection is held (it used to queue on that connection).
    #[tokio::test]
    async fn projection_commits_do_not_wait_for_the_log_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let (store, sink) = open(&path).await;
        let org = OrgId::new_v7();
        let mut held = store.write_pool().acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *held).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            sink.commit(Projection::OrganizationEncryption, changes(org, 0)),
        )
        .await
        .expect("the commit does not wait for the log's writer")
        .unwrap();
        sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
        drop(held);
        let mut file =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", projections_path(&path).display()))
                .await
                .unwrap();
        let docs: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_documents")
            .fetch_one(&mut file)
            .await
            .unwrap();
        assert_eq!(docs, 1);
        store.close().await;
    }

    /// A projection whose checkpoint is past the end of the log (a log that lost its last
    /// commits) is reset when the store opens, so it is folded again from the log.
    #[tokio::test]
    async fn a_projection_ahead_of_the_log_is_reset_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let org = OrgId::new_v7();
        {
            let (store, sink) = open(&path).await;
            sink.commit(Projection::OrganizationEncryption, changes(org, 7))
                .await
                .unwrap();
            sink.commit(Projection::KeyHealth, changes(org, 0)).await.unwrap();
            store.close().await;
        }
        let (store, sink) = open(&path).await;
        assert_eq!(
            sink.checkpoint(Projection::OrganizationEncryption).await.unwrap(),
            0
        );
        assert_eq!(
            sink.document(Projection::OrganizationEncryption, org)
                .await
                .unwrap(),
            None
        );
        assert!(
            sink.document(Projection::KeyHealth, org).await.unwrap().is_some(),
            "a projection within the log is kept"
        );
        store.close().await;
    }
}

mod audit_tree {
    use std::sync::Arc;

    use keyledger_projection::ProjectionSink;
    use keyledger_sqlite::{SqliteProjections, SqliteStore};
    use keyledger_store::merkle::AuditTrees;
    use keyledger_store::{EventStore, KeyRing};

    type Mounted = (
        Arc<dyn EventStore>,
        Arc<dyn ProjectionSink>,
        Arc<dyn AuditTrees>,
        tempfile::TempDir,
    );

    async fn sqlite() -> Option<Mounted> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let sink = Arc::new(SqliteProjections::new(&store));
        Some((Arc::new(store), sink.clone(), sink, dir))
    }

    keyledger_projection::tree_conformance!(sqlite);
}
