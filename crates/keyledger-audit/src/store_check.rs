//! Holding a store against its own signed checkpoints (`keyledger verify --store`, CONTRACT.md
//! "Verifiable audit log"): the check that catches what the per-stream hash chain cannot, a
//! deleted tail, a deleted stream, a history rewritten with recomputed chain hashes, or
//! events of two streams that swapped global positions.
//!
//! # The algorithm
//!
//! Pure and backend free; the caller does the reads, in this order:
//!
//! 1. **The checkpoints.** Every `AuditCheckpointSigned` event of stream `audit` goes to
//!    [`StoreCheck::new`]. Each is first checked on its own: it decodes, its signed note's body
//!    (`<origin>\n<size>\n<root>\n`) states the event's own `origin`, `tree_size` and
//!    `root_hash`, its origin names its log (`…/org/<org_id>` or `…/global`), and, given a
//!    [`Verifier`], the note carries a valid signature of that key (without one, signatures are
//!    not checked, and the caller must say so). A checkpoint that passes waits, sorted by size,
//!    under its log; one that fails is a [`CheckpointFailure`] at once.
//! 2. **The events, once, in global order** ([`StoreCheck::feed`], page by page from
//!    `read_all`). Each event is a leaf of the global log and of its organization's log
//!    ([`merkle::fed_by`]); only logs with a waiting checkpoint are folded, each into one
//!    [`Frontier`] (O(log n) hashes). Each time a log reaches the size of a waiting checkpoint,
//!    the frontier's root is compared with the signed root, so *every* checkpoint is held, not
//!    only the latest: a rewrite of version 7 fails every checkpoint at size 7 or more.
//! 3. **The end** ([`StoreCheck::finish`]). A checkpoint still waiting is larger than its log:
//!    a deleted tail, or a deleted stream when the log is empty.
//!
//! Memory is O(logs × log n) for the frontiers, plus a few fields per checkpoint (not its
//! note), never O(events). The checkpoints themselves are read whole first, so their number
//! bounds the peak; a checkpoint is one event per grown log per `checkpoint_interval`.
//!
//! # Naming the first differing leaf
//!
//! A root mismatch says that some leaf among the first `n` differs, not which. The store
//! keeps one more witness of the order its events had: the stored audit tree (the `audit_tree`
//! projection, ADR 0024), whose leaf hashes were folded as the events were committed and which
//! nothing rewrites when the log is edited from outside (an edit leaves its checkpoint, the last
//! position, where it was). So for each log with a failed root, [`LeafLocator`] reads the log's
//! events again in global order beside the stored leaf hashes of the same indexes, and names the
//! first leaf whose hash differs: its index, event, stream and version. That is how a *global*
//! mismatch still names an organization: when two organizations' events swap positions, each
//! organization log is intact and only the global order changed, and the first differing global
//! leaf is an event of one of them.
//!
//! The stored tree is evidence, not proof: it lives in the same database. When it is missing
//! or shorter than the checkpoint (never folded, reset, or rebuilt from the edited log), or
//! agrees with the edited log (`keyledger projections rebuild` after the edit), the message says
//! so plainly and names only the checkpoint. The verdict itself never depends on the stored
//! tree: it comes from the events and the signed checkpoints alone.
//!
//! # What this cannot catch
//!
//! A checkpoint deleted from stream `audit` is not held (the remaining ones still are), and
//! deleting stream `audit` altogether leaves nothing to hold the store against. That is why
//! every stream consumer holds the checkpoints as a witness, and why an auditor keeps the
//! checkpoints they were given and checks bundles against them (`keyledger audit verify
//! --previous`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use keyledger_domain::{AuditLog, Event, EventId, GlobalPosition, OrgId, StreamId, StreamVersion};
use keyledger_store::StoredEvent;
use keyledger_store::chain::decode_event;
use keyledger_store::merkle::{self, Frontier, Hash};

use crate::note::{Checkpoint, NoteError, Verifier, global_origin, note_text, open_checkpoint, org_origin};

/// Which checkpoints to hold the store against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckScope {
    /// Every organization's and the global log's.
    All,
    /// One organization's only (the global log's are skipped).
    Org(OrgId),
}

impl CheckScope {
    fn covers(self, log: AuditLog) -> bool {
        match self {
            CheckScope::All => true,
            CheckScope::Org(org) => log == AuditLog::Org(org),
        }
    }
}

/// A checkpoint as recorded in stream `audit`: what it claims, and where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCheckpoint {
    pub log: AuditLog,
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
    pub signed_at: DateTime<Utc>,
    /// Its version in stream `audit`.
    pub audit_version: StreamVersion,
}

