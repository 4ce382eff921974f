//! `keyledger events export` and `events import`: the stored envelopes as JSON lines, with
//! their protected fields still sealed.

use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, ErrorKind, Write as _};
use std::path::Path;

use keyledger_domain::GlobalPosition;
use keyledger_store::ImportBatch;
use keyledger_store::StoredEvent;
use keyledger_store::verify::ChainChecker;

use super::BATCH;
use crate::report::{Failure, Outcome, Progress, rate};
use crate::store_url::{Create, OpenedStore, StoreUrl};

/// Writes every event after `after` to stdout, one JSON envelope a line, page by page.
pub(crate) async fn export(url: &StoreUrl, after: u64) -> Result<Outcome, Failure> {
    let opened = OpenedStore::open(url, super::throwaway_ring(), Create::No).await?;
    let started = std::time::Instant::now();
    let mut out = BufWriter::new(std::io::stdout());
    let mut after = GlobalPosition(after);
    let mut n: u64 = 0;
    let written = loop {
        let page = opened
            .store
            .read_all(after, BATCH)
            .await
            .map_err(|e| Failure::new(format!("cannot read {url}"), &e))?;
        let Some(last) = page.last() else {
            // The end, unless the fence still holds committed events back: wait for them, so
            // the export holds everything committed before it ended.
            match opened.last_position().await? {
                Some(end) if end > after => {
                    if started.elapsed() > super::FENCE_WAIT {
                        return Err(Failure::msg(
                            format!("cannot export {url}"),
                            format!(
                                "events after position {after} are held back by a transaction left open on the server"
                            ),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                _ => break out.flush(),
            }
        };
        after = last.global_position;
        let mut write = || -> std::io::Result<()> {
            for e in &page {
                serde_json::to_writer(&mut out, e)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            break Err(e);
        }
        n += u64::try_from(page.len()).expect("a page length fits in u64");
    };
    opened.close().await;
    match written {
        Ok(()) => {}
        // The reader went away (`| head`): not a failure of the export.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(Outcome::Done),
        Err(e) => return Err(Failure::new("cannot write to standard output", &e)),
    }
    let elapsed = started.elapsed();
    eprintln!(
        "exported {n} events in {:.1}s ({} events/s)",
        elapsed.as_secs_f64(),
        rate(n, elapsed)
    );
    Ok(Outcome::Done)
}

/// Imports an export into an empty store: checks the whole file first (every line parses,
/// every chain holds), so a bad file stores nothing, then writes it in batches.
pub(crate) async fn import(url: &StoreUrl, file: &Path) -> Result<Outcome, Failure> {
    let what = format!("cannot import {} into {url}", file.display());
    let opened = OpenedStore::open(url, super::throwaway_ring(), Create::IfMissing).await?;
    // Fail fast on a non-empty store; the first batch checks again in its transaction.
    opened
        .store
        .import(Vec::new(), ImportBatch::First)
        .await
        .map_err(|e| Failure::new(&what, &e))?;
    let total = check_file(file).map_err(|cause| Failure::msg(&what, cause))?;

    let progress = Progress::new("importing", Some(total));
    let mut imported: u64 = 0;
    let mut batch_kind = ImportBatch::First;
    let mut batch = Vec::with_capacity(BATCH);
    let mut lines = EventLines::open(file).map_err(|cause| Failure::msg(&what, cause))?;
    loop {
        let next = lines.next_event().map_err(|cause| Failure::msg(&what, cause))?;
        let end = next.is_none();
        batch.extend(next.map(|(_, e)| e));
        if batch.len() == BATCH || (end && !batch.is_empty()) {
            let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let n = opened.store.import(events, batch_kind).await.map_err(|e| {
                progress.abandon();
                let mut f = Failure::new(&what, &e);
                if imported > 0 {
                    f = Failure::msg(
                        &what,
                        format!(
                            "{}; {imported} events were imported before: start again with a fresh store",
                            f.cause()
                        ),
                    );
                }
                f
            })?;
            imported += u64::try_from(n).expect("a batch length fits in u64");
            batch_kind = ImportBatch::Next;
            progress.set(imported);
        }
        if end {
            break;
        }
    }
    opened.close().await;
    let elapsed = progress.elapsed();
    progress.finish(format_args!(
        "imported {imported} events in {:.1}s ({} events/s)",
        elapsed.as_secs_f64(),
        rate(imported, elapsed)
    ));
    Ok(Outcome::Done)
}

/// The first pass: every line is an envelope and every stream's chain holds from its first
/// event. Returns the number of events.
fn check_file(file: &Path) -> Result<u64, String> {
    let mut lines = EventLines::open(file)?;
    let mut checker = ChainChecker::default();
    while let Some((line, e)) = lines.next_event()? {
        if let Some(b) = checker.check(&e) {
            return Err(format!(
                "line {line}: stream {}, version {}, event {}: {}",
                b.stream, b.version, b.event_id, b.problem
            ));
        }
    }
    Ok(checker.checked())
}

/// The envelopes of an export file, with their line numbers. Blank lines are skipped.
struct EventLines {
    reader: BufReader<File>,
    line: u64,
    text: String,
}

impl EventLines {
    fn open(file: &Path) -> Result<Self, String> {
        let f = File::open(file).map_err(|e| format!("cannot open the file: {e}"))?;
        Ok(Self {
            reader: BufReader::new(f),
            line: 0,
            text: String::new(),
        })
    }

    fn next_event(&mut self) -> Result<Option<(u64, StoredEvent)>, String> {
        loop {
            self.text.clear();
            self.line += 1;
            let read = self
                .reader
                .read_line(&mut self.text)
                .map_err(|e| format!("line {}: {e}", self.line))?;
            if read == 0 {
                return Ok(None);
            }
            if self.text.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&self.text)
                .map(|e| Some((self.line, e)))
                .map_err(|e| format!("line {} is not a stored event: {e}", self.line));
        }
    }
}
