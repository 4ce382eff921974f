//! `decide`: the rules R1–R13 as one pure, synchronous function.

use std::collections::BTreeSet;

use crate::actor::{Actor, ActorKind, Reach, Role};
use crate::attest::{ValidatedKey, WrappedBy, WrappedDek};
use crate::command::{Command, Edeks, Intent, KeyResults, KeyWork, RewrapEvidence};
use crate::connection::{Connection, ConnectionField, ConnectionRecord};
use crate::event::*;
use crate::health::{HealthStatus, PurgeReminder};
use crate::ids::{DekId, OrgId, TenantId};
use crate::key_identifier::KeyIdentifier;
use crate::plan::Plan;
use crate::secret::Protected;
use crate::state::{CustomerKey, Organization, State};

/// A command the rules refuse. Each variant maps to one CONTRACT.md error code
/// ([`DomainError::code`]); nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// R3: the actor lacks the role, or the organization is outside its scope. Do not retry.
    #[error("the actor may not do this")]
    Forbidden,
    /// No such organization. Register it first.
    #[error("organization not found")]
    OrganizationNotFound,
    /// The tenant is not one of the organization's.
    #[error("tenant not found")]
    TenantNotFound,
    /// R1: the organization (or tenant) is registered already.
    #[error("{what} is already registered")]
    AlreadyRegistered { what: &'static str },
    /// R5: customer-managed key is on; use edit or rotate.
    #[error("a customer-managed key is already enabled; edit or rotate it instead")]
    CmkAlreadyEnabled,
    /// R5: customer-managed key is off.
    #[error("no customer-managed key is enabled")]
    CmkNotEnabled,
    /// R8: the plan was downgraded; only switching to provider-managed is allowed.
    #[error("the customer-managed key is locked because the plan was downgraded")]
    CmkLockedByPlan,
    /// R2/R8: the plan is not in the enterprise family.
    #[error("the {plan} plan does not include customer-managed keys")]
    PlanNotEligible { plan: String },
    /// R11: the key and its data are declared lost (or the declaration is already made).
    #[error("customer data under this key was declared lost")]
    DataLost,
    /// R7: rotating to the key version in use.
    #[error("the new key is the key already in use")]
    SameKey,
    /// The organization has no DEK with this id.
    #[error("the organization has no data key {dek_id}")]
    DataKeyNotFound { dek_id: DekId },
    /// The customer's key refuses keyledger: its recorded health is of the revoked class
    /// ([`HealthStatus::is_revoked`]). No DEK under it is released until a probe records a
    /// recovery.
    #[error("the customer-managed key is unavailable: {reason}")]
    KeyUnavailable { reason: HealthStatus },
    /// The command is malformed for the rules (a 400 naming the field).
    #[error("{field}: {message}")]
    InvalidRequest { field: &'static str, message: String },
    /// The attested evidence does not match the current state. The application builds the
    /// evidence from the state it passes in, so this is a bug there: report, do not retry.
    #[error("key-test evidence does not match the organization's state: {0}")]
    EvidenceMismatch(&'static str),
    /// A protected field the key work needs is sealed in the state given to [`plan`]. The
    /// application loads states with protected fields open, so this is a bug there: report,
    /// do not retry.
    #[error("{0} is not open")]
    NotOpen(&'static str),
}

impl DomainError {
    /// The CONTRACT.md error code.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::Forbidden => "forbidden",
            DomainError::OrganizationNotFound => "organization_not_found",
            DomainError::TenantNotFound => "tenant_not_found",
            DomainError::AlreadyRegistered { .. } => "already_registered",
            DomainError::CmkAlreadyEnabled => "cmk_already_enabled",
            DomainError::CmkNotEnabled => "cmk_not_enabled",
            DomainError::CmkLockedByPlan => "cmk_locked_by_plan",
            DomainError::PlanNotEligible { .. } => "plan_not_eligible",
            DomainError::DataLost => "data_lost",
            DomainError::SameKey => "same_key",
            DomainError::DataKeyNotFound { .. } => "data_key_not_found",
            DomainError::KeyUnavailable { .. } => "key_unavailable",
            DomainError::InvalidRequest { .. } => "invalid_request",
            DomainError::EvidenceMismatch(_) | DomainError::NotOpen(_) => "internal_error",
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        DomainError::InvalidRequest {
            field,
            message: message.into(),
        }
    }
}

/// R3: who may issue which command. [`plan`] runs it first, before anything that shows the
/// organization's state (an `If-Match` answer names its version), so a caller out of scope
/// learns nothing.
fn authorize(actor: &Actor, org: OrgId, intent: &Intent) -> Result<(), DomainError> {
    let allowed: &[Role] = match intent {
        Intent::Register { .. } | Intent::AddTenant(_) | Intent::RemoveTenant(_) => &[Role::Platform],
        Intent::ChangePlan { .. } => &[Role::Billing],
        Intent::TestConnection(_)
        | Intent::EnableCustomerManagedKey(_)
        | Intent::EditCustomerManagedKey(_)
        | Intent::RotateCustomerManagedKey(_)
        | Intent::SwitchToProviderManagedKey { .. } => &[Role::OrgAdmin],
        Intent::DeclareDataLost { .. } | Intent::ProbeKeyHealth => &[Role::OrgAdmin, Role::Support],
        Intent::RecordKeyHealth { .. } | Intent::RecordKeyDeleted { .. } => &[Role::System],
    };
    let role_ok = allowed.iter().any(|r| actor.has_role(*r));
    let system_ok = !allowed.contains(&Role::System) || actor.kind == ActorKind::System;
    if role_ok && system_ok && actor.reaches_org(org) {
        Ok(())
    } else {
        Err(DomainError::Forbidden)
    }
}

/// What a caller reads about one organization; [`authorize_read`] says who may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Read {
    /// The organization view and its key health: every role.
    View,
    /// The data-key inventory: org admins, auditors and support.
    DataKeys,
    /// The organization's event page: platform and auditors.
    Events,
    /// The organization's verifiable audit log (checkpoint, proofs, bundle): org admins,
    /// auditors and support.
    AuditLog,
}

/// R3 for reads, the counterpart of [`authorize`] for commands. The actor must hold one of
/// the roles of `read` and reach `org`, else [`DomainError::Forbidden`]. The answer then
/// checks the organization once it is loaded ([`ReadScope::admit`]).
pub fn authorize_read(actor: &Actor, org: OrgId, read: Read) -> Result<ReadScope<'_>, DomainError> {
    let allowed: &[Role] = match read {
        Read::View => &[
            Role::OrgAdmin,
            Role::Auditor,
            Role::Platform,
            Role::Billing,
            Role::Support,
        ],
        Read::DataKeys | Read::AuditLog => &[Role::OrgAdmin, Role::Auditor, Role::Support],
        Read::Events => &[Role::Platform, Role::Auditor],
    };
    if !(allowed.iter().any(|r| actor.has_role(*r)) && actor.reaches_org(org)) {
        return Err(DomainError::Forbidden);
    }
    // A tenant-scoped auditor (with no other role that allows the read) reads only
    // organizations that hold one of its tenants.
    let other_role = allowed.iter().any(|r| *r != Role::Auditor && actor.has_role(*r));
    let tenants = match &actor.scope.tenants {
        Reach::Only(tenants) if !other_role => Some(tenants),
        _ => None,
    };
    Ok(ReadScope { tenants })
}

