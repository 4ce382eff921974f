//! The server's life: a slow request ends in a 503 at the request timeout and records nothing;
//! readiness follows the store; shutdown ends open streams and lets in-flight requests finish.

mod common;

use std::time::Duration;

use common::*;
use keyledger_server::ServerConfig;
use keyledger_vault_sim::Faults;
use serde_json::json;

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
