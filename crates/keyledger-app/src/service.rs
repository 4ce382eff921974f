//! The command handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use keyledger_domain::{
    Actor, Command, CommandId, Connection, DekId, DomainError, Event, Intent, KeyResults, KeyWork, OrgId,
    Read, State, StreamId, StreamVersion, authorize_read, decide, evolve, plan,
};
use keyledger_keys::KeyAccess;
use keyledger_keys::test_connection;
use keyledger_projection::{DataKeyInventory, OrganizationView};
use keyledger_store::envelope::{EnvelopeActor, EventMetadata, StoredEvent};
use keyledger_store::{AppendResult, EventStore, NewEvent, StoreError};

use crate::checkpoint::AuditHead;
use crate::clock::Clock;
use crate::error::AppError;
use crate::release::{Flights, ReleaseLog};
use crate::request::{CommandRequest, Outcome, TestReport};
use crate::work::KeyWorker;

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// How often a command is retried after losing a race for its stream.
    pub max_conflict_retries: u32,
    /// Organizations kept in the state cache before it is emptied.
    pub cache_capacity: usize,
    /// Concurrent releases of one customer-managed DEK share one vault unwrap
    /// (`keys.release_single_flight`). Off, each release calls the vault itself: only for
    /// measuring what single flight saves.
    pub release_single_flight: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            max_conflict_retries: 8,
            cache_capacity: 100_000,
            release_single_flight: true,
        }
    }
}

/// One organization as last loaded: its folded state and view.
#[derive(Debug, Clone, Default)]
struct Loaded {
    state: State,
    view: Option<OrganizationView>,
}

impl Loaded {
    fn apply(&mut self, event: &Event) {
        let version = self.state.version.0 + 1;
        self.state = evolve(std::mem::take(&mut self.state), event);
        match (&mut self.view, event) {
            (None, Event::OrganizationRegistered(e)) => {
                self.view = Some(OrganizationView::registered(e, version))
            }
            (Some(v), e) => v.apply(version, e),
            (None, _) => {}
        }
    }
}

/// The application service. Cheap to share behind an `Arc`.
pub struct App {
    store: Arc<dyn EventStore>,
    keys: Arc<dyn KeyAccess>,
    clock: Arc<dyn Clock>,
    config: AppConfig,
    /// Folded state per organization. Always checked against the store: a load reads the
    /// events after the cached version, so other writers (other instances) are seen.
    cache: Mutex<HashMap<OrgId, Loaded>>,
    /// Where stream `audit` ends, as last seen ([`App::record_checkpoint`]).
    audit_head: AuditHead,
    /// Vault unwraps of releases under way ([`App::release`]).
    flights: Flights,
    /// Releases waiting for their record ([`App::release`]).
    release_log: ReleaseLog,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the key tests of a command depend on: the key in use and the DEKs under it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    key: Option<String>,
    deks: Vec<DekId>,
    next_dek: DekId,
}

fn fingerprint(state: &State) -> Fingerprint {
    match state.org() {
        None => Fingerprint {
            key: None,
            deks: vec![],
            next_dek: DekId::FIRST,
        },
        Some(org) => {
            let key = org.customer_key().map(|k| k.key().clone());
            Fingerprint {
                deks: key.as_ref().map(|k| org.deks_under(k)).unwrap_or_default(),
                key: key.map(|k| k.to_string()),
                next_dek: org.next_dek_id(),
            }
        }
    }
}

impl App {
    pub fn new(
        store: Arc<dyn EventStore>,
        keys: Arc<dyn KeyAccess>,
        clock: Arc<dyn Clock>,
        config: AppConfig,
    ) -> Self {
        Self {
            store,
            keys,
            clock,
            config,
            cache: Mutex::new(HashMap::new()),
            audit_head: AuditHead::default(),
            flights: Flights::default(),
            release_log: ReleaseLog::default(),
        }
    }

    pub(crate) fn config(&self) -> &AppConfig {
        &self.config
    }

    pub(crate) fn audit_head(&self) -> &AuditHead {
        &self.audit_head
    }

    pub(crate) fn keys(&self) -> &dyn KeyAccess {
        self.keys.as_ref()
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.flights
    }