/// A read that is not of one organization; [`authorize_cross_read`] says who may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrossRead {
    /// The event feed of every organization (and its live stream): platform only.
    EventFeed,
    /// The audit log of one tenant: auditors, org admins and support with the tenant in scope.
    TenantAudit(TenantId),
    /// The global verifiable audit log's checkpoint: platform, and auditors who reach every
    /// organization (`organizations = ["*"]`).
    GlobalAuditLog,
}

/// R3 for reads across organizations: [`DomainError::Forbidden`] unless the actor holds one
/// of the roles of `read` (and, for a tenant's audit log, has the tenant in scope).
pub fn authorize_cross_read(actor: &Actor, read: CrossRead) -> Result<(), DomainError> {
    let allowed = match read {
        CrossRead::EventFeed => actor.has_role(Role::Platform),
        CrossRead::GlobalAuditLog => {
            actor.has_role(Role::Platform)
                || (actor.has_role(Role::Auditor) && actor.scope.organizations == Reach::All)
        }
        CrossRead::TenantAudit(tenant) => {
            [Role::Auditor, Role::OrgAdmin, Role::Support]
                .iter()
                .any(|r| actor.has_role(*r))
                && actor.scope.tenants.contains(&tenant)
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(DomainError::Forbidden)
    }
}

/// A read [`authorize_read`] allowed, before the organization is loaded.
#[derive(Debug, Clone, Copy)]
pub struct ReadScope<'a> {
    /// `Some` for a tenant-scoped auditor: the tenants it may see.
    tenants: Option<&'a BTreeSet<TenantId>>,
}

