//! The state of one organization, folded from its events. `evolve` cannot fail and holds no
//! business rules: it only records what the events say.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::attest::{KeyProperties, WrappedBy};
use crate::connection::ConnectionRecord;
use crate::event::{Event, Tenant};
use crate::health::{HealthStatus, PurgeReminder};
use crate::ids::{DekId, OrgId, StreamVersion, TenantId};
use crate::key_identifier::KeyIdentifier;
use crate::plan::Plan;
use crate::secret::{Edek, Protected};

/// One organization's stream, folded. `org` is `None` until it registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub version: StreamVersion,
    pub org: Option<Organization>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    pub org_id: OrgId,
    pub name: String,
    pub plan: Plan,
    pub tenants: Vec<Tenant>,
    pub mode: KeyMode,
    pub data_keys: BTreeMap<DekId, DataKey>,
    pub active_dek: DekId,
    pub key_history: Vec<KeyHistoryEntry>,
    /// The last data-loss declaration, kept after the organization moves on (the view shows
    /// `data_lost`).
    pub data_loss: Option<DataLoss>,
    pub registered_at: DateTime<Utc>,
}

// One state per organization in memory; the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum KeyMode {
    ProviderManaged,
    CustomerManaged(CustomerKey),
}

/// The customer-managed key currently in use.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerKey {
    pub connection: ConnectionRecord,
    pub properties: KeyProperties,
    pub enabled_at: DateTime<Utc>,
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// R8: the plan was downgraded; edit and rotate are refused.
    pub locked: bool,
    /// R11: customer data under this key was declared lost. Ends with the switch that
    /// abandons it; a later enable starts a new, intact period.
    pub data_lost: bool,
    pub health: KeyHealth,
}