/// A checkpoint that does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFailure {
    /// The event of stream `audit` that records it.
    pub audit_version: StreamVersion,
    pub audit_event: EventId,
    /// What it claims; `None` when the event is not a checkpoint at all.
    pub checkpoint: Option<RecordedCheckpoint>,
    pub problem: Problem,
}

impl CheckpointFailure {
    /// The log it is a checkpoint of, when it decoded.
    pub fn log(&self) -> Option<AuditLog> {
        self.checkpoint.as_ref().map(|c| c.log)
    }
}

/// Why a checkpoint does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The event of stream `audit` does not decode as an `AuditCheckpointSigned`.
    NotACheckpoint(String),
    /// The note is malformed, not a checkpoint, or (with a verifier key) not validly signed
    /// by that key: forged, re-signed with another key, or edited.
    Note(NoteError),
    /// The event states another origin, size or root than its signed note, or an origin that
    /// does not name its log.
    Disagrees(&'static str),
    /// The log holds fewer leaves than the checkpoint: a deleted tail, or (0) a deleted stream.
    Short { log_size: u64 },
    /// The root of the log's first `tree_size` leaves is not the signed root: a leaf among
    /// them was rewritten, or moved.
    RootDiffers { first_difference: FirstDifference },
}

/// Where a log with a wrong root first differs from the stored audit tree.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirstDifference {
    /// Not looked for (the caller did not run a [`LeafLocator`]).
    NotLocated,
    /// This leaf's hash differs from the stored tree's leaf at its index.
    Leaf(DifferingLeaf),
    /// The stored tree holds only `tree_size` leaves of the log (0: none), and agrees with the
    /// log on all of them.
    TreeShort { tree_size: u64 },
    /// The stored tree agrees with the log on every leaf the checkpoint covers: it was folded
    /// (or rebuilt) after the change.
    TreeAgrees,
    /// The stored tree could not be read.
    TreeUnreadable(String),
}

/// The first leaf of a log that differs from the stored audit tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifferingLeaf {
    /// 0-based leaf index in its log.
    pub index: u64,
    pub event_id: EventId,
    pub stream: StreamId,
    pub version: StreamVersion,
    pub position: GlobalPosition,
}

/// What [`StoreCheck::finish`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCheckReport {
    /// Checkpoints whose root the store reproduces.
    pub held: u64,
    /// The logs those checkpoints are of.
    pub logs_held: usize,
    /// Events read.
    pub events: u64,
    /// Whether signatures were checked (a verifier key was given).
    pub signatures_checked: bool,
    /// Every checkpoint that does not hold, in the order found.
    pub failures: Vec<CheckpointFailure>,
}

impl StoreCheckReport {
    /// The failure to report first: one naming an organization log, else the first.
    pub fn first_failure(&self) -> Option<&CheckpointFailure> {
        self.failures
            .iter()
            .find(|f| matches!(f.log(), Some(AuditLog::Org(_))))
            .or_else(|| self.failures.first())
    }

    /// The logs with a wrong root, each with the largest failed size: what a
    /// [`LeafLocator`] looks through.
    pub fn roots_to_locate(&self) -> BTreeMap<AuditLog, u64> {
        let mut out: BTreeMap<AuditLog, u64> = BTreeMap::new();
        for f in &self.failures {
            if let (Some(c), Problem::RootDiffers { .. }) = (&f.checkpoint, &f.problem) {
                let size = out.entry(c.log).or_default();
                *size = (*size).max(c.tree_size);
            }
        }
        out
    }

    /// Fills in each root failure's first differing leaf from what `located` found per log.
    pub fn apply(&mut self, located: &BTreeMap<AuditLog, Located>) {
        for f in &mut self.failures {
            let (Some(c), Problem::RootDiffers { first_difference }) = (&f.checkpoint, &mut f.problem) else {
                continue;
            };
            if let Some(l) = located.get(&c.log) {
                *first_difference = l.for_size(c.tree_size);
            }
        }
    }
}

/// The pass over the events (see the module docs).
#[derive(Debug)]
pub struct StoreCheck {
    logs: BTreeMap<AuditLog, LogCheck>,
    failures: Vec<CheckpointFailure>,
    held: u64,
    logs_held: std::collections::BTreeSet<AuditLog>,
    events: u64,
    signatures_checked: bool,
}

/// One log's frontier and its checkpoints not yet reached, largest first.
#[derive(Debug, Default)]
struct LogCheck {
    frontier: Frontier,
    waiting: Vec<(RecordedCheckpoint, EventId)>,
}

