//! `GET /metrics` in the Prometheus text format, with the `prometheus-client` crate: request
//! counts and latencies by route and status, open SSE streams, idempotent replays, events
//! appended.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ])
}

/// The service's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    sse_streams: Gauge,
    sse_events: Counter,
    replays: Counter,
    appended: Counter<u64, AtomicU64>,
    released: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyledger");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let sse_streams = Gauge::default();
        let sse_events = Counter::default();
        let replays = Counter::default();
        let appended = Counter::default();
        let released = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register("sse_streams", "Open SSE event streams", sse_streams.clone());
        registry.register(
            "sse_events_sent",
            "Events sent on SSE streams",
            sse_events.clone(),
        );
        registry.register(
            "idempotent_replays",
            "Requests answered from an earlier response with the same Idempotency-Key",
            replays.clone(),
        );
        registry.register(
            "events_appended",
            "Events appended by commands over HTTP",
            appended.clone(),
        );
        registry.register(
            "data_keys_released",
            "DEKs released to platform services (each one recorded)",
            released.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            sse_streams,
            sse_events,
            replays,
            appended,
            released,
        }
    }
}

impl Metrics {
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn idempotent_replay(&self) {
        self.replays.inc();
    }

    pub fn appended(&self, events: usize) {
        self.appended
            .inc_by(u64::try_from(events).expect("usize fits in u64"));
    }

    pub fn released(&self) {
        self.released.inc();
    }

    pub fn sse_event(&self) {
        self.sse_events.inc();
    }

    /// Counts an open stream until the guard drops.
    pub fn sse_stream(&self) -> StreamGuard {
        self.sse_streams.inc();
        StreamGuard(self.sse_streams.clone())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("could not encode metrics");
        }
        out
    }
}

/// Decrements the open-stream gauge when a stream ends.
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
