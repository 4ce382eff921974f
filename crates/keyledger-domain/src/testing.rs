//! Test support (feature `testing`): a typestate given/when/then harness over `decide` and
//! `evolve`, and fixtures for actors, keys, connections and attested values.
//!
//! ```
//! use keyledger_domain::testing::*;
//! use keyledger_domain::Plan;
//!
//! given(History::new().register(Plan::enterprise("standard")).events())
//!     .when(cmd(admin(), enable_kind(&key_a())))
//!     .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"]);
//! ```

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::actor::{Actor, ActorKind, Reach, Role, Scope};
use crate::attest::{KeyProperties, UnwrapProof, ValidatedKey, WrappedBy, WrappedDek};
use crate::command::{Command, ConnectionPatch, Intent, KeyResults, RewrapEvidence};
use crate::connection::Connection;
use crate::decide::{DomainError, decide, plan};
use crate::event::{Event, Tenant};
use crate::health::HealthStatus;
use crate::ids::{ApplicationId, DirectoryId, OrgId, TenantId};
use crate::key_identifier::KeyIdentifier;
use crate::plan::Plan;
use crate::secret::Edek;
use crate::state::{State, evolve};

// ---------------------------------------------------------------------------------------------
// The harness

/// Starts a scenario from a history of events.
pub fn given(events: impl IntoIterator<Item = Event>) -> Given {
    let events: Vec<Event> = events.into_iter().collect();
    let state = events.iter().fold(State::default(), evolve);
    Given { state }
}

/// A state folded from the given events.
#[derive(Debug)]
pub struct Given {
    state: State,
}

impl Given {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The command under test. `build` sees the given state, so evidence can be derived
    /// from it.
    pub fn when(self, command: ScriptedCommand) -> When {
        let result = decide_scripted(&self.state, command);
        When {
            state: self.state,
            result,
        }
    }

    pub fn when_with(self, build: impl FnOnce(&State) -> ScriptedCommand) -> When {
        let command = build(&self.state);
        self.when(command)
    }
}

/// The outcome of `decide`, waiting for its assertions.
#[derive(Debug)]
pub struct When {
    state: State,
    result: Result<Vec<Event>, DomainError>,
}

impl When {
    /// The emitted events equal `expected` (compared in redacted JSON form).
    #[track_caller]
    pub fn then(self, expected: &[Event]) -> Then {
        let events = self.expect_ok();
        let got: Vec<Value> = events.iter().map(render).collect();
        let want: Vec<Value> = expected.iter().map(render).collect();
        assert_eq!(got, want, "emitted events differ");
        Then::new(self.state, events)
    }

    /// The emitted event types are exactly `types`, in order.
    #[track_caller]
    pub fn then_types(self, types: &[&str]) -> Then {
        let events = self.expect_ok();
        let got: Vec<&str> = events.iter().map(Event::event_type).collect();
        assert_eq!(got, types, "emitted event types differ");
        Then::new(self.state, events)
    }

    /// The command is accepted and records nothing (an idempotent no-op).
    #[track_caller]
    pub fn then_nothing(self) {
        let events = self.expect_ok();
        assert!(events.is_empty(), "expected no events, got {:?}", types(&events));
    }

    /// The command is refused with exactly `expected`.
    #[track_caller]
    pub fn then_err(self, expected: DomainError) {
        match self.result {
            Err(e) => assert_eq!(e, expected),
            Ok(events) => panic!("expected {expected:?}, got events {:?}", types(&events)),
        }
    }

    /// The command is refused with the given CONTRACT.md code.
    #[track_caller]
    pub fn then_err_code(self, code: &str) {
        match self.result {
            Err(e) => assert_eq!(e.code(), code, "refused with {e:?}"),
            Ok(events) => panic!("expected {code}, got events {:?}", types(&events)),
        }
    }

    #[track_caller]
    fn expect_ok(&self) -> Vec<Event> {
        match &self.result {
            Ok(events) => events.clone(),
            Err(e) => panic!("expected events, the command was refused: {e:?} ({e})"),
        }
    }
}

