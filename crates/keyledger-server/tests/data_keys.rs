//! DEK releases over real sockets, on SQLite and on PostgreSQL, with the simulated vault behind
//! the official SDK adapter: who may, what is refused and when, the record each release leaves
//! in the tenant audit and the feed, and that the released key appears nowhere else.

#[macro_use]
mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use keyledger_domain::Role;
use keyledger_vault_sim::{Faults, KeyPatch};
use serde_json::{Value, json};

on_every_backend!(
    provider_releases_are_for_platform_services_and_recorded,
    customer_releases_ask_the_vault_and_the_customer_can_refuse,
    lost_and_unknown_deks_are_refused,
    a_released_key_appears_in_no_other_output,
);

fn release_path(org: &str, which: &str) -> String {
    format!("/v1/organizations/{org}/data-keys/{which}/release")
}

/// Releases and checks the answer's shape; returns it with the key decoded.
async fn release(s: &Server, org: &str, which: &str) -> (Value, Vec<u8>) {
    let r = s
        .call("POST", &release_path(org, which), PLATFORM, None)
        .await
        .expect(200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    let key = STANDARD.decode(body["key"].as_str().unwrap()).unwrap();
    assert_eq!(key.len(), 32, "{body}");
    (body, key)
}

/// The tenant's `DataKeyReleased` rows of `org`, once there are `n` (the audit projection
/// follows the log).
async fn released_rows(s: &Server, tenant: &str, org: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rows: Vec<Value> = s
            .audit_rows(tenant, 0)
            .await
            .into_iter()
            .filter(|r| r["action"] == "DataKeyReleased" && r["org_id"] == org)
            .collect();
        if rows.len() >= n || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn key_name(identifier: &str) -> &str {
    identifier.rsplit('/').next().unwrap()
}

async fn set_enabled(s: &Server, n: usize, enabled: bool) {
    let name = key_name(&s.demo.key_identifiers[n]).to_owned();
    let patch = KeyPatch {
        enabled: Some(enabled),
        ..KeyPatch::default()
    };
    s.demo
        .vault
        .update_key(keyledger_server::dev::DEMO_VAULT_URL, &name, None, patch)
        .unwrap();
}

async fn probe(s: &Server, org: &str) -> String {
    let r = s
        .call(
            "POST",
            &format!("/v1/organizations/{org}/key-health/probe"),
            ADMIN,
            None,
        )
        .await
        .expect(200);
    r.json()["status"].as_str().unwrap().to_owned()
}

async fn provider_releases_are_for_platform_services_and_recorded(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let (active, key) = release(s, &org, "active").await;
    assert_eq!(active["dek_id"], 1);
    assert_eq!(active["wrapped_by"]["kind"], "provider", "{active}");
    assert_eq!(active["cache_ttl_seconds"], 900);
    // The same DEK by id is the same key; a release is no command, so a repeat is another
    // release (no Idempotency-Key replay holds a key).
    let (by_id, again) = release(s, &org, "1").await;
    assert_eq!((by_id["dek_id"].clone(), &again), (json!(1), &key));
    let r = s
        .send(
            "POST",
            &release_path(&org, "active"),
            Some(PLATFORM),
            None,
            &[("idempotency-key", "k1")],
        )
        .await
        .expect(200);
    assert_eq!(r.json()["key"], active["key"]);
    // Platform only, and in scope.
    for (role, token) in ROLE_TOKENS {
        if role != Role::Platform {
            s.call("POST", &release_path(&org, "active"), token, None)
                .await
                .problem(403, "forbidden");
        }
    }
    s.send("POST", &release_path(&org, "active"), None, None, &[])
        .await
        .problem(401, "unauthenticated");
    // Every release is in the tenant audit of each of the organization's tenants: who, which
    // DEK, under which key; no key material.
    let released = released_rows(s, TENANT_A, &org, 3).await;
    assert_eq!(released.len(), 3, "{released:?}");
    for row in &released {
        assert_eq!(row["org_id"], org.as_str());
        assert_eq!(row["actor"]["id"], format!("{PLATFORM}@example.com"));
        assert_eq!(row["details"]["dek_id"], 1);
        assert_eq!(row["details"]["wrapped_by"]["kind"], "provider");
        assert!(row["details"].get("key").is_none() && row["details"].get("edek").is_none());
    }
    assert_eq!(
        released.iter().filter(|r| r["details"]["active"] == true).count(),
        2
    );
    assert_eq!(released_rows(s, TENANT_B, &org, 3).await.len(), 3);
    // The organization's own state did not move: its view version and event page are as
    // registered.
    let view = s
        .call("GET", &format!("/v1/organizations/{org}"), ADMIN, None)
        .await
        .expect(200);
    assert_eq!(view.json()["version"], 2);
    let page = s
        .call("GET", &format!("/v1/organizations/{org}/events"), AUDITOR, None)
        .await
        .expect(200);
    assert_eq!(page.json()["events"].as_array().unwrap().len(), 2);
    // The releases are in the feed, as the organization's.
    let feed = s
        .call("GET", "/v1/events?limit=1000", PLATFORM, None)
        .await
        .expect(200)
        .json();
    let ours: Vec<Value> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "keyledger.DataKeyReleased.v1" && e["subject"] == org.as_str())
        .cloned()
        .collect();
    assert_eq!(ours.len(), 3);
    assert_eq!(ours[0]["source"], format!("keyledger/organizations/{org}"));
    assert_eq!(ours[0]["data"]["dek_id"], 1);
}

async fn customer_releases_ask_the_vault_and_the_customer_can_refuse(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let cmk = format!("/v1/organizations/{org}/customer-managed-key");
    let view = s
        .call("POST", &cmk, ADMIN, Some(s.connection(0)))
        .await
        .expect(201)
        .json();
    let active_id = view["encryption"]["active_data_key_id"].clone();
    let before = s.demo.vault.request_count();
    let (active, key) = release(s, &org, "active").await;
    assert!(s.demo.vault.request_count() > before, "the vault was asked");
    assert_eq!(active["dek_id"], active_id);
    assert_eq!(active["wrapped_by"]["kind"], "customer");
    assert!(
        active["wrapped_by"]["key_identifier"]
            .as_str()
            .unwrap()
            .starts_with(&s.demo.key_identifiers[0])
    );
    assert_eq!(active["cache_ttl_seconds"], 3600);
    // The DEK from before the enable is still the provider's.
    let (first, _) = release(s, &org, "1").await;
    assert_eq!(first["wrapped_by"]["kind"], "provider");

    // The customer disables the key: the vault refuses the next release at once.
    set_enabled(s, 0, false).await;
    let r = s
        .call("POST", &release_path(&org, "active"), PLATFORM, None)
        .await
        .problem(409, "key_unavailable");
    assert_eq!(r.json()["reason"], "key_disabled");
    // Once a probe records it, releases are refused before the vault is asked.
    assert_eq!(probe(s, &org).await, "key_disabled");
    let before = s.demo.vault.request_count();
    let r = s
        .call("POST", &release_path(&org, "active"), PLATFORM, None)
        .await
        .problem(409, "key_unavailable");
    assert_eq!(r.json()["reason"], "key_disabled");
    assert_eq!(
        s.demo.vault.request_count(),
        before,
        "no vault call for a revoked key"
    );
    // Provider-wrapped DEKs are not the customer's to refuse.
    release(s, &org, "1").await;

    // Re-enabled and probed healthy: the same DEK again.
    set_enabled(s, 0, true).await;
    assert_eq!(probe(s, &org).await, "healthy");
    let (_, again) = release(s, &org, "active").await;
    assert_eq!(again, key);

    // A vault that fails for a while is a 503 with Retry-After, not a refusal.
    s.demo.vault.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    let r = s
        .call("POST", &release_path(&org, "active"), PLATFORM, None)
        .await
        .problem(503, "key_vault_unavailable");
    assert!(r.header("retry-after").is_some());
    s.demo.vault.set_faults(Faults::default());

    // Rotation: the active DEK is under the new key; every older customer DEK too, and each
    // still opens to the same bytes.
    let rotated = s
        .call(
            "POST",
            &format!("{cmk}/rotation"),
            ADMIN,
            Some(json!({"key_identifier": s.demo.key_identifiers[1]})),
        )
        .await
        .expect(200)
        .json();
    let new_active = rotated["encryption"]["active_data_key_id"].clone();
    let (after, _) = release(s, &org, "active").await;
    assert_eq!(after["dek_id"], new_active);
    assert!(
        after["wrapped_by"]["key_identifier"]
            .as_str()
            .unwrap()
            .starts_with(&s.demo.key_identifiers[1])
    );
    let (old, old_key) = release(s, &org, &active_id.to_string()).await;
    assert_eq!(old_key, key, "a rotation re-wraps, it does not change the DEK");
    assert!(
        old["wrapped_by"]["key_identifier"]
            .as_str()
            .unwrap()
            .starts_with(&s.demo.key_identifiers[1])
    );

    // Switched to provider-managed: every DEK unwraps with the internal key.
    s.call("DELETE", &cmk, ADMIN, None).await.expect(200);
    let (switched, _) = release(s, &org, "active").await;
    assert_eq!(switched["wrapped_by"]["kind"], "provider");
    assert_eq!(switched["cache_ttl_seconds"], 900);
    let (old, old_key) = release(s, &org, &active_id.to_string()).await;
    assert_eq!(
        (old["wrapped_by"]["kind"].as_str(), &old_key),
        (Some("provider"), &key)
    );
}

async fn lost_and_unknown_deks_are_refused(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    for (which, status, code) in [
        ("99", 404, "data_key_not_found"),
        ("0", 400, "invalid_request"),
        ("x", 400, "invalid_request"),
        ("4294967296", 400, "invalid_request"),
        ("-1", 400, "invalid_request"),
    ] {
        s.call("POST", &release_path(&org, which), PLATFORM, None)
            .await
            .problem(status, code);
    }
    s.call("POST", &release_path(&new_org(), "active"), PLATFORM, None)
        .await
        .problem(404, "organization_not_found");
    s.call("POST", &release_path("not-a-uuid", "active"), PLATFORM, None)
        .await
        .problem(400, "invalid_request");

    // The key is deleted and the data declared lost: its DEKs are never released again.
    let cmk = format!("/v1/organizations/{org}/customer-managed-key");
    let view = s
        .call("POST", &cmk, ADMIN, Some(s.connection(0)))
        .await
        .expect(201)
        .json();
    let lost = view["encryption"]["active_data_key_id"].to_string();
    let name = key_name(&s.demo.key_identifiers[0]).to_owned();
    s.demo
        .vault
        .delete_key(keyledger_server::dev::DEMO_VAULT_URL, &name)
        .unwrap();
    // Soft-deleted, it can still be recovered (key_deleted); purged, it cannot.
    assert_eq!(probe(s, &org).await, "key_deleted");
    s.demo.vault.purge_key(&name).unwrap();
    assert_eq!(probe(s, &org).await, "key_not_found");
    s.call(
        "POST",
        &format!("/v1/organizations/{org}/data-loss"),
        ADMIN,
        Some(json!({"reason": "the key was purged"})),
    )
    .await
    .expect(200);
    for which in ["active", lost.as_str()] {
        s.call("POST", &release_path(&org, which), PLATFORM, None)
            .await
            .problem(409, "data_lost");
    }
    s.call("DELETE", &format!("{cmk}?abandon_lost_data=true"), ADMIN, None)
        .await
        .expect(200);
    release(s, &org, "active").await;
    s.call("POST", &release_path(&org, &lost), PLATFORM, None)
        .await
        .problem(409, "data_lost");
    // Refusals record nothing: only the successful release is in the audit.
    let rows = released_rows(s, TENANT_A, &org, 1).await;
    // Give a wrongly recorded refusal time to show up too.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows_later = released_rows(s, TENANT_A, &org, 1).await;
    assert_eq!((rows.len(), rows_later.len()), (1, 1), "{rows_later:?}");
}

async fn a_released_key_appears_in_no_other_output(s: &Server) {
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
    let mut keys = Vec::new();
    for which in ["active", "1", "active"] {
        keys.push(release(s, &org, which).await.1);
    }
    let forms = |k: &Vec<u8>| [STANDARD.encode(k), hex(k)];
    // Everything else the service says: drop the release answers from the transcript first.
    s.transcript
        .lock()
        .unwrap()
        .retain(|body| !body.contains("cache_ttl_seconds"));
    released_rows(s, TENANT_A, &org, 3).await;
    for path in [
        format!("/v1/organizations/{org}"),
        format!("/v1/organizations/{org}/data-keys"),
        format!("/v1/organizations/{org}/audit/bundle"),
    ] {
        s.call("GET", &path, AUDITOR, None).await.expect(200);
    }
    s.call("GET", &format!("/v1/organizations/{org}/events"), PLATFORM, None)
        .await
        .expect(200);
    s.call("GET", "/v1/events?limit=1000", PLATFORM, None)
        .await
        .expect(200);
    s.send("GET", "/metrics", None, None, &[]).await.expect(200);
    let said = s.transcript.lock().unwrap().join("\n");
    assert!(said.contains("DataKeyReleased"), "the sweep saw the releases");
    // The store: every stored payload, as the store keeps it.
    let mut stored = String::new();
    let mut after = keyledger_domain::GlobalPosition(0);
    loop {
        let page = s.store.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.global_position;
        for e in &page {
            stored.push_str(&serde_json::to_string(&e.payload).unwrap());
        }
    }
    for key in &keys {
        for form in forms(key) {
            assert!(!said.contains(&form), "a released key in a response");
            assert!(!stored.contains(&form), "a released key in the store");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
