//! The operator commands, run as the real `keyledger` binary against SQLite and PostgreSQL
//! stores populated in-process. PostgreSQL tests skip when no server answers, unless
//! `KEYLEDGER_REQUIRE_POSTGRES=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use keyledger_domain::event::{OrganizationRegistered, Tenant};
use keyledger_domain::{
    AuditLog, CommandId, Event, GlobalPosition, OrgId, Plan, StreamId, StreamVersion, TenantId,
};
use keyledger_postgres::testing::TestDatabase;
use keyledger_postgres::{PgProjections, PostgresStore};
use keyledger_projection::{Projection, ProjectionSink, Runner};
use keyledger_sqlite::{SqliteProjections, SqliteStore};
use keyledger_store::chain::now_micros;
use keyledger_store::conformance::{cmk_enabled, dek_generated, metadata, tenant_added};
use keyledger_store::{EventStore, KeyRing, NewEvent, StoredEvent, merkle};
use sqlx::Connection as _;

// ---------------------------------------------------------------------------------------------
// Harness

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

/// Which SQLite file a statement runs in: the event log or the projection file beside it.
#[derive(Debug, Clone, Copy)]
enum File {
    Log,
    Projections,
}

/// One empty store: a SQLite file in a temporary directory or a fresh PostgreSQL database.
enum Target {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres(TestDatabase),
}

impl Target {
    /// `None`: PostgreSQL is not reachable and not required.
    async fn new(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("store").join("keyledger.db");
                Some(Target::Sqlite { _dir: dir, path })
            }
            Kind::Postgres => TestDatabase::create("kl_cli").await.map(Target::Postgres),
        }
    }

    fn url(&self) -> String {
        match self {
            Target::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Target::Postgres(db) => db.url().to_owned(),
        }
    }

    async fn open(&self, ring: Arc<KeyRing>) -> (Arc<dyn EventStore>, Arc<dyn ProjectionSink>, Closer) {
        match self {
            Target::Sqlite { path, .. } => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let s = SqliteStore::open(path, ring).await.expect("open sqlite");
                (
                    Arc::new(s.clone()),
                    Arc::new(SqliteProjections::new(&s)),
                    Closer::Sqlite(s),
                )
            }
            Target::Postgres(db) => {
                let s = PostgresStore::connect(db.url(), ring).await.expect("connect");
                (
                    Arc::new(s.clone()),
                    Arc::new(PgProjections::new(&s)),
                    Closer::Postgres(s),
                )
            }
        }
    }

    /// Runs one SQL statement with text parameters (`?` on SQLite, `$n` on PostgreSQL) and
    /// returns the first column of each row as text.
    async fn sql(&self, sqlite: &str, postgres: &str, params: &[&str]) -> Vec<String> {
        self.sql_in(File::Log, sqlite, postgres, params).await
    }

    /// [`Target::sql`] in one of SQLite's two files (PostgreSQL has one database).
    async fn sql_in(&self, file: File, sqlite: &str, postgres: &str, params: &[&str]) -> Vec<String> {
        match self {
            Target::Sqlite { path, .. } => {
                let path = match file {
                    File::Log => path.clone(),
                    File::Projections => keyledger_sqlite::projections_path(path),
                };
                let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let mut q = sqlx::query_scalar::<_, String>(sqlite);
                for p in params {
                    q = q.bind(*p);
                }
                q.fetch_all(&mut c).await.expect(sqlite)
            }
            Target::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
                let mut q = sqlx::query_scalar::<_, String>(postgres);
                for p in params {
                    q = q.bind(*p);
                }
                q.fetch_all(&mut c).await.expect(postgres)
            }
        }
    }

    /// Every projection row and checkpoint, as text, in a stable order.
    async fn projection_rows(&self) -> Vec<String> {
        let mut rows = self
            .sql_in(
                File::Projections,
                "SELECT projection || '|' || org_id || '|' || doc FROM projection_documents \
                 ORDER BY projection, org_id",
                "SELECT projection || '|' || org_id || '|' || doc::text FROM projection_documents \
                 ORDER BY projection, org_id",
                &[],
            )
            .await;
        rows.extend(
            self.sql_in(
                File::Projections,
                "SELECT tenant_id || '|' || position || '|' || org_id || '|' || action || '|' || entry \
                 FROM tenant_audit ORDER BY tenant_id, position",
                "SELECT tenant_id || '|' || position::text || '|' || org_id || '|' || action || '|' || \
                 entry::text FROM tenant_audit ORDER BY tenant_id, position",
                &[],
            )
            .await,
        );
        rows.extend(
            self.sql_in(
                File::Projections,
                "SELECT projection || '|' || position FROM projection_checkpoints ORDER BY projection",
                "SELECT projection || '|' || position::text FROM projection_checkpoints ORDER BY projection",
                &[],
            )
            .await,
        );
        rows
    }
}

