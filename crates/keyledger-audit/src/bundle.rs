//! The audit bundle of one organization (CONTRACT.md `GET /v1/organizations/{org}/audit/bundle`)
//! and its offline verification (`keyledger audit verify`).
//!
//! A bundle holds the organization's public leaf documents (ADR 0024: the envelopes with each
//! sealed value replaced by the hash of its ciphertext), their leaf inputs, and the signed
//! checkpoint of the organization's log over exactly those leaves. It holds no secret and no
//! key material, so a customer can keep it, and check it with nothing but the verifier key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyledger_domain::{OrgId, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::merkle::{self, Hash};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::note::{Checkpoint, NoteError, Verifier, open_checkpoint, org_origin};

/// The value of `format` in every bundle of this version.
pub const BUNDLE_FORMAT: &str = "keyledger-audit-bundle/v1";

/// One organization's audit log, checkable offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// `keyledger-audit-bundle/v1`.
    pub format: String,
    pub organization: OrgId,
    /// The signed note (C2SP signed-note) of the checkpoint of the organization's log whose
    /// leaves are exactly `entries`.
    pub checkpoint: String,
    /// Every event of the organization's stream, in version order from 1.
    pub entries: Vec<BundleEntry>,
}

/// One leaf of the organization's log: stream version `version` is leaf `version - 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleEntry {
    pub version: StreamVersion,
    /// The leaf document (`keyledger-leaf/v1`, ADR 0024): the public envelope.
    pub leaf: Value,
    /// Base64 (standard, padded) of the leaf input: the canonical JSON of `leaf`. The leaf
    /// hash is `SHA-256(0x00 ‖ input)`.
    pub leaf_input: String,
}

impl Bundle {
    /// The bundle of `organization` from its stream's events (`events`: versions 1..=N in
    /// order) and the signed `checkpoint` note of its log at size N.
    pub fn build(organization: OrgId, events: &[StoredEvent], checkpoint: String) -> Self {
        let entries = events
            .iter()
            .map(|event| {
                let leaf = merkle::leaf_document(event);
                let leaf_input = B64.encode(merkle::leaf_input(&leaf));
                BundleEntry {
                    version: event.stream_version,
                    leaf,
                    leaf_input,
                }
            })
            .collect();
        Self {
            format: BUNDLE_FORMAT.to_owned(),
            organization,
            checkpoint,
            entries,
        }
    }
}

/// What a verified bundle shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub organization: OrgId,
    /// The checkpoint, signed by the verifier's key, whose root the leaves give.
    pub checkpoint: Checkpoint,
    /// The size of the previous checkpoint that the log extends, when one was given.
    pub extends: Option<u64>,
}

/// Why a bundle does not verify. Each message names the leaf (stream version) or the
/// checkpoint at fault; a caller reports it and treats the bundle as untrustworthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a bundle of a format this verifier knows.
    #[error("the bundle's format is {0:?}, not {BUNDLE_FORMAT}")]
    UnknownFormat(String),
    /// The bundle's checkpoint is not signed by the verifier's key, or is not a checkpoint.
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] NoteError),
    /// The checkpoint is of another log than this organization's.
    #[error("checkpoint: it is of log {found:?}, not of the organization's log {expected:?}")]
    WrongOrigin { expected: String, found: String },
    /// The checkpoint covers another number of leaves than the bundle holds.
    #[error("checkpoint {origin} at size {size}: the bundle holds {entries} leaves")]
    SizeMismatch { origin: String, size: u64, entries: u64 },
    /// The entries are not versions 1, 2, … in order: a leaf is missing, repeated or moved.
    #[error("leaf {expected}: the entry in its place has version {found}")]
    NotDense { expected: u64, found: u64 },
    /// A leaf input is not base64.
    #[error("leaf {version}: leaf_input is not base64")]
    LeafInputNotBase64 { version: u64 },
    /// A leaf document and its input differ: one of them was edited.
    #[error("leaf {version}: the leaf document does not encode to its leaf_input (edited)")]
    LeafInputMismatch { version: u64 },
    /// A leaf document that is not `keyledger-leaf/v1`.
    #[error("leaf {version}: not a {} document", merkle::LEAF_FORMAT)]
    UnknownLeafFormat { version: u64 },
    /// A leaf document of another stream or version than its place in this organization's log.
    #[error("leaf {version}: the document is {found}, not this organization's version {version}")]
    MisplacedLeaf { version: u64, found: String },
    /// The leaves do not give the checkpoint's root: a leaf was changed along with its input.
    #[error(
        "checkpoint {origin} at size {size}: the root of the bundle's leaves is not the signed \
         root (a leaf was changed)"
    )]
    RootMismatch { origin: String, size: u64 },
    /// The previous checkpoint is not signed by the verifier's key, or is not a checkpoint.
    #[error("previous checkpoint: {0}")]
    Previous(#[source] NoteError),
    /// The previous checkpoint is of another log.
    #[error("previous checkpoint: it is of log {found:?}, not {expected:?}")]
    PreviousOtherOrigin { expected: String, found: String },
    /// The log is shorter than the previous checkpoint: events were removed.
    #[error("previous checkpoint at size {previous}: the log now has only {size} leaves (cut short)")]
    Shrunk { previous: u64, size: u64 },
    /// The log's first leaves do not give the previous checkpoint's root: history was rewritten.
    #[error(
        "previous checkpoint at size {previous}: the bundle's first {previous} leaves have \
         another root (the log does not extend it)"
    )]
    DoesNotExtend { previous: u64 },
}

