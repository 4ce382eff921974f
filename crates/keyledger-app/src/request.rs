//! Requests to the application service and their outcomes.

use keyledger_domain::{
    Actor, ApplicationId, CommandId, Connection, CorrelationId, DirectoryId, GlobalPosition, HealthStatus,
    KeyIdentifier, OrgId, Plan, StreamVersion, Tenant, TenantId, ValidatedKey,
};
use keyledger_keys::{Check, KeyAccessError};
use keyledger_projection::OrganizationView;
use secrecy::SecretString;

/// One request: which organization, who, and the idempotency and concurrency guards.
#[derive(Debug, Clone)]
pub struct Request {
    pub org_id: OrgId,
    pub actor: Actor,
    /// The client address, recorded in the envelope.
    pub source_ip: Option<String>,
    /// `Idempotency-Key`: a repeat appends nothing.
    pub command_id: Option<CommandId>,
    pub correlation_id: Option<CorrelationId>,
    /// `If-Match`: the version the caller decided on.
    pub if_match: Option<StreamVersion>,
    pub action: Action,
}

/// Fields of a connection to change; the rest stay as they are.
#[derive(Debug, Clone, Default)]
pub struct ConnectionPatch {
    pub directory_id: Option<DirectoryId>,
    pub application_id: Option<ApplicationId>,
    pub client_secret: Option<SecretString>,
    pub key_identifier: Option<KeyIdentifier>,
}

impl ConnectionPatch {
    pub fn apply_to(&self, base: &Connection) -> Connection {
        Connection {
            directory_id: self.directory_id.unwrap_or(base.directory_id),
            application_id: self.application_id.unwrap_or(base.application_id),
            client_secret: self
                .client_secret
                .clone()
                .unwrap_or_else(|| base.client_secret.clone()),
            key_identifier: self
                .key_identifier
                .clone()
                .unwrap_or_else(|| base.key_identifier.clone()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Register {
        name: String,
        plan: Plan,
        tenants: Vec<Tenant>,
    },
    AddTenant(Tenant),
    RemoveTenant(TenantId),
    ChangePlan {
        plan: Plan,
        reason: String,
    },
    /// "Test and save".
    EnableCustomerManagedKey(Connection),
    /// "Edit connection": a changed key is a rotation.
    EditCustomerManagedKey(ConnectionPatch),
    /// Rotation to `key_identifier`, optionally with new credentials.
    RotateCustomerManagedKey(ConnectionPatch),
    SwitchToProviderManagedKey {
        abandon_lost_data: bool,
    },
    DeclareDataLost {
        reason: String,
        ticket: Option<String>,
    },
    /// From the health monitor (actor `system`).
    RecordKeyHealth {
        status: HealthStatus,
        detail: Option<String>,
    },
}

/// What an accepted request did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The organization after the command, folded from its events.
    pub view: OrganizationView,
    /// How many events were appended (0 for a no-op or an idempotent repeat).
    pub appended: usize,
    /// The global position of the last appended event.
    pub position: Option<GlobalPosition>,
}

/// The result of a dry-run connection test ("Test" without "save").
#[derive(Debug)]
pub struct TestReport {
    pub checks: Vec<Check>,
    pub outcome: Result<ValidatedKey, KeyAccessError>,
}