enum Closer {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Closer {
    async fn close(self) {
        match self {
            Closer::Sqlite(s) => s.close().await,
            Closer::Postgres(s) => s.pool().close().await,
        }
    }
}

/// What [`populate`] wrote.
struct Populated {
    secret: String,
    first_org: OrgId,
    last_position: GlobalPosition,
    events: usize,
}

/// Three organizations, each registered with a tenant, a DEK, an enabled customer key carrying
/// a client secret (sealed) and another tenant, in two appends with command ids; then two
/// checkpoints in stream `audit`.
async fn populate(store: &dyn EventStore) -> Populated {
    let secret = format!("client-secret-{}", uuid_like());
    let mut events = 0;
    let mut orgs = Vec::new();
    for i in 0..3u8 {
        let org = OrgId::new_v7();
        orgs.push(org);
        let stream = StreamId::for_org(org);
        let registered = NewEvent {
            event: Event::OrganizationRegistered(OrganizationRegistered {
                org_id: org,
                name: format!("org-number-{i}"),
                plan: Plan::free(),
                tenants: vec![Tenant {
                    tenant_id: TenantId::new_v7(),
                    name: format!("tenant-{i}-a"),
                }],
                registered_at: now_micros(),
            }),
            metadata: metadata(),
        };
        store
            .append(
                stream,
                StreamVersion::NONE,
                vec![registered, dek_generated(&[i + 1; 48])],
                Some(CommandId::parse(&format!("register-{i}")).unwrap()),
            )
            .await
            .expect("register");
        store
            .append(
                stream,
                StreamVersion(2),
                vec![cmk_enabled(&secret), tenant_added(&format!("tenant-{i}-b"))],
                Some(CommandId::parse(&format!("enable-{i}")).unwrap()),
            )
            .await
            .expect("enable");
        events += 4;
    }
    // Stream `audit` (ADR 0025) travels with the organizations: verified, exported, imported,
    // and skipped by the projections. Its checkpoints are real ones (`verify` holds the store
    // against them), of the global log and of the first organization's.
    let org_events = all_events(store, 12).await;
    let first: Vec<_> = org_events
        .iter()
        .filter(|e| e.stream_id == StreamId::for_org(orgs[0]))
        .cloned()
        .collect();
    let last_position = store
        .append(
            StreamId::Audit,
            StreamVersion::NONE,
            vec![
                checkpoint_of(AuditLog::Global, &org_events),
                checkpoint_of(AuditLog::Org(orgs[0]), &first),
            ],
            None,
        )
        .await
        .expect("checkpoints")
        .last_position;
    events += 2;
    Populated {
        secret,
        first_org: orgs[0],
        last_position,
        events,
    }
}

/// The first `n` events in global order, waiting for PostgreSQL's reader fence (any
/// transaction open on the server may hold the last ones back for a moment).
async fn all_events(store: &dyn EventStore, n: usize) -> Vec<StoredEvent> {
    let started = std::time::Instant::now();
    loop {
        let events = store.read_all(GlobalPosition::START, n).await.expect("read");
        if events.len() == n || started.elapsed() > Duration::from_secs(30) {
            assert_eq!(events.len(), n);
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The checkpoint of `log` over `events` (its leaves, in order), as the engine records it:
/// the real root, signed by a fresh key.
fn checkpoint_of(log: AuditLog, events: &[StoredEvent]) -> NewEvent {
    let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
    let size = u64::try_from(leaves.len()).unwrap();
    let signer = keyledger_audit::AuditSigner::generate("keyledger.localhost").unwrap();
    let checkpoint = signer
        .sign_log(log, size, merkle::root(&leaves), chrono::Utc::now())
        .unwrap();
    NewEvent {
        event: Event::AuditCheckpointSigned(checkpoint),
        metadata: metadata(),
    }
}

fn uuid_like() -> String {
    TenantId::new_v7().to_string().replace('-', "")
}

/// A populated target with live projections, and the key ring file that sealed it.
async fn populated(kind: Kind, keys_dir: &Path) -> Option<(Target, Populated, PathBuf)> {
    let target = Target::new(kind).await?;
    let ring = Arc::new(KeyRing::generate());
    let key_file = keys_dir.join("internal-keys.json");
    ring.save(&key_file).expect("save key ring");
    let (store, sink, closer) = target.open(ring).await;
    let p = populate(store.as_ref()).await;
    for projection in Projection::ALL {
        let caught_up = Runner::new(store.clone(), sink.clone(), projection)
            .catch_up_to(p.last_position.0, Duration::from_secs(30))
            .await
            .expect("live projection");
        assert!(caught_up, "the live projection caught up");
    }
    closer.close().await;
    Some((target, p, key_file))
}

/// Runs `keyledger` in `dir` with no `KEYLEDGER_*` configuration of the environment.
fn keyledger(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYLEDGER_") && k.contains("__") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run keyledger")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// A failure is one line: `keyledger: <what failed>: <cause>`.
#[track_caller]
fn assert_one_line_failure(o: &Output, mentions: &str) {
    assert_exit(o, 1);
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("keyledger: "), "{err}");
    assert!(err.contains(mentions), "{err} mentions {mentions}");
    assert!(
        !err.contains("Error {") && !err.contains("Backend("),
        "no Debug dump: {err}"
    );
}

/// Export lines without their global positions, parsed.
fn without_positions(export: &str) -> Vec<serde_json::Value> {
    export
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v.as_object_mut()
                .expect("an envelope")
                .remove("global_position")
                .expect("a global position");
            v
        })
        .collect()
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrate_creates_the_schema_then_is_up_to_date,
    verify_passes_then_names_a_tampered_event,
    export_import_export_keeps_every_field_but_positions,
    import_names_a_bad_line_and_stores_nothing,
    rebuild_gives_the_live_projection_rows,
);

// ---------------------------------------------------------------------------------------------
// Tests

async fn migrate_creates_the_schema_then_is_up_to_date(kind: Kind) {
    let Some(target) = Target::new(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = target.url();
    let first = keyledger(dir.path(), &["migrate", "--store", &url]);
    assert_exit(&first, 0);
    // Every migration of the store's kind, counted from the migrations folder.
    let folder = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
    };
    let migrations = std::fs::read_dir(format!(
        "{}/../../migrations/{folder}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
    .count();
    assert!(migrations >= 2);
    assert!(
        stdout(&first).contains(&format!("applied {migrations} migration(s)")),
        "{}",
        stdout(&first)
    );
    let tables = target
        .sql(
            "SELECT name FROM sqlite_master WHERE name = 'events'",
            "SELECT tablename::text FROM pg_tables WHERE tablename = 'events'",
            &[],
        )
        .await;
    assert_eq!(tables, ["events"]);
    let again = keyledger(dir.path(), &["migrate", "--store", &url]);
    assert_exit(&again, 0);
    assert!(stdout(&again).contains("up to date"), "{}", stdout(&again));
}

async fn verify_passes_then_names_a_tampered_event(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let Some((target, p, _)) = populated(kind, keys.path()).await else {
        return;
    };
    let url = target.url();
    let ok = keyledger(keys.path(), &["verify", "--store", &url]);
    assert_exit(&ok, 0);
    assert!(
        stderr(&ok).contains(&format!("verified {} events", p.events)),
        "{}",
        stderr(&ok)
    );

    // One byte of the first organization's registration: "org-number-0" becomes "Org-number-0".
    let stream = StreamId::for_org(p.first_org).to_string();
    let event_id = target
        .sql(
            "SELECT event_id FROM events WHERE stream_id = ? AND stream_version = 1",
            "SELECT event_id FROM events WHERE stream_id = $1 AND stream_version = 1",
            &[&stream],
        )
        .await
        .remove(0);
    target
        .sql(
            "UPDATE events SET payload = replace(payload, 'org-number-0', 'Org-number-0') \
             WHERE stream_id = ? RETURNING payload",
            "UPDATE events SET payload = replace(payload, 'org-number-0', 'Org-number-0') \
             WHERE stream_id = $1 RETURNING payload",
            &[&stream],
        )
        .await;
    let broken = keyledger(keys.path(), &["verify", "--store", &url]);
    assert_exit(&broken, 3);
    let err = stderr(&broken);
    for part in [&stream, "version 1", &event_id] {
        assert!(err.contains(part), "{err} names {part}");
    }
    // The scope of one organization finds it too; another organization is intact.
    let org = p.first_org.to_string();
    assert_exit(
        &keyledger(keys.path(), &["verify", "--store", &url, "--org", &org]),
        3,
    );
    let other = OrgId::new_v7().to_string();
    assert_exit(
        &keyledger(keys.path(), &["verify", "--store", &url, "--org", &other]),
        0,
    );

    // The chain of stream `audit` is checked too: a rewritten checkpoint is named.
    target
        .sql(
            "UPDATE events SET payload = replace(payload, '\"tree_size\":12', '\"tree_size\":13') \
             WHERE stream_id = 'audit' RETURNING payload",
            "UPDATE events SET payload = replace(payload, '\"tree_size\":12', '\"tree_size\":13') \
             WHERE stream_id = 'audit' RETURNING payload",
            &[],
        )
        .await;
    // Repair the organization first, so the audit stream is the only break.
    target
        .sql(
            "UPDATE events SET payload = replace(payload, 'Org-number-0', 'org-number-0') \
             WHERE stream_id = ? RETURNING payload",
            "UPDATE events SET payload = replace(payload, 'Org-number-0', 'org-number-0') \
             WHERE stream_id = $1 RETURNING payload",
            &[&stream],
        )
        .await;
    let broken = keyledger(keys.path(), &["verify", "--store", &url]);
    assert_exit(&broken, 3);
    let err = stderr(&broken);
    assert!(err.contains("stream audit, version 1"), "{err}");
}

async fn export_import_export_keeps_every_field_but_positions(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let Some((source, p, _)) = populated(kind, keys.path()).await else {
        return;
    };
    let dir = keys.path();
    let export = keyledger(dir, &["events", "export", "--store", &source.url()]);
    assert_exit(&export, 0);
    let lines = stdout(&export);
    assert_eq!(lines.lines().count(), p.events);
    assert!(lines.contains("CustomerManagedKeyEnabled"));
    assert!(!lines.contains(&p.secret), "the client secret stays sealed");
    let file = dir.join("export.jsonl");
    std::fs::write(&file, &lines).unwrap();

    let Some(target) = Target::new(kind).await else {
        return;
    };
    let file_arg = file.to_str().unwrap();
    let import = keyledger(dir, &["events", "import", "--store", &target.url(), file_arg]);
    assert_exit(&import, 0);
    assert!(
        stderr(&import).contains(&format!("imported {} events", p.events)),
        "{}",
        stderr(&import)
    );
    let again = keyledger(dir, &["events", "export", "--store", &target.url()]);
    assert_exit(&again, 0);
    assert_eq!(without_positions(&stdout(&again)), without_positions(&lines));
    assert_exit(&keyledger(dir, &["verify", "--store", &target.url()]), 0);

    // --after skips the first events.
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    let after = first["global_position"].to_string();
    let tail = keyledger(
        dir,
        &["events", "export", "--store", &source.url(), "--after", &after],
    );
    assert_eq!(stdout(&tail).lines().count(), p.events - 1);

    // A second import into the now non-empty store is refused and adds nothing.
    let refused = keyledger(dir, &["events", "import", "--store", &target.url(), file_arg]);
    assert_one_line_failure(&refused, "not empty");
    let after_refusal = keyledger(dir, &["events", "export", "--store", &target.url()]);
    assert_eq!(stdout(&after_refusal).lines().count(), p.events);
}

async fn import_names_a_bad_line_and_stores_nothing(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let Some((source, _, _)) = populated(kind, keys.path()).await else {
        return;
    };
    let dir = keys.path();
    let export = stdout(&keyledger(dir, &["events", "export", "--store", &source.url()]));
    let mut lines: Vec<&str> = export.lines().collect();
    lines[2] = "{\"event_id\": \"not an envelope\"";
    let file = dir.join("bad.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let Some(target) = Target::new(kind).await else {
        return;
    };
    let url = target.url();
    let o = keyledger(
        dir,
        &["events", "import", "--store", &url, file.to_str().unwrap()],
    );
    assert_one_line_failure(&o, "line 3");
    let left = keyledger(dir, &["events", "export", "--store", &url]);
    assert_exit(&left, 0);
    assert_eq!(stdout(&left), "", "nothing was imported");

    // A tampered line is named too, with its stream, version and event.
    let mut tampered: Vec<String> = export.lines().map(str::to_owned).collect();
    tampered[1] = tampered[1].replacen("\"occurred_at\":\"2", "\"occurred_at\":\"1", 1);
    std::fs::write(&file, tampered.join("\n")).unwrap();
    let o = keyledger(
        dir,
        &["events", "import", "--store", &url, file.to_str().unwrap()],
    );
    assert_one_line_failure(&o, "line 2");
    let v: serde_json::Value = serde_json::from_str(&tampered[1]).unwrap();
    assert!(
        stderr(&o).contains(v["event_id"].as_str().unwrap()),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stdout(&keyledger(dir, &["events", "export", "--store", &url])),
        ""
    );
}

async fn rebuild_gives_the_live_projection_rows(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let Some((target, p, key_file)) = populated(kind, keys.path()).await else {
        return;
    };
    let live = target.projection_rows().await;
    assert!(
        live.iter().any(|r| r.starts_with("organization_encryption|"))
            && live.iter().any(|r| r.contains(&p.first_org.to_string())),
        "the live projections have rows: {live:?}"
    );
    // Lose the rows, then rebuild them.
    target
        .sql_in(
            File::Projections,
            "DELETE FROM projection_documents RETURNING org_id",
            "DELETE FROM projection_documents RETURNING org_id",
            &[],
        )
        .await;
    assert_ne!(target.projection_rows().await, live);
    let url = target.url();
    let key_arg = key_file.to_str().unwrap();
    let o = keyledger(
        keys.path(),
        &["projections", "rebuild", "--store", &url, "--key-file", key_arg],
    );
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("events/s"), "{}", stderr(&o));
    assert_eq!(target.projection_rows().await, live);

    // Without the key file: a readable error, and the command never creates one.
    let missing = keys.path().join("absent.json");
    let o = keyledger(
        keys.path(),
        &[
            "projections",
            "rebuild",
            "--store",
            &url,
            "--key-file",
            missing.to_str().unwrap(),
        ],
    );
    assert_one_line_failure(&o, "absent.json");
    assert!(!missing.exists());
}

#[test]
fn a_bad_url_or_a_missing_store_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyledger(dir.path(), &["verify", "--store", "mysql://user:hunter2@db/x"]);
    assert_one_line_failure(&o, "bad store URL");
    assert!(!stderr(&o).contains("hunter2"));
    let o = keyledger(
        dir.path(),
        &["events", "export", "--store", "sqlite://missing.db"],
    );
    assert_one_line_failure(&o, "missing.db does not exist");
    assert!(
        !dir.path().join("missing.db").exists(),
        "reading commands create nothing"
    );
    // The store comes from KEYLEDGER_STORE__URL too; the default key file is not needed.
    let o = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(["migrate"])
        .current_dir(dir.path())
        .env("KEYLEDGER_STORE__URL", "sqlite://from-env.db")
        .output()
        .unwrap();
    assert_exit(&o, 0);
    assert!(dir.path().join("from-env.db").exists());
    let o = keyledger(
        dir.path(),
        &["projections", "rebuild", "--store", "sqlite://from-env.db"],
    );
    assert_one_line_failure(&o, "internal-keys.json");
    // Usage errors are clap's: exit 2.
    assert_exit(&keyledger(dir.path(), &["verify"]), 2);
}
