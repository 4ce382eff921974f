//! Projections: folds over the event log (DESIGN.md §6).
//!
//! Each projection keeps one JSON document per organization and, for the tenant audit, an
//! append-only list of rows. [`Projection::apply`] is the pure fold for one event; a runner
//! loads the documents an event batch touches, folds, and writes documents, audit rows and
//! its checkpoint in one transaction. [`Projections`] is the same fold in memory: the reference
//! the SQL runners and rebuilds are compared against.

pub mod rows;
pub mod runner;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::collections::BTreeMap;

use keyledger_domain::{Event, OrgId, StreamId};
use keyledger_store::envelope::StoredEvent;
use serde_json::Value;

pub use rows::{
    AuditActor, AuditEntry, AuditTenants, CustomerKeyView, DataKeyInventory, DataKeyRow, EncryptionMode,
    EncryptionView, HealthView, KeyHealthRow, KeyHistoryView, OrganizationView, audit_details,
};
pub use runner::{
    AuditQuery, Changes, MemoryRows, MemorySink, ProjectionSink, Runner, RunnerError, SinkError,
};

/// The five projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    /// The organization view: the active key per organization.
    OrganizationEncryption,
    /// One row per tenant per key-relevant event (its document tracks the org's tenants).
    TenantAudit,
    KeyHealth,
    DataKeyInventory,
    /// The audit log's Merkle trees (ADR 0024): no documents, but the nodes and frontiers of
    /// the global log and each organization's log, folded by [`keyledger_store::merkle::fold_events`]
    /// and read through [`keyledger_store::merkle::AuditTrees`].
    AuditTree,
}

/// A projection document that does not parse: the stored rows were written by another
/// version, or edited. Rebuild the projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    #[error("{projection} document for organization {org} is unreadable: {source}")]
    BadDocument {
        projection: &'static str,
        org: OrgId,
        #[source]
        source: serde_json::Error,
    },
    /// A projection without documents was asked to read one (a caller bug).
    #[error("projection {projection} keeps no documents")]
    NoDocuments { projection: &'static str },
    /// The audit tree cannot take the events (they do not continue a log): see
    /// [`TreeError::LeafOutOfOrder`](keyledger_store::merkle::TreeError::LeafOutOfOrder).
    #[error(transparent)]
    Tree(#[from] keyledger_store::merkle::TreeError),
    /// The event itself does not decode (unknown type or future version): upgrade keyledger.
    #[error("event at position {position} does not decode: {source}")]
    Decode {
        position: u64,
        #[source]
        source: keyledger_domain::DecodeError,
    },
}

/// What one event did to one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The organization's document after the event (`None`: no document).
    pub doc: Option<Value>,
    /// New tenant-audit rows.
    pub audit: Vec<AuditEntry>,
}

impl Projection {
    pub const ALL: [Projection; 5] = [
        Projection::OrganizationEncryption,
        Projection::TenantAudit,
        Projection::KeyHealth,
        Projection::DataKeyInventory,
        Projection::AuditTree,
    ];

