//! The stored event envelope (DESIGN.md §3) and its canonical byte form, over which the
//! [`chain`](crate::chain) computes the per-stream hash chain. Storage encoding, so it lives
//! here and not in the pure domain (ADR 0003).

use std::collections::BTreeSet;
use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use keyledger_domain::actor::{Actor, ActorKind, Role};
use keyledger_domain::event::{DecodeError, Event};
use keyledger_domain::ids::{CommandId, CorrelationId, EventId, GlobalPosition, StreamId, StreamVersion};

/// Who caused an event, as stored. `source_ip` is the client address for HTTP commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeActor {
    pub kind: ActorKind,
    pub id: String,
    pub roles: BTreeSet<Role>,
    #[serde(default)]
    pub source_ip: Option<String>,
}

impl EnvelopeActor {
    pub fn from_actor(actor: &Actor, source_ip: Option<String>) -> Self {
        Self {
            kind: actor.kind,
            id: actor.id.clone(),
            roles: actor.roles.clone(),
            source_ip,
        }
    }
}

/// Metadata the caller gives with each appended event: everything in the envelope that is
/// not the payload, assigned by the store, or (the command id) given once per append.
#[derive(Debug, Clone)]
pub struct EventMetadata {
    pub occurred_at: DateTime<Utc>,
    pub actor: EnvelopeActor,
    pub correlation_id: Option<CorrelationId>,
    pub causation_id: Option<String>,
}

/// One event as stored: the envelope with the payload in its stored (sealed) JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoredEvent {
    pub event_id: EventId,
    pub stream_id: StreamId,
    pub stream_version: StreamVersion,
    /// Assigned by the store at commit; not part of the hash (an import may renumber).
    pub global_position: GlobalPosition,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub actor: EnvelopeActor,
    #[serde(default)]
    pub command_id: Option<CommandId>,
    #[serde(default)]
    pub correlation_id: Option<CorrelationId>,
    #[serde(default)]
    pub causation_id: Option<String>,
    pub payload: Value,
    /// Hex SHA-256 of the previous event of the stream; 64 zeros for version 1.
    pub prev_hash: String,
    /// Hex SHA-256 of [`StoredEvent::canonical_bytes`].
    pub hash: String,
}

/// The `prev_hash` of a stream's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl StoredEvent {
    /// The canonical bytes that are hashed: every envelope field except `global_position`
    /// and `hash`, as JSON with object keys sorted by code point, no insignificant
    /// whitespace, and times as RFC 3339 UTC with microseconds. Independent of serde_json's
    /// map ordering features.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let actor = serde_json::json!({
            "kind": self.actor.kind,
            "id": self.actor.id,
            "roles": self.actor.roles,
            "source_ip": self.actor.source_ip,
        });
        let doc = serde_json::json!({
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "occurred_at": canonical_time(self.occurred_at),
            "actor": actor,
            "command_id": self.command_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
        });
        let mut out = Vec::with_capacity(512);
        write_canonical(&doc, &mut out);
        out
    }

    /// Decodes the payload (upcasting older versions). Protected fields stay sealed.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        Event::decode_ref(&self.event_type, self.schema_version, &self.payload)
    }
}

/// Times are stored with microsecond precision so that every backend round-trips them.
pub fn canonical_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates a time to the stored precision.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

/// Writes `v` as canonical JSON: sorted keys, no whitespace.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    write_canonical_with(v, out, &|_, _| false);
}

/// Writes a replacement for an object and says so, or writes nothing and returns `false`.
pub type ReplaceObject<'a> = &'a dyn Fn(&Map<String, Value>, &mut Vec<u8>) -> bool;

/// Writes one JSON value.
pub type WriteValue<'a> = &'a dyn Fn(&mut Vec<u8>);

/// [`write_canonical`], except that `replace` is offered every object first: when it returns
/// `true` it has written that object's replacement itself, and the walk goes on after it.
pub fn write_canonical_with(v: &Value, out: &mut Vec<u8>, replace: ReplaceObject<'_>) {
    match v {
        Value::Object(map) => {
            if replace(map, out) {
                return;
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical_with(&map[k], out, replace);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_with(item, out, replace);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

/// Writes the members of a canonical JSON object, given in key order: `{"k1":v1,"k2":v2}`.
/// Each value is written by its function.
pub fn write_canonical_members(members: &[(&str, WriteValue<'_>)], out: &mut Vec<u8>) {
    debug_assert!(
        members.windows(2).all(|w| w[0].0 < w[1].0),
        "members out of key order"
    );
    out.push(b'{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        value(out);
    }
    out.push(b'}');
}

/// Writes a serializable value (an id, a number, a string) as canonical JSON.
pub fn write_canonical_value(v: &impl Serialize, out: &mut Vec<u8>) {
    // Envelope fields are plain data: serializing them cannot fail.
    write_canonical(&serde_json::to_value(v).unwrap_or(Value::Null), out);
}

pub fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is fixed (RFC 8259 minimal escapes), so reuse it.
    match serde_json::to_writer(&mut *out, s) {
        Ok(()) => {}
        Err(_) => unreachable!("writing a string to a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        let mut out = Vec::new();
        write_canonical(&json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}}), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#
        );
    }

    #[test]
    fn canonical_time_has_microseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(canonical_time(t), "2026-01-02T03:04:05.123456Z");
    }
}
