//! The work a serving process does besides answering requests: projection runners, the
//! key-health monitor and the audit checkpointer. Each restarts after a failure, with a growing
//! pause, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyledger_app::{Checkpointer, HealthMonitor};
use keyledger_projection::{Projection, ProjectionSink, Runner, RunnerError};
use keyledger_store::EventStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves when `shutdown` turns true.
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs `task` again after each failure until `shutdown`.
pub fn supervise<F, Fut>(name: &'static str, shutdown: watch::Receiver<bool>, mut task: F) -> JoinHandle<()>
where
    F: FnMut(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), RunnerError>> + Send,
{
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            match task(shutdown.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(task = name, error = %e, retry_in = ?pause, "background task failed; restarting");
                }
            }
            tokio::select! {
                () = stopped(shutdown.clone()) => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    })
}

/// One supervised runner for every projection, on this process (single-instance stores): each
/// batch of events is read and decoded once and committed for all projections together.
pub fn projection_runners(
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    vec![supervise("projections", shutdown, move |stop| {
        let runner = Runner::over(store.clone(), sink.clone(), Projection::ALL.to_vec());
        async move { runner.run(stopped(stop)).await }
    })]
}

/// One supervised runner per projection on a PostgreSQL store that several instances share:
/// each folds only while this instance holds the projection's advisory-lock lease (on its own
/// session, outside the pool), and another instance takes over when this one dies. This is how
/// `keyledger serve` runs on PostgreSQL, and so how the HTTP benchmark runs.
pub fn led_projection_runners(
    url: &str,
    store: Arc<dyn EventStore>,
    sink: keyledger_postgres::PgProjections,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    Projection::ALL
        .into_iter()
        .map(|projection| {
            let (url, store, sink) = (url.to_owned(), store.clone(), sink.clone());
            supervise(projection.name(), shutdown.clone(), move |stop| {
                let (url, store, sink) = (url.clone(), store.clone(), sink.clone());
                async move { keyledger_postgres::run_led(&url, store, sink, projection, stopped(stop)).await }
            })
        })
        .collect()
}

/// The key-health monitor until shutdown.
pub fn health_monitor(
    monitor: Arc<HealthMonitor>,
    store: Arc<dyn EventStore>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(monitor.run(store, stopped(shutdown)))
}

/// The audit checkpointer, a round every `interval` until shutdown (single-instance stores).
pub fn checkpointer(
    checkpointer: Arc<Checkpointer>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(checkpointer.run(interval, stopped(shutdown)))
}

/// The name of the checkpointer's lease among PostgreSQL instances.
pub const CHECKPOINTER_TASK: &str = "audit-checkpointer";

/// The audit checkpointer on a PostgreSQL store that several instances share: it runs only
/// while this instance holds the checkpointer's advisory-lock lease, so one instance signs
/// the rounds, and another takes over when it dies. An overlap at a handover cannot record
/// a checkpoint twice: a checkpoint's command id names its log and size (ADR 0027).
pub fn led_checkpointer(
    url: &str,
    checkpointer: Arc<Checkpointer>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let url = url.to_owned();
    supervise(CHECKPOINTER_TASK, shutdown, move |stop| {
        let (url, checkpointer) = (url.clone(), checkpointer.clone());
        async move {
            let task = checkpointer.run(interval, stopped(stop.clone()));
            keyledger_postgres::run_leading(&url, CHECKPOINTER_TASK, task, stopped(stop)).await?;
            Ok(())
        }
    })
}
