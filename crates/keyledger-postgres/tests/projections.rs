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
