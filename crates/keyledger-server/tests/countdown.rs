//! The recoverability countdown over HTTP, on SQLite and on PostgreSQL, with the demo vault
//! behind the official SDK adapter: `GET …/key-health` and the probe show `recoverable_until`
//! (the vault's `scheduledPurgeDate`) while the key is soft-deleted, and `null` otherwise.

#[macro_use]
mod common;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{Value, json};

on_every_backend!(a_soft_deleted_key_shows_until_when_it_can_be_recovered);

fn health_path(org: &str) -> String {
    format!("/v1/organizations/{org}/key-health")
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// `GET …/key-health`, once it shows `status` (the view follows the log).
async fn health_once(s: &Server, org: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let h = s
            .call("GET", &health_path(org), AUDITOR, None)
            .await
            .expect(200)
            .json();
        if h["status"] == status || std::time::Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn a_soft_deleted_key_shows_until_when_it_can_be_recovered(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    s.call(
        "POST",
        &format!("/v1/organizations/{org}/customer-managed-key"),
        ADMIN,
        Some(s.connection(0)),
    )
    .await
    .expect(201);
    let probe_path = format!("{}/probe", health_path(&org));
    let h = s.call("POST", &probe_path, ADMIN, None).await.expect(200).json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["recoverable_until"], Value::Null, "{h}");

    // The customer soft-deletes the key; the vault keeps it until its scheduled purge.
    let name = s.demo.key_identifiers[0].rsplit('/').next().unwrap().to_owned();
    let base = keyledger_server::dev::DEMO_VAULT_URL;
    s.demo.vault.delete_key(base, &name).unwrap();
    let record = s.demo.vault.deleted_key(base, &name).unwrap();
    let purge = DateTime::from_timestamp(record["scheduledPurgeDate"].as_i64().unwrap(), 0).unwrap();

    let h = s.call("POST", &probe_path, ADMIN, None).await.expect(200).json();
    assert_eq!(h["status"], "key_deleted", "{h}");
    assert_eq!(time(&h["recoverable_until"]), purge, "{h}");
    let h = health_once(s, &org, "key_deleted").await;
    assert_eq!(h["status"], "key_deleted", "{h}");
    assert_eq!(time(&h["recoverable_until"]), purge, "{h}");
    assert!(h["last_probe_at"].is_string());
    // The organization view shows it too.
    let view = s
        .call("GET", &format!("/v1/organizations/{org}"), AUDITOR, None)
        .await
        .expect(200)
        .json();
    assert_eq!(
        time(&view["encryption"]["health"]["recoverable_until"]),
        purge,
        "{view}"
    );
    // Still recoverable: no release, and no data-loss declaration.
    let r = s
        .call(
            "POST",
            &format!("/v1/organizations/{org}/data-keys/active/release"),
            PLATFORM,
            None,
        )
        .await
        .problem(409, "key_unavailable");
    assert_eq!(r.json()["reason"], "key_deleted");
    s.call(
        "POST",
        &format!("/v1/organizations/{org}/data-loss"),
        ADMIN,
        Some(json!({"reason": "deleted", "ticket": "SR-2"})),
    )
    .await
    .problem(400, "invalid_request");

    // Recovered: healthy, and the date is gone.
    s.demo.vault.recover_key(base, &name).unwrap();
    let h = s.call("POST", &probe_path, ADMIN, None).await.expect(200).json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["recoverable_until"], Value::Null);
    let h = health_once(s, &org, "healthy").await;
    assert_eq!(h["recoverable_until"], Value::Null, "{h}");
}
