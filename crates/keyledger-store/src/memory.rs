//! The in-memory store, for tests and examples. Same semantics as the durable backends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::StoredEvent;
use async_trait::async_trait;
use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};

use crate::chain::{NewEvent, StreamHead, prepare_append};
use crate::import::{ImportBatch, check_import, imported_commands, merge_command};
use crate::subscribe::{CommitSignal, PollConfig, poll_subscription};
use crate::{AppendResult, EventStore, EventStream, KeyRing, StoreError};

#[derive(Debug, Default)]
struct Inner {
    /// Index `i` holds global position `i + 1`.
    events: Vec<StoredEvent>,
    /// Indexes into `events`, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    commands: HashMap<CommandId, AppendResult>,
}

/// An event store held in memory.
#[derive(Debug, Clone)]
pub struct InMemoryStore {
    inner: Arc<Mutex<Inner>>,
    ring: Arc<KeyRing>,
    signal: CommitSignal,
}

impl Inner {
    fn head(&self, stream: &StreamId) -> Option<StreamHead> {
        self.streams
            .get(stream)
            .and_then(|idx| idx.last())
            .map(|&i| StreamHead {
                version: self.events[i].stream_version,
                hash: self.events[i].hash.clone(),
            })
    }
}

impl InMemoryStore {
    pub fn new(ring: Arc<KeyRing>) -> Self {
        Self {
            inner: Arc::default(),
            ring,
            signal: CommitSignal::default(),
        }
    }

    /// The same events seen through another key ring (tests of a wrong or missing key).
    pub fn with_key_ring(&self, ring: Arc<KeyRing>) -> Self {
        Self {
            inner: self.inner.clone(),
            ring,
            signal: self.signal.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is a push after
        // all checks), so a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Test hook: rewrites one stored event in place, as an attacker with write access to the
    /// storage could.
    #[cfg(feature = "conformance")]
    pub fn tamper(&self, stream: StreamId, version: StreamVersion, f: impl FnOnce(&mut StoredEvent)) {
        let mut inner = self.lock();
        let idx = inner
            .streams
            .get(&stream)
            .and_then(|v| {
                let index = usize::try_from(version.0).ok()?.checked_sub(1)?;
                v.get(index)
            })
            .copied();
        if let Some(i) = idx {
            f(&mut inner.events[i]);
        }
    }

    /// Test hook: every stored event as JSON bytes (what a memory dump would show).
    #[cfg(feature = "conformance")]
    pub fn raw_bytes(&self) -> Vec<u8> {
        let inner = self.lock();
        serde_json::to_vec(&inner.events).unwrap_or_default()
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<AppendResult, StoreError> {
        let result = {
            let mut inner = self.lock();
            if let Some(c) = &command_id
                && let Some(previous) = inner.commands.get(c)
            {
                return previous.for_repeat(c, stream);
            }
            let head = inner.head(&stream).unwrap_or_else(StreamHead::empty);
            let prepared = prepare_append(&self.ring, stream, expected, &head, events, command_id.as_ref())?;
            let first_position =
                GlobalPosition(u64::try_from(inner.events.len()).expect("usize fits in u64") + 1);
            let first_version = head.version.next();
            let mut last_version = first_version;
            for mut e in prepared {
                let idx = inner.events.len();
                e.global_position = GlobalPosition(u64::try_from(idx).expect("usize fits in u64") + 1);
                last_version = e.stream_version;
                inner.events.push(e);
                inner.streams.entry(stream).or_default().push(idx);
            }
            let result = AppendResult {
                stream,
                first_version,
                last_version,
                first_position,
                last_position: GlobalPosition(u64::try_from(inner.events.len()).expect("usize fits in u64")),
                repeat: false,
            };
            if let Some(c) = command_id {
                inner.commands.insert(c, result);
            }
            result
        };
        self.signal.notify();
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .streams
            .get(&stream)
            .map(|idx| {
                idx.iter()
                    .map(|&i| &inner.events[i])
                    .filter(|e| e.stream_version >= from)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let inner = self.lock();
        let start = usize::try_from(after.0)
            .unwrap_or(usize::MAX)
            .min(inner.events.len());
        let end = start.saturating_add(limit).min(inner.events.len());
        Ok(inner.events[start..end].to_vec())
    }

    async fn import(&self, events: Vec<StoredEvent>, batch: ImportBatch) -> Result<usize, StoreError> {
        let count = events.len();
        {
            let mut inner = self.lock();
            if batch == ImportBatch::First && !inner.events.is_empty() {
                return Err(StoreError::ImportTargetNotEmpty);
            }
            let heads = events
                .iter()
                .filter_map(|e| inner.head(&e.stream_id).map(|h| (e.stream_id, h)))
                .collect();
            check_import(heads, &events)?;
            let start = inner.events.len();
            for mut e in events {
                let idx = inner.events.len();
                e.global_position = GlobalPosition(u64::try_from(idx).expect("usize fits in u64") + 1);
                inner.streams.entry(e.stream_id).or_default().push(idx);
                inner.events.push(e);
            }
            for (c, result) in imported_commands(&inner.events[start..]) {
                inner
                    .commands
                    .entry(c)
                    .and_modify(|r| merge_command(r, &result))
                    .or_insert(result);
            }
        }
        if count > 0 {
            self.signal.notify();
        }
        Ok(count)
    }

    fn subscribe(&self, after: GlobalPosition) -> EventStream {
        poll_subscription(self.clone(), after, &self.signal, PollConfig::default())
    }

    fn key_ring(&self) -> &KeyRing {
        &self.ring
    }
}
