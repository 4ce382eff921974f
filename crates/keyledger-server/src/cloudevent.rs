//! Stored events as CloudEvents 1.0 (structured JSON) for platform services: the public payload
//! only, so no secret and no wrapped key material leaves keyledger.

use keyledger_domain::envelope::canonical_time;
use keyledger_domain::{DecodeError, StoredEvent};
use serde_json::{Value, json};

/// The CloudEvent of a stored event (CONTRACT.md "Event stream"). Fails only for an event
/// this build cannot decode (unknown type or future version).
pub fn cloud_event(stored: &StoredEvent) -> Result<Value, DecodeError> {
    let event = stored.decode()?;
    let org = stored.stream_id.org_id();
    Ok(json!({
        "specversion": "1.0",
        "id": stored.event_id,
        "source": format!("keyledger/organizations/{org}"),
        "type": format!("keyledger.{}.v{}", stored.event_type, event.schema_version()),
        "subject": org,
        "time": canonical_time(stored.occurred_at),
        "datacontenttype": "application/json",
        "sequence": stored.global_position.0.to_string(),
        "data": event.public_payload(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::testing::{self, FIXTURE_SECRET};
    use keyledger_domain::{CommandKind, HealthStatus, Plan, Tenant};

    fn history() -> Vec<StoredEvent> {
        testing::envelopes(
            testing::cmk_org()
                .run(testing::admin(), |s| {
                    testing::edit_secret_kind(s, "cloud-secret-2")
                })
                .rotate(&testing::key_b())
                .health(HealthStatus::KeyDisabled)
                .plan(Plan::free())
                .switch()
                .run(testing::platform(), |_| CommandKind::AddTenant {
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
