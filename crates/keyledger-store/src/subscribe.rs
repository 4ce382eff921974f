//! Subscriptions built on `read_all`: catch-up in pages, then live from one shared tail reader
//! per store instance, fanned out to every live subscriber (ADR 0022).
//!
//! - **Catch-up.** A subscriber reads pages after its own position until a page comes back
//!   short: it has reached what the store shows now.
//! - **Live.** One tail task per store instance reads after its own position whenever a commit
//!   signal arrives ([`CommitSignal`]: this process's commits, or a backend notification such
//!   as PostgreSQL's `LISTEN`), or after the poll interval at the latest (commits of another
//!   process with no notification), and broadcasts each page, with the position it was read
//!   after, to every live subscriber. Idle subscribers cost nothing: only the tail wakes. The
//!   tail runs while someone listens and stops when the last subscriber goes.
//! - **No gap, no duplicate.** A subscriber takes a broadcast page only if the page was read
//!   after a position it has already delivered (`page.after <= after`), and then only the events
//!   past its own position. A page read after a later position (a gap), a page it missed
//!   because it fell behind the broadcast buffer (`Lagged`), or a failed tail read sends it back
//!   to catch-up from the store, and it rejoins when a page comes back short. It listens before
//!   its last catch-up read, so a page the tail broadcasts in between is not lost.
//!
//! Every read runs on its own task, so it finishes and gives its connection back whether or not
//! the consumer keeps polling. A consumer that stops polling between items (`ready_chunks`
//! hands over what is buffered as soon as the next read is pending; an SSE client that stops
//! reading) would otherwise keep a suspended read, and its pooled connection, for as long as it
//! works; a projection runner whose commit needs a connection would then wait for the one its
//! own subscription holds, and a pool of N deadlocks once N runners do (ADR 0015).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use keyledger_domain::GlobalPosition;
use tokio::sync::{broadcast, watch};

use crate::{EventStore, EventStream, StoredEvent};

/// Pages the shared tail keeps for subscribers that are still working on earlier ones; one
/// that falls further behind catches up from the store.
const TAIL_PAGES: usize = 64;

/// After a signal that found nothing to read, the tail reads again after the first delay,
/// doubling up to the second, until it finds events (never slower than the poll interval).
const FENCE_RETRY: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Tells subscribers that something committed, and carries the instance's shared tail. Cheap
/// to clone; clones share both.
#[derive(Debug, Clone)]
pub struct CommitSignal {
    tx: Arc<watch::Sender<u64>>,
    /// Commits of this instance only (for a backend that tells other instances).
    local: Arc<watch::Sender<u64>>,
    tail: Arc<Tail>,
}

impl Default for CommitSignal {
    fn default() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self {
            tx: Arc::new(tx),
            local: Arc::new(watch::channel(0).0),
            tail: Arc::new(Tail::default()),
        }
    }
}

impl CommitSignal {
    /// This instance committed: wakes the tail reader (and so every live subscriber), and
    /// whoever watches [`CommitSignal::local_commits`].
    pub fn notify(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
        self.wake();
    }

