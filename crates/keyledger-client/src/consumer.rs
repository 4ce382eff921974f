//! The stream consumer: follows `GET {base}/v1/events/stream` (Server-Sent Events of
//! CloudEvents), folds each event into the directory, and resumes after the last position
//! applied (`Last-Event-ID`) when the stream drops, with capped exponential backoff and
//! jitter.

use std::time::Duration;

use eventsource_stream::{Event as SseEvent, Eventsource as _};
use futures::{Stream, StreamExt as _};
use rand::Rng as _;
use secrecy::ExposeSecret as _;

use crate::client::{Client, http_error};
use crate::directory::CloudEvent;
use crate::error::ClientError;

/// A running consumer (see [`Client::spawn_consumer`]). Dropping the handle stops it.
#[derive(Debug)]
pub struct ConsumerHandle {
    task: tokio::task::JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops the consumer.
    pub fn abort(&self) {
        self.task.abort();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one connection of the stream ended.
#[derive(Debug)]
enum Ended {
    /// The server closed the stream (a restart, a shutdown): reconnect at once.
    Closed,
    /// Nothing arrived (no event, no heartbeat) for the idle timeout.
    Idle,
    /// The request or the stream failed.
    Failed(ClientError),
    /// The server answered with an error status; wait at least `retry_after`.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
}

impl Client {
    /// Spawns [`Client::run_consumer`] on the current Tokio runtime.
    pub fn spawn_consumer(&self) -> ConsumerHandle {
        let client = self.clone();
        ConsumerHandle {
            task: tokio::spawn(async move { client.run_consumer().await }),
        }
    }

    /// Follows the event stream for ever: connects, folds events, saves the checkpoint when
    /// the stream pauses, and reconnects after any failure. Cancel it by dropping the future
    /// (or the [`ConsumerHandle`]).
    pub async fn run_consumer(&self) {
        let config = &self.inner.config;
        let mut failures: u32 = 0;
        loop {
            let started = tokio::time::Instant::now();
            let (ended, folded_any) = self.connect_once().await;
            self.save_checkpoint().await;
            // A connection that delivered events, or stayed up a while, resets the backoff; one
            // that a server accepts and closes at once does not (no busy loop).
            if folded_any || started.elapsed() >= config.max_backoff {
                failures = 0;
            }
            let wait = match &ended {
                Ended::Closed if failures == 0 => Duration::ZERO,
                Ended::Refused {
                    retry_after: Some(after),
                    ..
                } => backoff(config.min_backoff, config.max_backoff, failures).max(*after),
                _ => backoff(config.min_backoff, config.max_backoff, failures),
            };
            match &ended {
                Ended::Closed => tracing::debug!("event stream closed; reconnecting"),
                Ended::Idle => tracing::warn!("event stream silent past the idle timeout; reconnecting"),
                Ended::Failed(e) => tracing::warn!(error = %e, ?wait, "event stream failed; reconnecting"),
                Ended::Refused { status, .. } => {
                    tracing::warn!(status, ?wait, "event stream refused; retrying")
                }
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(wait).await;
        }
    }

    /// One connection: returns how it ended and whether it folded any message.
    async fn connect_once(&self) -> (Ended, bool) {
        let inner = &self.inner;
        let after = self.position();
        let mut url = match inner.base.join("v1/events/stream") {
            Ok(url) => url,
            Err(e) => return (Ended::Failed(ClientError::Protocol(e.to_string())), false),
        };
        url.query_pairs_mut().append_pair("after", &after.to_string());
        let mut request = inner
            .http
            .get(url)
            .bearer_auth(inner.token.expose_secret())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if after > 0 {
            request = request.header("Last-Event-ID", after.to_string());
        }
        let response = match tokio::time::timeout(inner.config.idle_timeout, request.send()).await {
            Err(_) => return (Ended::Idle, false),
            Ok(Err(e)) => return (Ended::Failed(http_error(e)), false),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            let retry_after = crate::client::retry_after(&response);
            return (
                Ended::Refused {
                    status: response.status().as_u16(),
                    retry_after,
                },
                false,
            );
        }
        let events =
            with_idle_timeout(Box::pin(response.bytes_stream()), inner.config.idle_timeout).eventsource();
        self.follow(events).await
    }

    /// Folds the events of one connection; saves the checkpoint whenever the stream pauses.
    /// Returns how it ended and whether any message was folded.
    async fn follow<S>(&self, events: S) -> (Ended, bool)
    where
        S: Stream<Item = Result<SseEvent, eventsource_stream::EventStreamError<Chunk>>>,
    {
        let mut events = std::pin::pin!(events);
        let delay = self.inner.config.checkpoint_delay;
        let mut dirty = false;
        let mut folded_any = false;
        loop {
            let next = if dirty {
                match tokio::time::timeout(delay, events.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.save_checkpoint().await;
                        dirty = false;
                        continue;
                    }
                }
            } else {
                events.next().await
            };
            let ended = match next {
                None => Ended::Closed,
                Some(Ok(event)) => match self.fold_message(&event) {
                    Ok(folded) => {
                        dirty |= folded;
                        folded_any |= folded;
                        continue;
                    }
                    Err(e) => Ended::Failed(e),
                },
                Some(Err(eventsource_stream::EventStreamError::Transport(Chunk::Idle))) => Ended::Idle,
                Some(Err(eventsource_stream::EventStreamError::Transport(Chunk::Http(e)))) => {
                    Ended::Failed(http_error(e))
                }
                Some(Err(e)) => Ended::Failed(ClientError::Protocol(format!("event stream: {e}"))),
            };
            return (ended, folded_any);
        }
    }

    /// Applies one SSE message. `Ok(false)` for a message carrying no position (ignored).
    fn fold_message(&self, event: &SseEvent) -> Result<bool, ClientError> {
        if event.id.is_empty() {
            return Ok(false);
        }
        let position: u64 = event
            .id
            .trim()
            .parse()
            .map_err(|_| ClientError::Protocol(format!("SSE id {:?} is not a position", event.id)))?;
        let cloud_event: CloudEvent = match serde_json::from_str(&event.data) {
            Ok(ce) => ce,
            Err(e) => {
                // Not a CloudEvent: skip it (a newer server's message kind), keep the place.
                tracing::warn!(position, error = %e, "an SSE message is not a CloudEvent; skipped");
                self.apply_position_only(position);
                return Ok(true);
            }
        };
        self.apply(position, &cloud_event);
        Ok(true)
    }

    fn apply_position_only(&self, position: u64) {
        let mut folded = self.folded();
        if position > folded.position {
            folded.position = position;
            drop(folded);
            self.inner.applied.send_replace(position);
        }
    }

    /// Saves the checkpoint (off the async threads: a file store syncs); a failure is logged
    /// and retried at the next pause.
    pub(crate) async fn save_checkpoint(&self) {
        let checkpoint = self.checkpoint();
        let position = checkpoint.position;
        if position == 0 {
            return;
        }
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.save(&checkpoint)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, position, "could not save the stream checkpoint"),
            Err(e) => tracing::warn!(error = %e, position, "the checkpoint save did not finish"),
        }
    }
}

