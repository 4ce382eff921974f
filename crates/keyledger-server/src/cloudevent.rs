//! Stored events as CloudEvents 1.0 (structured JSON) for platform services: the public payload
//! only, so no secret and no wrapped key material leaves keyledger.

use keyledger_domain::{DecodeError, EventId, OrgId};
use keyledger_store::StoredEvent;
use keyledger_store::envelope::canonical_time;
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
    pub subject: OrgId,
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
        let org = stored.stream_id.org_id();
        Ok(Self {
            specversion: "1.0",
            id: stored.event_id,
            source: format!("keyledger/organizations/{org}"),
            event_type: format!("keyledger.{}.v{}", stored.event_type, event.schema_version()),
            subject: org,
            time: canonical_time(stored.occurred_at),
            datacontenttype: "application/json",
            sequence: stored.global_position.0.to_string(),
            data: event.public_payload(),
        })
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
    fn an_unknown_event_type_is_a_typed_error() {
        let mut stored = history().remove(0);
        stored.event_type = "KeyStolen".into();
        assert!(matches!(
            cloud_event(&stored),
            Err(DecodeError::UnknownEventType { .. })
        ));
    }
}
