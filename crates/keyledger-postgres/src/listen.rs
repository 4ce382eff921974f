//! Commit notifications from other instances: `LISTEN keyledger_events` (the trigger of
//! migration 0003) on a connection of its own, each notification waking this instance's shared
//! tail ([`CommitSignal`], ADR 0022). Polling stays as the fallback for a lost connection and
//! for events held behind the fence.

use std::time::Duration;

use keyledger_store::subscribe::CommitSignal;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

/// The channel the trigger notifies.
pub(crate) const CHANNEL: &str = "keyledger_events";

/// The listener task; ends when the last handle of the store that owns it drops.
#[derive(Debug)]
pub(crate) struct Listening(tokio::task::JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts listening on a connection outside `pool` (its own pool of one, so the store's pool
/// keeps every connection it was sized for).
pub(crate) fn spawn(pool: &PgPool, signal: CommitSignal) -> Listening {
    let options = pool.connect_options().as_ref().clone();
    Listening(tokio::spawn(async move {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        loop {
            match listen(&own).await {
                Ok(mut listener) => {
                    // Commits while not listening were missed: read once.
                    signal.notify();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => signal.notify(),
                            // The connection was lost; the next call reconnects and listens.
                            Ok(None) => signal.notify(),
                            Err(e) => {
                                tracing::warn!(error = %e, "commit notifications lost; polling until they are back");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for commit notifications; polling");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
