//! Commands: what an actor asks for ([`Intent`]), the vault work that needs ([`KeyWork`],
//! from [`plan`](crate::plan)), and what the vault said ([`KeyResults`], built only from
//! attested values).

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::actor::Actor;
use crate::attest::{UnwrapProof, ValidatedKey, WrappedDek};
use crate::connection::Connection;
use crate::event::Tenant;
use crate::health::HealthStatus;
use crate::ids::{ApplicationId, DekId, DirectoryId, OrgId, TenantId};
use crate::key_identifier::KeyIdentifier;
use crate::plan::Plan;
use crate::secret::Edek;

/// A command: on which organization, who, when, what.
#[derive(Debug, Clone)]
pub struct Command {
    /// The organization (and so the stream `org-<id>`) the command is for.
    pub org_id: OrgId,
    pub actor: Actor,
    /// The command's time; it becomes the events' time. The domain has no clock.
    pub at: DateTime<Utc>,
    pub intent: Intent,
}

/// What an actor asks for: the one command vocabulary of keyledger.
#[derive(Debug, Clone)]
pub enum Intent {
    /// R1.
    Register {
        name: String,
        plan: Plan,
        tenants: Vec<Tenant>,
    },
    AddTenant(Tenant),
    RemoveTenant(TenantId),
    /// R8, from billing.
    ChangePlan {
        plan: Plan,
        reason: String,
    },
    /// R4 "Test" without "save": a dry run that records nothing.
    TestConnection(Connection),
    /// R4, R5 "Test and save".
    EnableCustomerManagedKey(Connection),
    /// R6 "Edit connection": a changed key is a rotation.
    EditCustomerManagedKey(ConnectionPatch),
    /// R7: rotation to `key_identifier`, optionally with new credentials.
    RotateCustomerManagedKey(ConnectionPatch),
    /// R9, or R11 with `abandon_lost_data` after a declaration.
    SwitchToProviderManagedKey {
        abandon_lost_data: bool,
    },
    /// R11.
    DeclareDataLost {
        reason: String,
        ticket: Option<String>,
    },
    /// R10, from the health monitor (actor `system`).
    RecordKeyHealth {
        status: HealthStatus,
        detail: Option<String>,
    },
    /// R10, from the health monitor (actor `system`): the key is soft-deleted and the vault
    /// purges it at `recoverable_until`. Records `key_deleted`, a new purge date, or a purge
    /// reminder when one is due ([`PurgeReminder`](crate::PurgeReminder)); nothing otherwise.
    RecordKeyDeleted {
        recoverable_until: DateTime<Utc>,
        detail: Option<String>,
    },
    /// R10: a person asks for a health probe now. Records nothing itself.
    ProbeKeyHealth,
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

/// EDEKs in the clear of the seal (still wrapped by their key), with their ids.
pub type Edeks = Vec<(DekId, Edek)>;

/// The vault (and internal key ring) work a command needs before [`decide`](crate::decide)
/// can run. Made by [`plan`](crate::plan); carried out by the application, which answers with
/// the matching [`KeyResults`].
#[derive(Debug, Clone)]
pub enum KeyWork {
    /// Nothing: the command needs no key.
    None,
    /// Generate DEK `dek_id` and wrap it with the internal key (R1). Answer: `ProviderWrapped`.
    ProviderWrapNew { dek_id: DekId },
    /// Test `connection` (R4) and report; nothing is recorded. Answer: none, a test report.
    Test { connection: Connection },
    /// Test `connection` (R4), then generate a DEK and wrap it with the validated key (R5).
    /// Answer: `TestedAndWrapped`.
    TestAndWrapNew { connection: Connection },
    /// Test `connection` (R4); if the validated key is not the key of `from`, unwrap `edeks`
    /// with `from` and wrap each with the validated key (R6, R7). Answer: `TestedAndRewrapped`.
    TestAndRewrap {
        connection: Connection,
        from: Connection,
        edeks: Edeks,
    },
    /// Unwrap `edeks` with `from` (unless `None`: the data under it is lost) and wrap each with
    /// the internal key, then generate DEK `new_dek` wrapped with the internal key (R9, R11).
    /// Answer: `SwitchedToProvider`.
    RewrapToProvider {
        from: Option<(Connection, Edeks)>,
        new_dek: DekId,
    },
}

/// Evidence for re-wrapping DEKs: every DEK unwrapped with the key it was under, and the new
/// wraps.
#[derive(Debug, Clone)]
pub struct RewrapEvidence {
    pub unwrapped: UnwrapProof,
    pub rewrapped: Vec<(DekId, WrappedDek)>,
}

/// The results of a [`KeyWork`], for [`decide`](crate::decide). Every value in it is attested
/// ([`ValidatedKey`], [`WrappedDek`], [`UnwrapProof`]): only the key-access port and the
/// internal key ring make them, so the domain cannot forge a key test.
#[derive(Debug, Clone)]
pub enum KeyResults {
    /// For [`KeyWork::None`].
    None,
    /// For [`KeyWork::ProviderWrapNew`].
    ProviderWrapped { dek: WrappedDek },
    /// For [`KeyWork::TestAndWrapNew`].
    TestedAndWrapped { key: ValidatedKey, dek: WrappedDek },
    /// For [`KeyWork::TestAndRewrap`]: `rewrap` is `None` when the validated key is the key in
    /// use (nothing to re-wrap).
    TestedAndRewrapped {
        key: ValidatedKey,
        rewrap: Option<RewrapEvidence>,
    },
    /// For [`KeyWork::RewrapToProvider`].
    SwitchedToProvider {
        rewrap: Option<RewrapEvidence>,
        new_dek: WrappedDek,
    },
}
