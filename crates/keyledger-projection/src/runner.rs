//! Projection runners: follow the store, fold batches of events, and write each batch's rows
//! with the checkpoint in one transaction of the sink, so a crash neither loses an update nor
//! applies one twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use keyledger_domain::{GlobalPosition, OrgId, TenantId};
use keyledger_store::envelope::StoredEvent;
use keyledger_store::merkle::{
    AuditLog, AuditTrees, Frontier, Hash, NodeAddr, TreeChanges, TreeError, TreeRows, fold_events,
    logs_fed_by,
};
use keyledger_store::subscribe::NextPage;
use keyledger_store::{EventStore, StoreError};
use serde_json::Value;

use crate::{AuditEntry, Doc, Projection, ProjectionError};

/// Everything one batch changed in one projection, written atomically with its checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Per organization: the new document, or `None` to delete it.
    pub docs: BTreeMap<OrgId, Option<Value>>,
    pub audit: Vec<AuditEntry>,
    /// New audit-tree nodes and frontiers ([`Projection::AuditTree`] only).
    pub tree: TreeChanges,
    /// The position of the last event folded.
    pub checkpoint: u64,
}

/// Why a sink failed. Usually transient (the database); the runner stops and a restart resumes
/// from the last committed checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("projection storage failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The stored checkpoint is already at or past this commit's: another runner committed
    /// these events first. Nothing was written. This runner is not (or no longer) the
    /// projection's only writer: stop it; a restart resumes from the stored checkpoint.
    #[error("projection {} is at position {checkpoint}; a commit up to {attempted} would move it back", projection.name())]
    Superseded {
        projection: Projection,
        checkpoint: u64,
        attempted: u64,
    },
    /// The lease this sink's commits are fenced on is no longer held (PostgreSQL: its session
    /// ended, so another instance may lead the projection). Nothing was written. Stop the
    /// runner and compete for the lease again.
    #[error("the lease of projection {} is lost", projection.name())]
    LeaseLost { projection: Projection },
    /// No connection came free in time (the pool is busy or the database does not answer).
    /// Nothing was written. Retry after a pause (HTTP: 503 `store_unavailable`).
    #[error("no connection to the projection storage in time")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A deliberately injected failure (tests of crash safety).
    #[error("injected failure")]
    Injected,
}

/// Where a projection's rows live (SQLite or PostgreSQL tables, or memory).
#[async_trait]
pub trait ProjectionSink: Send + Sync {
    /// The position of the last event this projection has folded (0: none).
    async fn checkpoint(&self, projection: Projection) -> Result<u64, SinkError>;
    /// The current documents of `orgs`; absent ones are left out.
    async fn load(&self, projection: Projection, orgs: &[OrgId]) -> Result<HashMap<OrgId, Value>, SinkError>;
    /// Writes `changes` and moves the checkpoint forward, all or nothing. A checkpoint not
    /// past the stored one gives [`SinkError::Superseded`] and writes nothing.
    async fn commit(&self, projection: Projection, changes: Changes) -> Result<(), SinkError>;
    /// Deletes every row of the projection and sets its checkpoint to 0, all or nothing.
    async fn reset(&self, projection: Projection) -> Result<(), SinkError>;
    /// The stored frontiers of these audit-tree logs, as the runner's last commit left them
    /// (absent: an empty log).
    async fn tree_heads(&self, logs: &[AuditLog]) -> Result<BTreeMap<AuditLog, Frontier>, SinkError>;
    /// Tenant-audit rows that match `query`, oldest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, SinkError>;
    /// Whether the tenant has audit rows or belongs to an organization now.
    async fn tenant_known(&self, tenant: TenantId) -> Result<bool, SinkError>;
}

