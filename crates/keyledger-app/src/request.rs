//! Requests to the application service and their outcomes.

use keyledger_domain::{
    Actor, CommandId, CorrelationId, GlobalPosition, Intent, OrgId, StreamVersion, ValidatedKey,
};
use keyledger_keys::{Check, KeyAccessError};
use keyledger_projection::OrganizationView;

/// One request: which organization, who, and the idempotency and concurrency guards.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub org_id: OrgId,
    pub actor: Actor,
    /// The client address, recorded in the envelope.
    pub source_ip: Option<String>,
    /// `Idempotency-Key`: a repeat appends nothing.
    pub command_id: Option<CommandId>,
    pub correlation_id: Option<CorrelationId>,
    /// `If-Match`: the version the caller decided on.
    pub if_match: Option<StreamVersion>,
    pub intent: Intent,
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
