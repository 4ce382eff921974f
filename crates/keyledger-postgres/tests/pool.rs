//! PostgreSQL-only: the connection pool. Nothing holds a pooled connection while it waits for
//! another one, so the smallest pool still makes progress; a caller that gets no connection
//! in time gets a typed error, not a generic backend failure.

use std::sync::Arc;
use std::time::Duration;

use keyledger_domain::testing;
use keyledger_domain::{StreamId, StreamVersion};
use keyledger_postgres::testing::TestDatabase;
use keyledger_postgres::{PgProjections, PostgresOptions, PostgresStore};
use keyledger_projection::conformance::append_history;
use keyledger_projection::{Projection, ProjectionSink, Runner, SinkError};
use keyledger_store::conformance::tenant_added;
use keyledger_store::{EventStore, KeyRing, StoreError};

async fn store_with_one_connection(db: &TestDatabase, acquire_timeout: Duration) -> PostgresStore {
    let options = PostgresOptions {
        max_connections: 1,
        acquire_timeout,
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(db.url(), Arc::new(KeyRing::generate()), options)
        .await
        .unwrap()
}

/// A runner reads a page, then folds and commits it. Its subscription must not keep the next
/// page's read (and its connection) suspended while the runner commits: with one connection
/// the commit would wait for the connection its own subscription holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_runners_reach_the_head_with_a_single_pooled_connection() {
    let Some(db) = TestDatabase::create("kl_pool1").await else {
        return;
    };
    let store = store_with_one_connection(&db, Duration::from_secs(3)).await;
    append_history(&store, testing::cmk_org().rotate(&testing::key_b()).switch()).await;
    let head = store
        .read_stream(StreamId::for_org(testing::org_id()), StreamVersion(1))
        .await
        .unwrap()
        .last()
        .unwrap()
        .global_position
        .0;
    let sink = Arc::new(PgProjections::new(&store));
    let store: Arc<dyn EventStore> = Arc::new(store);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let runners: Vec<_> = Projection::ALL
        .into_iter()
        .map(|p| {
            let runner = Runner::new(store.clone(), sink.clone(), p);
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                runner
                    .run(async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for p in Projection::ALL {
        loop {
            // A runner that failed (a pool timeout) has ended its task.
            let failed = runners.iter().any(|r| r.is_finished());
            match sink.checkpoint(p).await {
                Ok(at) if at >= head && !failed => break,
                _ if failed || tokio::time::Instant::now() >= deadline => {
                    let _ = stop.send(true);
                    let mut results = Vec::new();
                    for r in runners {
                        results.push(format!("{:?}", r.await));
                    }
                    panic!("{p:?} did not reach {head} (failed: {failed}); runners: {results:?}");
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let _ = stop.send(true);
    for r in runners {
        r.await.unwrap().unwrap();
    }
}

/// A caller that gets no connection in time is told so by kind (`Unavailable`: HTTP 503), not
/// with a generic backend failure (HTTP 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_in_time_is_a_typed_unavailable_error() {
    let Some(db) = TestDatabase::create("kl_pool_timeout").await else {
        return;
    };
    let store = store_with_one_connection(&db, Duration::from_millis(300)).await;
    let sink = PgProjections::new(&store);
    let held = store.pool().acquire().await.unwrap();
    let stream = StreamId::for_org(testing::org_id());
    match store.read_stream(stream, StreamVersion(1)).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match store
        .append(stream, StreamVersion::NONE, vec![tenant_added("t")], None)
        .await
    {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match sink.checkpoint(Projection::TenantAudit).await {
        Err(SinkError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    drop(held);
    // With the connection back, the same calls work.
    store
        .append(stream, StreamVersion::NONE, vec![tenant_added("t")], None)
        .await
        .unwrap();
    sink.checkpoint(Projection::TenantAudit).await.unwrap();
}
