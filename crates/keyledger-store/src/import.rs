//! Importing an export: stored envelopes written back verbatim (same ids, versions, command
//! ids, sealed payloads and hashes) under new global positions. What every backend shares:
//! the checks before a batch is written and the command-id results it records.
//!
//! The emptiness rule: an import starts in an empty store. The caller (the CLI) marks the
//! first batch [`ImportBatch::First`], and the backend checks, in the transaction that writes
//! that batch, that the store holds no event at all. Every batch, first or not, is checked
//! event by event: each event must continue its stream (version = head + 1, `prev_hash` = the
//! head's hash) and its hash must be the hash of its content.

use std::collections::HashMap;

use crate::StoredEvent;
use keyledger_domain::{CommandId, StreamId};

use crate::chain::{MAX_EVENTS_PER_APPEND, StreamHead};
use crate::verify::ChainChecker;
use crate::{AppendResult, StoreError};

/// Which batch of an import this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportBatch {
    /// The first batch: the store must hold no event, else [`StoreError::ImportTargetNotEmpty`].
    /// An empty first batch only checks that.
    First,
    /// A later batch of the same import: its events continue the streams already imported.
    Next,
}

/// The most events one import batch may carry (one transaction; on PostgreSQL one
/// transaction id numbers at most 65535 events).
pub const MAX_EVENTS_PER_IMPORT: usize = MAX_EVENTS_PER_APPEND;

/// Checks a batch before anything is written: its size, and that each event continues its
/// stream from `heads` (the stored heads of the batch's streams; a stream not in `heads` is
/// new) with a hash that matches its content. The first bad event is named.
pub fn check_import(heads: HashMap<StreamId, StreamHead>, events: &[StoredEvent]) -> Result<(), StoreError> {
    if events.len() > MAX_EVENTS_PER_IMPORT {
        return Err(StoreError::BatchTooLarge {
            count: events.len(),
            limit: MAX_EVENTS_PER_IMPORT,
        });
    }
    let mut checker = ChainChecker::continuing(heads);
    for e in events {
        if let Some(b) = checker.check(e) {
            return Err(StoreError::ImportRejected {
                stream: b.stream,
                version: b.version,
                event_id: b.event_id,
                problem: b.problem,
            });
        }
    }
    Ok(())
}

/// The command-id results of an imported batch whose events carry their new global positions,
/// in the order the command ids first appear. A command's result spans the consecutive events
/// of its stream that carry its id (an append's events); a later, separate run of the same id
/// is not part of it, as a repeated command id appends nothing.
///
/// A backend stores each result unless the command id is known; when it is known for the same
/// stream and ends right before the result's first version (one append split across two
/// import batches), it extends the stored result to the new last event.
pub fn imported_commands(events: &[StoredEvent]) -> Vec<(CommandId, AppendResult)> {
    let mut out: Vec<(CommandId, AppendResult)> = Vec::new();
    let mut index: HashMap<&CommandId, usize> = HashMap::new();
    for e in events {
        let Some(c) = e.command_id.as_ref() else { continue };
        match index.get(c) {
            Some(&i) => {
                let r = &mut out[i].1;
                if r.stream == e.stream_id && r.last_version.next() == e.stream_version {
                    r.last_version = e.stream_version;
                    r.last_position = e.global_position;
                }
            }
            None => {
                index.insert(c, out.len());
                out.push((
                    c.clone(),
                    AppendResult {
                        stream: e.stream_id,
                        first_version: e.stream_version,
                        last_version: e.stream_version,
                        first_position: e.global_position,
                        last_position: e.global_position,
                        repeat: false,
                    },
                ));
            }
        }
    }
    out
}

/// Merges an imported command result into the one already stored for the same id (see
/// [`imported_commands`]).
pub fn merge_command(stored: &mut AppendResult, imported: &AppendResult) {
    if stored.stream == imported.stream && stored.last_version.next() == imported.first_version {
        stored.last_version = imported.last_version;
        stored.last_position = imported.last_position;
    }
}