/// An item of the byte stream as the SSE parser sees it.
#[derive(Debug)]
enum Chunk {
    Http(reqwest::Error),
    Idle,
}

impl std::fmt::Display for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chunk::Http(e) => write!(f, "{}", e),
            Chunk::Idle => f.write_str("idle timeout"),
        }
    }
}

/// Ends with a [`Chunk::Idle`] error when no bytes (an event or a heartbeat) arrive for
/// `idle`.
fn with_idle_timeout<S, B>(bytes: S, idle: Duration) -> impl Stream<Item = Result<B, Chunk>>
where
    S: Stream<Item = Result<B, reqwest::Error>> + Unpin,
{
    futures::stream::unfold(Some(bytes), move |state| async move {
        let mut bytes = state?;
        match tokio::time::timeout(idle, bytes.next()).await {
            Err(_) => Some((Err(Chunk::Idle), None)),
            Ok(None) => None,
            Ok(Some(Ok(b))) => Some((Ok(b), Some(bytes))),
            Ok(Some(Err(e))) => Some((Err(Chunk::Http(e)), None)),
        }
    })
}

/// Capped exponential backoff with full jitter over the upper half: after `failures`
/// failures, a delay in `[d/2, d]` where `d = min(max, min_delay · 2^failures)`.
pub(crate) fn backoff(min_delay: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    let ceiling = min_delay.saturating_mul(factor).min(max);
    let half = ceiling / 2;
    let jitter = rand::thread_rng().gen_range(0..=half.as_millis().min(u128::from(u64::MAX)));
    half + Duration::from_millis(u64::try_from(jitter).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for failures in 0..40 {
            let d = backoff(min, max, failures);
            let ceiling = min
                .saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX))
                .min(max);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(min, max, 10)).collect();
        assert!(samples.len() > 1, "jittered");
    }
}
