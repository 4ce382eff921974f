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

/// Two stores on one file, as two processes would be: each writer caches the heads of the
/// streams it appended to, and must notice the other's commits. An append built on a stale head
/// is a typed conflict (not a failed group), and the next one chains onto the other's event.
#[tokio::test]
async fn a_writer_notices_appends_by_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let ring = Arc::new(KeyRing::generate());
    let first = SqliteStore::open(&path, ring.clone()).await.unwrap();
    let second = SqliteStore::open(&path, ring).await.unwrap();
    let stream = new_stream();
    first
        .append(stream, StreamVersion::NONE, vec![tenant_added("a")], None)
        .await
        .unwrap();
    second
        .append(stream, StreamVersion(1), vec![tenant_added("b")], None)
        .await
        .unwrap();
    match first
        .append(stream, StreamVersion(1), vec![tenant_added("stale")], None)
        .await
    {
        Err(keyledger_store::StoreError::Conflict { actual, .. }) => assert_eq!(actual, StreamVersion(2)),
        other => panic!("expected a conflict at version 2, got {other:?}"),
    }
    first
        .append(stream, StreamVersion(2), vec![tenant_added("c")], None)
        .await
        .unwrap();
    let report = first.verify(VerifyScope::All).await.unwrap();
    assert_eq!((report.events_checked, report.first_break), (3, None));
    let names: Vec<String> = first
        .read_stream(stream, StreamVersion::NONE)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}

/// A group whose insert fails stores nothing of any of its appends, answers each with an error,
/// and leaves the writer's connection out of any transaction: the next group commits. The
/// failure is a trigger another connection adds, refusing one stream's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_stores_nothing_and_the_next_one_commits() {
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = Arc::new(
        SqliteStore::open(&path, Arc::new(KeyRing::generate()))
            .await
            .unwrap(),
    );
    let (refused, other) = (new_stream(), new_stream());
    let mut admin = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.stream_id = '{refused}' \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    // Both appends wait together, so they are one group (or two; either way the refused one
    // fails, and a group holding it stores nothing).
    let (a, b) = tokio::join!(
        store.append(refused, StreamVersion::NONE, vec![tenant_added("no")], None),
        store.append(other, StreamVersion::NONE, vec![tenant_added("maybe")], None),
    );
    assert!(a.is_err(), "{a:?}");
    let stored = store.read_all(GlobalPosition::START, 100).await.unwrap();
    assert!(stored.iter().all(|e| e.stream_id != refused));
    assert_eq!(stored.len(), usize::from(b.is_ok()));
    sqlx::raw_sql("DROP TRIGGER refuse")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    store
        .append(refused, StreamVersion::NONE, vec![tenant_added("yes")], None)
        .await
        .expect("the group after a failed one commits");
    let report = store.verify(VerifyScope::All).await.unwrap();
    assert_eq!(report.first_break, None);
}

/// `close` stops the writer once what came before it is committed: the WAL is folded into the
/// database file and removed (the writer's connection was the last one open), and a later
/// append gets an error rather than writing behind the closed pools.
#[tokio::test]
async fn close_commits_checkpoints_and_refuses_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let ring = Arc::new(KeyRing::generate());
    let store = SqliteStore::open(&path, ring.clone()).await.unwrap();
    let stream = new_stream();
    store
        .append(stream, StreamVersion::NONE, vec![tenant_added("a")], None)
        .await
        .unwrap();
    let wal = dir.path().join("k.db-wal");
    assert!(wal.exists(), "an open store writes through its WAL");
    store.close().await;
    assert!(!wal.exists(), "the WAL is checkpointed and removed at close");
    let late = store
        .append(stream, StreamVersion(1), vec![tenant_added("b")], None)
        .await;
    assert!(late.is_err(), "an append after close is refused: {late:?}");
    drop(store);
    let reopened = SqliteStore::open(&path, ring).await.unwrap();
    assert_eq!(
        reopened.read_all(GlobalPosition::START, 10).await.unwrap().len(),
        1
    );
}
