//! Turning new events into stored envelopes: store-assigned ids and versions, sealing of
//! protected fields, and the per-stream SHA-256 hash chain. Every backend uses these, so the
//! stored form is identical across backends.

use crate::envelope::truncate_to_micros;
use crate::{EventMetadata, GENESIS_HASH, StoredEvent};
use chrono::Utc;
use keyledger_domain::{
    AadScheme, CommandId, Event, EventId, GlobalPosition, ProtectedField, StreamId, StreamVersion,
};
use sha2::{Digest as _, Sha256};

use crate::error::{SealError, StoreError};
use crate::keyring::KeyRing;

/// One event to append: the domain event, with its protected fields open, and its metadata.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    pub metadata: EventMetadata,
}

/// Where a stream ends: its last version and that event's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    pub version: StreamVersion,
    pub hash: String,
}

impl StreamHead {
    /// The head of a stream with no events.
    pub fn empty() -> Self {
        Self {
            version: StreamVersion::NONE,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// The most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// Hex SHA-256 of an envelope's canonical bytes.
pub fn envelope_hash(event: &StoredEvent) -> String {
    hex::encode(Sha256::digest(event.canonical_bytes()))
}

/// The additional authenticated data of a sealed field under `scheme` (ADR 0017). It binds
/// the ciphertext to its stream, version and field, so a sealed value cannot be moved:
/// - [`AadScheme::V1`] names the field by position (`data_keys[0].edek`); only for opening
///   values sealed before the scheme was recorded;
/// - [`AadScheme::V2`] names it by identity (`data_keys[dek_id=7].edek`); every new seal.
pub fn seal_aad(
    scheme: AadScheme,
    stream: &StreamId,
    version: StreamVersion,
    field: &ProtectedField,
) -> Vec<u8> {
    match scheme {
        AadScheme::V1 => legacy_seal_aad(stream, version, &field.by_position()),
        AadScheme::V2 => format!("keyledger-seal/v2|{stream}|{version}|{}", field.by_identity()).into_bytes(),
    }
}

/// The `v1` AAD over a field named by position.
pub fn legacy_seal_aad(stream: &StreamId, version: StreamVersion, field: &str) -> Vec<u8> {
    format!("keyledger-seal/v1|{stream}|{version}|{field}").into_bytes()
}

/// The scheme every new seal uses.
pub const SEAL_AAD_SCHEME: AadScheme = AadScheme::V2;

/// Builds the stored envelopes of an append after `head`, after checking the expected
/// version. Global positions are left at 0 for the backend to assign; they are not hashed.
/// Every event of the append carries `command_id`, the append's one command id.
pub fn prepare_append(
    ring: &KeyRing,
    stream: StreamId,
    expected: StreamVersion,
    head: &StreamHead,
    events: Vec<NewEvent>,
    command_id: Option<&CommandId>,
) -> Result<Vec<StoredEvent>, StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::BatchTooLarge {
            count: events.len(),
            limit: MAX_EVENTS_PER_APPEND,
        });
    }
    if let Some(misplaced) = events.iter().find(|e| e.event.stream_kind() != stream.kind()) {
        return Err(StoreError::WrongStreamKind {
            stream,
            event_type: misplaced.event.event_type(),
        });
    }
    if head.version != expected {
        return Err(StoreError::Conflict {
            stream,
            expected,
            actual: head.version,
        });
    }
    let mut out = Vec::with_capacity(events.len());
    let mut prev_hash = head.hash.clone();
    let mut version = head.version;
    for NewEvent { mut event, metadata } in events {
        version = version.next();
        seal_event(ring, &stream, version, &mut event)?;
        let payload = event.payload_json().map_err(|e| StoreError::Seal {
            stream,
            version,
            field: String::new(),
            source: SealError::Serialize(e.to_string()),
        })?;
        let mut stored = StoredEvent {
            event_id: EventId::new_v7(),
            stream_id: stream,
            stream_version: version,
            global_position: GlobalPosition::START,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at: truncate_to_micros(metadata.occurred_at),
            actor: metadata.actor,
            command_id: command_id.cloned(),
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            payload,
            prev_hash,
            hash: String::new(),
        };
        stored.hash = envelope_hash(&stored);
        prev_hash = stored.hash.clone();
        out.push(stored);
    }
    Ok(out)
}

/// Seals every open protected field of `event` in place.
pub fn seal_event(
    ring: &KeyRing,
    stream: &StreamId,
    version: StreamVersion,
    event: &mut Event,
) -> Result<(), StoreError> {
    let mut failure: Option<(String, SealError)> = None;
    event.for_each_protected(|field, slot| {
        if failure.is_some() {
            return;
        }
        let Some(clear) = slot.clear_bytes() else {
            failure = Some((field.to_string(), SealError::NotOpen));
            return;
        };
        match ring.seal(&seal_aad(SEAL_AAD_SCHEME, stream, version, field), &clear) {
            Ok(mut sealed) => {
                sealed.aad = SEAL_AAD_SCHEME;
                slot.set_sealed(sealed)
            }
            Err(e) => failure = Some((field.to_string(), e)),
        }
    });
    match failure {
        None => Ok(()),
        Some((field, source)) => Err(StoreError::Seal {
            stream: *stream,
            version,
            field,
            source,
        }),
    }
}

/// Decodes a stored event, its protected fields still sealed. The error names the event.
pub fn decode_event(stored: &StoredEvent) -> Result<Event, StoreError> {
    stored.decode().map_err(|source| StoreError::Decode {
        stream: stored.stream_id,
        version: stored.stream_version,
        event_id: stored.event_id,
        source,
    })
}

/// Decodes a stored event and opens its protected fields. Typed errors name the event.
pub fn open_event(ring: &KeyRing, stored: &StoredEvent) -> Result<Event, StoreError> {
    let mut event = decode_event(stored)?;
    let mut failure: Option<(String, crate::error::OpenError)> = None;
    event.for_each_protected(|field, slot| {
        if failure.is_some() {
            return;
        }
        // Redacted values (fixtures, exports) stay redacted: there is nothing to open.
        let Some(sealed) = slot.sealed_box() else { return };
        // Exactly the scheme recorded in the sealed value; no other is tried.
        let aad = seal_aad(sealed.aad, &stored.stream_id, stored.stream_version, field);
        match ring.open(sealed, &aad) {
            Ok(clear) => {
                if !slot.set_clear(clear) {
                    failure = Some((field.to_string(), crate::error::OpenError::InvalidValue));
                }
            }
            Err(e) => failure = Some((field.to_string(), e)),
        }
    });
    match failure {
        None => Ok(event),
        Some((field, source)) => Err(StoreError::Open {
            stream: stored.stream_id,
            version: stored.stream_version,
            event_id: stored.event_id,
            field,
            source,
        }),
    }
}

/// The current time at stored precision (for callers building metadata).
pub fn now_micros() -> chrono::DateTime<Utc> {
    truncate_to_micros(Utc::now())
}
