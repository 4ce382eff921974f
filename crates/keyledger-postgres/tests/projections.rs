//! Projection tables on PostgreSQL: the sink conformance suite, and the advisory-lock lease
//! that gives each projection one runner among instances. Each test has its own database.

use std::sync::Arc;

use keyledger_postgres::testing::TestDatabase;
use keyledger_postgres::{Lease, PgProjections, PostgresStore};
use keyledger_projection::{Projection, ProjectionSink};
use keyledger_store::{EventStore, KeyRing};

async fn postgres() -> Option<(Arc<dyn EventStore>, Arc<dyn ProjectionSink>, TestDatabase)> {
    let db = TestDatabase::create("kl_projections").await?;
    let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let sink = Arc::new(PgProjections::new(&store));
    Some((Arc::new(store), sink, db))
}

keyledger_projection::sink_conformance!(postgres);

#[tokio::test]
async fn one_instance_leads_a_projection_and_another_takes_over_when_it_dies() {
    let Some(db) = TestDatabase::create("kl_lease").await else {
        return;
    };
    // Run the migrations once.
    let _store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let first = Lease::try_acquire(db.url(), Projection::TenantAudit)
        .await
        .unwrap();
    let mut first = first.expect("a free lease is taken");
    assert!(first.is_held().await);
    // A second instance cannot take the same projection, but can take another.
    assert!(
        Lease::try_acquire(db.url(), Projection::TenantAudit)
            .await
            .unwrap()
            .is_none()
    );
    let other = Lease::try_acquire(db.url(), Projection::KeyHealth).await.unwrap();
    assert!(other.is_some());
    // The leader dies without releasing: its session ends, and the lock with it.
    drop(first);
    let taken = Lease::acquire(
        db.url(),
        Projection::TenantAudit,
        std::time::Duration::from_millis(50),
    );
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), taken)
        .await
        .expect("the lease is taken over")
        .unwrap();
    second.release().await;
    if let Some(o) = other {
        o.release().await;
    }
}

/// The pids of the sessions holding the lease of `projection` in this database.
async fn lease_holders(pool: &sqlx::PgPool, projection: Projection) -> Vec<i32> {
    let key = keyledger_postgres::lease_key(projection);
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
    )
    .bind((key >> 32) & 0xffff_ffff)
    .bind(key & 0xffff_ffff)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn changes(checkpoint: u64, marker: &str) -> keyledger_projection::Changes {
    keyledger_projection::Changes {
        checkpoint,
        docs: [(
            keyledger_domain::testing::org_id(),
            Some(serde_json::json!({"written_by": marker})),
        )]
        .into(),
        ..Default::default()
    }
}

/// Issue 11, defect 11: every commit of a leased runner is fenced on its lease, checked in the
/// commit's transaction. Once the lease's session is gone, the old leader's commits are
/// refused (before and after another instance takes the lease) and write nothing; the new
/// leader's go through.
#[tokio::test]
async fn a_runner_that_lost_its_lease_cannot_commit() {
    let Some(db) = TestDatabase::create("kl_fence").await else {
        return;
    };
    let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let p = Projection::OrganizationEncryption;
    let unfenced = PgProjections::new(&store);
    let first = Lease::try_acquire(db.url(), p).await.unwrap().expect("free");
    let old = unfenced.fenced(&first);
    old.commit(p, changes(1, "old"))
        .await
        .expect("the leader commits");
    // The lease's session dies (a network cut, an idle timeout, a restarted pooler) while the
    // runner itself goes on.
    let holders = lease_holders(store.pool(), p).await;
    assert_eq!(holders.len(), 1);
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holders[0])
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(killed);
    let lost = |r: Result<(), keyledger_projection::SinkError>| {
        assert!(
            matches!(r, Err(keyledger_projection::SinkError::LeaseLost { .. })),
            "{r:?}"
        )
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    lost(old.commit(p, changes(2, "old")).await);
    // Another instance takes the lease over.
    let second = Lease::acquire(db.url(), p, std::time::Duration::from_millis(50))
        .await
        .unwrap();
    let new = unfenced.fenced(&second);
    lost(old.commit(p, changes(3, "old")).await);
    assert_eq!(unfenced.checkpoint(p).await.unwrap(), 1);
    new.commit(p, changes(3, "new"))
        .await
        .expect("the new leader commits");
    let docs = unfenced
        .load(p, &[keyledger_domain::testing::org_id()])
        .await
        .unwrap();
    assert_eq!(
        docs[&keyledger_domain::testing::org_id()],
        serde_json::json!({"written_by": "new"})
    );
    drop(first);
    second.release().await;
}