impl StoreCheck {
    /// Reads the checkpoints (the events of stream `audit`, in order; other streams' events
    /// are ignored) in `scope`, checking each on its own and, with `verifier`, its signature.
    pub fn new<'a>(
        scope: CheckScope,
        verifier: Option<&Verifier>,
        audit_events: impl IntoIterator<Item = &'a StoredEvent>,
    ) -> Self {
        let mut check = Self {
            logs: BTreeMap::new(),
            failures: Vec::new(),
            held: 0,
            logs_held: Default::default(),
            events: 0,
            signatures_checked: verifier.is_some(),
        };
        for stored in audit_events {
            if stored.stream_id != StreamId::Audit {
                continue;
            }
            let fail = |checkpoint, problem| CheckpointFailure {
                audit_version: stored.stream_version,
                audit_event: stored.event_id,
                checkpoint,
                problem,
            };
            let signed = match decode_event(stored) {
                Ok(Event::AuditCheckpointSigned(c)) => c,
                Ok(other) => {
                    if scope == CheckScope::All {
                        let what = format!("an event of type {}", other.event_type());
                        check.failures.push(fail(None, Problem::NotACheckpoint(what)));
                    }
                    continue;
                }
                Err(e) => {
                    if scope == CheckScope::All {
                        check
                            .failures
                            .push(fail(None, Problem::NotACheckpoint(e.to_string())));
                    }
                    continue;
                }
            };
            if !scope.covers(signed.log) {
                continue;
            }
            let recorded = RecordedCheckpoint {
                log: signed.log,
                origin: signed.origin.clone(),
                tree_size: signed.tree_size,
                root: signed.root_hash.0,
                signed_at: signed.signed_at,
                audit_version: stored.stream_version,
            };
            match check_note(&recorded, &signed.note, verifier) {
                Ok(()) => check
                    .logs
                    .entry(recorded.log)
                    .or_default()
                    .waiting
                    .push((recorded, stored.event_id)),
                Err(problem) => check.failures.push(fail(Some(recorded), problem)),
            }
        }
        for (log, state) in &mut check.logs {
            // Largest first, so the next one due is at the end; stable, so equal sizes keep
            // their order in stream `audit`.
            state.waiting.sort_by_key(|(c, _)| std::cmp::Reverse(c.tree_size));
            // Checkpoints of the empty log are due before any event.
            settle(
                *log,
                state,
                &mut check.held,
                &mut check.logs_held,
                &mut check.failures,
            );
        }
        check
    }

    /// Folds the next event, in global order.
    pub fn feed(&mut self, event: &StoredEvent) {
        self.events += 1;
        let mut leaf = None;
        for log in merkle::fed_by(event.stream_id) {
            let Some(state) = self.logs.get_mut(&log) else {
                continue;
            };
            if state.waiting.is_empty() {
                continue;
            }
            let hash = *leaf.get_or_insert_with(|| merkle::event_leaf_hash(event));
            state.frontier.append(hash, |_, _| {});
            settle(
                log,
                state,
                &mut self.held,
                &mut self.logs_held,
                &mut self.failures,
            );
        }
    }

    /// Every checkpoint still waiting is larger than its log.
    pub fn finish(mut self) -> StoreCheckReport {
        for (log, state) in &mut self.logs {
            let log_size = state.frontier.size();
            for (recorded, event) in state.waiting.drain(..).rev() {
                debug_assert_eq!(recorded.log, *log);
                self.failures.push(CheckpointFailure {
                    audit_version: recorded.audit_version,
                    audit_event: event,
                    checkpoint: Some(recorded),
                    problem: Problem::Short { log_size },
                });
            }
        }
        StoreCheckReport {
            held: self.held,
            logs_held: self.logs_held.len(),
            events: self.events,
            signatures_checked: self.signatures_checked,
            failures: self.failures,
        }
    }
}

/// Compares the root with every waiting checkpoint of the log's current size.
fn settle(
    log: AuditLog,
    state: &mut LogCheck,
    held: &mut u64,
    logs_held: &mut std::collections::BTreeSet<AuditLog>,
    failures: &mut Vec<CheckpointFailure>,
) {
    let size = state.frontier.size();
    let mut root = None;
    while state.waiting.last().is_some_and(|(c, _)| c.tree_size == size) {
        let Some((recorded, event)) = state.waiting.pop() else {
            break;
        };
        let root = *root.get_or_insert_with(|| state.frontier.root());
        if root == recorded.root {
            *held += 1;
            logs_held.insert(log);
        } else {
            failures.push(CheckpointFailure {
                audit_version: recorded.audit_version,
                audit_event: event,
                checkpoint: Some(recorded),
                problem: Problem::RootDiffers {
                    first_difference: FirstDifference::NotLocated,
                },
            });
        }
    }
}