    pub(crate) fn release_log(&self) -> &ReleaseLog {
        &self.release_log
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Handles one command: load → plan → run the key work → decide → append → answer.
    ///
    /// On losing a race for the stream it reloads and tries again, up to a bound, reusing the
    /// key work's results while the key-relevant state is the same (ADR 0001, 0012).
    pub async fn handle(&self, request: CommandRequest) -> Result<Outcome, AppError> {
        let org = request.org_id;
        let mut command = Command {
            org_id: org,
            actor: request.actor.clone(),
            at: self.clock.now(),
            intent: request.intent.clone(),
        };
        if let Some(outcome) = self.on_cached_state(&request, &command).await? {
            return Ok(outcome);
        }
        let mut done_before: Option<(Fingerprint, KeyResults)> = None;
        for _attempt in 0..=self.config.max_conflict_retries {
            let loaded = self.load(org).await?;
            // A 412 names the current version, which only a caller in scope may learn.
            let planned = plan(&loaded.state, &command);
            if !matches!(planned, Err(DomainError::Forbidden)) {
                check_version(request.if_match, loaded.state.version)?;
            }
            let work = match planned {
                Ok(work) => work,
                Err(rejection) => return self.refused(&request, rejection).await,
            };
            command.at = self.clock.now();
            let fingerprint = fingerprint(&loaded.state);
            let done = match done_before.take() {
                Some((before, done)) if before == fingerprint => done,
                _ => self.key_worker(org, command.at).run(work).await?,
            };
            done_before = Some((fingerprint, done.clone()));
            let events = match decide(&loaded.state, command.clone(), done) {
                Ok(events) => events,
                Err(rejection) => return self.refused(&request, rejection).await,
            };
            if events.is_empty() {
                return answer(loaded.view, 0, None);
            }
            if let Some(outcome) = self.append_decided(&request, command.at, loaded, events).await? {
                return Ok(outcome);
            }
            tracing::debug!(%org, "append lost a race; reloading");
        }
        Err(AppError::Contended)
    }

    /// Appends the events decided on `loaded` and answers with the view after them; `None`
    /// when another writer moved the stream past `loaded` first.
    async fn append_decided(
        &self,
        request: &CommandRequest,
        at: DateTime<Utc>,
        loaded: Loaded,
        events: Vec<Event>,
    ) -> Result<Option<Outcome>, AppError> {
        let appended = self
            .append_to(
                StreamId::for_org(request.org_id),
                loaded.state.version,
                new_events(request, at, &events),
                request.command_id.clone(),
            )
            .await?;
        match appended {
            Appended::Stored(result) => self
                .appended(request.org_id, loaded, events, result)
                .await
                .map(Some),
            Appended::Behind { .. } => Ok(None),
        }
    }

    /// Appends to `stream`, believing only what the store says it wrote: events of another
    /// stream are no answer to this append, whatever their versions. Every append of the
    /// application goes through here.
    pub(crate) async fn append_to(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<Appended, AppError> {
        match self.store.append(stream, expected, events, command_id).await {
            Ok(result) if result.stream == stream => Ok(Appended::Stored(result)),
            Ok(result) => {
                tracing::error!(%stream, other_stream = %result.stream, "the store answered an append with another stream's result");
                Err(AppError::CommandIdReused)
            }
            Err(StoreError::Conflict { actual, .. }) => Ok(Appended::Behind { actual }),
            Err(StoreError::CommandIdReused { .. }) => Err(AppError::CommandIdReused),
            Err(e) => Err(e.into()),
        }
    }

    /// The fast path of [`App::handle`]: a command that needs no key work, decided on the
    /// cached state without reading the store first. A cached state can be behind another
    /// instance's writes, so it may only lead to an append, which names the version it was
    /// decided on and so conflicts when that is stale. Anything else (a refusal, a failed
    /// `If-Match`, a no-op, key work, a conflict) gives `None`, and `handle` decides again on a
    /// state read from the store.
    async fn on_cached_state(
        &self,
        request: &CommandRequest,
        command: &Command,
    ) -> Result<Option<Outcome>, AppError> {
        let Some(cached) = self.cached(request.org_id) else {
            return Ok(None);
        };
        let (Ok(KeyWork::None), Ok(())) = (
            plan(&cached.state, command),
            check_version(request.if_match, cached.state.version),
        ) else {
            return Ok(None);
        };
        let Ok(events) = decide(&cached.state, command.clone(), KeyResults::None) else {
            return Ok(None);
        };
        if events.is_empty() {
            return Ok(None);
        }
        self.append_decided(request, command.at, cached, events).await
    }

    /// A command the rules refuse now, whose command id the organization's stream already
    /// holds, is a repeat of a command recorded before (after a restart, or on another
    /// instance, once the state has moved on: a registration repeated finds the organization
    /// registered): it gets the recorded answer and appends nothing.
    async fn refused(&self, request: &CommandRequest, rejection: DomainError) -> Result<Outcome, AppError> {
        match &request.command_id {
            Some(id) if rejection != DomainError::Forbidden => self
                .recorded(request.org_id, id)
                .await?
                .ok_or(AppError::Rejected(rejection)),
            _ => Err(AppError::Rejected(rejection)),
        }
    }

    /// The answer to a command already recorded in `org`'s stream under `id`, if any.
    async fn recorded(&self, org: OrgId, id: &CommandId) -> Result<Option<Outcome>, AppError> {
        let stored = self
            .store
            .read_stream(StreamId::for_org(org), StreamVersion(1))
            .await?;
        let Some(last) = stored.iter().rev().find(|e| e.command_id.as_ref() == Some(id)) else {
            return Ok(None);
        };
        answer(self.load(org).await?.view, 0, Some(last.global_position)).map(Some)
    }

    /// The answer to an append: the view after the events (folded here, or reloaded when the
    /// store says the append was a repeat of an earlier one).
    async fn appended(
        &self,
        org: OrgId,
        loaded: Loaded,
        events: Vec<Event>,
        result: AppendResult,
    ) -> Result<Outcome, AppError> {
        if result.repeat {
            // An idempotent repeat: the first append's events are in the store.
            return answer(self.load(org).await?.view, 0, Some(result.last_position));
        }
        let mut after = loaded;
        for e in &events {
            after.apply(e);
        }
        let view = after.view.clone();
        self.remember(org, after);
        answer(view, events.len(), Some(result.last_position))
    }

    fn key_worker(&self, org: OrgId, now: DateTime<Utc>) -> KeyWorker<'_> {
        KeyWorker {
            keys: self.keys.as_ref(),
            ring: self.store.key_ring(),
            org,
            now,
        }
    }

    /// Whether `actor` may do `intent` on `org` now: the rules of `plan`, without the key work.
    /// For requests the application does not carry out itself (a health probe).
    pub async fn permit(&self, org: OrgId, actor: &Actor, intent: Intent) -> Result<KeyWork, AppError> {
        let command = Command {
            org_id: org,
            actor: actor.clone(),
            at: self.clock.now(),
            intent,
        };
        Ok(plan(&self.load(org).await?.state, &command)?)
    }

    /// "Test" without "save" (R4 dry run): runs the checks, records nothing.
    pub async fn test_connection(
        &self,
        org: OrgId,
        actor: &Actor,
        connection: &Connection,
    ) -> Result<TestReport, AppError> {
        self.permit(org, actor, Intent::TestConnection(connection.clone()))
            .await?;
        let test = test_connection(self.keys.as_ref(), connection, self.clock.now()).await;
        Ok(TestReport {
            checks: test.checks,
            outcome: test.outcome,
        })
    }

    /// The organization's data keys, folded from its stream, so never behind the command that
    /// just returned. Decoded without opening sealed fields: the inventory shows no key
    /// material.
    pub async fn data_keys(&self, org: OrgId) -> Result<DataKeyInventory, AppError> {
        let mut inventory = DataKeyInventory::default();
        for (stored, event) in self.stream_page(org, StreamVersion(1), usize::MAX).await? {
            inventory.apply(stored.occurred_at, &event);
        }
        Ok(inventory)
    }

    /// Up to `limit` of the organization's stored events from version `from`, each with its
    /// event decoded (sealed fields stay sealed).
    pub async fn stream_page(
        &self,
        org: OrgId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<(StoredEvent, Event)>, AppError> {
        let stored = self.store.read_stream(StreamId::for_org(org), from).await?;
        stored
            .into_iter()
            .take(limit)
            .map(|stored| match stored.decode() {
                Ok(event) => Ok((stored, event)),
                Err(e) => {
                    tracing::error!(event_id = %stored.event_id, error = %e, "stored event cannot be decoded");
                    Err(AppError::Internal("a stored event cannot be decoded"))
                }
            })
            .collect()
    }

    /// The organization view for `actor`, if the domain's read rules ([`authorize_read`]) let
    /// it make `read` of `org`; else [`AppError::Rejected`] with [`DomainError::Forbidden`] or
    /// [`DomainError::OrganizationNotFound`]. A caller without the role loads nothing.
    pub async fn readable_view(
        &self,
        actor: &Actor,
        org: OrgId,
        read: Read,
    ) -> Result<OrganizationView, AppError> {
        let scope = authorize_read(actor, org, read).map_err(AppError::Rejected)?;
        let view = self.view(org).await?;
        scope
            .admit(view.as_ref().map(|v| v.tenants.as_slice()))
            .map_err(AppError::Rejected)?;
        view.ok_or(AppError::Rejected(DomainError::OrganizationNotFound))
    }

    /// The organization view, folded from its events (not from a projection).
    pub async fn view(&self, org: OrgId) -> Result<Option<OrganizationView>, AppError> {
        Ok(self.load(org).await?.view)
    }

    /// The organization's state, folded from its events, with protected fields open.
    pub async fn state(&self, org: OrgId) -> Result<State, AppError> {
        Ok(self.load(org).await?.state)
    }

    /// The cached state of `org`, unchecked against the store.
    fn cached(&self, org: OrgId) -> Option<Loaded> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&org).cloned()
    }

