//! A subscription built on `read_all`: catch-up in pages, then live. Live delivery wakes on a
//! commit signal from this process ([`CommitSignal`]) or, for commits from other processes, on
//! a poll interval (or a backend notification that bumps the same signal).
//!
//! No gap and no duplicate follow from `read_all`: each read starts strictly after the last
//! position delivered, and `read_all` never returns a position before one it may still fill.

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

struct State<S> {
    store: S,
    after: GlobalPosition,
    buffer: VecDeque<keyledger_domain::StoredEvent>,
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
            // Mark the signal seen before reading, so a commit after the read wakes us.
            st.signal.borrow_and_update();
            match st.store.read_all(st.after, st.config.batch).await {
                Ok(page) if !page.is_empty() => st.buffer.extend(page),
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
