//! JSON Schemas of the event payloads, as checked in under `schemas/events/`.

use crate::event::{CURRENT_SCHEMA_VERSION, EVENT_TYPES, payload_schema};

/// `(file name, pretty JSON)` for every event type's current schema, e.g.
/// `("PlanChanged.v1.json", "{…}")`.
pub fn event_schema_files() -> Vec<(String, String)> {
    EVENT_TYPES
        .iter()
        .filter_map(|t| {
            let mut schema = payload_schema(t)?;
            schema.insert(
                "$id".into(),
                format!("urn:keyledger:schema:events:{t}:v{CURRENT_SCHEMA_VERSION}").into(),
            );
            let text = serde_json::to_string_pretty(&schema).ok()? + "\n";
            Some((format!("{t}.v{CURRENT_SCHEMA_VERSION}.json"), text))
        })
        .collect()
}
