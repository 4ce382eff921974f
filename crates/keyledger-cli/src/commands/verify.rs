//! `keyledger verify`: recomputes the hash chains; exit 3 names the first bad event.

use keyledger_domain::{OrgId, StreamId};
use keyledger_store::VerifyScope;

use crate::report::{Failure, Outcome, Progress, rate};
use crate::store_url::{Create, OpenedStore, StoreUrl};

pub(crate) async fn run(url: &StoreUrl, org: Option<OrgId>) -> Result<Outcome, Failure> {
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
        })?;
    opened.close().await;
    let n = report.events_checked;
    let what = org.map_or_else(String::new, |o| format!(" of organization {o}"));
    match report.first_break {
        None => {
            let elapsed = progress.elapsed();
            progress.finish(format_args!(
                "verified {n} events{what} in {:.1}s ({} events/s): every hash chain is intact",
                elapsed.as_secs_f64(),
                rate(n, elapsed)
            ));
            Ok(Outcome::Done)
        }
        Some(b) => {
            progress.abandon();
            eprintln!(
                "keyledger: hash chain broken at stream {}, version {}, event {} (position {}): {}",
                b.stream, b.version, b.event_id, b.position, b.problem
            );
            Ok(Outcome::ChainBroken)
        }
    }
}
