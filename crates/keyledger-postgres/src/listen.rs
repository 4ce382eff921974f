//! Commit notifications between instances (ADR 0022), on connections outside the store's pool
//! (each its own pool of one, so the store's pool keeps every connection it was sized for):
//!
//! - **publish**: after this instance commits, `pg_notify('keyledger_events', <instance id>)`
//!   in a transaction of its own, at most one per [`SPACING`] however many commits, so the
//!   appends themselves never notify (PostgreSQL serializes the commits of notifying
//!   transactions on one lock: a trigger on `events` cut pgbench's 32-client single-row INSERT
//!   rate 4–9×);
//! - **listen**: `LISTEN keyledger_events`; another instance's notification wakes this
//!   instance's shared tail ([`CommitSignal::wake`]); its own are ignored.
//!
//! Polling stays as the fallback for a lost connection and for events held behind the fence.

use std::time::Duration;

use keyledger_store::subscribe::CommitSignal;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

/// The channel.
pub(crate) const CHANNEL: &str = "keyledger_events";

/// The shortest time between two notifications this instance sends.
const SPACING: Duration = Duration::from_millis(5);

/// The publishing and listening tasks; they end when the last handle of the store that owns
/// them drops.
#[derive(Debug)]
pub(crate) struct Notifications([tokio::task::JoinHandle<()>; 2]);

impl Drop for Notifications {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn own_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options)
}

/// Starts publishing this instance's commits and listening for the others'.
pub(crate) fn spawn(pool: &PgPool, signal: CommitSignal) -> Notifications {
    let options = pool.connect_options().as_ref().clone();
    let me = uuid::Uuid::now_v7().simple().to_string();
    let publisher = {
        let (pool, me, mut commits) = (own_pool(options.clone()), me.clone(), signal.local_commits());
        tokio::spawn(async move {
            while commits.changed().await.is_ok() {
                commits.borrow_and_update();
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(&me)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %e, "cannot notify other instances of a commit; they poll");
                }
                tokio::time::sleep(SPACING).await;
            }
        })
    };
    let listener = tokio::spawn(async move {
        let pool = own_pool(options);
        loop {
            match listen(&pool).await {
                Ok(mut listener) => {
                    // Commits while not listening were missed: read once.
                    signal.wake();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) if n.payload() == me => {}
                            Ok(Some(_)) => signal.wake(),
                            // The connection was lost; the next call reconnects and listens.
                            Ok(None) => signal.wake(),
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
    });
    Notifications([publisher, listener])
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
