//! A fake keyledger in the test process: the event stream (SSE framing as
//! `keyledger-server`'s `routes/events.rs`) and the release routes, with knobs for the
//! protocol edge cases (dropped connections, silence, refusals).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures::SinkExt as _;
use keyledger_domain::{Event, OrgId};
use serde_json::{Value, json};
use tokio::sync::watch;

pub const TOKEN: &str = "test-platform-token-7f3c9a";

/// One stored event: its type and its CloudEvent JSON.
#[derive(Debug, Clone)]
pub struct Stored {
    pub event_type: String,
    pub cloud_event: Value,
}

/// A refusal the release routes answer with.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Fake {
    events: Mutex<Vec<Stored>>,
    appended: Mutex<Option<watch::Sender<usize>>>,
    keys: Mutex<HashMap<(OrgId, u32), [u8; 32]>>,
    active: Mutex<HashMap<OrgId, u32>>,
    refusal: Mutex<Option<Refusal>>,
    pub releases: AtomicUsize,
    pub connections: AtomicUsize,
    /// `Last-Event-ID` of every stream request, in order (`None` when absent).
    pub last_event_ids: Mutex<Vec<Option<String>>>,
    /// `?after=` of every stream request.
    pub afters: Mutex<Vec<Option<String>>>,
    /// Close each stream connection after sending this many events.
    pub close_after: Mutex<Option<usize>>,
    /// Send nothing at all, not even heartbeats.
    pub silent: AtomicBool,
    pub heartbeat: Mutex<Duration>,
    pub ttl_seconds: Mutex<u64>,
    /// Answer the stream request with this status instead.
    pub stream_refusal: Mutex<Option<Refusal>>,
}

pub fn key_bytes(org: OrgId, dek: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(org.as_uuid().as_bytes());
    k[16..20].copy_from_slice(&dek.to_be_bytes());
    k[31] = 0xA5;
    k
}

impl Fake {
    pub fn new() -> Arc<Self> {
        let fake = Fake::default();
        *fake.appended.lock().unwrap() = Some(watch::channel(0).0);
        *fake.heartbeat.lock().unwrap() = Duration::from_millis(50);
        *fake.ttl_seconds.lock().unwrap() = 3600;
        Arc::new(fake)
    }

    /// Appends `event` of organization `org` as the server would publish it (its public
    /// payload in a CloudEvent). Returns its position.
    pub fn append(&self, org: OrgId, event: &Event) -> u64 {
        if let Event::DataKeyGenerated(e) = event {
            self.keys
                .lock()
                .unwrap()
                .insert((org, e.dek_id.0), key_bytes(org, e.dek_id.0));
            self.active.lock().unwrap().insert(org, e.dek_id.0);
        }
        self.append_raw(
            event.event_type(),
            json!({
                "specversion": "1.0",
                "id": uuid_like(self.events.lock().unwrap().len()),
                "source": format!("keyledger/organizations/{org}"),
                "type": format!("keyledger.{}.v{}", event.event_type(), event.schema_version()),
                "subject": org.to_string(),
                "time": "2026-12-05T00:00:00Z",
                "datacontenttype": "application/json",
                "sequence": "0",
                "data": event.public_payload(),
            }),
        )
    }

    pub fn append_all(&self, org: OrgId, events: &[Event]) -> u64 {
        let mut last = 0;
        for e in events {
            last = self.append(org, e);
        }
        last
    }

    /// Appends any CloudEvent (an audit checkpoint, a future type).
    pub fn append_raw(&self, event_type: &str, mut cloud_event: Value) -> u64 {
        let position = {
            let mut events = self.events.lock().unwrap();
            let position = events.len() + 1;
            if let Some(ce) = cloud_event.as_object_mut() {
                ce.insert("sequence".into(), json!(position.to_string()));
            }
            events.push(Stored {
                event_type: event_type.to_owned(),
                cloud_event,
            });
            position
        };
        if let Some(tx) = &*self.appended.lock().unwrap() {
            tx.send_replace(position);
        }
        u64::try_from(position).unwrap()
    }

    pub fn refuse_releases(&self, refusal: Option<Refusal>) {
        *self.refusal.lock().unwrap() = refusal;
    }

    pub fn set_key(&self, org: OrgId, dek: u32) {
        self.keys.lock().unwrap().insert((org, dek), key_bytes(org, dek));
        self.active.lock().unwrap().insert(org, dek);
    }

    fn subscribe(&self) -> watch::Receiver<usize> {
        self.appended.lock().unwrap().as_ref().unwrap().subscribe()
    }