/// Accepted events, applied to the given state for further checks.
#[derive(Debug)]
pub struct Then {
    state: State,
    events: Vec<Event>,
}

impl Then {
    fn new(given: State, events: Vec<Event>) -> Self {
        let state = events.iter().fold(given, evolve);
        Self { state, events }
    }

    /// Checks the state after the events.
    #[track_caller]
    pub fn and_state(self, check: impl FnOnce(&State)) -> Self {
        check(&self.state);
        self
    }

    /// Checks the events themselves.
    #[track_caller]
    pub fn and_events(self, check: impl FnOnce(&[Event])) -> Self {
        check(&self.events);
        self
    }

    pub fn state(&self) -> &State {
        &self.state
    }
}

/// An event as `{"type", "payload"}` with protected fields redacted: the form used to compare
/// events and in replay fixtures.
pub fn render(e: &Event) -> Value {
    let payload = e
        .redacted()
        .payload_json()
        .unwrap_or_else(|err| json!({ "unserializable": err.to_string() }));
    json!({ "type": e.event_type(), "payload": payload })
}

fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::event_type).collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The organization of every scenario.
pub fn org_id() -> OrgId {
    uuid_id("01900000-0000-7000-8000-0000000000aa")
}
pub fn other_org_id() -> OrgId {
    uuid_id("01900000-0000-7000-8000-0000000000bb")
}
pub fn tenant_a() -> Tenant {
    Tenant {
        tenant_id: uuid_id("01900000-0000-7000-8000-00000000000a"),
        name: "Default".into(),
    }
}
pub fn tenant_b() -> Tenant {
    Tenant {
        tenant_id: uuid_id("01900000-0000-7000-8000-00000000000b"),
        name: "Finance".into(),
    }
}
pub fn tenant_id(n: u8) -> TenantId {
    uuid_id(&format!("01900000-0000-7000-8000-0000000001{n:02x}"))
}

#[track_caller]
fn uuid_id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("fixture id")
}

/// The time of the first command of a scenario.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0)
        .single()
        .expect("fixture time")
}
pub fn at_minutes(m: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(m)
}

fn org_scope(org: OrgId) -> Scope {
    Scope {
        organizations: Reach::Only(BTreeSet::from([org])),
        tenants: Reach::All,
    }
}

pub fn admin() -> Actor {
    Actor::new(
        ActorKind::User,
        "alice@example.com",
        [Role::OrgAdmin],
        org_scope(org_id()),
    )
}
/// An organization administrator scoped to every organization (multi-org tests).
pub fn admin_of_any_org() -> Actor {
    Actor::new(
        ActorKind::User,
        "alice@example.com",
        [Role::OrgAdmin],
        Scope::everything(),
    )
}
pub fn admin_of_other_org() -> Actor {
    Actor::new(
        ActorKind::User,
        "mallory@example.com",
        [Role::OrgAdmin],
        org_scope(other_org_id()),
    )
}
pub fn auditor() -> Actor {
    Actor::new(
        ActorKind::User,
        "audrey@example.com",
        [Role::Auditor],
        org_scope(org_id()),
    )
}
pub fn support() -> Actor {
    Actor::new(
        ActorKind::User,
        "sam@support.example.com",
        [Role::Support],
        Scope::everything(),
    )
}
pub fn platform() -> Actor {
    Actor::new(
        ActorKind::Service,
        "provisioning",
        [Role::Platform],
        Scope::everything(),
    )
}
pub fn billing() -> Actor {
    Actor::new(
        ActorKind::Service,
        "billing",
        [Role::Billing],
        Scope::everything(),
    )
}
pub fn system() -> Actor {
    Actor::system()
}