    /// Another instance committed (a backend notification): wakes the tail reader only.
    pub fn wake(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes with every commit of this instance (not with [`CommitSignal::wake`]).
    pub fn local_commits(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    fn receiver(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// What the shared tail broadcasts.
#[derive(Debug, Clone)]
enum Tailed {
    /// The events `read_all(after, _)` returned, in order.
    Page {
        after: GlobalPosition,
        events: Arc<[StoredEvent]>,
    },
    /// A tail read failed; subscribers read for themselves (and meet the error, if it stays).
    Failed,
}

/// The shared tail of one store instance.
#[derive(Debug)]
struct Tail {
    pages: broadcast::Sender<Tailed>,
    /// The generation of the running tail task, if one runs.
    running: Mutex<Option<u64>>,
    generations: std::sync::atomic::AtomicU64,
}

impl Default for Tail {
    fn default() -> Self {
        Self {
            pages: broadcast::channel(TAIL_PAGES).0,
            running: Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Clears the tail's running mark when its task ends, even when its runtime drops it.
struct Running {
    tail: Arc<Tail>,
    generation: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.tail.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running == Some(self.generation) {
            *running = None;
        }
    }
}

impl Tail {
    /// Starts the tail task reading after `from`, unless one runs. Call after subscribing to
    /// `pages`, so that the task cannot see no listener and stop before this subscriber listens.
    fn ensure_running<S>(
        self: &Arc<Self>,
        store: &S,
        from: GlobalPosition,
        signal: &CommitSignal,
        config: PollConfig,
    ) where
        S: EventStore + Clone + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *running = Some(generation);
        let guard = Running {
            tail: self.clone(),
            generation,
        };
        let (store, mut wake) = (store.clone(), signal.receiver());
        tokio::spawn(async move {
            let tail = guard.tail.clone();
            let mut after = from;
            // Whether a signal woke this read; the re-read delay after an empty signalled read.
            let (mut signalled, mut retry) = (false, None::<Duration>);
            loop {
                {
                    // Stop with the last listener; checked under the lock that starts tails.
                    let mut running = tail.running.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.pages.receiver_count() == 0 {
                        if *running == Some(guard.generation) {
                            *running = None;
                        }
                        return;
                    }
                }
                // Mark the signal seen before reading, so a commit after the read wakes us.
                wake.borrow_and_update();
                let read = {
                    let store = store.clone();
                    NextPage::spawn(async move { store.read_all(after, config.batch).await })
                };
                match read.get().await {
                    Ok(page) if !page.is_empty() => {
                        retry = None;
                        let full = page.len() >= config.batch;
                        let read_after = after;
                        after = page.last().map_or(after, |e| e.global_position);
                        let _ = tail.pages.send(Tailed::Page {
                            after: read_after,
                            events: page.into(),
                        });
                        if full {
                            continue;
                        }
                    }
                    // Signalled, yet nothing to read: the commit may sit behind a fence (an
                    // older transaction still open, PostgreSQL). Read again soon, backing off.
                    Ok(_) if signalled => retry = Some(FENCE_RETRY.0),
                    Ok(_) => retry = retry.map(|d| (d * 2).min(FENCE_RETRY.1)),
                    Err(_) => {
                        let _ = tail.pages.send(Tailed::Failed);
                    }
                }
                // Either a signal or the interval; a closed channel just falls back to polling.
                let wait = retry.map_or(config.interval, |d| d.min(config.interval));
                signalled = matches!(tokio::time::timeout(wait, wake.changed()).await, Ok(Ok(())));
            }
        });
    }
}

/// How a polling subscription reads.
#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    /// Events per `read_all`.
    pub batch: usize,
    /// The longest wait between reads when no signal arrives.
    pub interval: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            batch: 1000,
            interval: Duration::from_millis(100),
        }
    }
}

type Page = Result<Vec<StoredEvent>, crate::StoreError>;

/// A page read on another task while the reader works on the one before (read-ahead).
#[derive(Debug)]
pub struct NextPage(tokio::task::JoinHandle<Page>);

impl NextPage {
    /// Starts `read` (a `read_all` call) on another task.
    pub fn spawn(read: impl std::future::Future<Output = Page> + Send + 'static) -> Self {
        Self(tokio::spawn(read))
    }

    /// The page, or the read's error.
    pub async fn get(self) -> Page {
        self.0
            .await
            .unwrap_or_else(|e| Err(crate::StoreError::backend(format!("page reader failed: {e}"))))
    }
}

struct State<S> {
    store: S,
    signal: CommitSignal,
    after: GlobalPosition,
    buffer: VecDeque<StoredEvent>,
    /// The next page, read while the buffer is consumed (catch-up only: started after a full page).
    prefetch: Option<NextPage>,
    /// Listening to the shared tail (from just before the last catch-up read).
    tail: Option<broadcast::Receiver<Tailed>>,
    /// Caught up: taking pages from the shared tail.
    live: bool,
    config: PollConfig,
    failed: bool,
}

impl<S: EventStore + Clone + 'static> State<S> {
    /// One catch-up read after `after` (or the page read ahead): into the buffer. A short page
    /// means caught up: from here, the shared tail.
    async fn catch_up(&mut self) -> Result<(), crate::StoreError> {
        if self.tail.is_none() {
            self.tail = Some(self.signal.tail.pages.subscribe());
        }
        let page = match self.prefetch.take() {
            Some(next) => next.get().await,
            None => {
                let (store, after, batch) = (self.store.clone(), self.after, self.config.batch);
                NextPage::spawn(async move { store.read_all(after, batch).await })
                    .get()
                    .await
            }
        }?;
        let last = page.last().map_or(self.after, |e| e.global_position);
        if page.len() >= self.config.batch {
            // A full page: read the next one on another task while this one is consumed, so
            // reading and the consumer's work overlap.
            let (store, batch) = (self.store.clone(), self.config.batch);
            self.prefetch = Some(NextPage::spawn(async move { store.read_all(last, batch).await }));
        } else {
            self.live = true;
            self.signal
                .tail
                .ensure_running(&self.store, last, &self.signal, self.config);
        }
        self.buffer.extend(page);
        Ok(())
    }

    /// The next page from the shared tail: into the buffer, or back to catch-up.
    async fn follow(&mut self) {
        let Some(rx) = self.tail.as_mut() else {
            self.live = false;
            return;
        };
        match rx.recv().await {
            Ok(Tailed::Page { after, events }) if after <= self.after => {
                let from = events.partition_point(|e| e.global_position <= self.after);
                self.buffer.extend(events[from..].iter().cloned());
            }
            // A page after a position not delivered yet, pages missed, or a failed tail read.
            Ok(Tailed::Page { .. } | Tailed::Failed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                self.live = false;
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.tail = None;
                self.live = false;
            }
        }
    }
}

/// A subscription over `store` after `after`: catch-up, then the instance's shared tail, woken
/// by `signal` or polling at `config.interval`.
pub fn poll_subscription<S>(
    store: S,
    after: GlobalPosition,
    signal: &CommitSignal,
    config: PollConfig,
) -> EventStream
where
    S: EventStore + Clone + 'static,
{
    let state = State {
        store,
        signal: signal.clone(),
        after,
        buffer: VecDeque::new(),
        prefetch: None,
        tail: None,
        live: false,
        config,
        failed: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if let Some(e) = st.buffer.pop_front() {
                st.after = e.global_position;
                return Some((Ok(e), st));
            }
            if st.live {
                st.follow().await;
            } else if let Err(e) = st.catch_up().await {
                st.failed = true;
                return Some((Err(e), st));
            }
        }
    })
    .boxed()
}
