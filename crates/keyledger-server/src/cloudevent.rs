//! Stored events as CloudEvents 1.0 (structured JSON) for platform services: the public payload
//! only, so no secret and no wrapped key material leaves keyledger.

use keyledger_domain::{DecodeError, Event, EventId, StreamId};
use keyledger_store::StoredEvent;
use keyledger_store::envelope::canonical_time;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;
use serde::Serialize;
use serde_json::Value;

/// A CloudEvent 1.0 in structured JSON mode (CONTRACT.md "Event stream").
#[derive(Debug, Serialize)]
pub struct CloudEvent {
    pub specversion: &'static str,
    pub id: EventId,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// What the event is about within its source: the organization id for an organization's
    /// stream, the log (`global` or an organization id) for a checkpoint of stream `audit`.
    pub subject: String,
    pub time: String,
    pub datacontenttype: &'static str,
    /// The global position, as a string (CloudEvents sequence extension).
    pub sequence: String,
    /// The public payload: no secret, no wrapped key material.
    pub data: Value,
}

impl CloudEvent {
    /// The CloudEvent of a stored event. Fails only for an event this build cannot decode
    /// (unknown type or future version).
    pub fn of(stored: &StoredEvent) -> Result<Self, DecodeError> {
        let event = stored.decode()?;
        let (source, subject) = source_and_subject(stored.stream_id, &event);
        Ok(Self {
            specversion: "1.0",
            id: stored.event_id,
            source,
            event_type: format!("keyledger.{}.v{}", stored.event_type, event.schema_version()),
            subject,
            time: canonical_time(stored.occurred_at),
            datacontenttype: "application/json",
            sequence: stored.global_position.0.to_string(),
            data: event.public_payload(),
        })
    }
}

/// `source` names the stream (ADR 0025): `keyledger/organizations/<org_id>` or
/// `keyledger/audit`.
fn source_and_subject(stream: StreamId, event: &Event) -> (String, String) {
    match (stream, event) {
        // An organization's release record is about the organization too (ADR 0030).
        (StreamId::Org(org) | StreamId::Releases(org), _) => {
            (format!("keyledger/organizations/{org}"), org.to_string())
        }
        (StreamId::Audit, Event::AuditCheckpointSigned(e)) => ("keyledger/audit".into(), e.log.to_string()),
        // The store puts only checkpoints in `audit` (`StoreError::WrongStreamKind`).
        (StreamId::Audit, _) => ("keyledger/audit".into(), stream.to_string()),
    }
}

/// The CloudEvent of a stored event as a JSON value.
pub fn cloud_event(stored: &StoredEvent) -> Result<Value, DecodeError> {
    let ce = CloudEvent::of(stored)?;
    Ok(serde_json::to_value(ce).unwrap_or(Value::Null))
}

/// The CloudEvent of a stored event as compact JSON text (one line, for SSE `data:`).
pub fn cloud_event_text(stored: &StoredEvent) -> Result<String, DecodeError> {
    let ce = CloudEvent::of(stored)?;
    Ok(serde_json::to_string(&ce).unwrap_or_default())
}

