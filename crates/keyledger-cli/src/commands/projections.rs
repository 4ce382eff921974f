//! `keyledger projections rebuild`: every projection from position 0, reading the log once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use keyledger_domain::{CommandId, GlobalPosition, StreamId, StreamVersion};
use keyledger_projection::{Projection, Runner};
use keyledger_store::StoredEvent;
use keyledger_store::{
    AppendResult, EventStore, EventStream, ImportBatch, KeyRing, NewEvent, StoreError, VerifyReport,
    VerifyScope,
};

use super::BATCH;
use crate::report::{Failure, Outcome, Progress, rate};
use crate::store_url::{Backend, Create, OpenedStore, StoreUrl};

pub(crate) async fn rebuild(url: &StoreUrl, key_file: &Path) -> Result<Outcome, Failure> {
    // Never created here: a new ring could not open what the old one sealed.
    let ring = KeyRing::load(key_file).map_err(|e| Failure::new("cannot load the internal key ring", &e))?;
    let opened = OpenedStore::open(url, Arc::new(ring), Create::No).await?;
    let what = format!("cannot rebuild the projections of {url}");
    // On PostgreSQL, running instances lead each projection under a lease: rebuilding under
    // their feet would interleave two writers. Take every lease, or refuse.
    let mut leases = Vec::new();
    // On SQLite, a server runs the projections of its file without a lease: refuse while one
    // uses it (ADR 0014), and keep a server from starting until the rebuild is done.
    let _writer = match url {
        StoreUrl::Sqlite(path) => {
            Some(keyledger_sqlite::WriterLock::acquire(path).map_err(|e| Failure::msg(&what, e))?)
        }
        StoreUrl::Postgres(_) => None,
    };
    if let (Backend::Postgres(_), StoreUrl::Postgres(raw)) = (&opened.backend, url) {
        for p in Projection::ALL {
            match keyledger_postgres::Lease::try_acquire(raw, p).await {
                Ok(Some(lease)) => leases.push(lease),
                Ok(None) => {
                    return Err(Failure::msg(
                        &what,
                        format!(
                            "projection {} is being run by a keyledger instance; stop the instances first",
                            p.name()
                        ),
                    ));
                }
                Err(e) => return Err(Failure::new(&what, &e)),
            }
        }
    }
    // The rebuild's own writes are fenced on the leases it took, as a leader's are.
    let sink: Arc<dyn keyledger_projection::ProjectionSink> = match &opened.backend {
        Backend::Postgres(pg) => Arc::new(
            leases
                .iter()
                .fold(keyledger_postgres::PgProjections::new(pg), |sink, lease| {
                    sink.fenced(lease)
                }),
        ),
        Backend::Sqlite(_) => opened.sink.clone(),
    };
    let counting = Arc::new(Counting {
        inner: opened.store.clone(),
        read: AtomicU64::new(0),
    });
    let progress = Progress::new("rebuilding", None);
    let result = Runner::rebuild_all(counting.clone(), sink.clone(), BATCH, |_| {
        progress.set(counting.read.load(Ordering::Relaxed))
    })
    .await;
    // The rebuild stops where the fence stopped its reads; fold what was committed before the
    // end too.
    let result = match result {
        Ok(reached) => match opened.last_position().await {
            Ok(Some(end)) if end.0 > reached => catch_up_to(counting.clone(), sink.clone(), end.0).await,
            Ok(_) => Ok(()),
            Err(f) => Err(f),
        },
        Err(e) => Err(Failure::new(&what, &e)),
    };
    for lease in leases {
        lease.release().await;
    }
    opened.close().await;
    if let Err(f) = result {
        progress.abandon();
        return Err(f);
    }
    let n = counting.read.load(Ordering::Relaxed);

    let elapsed = progress.elapsed();
    progress.finish(format_args!(
        "rebuilt {} projections from {n} events in {:.1}s ({} events/s)",
        Projection::ALL.len(),
        elapsed.as_secs_f64(),
        rate(n, elapsed)
    ));
    Ok(Outcome::Done)
}

async fn catch_up_to(
    store: Arc<dyn EventStore>,
    sink: Arc<dyn keyledger_projection::ProjectionSink>,
    end: u64,
) -> Result<(), Failure> {
    for p in Projection::ALL {
        let reached = Runner::new(store.clone(), sink.clone(), p)
            .with_batch(BATCH)
            .catch_up_to(end, super::FENCE_WAIT)
            .await
            .map_err(|e| Failure::new(format!("cannot rebuild {}", p.name()), &e))?;
        if !reached {
            return Err(Failure::msg(
                format!("cannot rebuild {}", p.name()),
                format!("events up to position {end} are held back by a transaction left open on the server"),
            ));
        }
    }
    Ok(())
}

/// The store, counting the events read through `read_all` (the runner reports positions,
/// which on PostgreSQL are not counts).
struct Counting {
    inner: Arc<dyn EventStore>,
    read: AtomicU64,
}

#[async_trait]
impl EventStore for Counting {
    async fn append(
        &self,
        stream: StreamId,
        expected: StreamVersion,
        events: Vec<NewEvent>,
        command_id: Option<CommandId>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events, command_id).await
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_stream(stream, from).await
    }

    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let page = self.inner.read_all(after, limit).await?;
        let read = u64::try_from(page.len()).expect("a page length fits in u64");
        self.read.fetch_add(read, Ordering::Relaxed);
        Ok(page)
    }

    async fn import(&self, events: Vec<StoredEvent>, batch: ImportBatch) -> Result<usize, StoreError> {
        self.inner.import(events, batch).await
    }

    fn subscribe(&self, after: GlobalPosition) -> EventStream {
        self.inner.subscribe(after)
    }

    fn key_ring(&self) -> &KeyRing {
        self.inner.key_ring()
    }

    async fn verify_with_progress(
        &self,
        scope: VerifyScope,
        progress: &keyledger_store::verify::Progress<'_>,
    ) -> Result<VerifyReport, StoreError> {
        self.inner.verify_with_progress(scope, progress).await
    }
}
