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
    /// Per organization whose document changed: the new document, or `None` to delete it.
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

/// Where a projection's rows live (SQLite or PostgreSQL tables, or memory). The audit tree's
/// rows are read through [`AuditTrees`], which every sink also is.
#[async_trait]
pub trait ProjectionSink: AuditTrees + Send + Sync {
    /// The position of the last event this projection has folded (0: none).
    async fn checkpoint(&self, projection: Projection) -> Result<u64, SinkError>;
    /// The current documents of `orgs`; absent ones are left out.
    async fn load(&self, projection: Projection, orgs: &[OrgId]) -> Result<HashMap<OrgId, Value>, SinkError>;
    /// Writes `changes` and moves the checkpoint forward, all or nothing. A checkpoint not
    /// past the stored one gives [`SinkError::Superseded`] and writes nothing.
    async fn commit(&self, projection: Projection, changes: Changes) -> Result<(), SinkError>;
    /// Commits the changes of several projections folded from one batch. Each projection's
    /// rows stay atomic with its checkpoint; a sink may also commit them all in one
    /// transaction (SQLite does). The default commits them one after the other.
    async fn commit_all(&self, changes: Vec<(Projection, Changes)>) -> Result<(), SinkError> {
        for (projection, c) in changes {
            self.commit(projection, c).await?;
        }
        Ok(())
    }
    /// Deletes every row of the projection and sets its checkpoint to 0, all or nothing.
    async fn reset(&self, projection: Projection) -> Result<(), SinkError>;
    /// The stored frontiers of these audit-tree logs, as the runner's last commit left them
    /// (absent: an empty log).
    async fn tree_heads(&self, logs: &[AuditLog]) -> Result<BTreeMap<AuditLog, Frontier>, SinkError>;
    /// Tenant-audit rows that match `query`, oldest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, SinkError>;
    /// Whether the tenant has audit rows or belongs to an organization now.
    async fn tenant_known(&self, tenant: TenantId) -> Result<bool, SinkError>;
    /// The organizations that have a document in `projection`, in id order, at most `limit`
    /// (the console lists them; the caller filters them by the domain's read rules).
    async fn organizations(&self, projection: Projection, limit: u32) -> Result<Vec<OrgId>, SinkError>;
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

/// Runs one projection, or several over one reading of the log.
pub struct Runner {
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    projections: Vec<Projection>,
    batch: usize,
    linger: std::time::Duration,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("projections", &self.projections)
            .finish_non_exhaustive()
    }
}

/// Each projection's checkpoint, as a runner last committed or read it.
type Checkpoints = BTreeMap<Projection, u64>;

/// The documents a runner committed or loaded, per projection and organization (`None`: the
/// organization has none), so that following batches need not load and parse them again. A
/// runner keeps it for one `run`, `catch_up` or `rebuild` only: within one, it is its
/// projections' only writer (the SQLite writer lock, or the PostgreSQL lease whose loss ends
/// the run), so what it committed is what is stored.
#[derive(Debug, Default)]
struct DocCache {
    docs: HashMap<(Projection, OrgId), Option<Doc>>,
}

impl DocCache {
    /// Documents kept before the cache is emptied.
    const CAPACITY: usize = 100_000;
}

impl Runner {
    pub fn new(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>, projection: Projection) -> Self {
        Self::over(store, sink, vec![projection])
    }

    /// One runner for several projections: each batch of events is read and decoded once, and
    /// the projections' changes go to the sink in one [`ProjectionSink::commit_all`]. This is
    /// how a single-instance store runs them (ADR 0021).
    pub fn over(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
        projections: Vec<Projection>,
    ) -> Self {
        Self {
            store,
            sink,
            projections,
            batch: 1000,
            linger: Self::LINGER,
        }
    }

    /// While events keep coming, a live runner commits at most once per this long: what
    /// arrives in between goes into the same commit. A commit writes the pages it touches
    /// whatever the number of events, so under load fewer, larger commits write far less
    /// (issue 12). An event after a quiet spell is committed at once.
    pub const LINGER: std::time::Duration = std::time::Duration::from_millis(50);

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The live runner's [`Runner::LINGER`] (zero: commit each chunk as it comes).
    pub fn with_linger(mut self, linger: std::time::Duration) -> Self {
        self.linger = linger;
        self
    }

    async fn checkpoints(&self) -> Result<Checkpoints, RunnerError> {
        let mut out = Checkpoints::new();
        for p in &self.projections {
            out.insert(*p, self.sink.checkpoint(*p).await?);
        }
        Ok(out)
    }

    /// Where reading resumes: after the checkpoint of the projection furthest behind.
    fn resume_after(checkpoints: &Checkpoints) -> u64 {
        checkpoints.values().copied().min().unwrap_or(0)
    }

