//! PostgreSQL-only: several keyledger instances on one database. Each caches the heads of the
//! streams it appended to; a head made stale by another instance must give a typed conflict,
//! never a broken chain.

use std::sync::Arc;

use keyledger_domain::StreamVersion;
use keyledger_postgres::PostgresStore;
use keyledger_postgres::testing::TestDatabase;
use keyledger_store::conformance::{new_stream, tenant_added};
use keyledger_store::{EventStore, KeyRing, StoreError, VerifyScope};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cached_head_in_another_instance_is_a_conflict() {
    let Some(db) = TestDatabase::create("kl_multi").await else {
        return;
    };
    let ring = Arc::new(KeyRing::generate());
    let a = PostgresStore::connect(db.url(), ring.clone()).await.unwrap();
    let b = PostgresStore::connect(db.url(), ring).await.unwrap();
    let stream = new_stream();
    a.append(stream, StreamVersion(0), vec![tenant_added("a1")], None)
        .await
        .unwrap();
    // A now caches head 1; B appends version 2 behind its back.
    b.append(stream, StreamVersion(1), vec![tenant_added("b2")], None)
        .await
        .unwrap();
    match a
        .append(stream, StreamVersion(1), vec![tenant_added("a2")], None)
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, StreamVersion(2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // After the conflict A reads the head again and appends at the right place.
    a.append(stream, StreamVersion(2), vec![tenant_added("a3")], None)
        .await
        .unwrap();
    b.append(stream, StreamVersion(3), vec![tenant_added("b4")], None)
        .await
        .unwrap();
    let events = a.read_stream(stream, StreamVersion::NONE).await.unwrap();
    assert_eq!(events.len(), 4);
    assert!(a.verify(VerifyScope::Stream(stream)).await.unwrap().is_intact());
    assert!(b.verify(VerifyScope::All).await.unwrap().is_intact());
}

/// Another instance's commit reaches a live subscriber through `NOTIFY`/`LISTEN`, not polling:
/// the subscribing instance polls once an hour. (A commit can still wait behind the fence for
/// a transaction open elsewhere on the server; the tail re-reads after a notification until
/// it is visible, hence the generous deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_commit_arrives_without_polling() {
    use futures::StreamExt as _;
    use keyledger_domain::GlobalPosition;
    use keyledger_postgres::PostgresOptions;
    use keyledger_store::subscribe::PollConfig;
    use std::time::Duration;

    let Some(db) = TestDatabase::create("kl_multi").await else {
        return;
    };
    let ring = Arc::new(KeyRing::generate());
    let hourly = PostgresOptions {
        poll: PollConfig {
            interval: Duration::from_secs(3600),
            ..PollConfig::default()
        },
        ..PostgresOptions::default()
    };
    let a = PostgresStore::connect_with(db.url(), ring.clone(), hourly)
        .await
        .unwrap();
    let b = PostgresStore::connect(db.url(), ring).await.unwrap();
    let stream = new_stream();
    let mut sub = a.subscribe(GlobalPosition::START);
    // Nothing yet: the subscription is live (caught up, waiting).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err()
    );
    for (v, name) in ["b1", "b2", "b3"].into_iter().enumerate() {
        let version = StreamVersion(u64::try_from(v).unwrap());
        b.append(stream, version, vec![tenant_added(name)], None)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("B's commit reached A's subscriber without a poll")
            .unwrap()
            .unwrap();
        assert_eq!(got.stream_version, StreamVersion(version.0 + 1));
    }
}
