//! `keyledger verify --store` holding a store against its signed checkpoints (issue 13), run as
//! the real binary on SQLite and PostgreSQL stores built through the library: two
//! organizations' events, the stored audit tree folded by the projection runner, signed
//! checkpoints in stream `audit`. Each tamper is done with SQL from outside the binary, then
//! `verify` must exit 3 naming the organization. PostgreSQL tests skip when the server does
//! not answer, unless `KEYLEDGER_REQUIRE_POSTGRES=1`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use chrono::Utc;
use keyledger_audit::{AuditSigner, global_origin, org_origin};
use keyledger_domain::{Actor, AuditLog, Event, GlobalPosition, OrgId};
use keyledger_domain::{StreamId, StreamVersion};
use keyledger_postgres::testing::TestDatabase;
use keyledger_postgres::{PgProjections, PostgresStore};
use keyledger_projection::{Projection, ProjectionSink, Runner};
use keyledger_sqlite::{SqliteProjections, SqliteStore};
use keyledger_store::conformance::{cmk_enabled, tenant_added};
use keyledger_store::envelope::{EnvelopeActor, EventMetadata, write_canonical};
use keyledger_store::{EventStore, KeyRing, NewEvent, StoredEvent, VerifyScope, envelope_hash, merkle};
use sqlx::Connection as _;

const ORIGIN: &str = "keyledger.test";
const SECRET: &str = "client-secret-that-must-not-leak";
/// Events per organization.
const N: u64 = 6;

/// Where the store lives.
enum Place {
    Sqlite(PathBuf),
    Postgres(TestDatabase),
}

/// A store with organizations `a` and `b`, `N` events each appended alternately (a1 b1 a2 b2
/// …), the audit tree folded, and four signed checkpoints: `a` at 3 and `N`, `b` at `N`, the
/// global log at `2N`. The store is closed: the test tampers, then runs the binary.
struct Fixture {
    _dir: tempfile::TempDir,
    place: Place,
    signer: AuditSigner,
    a: OrgId,
    b: OrgId,
    /// The organizations' events in global order (the checkpoints not included).
    events: Vec<StoredEvent>,
}

impl Fixture {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyledger.db");
        let store = SqliteStore::open(&path, Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let sink = Arc::new(SqliteProjections::new(&store));
        let built = Self::build(dir, Place::Sqlite(path), Arc::new(store.clone()), sink).await;
        store.close().await;
        built
    }

    async fn postgres(prefix: &str) -> Option<Self> {
        let db = TestDatabase::create(prefix).await?;
        let store = PostgresStore::connect(db.url(), Arc::new(KeyRing::generate()))
            .await
            .unwrap();
        let sink = Arc::new(PgProjections::new(&store));
        let dir = tempfile::tempdir().unwrap();
        let built = Self::build(dir, Place::Postgres(db), Arc::new(store.clone()), sink).await;
        store.pool().close().await;
        Some(built)
    }

