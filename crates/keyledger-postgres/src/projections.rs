//! Projection tables in PostgreSQL, and the advisory-lock lease that makes one runner per
//! projection lead among several instances.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use keyledger_domain::{OrgId, TenantId};
use keyledger_projection::{AuditEntry, AuditQuery, Changes, Projection, ProjectionSink, SinkError};
use keyledger_store::merkle::{AuditLog, Frontier};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection as _, Row as _};

use crate::PostgresStore;

fn sink_err(e: impl std::error::Error + Send + Sync + 'static) -> SinkError {
    SinkError::Backend(Box::new(e))
}

/// Whether the session `$1` (started at `$2`, in microseconds since the epoch) holds the
/// advisory lock with the 64-bit key `$3 << 32 | $4` in this database. `pg_locks` shows the
/// locks as they are now, not as of the transaction's snapshot.
const LEASE_HELD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks AS l \
       JOIN pg_stat_activity AS a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $1 \
       AND (extract(epoch FROM a.backend_start) * 1000000)::bigint = $2 \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND l.classid::bigint = $3 AND l.objid::bigint = $4 AND l.objsubid = 1)";

/// A database error as a sink error: a pool that gave no connection in time is
/// [`SinkError::Unavailable`].
fn db_err(e: sqlx::Error) -> SinkError {
    if crate::is_no_connection(&e) {
        SinkError::Unavailable(Box::new(e))
    } else {
        SinkError::Backend(Box::new(e))
    }
}

/// The projection rows of one PostgreSQL database.
///
/// Commits move a projection's checkpoint forward only. A sink made by
/// [`PgProjections::fenced`] also checks, in each commit's transaction, that its lease is still
/// held; that is the sink a leased runner writes through (see [`run_led`]).
#[derive(Debug, Clone)]
pub struct PgProjections {
    pool: PgPool,
    /// The leases this sink writes under; empty: an unfenced sink.
    fences: Vec<LeaseFence>,
}

impl PgProjections {
    pub fn new(store: &PostgresStore) -> Self {
        Self {
            pool: store.pool().clone(),
            fences: Vec::new(),
        }
    }