    fn events_after(&self, after: usize) -> Vec<(usize, Stored)> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .enumerate()
            .skip(after)
            .map(|(i, e)| (i + 1, e.clone()))
            .collect()
    }
}

fn uuid_like(n: usize) -> String {
    format!("0193a1b2-0000-7000-8000-{n:012x}")
}

fn problem(status: u16, code: &str) -> Response {
    refusal_response(&Refusal {
        status,
        body: json!({"type": format!("urn:keyledger:problem:{code}"), "title": code, "status": status, "code": code}),
        retry_after: None,
    })
}

fn refusal_response(r: &Refusal) -> Response {
    let mut response = (
        StatusCode::from_u16(r.status).unwrap(),
        [(header::CONTENT_TYPE, "application/problem+json")],
        r.body.to_string(),
    )
        .into_response();
    if let Some(after) = r.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, after.to_string().parse().unwrap());
    }
    response
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

pub fn router(fake: Arc<Fake>) -> Router {
    Router::new()
        .route("/v1/events/stream", get(stream))
        .route("/v1/organizations/{org}/data-keys/{which}/release", post(release))
        .with_state(fake)
}

async fn release(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Path((org, which)): Path<(String, String)>,
) -> Response {
    if !authorized(&headers) {
        return problem(401, "unauthenticated");
    }
    fake.releases.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = fake.refusal.lock().unwrap().clone() {
        return refusal_response(&r);
    }
    let Ok(org) = org.parse::<OrgId>() else {
        return problem(400, "invalid_request");
    };
    let dek = if which == "active" {
        match fake.active.lock().unwrap().get(&org) {
            Some(d) => *d,
            None => return problem(404, "organization_not_found"),
        }
    } else {
        match which.parse() {
            Ok(d) => d,
            Err(_) => return problem(400, "invalid_request"),
        }
    };
    let Some(key) = fake.keys.lock().unwrap().get(&(org, dek)).copied() else {
        return problem(404, "organization_not_found");
    };
    let ttl = *fake.ttl_seconds.lock().unwrap();
    axum::Json(json!({
        "dek_id": dek,
        "key": base64::engine::general_purpose::STANDARD.encode(key),
        "wrapped_by": {"kind": "provider", "internal_key_id": "ik-1"},
        "cache_ttl_seconds": ttl,
    }))
    .into_response()
}

async fn stream(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return problem(401, "unauthenticated");
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    fake.last_event_ids.lock().unwrap().push(last_event_id.clone());
    fake.afters.lock().unwrap().push(q.get("after").cloned());
    fake.connections.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = fake.stream_refusal.lock().unwrap().clone() {
        return refusal_response(&r);
    }
    let start: usize = last_event_id
        .as_deref()
        .or(q.get("after").map(String::as_str))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let task_fake = fake.clone();
    tokio::spawn(async move {
        let fake = task_fake;
        let mut cursor = start;
        let mut sent = 0usize;
        let mut appended = fake.subscribe();
        let period = *fake.heartbeat.lock().unwrap();
        if *fake.close_after.lock().unwrap() == Some(0) {
            return;
        }
        loop {
            for (position, stored) in fake.events_after(cursor) {
                let message = format!(
                    "id: {position}\nevent: {}\ndata: {}\n\n",
                    stored.event_type, stored.cloud_event
                );
                if tx.send(Ok(Bytes::from(message))).await.is_err() {
                    return;
                }
                cursor = position;
                sent += 1;
                if fake.close_after.lock().unwrap().is_some_and(|n| sent >= n) {
                    return;
                }
            }
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(period) => {
                    if !fake.silent.load(Ordering::SeqCst)
                        && tx.send(Ok(Bytes::from_static(b": heartbeat\n\n"))).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(rx),
    )
        .into_response()
}

/// Serves the fake on 127.0.0.1:0 over plain HTTP; returns its base URL.
pub async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(fake)).await.unwrap();
    });
    format!("http://{addr}")
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, chain, key).
pub fn certificates() -> (
    String,
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "keyledger-client test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (ca_cert.pem(), chain, key)
}

/// A TLS listener for `axum::serve`: the handshake happens in `accept`.
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves the fake over HTTPS with a certificate of a private CA; returns (base URL, CA PEM).
pub async fn serve_tls(fake: Arc<Fake>) -> (String, String) {
    let (ca_pem, chain, key) = certificates();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move {
        axum::serve(listener, router(fake)).await.unwrap();
    });
    (format!("https://{addr}"), ca_pem)
}
