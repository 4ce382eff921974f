//! Commands: what an actor asks for, with any key-test results already attached as attested
//! values.

use chrono::{DateTime, Utc};

use crate::actor::Actor;
use crate::attest::{UnwrapProof, ValidatedKey, WrappedDek};
use crate::event::Tenant;
use crate::health::HealthStatus;
use crate::ids::{DekId, OrgId, TenantId};
use crate::plan::Plan;

/// A command: on which organization, who, when, what.
#[derive(Debug, Clone)]
pub struct Command {
    /// The organization (and so the stream `org-<id>`) the command is for.
    pub org_id: OrgId,
    pub actor: Actor,
    /// The command's time; it becomes the events' time. The domain has no clock.
    pub at: DateTime<Utc>,
    pub kind: CommandKind,
}

/// Evidence for re-wrapping DEKs: every DEK unwrapped with the key it was under, and the new
/// wraps.
#[derive(Debug, Clone)]
pub struct RewrapEvidence {
    pub unwrapped: UnwrapProof,
    pub rewrapped: Vec<(DekId, WrappedDek)>,
}

#[derive(Debug, Clone)]
pub enum CommandKind {
    /// R1. `initial_dek` is DEK 1, wrapped by the internal key.
    RegisterOrganization {
        name: String,
        plan: Plan,
        tenants: Vec<Tenant>,
        initial_dek: WrappedDek,
    },
    AddTenant {
        tenant: Tenant,
    },
    RemoveTenant {
        tenant_id: TenantId,
    },
    /// R8, from billing.
    ChangePlan {
        plan: Plan,
        reason: String,
    },
    /// R4 "Test and save": `key` passed the live test, `dek` is a new DEK wrapped by it.
    EnableCustomerManagedKey {
        key: ValidatedKey,
        dek: WrappedDek,
    },
    /// R6. When the validated key differs from the current one, this is a rotation and
    /// `rotation` must hold the R7 evidence.
    EditConnection {
        key: ValidatedKey,
        rotation: Option<RewrapEvidence>,
    },
    /// R7.
    RotateKey {
        key: ValidatedKey,
        evidence: RewrapEvidence,
    },
    /// R9, or R11 with `abandon_lost_data` after a declaration (then `evidence` is `None`).
    SwitchToProviderManagedKey {
        evidence: Option<RewrapEvidence>,
        new_dek: WrappedDek,
        abandon_lost_data: bool,
    },
    /// R11.
    DeclareDataLost {
        reason: String,
        ticket: Option<String>,
    },
    /// R10, from the health monitor.
    RecordKeyHealth {
        status: HealthStatus,
        detail: Option<String>,
    },
}

/// The name of a command, for authorization and pre-checks before key tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandName {
    RegisterOrganization,
    AddTenant,
    RemoveTenant,
    ChangePlan,
    TestConnection,
    EnableCustomerManagedKey,
    EditConnection,
    RotateKey,
    SwitchToProviderManagedKey,
    DeclareDataLost,
    RecordKeyHealth,
    ProbeKeyHealth,
}

impl CommandKind {
    pub fn name(&self) -> CommandName {
        match self {
            CommandKind::RegisterOrganization { .. } => CommandName::RegisterOrganization,
            CommandKind::AddTenant { .. } => CommandName::AddTenant,
            CommandKind::RemoveTenant { .. } => CommandName::RemoveTenant,
            CommandKind::ChangePlan { .. } => CommandName::ChangePlan,
            CommandKind::EnableCustomerManagedKey { .. } => CommandName::EnableCustomerManagedKey,
            CommandKind::EditConnection { .. } => CommandName::EditConnection,
            CommandKind::RotateKey { .. } => CommandName::RotateKey,
            CommandKind::SwitchToProviderManagedKey { .. } => CommandName::SwitchToProviderManagedKey,
            CommandKind::DeclareDataLost { .. } => CommandName::DeclareDataLost,
            CommandKind::RecordKeyHealth { .. } => CommandName::RecordKeyHealth,
        }
    }
}