    /// The same rows, with every commit fenced on `lease` (and on the leases this sink was
    /// already fenced on): a commit to a projection whose lease is gone, or was never among
    /// them, fails with [`SinkError::LeaseLost`] and writes nothing.
    pub fn fenced(&self, lease: &Lease) -> Self {
        let mut fences = self.fences.clone();
        fences.retain(|f| f.projection != lease.fence.projection);
        fences.push(lease.fence);
        Self {
            pool: self.pool.clone(),
            fences,
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The fence, inside the writing transaction: unless this sink is unfenced, the lease of
    /// `projection` is still held by the session that took it.
    async fn check_fence(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        projection: Projection,
    ) -> Result<(), SinkError> {
        if self.fences.is_empty() {
            return Ok(());
        }
        let Some(fence) = self.fences.iter().find(|f| f.projection == projection) else {
            return Err(SinkError::LeaseLost { projection });
        };
        let held: bool = sqlx::query_scalar(LEASE_HELD_SQL)
            .bind(fence.pid)
            .bind(fence.started_us)
            .bind((fence.key >> 32) & 0xffff_ffff)
            .bind(fence.key & 0xffff_ffff)
            .fetch_one(&mut **tx)
            .await
            .map_err(sink_err)?;
        if held {
            Ok(())
        } else {
            Err(SinkError::LeaseLost { projection })
        }
    }
}

#[async_trait]
impl ProjectionSink for PgProjections {
    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, SinkError> {
        let rows = sqlx::query(
            "SELECT entry::text FROM tenant_audit WHERE tenant_id = $1 AND position > $2 \
             AND ($3::text IS NULL OR action = $3) AND ($4::timestamptz IS NULL OR occurred_at >= $4) \
             AND ($5::timestamptz IS NULL OR occurred_at < $5) ORDER BY position LIMIT $6",
        )
        .bind(q.tenant.to_string())
        .bind(i64::try_from(q.after).unwrap_or(i64::MAX))
        .bind(q.action.as_deref())
        .bind(q.since)
        .bind(q.until)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(sink_err))
            .collect()
    }

    async fn tenant_known(&self, tenant: TenantId) -> Result<bool, SinkError> {
        let id = tenant.to_string();
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tenant_audit WHERE tenant_id = $1) \
             OR EXISTS (SELECT 1 FROM projection_documents \
                        WHERE projection = 'tenant_audit' AND doc -> 'tenants' ? $1)",
        )
        .bind(&id)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(found)
    }

    async fn organizations(&self, projection: Projection, limit: u32) -> Result<Vec<OrgId>, SinkError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT org_id FROM projection_documents WHERE projection = $1 ORDER BY org_id LIMIT $2",
        )
        .bind(projection.name())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        ids.iter().map(|id| id.parse().map_err(sink_err)).collect()
    }

    async fn checkpoint(&self, projection: Projection) -> Result<u64, SinkError> {
        let row = sqlx::query("SELECT position FROM projection_checkpoints WHERE projection = $1")
            .bind(projection.name())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        // A negative position (never written) reads as the start, as before.
        Ok(u64::try_from(row.map(|r| r.get::<i64, _>(0)).unwrap_or(0)).unwrap_or(0))
    }

    async fn load(&self, projection: Projection, orgs: &[OrgId]) -> Result<HashMap<OrgId, Value>, SinkError> {
        let ids: Vec<String> = orgs.iter().map(ToString::to_string).collect();
        let rows = sqlx::query(
            "SELECT org_id, doc::text FROM projection_documents WHERE projection = $1 AND org_id = ANY($2)",
        )
        .bind(projection.name())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let org: &str = r.get(0);
                let doc: &str = r.get(1);
                Ok((
                    org.parse().map_err(sink_err)?,
                    serde_json::from_str(doc).map_err(sink_err)?,
                ))
            })
            .collect()
    }

    async fn commit(&self, projection: Projection, changes: Changes) -> Result<(), SinkError> {
        let name = projection.name();
        let mut upsert_orgs = Vec::new();
        let mut upsert_docs = Vec::new();
        let mut delete_orgs = Vec::new();
        for (org, doc) in &changes.docs {
            match doc {
                Some(d) => {
                    upsert_orgs.push(org.to_string());
                    upsert_docs.push(d.to_string());
                }
                None => delete_orgs.push(org.to_string()),
            }
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        self.check_fence(&mut tx, projection).await?;
        // Then the checkpoint, forward only. Its row lock also orders this commit after any
        // other one in flight for the projection, which then makes this one stale.
        let moved = sqlx::query(
            "INSERT INTO projection_checkpoints (projection, position) VALUES ($1, $2) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
             WHERE projection_checkpoints.position < excluded.position",
        )
        .bind(name)
        .bind(i64::try_from(changes.checkpoint).map_err(sink_err)?)
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        if moved.rows_affected() == 0 {
            let at: i64 =
                sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(sink_err)?;
            return Err(SinkError::Superseded {
                projection,
                checkpoint: u64::try_from(at).unwrap_or(0),
                attempted: changes.checkpoint,
            });
        }
        sqlx::query(
            "INSERT INTO projection_documents (projection, org_id, doc) \
             SELECT $1, o, d::jsonb FROM unnest($2::text[], $3::text[]) AS t(o, d) \
             ON CONFLICT (projection, org_id) DO UPDATE SET doc = excluded.doc",
        )
        .bind(name)
        .bind(&upsert_orgs)
        .bind(&upsert_docs)
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        sqlx::query("DELETE FROM projection_documents WHERE projection = $1 AND org_id = ANY($2)")
            .bind(name)
            .bind(&delete_orgs)
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
        if !changes.audit.is_empty() {
            let mut tenants = Vec::new();
            let mut positions = Vec::new();
            let mut orgs = Vec::new();
            let mut times = Vec::new();
            let mut actions = Vec::new();
            let mut entries = Vec::new();
            for a in &changes.audit {
                tenants.push(a.tenant_id.to_string());
                positions.push(i64::try_from(a.position).map_err(sink_err)?);
                orgs.push(a.org_id.to_string());
                times.push(a.occurred_at);
                actions.push(a.action.clone());
                entries.push(serde_json::to_string(a).map_err(sink_err)?);
            }
            sqlx::query(
                "INSERT INTO tenant_audit (tenant_id, position, org_id, occurred_at, action, entry) \
                 SELECT t, p, o, w, a, e::jsonb \
                 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]) \
                   AS x(t, p, o, w, a, e)",
            )
            .bind(&tenants)
            .bind(&positions)
            .bind(&orgs)
            .bind(&times)
            .bind(&actions)
            .bind(&entries)
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
        }
        crate::audit_tree::write(&mut tx, &changes.tree)
            .await
            .map_err(sink_err)?;
        tx.commit().await.map_err(sink_err)
    }

    async fn tree_heads(&self, logs: &[AuditLog]) -> Result<BTreeMap<AuditLog, Frontier>, SinkError> {
        crate::audit_tree::heads(&self.pool, logs)
            .await
            .map_err(|e| match e {
                keyledger_store::merkle::TreeError::Unavailable(e) => SinkError::Unavailable(e),
                e => sink_err(e),
            })
    }

    async fn reset(&self, projection: Projection) -> Result<(), SinkError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        self.check_fence(&mut tx, projection).await?;
        sqlx::query("DELETE FROM projection_documents WHERE projection = $1")
            .bind(projection.name())
            .execute(&mut *tx)
            .await
            .map_err(sink_err)?;
        if projection == Projection::TenantAudit {
            sqlx::query("DELETE FROM tenant_audit")
                .execute(&mut *tx)
                .await
                .map_err(sink_err)?;
        }
        if projection == Projection::AuditTree {
            crate::audit_tree::clear(&mut tx).await.map_err(sink_err)?;
        }
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, position) VALUES ($1, 0) \
             ON CONFLICT (projection) DO UPDATE SET position = 0",
        )
        .bind(projection.name())
        .execute(&mut *tx)
        .await
        .map_err(sink_err)?;
        tx.commit().await.map_err(sink_err)
    }
}

