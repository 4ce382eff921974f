//! The event catalogue (DESIGN.md §3), version 1 of each type, and decoding of stored events
//! (with upcasting of older versions).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attest::{KeyProperties, WrappedBy};
pub use crate::audit::AuditCheckpointSigned;
use crate::connection::{ConnectionField, ConnectionRecord};
use crate::health::{HealthStatus, PurgeReminder};
use crate::ids::{DekId, OrgId, StreamKind, TenantId};
use crate::key_identifier::KeyIdentifier;
use crate::plan::Plan;
use crate::secret::{Edek, Protected, ProtectedSlot};
use crate::upcast;

/// A tenant of an organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub tenant_id: TenantId,
    pub name: String,
}

/// R1: an organization exists, provider-managed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationRegistered {
    pub org_id: OrgId,
    pub name: String,
    pub plan: Plan,
    pub tenants: Vec<Tenant>,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantAdded {
    pub tenant_id: TenantId,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRemoved {
    pub tenant_id: TenantId,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChanged {
    pub from: Plan,
    pub to: Plan,
    pub reason: String,
}

/// Why a customer-managed key was locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockReason {
    PlanDowngraded,
}

/// R8: the plan left the enterprise family while CMK was on.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerManagedKeyLocked {
    pub reason: LockReason,
}

/// R8: the plan is enterprise again.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerManagedKeyUnlocked {}

/// R4: "Test and save" passed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerManagedKeyEnabled {
    pub connection: ConnectionRecord,
    pub key: KeyProperties,
    pub validated_at: DateTime<Utc>,
}

/// R6: the connection changed but the key did not.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerManagedKeyConnectionEdited {
    pub changed_fields: Vec<ConnectionField>,
    pub client_secret_changed: bool,
    pub connection: ConnectionRecord,
    pub validated_at: DateTime<Utc>,
}

/// R7: every DEK under `from_key` now sits under `to_key`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerManagedKeyRotated {
    pub from_key: KeyIdentifier,
    pub to_key: KeyIdentifier,
    pub changed_fields: Vec<ConnectionField>,
    pub client_secret_changed: bool,
    pub connection: ConnectionRecord,
    pub key: KeyProperties,
    pub rewrapped_dek_ids: Vec<DekId>,
    pub validated_at: DateTime<Utc>,
}

/// R9/R11: back to the provider's internal key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchedToProviderManagedKey {
    pub previous_key: KeyIdentifier,
    /// True when lost DEKs were left behind after a data-loss declaration (R11).
    pub abandoned_lost_data: bool,
    pub switched_at: DateTime<Utc>,
}

/// A new DEK, wrapped by `wrapped_by`. The EDEK is sealed at rest.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataKeyGenerated {
    pub dek_id: DekId,
    pub wrapped_by: WrappedBy,
    pub edek: Protected<Edek>,
    pub generated_at: DateTime<Utc>,
}

/// One re-wrapped DEK.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewrappedDataKey {
    pub dek_id: DekId,
    pub edek: Protected<Edek>,
}

/// Existing DEKs now wrapped by `wrapped_by`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataKeysRewrapped {
    pub wrapped_by: WrappedBy,
    pub data_keys: Vec<RewrappedDataKey>,
}

/// R10: the health status changed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyHealthChanged {
    pub from: HealthStatus,
    pub to: HealthStatus,
    #[serde(default)]
    pub detail: Option<String>,
    /// With `to: key_deleted`: when the vault purges the key (its deleted-key record's
    /// `scheduledPurgeDate`). Absent when the record gives none, for other statuses, and in
    /// payloads written before the field existed (ADR 0032).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_until: Option<DateTime<Utc>>,
    /// The purge reminder this change records (R10): set on the first `key_deleted` observed
    /// within a window, and on a `key_deleted` → `key_deleted` reminder. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_reminder: Option<PurgeReminder>,
    pub observed_at: DateTime<Utc>,
}

