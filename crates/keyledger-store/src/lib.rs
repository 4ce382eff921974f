//! The event store port of keyledger (DESIGN.md §5) and what every backend shares:
//!
//! - [`EventStore`]: append with optimistic concurrency and idempotent command ids, reads per
//!   stream and in global commit order, a live subscription and chain verification;
//! - [`envelope`]: the stored envelope and the canonical bytes that are hashed;
//! - [`chain`]: the per-stream SHA-256 hash chain and sealing of protected fields;
//! - [`KeyRing`]: the internal AES-256-GCM key ring and its file;
//! - [`InMemoryStore`]: the backend for tests;
//! - `conformance` (feature): one test suite, mounted by every backend.

pub mod chain;
pub mod envelope;
pub mod error;
pub mod import;
pub mod keyring;
pub mod memory;
pub mod merkle;
pub mod private_file;
pub mod provider;
pub mod row;
pub mod subscribe;
pub mod verify;

#[cfg(feature = "conformance")]
pub mod conformance;

use async_trait::async_trait;
use futures::stream::BoxStream;
use keyledger_domain::{CommandId, Event, GlobalPosition, StreamId, StreamVersion};

pub use chain::{NewEvent, StreamHead, envelope_hash, open_event, prepare_append};
pub use envelope::{EnvelopeActor, EventMetadata, GENESIS_HASH, StoredEvent};
pub use error::{BoxError, KeyRingError, OpenError, SealError, StoreError};
pub use import::{ImportBatch, MAX_EVENTS_PER_IMPORT};
pub use keyring::{InternalKey, KeyRing};
pub use memory::InMemoryStore;
pub use verify::{ChainBreak, ChainProblem, VerifyReport, VerifyScope};

/// What an append stored: the versions and global positions of its first and last event.
/// An idempotent repeat of the same command id returns the first append's result, marked
/// `repeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub stream: StreamId,
    pub first_version: StreamVersion,
    pub last_version: StreamVersion,
    pub first_position: GlobalPosition,
    pub last_position: GlobalPosition,
    /// `true` when the command id was stored before: this append stored nothing and the
    /// versions and positions are the first append's.
    pub repeat: bool,
}

impl AppendResult {
    /// This earlier result as the answer to a repeat of `command_id` on `stream`: itself when
    /// it is an append to `stream`, else [`StoreError::CommandIdReused`]. Every backend answers
    /// a known command id through this, so none ever answers with another stream's append.
    pub fn for_repeat(self, command_id: &CommandId, stream: StreamId) -> Result<Self, StoreError> {
        if self.stream == stream {
            Ok(Self { repeat: true, ..self })
        } else {
            Err(StoreError::CommandIdReused {
                command_id: command_id.clone(),
                stream,
                other_stream: self.stream,
            })
        }
    }
}

/// A stream of stored events from [`EventStore::subscribe`]. It ends after yielding an error;
/// resubscribe from the last position seen.
pub type EventStream = BoxStream<'static, Result<StoredEvent, StoreError>>;

/// The store port. Implementations are cheap to clone (they share a pool).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` atomically after `expected`, sealing their protected fields, chaining
    /// their hashes and assigning event ids, versions and global positions. `command_id` is
    /// the append's only command id: every stored event carries it.
    ///
    /// - a stream not at `expected` gives [`StoreError::Conflict`] and stores nothing;
    /// - a `command_id` already seen on `stream` returns that append's result and stores
    ///   nothing;
    /// - a `command_id` already seen on another stream gives [`StoreError::CommandIdReused`]
    ///   and stores nothing: a command id is never answered with another stream's append.
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<AppendResult, StoreError>;

    /// The events of `stream` from version `from` (inclusive; 0 or 1 means all), in order.
    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Up to `limit` events with a global position above `after`, in global order. A reader
    /// that checkpoints the last position it saw never skips an event committed later.
    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// Every event after `after` (catch-up), then new ones as they commit (live), with no gap
    /// and no duplicate.
    fn subscribe(&self, after: GlobalPosition) -> EventStream;

    /// Imports exported envelopes (as [`EventStore::read_all`] returns them) verbatim: same
    /// event ids, streams, versions, command ids, sealed payloads, `prev_hash` and hash, under
    /// new global positions assigned in the given order. Returns how many were stored.
    ///
    /// All or nothing per batch; see [`import`](crate::import) for the rules:
    /// - [`ImportBatch::First`] in a store holding any event gives
    ///   [`StoreError::ImportTargetNotEmpty`];
    /// - an event that does not continue its stream, or whose hash does not match its content,
    ///   gives [`StoreError::ImportRejected`] naming it;
    /// - more than [`MAX_EVENTS_PER_IMPORT`] events give [`StoreError::BatchTooLarge`].
    ///
    /// The command ids of the imported events are recorded, so a repeated command after the
    /// import returns the imported result (with the new positions).
    async fn import(&self, events: Vec<StoredEvent>, batch: ImportBatch) -> Result<usize, StoreError>;

    /// The key ring that seals and opens this store's protected fields.
    fn key_ring(&self) -> &KeyRing;

    /// Decodes a stored event and opens its protected fields.
    fn open(&self, stored: &StoredEvent) -> Result<Event, StoreError> {
        open_event(self.key_ring(), stored)
    }

    /// Recomputes the hash chain of one stream or of every stream and names the first bad
    /// event.
    async fn verify(&self, scope: VerifyScope) -> Result<VerifyReport, StoreError> {
        self.verify_with_progress(scope, &|_| {}).await
    }

    /// [`EventStore::verify`], telling `progress` how many events were checked after each page
    /// (for an operator's progress bar). Backends override this one, not `verify`.
    async fn verify_with_progress(
        &self,
        scope: VerifyScope,
        progress: &verify::Progress<'_>,
    ) -> Result<VerifyReport, StoreError> {
        verify::verify_by_reading(self, scope, progress).await
    }
}