/// Checks a checkpoint on its own: its note (signed by `verifier`, when given) states what
/// the event states, and its origin names its log.
fn check_note(recorded: &RecordedCheckpoint, note: &str, verifier: Option<&Verifier>) -> Result<(), Problem> {
    let body = match verifier {
        Some(v) => open_checkpoint(note, v),
        None => note_text(note).and_then(Checkpoint::parse_body),
    }
    .map_err(Problem::Note)?;
    if body.origin() != recorded.origin {
        return Err(Problem::Disagrees("origin is not its note's"));
    }
    if body.size() != recorded.tree_size {
        return Err(Problem::Disagrees("tree_size is not its note's"));
    }
    if *body.root() != recorded.root {
        return Err(Problem::Disagrees("root_hash is not its note's"));
    }
    let names_its_log = match verifier {
        // The signer name is `audit.origin`, so the origin is known exactly.
        Some(v) => {
            recorded.origin
                == match recorded.log {
                    AuditLog::Global => global_origin(v.name()),
                    AuditLog::Org(org) => org_origin(v.name(), org),
                }
        }
        None => match recorded.log {
            AuditLog::Global => recorded.origin.ends_with("/global"),
            AuditLog::Org(org) => recorded.origin.ends_with(&format!("/org/{org}")),
        },
    };
    if !names_its_log {
        return Err(Problem::Disagrees("origin does not name its log"));
    }
    Ok(())
}

/// What a [`LeafLocator`] found in one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// The first leaf that differs from the stored tree, if any among the leaves compared,
    /// and the stored tree's size.
    Compared {
        differs: Option<DifferingLeaf>,
        tree_size: u64,
    },
    /// The stored tree of this log could not be read.
    Unreadable(String),
}

impl Located {
    /// What it says about a failed checkpoint of `size` leaves.
    fn for_size(&self, size: u64) -> FirstDifference {
        match self {
            Located::Unreadable(e) => FirstDifference::TreeUnreadable(e.clone()),
            Located::Compared {
                differs: Some(leaf), ..
            } if leaf.index < size => FirstDifference::Leaf(leaf.clone()),
            Located::Compared { tree_size, .. } if *tree_size < size => FirstDifference::TreeShort {
                tree_size: *tree_size,
            },
            Located::Compared { .. } => FirstDifference::TreeAgrees,
        }
    }
}

/// The second pass, on failure only: names the first leaf of each log with a wrong root that
/// differs from the stored audit tree (module docs, "Naming the first differing leaf").
///
/// Page by page, in global order: [`LeafLocator::wanted`] says which stored leaf hashes the
/// page needs (one range per log), the caller reads them ([`merkle::AuditTrees::leaf_hashes`])
/// and hands page and hashes to [`LeafLocator::feed`]. Memory: one page of hashes per log.
#[derive(Debug)]
pub struct LeafLocator {
    logs: BTreeMap<AuditLog, Locating>,
}

#[derive(Debug)]
struct Locating {
    /// Leaves to compare: the checkpoint's size, or the stored tree's when smaller.
    limit: u64,
    tree_size: u64,
    /// The index of the log's next leaf.
    next: u64,
    differs: Option<DifferingLeaf>,
    unreadable: Option<String>,
}

impl Locating {
    fn done(&self) -> bool {
        self.differs.is_some() || self.unreadable.is_some() || self.next >= self.limit
    }
}

impl LeafLocator {
    /// Looks through the first `size` leaves of each log in `sizes` (from
    /// [`StoreCheckReport::roots_to_locate`]), whose stored trees hold `tree_sizes` leaves
    /// (`Err`: the size could not be read).
    pub fn new(
        sizes: &BTreeMap<AuditLog, u64>,
        tree_sizes: &BTreeMap<AuditLog, Result<u64, String>>,
    ) -> Self {
        let logs = sizes
            .iter()
            .map(|(log, size)| {
                let (tree_size, unreadable) = match tree_sizes.get(log) {
                    Some(Ok(n)) => (*n, None),
                    Some(Err(e)) => (0, Some(e.clone())),
                    None => (0, None),
                };
                let state = Locating {
                    limit: (*size).min(tree_size),
                    tree_size,
                    next: 0,
                    differs: None,
                    unreadable,
                };
                (*log, state)
            })
            .collect();
        Self { logs }
    }

