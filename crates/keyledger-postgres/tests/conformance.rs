//! The store conformance suite on PostgreSQL: each test creates its own database and drops it.
//! Without a reachable server the tests are skipped with a notice, unless
//! `KEYLEDGER_REQUIRE_POSTGRES=1`.

use std::sync::Arc;

use async_trait::async_trait;
use keyledger_domain::{StreamId, StreamVersion};
use keyledger_postgres::PostgresStore;
use keyledger_postgres::testing::TestDatabase;
use keyledger_store::KeyRing;
use keyledger_store::conformance::Fixture;
use sqlx::Row as _;

struct PgFixture {
    store: PostgresStore,
    // Dropped last: the database goes away after the store's pool.
    db: TestDatabase,
}

async fn connect(db: &TestDatabase, ring: Arc<KeyRing>) -> PostgresStore {
    let options = keyledger_postgres::PostgresOptions {
        max_connections: 8,
        ..Default::default()
    };
    PostgresStore::connect_with(db.url(), ring, options)
        .await
        .expect("connect to the test database")
}

#[async_trait]
impl Fixture for PgFixture {
    type Store = PostgresStore;

    async fn create(ring: Arc<KeyRing>) -> Option<Self> {
        let db = TestDatabase::create("kl_conformance").await?;
        let store = connect(&db, ring).await;
        Some(Self { store, db })
    }

    fn store(&self) -> PostgresStore {
        self.store.clone()
    }

    async fn reopen(&self, ring: Arc<KeyRing>) -> PostgresStore {
        connect(&self.db, ring).await
    }

    async fn tamper_payload(&self, stream: StreamId, version: StreamVersion, from: &str, to: &str) {
        let changed = sqlx::query(
            "UPDATE events SET payload = replace(payload, $1, $2) WHERE stream_id = $3 AND stream_version = $4",
        )
        .bind(from)
        .bind(to)
        .bind(stream.to_string())
        .bind(i64::try_from(version.0).unwrap())
        .execute(self.store.pool())
        .await
        .expect("tamper");
        assert_eq!(changed.rows_affected(), 1);
    }

    async fn rewrite_type(
        &self,
        stream: StreamId,
        version: StreamVersion,
        event_type: &str,
        schema_version: u32,
    ) {
        sqlx::query(
            "UPDATE events SET event_type = $1, schema_version = $2 WHERE stream_id = $3 AND stream_version = $4",
        )
        .bind(event_type)
        .bind(i32::try_from(schema_version).unwrap())
        .bind(stream.to_string())
        .bind(i64::try_from(version.0).unwrap())
        .execute(self.store.pool())
        .await
        .expect("rewrite type");
    }

    async fn raw_bytes(&self) -> Vec<u8> {
        // The heap and TOAST files of the tables as on disk, after a checkpoint wrote them.
        let pool = self.store.pool();
        sqlx::query("CHECKPOINT").execute(pool).await.expect("checkpoint");
        let rows = sqlx::query(
            "SELECT pg_read_binary_file(pg_relation_filepath(c.oid)) AS bytes FROM pg_class c \
             WHERE c.oid IN ('events'::regclass, 'commands'::regclass) \
                OR c.oid IN (SELECT reltoastrelid FROM pg_class \
                             WHERE oid IN ('events'::regclass, 'commands'::regclass))",
        )
        .fetch_all(pool)
        .await
        .expect("read relation files");
        rows.iter().flat_map(|r| r.get::<Vec<u8>, _>("bytes")).collect()
    }
}

keyledger_store::conformance_suite!(PgFixture);