/// Leadership of one projection among instances: a session-level advisory lock held on a
/// dedicated connection. It is released when this value drops or the process dies (the server
/// closes the session), and another instance's [`Lease::acquire`] then succeeds.
#[derive(Debug)]
pub struct Lease {
    connection: PgConnection,
    key: i64,
    fence: LeaseFence,
}

/// What names a lease's holder, for the fence a commit checks: the session (backend pid and
/// start time, so a reused pid is not mistaken for it) that holds the projection's advisory
/// lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseFence {
    projection: Projection,
    key: i64,
    pid: i32,
    started_us: i64,
}

/// The key of `projection`'s advisory lock (as `pg_locks` shows it: `classid` the high 32
/// bits, `objid` the low 32 bits, `objsubid` 1), for operators and tests looking for a lease's
/// holder.
pub fn lease_key(projection: Projection) -> i64 {
    named_key(b"keyledger:projection:", projection.name())
}

/// A stable 64-bit advisory-lock key for `name` in `namespace` (FNV-1a).
fn named_key(namespace: &[u8], name: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in namespace.iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    // The same 64 bits, read as PostgreSQL's signed bigint.
    h.cast_signed()
}

/// A session that holds an advisory lock, with what names it in `pg_stat_activity`.
struct LockSession {
    connection: PgConnection,
    pid: i32,
    started_us: i64,
}