    /// The stable name used for tables, checkpoints and leases.
    pub fn name(self) -> &'static str {
        match self {
            Projection::OrganizationEncryption => "organization_encryption",
            Projection::TenantAudit => "tenant_audit",
            Projection::KeyHealth => "key_health",
            Projection::DataKeyInventory => "data_key_inventory",
            Projection::AuditTree => "audit_tree",
        }
    }

    /// The organization whose document events of `stream` fold into, if any. The tenant
    /// audit follows an organization's stream and its release record (ADR 0030); the other
    /// documents are the organization's state, so its own stream only. Stream `audit` feeds
    /// no document (ADR 0025).
    pub fn doc_of(self, stream: StreamId) -> Option<OrgId> {
        match self {
            Projection::TenantAudit => stream.owner(),
            _ => stream.org_id(),
        }
    }

    /// Reads a stored document of this projection.
    pub fn parse(self, org: OrgId, doc: &Value) -> Result<Doc, ProjectionError> {
        let bad = |source| ProjectionError::BadDocument {
            projection: self.name(),
            org,
            source,
        };
        let doc = doc.clone();
        Ok(match self {
            Projection::OrganizationEncryption => {
                Doc::Organization(serde_json::from_value(doc).map_err(bad)?)
            }
            Projection::KeyHealth => Doc::KeyHealth(serde_json::from_value(doc).map_err(bad)?),
            Projection::DataKeyInventory => Doc::Inventory(serde_json::from_value(doc).map_err(bad)?),
            Projection::TenantAudit => Doc::Tenants(serde_json::from_value(doc).map_err(bad)?),
            Projection::AuditTree => {
                return Err(ProjectionError::NoDocuments {
                    projection: self.name(),
                });
            }
        })
    }

    /// Folds one event into the organization's typed document. `event` is `stored` decoded
    /// with its protected fields still sealed: projections never see secrets. Returns the new
    /// document (`None`: no document) and any new audit rows.
    pub fn fold(
        self,
        doc: Option<Doc>,
        stored: &StoredEvent,
        event: &Event,
    ) -> (Option<Doc>, Vec<AuditEntry>) {
        let Some(org) = self.doc_of(stored.stream_id) else {
            // A stream outside this projection's documents (ADR 0025, 0030).
            return (doc, Vec::new());
        };
        let version = stored.stream_version.0;
        match (self, doc) {
            (Projection::OrganizationEncryption, current) => {
                let next = match (current, event) {
                    (_, Event::OrganizationRegistered(e)) => Some(OrganizationView::registered(e, version)),
                    (Some(Doc::Organization(mut v)), e) => {
                        v.apply(version, e);
                        Some(v)
                    }
                    _ => None,
                };
                (next.map(Doc::Organization), Vec::new())
            }
            (Projection::KeyHealth, current) => {
                let current = match current {
                    Some(Doc::KeyHealth(r)) => Some(r),
                    _ => None,
                };
                (
                    KeyHealthRow::apply(current, org, event).map(Doc::KeyHealth),
                    Vec::new(),
                )
            }
            (Projection::DataKeyInventory, current) => {
                let mut inv = match current {
                    Some(Doc::Inventory(i)) => i,
                    _ => DataKeyInventory::default(),
                };
                inv.apply(stored.occurred_at, event);
                (
                    (!inv.data_keys.is_empty()).then_some(Doc::Inventory(inv)),
                    Vec::new(),
                )
            }
            (Projection::TenantAudit, current) => {
                let mut tenants = match current {
                    Some(Doc::Tenants(t)) => t,
                    _ => AuditTenants::default(),
                };
                let audit = tenants.apply(stored, event);
                (Some(Doc::Tenants(tenants)), audit)
            }
            // Its rows are tree nodes, folded by the runner from the stored events alone
            // (`Runner::apply_tree_batch`).
            (Projection::AuditTree, _) => (None, Vec::new()),
        }
    }

    /// [`Projection::fold`] on stored (JSON) documents.
    pub fn apply(
        self,
        doc: Option<&Value>,
        stored: &StoredEvent,
        event: &Event,
    ) -> Result<Applied, ProjectionError> {
        let Some(org) = self.doc_of(stored.stream_id) else {
            return Ok(Applied {
                doc: doc.cloned(),
                audit: Vec::new(),
            });
        };
        let current = doc.map(|d| self.parse(org, d)).transpose()?;
        let (next, audit) = self.fold(current, stored, event);
        Ok(Applied {
            doc: next.map(|d| d.to_value()),
            audit,
        })
    }
}

/// A projection document, typed.
// One per organization in a batch, moved rather than copied: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Organization(OrganizationView),
    KeyHealth(KeyHealthRow),
    Inventory(DataKeyInventory),
    Tenants(AuditTenants),
}

impl Doc {
    pub fn to_value(&self) -> Value {
        match self {
            Doc::Organization(v) => to_value(v),
            Doc::KeyHealth(v) => to_value(v),
            Doc::Inventory(v) => to_value(v),
            Doc::Tenants(v) => to_value(v),
        }
    }
}

fn to_value<T: serde::Serialize>(row: T) -> Value {
    // Rows are plain data (strings, numbers, enums): serializing them cannot fail.
    serde_json::to_value(row).unwrap_or(Value::Null)
}

/// Every projection, folded in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projections {
    pub docs: BTreeMap<(Projection, OrgId), Value>,
    pub audit: Vec<AuditEntry>,
    pub position: u64,
}

impl Projections {
    /// Folds one stored event into every projection.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let event = stored.decode().map_err(|source| ProjectionError::Decode {
            position: stored.global_position.0,
            source,
        })?;
        for p in Projection::ALL {
            let Some(org) = p.doc_of(stored.stream_id) else {
                continue;
            };
            let applied = p.apply(self.docs.get(&(p, org)), stored, &event)?;
            match applied.doc {
                Some(d) => {
                    self.docs.insert((p, org), d);
                }
                None => {
                    self.docs.remove(&(p, org));
                }
            }
            self.audit.extend(applied.audit);
        }
        self.position = stored.global_position.0;
        Ok(())
    }

    pub fn view(&self, org: OrgId) -> Option<OrganizationView> {
        self.docs
            .get(&(Projection::OrganizationEncryption, org))
            .and_then(|d| serde_json::from_value(d.clone()).ok())
    }
}