impl ReadScope<'_> {
    /// Whether the read may see the organization, given its tenants (`None`: it does not
    /// exist). [`DomainError::OrganizationNotFound`] for a missing one, except that a
    /// tenant-scoped reader gets [`DomainError::Forbidden`] for it too, so it cannot probe
    /// for organizations, and for one that holds none of its tenants.
    pub fn admit(&self, org_tenants: Option<&[Tenant]>) -> Result<(), DomainError> {
        match (org_tenants, self.tenants) {
            (None, None) => Err(DomainError::OrganizationNotFound),
            (None, Some(_)) => Err(DomainError::Forbidden),
            (Some(held), Some(mine)) if !held.iter().any(|t| mine.contains(&t.tenant_id)) => {
                Err(DomainError::Forbidden)
            }
            (Some(_), _) => Ok(()),
        }
    }
}

/// Every rule a command must pass, and the key work it then needs. Pure: the application
/// runs it before any vault call, so a refused command costs no vault round trip, and
/// carries out the returned [`KeyWork`] for [`decide`].
///
/// [`DomainError::Forbidden`] comes first, before anything about the organization's state.
pub fn plan(state: &State, command: &Command) -> Result<KeyWork, DomainError> {
    let Command {
        org_id,
        actor,
        intent,
        ..
    } = command;
    authorize(actor, *org_id, intent)?;
    let Some(org) = &state.org else {
        return match intent {
            Intent::Register { name, tenants, .. } => {
                check_register(name, tenants)?;
                Ok(KeyWork::ProviderWrapNew { dek_id: DekId::FIRST })
            }
            _ => Err(DomainError::OrganizationNotFound),
        };
    };
    match intent {
        Intent::Register { .. } => Err(DomainError::AlreadyRegistered { what: "organization" }),
        Intent::AddTenant(tenant) => {
            check_name("name", &tenant.name)?;
            if org.has_tenant(tenant.tenant_id) {
                return Err(DomainError::AlreadyRegistered { what: "tenant" });
            }
            Ok(KeyWork::None)
        }
        Intent::RemoveTenant(tenant_id) => match org.has_tenant(*tenant_id) {
            true => Ok(KeyWork::None),
            false => Err(DomainError::TenantNotFound),
        },
        Intent::ChangePlan { reason, .. } => check_reason("reason", reason).map(|()| KeyWork::None),
        Intent::TestConnection(connection) | Intent::EnableCustomerManagedKey(connection) => {
            let enable = matches!(intent, Intent::EnableCustomerManagedKey(_));
            if enable && org.customer_key().is_some() {
                return Err(DomainError::CmkAlreadyEnabled);
            }
            if !org.plan.allows_customer_managed_key() {
                return Err(DomainError::PlanNotEligible {
                    plan: org.plan.kind().to_string(),
                });
            }
            let connection = connection.clone();
            Ok(match enable {
                true => KeyWork::TestAndWrapNew { connection },
                false => KeyWork::Test { connection },
            })
        }
        Intent::EditCustomerManagedKey(patch) | Intent::RotateCustomerManagedKey(patch) => {
            let key = usable_key(org)?;
            let from = open_connection(key)?;
            if let (Intent::RotateCustomerManagedKey(_), Some(new)) = (intent, &patch.key_identifier) {
                // Before any vault call; `decide` refuses a key that the test pins to this one.
                refuse_same_key(new, key.key())?;
            }
            Ok(KeyWork::TestAndRewrap {
                connection: patch.apply_to(&from),
                edeks: open_edeks(org, key.key())?,
                from,
            })
        }
        Intent::SwitchToProviderManagedKey { abandon_lost_data } => {
            let key = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
            match (key.data_lost, abandon_lost_data) {
                (true, false) => Err(DomainError::DataLost),
                (false, true) => Err(DomainError::invalid(
                    "abandon_lost_data",
                    "only allowed after customer data was declared lost",
                )),
                // Every DEK under the lost key is lost; nothing is left to re-wrap.
                (true, true) => Ok(KeyWork::RewrapToProvider {
                    from: None,
                    new_dek: org.next_dek_id(),
                }),
                (false, false) => Ok(KeyWork::RewrapToProvider {
                    from: Some((open_connection(key)?, open_edeks(org, key.key())?)),
                    new_dek: org.next_dek_id(),
                }),
            }
        }
        Intent::DeclareDataLost { reason, ticket } => {
            let key = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
            if key.data_lost {
                return Err(DomainError::DataLost);
            }
            support_needs_ticket(actor, ticket)?;
            check_reason("reason", reason)?;
            if let Some(t) = ticket {
                check_reason("ticket", t)?;
            }
            if key.health.status == HealthStatus::KeyDeleted {
                // Still recoverable: nothing is lost while the vault can bring the key back.
                let until = key.health.recoverable_until.map_or_else(
                    || "its scheduled purge".to_owned(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
                return Err(DomainError::invalid(
                    "reason",
                    format!(
                        "the key is soft-deleted and can be recovered in the vault until {until}; \
                         data loss can only be declared while the key health is key_not_found"
                    ),
                ));
            }
            if key.health.status != HealthStatus::KeyNotFound {
                return Err(DomainError::invalid(
                    "reason",
                    "data loss can only be declared while the key health is key_not_found",
                ));
            }
            Ok(KeyWork::None)
        }
        Intent::RecordKeyHealth { .. } | Intent::RecordKeyDeleted { .. } | Intent::ProbeKeyHealth => {
            org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
            Ok(KeyWork::None)
        }
    }
}

/// R7: a rotation must go to another key version.
fn refuse_same_key(new: &KeyIdentifier, current: &KeyIdentifier) -> Result<(), DomainError> {
    match new.same_key_version(current) {
        true => Err(DomainError::SameKey),
        false => Ok(()),
    }
}

/// R5, R8, R11: the customer key may be edited or rotated.
fn usable_key(org: &Organization) -> Result<&CustomerKey, DomainError> {
    let key = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
    if key.data_lost {
        return Err(DomainError::DataLost);
    }
    if key.locked {
        return Err(DomainError::CmkLockedByPlan);
    }
    Ok(key)
}

/// The connection in use, with its secret open.
fn open_connection(key: &CustomerKey) -> Result<Connection, DomainError> {
    key.connection
        .to_connection()
        .ok_or(DomainError::NotOpen("the client secret of the connection in use"))
}

/// The EDEKs of the DEKs under `key`, opened.
fn open_edeks(org: &Organization, key: &KeyIdentifier) -> Result<Edeks, DomainError> {
    org.deks_under(key)
        .into_iter()
        .map(|id| match &org.data_keys[&id].edek {
            Protected::Open(edek) => Ok((id, edek.clone())),
            _ => Err(DomainError::NotOpen("an EDEK of the organization")),
        })
        .collect()
}

/// Decides which events a command produces. Pure and synchronous: [`plan`] passed it on
/// `state`, and `done` holds the results of the key work it asked for, as attested values.
/// What remains to refuse here is what only those results show.
pub fn decide(state: &State, command: Command, done: KeyResults) -> Result<Vec<Event>, DomainError> {
    let Command {
        org_id, at, intent, ..
    } = command;
    let Some(org) = &state.org else {
        return match (intent, done) {
            (Intent::Register { name, plan, tenants }, KeyResults::ProviderWrapped { dek }) => {
                register(org_id, name, plan, tenants, dek, at)
            }
            _ => Err(DomainError::OrganizationNotFound),
        };
    };
    match (intent, done) {
        (Intent::AddTenant(tenant), KeyResults::None) => Ok(vec![Event::TenantAdded(TenantAdded {
            tenant_id: tenant.tenant_id,
            name: tenant.name,
        })]),
        (Intent::RemoveTenant(tenant_id), KeyResults::None) => {
            Ok(vec![Event::TenantRemoved(TenantRemoved { tenant_id })])
        }
        (Intent::ChangePlan { plan, reason }, KeyResults::None) => change_plan(org, plan, reason),
        (Intent::EnableCustomerManagedKey(_), KeyResults::TestedAndWrapped { key, dek }) => {
            enable(org, key, dek, at)
        }
        (Intent::EditCustomerManagedKey(_), KeyResults::TestedAndRewrapped { key, rewrap }) => {
            let current = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
            if key.key().same_key_version(current.key()) {
                return edit(current, key);
            }
            // R6: changing the key through "Edit connection" is a rotation.
            let evidence = rewrap.ok_or(DomainError::EvidenceMismatch(
                "the key changed but no rotation evidence was given",
            ))?;
            rotate(org, current, key, evidence)
        }
        (Intent::RotateCustomerManagedKey(_), KeyResults::TestedAndRewrapped { key, rewrap }) => {
            let current = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
            refuse_same_key(key.key(), current.key())?;
            let evidence = rewrap.ok_or(DomainError::EvidenceMismatch("a rotation needs an unwrap proof"))?;
            rotate(org, current, key, evidence)
        }
        (
            Intent::SwitchToProviderManagedKey { abandon_lost_data },
            KeyResults::SwitchedToProvider { rewrap, new_dek },
        ) => switch_to_provider(org, rewrap, new_dek, abandon_lost_data, at),
        (Intent::DeclareDataLost { reason, ticket }, KeyResults::None) => {
            declare_lost(org, reason, ticket, at)
        }
        (Intent::RecordKeyHealth { status, detail }, KeyResults::None) => {
            record_health(org, status, detail, None, at)
        }
        (
            Intent::RecordKeyDeleted {
                recoverable_until,
                detail,
            },
            KeyResults::None,
        ) => record_health(org, HealthStatus::KeyDeleted, detail, Some(recoverable_until), at),
        (Intent::Register { .. }, _) => Err(DomainError::AlreadyRegistered { what: "organization" }),
        (Intent::TestConnection(_) | Intent::ProbeKeyHealth, _) => {
            Err(DomainError::EvidenceMismatch("a test or probe records nothing"))
        }
        _ => Err(DomainError::EvidenceMismatch(
            "the key results are not those the command's key work gives",
        )),
    }
}

fn check_register(name: &str, tenants: &[Tenant]) -> Result<(), DomainError> {
    check_name("name", name)?;
    let mut seen = BTreeSet::new();
    for t in tenants {
        check_name("tenants.name", &t.name)?;
        if !seen.insert(t.tenant_id) {
            return Err(DomainError::invalid(
                "tenants",
                format!("tenant {} is listed twice", t.tenant_id),
            ));
        }
    }
    Ok(())
}

fn check_name(field: &'static str, name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must be 1 to 200 printable characters",
        ));
    }
    Ok(())
}