/// Appends the stored event as one Server-Sent Events message (`id: <position>`,
/// `event: <type>`, `data: <CloudEvent JSON>`, blank line) to `out`. Compact JSON holds no line
/// break, so the data is one line.
pub fn write_sse_message(out: &mut Vec<u8>, stored: &StoredEvent) -> Result<(), DecodeError> {
    let ce = CloudEvent::of(stored)?;
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(ce.sequence.as_bytes());
    out.extend_from_slice(b"\nevent: ");
    out.extend_from_slice(stored.event_type.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing to a Vec cannot fail, and a CloudEvent always serializes.
    let _ = serde_json::to_writer(&mut *out, &ce);
    out.extend_from_slice(b"\n\n");
    Ok(())
}

/// How many rendered SSE messages [`Rendered`] keeps.
const RENDERED: usize = 8192;

/// SSE messages rendered recently, by position. Every live stream sends the same events, so
/// each is rendered once, not once per open stream.
#[derive(Debug, Default)]
pub struct Rendered(Mutex<RenderedInner>);

#[derive(Debug, Default)]
struct RenderedInner {
    by_position: HashMap<u64, Bytes>,
    /// Positions in the order they were rendered: the oldest is evicted first.
    order: VecDeque<u64>,
}

impl Rendered {
    /// The SSE message of `stored` ([`write_sse_message`]), rendered at most once while kept.
    pub fn message(&self, stored: &StoredEvent) -> Result<Bytes, DecodeError> {
        let position = stored.global_position.0;
        if let Some(hit) = self.lock().by_position.get(&position) {
            return Ok(hit.clone());
        }
        let mut out = Vec::with_capacity(512);
        write_sse_message(&mut out, stored)?;
        let message = Bytes::from(out);
        let mut inner = self.lock();
        if inner.by_position.insert(position, message.clone()).is_none() {
            inner.order.push_back(position);
        }
        while inner.order.len() > RENDERED {
            if let Some(old) = inner.order.pop_front() {
                inner.by_position.remove(&old);
            }
        }
        Ok(message)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RenderedInner> {
        // The map stays consistent at every await-free step; a panic elsewhere cannot tear it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::testing::Scripted;
    use keyledger_domain::testing::{self, FIXTURE_SECRET};
    use keyledger_domain::{HealthStatus, Plan, Tenant};

    fn history() -> Vec<StoredEvent> {
        keyledger_store::conformance::envelopes(
            testing::cmk_org()
                .run(testing::admin(), |s| {
                    testing::edit_secret_kind(s, "cloud-secret-2")
                })
                .rotate(&testing::key_b())
                .health(HealthStatus::KeyDisabled)
                .plan(Plan::free())
                .switch()
                .run(testing::platform(), |_| Scripted::AddTenant {
                    tenant: Tenant {
                        tenant_id: testing::tenant_id(9),
                        name: "Ops".into(),
                    },
                })
                .events(),
        )
    }

    #[test]
    fn events_have_the_contract_shape() {
        let events = history();
        let ce = cloud_event(&events[2]).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "keyledger.CustomerManagedKeyEnabled.v1");
        assert_eq!(
            ce["source"],
            format!("keyledger/organizations/{}", testing::org_id())
        );
        assert_eq!(ce["subject"], testing::org_id().to_string());
        assert_eq!(ce["sequence"], events[2].global_position.0.to_string());
        assert_eq!(ce["id"], events[2].event_id.to_string());
        assert_eq!(ce["data"]["connection"]["client_secret_set"], true);
    }

    #[test]
    fn a_checkpoint_of_stream_audit_has_the_audit_source_and_its_log_as_subject() {
        use keyledger_domain::{AuditLog, StreamId};
        use keyledger_store::conformance::checkpoint_signed;
        for (log, subject) in [
            (AuditLog::Global, "global".to_owned()),
            (AuditLog::Org(testing::org_id()), testing::org_id().to_string()),
        ] {
            let mut stored = keyledger_store::conformance::envelopes(vec![checkpoint_signed(log, 5).event]);
            stored[0].stream_id = StreamId::Audit;
            let ce = cloud_event(&stored[0]).unwrap();
            assert_eq!(ce["source"], "keyledger/audit");
            assert_eq!(ce["type"], "keyledger.AuditCheckpointSigned.v1");
            assert_eq!(ce["subject"], subject);
            assert_eq!(ce["data"]["tree_size"], 5);
            assert_eq!(ce["data"]["log"], subject);
        }
    }

    #[test]
    fn no_secret_and_no_wrapped_key_material_leaves() {
        for stored in history() {
            let text = cloud_event(&stored).unwrap().to_string();
            for forbidden in [
                FIXTURE_SECRET,
                "cloud-secret-2",
                "sealed",
                "edek",
                "\"ct\"",
                "nonce",
            ] {
                assert!(!text.contains(forbidden), "{forbidden} in {text}");
            }
        }
    }

    #[test]
    fn an_sse_message_carries_position_type_and_the_cloud_event_on_one_line() {
        let events = history();
        let mut out = Vec::new();
        write_sse_message(&mut out, &events[2]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], format!("id: {}", events[2].global_position.0));
        assert_eq!(lines[1], "event: CustomerManagedKeyEnabled");
        let data: Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data, cloud_event(&events[2]).unwrap());
        assert_eq!((lines[3], lines[4]), ("", ""));
    }

    #[test]
    fn a_rendered_message_is_the_same_as_a_fresh_one_and_the_cache_stays_bounded() {
        let events = history();
        let rendered = Rendered::default();
        for stored in &events {
            let mut fresh = Vec::new();
            write_sse_message(&mut fresh, stored).unwrap();
            assert_eq!(rendered.message(stored).unwrap(), fresh);
            assert_eq!(rendered.message(stored).unwrap(), fresh, "from the cache");
        }
        let mut many = events[0].clone();
        for p in 0..(u64::try_from(RENDERED).unwrap() + 10) {
            many.global_position = keyledger_domain::GlobalPosition(1_000_000 + p);
            rendered.message(&many).unwrap();
        }
        let inner = rendered.lock();
        assert_eq!((inner.by_position.len(), inner.order.len()), (RENDERED, RENDERED));
    }

    #[test]
    fn an_unknown_event_type_is_a_typed_error() {
        let mut stored = history().remove(0);
        stored.event_type = "KeyStolen".into();
        assert!(matches!(
            cloud_event(&stored),
            Err(DecodeError::UnknownEventType { .. })
        ));
    }
}
