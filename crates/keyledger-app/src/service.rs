//! The command handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use keyledger_domain::envelope::{EnvelopeActor, EventMetadata};
use keyledger_domain::{
    Command, CommandId, CommandKind, CommandName, Connection, DekId, DomainError, Edek, Event, KeyIdentifier,
    OrgId, Protected, RewrapEvidence, State, StreamId, StreamVersion, WrappedDek, authorize, evolve,
    precheck,
};
use keyledger_keys::evidence::{unwrap_all, wrap_all};
use keyledger_keys::{Dek, KeyAccess, test_connection};
use keyledger_projection::OrganizationView;
use keyledger_store::{EventStore, NewEvent, StoreError, provider};

use crate::clock::Clock;
use crate::error::{AppError, KeyRole};
use crate::request::{Action, Outcome, Request, TestReport};

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// How often a command is retried after losing a race for its stream.
    pub max_conflict_retries: u32,
    /// Organizations kept in the state cache before it is emptied.
    pub cache_capacity: usize,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            max_conflict_retries: 8,
            cache_capacity: 100_000,
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
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Key tests done for one attempt, kept for a retry while the key-relevant state is the same.
struct Prepared {
    fingerprint: Fingerprint,
    kind: CommandKind,
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

fn action_name(action: &Action) -> CommandName {
    match action {
        Action::Register { .. } => CommandName::RegisterOrganization,
        Action::AddTenant(_) => CommandName::AddTenant,
        Action::RemoveTenant(_) => CommandName::RemoveTenant,
        Action::ChangePlan { .. } => CommandName::ChangePlan,
        Action::EnableCustomerManagedKey(_) => CommandName::EnableCustomerManagedKey,
        Action::EditCustomerManagedKey(_) => CommandName::EditConnection,
        Action::RotateCustomerManagedKey(_) => CommandName::RotateKey,
        Action::SwitchToProviderManagedKey { .. } => CommandName::SwitchToProviderManagedKey,
        Action::DeclareDataLost { .. } => CommandName::DeclareDataLost,
        Action::RecordKeyHealth { .. } => CommandName::RecordKeyHealth,
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
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Handles one command. See the crate docs for the steps.
    ///
    /// A command the rules refuse now, whose command id the organization's stream already
    /// holds, is a repeat of a command recorded before (after a restart, or on another
    /// instance, once the state has moved on: a registration repeated finds the organization
    /// registered): it gets the recorded answer and appends nothing.
    pub async fn handle(&self, request: Request) -> Result<Outcome, AppError> {
        let (org, command_id) = (request.org_id, request.command_id.clone());
        match self.decide_and_append(request).await {
            Err(AppError::Rejected(rejection)) if rejection != DomainError::Forbidden => match command_id {
                Some(id) => self
                    .recorded(org, &id)
                    .await?
                    .ok_or(AppError::Rejected(rejection)),
                None => Err(AppError::Rejected(rejection)),
            },
            other => other,
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
        let view = self
            .load(org)
            .await?
            .view
            .ok_or(AppError::Rejected(DomainError::OrganizationNotFound))?;
        Ok(Some(Outcome {
            view,
            appended: 0,
            position: Some(last.global_position),
        }))
    }

    async fn decide_and_append(&self, request: Request) -> Result<Outcome, AppError> {
        let stream = StreamId::for_org(request.org_id);
        let name = action_name(&request.action);
        let mut prepared: Option<Prepared> = None;
        for _attempt in 0..=self.config.max_conflict_retries {
            // 1. load
            let loaded = self.load(request.org_id).await?;
            // 2. authorize first: a 412 names the current version, which only a caller in
            // scope may learn; then If-Match, and the rules that need no vault
            authorize(&request.actor, request.org_id, name)?;
            if let Some(expected) = request.if_match
                && expected != loaded.state.version
            {
                return Err(AppError::VersionMismatch {
                    expected,
                    actual: loaded.state.version,
                });
            }
            precheck(&loaded.state, &request.actor, request.org_id, name)?;
            // 3 and 4. key tests and DEKs, unless a previous attempt did them for this state
            let now = self.clock.now();
            let fp = fingerprint(&loaded.state);
            let kind = match prepared.take() {
                Some(p) if p.fingerprint == fp => p.kind,
                _ => self.prepare(&loaded.state, &request, now).await?,
            };
            prepared = Some(Prepared {
                fingerprint: fp,
                kind: kind.clone(),
            });
            // 5. decide
            let command = Command {
                org_id: request.org_id,
                actor: request.actor.clone(),
                at: now,
                kind,
            };
            let events = keyledger_domain::decide(&loaded.state, command)?;
            if events.is_empty() {
                return Ok(Outcome {
                    view: loaded
                        .view
                        .ok_or(AppError::Rejected(DomainError::OrganizationNotFound))?,
                    appended: 0,
                    position: None,
                });
            }
            // 6 and 7. seal and append (the store seals protected fields)
            let metadata = EventMetadata {
                occurred_at: now,
                actor: EnvelopeActor::from_actor(&request.actor, request.source_ip.clone()),
                command_id: request.command_id.clone(),
                correlation_id: request.correlation_id,
                causation_id: None,
            };
            let new_events: Vec<NewEvent> = events
                .iter()
                .map(|e| NewEvent {
                    event: e.clone(),
                    metadata: metadata.clone(),
                })
                .collect();
            match self
                .store
                .append(
                    stream,
                    loaded.state.version,
                    new_events,
                    request.command_id.clone(),
                )
                .await
            {
                Ok(result) => {
                    // Believe only what the store says it wrote: events of another stream
                    // are no answer to this command, whatever their versions.
                    if result.stream != stream {
                        tracing::error!(
                            org = %request.org_id,
                            other_stream = %result.stream,
                            "the store answered an append with another stream's result"
                        );
                        return Err(AppError::CommandIdReused);
                    }
                    let repeat = result.last_version
                        != StreamVersion(loaded.state.version.0 + events.len() as u64)
                        || result.first_version != loaded.state.version.next();
                    let view = if repeat {
                        // An idempotent repeat: the first append's events are in the store.
                        self.load(request.org_id).await?.view
                    } else {
                        let mut after = loaded;
                        for e in &events {
                            after.apply(e);
                        }
                        let view = after.view.clone();
                        self.remember(request.org_id, after);
                        view
                    };
                    return Ok(Outcome {
                        view: view.ok_or(AppError::Rejected(DomainError::OrganizationNotFound))?,
                        appended: if repeat { 0 } else { events.len() },
                        position: Some(result.last_position),
                    });
                }
                Err(StoreError::CommandIdReused { .. }) => return Err(AppError::CommandIdReused),
                Err(StoreError::Conflict { .. }) => {
                    tracing::debug!(org = %request.org_id, "append lost a race; reloading");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contended)
    }

    /// "Test" without "save" (R4 dry run): runs the checks, records nothing.
    pub async fn test_connection(
        &self,
        org: OrgId,
        actor: &keyledger_domain::Actor,
        connection: &Connection,
    ) -> Result<TestReport, AppError> {
        let loaded = self.load(org).await?;
        precheck(&loaded.state, actor, org, CommandName::TestConnection)?;
        let test = test_connection(self.keys.as_ref(), connection, self.clock.now()).await;
        Ok(TestReport {
            checks: test.checks,
            outcome: test.outcome,
        })
    }

    /// The organization view, folded from its events (not from a projection).
    pub async fn view(&self, org: OrgId) -> Result<Option<OrganizationView>, AppError> {
        Ok(self.load(org).await?.view)
    }

    /// The organization's state, folded from its events, with protected fields open.
    pub async fn state(&self, org: OrgId) -> Result<State, AppError> {
        Ok(self.load(org).await?.state)
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

    /// Steps 3 and 4: the key tests and DEKs a command needs, as attested values.
    async fn prepare(
        &self,
        state: &State,
        request: &Request,
        now: DateTime<Utc>,
    ) -> Result<CommandKind, AppError> {
        let org_id = request.org_id;
        Ok(match &request.action {
            Action::Register { name, plan, tenants } => CommandKind::RegisterOrganization {
                name: name.clone(),
                plan: plan.clone(),
                tenants: tenants.clone(),
                initial_dek: self.provider_wrap(org_id, DekId::FIRST, &Dek::generate())?,
            },
            Action::AddTenant(t) => CommandKind::AddTenant { tenant: t.clone() },
            Action::RemoveTenant(id) => CommandKind::RemoveTenant { tenant_id: *id },
            Action::ChangePlan { plan, reason } => CommandKind::ChangePlan {
                plan: plan.clone(),
                reason: reason.clone(),
            },
            Action::EnableCustomerManagedKey(connection) => {
                let key = self.validate(connection, now).await?;
                let dek = self
                    .keys
                    .wrap(key.connection(), &Dek::generate())
                    .await
                    .map_err(|e| AppError::from_key(KeyRole::New, e, vec![]))?;
                CommandKind::EnableCustomerManagedKey { key, dek }
            }
            Action::EditCustomerManagedKey(patch) | Action::RotateCustomerManagedKey(patch) => {
                let current = current_connection(state)?;
                if let (Action::RotateCustomerManagedKey(_), Some(k)) =
                    (&request.action, &patch.key_identifier)
                    && k.same_key_version(&current.key_identifier)
                {
                    // Refuse before any vault call.
                    return Err(DomainError::SameKey.into());
                }
                let wanted = patch.apply_to(&current);
                let key = self.validate(&wanted, now).await?;
                let same_key = key.key().same_key_version(&current.key_identifier);
                match (&request.action, same_key) {
                    (Action::EditCustomerManagedKey(_), true) => {
                        CommandKind::EditConnection { key, rotation: None }
                    }
                    (Action::EditCustomerManagedKey(_), false) => {
                        let evidence = self.rewrap_to_customer(state, &current, key.connection()).await?;
                        CommandKind::EditConnection {
                            key,
                            rotation: Some(evidence),
                        }
                    }
                    (_, false) => {
                        let evidence = self.rewrap_to_customer(state, &current, key.connection()).await?;
                        CommandKind::RotateKey { key, evidence }
                    }
                    // Rotation to the key in use: `decide` refuses it with `same_key`.
                    (_, true) => CommandKind::RotateKey {
                        key,
                        evidence: RewrapEvidence {
                            unwrapped: keyledger_keys::evidence::empty_proof(&current.key_identifier),
                            rewrapped: vec![],
                        },
                    },
                }
            }
            Action::SwitchToProviderManagedKey { abandon_lost_data } => {
                let org = state.org().ok_or(DomainError::OrganizationNotFound)?;
                let lost = org.customer_key().is_some_and(|k| k.data_lost);
                let evidence = if lost || *abandon_lost_data {
                    None
                } else {
                    let current = current_connection(state)?;
                    let edeks = customer_edeks(state, &current.key_identifier)?;
                    let (proof, clear) = unwrap_all(self.keys.as_ref(), &current, &edeks)
                        .await
                        .map_err(|e| AppError::from_key(KeyRole::Old, e, vec![]))?;
                    let mut rewrapped = Vec::with_capacity(clear.len());
                    for (id, dek) in &clear {
                        rewrapped.push((*id, self.provider_wrap(org_id, *id, dek)?));
                    }
                    Some(RewrapEvidence {
                        unwrapped: proof,
                        rewrapped,
                    })
                };
                let next = org.next_dek_id();
                CommandKind::SwitchToProviderManagedKey {
                    evidence,
                    new_dek: self.provider_wrap(org_id, next, &Dek::generate())?,
                    abandon_lost_data: *abandon_lost_data,
                }
            }
            Action::DeclareDataLost { reason, ticket } => CommandKind::DeclareDataLost {
                reason: reason.clone(),
                ticket: ticket.clone(),
            },
            Action::RecordKeyHealth { status, detail } => CommandKind::RecordKeyHealth {
                status: *status,
                detail: detail.clone(),
            },
        })
    }

    /// R4 on `connection`; a failure is about the new key.
    async fn validate(
        &self,
        connection: &Connection,
        now: DateTime<Utc>,
    ) -> Result<keyledger_domain::ValidatedKey, AppError> {
        let test = test_connection(self.keys.as_ref(), connection, now).await;
        test.outcome
            .map_err(|e| AppError::from_key(KeyRole::New, e, test.checks))
    }

    /// R7: every DEK under the current key unwraps with it (old key) and is wrapped by the
    /// new one.
    async fn rewrap_to_customer(
        &self,
        state: &State,
        current: &Connection,
        new: &Connection,
    ) -> Result<RewrapEvidence, AppError> {
        let edeks = customer_edeks(state, &current.key_identifier)?;
        let (proof, clear) = unwrap_all(self.keys.as_ref(), current, &edeks)
            .await
            .map_err(|e| AppError::from_key(KeyRole::Old, e, vec![]))?;
        let rewrapped = wrap_all(self.keys.as_ref(), new, &clear)
            .await
            .map_err(|e| AppError::from_key(KeyRole::New, e, vec![]))?;
        Ok(RewrapEvidence {
            unwrapped: proof,
            rewrapped,
        })
    }

    fn provider_wrap(&self, org: OrgId, dek_id: DekId, dek: &Dek) -> Result<WrappedDek, AppError> {
        provider::wrap_dek(self.store.key_ring(), org, dek_id, dek.expose()).map_err(|e| {
            tracing::error!(error = %e, "wrapping a DEK with the internal key failed");
            AppError::Internal("wrapping a DEK with the internal key failed")
        })
    }
}

/// The connection in use, with its secret open.
fn current_connection(state: &State) -> Result<Connection, AppError> {
    let key = state
        .org()
        .and_then(|o| o.customer_key())
        .ok_or(DomainError::CmkNotEnabled)?;
    key.connection.to_connection().ok_or(AppError::Internal(
        "the client secret of the connection in use is not open",
    ))
}

/// The EDEKs of the DEKs under `key`, opened.
fn customer_edeks(state: &State, key: &KeyIdentifier) -> Result<Vec<(DekId, Edek)>, AppError> {
    let org = state.org().ok_or(DomainError::OrganizationNotFound)?;
    org.deks_under(key)
        .into_iter()
        .map(|id| match &org.data_keys[&id].edek {
            Protected::Open(edek) => Ok((id, edek.clone())),
            _ => Err(AppError::Internal("an EDEK of the organization is not open")),
        })
        .collect()
}
