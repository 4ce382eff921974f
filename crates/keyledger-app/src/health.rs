//! The key-health monitor (R10): probes each customer key, records `KeyHealthChanged` only on
//! a change, holds transient failures for a grace period, and flags keys near expiry. A key the
//! vault no longer finds is looked up among the deleted keys: soft-deleted is `key_deleted`
//! with its purge date, and every probe then lets the domain record the purge reminders (7
//! days, 1 day) when they fall due.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_domain::{Actor, DomainError, GlobalPosition, HealthStatus, OrgId, Protected};
use keyledger_keys::{Dek, DeletedKeyRecord, KeyAccess, KeyAccessError, Reason};
use keyledger_store::EventStore;

use crate::error::AppError;
use crate::request::CommandRequest;
use crate::service::App;

/// How the monitor probes.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub probe_interval: Duration,
    /// Transient failures become `vault_unreachable` only after lasting this long.
    pub transient_grace: Duration,
    /// A key expiring within this window is `key_near_expiry`.
    pub near_expiry: Duration,
    /// Probes in flight at once, so a vault's rate limit is respected.
    pub concurrency: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(5 * 60),
            transient_grace: Duration::from_secs(15 * 60),
            near_expiry: Duration::from_secs(30 * 24 * 3600),
            concurrency: 4,
        }
    }
}

/// What one probe observed and what is recorded now.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub status: HealthStatus,
    pub since: DateTime<Utc>,
    pub detail: Option<String>,
    /// While `key_deleted`: when the vault purges the key.
    pub recoverable_until: Option<DateTime<Utc>>,
    pub last_probe_at: DateTime<Utc>,
    /// Whether this probe recorded a `KeyHealthChanged`.
    pub changed: bool,
}

#[derive(Debug, Default)]
struct Memory {
    /// When the current run of transient failures began, per organization.
    transient_since: HashMap<OrgId, DateTime<Utc>>,
    last_probe_at: HashMap<OrgId, DateTime<Utc>>,
}

