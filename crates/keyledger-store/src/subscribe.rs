//! A subscription built on `read_all`: catch-up in pages, then live. Live delivery wakes on a
//! commit signal from this process ([`CommitSignal`]) or, for commits from other processes, on
//! a poll interval (or a backend notification that bumps the same signal).
//!
//! No gap and no duplicate follow from `read_all`: each read starts strictly after the last
//! position delivered, and `read_all` never returns a position before one it may still fill.
//!
//! Every read runs on its own task, so it finishes and gives its connection back whether or not
//! the consumer keeps polling. A consumer that stops polling between items (`ready_chunks`
//! hands over what is buffered as soon as the next read is pending; an SSE client that stops
//! reading) would otherwise keep a suspended read, and its pooled connection, for as long as it
//! works; a projection runner whose commit needs a connection would then wait for the one its
//! own subscription holds, and a pool of N deadlocks once N runners do (ADR 0015).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use keyledger_domain::GlobalPosition;
use tokio::sync::watch;

use crate::{EventStore, EventStream};

/// Tells subscribers that something committed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommitSignal {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for CommitSignal {
    fn default() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self { tx: Arc::new(tx) }
    }
}

impl CommitSignal {
    /// Wakes every subscriber.
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn receiver(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
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

type Page = Result<Vec<crate::StoredEvent>, crate::StoreError>;

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
    after: GlobalPosition,
    buffer: VecDeque<crate::StoredEvent>,
    /// The next page, read while the buffer is consumed (catch-up only: started after a full page).
    prefetch: Option<NextPage>,
    signal: watch::Receiver<u64>,
    config: PollConfig,
    failed: bool,
}

/// A subscription over `store` after `after`.
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
        after,
        buffer: VecDeque::new(),
        prefetch: None,
        signal: signal.receiver(),
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
            let page = match st.prefetch.take() {
                Some(next) => next.get().await,
                None => {
                    // Mark the signal seen before reading, so a commit after the read wakes us.
                    st.signal.borrow_and_update();
                    let (store, after, batch) = (st.store.clone(), st.after, st.config.batch);
                    NextPage::spawn(async move { store.read_all(after, batch).await })
                        .get()
                        .await
                }
            };
            match page {
                Ok(page) if !page.is_empty() => {
                    // A full page during catch-up: read the next one on another task while
                    // this one is consumed, so reading and the consumer's work overlap.
                    if page.len() >= st.config.batch
                        && let Some(last) = page.last().map(|e| e.global_position)
                    {
                        st.signal.borrow_and_update();
                        let (store, batch) = (st.store.clone(), st.config.batch);
                        st.prefetch = Some(NextPage::spawn(async move { store.read_all(last, batch).await }));
                    }
                    st.buffer.extend(page);
                }
                Ok(_) => {
                    // Either a signal or the interval; a closed channel just falls back to polling.
                    let _ = tokio::time::timeout(st.config.interval, st.signal.changed()).await;
                }
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
        }
    })
    .boxed()
}
