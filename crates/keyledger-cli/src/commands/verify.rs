//! `keyledger verify`: recomputes the hash chains, then holds the store against the signed
//! checkpoints it recorded in stream `audit` (CONTRACT.md "Verifiable audit log"); exit 3
//! names the first bad event, or the organization and the checkpoint that does not hold.
//!
//! The chain catches an edited event; the checkpoints catch what a chain cannot (a deleted
//! tail or stream, a history rewritten with recomputed hashes, swapped positions). The check
//! itself is [`keyledger_audit::store_check`], pure; this module reads for it: stream `audit`,
//! then every event in global order, page by page, and, only when a root does not hold, the
//! events again beside the stored audit tree to name the first differing leaf.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use keyledger_audit::store_check::Located;
use keyledger_audit::{CheckScope, LeafLocator, StoreCheck, StoreCheckReport, Verifier};
use keyledger_domain::{GlobalPosition, OrgId, StreamId, StreamVersion};
use keyledger_postgres::PgProjections;
use keyledger_sqlite::SqliteProjections;
use keyledger_store::merkle::{AuditLog, AuditTrees};
use keyledger_store::{StoredEvent, VerifyScope};

use super::{BATCH, FENCE_WAIT};
use crate::report::{Failure, Outcome, Progress, rate};
use crate::store_url::{Backend, Create, OpenedStore, StoreUrl};

pub(crate) async fn run(
    url: &StoreUrl,
    org: Option<OrgId>,
    verifier: Option<&Verifier>,
) -> Result<Outcome, Failure> {
    let opened = OpenedStore::open(url, super::throwaway_ring(), Create::No).await?;
    let scope = org.map_or(VerifyScope::All, |o| VerifyScope::Stream(StreamId::for_org(o)));
    let progress = Progress::new("verifying", None);
    let report = opened
        .store
        .verify_with_progress(scope, &|n| progress.set(n))
        .await
        .map_err(|e| {
            progress.abandon();
            Failure::new(format!("cannot verify {url}"), &e)
        });
    let report = match report {
        Ok(r) => r,
        Err(f) => {
            opened.close().await;
            return Err(f);
        }
    };
    let n = report.events_checked;
    if let Some(b) = report.first_break {
        opened.close().await;
        progress.abandon();
        eprintln!(
            "keyledger: hash chain broken at stream {}, version {}, event {} (position {}): {}",
            b.stream, b.version, b.event_id, b.position, b.problem
        );
        return Ok(Outcome::ChainBroken);
    }
    let scope = org.map_or(CheckScope::All, CheckScope::Org);
    let checked = hold_checkpoints(&opened, url, scope, verifier, &progress).await;
    opened.close().await;
    let checked = checked.inspect_err(|_| progress.abandon())?;
    let what = org.map_or_else(String::new, |o| format!(" of organization {o}"));
    let Some(first) = checked.first_failure() else {
        let elapsed = progress.elapsed();
        progress.finish(format_args!(
            "verified {n} events{what} in {:.1}s ({} events/s): every hash chain is intact; {}",
            elapsed.as_secs_f64(),
            rate(n, elapsed),
            held(&checked, verifier)
        ));
        return Ok(Outcome::Done);
    };
    progress.abandon();
    let more = match checked.failures.len() - 1 {
        0 => String::new(),
        1 => "; 1 more checkpoint does not hold either".to_owned(),
        k => format!("; {k} more checkpoints do not hold either"),
    };
    let line = format!("keyledger: {first}{more}");
    eprintln!("{}", line.replace(['\n', '\r'], " "));
    Ok(Outcome::CheckpointBroken)
}

/// The success line's second half: how many checkpoints held, and whether their signatures
/// were checked.
fn held(report: &StoreCheckReport, verifier: Option<&Verifier>) -> String {
    let signatures = match verifier {
        Some(v) => format!("their signatures verify with key {}", v.name()),
        None => "signatures not checked (no --verifier-key)".to_owned(),
    };
    match report.held {
        0 => "no signed checkpoint to hold the store against".to_owned(),
        1 => format!("the store holds its 1 signed checkpoint, {signatures}"),
        k => format!(
            "the store holds all {k} signed checkpoints of {} logs, {signatures}",
            report.logs_held
        ),
    }
}