/// R11: the key is gone for good and these DEKs with it. Irreversible.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerDataDeclaredLost {
    pub key_identifier: KeyIdentifier,
    pub lost_dek_ids: Vec<DekId>,
    pub reason: String,
    #[serde(default)]
    pub ticket: Option<String>,
    pub declared_at: DateTime<Utc>,
}

/// A DEK was released to a platform service (CONTRACT.md "Data keys for platform services"):
/// which DEK, under which key. Who and when are the envelope's actor and time. Stream
/// `releases-<org>` (ADR 0030); no key material, wrapped or clear.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataKeyReleased {
    pub dek_id: DekId,
    pub wrapped_by: WrappedBy,
    /// The caller asked for the active DEK (`true`) or named this one (`false`).
    pub active: bool,
}

macro_rules! events {
    ($($name:ident),* $(,)?) => {
        /// Every event type, version 1.
        // Events are built once per command and moved, not copied in bulk: boxing the large
        // variants would only add noise.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone)]
        pub enum Event {
            $($name($name),)*
        }

        impl Event {
            /// The stable type name stored with the event.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Event::$name(_) => stringify!($name),)*
                }
            }

            /// The payload as stored. Fails when a protected field is still open.
            pub fn payload_json(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $(Event::$name(p) => serde_json::to_value(p),)*
                }
            }

            fn from_current(event_type: &str, payload: &Value) -> Result<Event, DecodeError> {
                let malformed = |e: serde_json::Error| DecodeError::Malformed {
                    event_type: event_type.to_owned(),
                    message: e.to_string(),
                };
                match event_type {
                    $(stringify!($name) => <$name as Deserialize>::deserialize(payload).map(Event::$name).map_err(malformed),)*
                    other => Err(DecodeError::UnknownEventType { event_type: other.to_owned() }),
                }
            }
        }

        /// The names of every event type, in catalogue order.
        pub const EVENT_TYPES: &[&str] = &[$(stringify!($name)),*];

        /// The JSON Schema of one event type's current payload.
        pub fn payload_schema(event_type: &str) -> Option<schemars::Schema> {
            match event_type {
                $(stringify!($name) => Some(schemars::schema_for!($name)),)*
                _ => None,
            }
        }
    };
}

events!(
    OrganizationRegistered,
    TenantAdded,
    TenantRemoved,
    PlanChanged,
    CustomerManagedKeyLocked,
    CustomerManagedKeyUnlocked,
    CustomerManagedKeyEnabled,
    CustomerManagedKeyConnectionEdited,
    CustomerManagedKeyRotated,
    SwitchedToProviderManagedKey,
    DataKeyGenerated,
    DataKeysRewrapped,
    KeyHealthChanged,
    CustomerDataDeclaredLost,
    AuditCheckpointSigned,
    DataKeyReleased,
);

/// The schema version every event type is written with today.
pub const CURRENT_SCHEMA_VERSION: u32 = 1;

/// Why a stored event could not be turned into an [`Event`]. Each names the event type; the
/// store adds the stream, version and event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// This build does not know the type: the log was written by a newer keyledger, or it is
    /// corrupt. Do not skip it; upgrade or investigate.
    #[error("unknown event type {event_type:?}")]
    UnknownEventType { event_type: String },
    /// Written with a schema version newer than this build understands. Upgrade keyledger.
    #[error("{event_type} has schema version {found}, newer than the supported {supported}")]
    FutureSchemaVersion {
        event_type: String,
        found: u32,
        supported: u32,
    },
    /// An old version with no upcaster: a gap in the upcaster chain (a bug).
    #[error("{event_type} version {found} cannot be upcast")]
    NoUpcaster { event_type: String, found: u32 },
    /// The payload does not match its schema.
    #[error("{event_type} payload is malformed: {message}")]
    Malformed { event_type: String, message: String },
}

impl Event {
    /// Decodes a stored payload of any known version, upcasting older versions first.
    pub fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Event, DecodeError> {
        Self::check_version(event_type, schema_version)?;
        if schema_version == CURRENT_SCHEMA_VERSION {
            return Event::from_current(event_type, &payload);
        }
        let payload = upcast::to_current(event_type, schema_version, payload)?;
        Event::from_current(event_type, &payload)
    }