    /// Reads the events after the cached version and folds them.
    async fn load(&self, org: OrgId) -> Result<Loaded, AppError> {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&org).cloned().unwrap_or_default()
        };
        let from = cached.state.version.next();
        let tail = self.store.read_stream(StreamId::for_org(org), from).await?;
        if tail.is_empty() {
            return Ok(cached);
        }
        let mut loaded = cached;
        for stored in &tail {
            let event = self.store.open(stored)?;
            loaded.apply(&event);
        }
        self.remember(org, loaded.clone());
        Ok(loaded)
    }

    fn remember(&self, org: OrgId, loaded: Loaded) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.config.cache_capacity && !cache.contains_key(&org) {
            cache.clear();
        }
        match cache.get(&org) {
            // Never replace a newer state with an older one (a concurrent load got further).
            Some(existing) if existing.state.version > loaded.state.version => {}
            _ => {
                cache.insert(org, loaded);
            }
        }
    }
}

/// What an append did, as the application reads it.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Stored, or a repeat of an earlier append with the same command id
    /// ([`AppendResult::repeat`]).
    Stored(AppendResult),
    /// Another writer moved the stream first; it is at `actual`. Nothing was stored.
    Behind { actual: StreamVersion },
}

/// `If-Match`: the version the caller decided on must be the current one.
fn check_version(expected: Option<StreamVersion>, actual: StreamVersion) -> Result<(), AppError> {
    match expected {
        Some(expected) if expected != actual => Err(AppError::VersionMismatch { expected, actual }),
        _ => Ok(()),
    }
}

/// The events to append, each with the request's metadata.
fn new_events(request: &CommandRequest, at: DateTime<Utc>, events: &[Event]) -> Vec<NewEvent> {
    let metadata = EventMetadata {
        occurred_at: at,
        actor: EnvelopeActor::from_actor(&request.actor, request.source_ip.clone()),
        correlation_id: request.correlation_id,
        causation_id: None,
    };
    events
        .iter()
        .map(|e| NewEvent {
            event: e.clone(),
            metadata: metadata.clone(),
        })
        .collect()
}

fn answer(
    view: Option<OrganizationView>,
    appended: usize,
    position: Option<keyledger_domain::GlobalPosition>,
) -> Result<Outcome, AppError> {
    Ok(Outcome {
        view: view.ok_or(AppError::Rejected(DomainError::OrganizationNotFound))?,
        appended,
        position,
    })
}