/// The monitor. Share it behind an `Arc`.
pub struct HealthMonitor {
    app: Arc<App>,
    keys: Arc<dyn KeyAccess>,
    config: HealthConfig,
    memory: Mutex<Memory>,
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HealthMonitor {
    pub fn new(app: Arc<App>, keys: Arc<dyn KeyAccess>, config: HealthConfig) -> Self {
        Self {
            app,
            keys,
            config,
            memory: Mutex::new(Memory::default()),
        }
    }

    /// A probe asked for by `actor` (R10): the rules of `plan` decide whether it may, then
    /// [`HealthMonitor::probe`].
    pub async fn probe_for(&self, actor: &Actor, org: OrgId) -> Result<ProbeResult, AppError> {
        self.app
            .permit(org, actor, keyledger_domain::Intent::ProbeKeyHealth)
            .await?;
        self.probe(org).await
    }

    /// Probes one organization now and records a change of status.
    pub async fn probe(&self, org: OrgId) -> Result<ProbeResult, AppError> {
        let now = self.app.clock().now();
        let state = self.app.state(org).await?;
        let key = state
            .org()
            .ok_or(DomainError::OrganizationNotFound)?
            .customer_key()
            .ok_or(DomainError::CmkNotEnabled)?
            .clone();
        let current = key.health.status;
        let mut observed = self.observe(&state, now).await;
        // Not found: soft-deleted (recoverable until its purge) or purged? A transient failure
        // of that read is a transient failure of the probe: a blip must not turn `key_deleted`
        // into `key_not_found` and back (which would start the deletion's reminders anew).
        let mut deleted = None;
        if matches!(&observed, Err(e) if e.reason == Reason::KeyNotFound) {
            match self.deleted_record(&key).await {
                Ok(record) => deleted = record,
                Err(e) => observed = Err(e),
            }
        }
        let (status, detail) = {
            let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            memory.last_probe_at.insert(org, now);
            match observed {
                Ok(status) => {
                    memory.transient_since.remove(&org);
                    (status, None)
                }
                Err(e) if e.reason.is_transient() => {
                    let since = *memory.transient_since.entry(org).or_insert(now);
                    let lasted = (now - since).to_std().unwrap_or_default();
                    if lasted >= self.config.transient_grace {
                        (HealthStatus::VaultUnreachable, Some(e.reason.code().to_owned()))
                    } else {
                        // A blip must not read as a revocation: keep what was recorded.
                        (current, key.health.detail.clone())
                    }
                }
                Err(e) => {
                    memory.transient_since.remove(&org);
                    (e.reason.health_status(), Some(e.reason.code().to_owned()))
                }
            }
        };
        let (status, detail, recoverable_until) = match deleted {
            Some(record) => (
                HealthStatus::KeyDeleted,
                Some(HealthStatus::KeyDeleted.as_str().to_owned()),
                record.scheduled_purge_at,
            ),
            // A transient failure kept a recorded `key_deleted`: keep its purge date with it.
            None if status == HealthStatus::KeyDeleted => (status, detail, key.health.recoverable_until),
            None => (status, detail, None),
        };
        let intent = match recoverable_until {
            Some(recoverable_until) => keyledger_domain::Intent::RecordKeyDeleted {
                recoverable_until,
                detail,
            },
            None => keyledger_domain::Intent::RecordKeyHealth { status, detail },
        };
        let outcome = self
            .app
            .handle(CommandRequest {
                org_id: org,
                actor: Actor::system(),
                source_ip: None,
                command_id: None,
                correlation_id: None,
                if_match: None,
                intent,
            })
            .await?;
        let health = outcome.view.encryption.health.ok_or(DomainError::CmkNotEnabled)?;
        Ok(ProbeResult {
            status: health.status,
            since: health.since,
            detail: health.detail,
            recoverable_until: health.recoverable_until,
            last_probe_at: now,
            changed: outcome.appended > 0,
        })
    }

    /// The deleted-key record of the organization's key, when the vault has one. No record,
    /// or none readable (no `get` permission on deleted keys, a vault without soft delete, an
    /// adapter that cannot ask) leaves the probe at `key_not_found`, as before.
    /// A transient failure is returned as such.
    async fn deleted_record(
        &self,
        key: &keyledger_domain::state::CustomerKey,
    ) -> Result<Option<DeletedKeyRecord>, KeyAccessError> {
        let Some(connection) = key.connection.to_connection() else {
            return Ok(None);
        };
        match self.keys.deleted_key(&connection).await {
            Ok(record) => Ok(record),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                tracing::info!(error = %e, "the deleted-key record could not be read; the key shows as not found");
                Ok(None)
            }
        }
    }

    /// When the organization was last probed by this process.
    pub fn last_probe_at(&self, org: OrgId) -> Option<DateTime<Utc>> {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_probe_at
            .get(&org)
            .copied()
    }

    /// Reads the key, checks its attributes, and unwraps one DEK under it (or wraps and unwraps
    /// fresh bytes when none is left): the operations the platform needs.
    async fn observe(
        &self,
        state: &keyledger_domain::State,
        now: DateTime<Utc>,
    ) -> Result<HealthStatus, KeyAccessError> {
        let Some(org) = state.org() else {
            return Err(KeyAccessError::new(Reason::KeyNotFound));
        };
        let Some(key) = org.customer_key() else {
            return Err(KeyAccessError::new(Reason::KeyNotFound));
        };
        let Some(connection) = key.connection.to_connection() else {
            return Err(KeyAccessError::with_detail(
                Reason::CredentialsInvalid,
                "the stored secret is not open",
            ));
        };
        // A fresh token, on demand and on schedule: a cached one would still let the probe in
        // after the secret expired or the app was deleted.
        self.keys.forget_token(&connection);
        let description = self.keys.describe(&connection).await?;
        if !description.enabled {
            return Err(KeyAccessError::new(Reason::KeyDisabled));
        }
        if description.not_before.is_some_and(|nbf| nbf > now) {
            return Err(KeyAccessError::new(Reason::KeyNotYetValid));
        }
        let dek = org
            .deks_under(key.key())
            .into_iter()
            .find_map(|id| match &org.data_keys[&id].edek {
                Protected::Open(edek) => Some(edek.clone()),
                _ => None,
            });
        match dek {
            Some(edek) => {
                self.keys.unwrap(&connection, &edek).await?;
            }
            None => {
                let probe = Dek::generate();
                let wrapped = self.keys.wrap(&connection, &probe).await?;
                self.keys.unwrap(&connection, wrapped.edek()).await?;
            }
        }
        Ok(match description.expires_at {
            Some(exp) if exp <= now => HealthStatus::KeyExpired,
            Some(exp) if (exp - now).to_std().unwrap_or_default() <= self.config.near_expiry => {
                HealthStatus::KeyNearExpiry
            }
            _ => HealthStatus::Healthy,
        })
    }