    /// Folds `events` (consecutive) into each projection whose checkpoint they pass, and
    /// commits them together; `checkpoints` moves with the commit.
    async fn apply_batch(
        &self,
        events: &[StoredEvent],
        checkpoints: &mut Checkpoints,
        cache: &mut DocCache,
    ) -> Result<(), RunnerError> {
        let Some(last) = events.last() else { return Ok(()) };
        let mut decoded = Vec::with_capacity(events.len());
        for stored in events {
            let event = stored.decode().map_err(|source| ProjectionError::Decode {
                position: stored.global_position.0,
                source,
            })?;
            decoded.push((stored, event));
        }
        let mut all = Vec::with_capacity(self.projections.len());
        let mut folded = Vec::new();
        for &projection in &self.projections {
            let after = checkpoints.get(&projection).copied().unwrap_or(0);
            if last.global_position.0 <= after {
                continue;
            }
            if projection == Projection::AuditTree {
                // Events come in position order: the ones past the checkpoint are a suffix.
                let passed = &events[events.partition_point(|e| e.global_position.0 <= after)..];
                all.push((projection, self.fold_tree(passed, last.global_position.0).await?));
                continue;
            }
            // Streams outside the projection's documents (ADR 0025, 0030) are not folded; the
            // checkpoint still moves past them.
            let mine: Vec<&(&StoredEvent, keyledger_domain::Event)> = decoded
                .iter()
                .filter(|(e, _)| e.global_position.0 > after && projection.doc_of(e.stream_id).is_some())
                .collect();
            let (mut changes, docs) = self.fold(projection, &mine, cache).await?;
            changes.checkpoint = last.global_position.0;
            all.push((projection, changes));
            folded.push((projection, docs));
        }
        if all.is_empty() {
            return Ok(());
        }
        let committed: Vec<Projection> = all.iter().map(|(p, _)| *p).collect();
        if let Err(e) = self.sink.commit_all(all).await {
            // What is stored is no longer known for certain.
            cache.docs.clear();
            return Err(e.into());
        }
        if cache.docs.len() > DocCache::CAPACITY {
            cache.docs.clear();
        }
        for projection in committed {
            checkpoints.insert(projection, last.global_position.0);
        }
        for (projection, docs) in folded {
            for (org, doc) in docs {
                cache.docs.insert((projection, org), doc);
            }
        }
        Ok(())
    }

    /// The audit tree's changes: the leaves of `events` appended to the global log and their
    /// organizations' logs, from the frontiers stored.
    async fn fold_tree(&self, events: &[StoredEvent], checkpoint: u64) -> Result<Changes, RunnerError> {
        let heads = self.sink.tree_heads(&logs_fed_by(events)).await?;
        let tree = fold_events(heads, events).map_err(ProjectionError::Tree)?;
        Ok(Changes {
            tree,
            checkpoint,
            ..Changes::default()
        })
    }

    /// One projection's changes for `events` (of organization streams), on the documents it
    /// has stored, and its documents after them.
    async fn fold(
        &self,
        projection: Projection,
        events: &[&(&StoredEvent, keyledger_domain::Event)],
        cache: &DocCache,
    ) -> Result<(Changes, HashMap<OrgId, Option<Doc>>), RunnerError> {
        let orgs: BTreeSet<OrgId> = events
            .iter()
            .filter_map(|(e, _)| projection.doc_of(e.stream_id))
            .collect();
        // Documents stay typed for the whole batch: parsed once, serialized once.
        let mut docs: HashMap<OrgId, Option<Doc>> = HashMap::with_capacity(orgs.len());
        let mut missing = Vec::new();
        for org in orgs {
            match cache.docs.get(&(projection, org)) {
                Some(doc) => {
                    docs.insert(org, doc.clone());
                }
                None => missing.push(org),
            }
        }
        // What is stored for the organizations not in the cache, to tell which documents the
        // batch changed (the cache holds the others').
        let mut stored_docs: HashMap<OrgId, Option<Doc>> = HashMap::new();
        if !missing.is_empty() {
            let loaded: HashMap<OrgId, Value> = self.sink.load(projection, &missing).await?;
            for org in missing {
                let doc = loaded
                    .get(&org)
                    .map(|value| projection.parse(org, value))
                    .transpose()?;
                docs.insert(org, doc.clone());
                stored_docs.insert(org, doc);
            }
        }
        let mut audit = Vec::new();
        for (stored, event) in events {
            let Some(org) = projection.doc_of(stored.stream_id) else {
                continue;
            };
            let current = docs.remove(&org).flatten();
            let (next, rows) = projection.fold(current, stored, event);
            docs.insert(org, next);
            audit.extend(rows);
        }
        // Only the documents the batch changed are written: most events change one of an
        // organization's documents (a plan change only its view), not all four.
        let stored = |org: &OrgId| {
            cache
                .docs
                .get(&(projection, *org))
                .or_else(|| stored_docs.get(org))
        };
        // The caller sets the checkpoint: the batch's last event, of whatever stream.
        let changes = Changes {
            docs: docs
                .iter()
                .filter(|(org, d)| stored(org) != Some(*d))
                .map(|(org, d)| (*org, d.as_ref().map(Doc::to_value)))
                .collect(),
            audit,
            tree: TreeChanges::default(),
            checkpoint: 0,
        };
        Ok((changes, docs))
    }

