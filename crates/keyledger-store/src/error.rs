//! Typed errors of the store port. Callers branch on the variant, never on the message text.

use keyledger_domain::{CommandId, DecodeError, EventId, GlobalPosition, StreamId, StreamVersion};

use crate::verify::ChainProblem;

/// A boxed error from a storage backend (sqlx, IO).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream is not at the expected version: another command appended first. Reload the
    /// stream, decide again and retry (HTTP: 412 `version_mismatch` when the caller gave
    /// `If-Match`, otherwise retry internally).
    #[error("stream {stream} is at version {actual}, not the expected {expected}")]
    Conflict {
        stream: StreamId,
        expected: StreamVersion,
        actual: StreamVersion,
    },
    /// The command id was already used by an append to another stream, so it cannot name this
    /// append. Nothing was stored, and the earlier append is not this command's result. The
    /// caller reused an idempotency key for another command: refuse the request (HTTP: 409
    /// `idempotency_key_reused`) and do not retry with the same id. Never treat the earlier
    /// result as this append's.
    #[error("command id {command_id} was used on {other_stream}, not on {stream}")]
    CommandIdReused {
        command_id: CommandId,
        /// The stream this append was for.
        stream: StreamId,
        /// The stream the command id was first appended to.
        other_stream: StreamId,
    },
    /// An append with no events. A caller bug: a command that decides nothing appends nothing.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// An event appended to a stream of another kind (ADR 0025): an organization event in
    /// `audit`, or a checkpoint in an organization's stream. Nothing was stored. A caller bug.
    #[error("{event_type} does not belong in stream {stream}")]
    WrongStreamKind {
        stream: StreamId,
        event_type: &'static str,
    },
    /// More events in one append than the backend accepts in one transaction. Split the command.
    #[error("an append holds {count} events, more than the limit of {limit}")]
    BatchTooLarge { count: usize, limit: usize },
    /// A protected field could not be sealed before storing. Nothing was stored. Check the
    /// internal key ring; this is an operator problem, not a client one.
    #[error("cannot seal {field} of event {version} of {stream}: {source}")]
    Seal {
        stream: StreamId,
        version: StreamVersion,
        field: String,
        #[source]
        source: SealError,
    },
    /// A stored protected field could not be opened: the internal key is missing from the ring
    /// or is the wrong one. Restore the key ring file; do not treat the event as empty.
    #[error("cannot open {field} of {stream} version {version} (event {event_id}): {source}")]
    Open {
        stream: StreamId,
        version: StreamVersion,
        event_id: EventId,
        field: String,
        #[source]
        source: OpenError,
    },
    /// A stored event cannot be decoded by this build (unknown type, future schema version,
    /// malformed payload). Do not skip it: upgrade keyledger or investigate the log.
    #[error("cannot decode {stream} version {version} (event {event_id}): {source}")]
    Decode {
        stream: StreamId,
        version: StreamVersion,
        event_id: EventId,
        #[source]
        source: DecodeError,
    },
    /// A stored row cannot be read back as an envelope (tampering or a bug). Run `verify` and
    /// investigate; the position names the row.
    #[error("stored row at position {position} is unreadable: {detail}")]
    Corrupt {
        position: GlobalPosition,
        detail: String,
    },
    /// The first batch of an import ([`ImportBatch::First`](crate::ImportBatch)) found events in
    /// the store. Nothing was stored. Import into a fresh store: a new SQLite file or an empty
    /// PostgreSQL database.
    #[error("the target store is not empty: an import needs a store with no events")]
    ImportTargetNotEmpty,
    /// An imported envelope does not hold: its hash is not the hash of its content, or it does
    /// not continue its stream (version not the stream's last + 1, `prev_hash` not that event's
    /// hash). Nothing of the batch was stored. The export was altered, truncated or reordered,
    /// or the target already holds events of the stream: re-export and import into a fresh
    /// store.
    #[error("cannot import {stream} version {version} (event {event_id}): {problem}")]
    ImportRejected {
        stream: StreamId,
        version: StreamVersion,
        event_id: EventId,
        problem: ChainProblem,
    },
    /// No connection to the backend came free in time (every pooled connection was busy, or
    /// the database did not answer). Nothing was done. Retry after a short pause (HTTP: 503
    /// `store_unavailable` with `Retry-After`); if it lasts, the pool is too small for the load
    /// (`store.max_connections`) or the database is down.
    #[error("no connection to the event store in time")]
    Unavailable(#[source] BoxError),
    /// The backend failed (connection lost, disk full). Usually transient: retry
    /// with backoff; the append either committed whole or not at all, and a retry with the same
    /// command id is safe.
    #[error("storage backend error")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        StoreError::Backend(e.into())
    }
}

/// Why a protected field could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The field was already sealed or redacted when it reached the store. Callers append
    /// events with open protected fields; a sealed value is bound to another position.
    #[error("the field is not open")]
    NotOpen,
    /// The cipher refused (never expected with a valid key). Treat as a bug.
    #[error("encryption failed")]
    Cipher,
    /// The sealed event could not be serialized (a bug in the event type).
    #[error("payload serialization failed: {0}")]
    Serialize(String),
}

/// Why a sealed field could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The key id is not in the ring: the ring file lacks a key that sealed stored data.
    /// Restore the key from backup.
    #[error("internal key {kid:?} is not in the key ring")]
    UnknownKey { kid: String },
    /// Authentication failed: the key with this id is not the one that sealed the value, or
    /// the ciphertext (or its stream, version or field) was altered.
    #[error("authentication failed with internal key {kid:?}")]
    Authentication { kid: String },
    /// The nonce does not have 96 bits: the stored value is corrupt.
    #[error("bad nonce length {0}")]
    BadNonce(usize),
    /// The clear bytes are not a valid value for the field (e.g. a secret that is not UTF-8).
    #[error("opened bytes are not a valid value of the field")]
    InvalidValue,
}

/// Why the internal key ring file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// Reading or writing the file failed. Check the path and its permissions.
    #[error("key ring file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file can be read by group or others. Fix it with `chmod 600`; keyledger refuses to
    /// use keys that may have leaked.
    #[error("key ring file {path} has mode {mode:o}; it must be 600")]
    InsecurePermissions { path: String, mode: u32 },
    /// The file is not a valid key ring (bad JSON, wrong key length, duplicate ids, no key).
    /// The detail never contains key material.
    #[error("key ring file {path} is invalid: {detail}")]
    Invalid { path: String, detail: String },
}