/// Reads stream `audit`, then every event in global order, into a [`StoreCheck`]; names the
/// first differing leaf of each log whose root does not hold.
async fn hold_checkpoints(
    opened: &OpenedStore,
    url: &StoreUrl,
    scope: CheckScope,
    verifier: Option<&Verifier>,
    progress: &Progress,
) -> Result<StoreCheckReport, Failure> {
    let failed = |e: &keyledger_store::StoreError| Failure::new(format!("cannot verify {url}"), e);
    let audit = opened
        .store
        .read_stream(StreamId::Audit, StreamVersion(1))
        .await
        .map_err(|e| failed(&e))?;
    let mut check = StoreCheck::new(scope, verifier, &audit);
    drop(audit);
    let mut pages = Pages::new(opened, url);
    let mut n = 0u64;
    while let Some(page) = pages.next().await? {
        for e in &page {
            check.feed(e);
        }
        n += u64::try_from(page.len()).unwrap_or(u64::MAX);
        progress.set(n);
    }
    let mut report = check.finish();
    let sizes = report.roots_to_locate();
    if !sizes.is_empty() {
        report.apply(&locate(opened, url, &sizes).await?);
    }
    Ok(report)
}

/// The second pass (failures only): each log's events beside the stored audit tree.
async fn locate(
    opened: &OpenedStore,
    url: &StoreUrl,
    sizes: &BTreeMap<AuditLog, u64>,
) -> Result<BTreeMap<AuditLog, Located>, Failure> {
    let trees: Arc<dyn AuditTrees> = match &opened.backend {
        Backend::Sqlite(s) => Arc::new(SqliteProjections::new(s)),
        Backend::Postgres(p) => Arc::new(PgProjections::new(p)),
    };
    let mut tree_sizes = BTreeMap::new();
    for log in sizes.keys() {
        tree_sizes.insert(*log, trees.tree_size(*log).await.map_err(|e| e.to_string()));
    }
    let mut locator = LeafLocator::new(sizes, &tree_sizes);
    let mut pages = Pages::new(opened, url);
    while !locator.done() {
        let Some(page) = pages.next().await? else { break };
        let mut stored = BTreeMap::new();
        for (log, (start, end)) in locator.wanted(&page) {
            let hashes = trees
                .leaf_hashes(log, start, end)
                .await
                .map_err(|e| e.to_string());
            stored.insert(log, hashes);
        }
        locator.feed(&page, &stored);
    }
    Ok(locator.finish())
}

/// Every committed event in global order, a page at a time. On PostgreSQL, `read_all` stops
/// at the reader fence; events committed behind it are waited for (up to [`FENCE_WAIT`]), so
/// that no committed tail is taken for a deleted one.
struct Pages<'a> {
    opened: &'a OpenedStore,
    url: &'a StoreUrl,
    after: GlobalPosition,
    started: Instant,
}

impl<'a> Pages<'a> {
    fn new(opened: &'a OpenedStore, url: &'a StoreUrl) -> Self {
        Self {
            opened,
            url,
            after: GlobalPosition::START,
            started: Instant::now(),
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<StoredEvent>>, Failure> {
        loop {
            let page = self
                .opened
                .store
                .read_all(self.after, BATCH)
                .await
                .map_err(|e| Failure::new(format!("cannot read {}", self.url), &e))?;
            if let Some(last) = page.last() {
                self.after = last.global_position;
                return Ok(Some(page));
            }
            match self.opened.last_position().await? {
                Some(end) if end > self.after => {
                    if self.started.elapsed() > FENCE_WAIT {
                        return Err(Failure::msg(
                            format!("cannot verify {}", self.url),
                            format!(
                                "events after position {} are held back by a transaction left open on the server",
                                self.after
                            ),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ => return Ok(None),
            }
        }
    }
}