/// `https://contoso.vault.azure.net/keys/NAME/VERSION`.
pub fn key(name: &str, version: &str) -> KeyIdentifier {
    KeyIdentifier::parse_shape(&format!("https://contoso.vault.azure.net/keys/{name}/{version}"))
        .expect("fixture key")
}
pub fn key_a() -> KeyIdentifier {
    key("cmk", "0000000000000000000000000000000a")
}
pub fn key_b() -> KeyIdentifier {
    key("cmk", "0000000000000000000000000000000b")
}
pub fn key_c() -> KeyIdentifier {
    key("cmk-2027", "0000000000000000000000000000000c")
}

pub const FIXTURE_SECRET: &str = "fixture-client-secret";

pub fn connection(key: &KeyIdentifier) -> Connection {
    Connection {
        directory_id: uuid_id::<DirectoryId>("01900000-0000-7000-8000-0000000000d1"),
        application_id: uuid_id::<ApplicationId>("01900000-0000-7000-8000-0000000000a1"),
        client_secret: SecretString::from(FIXTURE_SECRET),
        key_identifier: key.clone(),
    }
}

pub fn properties() -> KeyProperties {
    KeyProperties {
        kty: "RSA".into(),
        key_size: 2048,
        key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
        expires_at: None,
        not_before: None,
    }
}

pub fn validated(connection: Connection, at: DateTime<Utc>) -> ValidatedKey {
    ValidatedKey::attest(connection, properties(), at).expect("fixture keys carry a version")
}

pub fn provider_dek() -> WrappedDek {
    WrappedDek::attest(
        WrappedBy::Provider {
            internal_key_id: "ik-1".into(),
        },
        Edek(vec![0xAA; 60]),
    )
}
pub fn customer_dek(key: &KeyIdentifier) -> WrappedDek {
    WrappedDek::attest(
        WrappedBy::Customer {
            key_identifier: key.clone(),
        },
        Edek(vec![0xCC; 256]),
    )
}

/// Evidence that every DEK under the state's current key unwrapped and was re-wrapped by `to`.
pub fn rewrap_all(state: &State, to: &WrappedBy) -> RewrapEvidence {
    let org = state.org().expect("registered");
    let current = org.customer_key().expect("customer key enabled");
    let ids = org.deks_under(current.key());
    RewrapEvidence {
        unwrapped: UnwrapProof::attest(current.key().clone(), ids.iter().copied().collect()),
        rewrapped: ids
            .into_iter()
            .map(|id| (id, WrappedDek::attest(to.clone(), Edek(vec![0xEE; 256]))))
            .collect(),
    }
}

/// A command whose key work is scripted: what it asks for and what the vault answered, in
/// one value (the shape tests write; the application gets the answers from the vault).
#[derive(Debug, Clone)]
pub enum Scripted {
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
    ChangePlan {
        plan: Plan,
        reason: String,
    },
    EnableCustomerManagedKey {
        key: ValidatedKey,
        dek: WrappedDek,
    },
    /// `rotation`: the re-wrap evidence, when the key changes.
    EditConnection {
        key: ValidatedKey,
        rotation: Option<RewrapEvidence>,
    },
    RotateKey {
        key: ValidatedKey,
        evidence: RewrapEvidence,
    },
    SwitchToProviderManagedKey {
        evidence: Option<RewrapEvidence>,
        new_dek: WrappedDek,
        abandon_lost_data: bool,
    },
    DeclareDataLost {
        reason: String,
        ticket: Option<String>,
    },
    RecordKeyHealth {
        status: HealthStatus,
        detail: Option<String>,
    },
    RecordKeyDeleted {
        recoverable_until: DateTime<Utc>,
        detail: Option<String>,
    },
}

