//! The rows each projection keeps, and how one event changes them. Pure: no IO, no secrets
//! (events are folded in their stored form, with protected fields still sealed, and no row
//! has a field for them).

use chrono::{DateTime, Utc};
use keyledger_domain::event::*;
use keyledger_domain::{
    ActorKind, DekId, Event, HealthStatus, KeyIdentifier, OrgId, Plan, TenantId, WrappedBy,
};
use keyledger_store::envelope::StoredEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// organization_encryption: the organization view of CONTRACT.md

/// The organization view: which key an organization uses now. Also the API's response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrganizationView {
    pub org_id: OrgId,
    pub name: String,
    /// The stream version this view reflects (use it in `If-Match`).
    pub version: u64,
    pub plan: Plan,
    pub tenants: Vec<Tenant>,
    pub encryption: EncryptionView,
    pub key_history: Vec<KeyHistoryView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionMode {
    ProviderManaged,
    CustomerManaged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EncryptionView {
    pub mode: EncryptionMode,
    pub locked: bool,
    pub can_enable_customer_managed_key: bool,
    pub customer_managed_key: Option<CustomerKeyView>,
    pub active_data_key_id: DekId,
    /// Key health; `null` while provider-managed.
    pub health: Option<HealthView>,
    /// Customer data was declared lost at some point (R11); never reset.
    pub data_lost: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerKeyView {
    pub key_identifier: KeyIdentifier,
    pub vault_url: String,
    pub key_name: String,
    pub key_version: Option<String>,
    pub directory_id: keyledger_domain::DirectoryId,
    pub application_id: keyledger_domain::ApplicationId,
    /// The secret itself is write-only (R13).
    pub client_secret_set: bool,
    pub enabled_at: DateTime<Utc>,
    pub last_rotated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthView {
    pub status: HealthStatus,
    pub since: DateTime<Utc>,
    pub detail: Option<String>,
    /// While `key_deleted`: when the vault purges the key; the key and the data under it can
    /// be recovered until then. `null` otherwise (and in documents folded before it existed).
    #[serde(default)]
    pub recoverable_until: Option<DateTime<Utc>>,
}

impl HealthView {
    fn healthy(at: DateTime<Utc>) -> Self {
        Self {
            status: HealthStatus::Healthy,
            since: at,
            detail: None,
            recoverable_until: None,
        }
    }

    /// The health after `e`, as the domain folds it: a purge reminder (same status, same
    /// purge date) keeps the since-time.
    fn after(previous: Option<&HealthView>, e: &keyledger_domain::event::KeyHealthChanged) -> Self {
        let since = match previous {
            Some(h) if e.from == e.to && h.status == e.to && h.recoverable_until == e.recoverable_until => {
                h.since
            }
            _ => e.observed_at,
        };
        Self {
            status: e.to,
            since,
            detail: e.detail.clone(),
            recoverable_until: e.recoverable_until.filter(|_| e.to == HealthStatus::KeyDeleted),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyHistoryView {
    pub key_identifier: KeyIdentifier,
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

fn customer_key_view(c: &keyledger_domain::ConnectionRecord, at: DateTime<Utc>) -> CustomerKeyView {
    CustomerKeyView {
        key_identifier: c.key_identifier.clone(),
        vault_url: c.key_identifier.vault_url(),
        key_name: c.key_identifier.name().to_owned(),
        key_version: c.key_identifier.version().map(str::to_owned),
        directory_id: c.directory_id,
        application_id: c.application_id,
        client_secret_set: true,
        enabled_at: at,
        last_rotated_at: None,
    }
}

impl OrganizationView {
    /// The view right after registration.
    pub fn registered(e: &OrganizationRegistered, version: u64) -> Self {
        let mut view = Self {
            org_id: e.org_id,
            name: e.name.clone(),
            version,
            plan: e.plan.clone(),
            tenants: e.tenants.clone(),
            encryption: EncryptionView {
                mode: EncryptionMode::ProviderManaged,
                locked: false,
                can_enable_customer_managed_key: false,
                customer_managed_key: None,
                active_data_key_id: DekId::FIRST,
                health: None,
                data_lost: false,
            },
            key_history: Vec::new(),
        };
        view.refresh_can_enable();
        view
    }

    /// Folds one more event of this organization's stream.
    pub fn apply(&mut self, version: u64, event: &Event) {
        self.version = version;
        let enc = &mut self.encryption;
        match event {
            Event::OrganizationRegistered(_) => {}
            Event::TenantAdded(e) => self.tenants.push(Tenant {
                tenant_id: e.tenant_id,
                name: e.name.clone(),
            }),
            Event::TenantRemoved(e) => self.tenants.retain(|t| t.tenant_id != e.tenant_id),
            Event::PlanChanged(e) => self.plan = e.to.clone(),
            Event::CustomerManagedKeyLocked(_) => enc.locked = true,
            Event::CustomerManagedKeyUnlocked(_) => enc.locked = false,
            Event::CustomerManagedKeyEnabled(e) => {
                enc.mode = EncryptionMode::CustomerManaged;
                enc.locked = false;
                enc.customer_managed_key = Some(customer_key_view(&e.connection, e.validated_at));
                enc.health = Some(HealthView::healthy(e.validated_at));
                self.key_history.push(KeyHistoryView {
                    key_identifier: e.connection.key_identifier.clone(),
                    from: e.validated_at,
                    to: None,
                });
            }
            Event::CustomerManagedKeyConnectionEdited(e) => {
                if let Some(k) = &mut enc.customer_managed_key {
                    let enabled_at = k.enabled_at;
                    let last_rotated_at = k.last_rotated_at;
                    *k = customer_key_view(&e.connection, enabled_at);
                    k.last_rotated_at = last_rotated_at;
                }
            }
            Event::CustomerManagedKeyRotated(e) => {
                if let Some(k) = &mut enc.customer_managed_key {
                    let enabled_at = k.enabled_at;
                    *k = customer_key_view(&e.connection, enabled_at);
                    k.last_rotated_at = Some(e.validated_at);
                }
                enc.health = Some(HealthView::healthy(e.validated_at));
                close_history(&mut self.key_history, e.validated_at);
                self.key_history.push(KeyHistoryView {
                    key_identifier: e.to_key.clone(),
                    from: e.validated_at,
                    to: None,
                });
            }
            Event::SwitchedToProviderManagedKey(e) => {
                enc.mode = EncryptionMode::ProviderManaged;
                enc.locked = false;
                enc.customer_managed_key = None;
                enc.health = None;
                close_history(&mut self.key_history, e.switched_at);
            }
            Event::DataKeyGenerated(e) => enc.active_data_key_id = e.dek_id,
            Event::DataKeysRewrapped(_) => {}
            Event::KeyHealthChanged(e) => {
                if enc.mode == EncryptionMode::CustomerManaged {
                    enc.health = Some(HealthView::after(enc.health.as_ref(), e));
                }
            }
            Event::CustomerDataDeclaredLost(_) => enc.data_lost = true,
            // Streams `audit` and `releases-<org>`; never part of an organization's view.
            Event::AuditCheckpointSigned(_) | Event::DataKeyReleased(_) => {}
        }
        self.refresh_can_enable();
    }

    fn refresh_can_enable(&mut self) {
        self.encryption.can_enable_customer_managed_key = self.encryption.mode
            == EncryptionMode::ProviderManaged
            && self.plan.allows_customer_managed_key();
    }

    /// Folds a whole stream; `None` when it does not start with a registration.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Self> {
        let mut view: Option<Self> = None;
        for (i, e) in events.into_iter().enumerate() {
            let version = u64::try_from(i).expect("usize fits in u64") + 1;
            match (&mut view, e) {
                (None, Event::OrganizationRegistered(r)) => view = Some(Self::registered(r, version)),
                (Some(v), e) => v.apply(version, e),
                (None, _) => return None,
            }
        }
        view
    }
}

fn close_history(history: &mut [KeyHistoryView], at: DateTime<Utc>) {
    if let Some(last) = history.last_mut()
        && last.to.is_none()
    {
        last.to = Some(at);
    }
}

// ---------------------------------------------------------------------------------------------
// key_health

/// The health of an organization's customer key. `None` (no row) while provider-managed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyHealthRow {
    pub org_id: OrgId,
    pub key_identifier: KeyIdentifier,
    pub status: HealthStatus,
    pub since: DateTime<Utc>,
    pub detail: Option<String>,
    /// See [`HealthView::recoverable_until`].
    #[serde(default)]
    pub recoverable_until: Option<DateTime<Utc>>,
}

impl KeyHealthRow {
    pub fn apply(row: Option<Self>, org_id: OrgId, event: &Event) -> Option<Self> {
        match event {
            Event::CustomerManagedKeyEnabled(e) => Some(Self {
                org_id,
                key_identifier: e.connection.key_identifier.clone(),
                status: HealthStatus::Healthy,
                since: e.validated_at,
                detail: None,
                recoverable_until: None,
            }),
            Event::CustomerManagedKeyRotated(e) => Some(Self {
                org_id,
                key_identifier: e.to_key.clone(),
                status: HealthStatus::Healthy,
                since: e.validated_at,
                detail: None,
                recoverable_until: None,
            }),
            Event::KeyHealthChanged(e) => row.map(|r| {
                let health = HealthView::after(
                    Some(&HealthView {
                        status: r.status,
                        since: r.since,
                        detail: r.detail.clone(),
                        recoverable_until: r.recoverable_until,
                    }),
                    e,
                );
                Self {
                    status: health.status,
                    since: health.since,
                    detail: health.detail,
                    recoverable_until: health.recoverable_until,
                    ..r
                }
            }),
            Event::SwitchedToProviderManagedKey(_) => None,
            _ => row,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// data_key_inventory

/// Which key wraps each DEK of an organization: shows which DEKs still depend on an old key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DataKeyRow {
    pub dek_id: DekId,
    pub wrapped_by: WrappedBy,
    pub created_at: DateTime<Utc>,
    pub rewrapped_at: Option<DateTime<Utc>>,
    pub lost: bool,
}

/// The inventory of one organization.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct DataKeyInventory {
    pub data_keys: Vec<DataKeyRow>,
}

impl DataKeyInventory {
    pub fn apply(&mut self, occurred_at: DateTime<Utc>, event: &Event) {
        match event {
            Event::DataKeyGenerated(e) => self.data_keys.push(DataKeyRow {
                dek_id: e.dek_id,
                wrapped_by: e.wrapped_by.clone(),
                created_at: e.generated_at,
                rewrapped_at: None,
                lost: false,
            }),
            Event::DataKeysRewrapped(e) => {
                for k in &e.data_keys {
                    if let Some(row) = self.data_keys.iter_mut().find(|r| r.dek_id == k.dek_id) {
                        row.wrapped_by = e.wrapped_by.clone();
                        row.rewrapped_at = Some(occurred_at);
                    }
                }
            }
            Event::CustomerDataDeclaredLost(e) => {
                for row in &mut self.data_keys {
                    if e.lost_dek_ids.contains(&row.dek_id) {
                        row.lost = true;
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tenant_audit

/// One row of the tenant-level audit (the seed's "Audit page in Orchestrator, at the tenant
/// level"). No secrets: `details` is built from public fields only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// `<position>-<tenant_id>`: unique, and ordered like the log within a tenant.
    pub id: String,
    pub tenant_id: TenantId,
    pub org_id: OrgId,
    pub occurred_at: DateTime<Utc>,
    pub actor: AuditActor,
    /// The event type.
    pub action: String,
    pub details: Value,
    pub event_id: keyledger_domain::EventId,
    pub position: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditActor {
    pub kind: ActorKind,
    pub id: String,
}

/// The tenants an organization has, as the audit projection tracks them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct AuditTenants {
    pub tenants: Vec<TenantId>,
}

/// The details an auditor sees for a key-relevant event, or `None` when the event is not
/// key-relevant (tenants, plan changes without a lock, DEK bookkeeping).
pub fn audit_details(event: &Event) -> Option<Value> {
    Some(match event {
        Event::CustomerManagedKeyEnabled(e) => json!({
            "to_key": e.connection.key_identifier,
            "directory_id": e.connection.directory_id,
            "application_id": e.connection.application_id,
        }),
        Event::CustomerManagedKeyConnectionEdited(e) => json!({
            "key": e.connection.key_identifier,
            "changed_fields": e.changed_fields,
            "client_secret_changed": e.client_secret_changed,
        }),
        Event::CustomerManagedKeyRotated(e) => json!({
            "from_key": e.from_key,
            "to_key": e.to_key,
            "changed_fields": e.changed_fields,
            "client_secret_changed": e.client_secret_changed,
            "rewrapped_dek_ids": e.rewrapped_dek_ids,
        }),
        Event::SwitchedToProviderManagedKey(e) => json!({
            "from_key": e.previous_key,
            "abandoned_lost_data": e.abandoned_lost_data,
        }),
        Event::CustomerManagedKeyLocked(e) => json!({ "reason": e.reason }),
        Event::CustomerManagedKeyUnlocked(_) => json!({}),
        Event::KeyHealthChanged(e) => {
            let mut details = json!({ "from": e.from, "to": e.to, "detail": e.detail });
            // The countdown's fields only where the event has them: older rows stay as they were.
            if let Some(until) = e.recoverable_until {
                details["recoverable_until"] = json!(until);
            }
            if let Some(reminder) = e.purge_reminder {
                details["purge_reminder"] = json!(reminder);
            }
            details
        }
        Event::CustomerDataDeclaredLost(e) => json!({
            "key": e.key_identifier,
            "lost_dek_ids": e.lost_dek_ids,
            "reason": e.reason,
            "ticket": e.ticket,
        }),
        // Who is the row's actor, when its time; never key material.
        Event::DataKeyReleased(e) => json!({
            "dek_id": e.dek_id,
            "wrapped_by": e.wrapped_by,
            "active": e.active,
        }),
        Event::OrganizationRegistered(_)
        | Event::TenantAdded(_)
        | Event::TenantRemoved(_)
        | Event::PlanChanged(_)
        | Event::DataKeyGenerated(_)
        | Event::DataKeysRewrapped(_)
        | Event::AuditCheckpointSigned(_) => return None,
    })
}

impl AuditTenants {
    /// Tracks the tenant list and returns one audit row per tenant the organization has at
    /// this event.
    pub fn apply(&mut self, stored: &StoredEvent, event: &Event) -> Vec<AuditEntry> {
        match event {
            Event::OrganizationRegistered(e) => {
                self.tenants = e.tenants.iter().map(|t| t.tenant_id).collect();
            }
            Event::TenantAdded(e) if !self.tenants.contains(&e.tenant_id) => self.tenants.push(e.tenant_id),
            Event::TenantRemoved(e) => self.tenants.retain(|t| *t != e.tenant_id),
            _ => {}
        }
        let Some(details) = audit_details(event) else {
            return Vec::new();
        };
        // The organization's own stream, or its release record (ADR 0030).
        let Some(org_id) = stored.stream_id.owner() else {
            return Vec::new();
        };
        self.tenants
            .iter()
            .map(|tenant_id| AuditEntry {
                id: format!("{}-{}", stored.global_position.0, tenant_id),
                tenant_id: *tenant_id,
                org_id,
                occurred_at: stored.occurred_at,
                actor: AuditActor {
                    kind: stored.actor.kind,
                    id: stored.actor.id.clone(),
                },
                action: stored.event_type.clone(),
                details: details.clone(),
                event_id: stored.event_id,
                position: stored.global_position.0,
            })
            .collect()
    }
}