/// Takes the session-level advisory lock `key` on a new connection, once; `None` when another
/// session holds it. The lock and the session's pid and start time come from one statement, so
/// once `pg_locks` shows the lock granted, its holder already knows who it is: a session killed
/// from then on is a lost lease, never a failed acquisition.
async fn lock_session(url: &str, key: i64) -> Result<Option<LockSession>, SinkError> {
    let mut connection = PgConnection::connect(url).await.map_err(sink_err)?;
    let (got, pid, started_us): (bool, i32, i64) = sqlx::query_as(
        "SELECT pg_try_advisory_lock($1), pid, \
                (extract(epoch FROM backend_start) * 1000000)::bigint \
         FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .bind(key)
    .fetch_one(&mut connection)
    .await
    .map_err(sink_err)?;
    Ok(got.then_some(LockSession {
        connection,
        pid,
        started_us,
    }))
}

impl Lease {
    /// Tries to take the lease once; `None` when another instance holds it.
    pub async fn try_acquire(url: &str, projection: Projection) -> Result<Option<Lease>, SinkError> {
        let key = lease_key(projection);
        let Some(LockSession {
            connection,
            pid,
            started_us,
        }) = lock_session(url, key).await?
        else {
            return Ok(None);
        };
        Ok(Some(Lease {
            connection,
            key,
            fence: LeaseFence {
                projection,
                key,
                pid,
                started_us,
            },
        }))
    }

    /// Waits until the lease is free, trying every `every`.
    pub async fn acquire(
        url: &str,
        projection: Projection,
        every: std::time::Duration,
    ) -> Result<Lease, SinkError> {
        loop {
            if let Some(lease) = Self::try_acquire(url, projection).await? {
                return Ok(lease);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Whether the lease is still held: the session that holds the lock is alive.
    pub async fn is_held(&mut self) -> bool {
        self.connection.ping().await.is_ok()
    }

    /// Resolves once the lease is found lost, checking every `every`.
    pub async fn lost(&mut self, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            if !self.is_held().await {
                return;
            }
        }
    }

    /// Gives the lease up.
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }
}

/// How often a leader checks that its lease's session is alive.
pub const LEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `projection` while this instance holds its lease: waits for the lease, then follows the
/// store until `shutdown` resolves. Another instance running the same function takes over when
/// this one dies (its session, and so the lock, ends).
///
/// Every commit goes through `sink` fenced on the lease ([`PgProjections::fenced`]), so a
/// leader whose lease session ended cannot write, even before it notices; it notices within
/// [`LEASE_CHECK`] and ends with [`SinkError::LeaseLost`], for its supervisor to compete for the
/// lease again.
pub async fn run_led(
    url: &str,
    store: std::sync::Arc<dyn keyledger_store::EventStore>,
    sink: PgProjections,
    projection: Projection,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), keyledger_projection::RunnerError> {
    tokio::pin!(shutdown);
    let mut lease = tokio::select! {
        () = &mut shutdown => return Ok(()),
        lease = Lease::acquire(url, projection, std::time::Duration::from_millis(200)) => lease?,
    };
    let fenced = std::sync::Arc::new(sink.fenced(&lease));
    let runner = keyledger_projection::Runner::new(store, fenced, projection);
    let result = tokio::select! {
        result = runner.run(shutdown.as_mut()) => result,
        () = lease.lost(LEASE_CHECK) => Err(SinkError::LeaseLost { projection }.into()),
    };
    lease.release().await;
    result
}

/// The advisory-lock key of the background task `name` (as `pg_locks` shows it, like
/// [`lease_key`]).
pub fn task_lease_key(name: &str) -> i64 {
    named_key(b"keyledger:task:", name)
}

/// Runs `task` while this instance leads the background task `name` among the instances
/// sharing the database: waits for its advisory lock (held on a dedicated session, like a
/// projection's [`Lease`]), then runs `task` until `shutdown` resolves or the lock's session
/// is found lost (an error, within [`LEASE_CHECK`]), for the supervisor to
/// compete again. `task` must be safe to overlap briefly with a previous leader's last step:
/// the lock is not checked inside the task's own writes.
pub async fn run_leading<F>(
    url: &str,
    name: &'static str,
    task: F,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SinkError>
where
    F: std::future::Future<Output = ()> + Send,
{
    tokio::pin!(shutdown);
    let key = task_lease_key(name);
    let mut connection = loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            locked = lock_session(url, key) => match locked? {
                Some(session) => break session.connection,
                None => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            },
        }
    };
    tracing::info!(task = name, "leading the background task on this instance");
    let lost = async {
        loop {
            tokio::time::sleep(LEASE_CHECK).await;
            if connection.ping().await.is_err() {
                return;
            }
        }
    };
    let result = tokio::select! {
        () = task => Ok(()),
        () = &mut shutdown => Ok(()),
        () = lost => Err(sink_err(std::io::Error::other(format!(
            "the lease session of background task {name} ended"
        )))),
    };
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut connection)
        .await;
    let _ = connection.close().await;
    result
}
