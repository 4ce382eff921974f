use super::*;
use keyledger_store::conformance::{
    assert_one_stored_the_rest_repeat, cmk_enabled, dek_generated, new_stream, tenant_added,
};

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db"), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    (dir, store)
}

#[tokio::test]
async fn text_page_equals_row_by_row_read() {
    let (_dir, store) = store().await;
    let stream = new_stream();
    let mut caused = tenant_added("caused");
    caused.metadata.correlation_id = Some(keyledger_domain::CorrelationId::new_v7());
    caused.metadata.causation_id = Some(String::new());
    let mut named = tenant_added("named");
    named.metadata.causation_id = Some("=cause".into());
    let events = vec![
        tenant_added("quote \" backslash \\ unicode é ☃ \u{1e}\u{1f}"),
        cmk_enabled("s"),
        dek_generated(&[9; 40]),
        caused,
        named,
    ];
    store
        .append(
            stream,
            StreamVersion::NONE,
            events,
            Some(CommandId::parse("c-1").unwrap()),
        )
        .await
        .unwrap();
    let page = store
        .read_text_page(GlobalPosition::START, 10)
        .await
        .unwrap()
        .expect("the fast path decodes");
    let rows = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
    assert_eq!(page, rows);
    assert!(page.iter().all(|e| keyledger_store::envelope_hash(e) == e.hash));
}

/// Appends that reach the writer together commit in one group: a repeated command id in the
/// group gets the first result, a second append on the same version a typed conflict.
#[tokio::test]
async fn one_group_keeps_idempotency_and_conflicts() {
    let (_dir, store) = store().await;
    let (stream, other) = (new_stream(), new_stream());
    let command = CommandId::parse("same-command").unwrap();
    let repeats = (0..4).map(|_| {
        store.append(
            stream,
            StreamVersion::NONE,
            vec![tenant_added("a")],
            Some(command.clone()),
        )
    });
    let racers = (0..4).map(|_| store.append(other, StreamVersion::NONE, vec![tenant_added("b")], None));
    let (repeats, racers) = tokio::join!(
        futures::future::join_all(repeats),
        futures::future::join_all(racers)
    );
    let repeats: Vec<AppendResult> = repeats
        .into_iter()
        .map(|r| r.expect("every repeat succeeds"))
        .collect();
    assert_one_stored_the_rest_repeat(&repeats);
    let won = racers.iter().filter(|r| r.is_ok()).count();
    let conflicts = racers
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
        .count();
    assert_eq!((won, conflicts), (1, 3), "{racers:?}");
    let all = store.read_all(GlobalPosition::START, 100).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.global_position.0).collect();
    assert_eq!(positions, [1, 2]);
}

/// Appends `n` events to one new stream, in commands of 500.
async fn append_many(store: &SqliteStore, n: u64) {
    let stream = new_stream();
    for first in (0..n).step_by(500) {
        let events = (first..n.min(first + 500))
            .map(|i| tenant_added(&format!("t{i}")))
            .collect();
        store
            .append(stream, StreamVersion(first), events, None)
            .await
            .unwrap();
    }
}

/// Positions with gaps (rows deleted by hand): a page read in parts falls back to reading
/// on from the last event it holds, so no event is skipped or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_read_in_parts_is_whole_when_positions_have_gaps() {
    let (_dir, store) = store().await;
    append_many(&store, 3000).await;
    sqlx::query("DELETE FROM events WHERE position % 7 = 3 OR position BETWEEN 1000 AND 1400")
        .execute(store.write_pool())
        .await
        .unwrap();
    let expected: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(store.read_pool())
        .await
        .unwrap();
    for limit in [300, 1000, 1250, 5000] {
        let mut seen = Vec::new();
        let mut after = GlobalPosition::START;
        loop {
            let page = store.read_all(after, limit).await.unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = last.global_position;
            seen.extend(page.iter().map(|e| i64::try_from(e.global_position.0).unwrap()));
        }
        assert_eq!(seen, expected, "pages of {limit}");
    }
}

/// A page read in parts stops at the end of the log, wherever it falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_read_in_parts_ends_with_the_log() {
    let (_dir, store) = store().await;
    append_many(&store, 1100).await;
    for (after, limit, expected) in [
        (0, 1000, 1000),
        (0, 5000, 1100),
        (1000, 1000, 100),
        (1099, 5000, 1),
        (1100, 5000, 0),
    ] {
        let page = store.read_all(GlobalPosition(after), limit).await.unwrap();
        let positions: Vec<u64> = page.iter().map(|e| e.global_position.0).collect();
        let want: Vec<u64> = (after + 1..=after + expected).collect();
        assert_eq!(positions, want, "after {after}, limit {limit}");
    }
}

/// Catch-up over many full pages (each read ahead while the previous one is consumed),
/// then live: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_reads_ahead_without_gap_or_duplicate() {
    use futures::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        poll: PollConfig {
            batch: 3,
            interval: Duration::from_millis(10),
        },
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&dir.path().join("k.db"), Arc::new(KeyRing::generate()), options)
        .await
        .unwrap();
    let streams: Vec<StreamId> = (0..4).map(|_| new_stream()).collect();
    let mut versions = [StreamVersion::NONE; 4];
    let mut append = |i: usize| {
        let (store, stream, expected) = (store.clone(), streams[i % 4], versions[i % 4]);
        versions[i % 4] = StreamVersion(expected.0 + 1);
        async move {
            store
                .append(stream, expected, vec![tenant_added("t")], None)
                .await
                .unwrap()
        }
    };
    for i in 0..20 {
        append(i).await;
    }
    let mut sub = store.subscribe(GlobalPosition::START);
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(sub.next().await.unwrap().unwrap().global_position.0);
    }
    for i in 20..26 {
        append(i).await;
    }
    for _ in 20..26 {
        let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        seen.push(next.unwrap().unwrap().global_position.0);
    }
    let all: Vec<u64> = store
        .read_all(GlobalPosition::START, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.global_position.0)
        .collect();
    assert_eq!(seen, all);
    assert_eq!(seen.len(), 26);
}

#[tokio::test]
async fn corrupt_row_is_named_by_position() {
    let (_dir, store) = store().await;
    let stream = new_stream();
    let r = store
        .append(stream, StreamVersion::NONE, vec![tenant_added("a")], None)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET payload = '{not json' WHERE position = ?")
        .bind(i64::try_from(r.first_position.0).unwrap())
        .execute(store.write_pool())
        .await
        .unwrap();
    match store.read_all(GlobalPosition::START, 10).await {
        Err(StoreError::Corrupt { position, .. }) => assert_eq!(position, r.first_position),
        other => panic!("expected a corrupt-row error, got {other:?}"),
    }
}
