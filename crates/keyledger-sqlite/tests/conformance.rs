//! The store conformance suite on SQLite: each test gets its own database file in a fresh
//! temporary directory.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use keyledger_domain::{StreamId, StreamVersion};
use keyledger_sqlite::SqliteStore;
use keyledger_store::KeyRing;
use keyledger_store::conformance::Fixture;

struct SqliteFixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: SqliteStore,
}

#[async_trait]
impl Fixture for SqliteFixture {
    type Store = SqliteStore;

    async fn create(ring: Arc<KeyRing>) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keyledger.db");
        let store = SqliteStore::open(&path, ring).await.expect("open sqlite store");
        Some(Self {
            _dir: dir,
            path,
            store,
        })
    }

    fn store(&self) -> SqliteStore {
        self.store.clone()
    }

    async fn reopen(&self, ring: Arc<KeyRing>) -> SqliteStore {
        SqliteStore::open(&self.path, ring).await.expect("reopen")
    }

    async fn tamper_payload(&self, stream: StreamId, version: StreamVersion, from: &str, to: &str) {
        let changed = sqlx::query(
            "UPDATE events SET payload = replace(payload, ?, ?) WHERE stream_id = ? AND stream_version = ?",
        )
        .bind(from)
        .bind(to)
        .bind(stream.to_string())
        .bind(i64::try_from(version.0).unwrap())
        .execute(self.store.write_pool())
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
            "UPDATE events SET event_type = ?, schema_version = ? WHERE stream_id = ? AND stream_version = ?",
        )
        .bind(event_type)
        .bind(i64::from(schema_version))
        .bind(stream.to_string())
        .bind(i64::try_from(version.0).unwrap())
        .execute(self.store.write_pool())
        .await
        .expect("rewrite type");
    }

    async fn raw_bytes(&self) -> Vec<u8> {
        // The main file and the WAL, as they are on disk.
        let mut bytes = Vec::new();
        for suffix in ["", "-wal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            if let Ok(b) = std::fs::read(PathBuf::from(p)) {
                bytes.extend(b);
            }
        }
        bytes
    }
}

keyledger_store::conformance_suite!(SqliteFixture);
