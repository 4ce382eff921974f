//! Tamper evidence: recompute the per-stream hash chain and name the first bad event.

use std::collections::HashMap;

use crate::{GENESIS_HASH, StoredEvent};
use keyledger_domain::{EventId, GlobalPosition, StreamId, StreamVersion};

use crate::chain::{StreamHead, envelope_hash};
use crate::{EventStore, StoreError};

/// What to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyScope {
    Stream(StreamId),
    All,
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events_checked: u64,
    /// The first event (in global order) whose chain link does not hold; `None` when intact.
    pub first_break: Option<ChainBreak>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// The first event at which the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub stream: StreamId,
    pub version: StreamVersion,
    pub event_id: EventId,
    pub position: GlobalPosition,
    pub problem: ChainProblem,
}

/// How the chain breaks at an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainProblem {
    /// The stored hash is not the hash of the stored envelope: the event was altered.
    HashMismatch,
    /// `prev_hash` is not the hash of the previous event: an event was altered, removed or
    /// inserted before it.
    PrevHashMismatch,
    /// The version does not follow the previous one: an event is missing.
    VersionGap,
}

impl std::fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainProblem::HashMismatch => "its hash does not match its content",
            ChainProblem::PrevHashMismatch => "its prev_hash is not the hash of the event before it",
            ChainProblem::VersionGap => "its version does not follow the last one of its stream",
        })
    }
}

/// Incremental checker, one link at a time.
#[derive(Debug, Default)]
pub struct ChainChecker {
    heads: HashMap<StreamId, (StreamVersion, String)>,
    checked: u64,
}

impl ChainChecker {
    /// A checker that continues streams from known heads (an import into a store that already
    /// holds the first part of the streams); other streams start at the genesis.
    pub fn continuing(heads: impl IntoIterator<Item = (StreamId, StreamHead)>) -> Self {
        Self {
            heads: heads.into_iter().map(|(s, h)| (s, (h.version, h.hash))).collect(),
            checked: 0,
        }
    }

    /// Checks the next event of its stream; returns the break when the link does not hold.
    pub fn check(&mut self, e: &StoredEvent) -> Option<ChainBreak> {
        self.checked += 1;
        let (last_version, last_hash) = self
            .heads
            .get(&e.stream_id)
            .map(|(v, h)| (*v, h.as_str()))
            .unwrap_or((StreamVersion::NONE, GENESIS_HASH));
        let problem = if e.stream_version != last_version.next() {
            Some(ChainProblem::VersionGap)
        } else if e.prev_hash != last_hash {
            Some(ChainProblem::PrevHashMismatch)
        } else if envelope_hash(e) != e.hash {
            Some(ChainProblem::HashMismatch)
        } else {
            None
        };
        self.heads.insert(e.stream_id, (e.stream_version, e.hash.clone()));
        problem.map(|problem| ChainBreak {
            stream: e.stream_id,
            version: e.stream_version,
            event_id: e.event_id,
            position: e.global_position,
            problem,
        })
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }
}

/// Told the number of events checked so far, after each page of a verification.
pub type Progress<'a> = dyn Fn(u64) + Send + Sync + 'a;

/// Events per page when verifying.
pub const PAGE: usize = 5000;

/// Verification through the read API; works for every backend.
pub async fn verify_by_reading<S: EventStore + ?Sized>(
    store: &S,
    scope: VerifyScope,
    progress: &Progress<'_>,
) -> Result<VerifyReport, StoreError> {
    let mut checker = ChainChecker::default();
    match scope {
        VerifyScope::Stream(stream) => {
            for e in store.read_stream(stream, StreamVersion::NONE).await? {
                if let Some(b) = checker.check(&e) {
                    return Ok(report(&checker, Some(b)));
                }
            }
        }
        VerifyScope::All => return verify_pages(|after| store.read_all(after, PAGE), progress).await,
    }
    progress(checker.checked());
    Ok(report(&checker, None))
}

/// Verifies the whole log read page by page in global order through `next_page(after)`
/// (for backends whose verification reads differently from `read_all`).
pub async fn verify_pages<F, Fut>(
    mut next_page: F,
    progress: &Progress<'_>,
) -> Result<VerifyReport, StoreError>
where
    F: FnMut(GlobalPosition) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<StoredEvent>, StoreError>>,
{
    let mut checker = ChainChecker::default();
    let mut after = GlobalPosition::START;
    loop {
        let page = next_page(after).await?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        for e in &page {
            if let Some(b) = checker.check(e) {
                return Ok(report(&checker, Some(b)));
            }
        }
        progress(checker.checked());
    }
    Ok(report(&checker, None))
}

fn report(checker: &ChainChecker, first_break: Option<ChainBreak>) -> VerifyReport {
    VerifyReport {
        events_checked: checker.checked(),
        first_break,
    }
}
