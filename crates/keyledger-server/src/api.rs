//! Request and response bodies of the HTTP API (CONTRACT.md), with their JSON Schemas for
//! `schemas/openapi.json`. Requests refuse unknown fields, so a misspelt field is a 400, not
//! a silently ignored value.

use chrono::{DateTime, Utc};
use keyledger_domain::{
    ApplicationId, DekId, DirectoryId, HealthStatus, OrgId, Plan, StreamVersion, Tenant, WrappedBy,
};
use keyledger_projection::AuditEntry;
use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

/// The largest global position or stream version a query names: the stores keep them as
/// signed 64-bit integers, and the one after a cursor must still be countable (ADR 0016). A
/// larger number is refused (CONTRACT.md "Numbers").
pub const MAX_POSITION: u64 = i64::MAX.cast_unsigned() - 1;
/// The smallest and largest page size; another `limit` is refused.
pub const MIN_LIMIT: u32 = 1;
pub const MAX_LIMIT: u32 = 1000;
/// The page size when a query gives no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;

/// An optional position or version in a query: 0 to [`MAX_POSITION`].
fn position<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<u64>::deserialize(d)?;
    match value {
        Some(v) if v > MAX_POSITION => Err(serde::de::Error::custom(format!(
            "must be at most {MAX_POSITION}"
        ))),
        _ => Ok(value),
    }
}

/// An optional page size: [`MIN_LIMIT`] to [`MAX_LIMIT`].
fn page_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = Option::<u32>::deserialize(d)?;
    match value {
        Some(v) if !(MIN_LIMIT..=MAX_LIMIT).contains(&v) => Err(serde::de::Error::custom(format!(
            "must be {MIN_LIMIT} to {MAX_LIMIT}"
        ))),
        _ => Ok(value),
    }
}

/// `POST /v1/organizations`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterOrganization {
    /// Chosen by the caller, or generated (UUIDv7) when left out.
    #[serde(default)]
    pub org_id: Option<OrgId>,
    #[schemars(schema_with = "crate::openapi::name_schema")]
    pub name: String,
    #[schemars(schema_with = "crate::openapi::plan_schema")]
    pub plan: Plan,
    /// Each tenant once.
    #[serde(default)]
    #[schemars(schema_with = "crate::openapi::tenants_schema")]
    pub tenants: Vec<Tenant>,
}

/// `PUT /v1/organizations/{org}/plan`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    #[schemars(schema_with = "crate::openapi::plan_schema")]
    pub plan: Plan,
    #[schemars(schema_with = "crate::openapi::reason_schema")]
    pub reason: String,
}

/// A customer-managed-key connection ("Test", "Test and save").
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    pub directory_id: DirectoryId,
    pub application_id: ApplicationId,
    /// Write-only: never returned, logged or stored in clear.
    #[schemars(with = "String")]
    pub client_secret: SecretString,
    /// `https://HOST/keys/NAME[/VERSION]` on an allow-listed vault host. Without a version,
    /// the version found at validation is pinned.
    #[schemars(schema_with = "crate::openapi::key_identifier_schema")]
    pub key_identifier: String,
}

/// `PATCH …/customer-managed-key`: any subset of the connection. A changed key is a rotation.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatchBody {
    #[serde(default)]
    pub directory_id: Option<DirectoryId>,
    #[serde(default)]
    pub application_id: Option<ApplicationId>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    #[schemars(schema_with = "crate::openapi::optional_key_identifier_schema")]
    pub key_identifier: Option<String>,
}

/// `POST …/customer-managed-key/rotation`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationBody {
    #[schemars(schema_with = "crate::openapi::key_identifier_schema")]
    pub key_identifier: String,
    #[serde(default)]
    pub directory_id: Option<DirectoryId>,
    #[serde(default)]
    pub application_id: Option<ApplicationId>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub client_secret: Option<SecretString>,
}

/// `POST …/data-loss`. Support staff must give a ticket.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataLossBody {
    #[schemars(schema_with = "crate::openapi::reason_schema")]
    pub reason: String,
    /// Required when the caller holds the support role and not org_admin.
    #[serde(default)]
    #[schemars(schema_with = "crate::openapi::optional_reason_schema")]
    pub ticket: Option<String>,
}

/// `DELETE …/customer-managed-key?abandon_lost_data=true`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchQuery {
    #[serde(default)]
    pub abandon_lost_data: bool,
}

/// One check of a connection test.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
}

/// `POST …/customer-managed-key/test`: what "Test" found. Records nothing.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TestResult {
    pub ok: bool,
    /// Why the test failed (DESIGN.md §4), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checks: Vec<CheckResult>,
    /// The key that passed, with its version pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<TestedKey>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TestedKey {
    pub key_identifier: String,
    pub key_version: Option<String>,
    pub kty: String,
    pub key_size: u32,
    pub expires_at: Option<DateTime<Utc>>,
}