/// Checks `bundle` offline: the checkpoint's signature (by `verifier`) and origin
/// (`<verifier name>/org/<organization>`), every leaf (dense versions from 1, input equal to
/// the canonical document, the document in its place), the root of all leaves against the
/// checkpoint's, and with `previous` (a signed checkpoint note of the same log) that the log
/// extends it: the root of its first M leaves is the previous root, M ≤ N.
pub fn verify_bundle(
    bundle: &Bundle,
    verifier: &Verifier,
    previous: Option<&str>,
) -> Result<Verified, BundleError> {
    if bundle.format != BUNDLE_FORMAT {
        return Err(BundleError::UnknownFormat(bundle.format.clone()));
    }
    let checkpoint = open_checkpoint(&bundle.checkpoint, verifier).map_err(BundleError::Checkpoint)?;
    let origin = org_origin(verifier.name(), bundle.organization);
    if checkpoint.origin() != origin {
        return Err(BundleError::WrongOrigin {
            expected: origin,
            found: checkpoint.origin().to_owned(),
        });
    }
    let entries = u64::try_from(bundle.entries.len()).unwrap_or(u64::MAX);
    if checkpoint.size() != entries {
        return Err(BundleError::SizeMismatch {
            origin,
            size: checkpoint.size(),
            entries,
        });
    }
    let stream = StreamId::for_org(bundle.organization).to_string();
    let leaves = bundle
        .entries
        .iter()
        .zip(1u64..)
        .map(|(entry, expected)| leaf_of(entry, expected, &stream))
        .collect::<Result<Vec<Hash>, BundleError>>()?;
    if merkle::root(&leaves) != *checkpoint.root() {
        return Err(BundleError::RootMismatch {
            origin,
            size: checkpoint.size(),
        });
    }
    let extends = previous
        .map(|note| check_extends(note, verifier, &origin, &leaves))
        .transpose()?;
    Ok(Verified {
        organization: bundle.organization,
        checkpoint,
        extends,
    })
}

/// The leaf hash of the entry in place `expected` (its stream version), once the entry holds.
fn leaf_of(entry: &BundleEntry, expected: u64, stream: &str) -> Result<Hash, BundleError> {
    let version = entry.version.0;
    if version != expected {
        return Err(BundleError::NotDense {
            expected,
            found: version,
        });
    }
    let input = B64
        .decode(&entry.leaf_input)
        .map_err(|_| BundleError::LeafInputNotBase64 { version })?;
    if merkle::leaf_input(&entry.leaf) != input {
        return Err(BundleError::LeafInputMismatch { version });
    }
    if entry.leaf.get("leaf").and_then(Value::as_str) != Some(merkle::LEAF_FORMAT) {
        return Err(BundleError::UnknownLeafFormat { version });
    }
    let found_stream = entry.leaf.get("stream_id").and_then(Value::as_str);
    let found_version = entry.leaf.get("stream_version").and_then(Value::as_u64);
    if found_stream != Some(stream) || found_version != Some(version) {
        return Err(BundleError::MisplacedLeaf {
            version,
            found: format!(
                "{} version {}",
                found_stream.unwrap_or("no stream"),
                found_version.map_or_else(|| "none".to_owned(), |v| v.to_string())
            ),
        });
    }
    Ok(merkle::leaf_hash(&input))
}

/// The size of the previous checkpoint `note`, once the log of `leaves` extends it.
fn check_extends(note: &str, verifier: &Verifier, origin: &str, leaves: &[Hash]) -> Result<u64, BundleError> {
    let previous = open_checkpoint(note, verifier).map_err(BundleError::Previous)?;
    if previous.origin() != origin {
        return Err(BundleError::PreviousOtherOrigin {
            expected: origin.to_owned(),
            found: previous.origin().to_owned(),
        });
    }
    let size = u64::try_from(leaves.len()).unwrap_or(u64::MAX);
    let m = previous.size();
    let prefix = usize::try_from(m)
        .ok()
        .and_then(|m| leaves.get(..m))
        .ok_or(BundleError::Shrunk { previous: m, size })?;
    if merkle::root(prefix) != *previous.root() {
        return Err(BundleError::DoesNotExtend { previous: m });
    }
    Ok(m)
}
