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
        let mut out = Vec::with_capacity(768);
        write_envelope(
            self,
            &[
                ("payload", &|out: &mut Vec<u8>| {
                    write_canonical(&self.payload, out)
                }),
                ("prev_hash", &|out: &mut Vec<u8>| {
                    write_string(&self.prev_hash, out)
                }),
            ],
            &mut out,
        );
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
pub(crate) type ReplaceObject<'a> = &'a dyn Fn(&Map<String, Value>, &mut Vec<u8>) -> bool;

/// Writes one JSON value.
pub(crate) type WriteValue<'a> = &'a dyn Fn(&mut Vec<u8>);

/// [`write_canonical`], except that `replace` is offered every object first: when it returns
/// `true` it has written that object's replacement itself, and the walk goes on after it.
pub(crate) fn write_canonical_with(v: &Value, out: &mut Vec<u8>, replace: ReplaceObject<'_>) {
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
pub(crate) fn write_canonical_members(members: &[(&str, WriteValue<'_>)], out: &mut Vec<u8>) {
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

/// Writes `event`'s envelope as one canonical JSON object: who, what and when (actor, ids,
/// type, versions, time), and the members of `more` (the payload in some form, and whatever
/// else the form holds). The chain's [`StoredEvent::canonical_bytes`] and the audit log's leaf
/// input are the two forms.
pub(crate) fn write_envelope(event: &StoredEvent, more: &[(&str, WriteValue<'_>)], out: &mut Vec<u8>) {
    let actor = &event.actor;
    let write_actor = |out: &mut Vec<u8>| {
        write_canonical_members(
            &[
                ("id", &|out: &mut Vec<u8>| write_string(&actor.id, out)),
                ("kind", &|out: &mut Vec<u8>| {
                    write_canonical_value(&actor.kind, out)
                }),
                ("roles", &|out: &mut Vec<u8>| {
                    write_canonical_value(&actor.roles, out)
                }),
                ("source_ip", &|out: &mut Vec<u8>| {
                    write_canonical_value(&actor.source_ip, out);
                }),
            ],
            out,
        );
    };
    let identity: [(&str, WriteValue<'_>); 10] = [
        ("actor", &write_actor),
        ("causation_id", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.causation_id, out);
        }),
        ("command_id", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.command_id, out);
        }),
        ("correlation_id", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.correlation_id, out);
        }),
        ("event_id", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.event_id, out)
        }),
        ("event_type", &|out: &mut Vec<u8>| {
            write_string(&event.event_type, out)
        }),
        ("occurred_at", &|out: &mut Vec<u8>| {
            write_string(&canonical_time(event.occurred_at), out);
        }),
        ("schema_version", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.schema_version, out);
        }),
        ("stream_id", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.stream_id, out)
        }),
        ("stream_version", &|out: &mut Vec<u8>| {
            write_canonical_value(&event.stream_version, out);
        }),
    ];
    let mut members = Vec::with_capacity(identity.len() + more.len());
    members.extend_from_slice(&identity);
    members.extend_from_slice(more);
    members.sort_unstable_by_key(|(key, _)| *key);
    write_canonical_members(&members, out);
}

/// Writes a serializable value (an id, a number, a string) as canonical JSON.
pub(crate) fn write_canonical_value(v: &impl Serialize, out: &mut Vec<u8>) {
    // Envelope fields are plain data: serializing them cannot fail.
    write_canonical(&serde_json::to_value(v).unwrap_or(Value::Null), out);
}

/// Writes `s` as a JSON string.
pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is fixed (RFC 8259 minimal escapes), so reuse it.
    match serde_json::to_writer(&mut *out, s) {
        Ok(()) => {}
        Err(_) => unreachable!("writing a string to a Vec cannot fail"),
    }
}

/// Stored events of any shape, for property tests of the canonical forms.
#[cfg(test)]
pub(crate) mod arbitrary {
    use std::collections::BTreeSet;

    use keyledger_domain::actor::{ActorKind, Role};
    use keyledger_domain::{
        CommandId, CorrelationId, EventId, GlobalPosition, OrgId, StreamId, StreamVersion,
    };
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{EnvelopeActor, StoredEvent};

    /// JSON of any shape, with sealed values `{"sealed": {...}}` among it, and objects
    /// that only look sealed (another key beside it, or a sealed value that is no object).
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            let object = |inner| {
                prop::collection::btree_map(any::<String>(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect()))
            };
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                object(inner.clone()),
                object(inner.clone()).prop_map(|sealed| json!({"sealed": sealed})),
                (object(inner.clone()), inner.clone())
                    .prop_map(|(sealed, other)| json!({"sealed": sealed, "other": other})),
                inner.prop_map(|v| json!({"sealed": v})),
            ]
        })
    }

    pub(crate) fn any_event() -> impl Strategy<Value = StoredEvent> {
        (
            (any::<String>(), any::<Option<String>>(), any::<Option<String>>()),
            (any::<bool>(), any::<String>(), 1u64..u64::MAX / 2, any::<u32>()),
            (any::<String>(), any_json()),
        )
            .prop_map(
                |(
                    (id, source_ip, causation),
                    (with_ids, event_type, version, schema),
                    (prev_hash, payload),
                )| {
                    StoredEvent {
                        event_id: EventId::new_v7(),
                        stream_id: StreamId::for_org(OrgId::new_v7()),
                        stream_version: StreamVersion(version),
                        global_position: GlobalPosition(version),
                        event_type,
                        schema_version: schema,
                        occurred_at: chrono::Utc::now(),
                        actor: EnvelopeActor {
                            kind: ActorKind::User,
                            id,
                            roles: BTreeSet::from([Role::OrgAdmin, Role::Auditor]),
                            source_ip,
                        },
                        command_id: with_ids.then(|| CommandId::parse("cmd-1").unwrap()),
                        correlation_id: with_ids.then(CorrelationId::new_v7),
                        causation_id: causation,
                        payload,
                        prev_hash,
                        hash: "11".repeat(32),
                    }
                },
            )
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

    /// The canonical bytes as they were first written: a JSON document of the envelope, then
    /// its canonical form. The chain's hashes of stored events depend on these exact bytes.
    fn canonical_bytes_of_the_document(e: &StoredEvent) -> Vec<u8> {
        let doc = json!({
            "event_id": e.event_id,
            "stream_id": e.stream_id,
            "stream_version": e.stream_version,
            "event_type": e.event_type,
            "schema_version": e.schema_version,
            "occurred_at": canonical_time(e.occurred_at),
            "actor": {
                "kind": e.actor.kind,
                "id": e.actor.id,
                "roles": e.actor.roles,
                "source_ip": e.actor.source_ip,
            },
            "command_id": e.command_id,
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
            "payload": e.payload,
            "prev_hash": e.prev_hash,
        });
        let mut out = Vec::new();
        write_canonical(&doc, &mut out);
        out
    }

    proptest::proptest! {
        #[test]
        fn canonical_bytes_equal_those_of_the_envelope_document(e in super::arbitrary::any_event()) {
            proptest::prop_assert_eq!(e.canonical_bytes(), canonical_bytes_of_the_document(&e));
        }
    }

    #[test]
    fn canonical_time_has_microseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(canonical_time(t), "2026-01-02T03:04:05.123456Z");
    }
}
