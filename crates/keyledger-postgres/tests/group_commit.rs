//! PostgreSQL-only: appends that wait together are committed in one statement (group commit);
//! each append still gets its own answer: a repeated command id its first result, a lost race a
//! typed conflict, and the others their events, numbered in one transaction without overlap.

use std::collections::HashSet;
use std::sync::Arc;

use keyledger_domain::{CommandId, GlobalPosition, StreamVersion};
use keyledger_postgres::PostgresStore;
use keyledger_postgres::testing::TestDatabase;
use keyledger_store::conformance::{assert_one_stored_the_rest_repeat, new_stream, tenant_added};
use keyledger_store::{AppendResult, EventStore, KeyRing, StoreError};

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
    // Grouped: some transaction (the high bits of a position) holds several streams' events.
    let mut streams_per_xid = std::collections::HashMap::<u64, HashSet<_>>::new();
    for e in &all {
        streams_per_xid
            .entry(e.global_position.0 >> 16)
            .or_default()
            .insert(e.stream_id);
    }
    assert!(
        streams_per_xid.values().any(|s| s.len() > 1),
        "no two appends shared a transaction"
    );
    assert_eq!(all.len(), 5 * (1 + 2 + (0..24).map(|i| i % 3 + 1).sum::<usize>()));
    store.pool().close().await;
}
