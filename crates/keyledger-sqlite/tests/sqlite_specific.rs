//! SQLite-only behaviour: WAL mode, durability across reopen, checkpointed files.

use std::sync::Arc;

use keyledger_domain::{GlobalPosition, StreamVersion};
use keyledger_sqlite::SqliteStore;
use keyledger_store::conformance::{cmk_enabled, new_stream, tenant_added};
use keyledger_store::{EventStore, KeyRing, VerifyScope};

#[tokio::test]
async fn database_is_in_wal_mode_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let ring = Arc::new(KeyRing::generate());
    let stream = new_stream();
    {
        let store = SqliteStore::open(&path, ring.clone()).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.write_pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        store
            .append(
                stream,
                StreamVersion::NONE,
                vec![tenant_added("a"), tenant_added("b")],
                None,
            )
            .await
            .unwrap();
        store.close().await;
    }
    let store = SqliteStore::open(&path, ring).await.unwrap();
    let events = store.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    let r = store
        .append(stream, StreamVersion(2), vec![tenant_added("c")], None)
        .await
        .unwrap();
    assert_eq!(r.first_position, GlobalPosition(3));
    assert!(store.verify(VerifyScope::All).await.unwrap().is_intact());
}

#[tokio::test]
async fn checkpointed_database_file_holds_no_clear_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::open(&path, Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let secret = "a-very-distinctive-client-secret-4711";
    store
        .append(new_stream(), StreamVersion::NONE, vec![cmk_enabled(secret)], None)
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.write_pool())
        .await
        .unwrap();
    store.close().await;
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.windows(7).any(|w| w == b"payload"),
        "the file holds the table"
    );
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
}
