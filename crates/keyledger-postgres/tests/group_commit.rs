//! PostgreSQL-only: appends that wait together are committed in one statement (group commit);
//! each append still gets its own answer: a repeated command id its first result, a lost race a
//! typed conflict, and the others their events, numbered in one transaction without overlap.
//!
//! Whether appends end up in one group depends on when they reach the queue, so the test that
//! a group forms holds the committers back (a table lock) until the appends are waiting.

use std::collections::HashSet;
use std::sync::Arc;

use keyledger_domain::{CommandId, GlobalPosition, StreamVersion};
use keyledger_postgres::PostgresStore;
use keyledger_postgres::testing::TestDatabase;
use keyledger_store::conformance::{assert_one_stored_the_rest_repeat, new_stream, tenant_added};
use keyledger_store::{AppendResult, EventStore, KeyRing, StoreError};
use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_keeps_each_appends_answer() {
    let Some(db) = TestDatabase::create("kl_group").await else {
        return;
    };
    let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .expect("connect");
    for round in 0..5 {
        let (raced, repeated) = (new_stream(), new_stream());
        let command = CommandId::parse(&format!("same-command-{round}")).unwrap();
        let racers = (0..4).map(|_| store.append(raced, StreamVersion::NONE, vec![tenant_added("r")], None));
        let repeats = (0..4).map(|_| {
            store.append(
                repeated,
                StreamVersion::NONE,
                vec![tenant_added("a"), tenant_added("b")],
                Some(command.clone()),
            )
        });
        let others = (0..24).map(|i| {
            let events = (0..=i % 3).map(|_| tenant_added("o")).collect();
            let command = (i % 2 == 0).then(|| CommandId::parse(&format!("other-{round}-{i}")).unwrap());
            store.append(new_stream(), StreamVersion::NONE, events, command)
        });
        let (racers, repeats, others) = tokio::join!(
            futures::future::join_all(racers),
            futures::future::join_all(repeats),
            futures::future::join_all(others),
        );
        let won = racers.iter().filter(|r| r.is_ok()).count();
        let conflicts = racers
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
            .count();
        assert_eq!((won, conflicts), (1, 3), "{racers:?}");
        let repeats: Vec<AppendResult> = repeats
            .into_iter()
            .map(|r| r.expect("every repeat succeeds"))
            .collect();
        assert_one_stored_the_rest_repeat(&repeats);
        let mut positions = HashSet::new();
        for (i, r) in others.iter().enumerate() {
            let r = r.as_ref().unwrap();
            let n = (i % 3 + 1) as u64;
            assert_eq!((r.first_version.0, r.last_version.0), (1, n));
            let stored = store.read_stream(r.stream, StreamVersion::NONE).await.unwrap();
            let stored: Vec<GlobalPosition> = stored.iter().map(|e| e.global_position).collect();
            assert_eq!(stored.first(), Some(&r.first_position));
            assert_eq!(stored.last(), Some(&r.last_position));
            assert!(stored.iter().all(|p| positions.insert(*p)), "positions overlap");
            // A repeat of a grouped command gets the grouped result.
            if i % 2 == 0 {
                let again = store
                    .append(
                        r.stream,
                        StreamVersion::NONE,
                        vec![tenant_added("o")],
                        Some(CommandId::parse(&format!("other-{round}-{i}")).unwrap()),
                    )
                    .await
                    .unwrap();
                assert_eq!(again, AppendResult { repeat: true, ..*r });
            }
        }
    }
    let all = store.read_all(GlobalPosition::START, 10_000).await.unwrap();
    assert!(all.is_sorted_by_key(|e| e.global_position));
    assert_eq!(all.len(), 5 * (1 + 2 + (0..24).map(|i| i % 3 + 1).sum::<usize>()));
    store.pool().close().await;
}

/// Appends that queue while the committers are busy go into one transaction. The committers
/// are held on a `SHARE` lock of `events` (inserts wait, reads do not) until the appends have
/// queued behind them; once it is released, the waiting appends commit in groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_waiting_together_share_a_transaction() {
    let Some(db) = TestDatabase::create("kl_group_held").await else {
        return;
    };
    let store = Arc::new(
        PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
            .await
            .expect("connect"),
    );
    let mut holder = sqlx::PgConnection::connect(db.url()).await.expect("connect");
    let mut lock = holder.begin().await.expect("begin");
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let streams: Vec<_> = (0..32).map(|_| new_stream()).collect();
    let appends: Vec<_> = streams
        .iter()
        .map(|&stream| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(stream, StreamVersion::NONE, vec![tenant_added("g")], None)
                    .await
            })
        })
        .collect();
    // Some committer is stuck on the lock: every append has been sent to the queue by then
    // or soon after (a new stream's append reads nothing first).
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'events' AND NOT l.granted",
        )
        .fetch_one(store.pool())
        .await
        .expect("pg_locks")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while waiting().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no committer waited on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    lock.rollback().await.expect("release the lock");
    // Positions are `xid << 16 | index`: the high bits name the transaction.
    let mut streams_per_xid = std::collections::HashMap::<u64, HashSet<_>>::new();
    for a in appends {
        let r = a.await.expect("join").expect("append");
        let stored = store.read_stream(r.stream, StreamVersion::NONE).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].global_position, r.first_position);
        streams_per_xid
            .entry(r.first_position.0 >> 16)
            .or_default()
            .insert(r.stream);
    }
    assert!(
        streams_per_xid.values().any(|s| s.len() > 1),
        "no two appends shared a transaction: {streams_per_xid:?}"
    );
    store.pool().close().await;
}
