//! Who issues a command (R3).

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{OrgId, TenantId};

/// What kind of principal acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A person, e.g. an organization administrator.
    User,
    /// Another platform service (billing, provisioning).
    Service,
    /// keyledger itself (health monitor).
    System,
}

/// Roles, as in CONTRACT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    OrgAdmin,
    Auditor,
    Platform,
    Billing,
    Support,
    /// The engine itself; never granted to a token.
    System,
}

/// A set of ids an actor may act on, or all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reach<T: Ord> {
    All,
    Only(BTreeSet<T>),
}

impl<T: Ord> Reach<T> {
    pub fn contains(&self, id: &T) -> bool {
        match self {
            Reach::All => true,
            Reach::Only(ids) => ids.contains(id),
        }
    }
}

/// Which organizations and tenants an actor may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Scope {
    pub organizations: Reach<OrgId>,
    pub tenants: Reach<TenantId>,
}

impl Scope {
    pub fn everything() -> Self {
        Self {
            organizations: Reach::All,
            tenants: Reach::All,
        }
    }
}

/// The principal behind a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    pub roles: BTreeSet<Role>,
    pub scope: Scope,
}

impl Actor {
    pub fn new(
        kind: ActorKind,
        id: impl Into<String>,
        roles: impl IntoIterator<Item = Role>,
        scope: Scope,
    ) -> Self {
        Self {
            kind,
            id: id.into(),
            roles: roles.into_iter().collect(),
            scope,
        }
    }

    /// The engine itself, with the `system` role over everything.
    pub fn system() -> Self {
        Self::new(
            ActorKind::System,
            "keyledger",
            [Role::System],
            Scope::everything(),
        )
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn reaches_org(&self, org: OrgId) -> bool {
        self.scope.organizations.contains(&org)
    }
}
