//! The operator commands, one module per command group. Each returns an [`Outcome`] or a
//! [`Failure`]; `main` turns them into exit codes.
//!
//! [`Outcome`]: crate::report::Outcome
//! [`Failure`]: crate::report::Failure

pub(crate) mod audit;
pub(crate) mod events;
pub(crate) mod migrate;
pub(crate) mod projections;
pub(crate) mod verify;

use std::sync::Arc;

use keyledger_store::KeyRing;

/// Events per page read or batch written.
pub(crate) const BATCH: usize = 1000;

/// How long a reader waits for events that PostgreSQL's fence holds back (a transaction older
/// than theirs still open on the server) before it gives up.
pub(crate) const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A key ring for commands that never open a sealed field (migrate, verify, export, import):
/// they move and hash envelopes with their protected fields still sealed, so they need no
/// internal key, and an operator can run them without access to the key file. The store port
/// wants a ring; this fresh one seals nothing and opens nothing, and is dropped at exit.
pub(crate) fn throwaway_ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::generate())
}
