//! The server's life: a slow request ends in a 503 at the request timeout and records nothing;
//! readiness follows the store; shutdown ends open streams and lets in-flight requests finish.

mod common;

use std::time::Duration;

use common::*;
use keyledger_server::ServerConfig;
use keyledger_vault_sim::Faults;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn slow_vault(ms: u64) -> Faults {
    Faults {
        latency_ms: Some(ms),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_a_503_that_records_nothing() {
    let config = ServerConfig {
        request_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let s = Server::start_with(Backend::Sqlite, config).await.unwrap();
    let org = new_org();
    s.register(&org).await;
    let count = s.event_count().await;
    s.demo.vault.set_faults(slow_vault(2000));
    let r = s
        .call(
            "POST",
            &format!("/v1/organizations/{org}/customer-managed-key"),
            ADMIN,
            Some(s.connection(0)),
        )
        .await
        .problem(503, "request_timeout");
    assert!(r.header("retry-after").is_some());
    s.demo.vault.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.event_count().await, count);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store() {
    let s = Server::start(Backend::Sqlite).await.unwrap();
    s.send("GET", "/readyz", None, None, &[]).await.expect(200);
    s.sqlite.as_ref().unwrap().close().await;
    let r = s
        .send("GET", "/readyz", None, None, &[])
        .await
        .problem(503, "store_unavailable");
    assert!(r.header("retry-after").is_some());
    s.send("GET", "/healthz", None, None, &[]).await.expect(200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_drains_in_flight_requests() {
    let mut s = Server::start(Backend::Sqlite).await.unwrap();
    let org = new_org();
    s.register(&org).await;
    // An open stream and a slow request in flight.
    let mut stream = s
        .http
        .get(s.url("/v1/events/stream"))
        .bearer_auth(PLATFORM)
        .send()
        .await
        .unwrap();
    s.demo.vault.set_faults(slow_vault(700));
    let slow = {
        let req = s
            .http
            .post(s.url(&format!("/v1/organizations/{org}/customer-managed-key/test")))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(s.connection(0).to_string());
        tokio::spawn(async move { req.send().await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.begin_shutdown();
    // The stream ends …
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open after shutdown");
    // … the request in flight completes …
    let reply = slow.await.unwrap().unwrap();
    assert_eq!(reply.status(), 200);
    assert!(reply.text().await.unwrap().contains("\"ok\":true"));
    // … and the server stops, refusing new connections.
    assert!(s.server_ended(Duration::from_secs(10)).await);
    assert!(
        s.http
            .post(s.url("/v1/organizations"))
            .bearer_auth(PLATFORM)
            .body(json!({}).to_string())
            .send()
            .await
            .is_err()
    );
    s.shutdown().await;
}

/// The host and port of a server's base URL.
fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes, or `limit` passes; whether it closed, and what it sent.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(limit, conn.read_to_end(&mut seen)).await;
    (closed.is_ok(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_closed_after_the_timeout() {
    let config = ServerConfig {
        header_read_timeout: Duration::from_millis(400),
        ..test_config()
    };
    let s = Server::start_with(Backend::Sqlite, config).await.unwrap();
    let mut half = TcpStream::connect(addr(&s)).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (closed, _) = closed_within(&mut half, Duration::from_secs(5)).await;
    assert!(closed, "a half-sent request held its connection for 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // A connection that never sends a byte is closed as well.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await.0);
    // Whole requests are still served.
    s.send("GET", "/healthz", None, None, &[]).await.expect(200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_the_cap_gets_503_with_retry_after() {
    let config = ServerConfig {
        max_streams: 2,
        ..test_config()
    };
    let s = Server::start_with(Backend::Sqlite, config).await.unwrap();
    let open = |s: &Server| {
        s.http
            .get(s.url("/v1/events/stream"))
            .bearer_auth(PLATFORM)
            .send()
    };
    let first = open(&s).await.unwrap();
    let second = open(&s).await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    // Bounded: a stream let through would never end.
    let third = tokio::time::timeout(Duration::from_secs(5), open(&s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.status().as_u16(), 503);
    assert!(
        third.headers().contains_key("retry-after"),
        "{:?}",
        third.headers()
    );
    let body = tokio::time::timeout(Duration::from_secs(5), third.text())
        .await
        .unwrap()
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "too_many_streams");
    // Closing a stream frees its place (the server notices at the next heartbeat).
    drop(first);
    let mut status = 0;
    for _ in 0..50 {
        let r = open(&s).await.unwrap();
        status = r.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    drop(second);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let config = ServerConfig {
        max_connections: 2,
        ..test_config()
    };
    let s = Server::start_with(Backend::Sqlite, config).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        // A whole request, so the connection is surely accepted and kept alive.
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        idle.push(c);
    }
    let third = reqwest::Client::new();
    let waited = tokio::time::timeout(Duration::from_millis(700), third.get(s.url("/healthz")).send()).await;
    assert!(
        waited.is_err(),
        "a third connection was served past max_connections = 2"
    );
    // Once one closes, the next connection is served.
    drop(idle.pop());
    let served = tokio::time::timeout(Duration::from_secs(5), third.get(s.url("/healthz")).send())
        .await
        .expect("no connection was served after a slot freed")
        .unwrap();
    assert_eq!(served.status(), 200);
    drop(idle);
    s.shutdown().await;
}