    /// Whether every log is settled: no more pages are needed.
    pub fn done(&self) -> bool {
        self.logs.values().all(Locating::done)
    }

    /// The stored leaf ranges `[start, end)` that `page` (the next events in global order)
    /// needs, per log.
    pub fn wanted(&self, page: &[StoredEvent]) -> BTreeMap<AuditLog, (u64, u64)> {
        let mut counts: BTreeMap<AuditLog, u64> = BTreeMap::new();
        for e in page {
            for log in merkle::fed_by(e.stream_id) {
                if self.logs.get(&log).is_some_and(|s| !s.done()) {
                    *counts.entry(log).or_default() += 1;
                }
            }
        }
        counts
            .into_iter()
            .filter_map(|(log, n)| {
                let s = &self.logs[&log];
                let end = (s.next + n).min(s.limit);
                (s.next < end).then_some((log, (s.next, end)))
            })
            .collect()
    }

    /// Compares `page` with the stored leaf hashes read for it: `stored[log]` holds the range
    /// [`LeafLocator::wanted`] gave, or an error when it could not be read.
    pub fn feed(&mut self, page: &[StoredEvent], stored: &BTreeMap<AuditLog, Result<Vec<Hash>, String>>) {
        let mut starts: BTreeMap<AuditLog, u64> = BTreeMap::new();
        for e in page {
            let mut leaf = None;
            for log in merkle::fed_by(e.stream_id) {
                let Some(s) = self.logs.get_mut(&log) else {
                    continue;
                };
                if s.done() {
                    continue;
                }
                let start = *starts.entry(log).or_insert(s.next);
                let index = s.next;
                s.next += 1;
                let hashes = match stored.get(&log) {
                    Some(Ok(h)) => h,
                    Some(Err(e)) => {
                        s.unreadable = Some(e.clone());
                        continue;
                    }
                    None => {
                        s.unreadable = Some(format!("leaf {index} was not read"));
                        continue;
                    }
                };
                let Some(stored_leaf) = usize::try_from(index - start).ok().and_then(|i| hashes.get(i))
                else {
                    s.unreadable = Some(format!("leaf {index} is missing"));
                    continue;
                };
                if *leaf.get_or_insert_with(|| merkle::event_leaf_hash(e)) != *stored_leaf {
                    s.differs = Some(DifferingLeaf {
                        index,
                        event_id: e.event_id,
                        stream: e.stream_id,
                        version: e.stream_version,
                        position: e.global_position,
                    });
                }
            }
        }
    }

    /// What was found per log.
    pub fn finish(self) -> BTreeMap<AuditLog, Located> {
        self.logs
            .into_iter()
            .map(|(log, s)| {
                let found = match s.unreadable {
                    Some(e) => Located::Unreadable(e),
                    None => Located::Compared {
                        differs: s.differs,
                        tree_size: s.tree_size,
                    },
                };
                (log, found)
            })
            .collect()
    }
}

/// One line: `organization <org>: checkpoint <origin> at size 12 (signed <time>, stream audit
/// version 3) does not hold: …`, or `global log: …`.
impl fmt::Display for CheckpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(c) = &self.checkpoint else {
            let Problem::NotACheckpoint(why) = &self.problem else {
                return write!(f, "stream audit version {}: {}", self.audit_version, self.problem);
            };
            return write!(
                f,
                "stream audit version {} (event {}) is not a checkpoint: {why}",
                self.audit_version, self.audit_event
            );
        };
        match c.log {
            AuditLog::Org(org) => write!(f, "organization {org}: ")?,
            AuditLog::Global => f.write_str("global log: ")?,
        }
        write!(
            f,
            "checkpoint {} at size {} (signed {}, stream audit version {}) does not hold: ",
            c.origin,
            c.tree_size,
            c.signed_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            c.audit_version
        )?;
        let events = match c.log {
            AuditLog::Org(_) => "events of its stream",
            AuditLog::Global => "events",
        };
        match &self.problem {
            Problem::Short { log_size: 0 } => match c.log {
                AuditLog::Org(_) => f.write_str("the store has no event of its stream (a deleted stream)"),
                AuditLog::Global => f.write_str("the store has no event"),
            },
            Problem::Short { log_size } => {
                write!(f, "the store has only {log_size} {events} (a deleted tail)")
            }
            Problem::RootDiffers { first_difference } => {
                write!(
                    f,
                    "the root of the first {} {events} differs from the signed root",
                    c.tree_size
                )?;
                fmt_difference(f, c.log, first_difference)
            }
            other => other.fmt(f),
        }
    }
}

