//! PostgreSQL-only: the transaction-id fence keeps catch-up readers gap-free when transactions
//! commit out of order (a writer holds its transaction open while later ones commit).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keyledger_domain::{EventId, GlobalPosition, StreamVersion};
use keyledger_postgres::testing::TestDatabase;
use keyledger_postgres::{PostgresOptions, PostgresStore};
use keyledger_store::StoredEvent;
use keyledger_store::conformance::{new_stream, tenant_added};
use keyledger_store::{EventStore, KeyRing};
use tokio::sync::oneshot;

async fn store(db: &TestDatabase) -> PostgresStore {
    PostgresStore::connect_with(
        db.url(),
        Arc::new(KeyRing::generate()),
        PostgresOptions {
            max_connections: 12,
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

struct Held {
    release: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<keyledger_store::AppendResult, keyledger_store::StoreError>>,
}

async fn hold(store: &PostgresStore, name: &str) -> Held {
    let (inserted_tx, inserted_rx) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let s = store.clone();
    let event = tenant_added(name);
    let task = tokio::spawn(async move {
        s.append_holding(
            new_stream(),
            StreamVersion::NONE,
            vec![event],
            inserted_tx,
            release_rx,
        )
        .await
    });
    inserted_rx.await.expect("held append wrote its rows");
    Held { release, task }
}

async fn committed_rows(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn later_commits_wait_behind_an_open_older_transaction() {
    let Some(db) = TestDatabase::create("kl_fence").await else {
        return;
    };
    let store = store(&db).await;
    let held = hold(&store, "held").await;
    let mut later = Vec::new();
    for i in 0..5 {
        let r = store
            .append(
                new_stream(),
                StreamVersion::NONE,
                vec![tenant_added(&format!("later-{i}"))],
                None,
            )
            .await
            .expect("later append");
        later.push(r);
    }
    // The later events are committed (a plain bigserial reader would see them now and
    // checkpoint past the held one) but stay behind the fence.
    assert_eq!(committed_rows(&store).await, 5);
    assert!(
        store
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .is_empty()
    );

    held.release.send(()).expect("release");
    let held_result = held.task.await.unwrap().expect("held append commits");
    assert!(later.iter().all(|r| r.first_position > held_result.last_position));

    let mut all = Vec::new();
    for _ in 0..500 {
        all = store.read_all(GlobalPosition::START, 100).await.unwrap();
        if all.len() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(all.len(), 6);
    assert_eq!(
        all[0].global_position, held_result.first_position,
        "the held event comes first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpointing_poller_sees_every_event_once_when_commits_are_out_of_order() {
    let Some(db) = TestDatabase::create("kl_gap").await else {
        return;
    };
    let store = store(&db).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: Vec<StoredEvent> = Vec::new();
            let mut after = GlobalPosition::START;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let page = store.read_all(after, 3).await.expect("read_all");
                match page.last() {
                    Some(last) => {
                        after = last.global_position;
                        seen.extend(page);
                    }
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
            seen
        })
    };
    // Three transactions open in xid order A < B < C; plain appends commit around them; the
    // held ones commit in reverse order.
    let a = hold(&store, "held-a").await;
    let b = hold(&store, "held-b").await;
    store
        .append(
            new_stream(),
            StreamVersion::NONE,
            vec![tenant_added("plain-1")],
            None,
        )
        .await
        .unwrap();
    let c = hold(&store, "held-c").await;
    for i in 2..6 {
        store
            .append(
                new_stream(),
                StreamVersion::NONE,
                vec![tenant_added(&format!("plain-{i}"))],
                None,
            )
            .await
            .unwrap();
    }
    for held in [c, b, a] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        held.release.send(()).unwrap();
        held.task.await.unwrap().unwrap();
        store
            .append(
                new_stream(),
                StreamVersion::NONE,
                vec![tenant_added("after-release")],
                None,
            )
            .await
            .unwrap();
    }
    let total = 3 + 5 + 3;
    let mut final_order = Vec::new();
    for _ in 0..500 {
        final_order = store.read_all(GlobalPosition::START, 100).await.unwrap();
        if final_order.len() == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(final_order.len(), total);
    // Let the poller catch up, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = poller.await.unwrap();
    let ids: Vec<EventId> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no duplicate"
    );
    assert_eq!(
        ids,
        final_order.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        "every event once, in the final order"
    );
}