    /// [`Event::decode`] without taking the payload: current-version payloads are read in
    /// place (the catch-up and rebuild path).
    pub fn decode_ref(event_type: &str, schema_version: u32, payload: &Value) -> Result<Event, DecodeError> {
        Self::check_version(event_type, schema_version)?;
        if schema_version == CURRENT_SCHEMA_VERSION {
            return Event::from_current(event_type, payload);
        }
        Self::decode(event_type, schema_version, payload.clone())
    }

    fn check_version(event_type: &str, schema_version: u32) -> Result<(), DecodeError> {
        if !EVENT_TYPES.contains(&event_type) {
            return Err(DecodeError::UnknownEventType {
                event_type: event_type.to_owned(),
            });
        }
        if schema_version > CURRENT_SCHEMA_VERSION {
            return Err(DecodeError::FutureSchemaVersion {
                event_type: event_type.to_owned(),
                found: schema_version,
                supported: CURRENT_SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    pub fn schema_version(&self) -> u32 {
        CURRENT_SCHEMA_VERSION
    }

    /// The kind of stream this event belongs in. An append puts an event in a stream of its
    /// kind only (an organization event in `audit`, or a checkpoint in an organization's
    /// stream, would be folded by the wrong readers).
    pub fn stream_kind(&self) -> StreamKind {
        match self {
            Event::AuditCheckpointSigned(_) => StreamKind::Audit,
            Event::DataKeyReleased(_) => StreamKind::Releases,
            _ => StreamKind::Organization,
        }
    }

    /// Visits every protected field, named by where it sits in the payload (bound into the
    /// AAD when sealing, so a sealed value cannot be moved to another field or DEK).
    pub fn for_each_protected(&mut self, mut f: impl FnMut(&ProtectedField, &mut dyn ProtectedSlot)) {
        match self {
            Event::CustomerManagedKeyEnabled(e) => {
                f(&ProtectedField::ClientSecret, &mut e.connection.client_secret)
            }
            Event::CustomerManagedKeyConnectionEdited(e) => {
                f(&ProtectedField::ClientSecret, &mut e.connection.client_secret)
            }
            Event::CustomerManagedKeyRotated(e) => {
                f(&ProtectedField::ClientSecret, &mut e.connection.client_secret)
            }
            Event::DataKeyGenerated(e) => f(&ProtectedField::Edek, &mut e.edek),
            Event::DataKeysRewrapped(e) => {
                for (index, k) in e.data_keys.iter_mut().enumerate() {
                    let field = ProtectedField::RewrappedEdek {
                        index,
                        dek_id: k.dek_id,
                    };
                    f(&field, &mut k.edek);
                }
            }
            _ => {}
        }
    }

    /// The same event with every protected field redacted.
    pub fn redacted(&self) -> Event {
        let mut e = self.clone();
        e.for_each_protected(|_, slot| slot.redact());
        e
    }

    /// The public payload (stream, audit, API): no secret and no wrapped key material.
    /// Protected fields are removed by where the schema puts them (never by their value, so a
    /// user's string `"redacted"` stays); connections say `client_secret_set: true` instead.
    pub fn public_payload(&self) -> Value {
        let mut withheld = Vec::new();
        let mut event = self.clone();
        event.for_each_protected(|field, slot| {
            slot.redact();
            withheld.push(*field);
        });
        let mut v = match event.payload_json() {
            Ok(v) => v,
            // Redacted events always serialize; keep the invariant visible if that ever changes.
            Err(e) => serde_json::json!({ "error": format!("unserializable payload: {e}") }),
        };
        for field in &withheld {
            field.withhold(&mut v);
        }
        v
    }
}

/// Where a protected field sits in its event's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectedField {
    /// `connection.client_secret` of the key events.
    ClientSecret,
    /// `edek` of `DataKeyGenerated`.
    Edek,
    /// `data_keys[index].edek` of `DataKeysRewrapped`: the EDEK of DEK `dek_id`.
    RewrappedEdek { index: usize, dek_id: DekId },
}

impl ProtectedField {
    /// The name by position, e.g. `data_keys[0].edek`: what the `v1` seal AAD binds.
    pub fn by_position(&self) -> String {
        match self {
            ProtectedField::ClientSecret => "connection.client_secret".into(),
            ProtectedField::Edek => "edek".into(),
            ProtectedField::RewrappedEdek { index, .. } => format!("data_keys[{index}].edek"),
        }
    }

    /// The name by identity, e.g. `data_keys[dek_id=7].edek`: what the `v2` seal AAD binds.
    pub fn by_identity(&self) -> String {
        match self {
            ProtectedField::RewrappedEdek { dek_id, .. } => format!("data_keys[dek_id={}].edek", dek_id.0),
            other => other.by_position(),
        }
    }

    /// Removes the field from a payload in JSON form; a client secret leaves
    /// `client_secret_set: true` behind.
    fn withhold(&self, payload: &mut Value) {
        match self {
            ProtectedField::ClientSecret => {
                if let Some(connection) = payload.get_mut("connection").and_then(Value::as_object_mut) {
                    connection.remove("client_secret");
                    connection.insert("client_secret_set".into(), Value::Bool(true));
                }
            }
            ProtectedField::Edek => {
                if let Some(map) = payload.as_object_mut() {
                    map.remove("edek");
                }
            }
            ProtectedField::RewrappedEdek { index, .. } => {
                if let Some(key) = payload
                    .get_mut("data_keys")
                    .and_then(|keys| keys.get_mut(*index))
                    .and_then(Value::as_object_mut)
                {
                    key.remove("edek");
                }
            }
        }
    }
}

impl std::fmt::Display for ProtectedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.by_identity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::REDACTED;
    use serde_json::json;

    #[test]
    fn a_user_string_equal_to_redacted_survives_in_public_payloads() {
        let registered = Event::OrganizationRegistered(OrganizationRegistered {
            org_id: "01900000-0000-7000-8000-0000000000aa".parse().unwrap(),
            name: REDACTED.into(),
            plan: Plan::enterprise(REDACTED),
            tenants: vec![Tenant {
                tenant_id: "01900000-0000-7000-8000-0000000000bb".parse().unwrap(),
                name: REDACTED.into(),
            }],
            registered_at: DateTime::UNIX_EPOCH,
        });
        let public = registered.public_payload();
        assert_eq!(public["name"], REDACTED, "{public}");
        assert_eq!(public["plan"]["tier"], REDACTED, "{public}");
        assert_eq!(public["tenants"][0]["name"], REDACTED, "{public}");
        let changed = Event::PlanChanged(PlanChanged {
            from: Plan::free(),
            to: Plan::enterprise("standard"),
            reason: REDACTED.into(),
        });
        assert_eq!(changed.public_payload()["reason"], REDACTED);
    }

    #[test]
    fn catalogue_has_sixteen_types() {
        assert_eq!(EVENT_TYPES.len(), 16);
        assert!(EVENT_TYPES.contains(&"DataKeyReleased"));
    }

    #[test]
    fn unknown_type_is_a_typed_error() {
        let e = Event::decode("KeyStolen", 1, json!({})).unwrap_err();
        assert_eq!(
            e,
            DecodeError::UnknownEventType {
                event_type: "KeyStolen".into()
            }
        );
    }

    #[test]
    fn future_version_is_a_typed_error() {
        let e = Event::decode("TenantRemoved", 2, json!({})).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::FutureSchemaVersion {
                found: 2,
                supported: 1,
                ..
            }
        ));
    }

    #[test]
    fn malformed_payload_is_a_typed_error() {
        let e = Event::decode("TenantRemoved", 1, json!({"tenant_id": 5})).unwrap_err();
        assert!(matches!(e, DecodeError::Malformed { .. }));
    }

    #[test]
    fn unknown_fields_are_malformed_not_ignored() {
        let e = Event::decode("CustomerManagedKeyUnlocked", 1, json!({"x": 1})).unwrap_err();
        assert!(matches!(e, DecodeError::Malformed { .. }));
    }
}