/// `GET …/key-health` and `POST …/key-health/probe`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct KeyHealth {
    pub status: HealthStatus,
    pub since: DateTime<Utc>,
    pub detail: Option<String>,
    /// While the key is soft-deleted (`key_deleted`): when the vault purges it, the last moment
    /// the key and the data under it can be recovered. `null` otherwise.
    pub recoverable_until: Option<DateTime<Utc>>,
    /// When this instance last probed the key; `null` before the first probe.
    pub last_probe_at: Option<DateTime<Utc>>,
}

/// `POST …/data-keys/active/release` and `POST …/data-keys/{dek_id}/release`: a DEK in
/// clear, for a platform service to cache at most `cache_ttl_seconds`.
#[derive(Serialize, JsonSchema)]
pub struct ReleasedKey {
    pub dek_id: DekId,
    /// The 32 key bytes, standard base64.
    #[schemars(with = "String")]
    #[serde(serialize_with = "zeroizing_str")]
    pub key: Zeroizing<String>,
    pub wrapped_by: WrappedBy,
    /// `keys.external_cache_ttl` for a customer-managed DEK, `keys.internal_cache_ttl` for a
    /// provider-managed one.
    pub cache_ttl_seconds: u64,
}

fn zeroizing_str<S: serde::Serializer>(text: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text)
}

impl std::fmt::Debug for ReleasedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedKey")
            .field("dek_id", &self.dek_id)
            .field("wrapped_by", &self.wrapped_by)
            .finish_non_exhaustive()
    }
}

/// `GET …/events?after_version=&limit=`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgEventsQuery {
    #[serde(default, deserialize_with = "position")]
    pub after_version: Option<u64>,
    #[serde(default, deserialize_with = "page_limit")]
    pub limit: Option<u32>,
}

/// The organization's events as public envelopes: no secret, no wrapped key.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OrgEvents {
    pub events: Vec<PublicEnvelope>,
}

/// A stored envelope with its public payload.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PublicEnvelope {
    pub event_id: keyledger_domain::EventId,
    pub stream_id: String,
    pub stream_version: StreamVersion,
    pub global_position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub actor: keyledger_store::envelope::EnvelopeActor,
    pub correlation_id: Option<keyledger_domain::CorrelationId>,
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /v1/tenants/{tenant}/audit`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQueryParams {
    /// The `next` cursor of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default, deserialize_with = "page_limit")]
    pub limit: Option<u32>,
    /// An event type, e.g. `CustomerManagedKeyRotated`.
    #[serde(default)]
    pub action: Option<String>,
    /// RFC 3339; inclusive.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// RFC 3339; exclusive.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// `GET /v1/events?after=&limit=` and `GET /v1/events/stream?after=`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default, deserialize_with = "position")]
    pub after: Option<u64>,
    #[serde(default, deserialize_with = "page_limit")]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventsPage {
    /// CloudEvents 1.0, structured JSON, `sequence` = global position. `source` names the
    /// stream: `keyledger/organizations/<org_id>`, or `keyledger/audit` for the signed
    /// checkpoints (`keyledger.AuditCheckpointSigned.v1`, `subject` = the log).
    pub events: Vec<Value>,
    /// The position to pass as `after` next (the last event's, or `after` when empty).
    pub next_after: u64,
}

/// `GET /v1/audit/public-key`: the note verifier key of the audit checkpoints.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditPublicKey {
    /// `<name>+<hash8hex>+<base64(0x01 ‖ Ed25519 public key)>`, the C2SP note verifier key.
    pub verifier_key: String,
    /// Always `ed25519`.
    pub algorithm: &'static str,
}

/// `GET …/audit/proof`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InclusionProofQuery {
    /// The stream version whose leaf to prove (leaf index `version - 1`); required.
    #[serde(default, deserialize_with = "position")]
    pub version: Option<u64>,
    /// The tree size of the checkpoint to prove against; the latest signed checkpoint when
    /// left out.
    #[serde(default, deserialize_with = "position")]
    pub tree_size: Option<u64>,
}

/// An inclusion proof (RFC 9162 §2.1.3) of one leaf of an organization's log.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Base64 of the leaf hash, `SHA-256(0x00 ‖ leaf input)`.
    pub leaf_hash: String,
    /// Base64 of each hash of the audit path, from the leaf up.
    pub hashes: Vec<String>,
}

/// `GET …/audit/consistency`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The smaller tree size; required.
    #[serde(default, deserialize_with = "position")]
    pub from: Option<u64>,
    /// The larger tree size (at most the log's size); required.
    #[serde(default, deserialize_with = "position")]
    pub to: Option<u64>,
}

/// A consistency proof (RFC 9162 §2.1.4) that the log at `to` extends the log at `from`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    /// Base64 of each hash of the proof.
    pub hashes: Vec<String>,
}
