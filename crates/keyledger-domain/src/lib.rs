//! The pure domain of keyledger: the encryption state of an organization as events.
//!
//! - [`plan`] checks a [`Command`] against the rules (R1–R13 of DESIGN.md §2) and says which
//!   key work it needs ([`KeyWork`]);
//! - [`decide`] turns the command and that work's results ([`KeyResults`]) into events, or a
//!   [`DomainError`];
//! - [`evolve`] folds events into a [`State`];
//! - [`plan_release`] checks a platform service's request for a DEK ([`Release`]);
//! - key-test results enter commands as attested values ([`ValidatedKey`], [`UnwrapProof`],
//!   [`WrappedDek`]) that only the key-access port can make.
//!
//! No IO, no async, no clock: time comes in with each command.

pub mod actor;
pub mod attest;
pub mod audit;
pub mod command;
pub mod connection;
pub mod decide;
pub mod event;
pub mod health;
pub mod ids;
pub mod key_identifier;
pub mod plan;
pub mod release;
pub mod schema;
pub mod secret;
pub mod state;
mod upcast;

#[cfg(feature = "testing")]
pub mod testing;

pub use actor::{Actor, ActorKind, Reach, Role, Scope};
pub use attest::{KeyProperties, UnwrapProof, ValidatedKey, WrappedBy, WrappedDek};
pub use audit::{AuditCheckpointSigned, BadRootHash, RootHash};
pub use command::{Command, ConnectionPatch, Edeks, Intent, KeyResults, KeyWork, RewrapEvidence};
pub use connection::{Connection, ConnectionField, ConnectionRecord};
pub use decide::{
    CrossRead, DomainError, Read, ReadScope, authorize_cross_read, authorize_read, decide, plan,
};
pub use event::{DecodeError, EVENT_TYPES, Event, ProtectedField, Tenant};
pub use health::{HealthStatus, PurgeReminder};
pub use ids::{
    ApplicationId, AuditLog, CommandId, CorrelationId, DekId, DirectoryId, EventId, GlobalPosition, IdError,
    OrgId, StreamId, StreamKind, StreamVersion, TenantId,
};
pub use key_identifier::{HostAllowList, KeyIdentifier, KeyIdentifierError};
pub use plan::{Plan, PlanError, PlanKind};
pub use release::{Release, ReleaseOf, Unwrap, plan_release};
pub use secret::{AadScheme, Edek, Protected, ProtectedSlot, SealedBox};
pub use state::{State, evolve};