/// A leader notices a lost lease even when no event comes to commit: `run_led` ends with
/// `LeaseLost` (the supervisor then competes for the lease again).
#[tokio::test]
async fn a_leader_that_lost_its_lease_stops() {
    let Some(db) = TestDatabase::create("kl_fence_run").await else {
        return;
    };
    let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let p = Projection::KeyHealth;
    let led = tokio::spawn({
        let (url, store) = (db.url().to_owned(), store.clone());
        async move {
            let sink = PgProjections::new(&store);
            keyledger_postgres::run_led(&url, Arc::new(store), sink, p, std::future::pending()).await
        }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    // The lease is taken once the statement that locks is done and its session idle again: that
    // statement also read the session's pid and start time, and its answer was sent before the
    // session went idle. (A session killed while that statement runs fails the acquisition,
    // which is not what this test is about; it flaked when the pid came from a second statement.)
    let holder = loop {
        if let Some(pid) = lease_holders(store.pool(), p).await.first() {
            let acquired: bool = sqlx::query_scalar(
                "SELECT coalesce(bool_or(state = 'idle' AND query LIKE '%pg_try_advisory_lock%'), false) \
                 FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(*pid)
            .fetch_one(store.pool())
            .await
            .unwrap();
            if acquired {
                break *pid;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(holder)
        .execute(store.pool())
        .await
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), led)
        .await
        .expect("the leader noticed the lost lease")
        .unwrap();
    assert!(
        matches!(
            ended,
            Err(keyledger_projection::RunnerError::Sink(
                keyledger_projection::SinkError::LeaseLost { .. }
            ))
        ),
        "{ended:?}"
    );
}

/// A fenced sink writes (and resets) only the projections whose leases it holds.
#[tokio::test]
async fn a_fenced_sink_writes_only_projections_it_holds_the_lease_of() {
    let Some(db) = TestDatabase::create("kl_fence_other").await else {
        return;
    };
    let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
        .await
        .unwrap();
    let held = Projection::DataKeyInventory;
    let lease = Lease::try_acquire(db.url(), held).await.unwrap().expect("free");
    let sink = PgProjections::new(&store).fenced(&lease);
    sink.commit(held, changes(1, "held")).await.unwrap();
    sink.reset(held).await.unwrap();
    let other = Projection::TenantAudit;
    for r in [
        sink.commit(other, changes(1, "other")).await,
        sink.reset(other).await,
    ] {
        assert!(
            matches!(r, Err(keyledger_projection::SinkError::LeaseLost { projection }) if projection == other),
            "{r:?}"
        );
    }
    assert_eq!(PgProjections::new(&store).checkpoint(other).await.unwrap(), 0);
    lease.release().await;
}

mod audit_tree {
    use std::sync::Arc;

    use keyledger_postgres::testing::TestDatabase;
    use keyledger_postgres::{PgProjections, PostgresStore};
    use keyledger_projection::ProjectionSink;
    use keyledger_store::merkle::AuditTrees;
    use keyledger_store::{EventStore, KeyRing};

    type Mounted = (
        Arc<dyn EventStore>,
        Arc<dyn ProjectionSink>,
        Arc<dyn AuditTrees>,
        TestDatabase,
    );

    async fn postgres() -> Option<Mounted> {
        let db = TestDatabase::create("kl_tree").await?;
        let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let sink = Arc::new(PgProjections::new(&store));
        Some((Arc::new(store), sink.clone(), sink, db))
    }

    keyledger_projection::tree_conformance!(postgres);
}

/// The background task lease (the audit checkpointer's, ADR 0027): of two instances running
/// `run_leading` for the same task, one runs it; when that one's session dies, it stops with an
/// error and the other takes over.
#[tokio::test]
async fn one_instance_leads_a_background_task_and_another_takes_over_when_it_dies() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some(db) = TestDatabase::create("kl_task_lease").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let running: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let instances: Vec<_> = (0..2)
        .map(|i| {
            let (url, running) = (db.url().to_owned(), running.clone());
            tokio::spawn(async move {
                let task = async move {
                    running[i].store(true, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                };
                keyledger_postgres::run_leading(&url, "test-task", task, std::future::pending()).await
            })
        })
        .collect();
    let key = keyledger_postgres::task_lease_key("test-task");
    let holders = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
        )
        .bind((key >> 32) & 0xffff_ffff)
        .bind(key & 0xffff_ffff)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let leader = loop {
        let ran: Vec<bool> = running.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        if let Some(i) = ran.iter().position(|r| *r) {
            break i;
        }
        assert!(tokio::time::Instant::now() < deadline, "no instance ran the task");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // A while later, still only the leader runs it, holding the one lock.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        !running[1 - leader].load(Ordering::SeqCst),
        "both instances ran the task"
    );
    let held = holders().await;
    assert_eq!(held.len(), 1, "{held:?}");

    // The leader's session dies: it stops with an error, and the other instance takes over.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(held[0])
        .execute(&pool)
        .await
        .unwrap();
    let mut instances = instances;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(15), instances.remove(leader))
        .await
        .expect("the leader noticed its lost lease")
        .unwrap();
    assert!(stopped.is_err(), "{stopped:?}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !running[1 - leader].load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other instance never took over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(holders().await.len(), 1);
    instances.remove(0).abort();
    pool.close().await;
}
