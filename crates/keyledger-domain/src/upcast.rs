//! Upcasters: stored events are never rewritten. An older payload is turned into the current
//! shape on read, one version step at a time.

use serde_json::{Map, Value, json};

use crate::event::{CURRENT_SCHEMA_VERSION, DecodeError};

/// One step: the payload of `event_type` at `from` becomes version `from + 1`.
struct Step {
    event_type: &'static str,
    from: u32,
    apply: fn(Value) -> Result<Value, String>,
}

const STEPS: &[Step] = &[Step {
    event_type: "PlanChanged",
    from: 0,
    apply: plan_changed_v0_to_v1,
}];

/// Brings `payload` from `version` up to [`CURRENT_SCHEMA_VERSION`].
pub(crate) fn to_current(
    event_type: &str,
    mut version: u32,
    mut payload: Value,
) -> Result<Value, DecodeError> {
    while version < CURRENT_SCHEMA_VERSION {
        let step = STEPS
            .iter()
            .find(|s| s.event_type == event_type && s.from == version)
            .ok_or_else(|| DecodeError::NoUpcaster {
                event_type: event_type.to_owned(),
                found: version,
            })?;
        payload = (step.apply)(payload).map_err(|message| DecodeError::Malformed {
            event_type: event_type.to_owned(),
            message: format!("upcasting from v{version}: {message}"),
        })?;
        version += 1;
    }
    Ok(payload)
}

/// PlanChanged v0 (the prototype billing hook) sent bare plan kinds and no reason:
/// `{"from_plan":"enterprise","to_plan":"free"}`. v1 has plan objects and a reason.
fn plan_changed_v0_to_v1(payload: Value) -> Result<Value, String> {
    let obj: Map<String, Value> = match payload {
        Value::Object(o) => o,
        _ => return Err("expected an object".into()),
    };
    let plan = |field: &str| -> Result<Value, String> {
        let kind = obj
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing string field {field}"))?;
        Ok(json!({ "kind": kind }))
    };
    Ok(json!({
        "from": plan("from_plan")?,
        "to": plan("to_plan")?,
        "reason": "unspecified (recorded before reasons were kept)",
    }))
}