fn fmt_difference(f: &mut fmt::Formatter<'_>, log: AuditLog, d: &FirstDifference) -> fmt::Result {
    match d {
        FirstDifference::NotLocated => Ok(()),
        FirstDifference::Leaf(leaf) => match (log, leaf.stream) {
            (AuditLog::Org(_), _) => write!(
                f,
                " (first differing leaf: version {}, event {})",
                leaf.version, leaf.event_id
            ),
            (AuditLog::Global, StreamId::Org(org)) => write!(
                f,
                " (first differing leaf: global leaf {}, event {} of organization {org}, version {}, position {})",
                leaf.index, leaf.event_id, leaf.version, leaf.position
            ),
            (AuditLog::Global, stream) => write!(
                f,
                " (first differing leaf: global leaf {}, event {} of stream {stream}, version {}, position {})",
                leaf.index, leaf.event_id, leaf.version, leaf.position
            ),
        },
        FirstDifference::TreeShort { tree_size: 0 } => f.write_str(
            "; the store holds no audit tree of this log to compare with, so the first differing leaf cannot be named",
        ),
        FirstDifference::TreeShort { tree_size } => write!(
            f,
            "; the stored audit tree holds only {tree_size} leaves of this log and agrees with them, so the first \
             differing leaf cannot be named"
        ),
        FirstDifference::TreeAgrees => f.write_str(
            "; the stored audit tree agrees with the events as they are now (it was folded or rebuilt after the \
             change), so the first differing leaf cannot be named",
        ),
        FirstDifference::TreeUnreadable(e) => write!(
            f,
            "; the stored audit tree could not be read ({e}), so the first differing leaf cannot be named"
        ),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotACheckpoint(why) => write!(f, "not a checkpoint: {why}"),
            Problem::Note(e) => e.fmt(f),
            Problem::Disagrees(what) => write!(f, "the event's {what}"),
            Problem::Short { log_size } => write!(f, "the log holds only {log_size} leaves"),
            Problem::RootDiffers { first_difference } => {
                f.write_str("the root differs from the signed root")?;
                fmt_difference(f, AuditLog::Global, first_difference)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyledger_domain::{Actor, RootHash};
    use keyledger_store::conformance::tenant_added;
    use keyledger_store::envelope::{EnvelopeActor, EventMetadata};
    use keyledger_store::{EventStore, InMemoryStore, KeyRing, NewEvent};

    use super::*;
    use crate::AuditSigner;

    const ORIGIN: &str = "keyledger.test";

    /// Two organizations, `n` events each, appended alternately; then signed checkpoints of
    /// each organization log at 2 and `n`, and of the global log at `2n`.
    struct World {
        signer: AuditSigner,
        a: OrgId,
        b: OrgId,
        /// Every event in global order, the checkpoints last.
        events: Vec<StoredEvent>,
    }

    impl World {
        async fn new(n: usize) -> Self {
            let store = InMemoryStore::new(Arc::new(KeyRing::generate()));
            let (a, b) = (OrgId::new_v7(), OrgId::new_v7());
            for i in 0..n {
                for org in [a, b] {
                    let v = StreamVersion(u64::try_from(i).unwrap());
                    store
                        .append(
                            StreamId::for_org(org),
                            v,
                            vec![tenant_added(&format!("t{i}"))],
                            None,
                        )
                        .await
                        .unwrap();
                }
            }
            let signer = AuditSigner::generate(ORIGIN).unwrap();
            let org_events = store.read_all(GlobalPosition::START, 10_000).await.unwrap();
            let mut checkpoints = Vec::new();
            for org in [a, b] {
                let mine: Vec<_> = org_events
                    .iter()
                    .filter(|e| e.stream_id == StreamId::for_org(org))
                    .cloned()
                    .collect();
                for size in [2, n] {
                    checkpoints.push(signed(&signer, AuditLog::Org(org), &mine[..size]));
                }
            }
            checkpoints.push(signed(&signer, AuditLog::Global, &org_events));
            store
                .append(StreamId::Audit, StreamVersion::NONE, checkpoints, None)
                .await
                .unwrap();
            let events = store.read_all(GlobalPosition::START, 10_000).await.unwrap();
            Self { signer, a, b, events }
        }

        fn audit(&self) -> Vec<StoredEvent> {
            self.events
                .iter()
                .filter(|e| e.stream_id == StreamId::Audit)
                .cloned()
                .collect()
        }

        fn check(
            &self,
            scope: CheckScope,
            verifier: Option<&Verifier>,
            events: &[StoredEvent],
        ) -> StoreCheckReport {
            let audit = self.audit();
            let mut check = StoreCheck::new(scope, verifier, &audit);
            for e in events {
                check.feed(e);
            }
            check.finish()
        }

        fn position_of(&self, org: OrgId, version: u64) -> usize {
            self.events
                .iter()
                .position(|e| e.stream_id == StreamId::for_org(org) && e.stream_version.0 == version)
                .unwrap()
        }
    }

    fn signed(signer: &AuditSigner, log: AuditLog, events: &[StoredEvent]) -> NewEvent {
        let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
        let size = u64::try_from(leaves.len()).unwrap();
        let checkpoint = signer
            .sign_log(log, size, merkle::root(&leaves), Utc::now())
            .unwrap();
        NewEvent {
            event: Event::AuditCheckpointSigned(checkpoint),
            metadata: EventMetadata {
                occurred_at: Utc::now(),
                actor: EnvelopeActor::from_actor(&Actor::system(), None),
                correlation_id: None,
                causation_id: None,
            },
        }
    }

    fn only_failure(report: &StoreCheckReport) -> &CheckpointFailure {
        let org_failures: Vec<_> = report
            .failures
            .iter()
            .filter(|f| matches!(f.log(), Some(AuditLog::Org(_))))
            .collect();
        assert_eq!(org_failures.len(), 1, "{:#?}", report.failures);
        org_failures[0]
    }

    #[tokio::test]
    async fn an_intact_store_holds_every_checkpoint() {
        let w = World::new(5).await;
        let report = w.check(CheckScope::All, Some(w.signer.verifier()), &w.events);
        assert!(report.failures.is_empty(), "{:#?}", report.failures);
        assert_eq!((report.held, report.logs_held), (5, 3));
        assert!(report.signatures_checked);
        let report = w.check(CheckScope::Org(w.a), None, &w.events);
        assert!(report.failures.is_empty());
        assert_eq!((report.held, report.logs_held), (2, 1));
        assert!(!report.signatures_checked);
    }

    #[tokio::test]
    async fn a_deleted_tail_is_a_checkpoint_larger_than_its_log() {
        let w = World::new(5).await;
        let mut events = w.events.clone();
        for v in [5, 4] {
            events.remove(w.position_of(w.a, v));
        }
        let report = w.check(CheckScope::All, None, &events);
        let failure = only_failure(&report);
        assert_eq!(failure.problem, Problem::Short { log_size: 3 });
        let line = failure.to_string();
        assert!(
            line.starts_with(&format!(
                "organization {}: checkpoint {} at size 5 (signed ",
                w.a,
                org_origin(ORIGIN, w.a)
            )),
            "{line}"
        );
        assert!(
            line.ends_with("does not hold: the store has only 3 events of its stream (a deleted tail)"),
            "{line}"
        );
        // The global checkpoint fails too; the organization's is reported first.
        assert_eq!(report.failures.len(), 2);
        assert_eq!(report.first_failure(), Some(failure));
    }

    #[tokio::test]
    async fn a_deleted_stream_fails_every_checkpoint_of_its_log() {
        let w = World::new(4).await;
        let events: Vec<_> = w
            .events
            .iter()
            .filter(|e| e.stream_id != StreamId::for_org(w.b))
            .cloned()
            .collect();
        let report = w.check(CheckScope::Org(w.b), None, &events);
        assert_eq!(report.failures.len(), 2, "{:#?}", report.failures);
        for f in &report.failures {
            assert_eq!(f.problem, Problem::Short { log_size: 0 });
            assert!(f.to_string().contains("(a deleted stream)"), "{f}");
        }
    }

    #[tokio::test]
    async fn a_rewritten_event_fails_the_checkpoints_that_cover_it_and_is_named_by_the_stored_tree() {
        let w = World::new(5).await;
        let mut events = w.events.clone();
        let at = w.position_of(w.a, 3);
        events[at].payload["name"] = "rewritten".into();
        let mut report = w.check(CheckScope::All, None, &events);
        // Size 2 still holds; size 5 of org a and the global checkpoint do not.
        assert_eq!(report.held, 3);
        let failure = only_failure(&report).clone();
        assert!(matches!(failure.problem, Problem::RootDiffers { .. }));

        // The stored tree was folded before the rewrite.
        let sizes = report.roots_to_locate();
        assert_eq!(sizes.len(), 2);
        let located = locate(&w.events, &events, &sizes, 3);
        report.apply(&located);
        let line = report.first_failure().unwrap().to_string();
        assert!(
            line.ends_with(&format!(
                "the root of the first 5 events of its stream differs from the signed root (first differing leaf: \
                 version 3, event {})",
                events[at].event_id
            )),
            "{line}"
        );
        let global = report
            .failures
            .iter()
            .find(|f| f.log() == Some(AuditLog::Global))
            .unwrap();
        assert!(
            global
                .to_string()
                .contains(&format!("of organization {}, version 3", w.a)),
            "{global}"
        );
    }

    #[tokio::test]
    async fn swapped_positions_fail_only_the_global_checkpoint_and_the_stored_tree_names_the_organization() {
        let w = World::new(4).await;
        let mut events = w.events.clone();
        // Version 2 of a and of b are neighbours: each stream keeps its order.
        let (i, j) = (w.position_of(w.a, 2), w.position_of(w.b, 2));
        assert_eq!(i + 1, j);
        events.swap(i, j);
        let mut report = w.check(CheckScope::All, None, &events);
        assert_eq!(report.held, 4);
        assert_eq!(report.failures.len(), 1);
        let located = locate(&w.events, &events, &report.roots_to_locate(), 1);
        report.apply(&located);
        let line = report.failures[0].to_string();
        assert!(
            line.starts_with("global log: checkpoint keyledger.test/global at size 8"),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(
                "(first differing leaf: global leaf 2, event {} of organization {}, version 2, position {})",
                events[i].event_id, w.b, events[i].global_position
            )),
            "{line}"
        );

        // No stored tree, or one folded after the swap: said plainly.
        let mut plain = w.check(CheckScope::All, None, &events);
        plain.apply(&locate(&w.events, &events, &plain.roots_to_locate(), 0));
        assert!(
            plain.failures[0]
                .to_string()
                .contains("no audit tree of this log")
        );
        let mut plain = w.check(CheckScope::All, None, &events);
        plain.apply(&locate(&events, &events, &plain.roots_to_locate(), 100));
        assert!(
            plain.failures[0]
                .to_string()
                .contains("agrees with the events as they are now")
        );
    }

    #[tokio::test]
    async fn another_key_or_a_note_that_disagrees_with_its_event_fails_the_checkpoint() {
        let w = World::new(3).await;
        let stranger = AuditSigner::generate(ORIGIN).unwrap();
        let report = w.check(CheckScope::All, Some(stranger.verifier()), &w.events);
        assert_eq!(report.held, 0);
        assert_eq!(report.failures.len(), 5);
        let line = report.first_failure().unwrap().to_string();
        assert!(
            line.contains("the checkpoint has no signature from keyledger.test"),
            "{line}"
        );

        // The event's root edited, its note left: caught with and without a key.
        let mut audit = w.audit();
        audit[0].payload["root_hash"] = RootHash([9; 32]).to_base64().into();
        for verifier in [None, Some(w.signer.verifier())] {
            let mut check = StoreCheck::new(CheckScope::All, verifier, &audit);
            w.events.iter().for_each(|e| check.feed(e));
            let report = check.finish();
            assert_eq!(report.failures.len(), 1);
            assert_eq!(
                report.failures[0].problem,
                Problem::Disagrees("root_hash is not its note's")
            );
        }
    }

    /// Runs a [`LeafLocator`] over `events` against a stored tree folded from `folded` (its
    /// first `tree_pages` × 3 events; 0: no tree), pages of 3.
    fn locate(
        folded: &[StoredEvent],
        events: &[StoredEvent],
        sizes: &BTreeMap<AuditLog, u64>,
        tree_pages: usize,
    ) -> BTreeMap<AuditLog, Located> {
        let folded = &folded[..(tree_pages * 3).min(folded.len())];
        let mut leaves: BTreeMap<AuditLog, Vec<Hash>> = BTreeMap::new();
        for e in folded {
            for log in merkle::fed_by(e.stream_id) {
                leaves.entry(log).or_default().push(merkle::event_leaf_hash(e));
            }
        }
        let tree_sizes = sizes
            .keys()
            .map(|log| {
                (
                    *log,
                    Ok(leaves.get(log).map_or(0, |l| u64::try_from(l.len()).unwrap())),
                )
            })
            .collect();
        let mut locator = LeafLocator::new(sizes, &tree_sizes);
        for page in events.chunks(3) {
            if locator.done() {
                break;
            }
            let stored = locator
                .wanted(page)
                .into_iter()
                .map(|(log, (start, end))| {
                    let range = usize::try_from(start).unwrap()..usize::try_from(end).unwrap();
                    (log, Ok(leaves[&log][range].to_vec()))
                })
                .collect();
            locator.feed(page, &stored);
        }
        locator.finish()
    }
}