impl CustomerKey {
    pub fn key(&self) -> &KeyIdentifier {
        &self.connection.key_identifier
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyHealth {
    pub status: HealthStatus,
    pub since: DateTime<Utc>,
    pub detail: Option<String>,
    /// While `key_deleted`: when the vault purges the key (`None` when it did not say).
    pub recoverable_until: Option<DateTime<Utc>>,
    /// While `key_deleted`: the most urgent purge reminder recorded for this deletion (R10),
    /// folded from the events so a restart does not remind again.
    pub purge_reminder: Option<PurgeReminder>,
}

impl KeyHealth {
    /// Healthy since `at`: after an enable or rotation.
    fn healthy(at: DateTime<Utc>) -> Self {
        Self {
            status: HealthStatus::Healthy,
            since: at,
            detail: None,
            recoverable_until: None,
            purge_reminder: None,
        }
    }

    /// The health after `e`. A change that keeps the status and the purge date (a purge
    /// reminder) keeps the since-time and raises the reminder; any other change starts anew.
    pub fn after(&self, e: &crate::event::KeyHealthChanged) -> Self {
        let same_deletion = e.to == HealthStatus::KeyDeleted
            && self.status == HealthStatus::KeyDeleted
            && self.recoverable_until == e.recoverable_until;
        let (since, purge_reminder) = match same_deletion {
            true => (self.since, self.purge_reminder.max(e.purge_reminder)),
            false => (e.observed_at, e.purge_reminder),
        };
        Self {
            status: e.to,
            since,
            detail: e.detail.clone(),
            recoverable_until: match e.to {
                HealthStatus::KeyDeleted => e.recoverable_until,
                _ => None,
            },
            purge_reminder,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataKey {
    pub dek_id: DekId,
    pub wrapped_by: WrappedBy,
    pub edek: Protected<Edek>,
    pub created_at: DateTime<Utc>,
    pub lost: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHistoryEntry {
    pub key_identifier: KeyIdentifier,
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoss {
    pub key_identifier: KeyIdentifier,
    pub lost_dek_ids: Vec<DekId>,
    pub declared_at: DateTime<Utc>,
}

impl Organization {
    pub fn customer_key(&self) -> Option<&CustomerKey> {
        match &self.mode {
            KeyMode::CustomerManaged(k) => Some(k),
            KeyMode::ProviderManaged => None,
        }
    }

    pub fn has_tenant(&self, id: TenantId) -> bool {
        self.tenants.iter().any(|t| t.tenant_id == id)
    }

    /// DEKs that are wrapped by `key` and not lost: the ones a rotation or switch must re-wrap.
    pub fn deks_under(&self, key: &KeyIdentifier) -> Vec<DekId> {
        self.data_keys
            .values()
            .filter(|d| !d.lost && d.wrapped_by.is_customer(key))
            .map(|d| d.dek_id)
            .collect()
    }

    pub fn next_dek_id(&self) -> DekId {
        self.data_keys
            .keys()
            .next_back()
            .map_or(DekId::FIRST, |d| d.next())
    }

    fn close_current_key(&mut self, at: DateTime<Utc>) {
        if let Some(last) = self.key_history.last_mut()
            && last.to.is_none()
        {
            last.to = Some(at);
        }
    }
}

impl State {
    pub fn org(&self) -> Option<&Organization> {
        self.org.as_ref()
    }

    /// Folds a list of events from scratch.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> State {
        events.into_iter().fold(State::default(), evolve)
    }
}

/// Applies one event. Events that do not fit the state (which `decide` never emits) change
/// only the version.
pub fn evolve(mut state: State, event: &Event) -> State {
    state.version = state.version.next();
    if let Event::OrganizationRegistered(e) = event {
        state.org = Some(Organization {
            org_id: e.org_id,
            name: e.name.clone(),
            plan: e.plan.clone(),
            tenants: e.tenants.clone(),
            mode: KeyMode::ProviderManaged,
            data_keys: BTreeMap::new(),
            active_dek: DekId::FIRST,
            key_history: Vec::new(),
            data_loss: None,
            registered_at: e.registered_at,
        });
        return state;
    }
    let Some(org) = state.org.as_mut() else {
        return state;
    };
    match event {
        Event::OrganizationRegistered(_) => {}
        Event::TenantAdded(e) => org.tenants.push(Tenant {
            tenant_id: e.tenant_id,
            name: e.name.clone(),
        }),
        Event::TenantRemoved(e) => org.tenants.retain(|t| t.tenant_id != e.tenant_id),
        Event::PlanChanged(e) => org.plan = e.to.clone(),
        Event::CustomerManagedKeyLocked(_) => {
            if let KeyMode::CustomerManaged(k) = &mut org.mode {
                k.locked = true;
            }
        }
        Event::CustomerManagedKeyUnlocked(_) => {
            if let KeyMode::CustomerManaged(k) = &mut org.mode {
                k.locked = false;
            }
        }
        Event::CustomerManagedKeyEnabled(e) => {
            org.key_history.push(KeyHistoryEntry {
                key_identifier: e.connection.key_identifier.clone(),
                from: e.validated_at,
                to: None,
            });
            org.mode = KeyMode::CustomerManaged(CustomerKey {
                connection: e.connection.clone(),
                properties: e.key.clone(),
                enabled_at: e.validated_at,
                last_rotated_at: None,
                locked: false,
                data_lost: false,
                health: KeyHealth::healthy(e.validated_at),
            });
        }
        Event::CustomerManagedKeyConnectionEdited(e) => {
            if let KeyMode::CustomerManaged(k) = &mut org.mode {
                k.connection = e.connection.clone();
            }
        }
        Event::CustomerManagedKeyRotated(e) => {
            org.close_current_key(e.validated_at);
            org.key_history.push(KeyHistoryEntry {
                key_identifier: e.to_key.clone(),
                from: e.validated_at,
                to: None,
            });
            if let KeyMode::CustomerManaged(k) = &mut org.mode {
                k.connection = e.connection.clone();
                k.properties = e.key.clone();
                k.last_rotated_at = Some(e.validated_at);
                // The new key passed the live test just now.
                k.health = KeyHealth::healthy(e.validated_at);
            }
        }
        Event::SwitchedToProviderManagedKey(e) => {
            org.close_current_key(e.switched_at);
            org.mode = KeyMode::ProviderManaged;
        }
        Event::DataKeyGenerated(e) => {
            org.data_keys.insert(
                e.dek_id,
                DataKey {
                    dek_id: e.dek_id,
                    wrapped_by: e.wrapped_by.clone(),
                    edek: e.edek.clone(),
                    created_at: e.generated_at,
                    lost: false,
                },
            );
            org.active_dek = e.dek_id;
        }
        Event::DataKeysRewrapped(e) => {
            for k in &e.data_keys {
                if let Some(d) = org.data_keys.get_mut(&k.dek_id) {
                    d.wrapped_by = e.wrapped_by.clone();
                    d.edek = k.edek.clone();
                }
            }
        }
        Event::KeyHealthChanged(e) => {
            if let KeyMode::CustomerManaged(k) = &mut org.mode {
                k.health = k.health.after(e);
            }
        }
        Event::CustomerDataDeclaredLost(e) => {
            for id in &e.lost_dek_ids {
                if let Some(d) = org.data_keys.get_mut(id) {
                    d.lost = true;
                }
            }
            if let KeyMode::CustomerManaged(k) = &mut org.mode {
                k.data_lost = true;
            }
            org.data_loss = Some(DataLoss {
                key_identifier: e.key_identifier.clone(),
                lost_dek_ids: e.lost_dek_ids.clone(),
                declared_at: e.declared_at,
            });
        }
        // Lives in stream `audit`, never in an organization's stream.
        Event::AuditCheckpointSigned(_) | Event::DataKeyReleased(_) => {}
    }
    state
}