    async fn build(
        dir: tempfile::TempDir,
        place: Place,
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
    ) -> Self {
        let (a, b) = (OrgId::new_v7(), OrgId::new_v7());
        for v in 0..N {
            for org in [a, b] {
                let event = if v == 0 {
                    cmk_enabled(SECRET)
                } else {
                    tenant_added(&format!("tenant {v}"))
                };
                store
                    .append(StreamId::for_org(org), StreamVersion(v), vec![event], None)
                    .await
                    .unwrap();
            }
        }
        // On PostgreSQL the reader fence may hold the last events back for a moment (any
        // transaction open on the server holds it): wait until every event can be read.
        let want = usize::try_from(2 * N).unwrap();
        let started = std::time::Instant::now();
        let events = loop {
            let events = store.read_all(GlobalPosition::START, 1000).await.unwrap();
            if events.len() == want || started.elapsed() > std::time::Duration::from_secs(30) {
                break events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(events.len(), want);
        // The stored audit tree, folded as `serve` folds it.
        let reached = Runner::new(store.clone(), sink, Projection::AuditTree)
            .catch_up()
            .await
            .unwrap();
        assert_eq!(reached, events[want - 1].global_position.0);
        let signer = AuditSigner::generate(ORIGIN).unwrap();
        let of = |org: OrgId| -> Vec<StoredEvent> {
            events
                .iter()
                .filter(|e| e.stream_id == StreamId::for_org(org))
                .cloned()
                .collect()
        };
        let checkpoints = vec![
            signed(&signer, AuditLog::Org(a), &of(a)[..3]),
            signed(&signer, AuditLog::Org(a), &of(a)),
            signed(&signer, AuditLog::Org(b), &of(b)),
            signed(&signer, AuditLog::Global, &events),
        ];
        store
            .append(StreamId::Audit, StreamVersion::NONE, checkpoints, None)
            .await
            .unwrap();
        Self {
            _dir: dir,
            place,
            signer,
            a,
            b,
            events,
        }
    }

    fn url(&self) -> String {
        match &self.place {
            Place::Sqlite(path) => format!("sqlite://{}", path.display()),
            Place::Postgres(db) => db.url().to_owned(),
        }
    }

    fn event(&self, org: OrgId, version: u64) -> &StoredEvent {
        self.events
            .iter()
            .find(|e| e.stream_id == StreamId::for_org(org) && e.stream_version.0 == version)
            .unwrap()
    }

    /// Runs SQL statements against the store, from outside the binary; `$n` are text or
    /// integer parameters.
    async fn sql(&self, statements: &[(&str, &[Param])]) {
        match &self.place {
            Place::Sqlite(path) => {
                let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                for (sql, params) in statements {
                    let mut q = sqlx::query(sql);
                    for p in *params {
                        q = match p {
                            Param::Text(t) => q.bind(t.clone()),
                            Param::Int(i) => q.bind(*i),
                        };
                    }
                    let done = q.execute(&mut c).await.unwrap();
                    assert!(done.rows_affected() > 0, "{sql}");
                }
                c.close().await.unwrap();
            }
            Place::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
                for (sql, params) in statements {
                    let mut q = sqlx::query(sql);
                    for p in *params {
                        q = match p {
                            Param::Text(t) => q.bind(t.clone()),
                            Param::Int(i) => q.bind(*i),
                        };
                    }
                    let done = q.execute(&mut c).await.unwrap();
                    assert!(done.rows_affected() > 0, "{sql}");
                }
                c.close().await.unwrap();
            }
        }
    }

    /// Whether the per-stream hash chains alone hold (the check `verify` ran before it held
    /// the store against its checkpoints), read through the library.
    async fn chains_hold(&self) -> bool {
        let ring = Arc::new(KeyRing::generate());
        let report = match &self.place {
            Place::Sqlite(path) => {
                let store = SqliteStore::open(path, ring).await.unwrap();
                let report = store.verify(VerifyScope::All).await.unwrap();
                store.close().await;
                report
            }
            Place::Postgres(db) => {
                let store = PostgresStore::connect(db.url(), ring).await.unwrap();
                let report = store.verify(VerifyScope::All).await.unwrap();
                store.pool().close().await;
                report
            }
        };
        report.is_intact()
    }

    fn verify(&self, extra: &[&str]) -> Output {
        Command::new(common::keyledger())
            .args(["verify", "--store", &self.url()])
            .args(extra)
            .env_remove("KEYLEDGER_STORE__URL")
            .output()
            .unwrap()
    }

    // The tampers.

    /// Deletes the last two events of `a`'s stream.
    async fn delete_tail(&self) {
        let stream = StreamId::for_org(self.a).to_string();
        self.sql(&[(
            "DELETE FROM events WHERE stream_id = $1 AND stream_version > $2",
            &[Param::Text(stream), Param::Int(4)],
        )])
        .await;
    }

    /// Deletes every event of `b`.
    async fn delete_stream(&self) {
        let stream = StreamId::for_org(self.b).to_string();
        self.sql(&[("DELETE FROM events WHERE stream_id = $1", &[Param::Text(stream)])])
            .await;
    }

    /// Changes a payload field of `a`'s version 3 and recomputes `prev_hash` and `hash` of
    /// versions 3 to `N` with the store's own chain function, so every chain holds.
    async fn rewrite_version_3(&self) {
        let mut prev = self.event(self.a, 2).hash.clone();
        let mut statements = Vec::new();
        for v in 3..=N {
            let mut e = self.event(self.a, v).clone();
            if v == 3 {
                e.payload["name"] = "a tenant that never was".into();
            }
            e.prev_hash = prev;
            e.hash = envelope_hash(&e);
            prev = e.hash.clone();
            let mut payload = Vec::new();
            write_canonical(&e.payload, &mut payload);
            statements.push(vec![
                Param::Text(String::from_utf8(payload).unwrap()),
                Param::Text(e.prev_hash),
                Param::Text(e.hash),
                Param::Text(e.stream_id.to_string()),
                Param::Int(i64::try_from(v).unwrap()),
            ]);
        }
        let sql = "UPDATE events SET payload = $1, prev_hash = $2, hash = $3 WHERE stream_id = $4 AND stream_version = $5";
        let statements: Vec<(&str, &[Param])> = statements.iter().map(|p| (sql, p.as_slice())).collect();
        self.sql(&statements).await;
    }

    /// Swaps the global positions of `a`'s and `b`'s version 2, neighbours in global order:
    /// each stream keeps its own order (so every chain holds), only the global order changes.
    async fn swap_positions(&self) {
        let p = i64::try_from(self.event(self.a, 2).global_position.0).unwrap();
        let q = i64::try_from(self.event(self.b, 2).global_position.0).unwrap();
        let set = "UPDATE events SET position = $1 WHERE position = $2";
        self.sql(&[
            (set, &[Param::Int(-1), Param::Int(p)]),
            (set, &[Param::Int(p), Param::Int(q)]),
            (set, &[Param::Int(q), Param::Int(-1)]),
        ])
        .await;
    }
}

enum Param {
    Text(String),
    Int(i64),
}

fn signed(signer: &AuditSigner, log: AuditLog, events: &[StoredEvent]) -> NewEvent {
    let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
    let size = u64::try_from(leaves.len()).unwrap();
    let checkpoint = signer
        .sign_log(log, size, merkle::root(&leaves), Utc::now())
        .unwrap();
    NewEvent {
        event: Event::AuditCheckpointSigned(checkpoint),
        metadata: EventMetadata {
            occurred_at: Utc::now(),
            actor: EnvelopeActor::from_actor(&Actor::system(), None),
            correlation_id: None,
            causation_id: None,
        },
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit code is `code`; stderr is one line when it is 3; nothing leaks the secret.
#[track_caller]
fn assert_exit(out: &Output, code: i32) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    if code == 3 {
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    stderr
}

// The scenarios, each run on both backends below.

async fn intact(f: Fixture) {
    let stderr = assert_exit(&f.verify(&[]), 0);
    assert!(stderr.contains("every hash chain is intact"), "{stderr}");
    assert!(
        stderr.contains(
            "the store holds all 4 signed checkpoints of 3 logs, signatures not checked (no --verifier-key)"
        ),
        "{stderr}"
    );
    let stderr = assert_exit(&f.verify(&["--verifier-key", &f.signer.verifier_key()]), 0);
    assert!(
        stderr.contains("the store holds all 4 signed checkpoints of 3 logs, their signatures verify with key keyledger.test"),
        "{stderr}"
    );
    let b = f.b.to_string();
    let stderr = assert_exit(&f.verify(&["--org", &b]), 0);
    assert!(
        stderr.contains("the store holds its 1 signed checkpoint"),
        "{stderr}"
    );
}

async fn another_key(f: Fixture) {
    let stranger = AuditSigner::generate(ORIGIN).unwrap();
    let stderr = assert_exit(&f.verify(&["--verifier-key", &stranger.verifier_key()]), 3);
    assert!(
        stderr.starts_with(&format!(
            "keyledger: organization {}: checkpoint {} at size 3 (signed ",
            f.a,
            org_origin(ORIGIN, f.a)
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not hold: the checkpoint has no signature from keyledger.test"),
        "{stderr}"
    );
    assert!(
        stderr.contains("; 3 more checkpoints do not hold either"),
        "{stderr}"
    );
}

async fn deleted_tail(f: Fixture) {
    f.delete_tail().await;
    assert!(f.chains_hold().await, "a deleted tail leaves every chain intact");
    let stderr = assert_exit(&f.verify(&[]), 3);
    assert!(
        stderr.starts_with(&format!(
            "keyledger: organization {}: checkpoint {} at size 6 (signed ",
            f.a,
            org_origin(ORIGIN, f.a)
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not hold: the store has only 4 events of its stream (a deleted tail)"),
        "{stderr}"
    );
}

async fn deleted_stream(f: Fixture) {
    f.delete_stream().await;
    assert!(
        f.chains_hold().await,
        "a deleted stream leaves every other chain intact"
    );
    let stderr = assert_exit(&f.verify(&[]), 3);
    assert!(
        stderr.starts_with(&format!(
            "keyledger: organization {}: checkpoint {} at size 6",
            f.b,
            org_origin(ORIGIN, f.b)
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not hold: the store has no event of its stream (a deleted stream)"),
        "{stderr}"
    );
    // Scoped to the organization, it is the same verdict.
    let b = f.b.to_string();
    let stderr = assert_exit(&f.verify(&["--org", &b]), 3);
    assert!(stderr.contains(&format!("organization {b}")), "{stderr}");
}

async fn rewritten_history(f: Fixture) {
    f.rewrite_version_3().await;
    assert!(
        f.chains_hold().await,
        "the recomputed hashes pass the chain check: only the checkpoints catch the rewrite"
    );
    let stderr = assert_exit(&f.verify(&[]), 3);
    // Every checkpoint that covers version 3 fails: a's at 3 (reported) and at 6, the global.
    assert!(
        stderr.starts_with(&format!(
            "keyledger: organization {}: checkpoint {} at size 3",
            f.a,
            org_origin(ORIGIN, f.a)
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "the root of the first 3 events of its stream differs from the signed root (first differing leaf: \
             version 3, event {})",
            f.event(f.a, 3).event_id
        )),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("; 2 more checkpoints do not hold either\n"),
        "{stderr}"
    );
    // Scoped to b, whose stream is untouched, the store holds.
    assert_exit(&f.verify(&["--org", &f.b.to_string()]), 0);
}

async fn swapped_positions(f: Fixture) {
    f.swap_positions().await;
    assert!(
        f.chains_hold().await,
        "a swap that keeps each stream's order passes the chain check"
    );
    let stderr = assert_exit(&f.verify(&[]), 3);
    let moved = f.event(f.b, 2);
    assert!(
        stderr.starts_with(&format!(
            "keyledger: global log: checkpoint {} at size 12",
            global_origin(ORIGIN)
        )),
        "{stderr}"
    );
    // Leaf 2 (a's version 2 when folded) now holds b's version 2.
    assert!(
        stderr.contains(&format!(
            "the root of the first 12 events differs from the signed root (first differing leaf: global leaf 2, event \
             {} of organization {}, version 2, position {})",
            moved.event_id,
            f.b,
            f.event(f.a, 2).global_position
        )),
        "{stderr}"
    );
}

/// One test per backend for each `name => scenario`: `sqlite::name`, and `postgres::name` in
/// its own database (skipped when PostgreSQL is not available and not required).
macro_rules! on_both_backends {
    ($($name:ident => $scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$scenario(super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(f) = super::Fixture::postgres("kl_verify_store").await else {
                        return;
                    };
                    super::$scenario(f).await;
                }
            )*
        }
    };
}

on_both_backends!(
    an_intact_store_holds_its_checkpoints => intact,
    another_verifier_key_fails_naming_the_checkpoint => another_key,
    a_deleted_tail_fails_naming_the_organization => deleted_tail,
    a_deleted_stream_fails_naming_the_organization => deleted_stream,
    a_rewritten_history_with_recomputed_hashes_fails_naming_the_organization => rewritten_history,
    swapped_positions_fail_naming_the_organization => swapped_positions,
);
