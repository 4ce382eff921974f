//! The event stream for platform services: pages of CloudEvents and the SSE stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::{self, BoxFuture, FutureExt as _};
use futures::{StreamExt as _, stream};
use keyledger_domain::{CrossRead, GlobalPosition, authorize_cross_read};

use crate::Shared;
use crate::api::{EventsPage, EventsQuery};
use crate::cloudevent::{cloud_event, write_sse_message};
use crate::extract::{Caller, Query, cursor};
use crate::problem::{FieldError, Problem};

use crate::api::DEFAULT_LIMIT;

fn platform_only(actor: &keyledger_domain::Actor) -> Result<(), Problem> {
    authorize_cross_read(actor, CrossRead::EventFeed).map_err(|_| Problem::forbidden())
}

fn undecodable(stored: &keyledger_store::StoredEvent, e: &dyn std::fmt::Display) -> Problem {
    tracing::error!(event_id = %stored.event_id, position = stored.global_position.0, error = %e,
        "stored event cannot be published");
    Problem::internal_error()
}

/// How long a client refused for `max_streams` is asked to wait.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

fn too_many_streams() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_streams",
        "Too many open streams",
    )
    .with_detail("the server holds as many event streams as it is configured for; retry later")
    .with_retry_after(STREAM_RETRY_AFTER)
}

/// `GET /v1/events?after=&limit=`.
pub(crate) async fn page(
    State(state): State<Shared>,
    Caller(actor): Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventsPage>, Problem> {
    platform_only(&actor)?;
    // `after` and `limit` were held to their ranges when the query was read (`api.rs`).
    let after = q.after.unwrap_or(0);
    let limit = usize::try_from(q.limit.unwrap_or(DEFAULT_LIMIT)).unwrap_or(usize::MAX);
    let stored = state
        .services
        .store
        .read_all(GlobalPosition(after), limit)
        .await?;
    let next_after = stored.last().map_or(after, |e| e.global_position.0);
    let events = stored
        .iter()
        .map(|s| cloud_event(s).map_err(|e| undecodable(s, &e)))
        .collect::<Result<_, _>>()?;
    Ok(Json(EventsPage { events, next_after }))
}

/// Where a stream starts: `Last-Event-ID` (a reconnect) wins over `?after=`.
/// Both are checked (`after` when the query was read), so a bad `after` is a 400 even on a
/// reconnect.
fn start(headers: &HeaderMap, q: &EventsQuery) -> Result<u64, Problem> {
    let after = q.after.unwrap_or(0);
    match headers.get("last-event-id") {
        None => Ok(after),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .and_then(|id| cursor("last-event-id", id).ok())
            .ok_or_else(|| {
                Problem::invalid(vec![FieldError {
                    field: "last-event-id".into(),
                    message: "must be the id (a position) of an event received earlier".into(),
                }])
            }),
    }
}

/// Events one body write carries at most: what the subscription has ready, so a consumer far
/// behind gets large writes and a live one gets each event as it commits.
const EVENTS_PER_WRITE: usize = 256;

/// A chunk of at least this many events (a consumer catching up) is rendered on a task of its
/// own, and [`RENDERED_AHEAD`] of them at once, so that rendering uses every core; a live
/// consumer's few events are rendered in place.
const RENDER_APART_FROM: usize = 32;

/// Chunks being rendered at once (the one to write next among them).
const RENDERED_AHEAD: usize = 2;

/// The SSE comment heartbeat.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// `GET /v1/events/stream?after=`: Server-Sent Events, one per stored event in commit order,
/// `id` = position, with a comment heartbeat. Ends when the server shuts down or the store
/// fails; the client reconnects with `Last-Event-ID` and misses nothing.
///
/// The body is written in chunks of the messages that are ready (`ready_chunks`), not one
/// write per event.
pub(crate) async fn stream(
    State(state): State<Shared>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, Problem> {
    platform_only(&actor)?;
    let after = start(&headers, &q)?;
    let Ok(slot) = state.streams.clone().try_acquire_owned() else {
        return Err(too_many_streams());
    };
    let mut shutdown = state.shutdown.clone();
    let stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let rendering = state.clone();
    let events = state
        .services
        .store
        .subscribe(GlobalPosition(after))
        .ready_chunks(EVENTS_PER_WRITE)
        .map(move |chunk| render(rendering.clone(), chunk))
        .buffered(RENDERED_AHEAD)
        .take_until(stopping)
        .boxed();
    let period = state.config.heartbeat;
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // Both live as long as the stream: the open-stream gauge and the `max_streams` permit.
    let open = (state.metrics.sse_stream(), slot);
    let body = stream::unfold(Some((events, heartbeat, state, open)), |st| async move {
        let (mut events, mut heartbeat, state, open) = st?;
        tokio::select! {
            rendered = events.next() => {
                let (bytes, more) = rendered?;
                let next = more.then_some((events, heartbeat, state, open));
                Some((Ok::<_, Infallible>(Bytes::from(bytes)), next))
            }
            _ = heartbeat.tick() => {
                Some((Ok(Bytes::from_static(HEARTBEAT)), Some((events, heartbeat, state, open))))
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

type Chunk = Vec<Result<keyledger_store::StoredEvent, keyledger_store::StoreError>>;

/// A chunk's SSE messages, and whether the stream goes on.
type Messages = (Vec<u8>, bool);

/// [`sse_messages`] of a chunk: in place for a few events, on a task of its own for many (a
/// task that fails ends the stream like an error).
fn render(state: Shared, chunk: Chunk) -> BoxFuture<'static, Messages> {
    if chunk.len() < RENDER_APART_FROM {
        return future::ready(sse_messages(&state, chunk, Through::SharedCache)).boxed();
    }
    let task = tokio::spawn(async move { sse_messages(&state, chunk, Through::ChunkOnly) });
    async move {
        task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "rendering SSE messages failed");
            (Vec::new(), false)
        })
    }
    .boxed()
}

/// Where a chunk's messages are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Through {
    /// A live chunk holds what every live stream sends next: each message is rendered once for
    /// all of them, through the shared cache.
    SharedCache,
    /// A consumer catching up reads events that no live stream needs: they are written straight
    /// into its chunk, and the cache keeps the head's.
    ChunkOnly,
}

/// The SSE messages of a chunk of the subscription, and whether the stream goes on: it ends at
/// a store failure or at an event this build cannot publish, after the messages before it.
fn sse_messages(state: &Shared, chunk: Chunk, through: Through) -> Messages {
    let mut out = Vec::with_capacity(chunk.len() * 512);
    for item in chunk {
        let stored = match item {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "event stream ended: the store failed");
                return (out, false);
            }
        };
        let written = match through {
            Through::SharedCache => state
                .rendered
                .message(&stored)
                .map(|message| out.extend_from_slice(&message)),
            Through::ChunkOnly => write_sse_message(&mut out, &stored),
        };
        if let Err(e) = written {
            undecodable(&stored, &e);
            return (out, false);
        }
        state.metrics.sse_event();
    }
    (out, true)
}