impl Scripted {
    /// The intent, and the key results the script gives for it.
    pub fn split(self) -> (Intent, KeyResults) {
        let patch = |key: &ValidatedKey| {
            let c = key.connection();
            Intent::EditCustomerManagedKey(ConnectionPatch {
                directory_id: Some(c.directory_id),
                application_id: Some(c.application_id),
                client_secret: Some(c.client_secret.clone()),
                key_identifier: Some(c.key_identifier.clone()),
            })
        };
        match self {
            Scripted::RegisterOrganization {
                name,
                plan,
                tenants,
                initial_dek,
            } => (
                Intent::Register { name, plan, tenants },
                KeyResults::ProviderWrapped { dek: initial_dek },
            ),
            Scripted::AddTenant { tenant } => (Intent::AddTenant(tenant), KeyResults::None),
            Scripted::RemoveTenant { tenant_id } => (Intent::RemoveTenant(tenant_id), KeyResults::None),
            Scripted::ChangePlan { plan, reason } => (Intent::ChangePlan { plan, reason }, KeyResults::None),
            Scripted::EnableCustomerManagedKey { key, dek } => (
                Intent::EnableCustomerManagedKey(key.connection().clone()),
                KeyResults::TestedAndWrapped { key, dek },
            ),
            Scripted::EditConnection { key, rotation } => (
                patch(&key),
                KeyResults::TestedAndRewrapped {
                    key,
                    rewrap: rotation,
                },
            ),
            Scripted::RotateKey { key, evidence } => {
                let Intent::EditCustomerManagedKey(p) = patch(&key) else {
                    unreachable!("patch makes an edit")
                };
                (
                    Intent::RotateCustomerManagedKey(p),
                    KeyResults::TestedAndRewrapped {
                        key,
                        rewrap: Some(evidence),
                    },
                )
            }
            Scripted::SwitchToProviderManagedKey {
                evidence,
                new_dek,
                abandon_lost_data,
            } => (
                Intent::SwitchToProviderManagedKey { abandon_lost_data },
                KeyResults::SwitchedToProvider {
                    rewrap: evidence,
                    new_dek,
                },
            ),
            Scripted::DeclareDataLost { reason, ticket } => {
                (Intent::DeclareDataLost { reason, ticket }, KeyResults::None)
            }
            Scripted::RecordKeyHealth { status, detail } => {
                (Intent::RecordKeyHealth { status, detail }, KeyResults::None)
            }
            Scripted::RecordKeyDeleted {
                recoverable_until,
                detail,
            } => (
                Intent::RecordKeyDeleted {
                    recoverable_until,
                    detail,
                },
                KeyResults::None,
            ),
        }
    }
}

/// A scripted command: on which organization, who, when, what.
#[derive(Debug, Clone)]
pub struct ScriptedCommand {
    pub org_id: OrgId,
    pub actor: Actor,
    pub at: DateTime<Utc>,
    pub kind: Scripted,
}

/// What the application does with a command, with the script's key results in place of the
/// vault: [`plan`], then [`decide`].
pub fn decide_scripted(state: &State, command: ScriptedCommand) -> Result<Vec<Event>, DomainError> {
    let (intent, done) = command.kind.split();
    let command = Command {
        org_id: command.org_id,
        actor: command.actor,
        at: command.at,
        intent,
    };
    plan(state, &command)?;
    decide(state, command, done)
}

/// A command on the scenario's organization at `t0`.
pub fn cmd(actor: Actor, kind: Scripted) -> ScriptedCommand {
    cmd_at(actor, kind, t0())
}
pub fn cmd_at(actor: Actor, kind: Scripted, at: DateTime<Utc>) -> ScriptedCommand {
    ScriptedCommand {
        org_id: org_id(),
        actor,
        at,
        kind,
    }
}