    /// Probes every customer-managed organization every `probe_interval` until `shutdown`:
    /// follows the store to know which organizations have a customer key, and spreads each
    /// round's probes over most of the interval, at most `concurrency` at a time.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn EventStore>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        let orgs: Arc<Mutex<BTreeSet<OrgId>>> = Arc::default();
        let follower = tokio::spawn(follow_customer_keys(store, orgs.clone()));
        tokio::pin!(shutdown);
        let interval = self.config.probe_interval;
        loop {
            let round: Vec<OrgId> = orgs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect();
            let started = tokio::time::Instant::now();
            let probes = self.probe_round(round, interval.mul_f64(0.8));
            tokio::select! {
                () = &mut shutdown => break,
                results = probes => {
                    for (org, r) in results {
                        if let Err(e) = r {
                            tracing::warn!(%org, error = %e, "key health probe failed");
                        }
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(started + interval) => {}
            }
        }
        follower.abort();
    }

    /// Probes `orgs` once, spread over `spread` and at most `concurrency` at a time.
    pub async fn probe_round(
        self: &Arc<Self>,
        orgs: Vec<OrgId>,
        spread: Duration,
    ) -> Vec<(OrgId, Result<ProbeResult, AppError>)> {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        // Saturates past u32::MAX orgs: the spread only paces the probes.
        let count = u32::try_from(orgs.len().max(1)).unwrap_or(u32::MAX);
        let mut tasks = Vec::with_capacity(orgs.len());
        for (i, org) in orgs.into_iter().enumerate() {
            let monitor = self.clone();
            let permits = permits.clone();
            let delay = spread / count * u32::try_from(i).unwrap_or(u32::MAX);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _permit = permits.acquire_owned().await;
                (org, monitor.probe(org).await)
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    }
}

/// The follower's first pause after a store error; it doubles up to [`FOLLOWER_MAX_PAUSE`].
const FOLLOWER_FIRST_PAUSE: Duration = Duration::from_millis(100);
const FOLLOWER_MAX_PAUSE: Duration = Duration::from_secs(10);

/// Keeps `orgs` to the organizations that have a customer key, following the store from the
/// start until aborted. A store error ends a subscription (see [`EventStore::subscribe`]): the
/// follower resubscribes after the last event it saw, after a pause that doubles from 100 ms to
/// 10 s, as the projection runners are restarted, and that starts again at 100 ms once events
/// flow.
async fn follow_customer_keys(store: Arc<dyn EventStore>, orgs: Arc<Mutex<BTreeSet<OrgId>>>) {
    use futures::StreamExt as _;
    let mut after = GlobalPosition(0);
    let mut pause = FOLLOWER_FIRST_PAUSE;
    loop {
        let mut events = store.subscribe(after);
        loop {
            match events.next().await {
                Some(Ok(stored)) => {
                    after = stored.global_position;
                    pause = FOLLOWER_FIRST_PAUSE;
                    // Only organizations' streams have customer keys (ADR 0025).
                    let Some(org) = stored.stream_id.org_id() else {
                        continue;
                    };
                    let mut set = orgs.lock().unwrap_or_else(|p| p.into_inner());
                    match stored.event_type.as_str() {
                        "CustomerManagedKeyEnabled" => {
                            set.insert(org);
                        }
                        "SwitchedToProviderManagedKey" => {
                            set.remove(&org);
                        }
                        _ => {}
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "key-health follower failed; resubscribing");
                    break;
                }
                None => {
                    tracing::warn!(retry_in = ?pause, "key-health follower's subscription ended; resubscribing");
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(FOLLOWER_MAX_PAUSE);
    }
}