    /// Folds everything after the checkpoints, then returns the lowest checkpoint.
    pub async fn catch_up(&self) -> Result<u64, RunnerError> {
        let mut checkpoints = self.checkpoints().await?;
        let mut cache = DocCache::default();
        loop {
            let after = Self::resume_after(&checkpoints);
            let events = self.store.read_all(GlobalPosition(after), self.batch).await?;
            if events.is_empty() {
                return Ok(after);
            }
            self.apply_batch(&events, &mut checkpoints, &mut cache).await?;
        }
    }

    /// Catches up until every checkpoint reaches `position` (an event known to be committed).
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

    /// Rebuilds every projection from position 0, reading the log once: each batch is folded
    /// into all of them. `progress` is called after each batch with the position reached.
    pub async fn rebuild_all(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
        batch: usize,
        progress: impl FnMut(u64) + Send,
    ) -> Result<u64, RunnerError> {
        Runner::over(store, sink, Projection::ALL.to_vec())
            .with_batch(batch)
            .rebuild(progress)
            .await
    }

    /// Deletes the rows of this runner's projections and folds the whole log from position 0
    /// into them, reading it once. `progress` is called after each batch with the position
    /// reached.
    pub async fn rebuild(&self, mut progress: impl FnMut(u64) + Send) -> Result<u64, RunnerError> {
        let mut checkpoints = Checkpoints::new();
        let mut cache = DocCache::default();
        for p in &self.projections {
            self.sink.reset(*p).await?;
            checkpoints.insert(*p, 0);
        }
        // The next page is read (and decoded) on another task while this one is folded and
        // committed: reading and writing overlap on two cores.
        let read_after = |after: u64| {
            let store = self.store.clone();
            let batch = self.batch;
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
            self.apply_batch(&events, &mut checkpoints, &mut cache).await?;
            after = next;
            progress(after);
        }
    }

    /// Follows the store live until `shutdown` resolves or an error occurs. Events that arrive
    /// within [`Runner::LINGER`] of the last commit wait for the next one (up to a batch).
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), RunnerError> {
        let mut checkpoints = self.checkpoints().await?;
        let mut cache = DocCache::default();
        let mut stream = self
            .store
            .subscribe(GlobalPosition(Self::resume_after(&checkpoints)))
            .ready_chunks(self.batch);
        // None: no commit yet, so the first events go at once.
        let mut last_commit: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            let mut events: Vec<StoredEvent> = tokio::select! {
                () = &mut shutdown => return Ok(()),
                next = stream.next() => match next {
                    Some(chunk) => chunk.into_iter().collect::<Result<_, _>>()?,
                    None => return Ok(()),
                },
            };
            let until = tokio::time::sleep_until(
                last_commit
                    .and_then(|at| at.checked_add(self.linger))
                    .unwrap_or_else(tokio::time::Instant::now),
            );
            tokio::pin!(until);
            while events.len() < self.batch {
                tokio::select! {
                    biased;
                    next = stream.next() => match next {
                        Some(chunk) => {
                            for e in chunk {
                                events.push(e?);
                            }
                        }
                        None => break,
                    },
                    () = &mut until => break,
                }
            }
            self.apply_batch(&events, &mut checkpoints, &mut cache).await?;
            last_commit = Some(tokio::time::Instant::now());
        }
    }
}

/// Projection rows in memory, with the same all-or-nothing commits as the SQL sinks.
#[derive(Debug, Default)]
pub struct MemorySink {
    inner: Mutex<MemoryRows>,
    /// Successful commits, for tests of how a runner batches.
    commits: std::sync::atomic::AtomicUsize,
    /// Documents written or deleted by successful commits, for tests of what a runner writes.
    docs_written: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryRows {
    pub docs: BTreeMap<(Projection, OrgId), Value>,
    pub audit: Vec<AuditEntry>,
    pub tree: TreeRows,
    pub checkpoints: BTreeMap<Projection, u64>,
}

impl MemorySink {
    /// How many commits succeeded (one per projection per batch).
    pub fn commits(&self) -> usize {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many documents successful commits wrote or deleted.
    pub fn docs_written(&self) -> usize {
        self.docs_written.load(std::sync::atomic::Ordering::Relaxed)
    }

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
        self.docs_written
            .fetch_add(changes.docs.len(), std::sync::atomic::Ordering::Relaxed);
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
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    async fn organizations(&self, projection: Projection, limit: u32) -> Result<Vec<OrgId>, SinkError> {
        let rows = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // `docs` is a BTreeMap keyed by (projection, org): its order is id order.
        Ok(rows
            .docs
            .keys()
            .filter(|(p, _)| *p == projection)
            .map(|(_, org)| *org)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect())
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