fn check_reason(field: &'static str, text: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() || text.chars().count() > 1000 {
        return Err(DomainError::invalid(field, "must be 1 to 1000 characters"));
    }
    Ok(())
}

fn register(
    org_id: OrgId,
    name: String,
    plan: Plan,
    tenants: Vec<Tenant>,
    initial_dek: WrappedDek,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Event>, DomainError> {
    let (wrapped_by, edek) = initial_dek.into_parts();
    if !matches!(wrapped_by, WrappedBy::Provider { .. }) {
        return Err(DomainError::EvidenceMismatch(
            "the first DEK must be wrapped by the internal key",
        ));
    }
    Ok(vec![
        Event::OrganizationRegistered(OrganizationRegistered {
            org_id,
            name,
            plan,
            tenants,
            registered_at: at,
        }),
        Event::DataKeyGenerated(DataKeyGenerated {
            dek_id: DekId::FIRST,
            wrapped_by,
            edek: Protected::Open(edek),
            generated_at: at,
        }),
    ])
}

/// R8: a downgrade locks an enabled customer key, an upgrade unlocks it.
fn change_plan(org: &Organization, plan: Plan, reason: String) -> Result<Vec<Event>, DomainError> {
    if plan == org.plan {
        return Ok(vec![]);
    }
    let mut events = vec![Event::PlanChanged(PlanChanged {
        from: org.plan.clone(),
        to: plan.clone(),
        reason,
    })];
    if let Some(key) = org.customer_key() {
        let eligible = plan.allows_customer_managed_key();
        if !eligible && !key.locked {
            events.push(Event::CustomerManagedKeyLocked(CustomerManagedKeyLocked {
                reason: LockReason::PlanDowngraded,
            }));
        } else if eligible && key.locked {
            events.push(Event::CustomerManagedKeyUnlocked(CustomerManagedKeyUnlocked {}));
        }
    }
    Ok(events)
}

/// R4, R5: "Test and save".
fn enable(
    org: &Organization,
    key: ValidatedKey,
    dek: WrappedDek,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Event>, DomainError> {
    let (wrapped_by, edek) = dek.into_parts();
    if !wrapped_by.is_customer(key.key()) {
        return Err(DomainError::EvidenceMismatch(
            "the new DEK is not wrapped by the validated key",
        ));
    }
    Ok(vec![
        Event::CustomerManagedKeyEnabled(CustomerManagedKeyEnabled {
            connection: ConnectionRecord::from(key.connection()),
            key: key.properties().clone(),
            validated_at: key.validated_at(),
        }),
        Event::DataKeyGenerated(DataKeyGenerated {
            dek_id: org.next_dek_id(),
            wrapped_by,
            edek: Protected::Open(edek),
            generated_at: at,
        }),
    ])
}

/// R6 with the same key: the new connection passed R4 against it.
fn edit(current: &CustomerKey, key: ValidatedKey) -> Result<Vec<Event>, DomainError> {
    let Some(old) = current.connection.to_connection() else {
        return Err(DomainError::EvidenceMismatch(
            "the current client secret is not open",
        ));
    };
    let changed: Vec<ConnectionField> = key
        .connection()
        .changed_fields(&old)
        .into_iter()
        .filter(|f| *f != ConnectionField::KeyIdentifier)
        .collect();
    if changed.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![Event::CustomerManagedKeyConnectionEdited(
        CustomerManagedKeyConnectionEdited {
            client_secret_changed: changed.contains(&ConnectionField::ClientSecret),
            changed_fields: changed,
            connection: ConnectionRecord::from(key.connection()),
            validated_at: key.validated_at(),
        },
    )])
}

/// Checks that `evidence` unwrapped exactly the DEKs under `from` and re-wrapped each under
/// `to`, and returns them in DEK order.
fn check_rewrap(
    org: &Organization,
    from: &KeyIdentifier,
    to: &WrappedBy,
    evidence: RewrapEvidence,
) -> Result<Vec<RewrappedDataKey>, DomainError> {
    let expected: BTreeSet<DekId> = org.deks_under(from).into_iter().collect();
    if !evidence.unwrapped.key().same_key_version(from) || *evidence.unwrapped.dek_ids() != expected {
        return Err(DomainError::EvidenceMismatch(
            "the unwrap proof does not cover the DEKs under the key",
        ));
    }
    let rewrapped_ids: BTreeSet<DekId> = evidence.rewrapped.iter().map(|(id, _)| *id).collect();
    if rewrapped_ids != expected || evidence.rewrapped.len() != expected.len() {
        return Err(DomainError::EvidenceMismatch(
            "the re-wrapped DEKs are not the DEKs under the key",
        ));
    }
    let mut out = Vec::with_capacity(expected.len());
    let mut rewrapped = evidence.rewrapped;
    rewrapped.sort_by_key(|(id, _)| *id);
    for (dek_id, wrapped) in rewrapped {
        let (by, edek) = wrapped.into_parts();
        if by != *to {
            return Err(DomainError::EvidenceMismatch(
                "a DEK was re-wrapped by another key",
            ));
        }
        out.push(RewrappedDataKey {
            dek_id,
            edek: Protected::Open(edek),
        });
    }
    Ok(out)
}

/// R7: both keys valid. The old one is proven by the unwrap proof, the new one by the
/// validated key.
fn rotate(
    org: &Organization,
    current: &CustomerKey,
    key: ValidatedKey,
    evidence: RewrapEvidence,
) -> Result<Vec<Event>, DomainError> {
    let to = WrappedBy::Customer {
        key_identifier: key.key().clone(),
    };
    let data_keys = check_rewrap(org, current.key(), &to, evidence)?;
    let old = current
        .connection
        .to_connection()
        .ok_or(DomainError::EvidenceMismatch(
            "the current client secret is not open",
        ))?;
    let changed = key.connection().changed_fields(&old);
    let mut events = vec![Event::CustomerManagedKeyRotated(CustomerManagedKeyRotated {
        from_key: current.key().clone(),
        to_key: key.key().clone(),
        client_secret_changed: changed.contains(&ConnectionField::ClientSecret),
        changed_fields: changed,
        connection: ConnectionRecord::from(key.connection()),
        key: key.properties().clone(),
        rewrapped_dek_ids: data_keys.iter().map(|d| d.dek_id).collect(),
        validated_at: key.validated_at(),
    })];
    if !data_keys.is_empty() {
        events.push(Event::DataKeysRewrapped(DataKeysRewrapped {
            wrapped_by: to,
            data_keys,
        }));
    }
    Ok(events)
}

/// R9, and R11's way out after a data-loss declaration.
fn switch_to_provider(
    org: &Organization,
    evidence: Option<RewrapEvidence>,
    new_dek: WrappedDek,
    abandon_lost_data: bool,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Event>, DomainError> {
    let current = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
    let (new_by, new_edek) = new_dek.into_parts();
    let WrappedBy::Provider { .. } = &new_by else {
        return Err(DomainError::EvidenceMismatch(
            "the new DEK must be wrapped by the internal key",
        ));
    };
    let rewrapped = match (evidence, abandon_lost_data) {
        (Some(evidence), false) => check_rewrap(org, current.key(), &new_by, evidence)?,
        (None, true) => Vec::new(),
        _ => {
            return Err(DomainError::EvidenceMismatch(
                "switching needs an unwrap proof unless the data is abandoned",
            ));
        }
    };
    let mut events = vec![Event::SwitchedToProviderManagedKey(
        SwitchedToProviderManagedKey {
            previous_key: current.key().clone(),
            abandoned_lost_data: abandon_lost_data,
            switched_at: at,
        },
    )];
    if !rewrapped.is_empty() {
        events.push(Event::DataKeysRewrapped(DataKeysRewrapped {
            wrapped_by: new_by.clone(),
            data_keys: rewrapped,
        }));
    }
    events.push(Event::DataKeyGenerated(DataKeyGenerated {
        dek_id: org.next_dek_id(),
        wrapped_by: new_by,
        edek: Protected::Open(new_edek),
        generated_at: at,
    }));
    Ok(events)
}

/// R10: a change of status is recorded, a repeat is not. A soft-deleted key (`key_deleted`)
/// also records a new purge date (deleted again between two probes) and each purge reminder
/// once, when the purge comes within 7 days and within 1 day ([`PurgeReminder`]); what was
/// reminded is folded from the events ([`crate::state::KeyHealth::purge_reminder`]).
fn record_health(
    org: &Organization,
    status: HealthStatus,
    detail: Option<String>,
    recoverable_until: Option<chrono::DateTime<chrono::Utc>>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Event>, DomainError> {
    let current = &org.customer_key().ok_or(DomainError::CmkNotEnabled)?.health;
    let recoverable_until = recoverable_until.filter(|_| status == HealthStatus::KeyDeleted);
    let due = recoverable_until.and_then(|until| PurgeReminder::due(at, until));
    let changed = |purge_reminder: Option<PurgeReminder>, detail: Option<String>| {
        Ok(vec![Event::KeyHealthChanged(KeyHealthChanged {
            from: current.status,
            to: status,
            detail,
            recoverable_until,
            purge_reminder,
            observed_at: at,
        })])
    };
    if current.status != status {
        return changed(due, detail);
    }
    if status != HealthStatus::KeyDeleted {
        return Ok(vec![]);
    }
    if current.recoverable_until != recoverable_until {
        // Recovered and deleted again between two probes: another deletion, another date.
        return changed(due, detail);
    }
    match (recoverable_until, due) {
        (Some(until), Some(due)) if current.purge_reminder.is_none_or(|done| done < due) => {
            let reminder = format!(
                "purge reminder {due}: the vault purges the key at {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            changed(Some(due), Some(reminder))
        }
        _ => Ok(vec![]),
    }
}

/// R11: only after the key is reported missing; irreversible.
fn declare_lost(
    org: &Organization,
    reason: String,
    ticket: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Event>, DomainError> {
    let current = org.customer_key().ok_or(DomainError::CmkNotEnabled)?;
    Ok(vec![Event::CustomerDataDeclaredLost(CustomerDataDeclaredLost {
        key_identifier: current.key().clone(),
        lost_dek_ids: org.deks_under(current.key()),
        reason,
        ticket,
        declared_at: at,
    })])
}

/// R11: support must cite a ticket. Checked here because it depends on the actor's role.
fn support_needs_ticket(actor: &Actor, ticket: &Option<String>) -> Result<(), DomainError> {
    if !actor.has_role(Role::OrgAdmin) && actor.has_role(Role::Support) && ticket.is_none() {
        return Err(DomainError::invalid(
            "ticket",
            "support must give a ticket reference",
        ));
    }
    Ok(())
}