pub fn register_kind(plan: Plan) -> Scripted {
    Scripted::RegisterOrganization {
        name: "Contoso".into(),
        plan,
        tenants: vec![tenant_a(), tenant_b()],
        initial_dek: provider_dek(),
    }
}
pub fn enable_kind(key: &KeyIdentifier) -> Scripted {
    Scripted::EnableCustomerManagedKey {
        key: validated(connection(key), t0()),
        dek: customer_dek(key),
    }
}
pub fn plan_kind(plan: Plan) -> Scripted {
    Scripted::ChangePlan {
        plan,
        reason: "billing cycle".into(),
    }
}
/// Edit the current connection, changing only the client secret.
pub fn edit_secret_kind(state: &State, new_secret: &str) -> Scripted {
    let current = state
        .org()
        .and_then(|o| o.customer_key())
        .map(|k| k.key().clone())
        .unwrap_or_else(key_a);
    let mut c = connection(&current);
    c.client_secret = SecretString::from(new_secret.to_owned());
    Scripted::EditConnection {
        key: validated(c, t0()),
        rotation: None,
    }
}
pub fn rotate_kind(state: &State, to: &KeyIdentifier) -> Scripted {
    Scripted::RotateKey {
        key: validated(connection(to), t0()),
        evidence: rewrap_all(
            state,
            &WrappedBy::Customer {
                key_identifier: to.clone(),
            },
        ),
    }
}
pub fn switch_kind(state: &State) -> Scripted {
    let provider = WrappedBy::Provider {
        internal_key_id: "ik-1".into(),
    };
    Scripted::SwitchToProviderManagedKey {
        evidence: Some(rewrap_all(state, &provider)),
        new_dek: provider_dek(),
        abandon_lost_data: false,
    }
}
pub fn abandon_switch_kind() -> Scripted {
    Scripted::SwitchToProviderManagedKey {
        evidence: None,
        new_dek: provider_dek(),
        abandon_lost_data: true,
    }
}
pub fn health_kind(status: HealthStatus) -> Scripted {
    Scripted::RecordKeyHealth { status, detail: None }
}
pub fn deleted_kind(recoverable_until: DateTime<Utc>) -> Scripted {
    Scripted::RecordKeyDeleted {
        recoverable_until,
        detail: None,
    }
}
pub fn declare_lost_kind(ticket: Option<&str>) -> Scripted {
    Scripted::DeclareDataLost {
        reason: "key purged without backup".into(),
        ticket: ticket.map(str::to_owned),
    }
}

/// Builds a realistic history by running commands through `decide`, so given events are
/// always events the rules would emit.
#[derive(Debug, Default)]
pub struct History {
    state: State,
    events: Vec<Event>,
    minute: i64,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one command; panics when it is refused (a broken fixture).
    #[track_caller]
    pub fn run(mut self, actor: Actor, build: impl FnOnce(&State) -> Scripted) -> Self {
        let kind = build(&self.state);
        let command = cmd_at(actor, kind, at_minutes(self.minute));
        self.minute += 1;
        match decide_scripted(&self.state, command) {
            Ok(events) => {
                for e in events {
                    self.state = evolve(self.state, &e);
                    self.events.push(e);
                }
            }
            Err(e) => panic!("fixture history command refused: {e:?}"),
        }
        self
    }

    #[track_caller]
    pub fn register(self, plan: Plan) -> Self {
        self.run(platform(), |_| register_kind(plan))
    }
    #[track_caller]
    pub fn enable(self, key: &KeyIdentifier) -> Self {
        let key = key.clone();
        self.run(admin(), move |_| enable_kind(&key))
    }
    #[track_caller]
    pub fn rotate(self, to: &KeyIdentifier) -> Self {
        let to = to.clone();
        self.run(admin(), move |s| rotate_kind(s, &to))
    }
    #[track_caller]
    pub fn plan(self, plan: Plan) -> Self {
        self.run(billing(), |_| plan_kind(plan))
    }
    #[track_caller]
    pub fn switch(self) -> Self {
        self.run(admin(), switch_kind)
    }
    #[track_caller]
    pub fn health(self, status: HealthStatus) -> Self {
        self.run(system(), |_| health_kind(status))
    }
    /// The monitor found the key soft-deleted, purged at `recoverable_until`.
    pub fn deleted(self, recoverable_until: DateTime<Utc>) -> Self {
        self.run(system(), |_| deleted_kind(recoverable_until))
    }
    #[track_caller]
    pub fn declare_lost(self) -> Self {
        self.run(admin(), |_| declare_lost_kind(None))
    }

    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn events(self) -> Vec<Event> {
        self.events
    }
}

/// An enterprise organization with CMK on under `key_a`.
pub fn cmk_org() -> History {
    History::new()
        .register(Plan::enterprise("standard"))
        .enable(&key_a())
}
