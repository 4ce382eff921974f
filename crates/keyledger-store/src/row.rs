//! The column form of an envelope shared by the SQL backends: ids and times as text, the actor
//! and the payload as JSON text. Text keeps the payload byte-for-byte as hashed.

use crate::envelope::canonical_time;
use crate::{EnvelopeActor, StoredEvent};
use chrono::{DateTime, Utc};
use keyledger_domain::{CommandId, GlobalPosition, StreamVersion};

use crate::StoreError;

/// An envelope as SQL columns (everything but the global position, which the backend assigns).
#[derive(Debug, Clone)]
pub struct EnvelopeColumns {
    pub event_id: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i64,
    pub occurred_at: String,
    pub actor: String,
    pub command_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
}

impl EnvelopeColumns {
    pub fn from_event(e: &StoredEvent) -> Result<Self, StoreError> {
        Ok(Self {
            event_id: e.event_id.to_string(),
            stream_id: e.stream_id.to_string(),
            stream_version: to_i64(e.stream_version.0)?,
            event_type: e.event_type.clone(),
            schema_version: i64::from(e.schema_version),
            occurred_at: canonical_time(e.occurred_at),
            actor: serde_json::to_string(&e.actor).map_err(StoreError::backend)?,
            command_id: e.command_id.as_ref().map(CommandId::to_string),
            correlation_id: e.correlation_id.map(|c| c.to_string()),
            causation_id: e.causation_id.clone(),
            payload: serde_json::to_string(&e.payload).map_err(StoreError::backend)?,
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        })
    }

    /// Reads a row back. Errors name the position of the unreadable row.
    pub fn into_event(self, position: i64) -> Result<StoredEvent, StoreError> {
        EnvelopeRef {
            event_id: &self.event_id,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            occurred_at: &self.occurred_at,
            actor: &self.actor,
            command_id: self.command_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            causation_id: self.causation_id.as_deref(),
            payload: &self.payload,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
        .into_event(position)
    }
}

/// An envelope's columns borrowed from a database row (no copy of the text before parsing).
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    pub event_id: &'a str,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_type: &'a str,
    pub schema_version: i64,
    pub occurred_at: &'a str,
    pub actor: &'a str,
    pub command_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub payload: &'a str,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

impl EnvelopeRef<'_> {
    /// Parses the row. Errors name the position of the unreadable row.
    pub fn into_event(self, position: i64) -> Result<StoredEvent, StoreError> {
        let pos = GlobalPosition(u64::try_from(position).unwrap_or_default());
        let corrupt = |what: &str, detail: String| StoreError::Corrupt {
            position: pos,
            detail: format!("{what}: {detail}"),
        };
        Ok(StoredEvent {
            event_id: self
                .event_id
                .parse()
                .map_err(|e| corrupt("event_id", format!("{e}")))?,
            stream_id: self
                .stream_id
                .parse()
                .map_err(|e| corrupt("stream_id", format!("{e}")))?,
            stream_version: StreamVersion(
                u64::try_from(self.stream_version).map_err(|e| corrupt("stream_version", e.to_string()))?,
            ),
            global_position: pos,
            event_type: self.event_type.to_owned(),
            schema_version: u32::try_from(self.schema_version)
                .map_err(|e| corrupt("schema_version", e.to_string()))?,
            occurred_at: DateTime::parse_from_rfc3339(self.occurred_at)
                .map_err(|e| corrupt("occurred_at", e.to_string()))?
                .with_timezone(&Utc),
            actor: serde_json::from_str::<EnvelopeActor>(self.actor)
                .map_err(|e| corrupt("actor", e.to_string()))?,
            command_id: self
                .command_id
                .map(CommandId::parse)
                .transpose()
                .map_err(|e| corrupt("command_id", e.to_string()))?,
            correlation_id: self
                .correlation_id
                .map(str::parse)
                .transpose()
                .map_err(|e| corrupt("correlation_id", format!("{e}")))?,
            causation_id: self.causation_id.map(str::to_owned),
            payload: serde_json::from_str(self.payload).map_err(|e| corrupt("payload", e.to_string()))?,
            prev_hash: self.prev_hash.to_owned(),
            hash: self.hash.to_owned(),
        })
    }
}

/// A u64 counter as a SQL integer.
pub fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::backend(format!("{v} exceeds the SQL integer range")))
}
