//! The event stream for platform services: pages of CloudEvents and the SSE stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt as _, future};
use keyledger_domain::{CrossRead, GlobalPosition, authorize_cross_read};

use crate::Shared;
use crate::api::{EventsPage, EventsQuery};
use crate::cloudevent::{cloud_event, cloud_event_text};
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
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT) as usize;
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

/// `GET /v1/events/stream?after=`: Server-Sent Events, one per stored event in commit order,
/// `id` = position, with a comment heartbeat. Ends when the server shuts down or the store
/// fails; the client reconnects with `Last-Event-ID` and misses nothing.
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
    // Both live as long as the stream: the open-stream gauge and the `max_streams` permit.
    let open = (state.metrics.sse_stream(), slot);
    let metrics_state = state.clone();
    let events = state
        .services
        .store
        .subscribe(GlobalPosition(after))
        .map(move |item| {
            let _open = &open;
            let stored = match item {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream ended: the store failed");
                    return None;
                }
            };
            match cloud_event_text(&stored) {
                Ok(ce) => {
                    metrics_state.metrics.sse_event();
                    Some(Ok::<_, Infallible>(
                        SseEvent::default()
                            .id(stored.global_position.0.to_string())
                            .event(&stored.event_type)
                            .data(ce),
                    ))
                }
                Err(e) => {
                    undecodable(&stored, &e);
                    None
                }
            }
        })
        .take_while(|item| future::ready(item.is_some()))
        .filter_map(future::ready)
        .take_until(stopping);
    let sse = Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(state.config.heartbeat)
            .text("heartbeat"),
    );
    Ok(([(header::CACHE_CONTROL, "no-cache")], sse).into_response())
}