/// A page of the tenant audit: rows of `tenant` with a position above `after`, at most
/// `limit`, optionally only one `action` (event type) and only within `[since, until)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    pub tenant: TenantId,
    pub after: u64,
    pub limit: u32,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl AuditQuery {
    /// Every row of `tenant`.
    pub fn all(tenant: TenantId) -> Self {
        Self {
            tenant,
            after: 0,
            limit: u32::MAX,
            action: None,
            since: None,
            until: None,
        }
    }

    /// Whether `entry` matches everything but the tenant, position and limit.
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.action.as_ref().is_none_or(|a| entry.action == *a)
            && self.since.is_none_or(|t| entry.occurred_at >= t)
            && self.until.is_none_or(|t| entry.occurred_at < t)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Fold(#[from] ProjectionError),
}

/// Runs one projection.
pub struct Runner {
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    projection: Projection,
    batch: usize,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

impl Runner {
    pub fn new(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>, projection: Projection) -> Self {
        Self {
            store,
            sink,
            projection,
            batch: 1000,
        }
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Folds `events` (consecutive, after the checkpoint) and commits them as one batch.
    async fn apply_batch(&self, events: &[StoredEvent]) -> Result<(), RunnerError> {
        let Some(last) = events.last() else { return Ok(()) };
        if self.projection == Projection::AuditTree {
            return self.apply_tree_batch(events, last.global_position.0).await;
        }
        let orgs: Vec<OrgId> = events
            .iter()
            .map(|e| e.stream_id.org_id())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let loaded: HashMap<OrgId, Value> = self.sink.load(self.projection, &orgs).await?;
        // Documents stay typed for the whole batch: parsed once, serialized once.
        let mut docs: HashMap<OrgId, Option<Doc>> = HashMap::with_capacity(orgs.len());
        for (org, value) in &loaded {
            docs.insert(*org, Some(self.projection.parse(*org, value)?));
        }
        let mut audit = Vec::new();
        for stored in events {
            let org = stored.stream_id.org_id();
            let event = stored.decode().map_err(|source| ProjectionError::Decode {
                position: stored.global_position.0,
                source,
            })?;
            let current = docs.remove(&org).flatten();
            let (next, rows) = self.projection.fold(current, stored, &event);
            docs.insert(org, next);
            audit.extend(rows);
        }
        let changes = Changes {
            docs: docs
                .into_iter()
                .map(|(org, d)| (org, d.map(|d| d.to_value())))
                .collect(),
            audit,
            tree: TreeChanges::default(),
            checkpoint: last.global_position.0,
        };
        self.sink.commit(self.projection, changes).await?;
        Ok(())
    }

    /// The audit tree's batch: the leaves of `events` appended to the global log and their
    /// organizations' logs, from the frontiers stored, committed with the checkpoint.
    async fn apply_tree_batch(&self, events: &[StoredEvent], checkpoint: u64) -> Result<(), RunnerError> {
        let heads = self.sink.tree_heads(&logs_fed_by(events)).await?;
        let tree = fold_events(heads, events).map_err(ProjectionError::Tree)?;
        let changes = Changes {
            tree,
            checkpoint,
            ..Changes::default()
        };
        self.sink.commit(self.projection, changes).await?;
        Ok(())
    }

    /// Folds everything after the checkpoint, then returns the new checkpoint.
    pub async fn catch_up(&self) -> Result<u64, RunnerError> {
        let mut after = self.sink.checkpoint(self.projection).await?;
        loop {
            let events = self.store.read_all(GlobalPosition(after), self.batch).await?;
            let Some(last) = events.last() else {
                return Ok(after);
            };
            let next = last.global_position.0;
            self.apply_batch(&events).await?;
            after = next;
        }
    }

    /// Catches up until the checkpoint reaches `position` (an event known to be committed).
    /// On PostgreSQL a catch-up reader stays behind the oldest transaction still open on the
    /// server, so this may take a few rounds; gives up with `false` after `timeout`.
    pub async fn catch_up_to(
        &self,
        position: u64,
        timeout: std::time::Duration,
    ) -> Result<bool, RunnerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.catch_up().await? >= position {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Deletes the projection's rows and folds the whole log from position 0. `progress` is
    /// called after each batch with the position reached.
    pub async fn rebuild(&self, progress: impl FnMut(u64) + Send) -> Result<u64, RunnerError> {
        Self::rebuild_together(std::slice::from_ref(self), progress).await
    }

    /// Rebuilds every projection from position 0, reading the log once: each batch is folded
    /// into all of them. `progress` is called after each batch with the position reached.
    pub async fn rebuild_all(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
        batch: usize,
        progress: impl FnMut(u64) + Send,
    ) -> Result<u64, RunnerError> {
        let runners: Vec<Runner> = Projection::ALL
            .into_iter()
            .map(|p| Runner::new(store.clone(), sink.clone(), p).with_batch(batch))
            .collect();
        Self::rebuild_together(&runners, progress).await
    }

    /// Resets each runner's projection, then folds the log from 0 into all of them, batch by
    /// batch, reading it once (through the first runner's store and batch size).
    async fn rebuild_together(
        runners: &[Runner],
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64, RunnerError> {
        let Some(first) = runners.first() else {
            return Ok(0);
        };
        for r in runners {
            r.sink.reset(r.projection).await?;
        }
        // The next page is read (and decoded) on another task while this one is folded and
        // committed: reading and writing overlap on two cores.
        let read_after = |after: u64| {
            let store = first.store.clone();
            let batch = first.batch;
            NextPage::spawn(async move { store.read_all(GlobalPosition(after), batch).await })
        };
        let mut after = 0;
        let mut pending = read_after(after);
        loop {
            let events = pending.get().await?;
            let Some(last) = events.last() else {
                return Ok(after);
            };
            let next = last.global_position.0;
            pending = read_after(next);
            for r in runners {
                r.apply_batch(&events).await?;
            }
            after = next;
            progress(after);
        }
    }

    /// Follows the store live until `shutdown` resolves or an error occurs.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), RunnerError> {
        let after = self.sink.checkpoint(self.projection).await?;
        let mut stream = self
            .store
            .subscribe(GlobalPosition(after))
            .ready_chunks(self.batch);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                next = stream.next() => {
                    let Some(chunk) = next else { return Ok(()) };
                    let events: Vec<StoredEvent> = chunk.into_iter().collect::<Result<_, _>>()?;
                    self.apply_batch(&events).await?;
                }
            }
        }
    }
}

/// Projection rows in memory, with the same all-or-nothing commits as the SQL sinks.
#[derive(Debug, Default)]
pub struct MemorySink {
    inner: Mutex<MemoryRows>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryRows {
    pub docs: BTreeMap<(Projection, OrgId), Value>,
    pub audit: Vec<AuditEntry>,
    pub tree: TreeRows,
    pub checkpoints: BTreeMap<Projection, u64>,
}

impl MemorySink {
    pub fn rows(&self) -> MemoryRows {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl ProjectionSink for MemorySink {
    async fn checkpoint(&self, projection: Projection) -> Result<u64, SinkError> {
        Ok(self.rows().checkpoints.get(&projection).copied().unwrap_or(0))
    }

    async fn load(&self, projection: Projection, orgs: &[OrgId]) -> Result<HashMap<OrgId, Value>, SinkError> {
        let rows = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(orgs
            .iter()
            .filter_map(|o| rows.docs.get(&(projection, *o)).map(|d| (*o, d.clone())))
            .collect())
    }

    async fn commit(&self, projection: Projection, changes: Changes) -> Result<(), SinkError> {
        let mut rows = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Checkpoints only move forward, as in the SQL tables.
        let at = rows.checkpoints.get(&projection).copied().unwrap_or(0);
        if changes.checkpoint <= at {
            return Err(SinkError::Superseded {
                projection,
                checkpoint: at,
                attempted: changes.checkpoint,
            });
        }
        // Audit rows are unique per (tenant, position), as in the SQL tables; check first so a
        // failing commit changes nothing.
        let mut keys: BTreeSet<(keyledger_domain::TenantId, u64)> =
            rows.audit.iter().map(|a| (a.tenant_id, a.position)).collect();
        for a in &changes.audit {
            if !keys.insert((a.tenant_id, a.position)) {
                return Err(SinkError::Backend(
                    "duplicate audit row (tenant, position)".into(),
                ));
            }
        }
        rows.tree
            .check(&changes.tree)
            .map_err(|e| SinkError::Backend(e.into()))?;
        rows.tree.apply(changes.tree);
        for (org, doc) in changes.docs {
            match doc {
                Some(d) => {
                    rows.docs.insert((projection, org), d);
                }
                None => {
                    rows.docs.remove(&(projection, org));
                }
            }
        }
        rows.audit.extend(changes.audit);
        rows.checkpoints.insert(projection, changes.checkpoint);
        Ok(())
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, SinkError> {
        let rows = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<AuditEntry> = rows
            .audit
            .iter()
            .filter(|a| a.tenant_id == query.tenant && a.position > query.after && query.matches(a))
            .cloned()
            .collect();
        out.sort_by_key(|a| a.position);
        out.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        Ok(out)
    }

    async fn tenant_known(&self, tenant: TenantId) -> Result<bool, SinkError> {
        let rows = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let current = rows.docs.iter().any(|((p, _), doc)| {
            *p == Projection::TenantAudit
                && serde_json::from_value::<crate::AuditTenants>(doc.clone())
                    .is_ok_and(|t| t.tenants.contains(&tenant))
        });
        Ok(current || rows.audit.iter().any(|a| a.tenant_id == tenant))
    }

    async fn reset(&self, projection: Projection) -> Result<(), SinkError> {
        let mut rows = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        rows.docs.retain(|(p, _), _| *p != projection);
        if projection == Projection::TenantAudit {
            rows.audit.clear();
        }
        if projection == Projection::AuditTree {
            rows.tree.clear();
        }
        rows.checkpoints.insert(projection, 0);
        Ok(())
    }

    async fn tree_heads(&self, logs: &[AuditLog]) -> Result<BTreeMap<AuditLog, Frontier>, SinkError> {
        Ok(self.lock().tree.heads(logs))
    }
}

impl MemorySink {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryRows> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AuditTrees for MemorySink {
    async fn tree_size(&self, log: AuditLog) -> Result<u64, TreeError> {
        Ok(self.lock().tree.size(log))
    }

    async fn tree_sizes(&self) -> Result<BTreeMap<AuditLog, u64>, TreeError> {
        Ok(self.lock().tree.sizes())
    }

    async fn nodes(&self, log: AuditLog, addrs: &[NodeAddr]) -> Result<Vec<Option<Hash>>, TreeError> {
        Ok(self.lock().tree.nodes(log, addrs))
    }

    async fn leaf_hashes(&self, log: AuditLog, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        self.lock().tree.leaf_hashes(log, start, end)
    }
}
