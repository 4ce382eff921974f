//! The HTTP API over real sockets, on SQLite and on PostgreSQL: every route, every error code
//! of CONTRACT.md, the role/scope matrix, idempotency, If-Match, body limits, bad input that
//! appends nothing, and the SSE stream.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use keyledger_domain::Role;
use keyledger_vault_sim::{AppPatch, Faults, KeyPatch};
use serde_json::{Value, json};

on_every_backend!(
    seed_flow_through_every_route,
    every_error_code,
    role_and_scope_matrix,
    idempotent_replays,
    stale_if_match_is_412,
    oversized_bodies_are_413,
    bad_input_is_refused_and_appends_nothing,
    sse_resumes_with_last_event_id_without_gap_or_duplicate,
    a_stream_far_behind_gets_every_event_once_in_order_as_the_pages_show_it,
    operations_endpoints,
    out_of_range_positions_and_versions_are_400,
    an_out_of_range_last_event_id_is_a_400_not_a_dead_stream,
    a_tenant_auditor_with_no_organizations_sees_every_row_of_its_tenant,
    an_unknown_method_is_405_and_adds_no_metric_label,
    the_bearer_scheme_is_case_insensitive,
    a_caller_outside_the_scope_learns_nothing_from_if_match,
    a_tenant_scoped_reader_cannot_tell_a_missing_organization_from_a_forbidden_one,
    the_audit_stream_is_in_the_feed_and_in_no_organization_read,
);

fn org_path(org: &str, rest: &str) -> String {
    format!("/v1/organizations/{org}{rest}")
}

/// SSE messages read from `path` until `n` events arrived (or `timeout`).
async fn sse_events(
    s: &Server,
    path: &str,
    last_event_id: Option<&str>,
    n: usize,
    timeout: Duration,
) -> (Vec<(u64, String, Value)>, String) {
    let mut req = s.http.get(s.url(path)).bearer_auth(PLATFORM);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut raw = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while events.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        raw.push_str(std::str::from_utf8(&chunk).unwrap());
        events = parse_sse(&raw);
    }
    (events, raw)
}

/// One plan change of `org` to the enterprise `tier`, by billing.
async fn change_tier(s: &Server, org: &str, tier: &str) {
    s.call(
        "PUT",
        &org_path(org, "/plan"),
        BILLING,
        Some(json!({"plan": {"kind": "enterprise", "tier": tier}, "reason": "r"})),
    )
    .await
    .expect(200);
}

/// Every CloudEvent `GET /v1/events` shows, page after page from the start.
async fn event_pages(s: &Server) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .call(
                "GET",
                &format!("/v1/events?after={after}&limit=1000"),
                PLATFORM,
                None,
            )
            .await
            .json();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return all;
        }
        all.extend(events.iter().cloned());
        after = page["next_after"].as_u64().unwrap();
    }
}

fn parse_sse(raw: &str) -> Vec<(u64, String, Value)> {
    raw.split("\n\n")
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((id?, event?, data?))
        })
        .collect()
}

async fn seed_flow_through_every_route(s: &Server) {
    let org = new_org();
    // Register (platform) and read back (any role).
    let reply = s
        .call(
            "POST",
            "/v1/organizations",
            PLATFORM,
            Some(json!({
                "org_id": org, "name": "Contoso", "plan": {"kind": "enterprise", "tier": "standard"},
                "tenants": [{"tenant_id": TENANT_A, "name": "Default"}, {"tenant_id": TENANT_B, "name": "Finance"}],
            })),
        )
        .await
        .expect(201);
    let v = reply.json();
    assert_eq!(v["org_id"], org.as_str());
    assert_eq!(v["encryption"]["mode"], "provider_managed");
    assert_eq!(v["encryption"]["can_enable_customer_managed_key"], true);
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{}\"", v["version"]).as_str())
    );
    for (_, token) in ROLE_TOKENS {
        let got = s
            .call("GET", &org_path(&org, ""), token, None)
            .await
            .expect(200)
            .json();
        assert_eq!(got, v);
    }
    // A registration without an org id gets one.
    let generated = s
        .call(
            "POST",
            "/v1/organizations",
            PLATFORM,
            Some(json!({"name": "Fabrikam", "plan": {"kind": "free"}, "tenants": []})),
        )
        .await
        .expect(201)
        .json();
    assert!(generated["org_id"].as_str().unwrap().len() == 36);

    // Tenants.
    let extra = "01900000-0000-7000-8000-0000000000cc";
    let v = s
        .call(
            "POST",
            &org_path(&org, "/tenants"),
            PLATFORM,
            Some(json!({"tenant_id": extra, "name": "Ops"})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["tenants"].as_array().unwrap().len(), 3);
    let v = s
        .call(
            "DELETE",
            &org_path(&org, &format!("/tenants/{extra}")),
            PLATFORM,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["tenants"].as_array().unwrap().len(), 2);

    // "Test" records nothing; "Test and save" enables and pins the version.
    let before = s.event_count().await;
    let t = s
        .call(
            "POST",
            &org_path(&org, "/customer-managed-key/test"),
            ADMIN,
            Some(s.connection(0)),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(t["ok"], true, "{t}");
    assert!(t["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true));
    assert!(t["key"]["key_version"].is_string());
    assert_eq!(s.event_count().await, before);
    let v = s
        .call(
            "POST",
            &org_path(&org, "/customer-managed-key"),
            ADMIN,
            Some(s.connection(0)),
        )
        .await
        .expect(201)
        .json();
    let cmk = &v["encryption"]["customer_managed_key"];
    assert_eq!(v["encryption"]["mode"], "customer_managed");
    assert_eq!(cmk["key_name"], "cmk");
    assert_eq!(cmk["key_version"], t["key"]["key_version"]);
    assert_eq!(cmk["client_secret_set"], true);

    // Health: read, and probe now (support).
    let h = s
        .call("GET", &org_path(&org, "/key-health"), AUDITOR, None)
        .await
        .expect(200)
        .json();
    assert_eq!(h["status"], "healthy");
    let h = s
        .call("POST", &org_path(&org, "/key-health/probe"), SUPPORT, None)
        .await
        .expect(200)
        .json();
    assert_eq!(h["status"], "healthy");
    assert!(h["last_probe_at"].is_string());
    let h = s
        .call("GET", &org_path(&org, "/key-health"), ADMIN, None)
        .await
        .expect(200)
        .json();
    assert!(h["last_probe_at"].is_string());

    // Edit the secret (the app registration got a new one).
    s.demo.vault.update_app(
        &s.demo.application_id,
        AppPatch::default().secret("rotated-secret-2"),
    );
    let v = s
        .call(
            "PATCH",
            &org_path(&org, "/customer-managed-key"),
            ADMIN,
            Some(json!({"client_secret": "rotated-secret-2"})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["customer_managed_key"]["key_name"], "cmk");

    // Rotate to the second key; a PATCH with a changed key rotates back.
    let v = s
        .call(
            "POST",
            &org_path(&org, "/customer-managed-key/rotation"),
            ADMIN,
            Some(json!({"key_identifier": s.demo.key_identifiers[1]})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["customer_managed_key"]["key_name"], "cmk-2");
    assert!(v["encryption"]["customer_managed_key"]["last_rotated_at"].is_string());
    let v = s
        .call(
            "PATCH",
            &org_path(&org, "/customer-managed-key"),
            ADMIN,
            Some(json!({"key_identifier": s.demo.key_identifiers[0]})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["customer_managed_key"]["key_name"], "cmk");
    assert_eq!(v["key_history"].as_array().unwrap().len(), 3);

    // Data keys: no key material.
    let dk = s.call("GET", &org_path(&org, "/data-keys"), AUDITOR, None).await;
    let dk = dk.expect(200);
    assert!(
        !dk.text.contains("edek") && !dk.text.contains("ciphertext"),
        "{}",
        dk.text
    );
    let keys = dk.json()["data_keys"].as_array().unwrap().clone();
    assert!(keys.iter().any(|k| k["wrapped_by"]["kind"] == "customer"));

    // Downgrade locks; switching to provider-managed is still allowed.
    let v = s
        .call(
            "PUT",
            &org_path(&org, "/plan"),
            BILLING,
            Some(json!({"plan": {"kind": "pro"}, "reason": "downgrade"})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["locked"], true);
    let v = s
        .call("DELETE", &org_path(&org, "/customer-managed-key"), ADMIN, None)
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["mode"], "provider_managed");

    // The organization's events (public envelopes) and the global CloudEvents page.
    let evs = s
        .call(
            "GET",
            &org_path(&org, "/events?after_version=0&limit=1000"),
            AUDITOR,
            None,
        )
        .await
        .expect(200)
        .json();
    let evs = evs["events"].as_array().unwrap();
    assert_eq!(evs.len() as u64, v["version"].as_u64().unwrap());
    let tail = s
        .call(
            "GET",
            &org_path(&org, "/events?after_version=3&limit=2"),
            PLATFORM,
            None,
        )
        .await
        .expect(200)
        .json();
    let tail: Vec<u64> = tail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(tail, [4, 5]);
    s.all_published().await;
    let page = s
        .call("GET", "/v1/events?after=0&limit=3", PLATFORM, None)
        .await
        .expect(200)
        .json();
    let ce = &page["events"][0];
    assert_eq!(ce["specversion"], "1.0", "{page}");
    let third = page["events"][2]["sequence"].as_str().unwrap().to_owned();
    assert_eq!(page["next_after"].to_string(), third);
    let next = s
        .call(
            "GET",
            &format!("/v1/events?after={third}&limit=1"),
            PLATFORM,
            None,
        )
        .await
        .expect(200)
        .json();
    let fourth: u64 = next["events"][0]["sequence"].as_str().unwrap().parse().unwrap();
    assert!(fourth > third.parse().unwrap());

    // The tenant audit: each key-relevant event once per tenant, for both tenants.
    let rows = s.audit_rows(TENANT_A, 6).await;
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in [
        "CustomerManagedKeyEnabled",
        "CustomerManagedKeyConnectionEdited",
        "CustomerManagedKeyRotated",
        "CustomerManagedKeyLocked",
        "SwitchedToProviderManagedKey",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(
        rows.iter()
            .all(|r| r["tenant_id"] == TENANT_A && r["org_id"] == org.as_str())
    );
    let b_rows = s.audit_rows(TENANT_B, rows.len()).await;
    assert_eq!(b_rows.len(), rows.len());
    let rotated = s
        .call(
            "GET",
            &format!("/v1/tenants/{TENANT_A}/audit?action=CustomerManagedKeyRotated"),
            AUDITOR_A,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(rotated["entries"].as_array().unwrap().len(), 2);
    let first = s
        .call(
            "GET",
            &format!("/v1/tenants/{TENANT_A}/audit?limit=2"),
            ADMIN,
            None,
        )
        .await
        .expect(200)
        .json();
    let cursor = first["next"].as_str().unwrap().to_owned();
    let second = s
        .call(
            "GET",
            &format!("/v1/tenants/{TENANT_A}/audit?limit=1000&after={cursor}"),
            SUPPORT,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(second["entries"][0], rows[2]);
    assert!(second["next"].is_null());

    // Data loss: a second organization whose key is purged without a backup.
    let lost = new_org();
    s.register(&lost).await;
    let mut conn = s.connection(0);
    conn["client_secret"] = json!("rotated-secret-2");
    s.call(
        "POST",
        &org_path(&lost, "/customer-managed-key"),
        ADMIN,
        Some(conn),
    )
    .await
    .expect(201);
    s.demo
        .vault
        .delete_key(keyledger_server::dev::DEMO_VAULT_URL, "cmk")
        .unwrap();
    s.demo.vault.purge_key("cmk").unwrap();
    s.call("POST", &org_path(&lost, "/key-health/probe"), SUPPORT, None)
        .await
        .expect(200);
    let v = s
        .call(
            "POST",
            &org_path(&lost, "/data-loss"),
            SUPPORT,
            Some(json!({"reason": "purged without backup", "ticket": "SR-1234"})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["data_lost"], true);
    s.call("DELETE", &org_path(&lost, "/customer-managed-key"), ADMIN, None)
        .await
        .problem(409, "data_lost");
    let v = s
        .call(
            "DELETE",
            &org_path(&lost, "/customer-managed-key?abandon_lost_data=true"),
            ADMIN,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["encryption"]["mode"], "provider_managed");
    let dk = s
        .call("GET", &org_path(&lost, "/data-keys"), ADMIN, None)
        .await
        .expect(200)
        .json();
    assert!(
        dk["data_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["lost"] == true)
    );

    // The stream carries all of it, in order.
    let count = s.all_published().await.len();
    let (events, _) = sse_events(
        s,
        "/v1/events/stream?after=0",
        None,
        count,
        Duration::from_secs(20),
    )
    .await;
    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    let expected: Vec<u64> = event_pages(s)
        .await
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse::<u64>().unwrap())
        .collect();
    assert_eq!(ids, expected);
    for (id, event, data) in &events {
        assert_eq!(data["sequence"], id.to_string());
        assert!(
            data["type"]
                .as_str()
                .unwrap()
                .starts_with(&format!("keyledger.{event}.v"))
        );
    }
}

async fn every_error_code(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let cmk = org_path(&org, "/customer-managed-key");
    // 400, 401, 403, 404.
    let r = s
        .send("POST", "/v1/organizations", Some(PLATFORM), Some("{"), &[])
        .await;
    let r = r.problem(400, "invalid_request");
    assert!(r.json()["errors"].as_array().is_some_and(|e| !e.is_empty()));
    s.send("GET", &org_path(&org, ""), None, None, &[])
        .await
        .problem(401, "unauthenticated");
    s.send("GET", &org_path(&org, ""), Some("nope"), None, &[])
        .await
        .problem(401, "unauthenticated");
    s.call("GET", &org_path(&org, ""), ADMIN_OTHER, None)
        .await
        .problem(403, "forbidden");
    s.call("GET", &org_path(&new_org(), ""), AUDITOR, None)
        .await
        .problem(404, "organization_not_found");
    s.call(
        "GET",
        "/v1/tenants/01900000-0000-7000-8000-0000000000ee/audit",
        AUDITOR,
        None,
    )
    .await
    .problem(404, "tenant_not_found");
    s.call(
        "DELETE",
        &org_path(&org, "/tenants/01900000-0000-7000-8000-0000000000ee"),
        PLATFORM,
        None,
    )
    .await
    .problem(404, "tenant_not_found");
    // 409s.
    s.call(
        "POST",
        "/v1/organizations",
        PLATFORM,
        Some(json!({"org_id": org, "name": "x", "plan": {"kind": "free"}})),
    )
    .await
    .problem(409, "already_registered");
    s.call("DELETE", &cmk, ADMIN, None)
        .await
        .problem(409, "cmk_not_enabled");
    s.call("POST", &cmk, ADMIN, Some(s.connection(0)))
        .await
        .expect(201);
    s.call("POST", &cmk, ADMIN, Some(s.connection(0)))
        .await
        .problem(409, "cmk_already_enabled");
    s.call(
        "POST",
        &org_path(&org, "/customer-managed-key/rotation"),
        ADMIN,
        Some(json!({"key_identifier": s.demo.key_identifiers[0]})),
    )
    .await
    .problem(409, "same_key");
    let r = s
        .send(
            "PUT",
            &org_path(&org, "/plan"),
            Some(BILLING),
            Some(r#"{"plan":{"kind":"pro"},"reason":"a"}"#),
            &[("idempotency-key", "k-409")],
        )
        .await;
    r.expect(200);
    s.send(
        "PUT",
        &org_path(&org, "/plan"),
        Some(BILLING),
        Some(r#"{"plan":{"kind":"free"},"reason":"a"}"#),
        &[("idempotency-key", "k-409")],
    )
    .await
    .problem(409, "idempotency_key_reused");
    s.call("PATCH", &cmk, ADMIN, Some(json!({"client_secret": "x"})))
        .await
        .problem(409, "cmk_locked_by_plan");
    let free = new_org();
    s.call(
        "POST",
        "/v1/organizations",
        PLATFORM,
        Some(json!({"org_id": free, "name": "f", "plan": {"kind": "free"}})),
    )
    .await
    .expect(201);
    s.call(
        "POST",
        &org_path(&free, "/customer-managed-key"),
        ADMIN,
        Some(s.connection(0)),
    )
    .await
    .problem(409, "plan_not_eligible");
    // 412 and 413.
    s.send(
        "PUT",
        &org_path(&free, "/plan"),
        Some(BILLING),
        Some(r#"{"plan":{"kind":"pro"},"reason":"a"}"#),
        &[("if-match", "\"99\"")],
    )
    .await
    .problem(412, "version_mismatch");
    let big = format!(r#"{{"name":"{}","plan":{{"kind":"free"}}}}"#, "x".repeat(20_000));
    s.send("POST", "/v1/organizations", Some(PLATFORM), Some(&big), &[])
        .await
        .problem(413, "payload_too_large");
    // 422: the new key disabled; the old key gone.
    let fresh = new_org();
    s.register(&fresh).await;
    let cmk2 = org_path(&fresh, "/customer-managed-key");
    s.call("POST", &cmk2, ADMIN, Some(s.connection(0)))
        .await
        .expect(201);
    let disabled = KeyPatch {
        enabled: Some(false),
        ..KeyPatch::default()
    };
    s.demo
        .vault
        .update_key(keyledger_server::dev::DEMO_VAULT_URL, "cmk-2", None, disabled)
        .unwrap();
    let r = s
        .call(
            "POST",
            &org_path(&fresh, "/customer-managed-key/rotation"),
            ADMIN,
            Some(json!({"key_identifier": s.demo.key_identifiers[1]})),
        )
        .await
        .problem(422, "key_validation_failed");
    assert_eq!(
        (r.json()["reason"].as_str(), r.json()["key"].as_str()),
        (Some("key_disabled"), Some("new"))
    );
    // 503 with Retry-After while the vault answers 503.
    s.demo.vault.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    let r = s
        .call(
            "POST",
            &org_path(&fresh, "/customer-managed-key/test"),
            ADMIN,
            Some(s.connection(0)),
        )
        .await
        .problem(503, "key_vault_unavailable");
    assert!(r.header("retry-after").is_some());
    let r = s
        .call("DELETE", &cmk2, ADMIN, None)
        .await
        .problem(503, "key_vault_unavailable");
    assert!(r.header("retry-after").is_some());
    s.demo.vault.set_faults(Faults::default());
    // 409 data_lost is covered by the seed flow; here: declaring twice.
    s.demo
        .vault
        .delete_key(keyledger_server::dev::DEMO_VAULT_URL, "cmk")
        .unwrap();
    s.demo.vault.purge_key("cmk").unwrap();
    let h = s
        .call("POST", &org_path(&fresh, "/key-health/probe"), ADMIN, None)
        .await
        .expect(200);
    assert_eq!(h.json()["status"], "key_not_found");
    let loss = json!({"reason": "purged", "ticket": "SR-1"});
    s.call("POST", &org_path(&fresh, "/data-loss"), ADMIN, Some(loss.clone()))
        .await
        .expect(200);
    s.call("POST", &org_path(&fresh, "/data-loss"), ADMIN, Some(loss))
        .await
        .problem(409, "data_lost");
    let r = s
        .call(
            "POST",
            &org_path(&fresh, "/customer-managed-key/rotation"),
            ADMIN,
            Some(json!({"key_identifier": s.demo.key_identifiers[1]})),
        )
        .await;
    assert_eq!(r.status, 409);
    // Error bodies carry no internals.
    for body in s.transcript.lock().unwrap().iter() {
        for leak in ["sqlx", "SELECT", "panicked", "backtrace", &s.demo.client_secret] {
            assert!(!body.contains(leak), "{leak} in {body}");
        }
    }
}

/// The roles each route admits (CONTRACT.md).
fn route_matrix(org: &str, conn: &Value) -> Vec<(&'static str, String, Option<Value>, Vec<Role>)> {
    use Role::*;
    let any = vec![OrgAdmin, Auditor, Platform, Billing, Support];
    vec![
        (
            "POST",
            "/v1/organizations".into(),
            Some(json!({"name": "m", "plan": {"kind": "free"}})),
            vec![Platform],
        ),
        ("GET", org_path(org, ""), None, any.clone()),
        (
            "PUT",
            org_path(org, "/plan"),
            Some(json!({"plan": {"kind": "enterprise", "tier": "standard"}, "reason": "r"})),
            vec![Billing],
        ),
        (
            "POST",
            org_path(org, "/tenants"),
            Some(json!({"tenant_id": "01900000-0000-7000-8000-0000000000dd", "name": "t"})),
            vec![Platform],
        ),
        (
            "DELETE",
            org_path(org, &format!("/tenants/{TENANT_B}")),
            None,
            vec![Platform],
        ),
        (
            "POST",
            org_path(org, "/customer-managed-key/test"),
            Some(conn.clone()),
            vec![OrgAdmin],
        ),
        (
            "POST",
            org_path(org, "/customer-managed-key"),
            Some(conn.clone()),
            vec![OrgAdmin],
        ),
        (
            "PATCH",
            org_path(org, "/customer-managed-key"),
            Some(json!({})),
            vec![OrgAdmin],
        ),
        (
            "POST",
            org_path(org, "/customer-managed-key/rotation"),
            Some(json!({"key_identifier": conn["key_identifier"]})),
            vec![OrgAdmin],
        ),
        (
            "DELETE",
            org_path(org, "/customer-managed-key"),
            None,
            vec![OrgAdmin],
        ),
        (
            "POST",
            org_path(org, "/data-loss"),
            Some(json!({"reason": "r", "ticket": "T-1"})),
            vec![OrgAdmin, Support],
        ),
        ("GET", org_path(org, "/key-health"), None, any.clone()),
        (
            "POST",
            org_path(org, "/key-health/probe"),
            None,
            vec![OrgAdmin, Support],
        ),
        (
            "GET",
            org_path(org, "/data-keys"),
            None,
            vec![OrgAdmin, Auditor, Support],
        ),
        ("GET", org_path(org, "/events"), None, vec![Platform, Auditor]),
        (
            "POST",
            org_path(org, "/data-keys/active/release"),
            None,
            vec![Platform],
        ),
        (
            "POST",
            org_path(org, "/data-keys/1/release"),
            None,
            vec![Platform],
        ),
        (
            "GET",
            format!("/v1/tenants/{TENANT_A}/audit"),
            None,
            vec![Auditor, OrgAdmin, Support],
        ),
        ("GET", "/v1/events".into(), None, vec![Platform]),
    ]
}

async fn role_and_scope_matrix(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    s.tenant_known(TENANT_A).await;
    let conn = s.connection(0);
    for (method, path, body, allowed) in route_matrix(&org, &conn) {
        for (role, token) in ROLE_TOKENS {
            let r = s.call(method, &path, token, body.clone()).await;
            if allowed.contains(&role) {
                assert!(
                    r.status != 403 && r.status != 401,
                    "{method} {path} as {role:?}: {}",
                    r.text
                );
            } else {
                r.problem(403, "forbidden");
            }
        }
        // A token scoped to another organization is refused on this one.
        if path.contains(&org) {
            s.call(method, &path, ADMIN_OTHER, body.clone())
                .await
                .problem(403, "forbidden");
        }
        s.send(method, &path, None, None, &[])
            .await
            .problem(401, "unauthenticated");
    }
    // The stream: platform only.
    for (role, token) in ROLE_TOKENS {
        let r = s
            .http
            .get(s.url("/v1/events/stream"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status() == 200, role == Role::Platform, "{role:?}");
    }
    // An auditor of tenant A: its own tenant's audit, not tenant B's.
    s.call("GET", &format!("/v1/tenants/{TENANT_A}/audit"), AUDITOR_A, None)
        .await
        .expect(200);
    s.call("GET", &format!("/v1/tenants/{TENANT_B}/audit"), AUDITOR_A, None)
        .await
        .problem(403, "forbidden");
    // …and the organizations that hold tenant A, not one that does not.
    let other = new_org();
    s.call(
        "POST",
        "/v1/organizations",
        PLATFORM,
        Some(json!({"org_id": other, "name": "o", "plan": {"kind": "free"},
                    "tenants": [{"tenant_id": "01900000-0000-7000-8000-0000000000de", "name": "x"}]})),
    )
    .await
    .expect(201);
    s.call("GET", &org_path(&other, ""), AUDITOR_A, None)
        .await
        .problem(403, "forbidden");
}

async fn idempotent_replays(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let body = r#"{"plan":{"kind":"enterprise","tier":"premium"},"reason":"upsell"}"#;
    let key = [("idempotency-key", "plan-change-1")];
    let first = s
        .send("PUT", &org_path(&org, "/plan"), Some(BILLING), Some(body), &key)
        .await
        .expect(200);
    let count = s.event_count().await;
    for _ in 0..3 {
        let again = s
            .send("PUT", &org_path(&org, "/plan"), Some(BILLING), Some(body), &key)
            .await
            .expect(200);
        assert_eq!(again.text, first.text);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(s.event_count().await, count);
    // The same key and body with a malformed or another `If-Match` is another request: never a
    // replayed success.
    for if_match in ["{}", "\"1\""] {
        let reply = s
            .send(
                "PUT",
                &org_path(&org, "/plan"),
                Some(BILLING),
                Some(body),
                &[key[0], ("if-match", if_match)],
            )
            .await;
        assert!(reply.status >= 400, "If-Match {if_match}: {reply:?}");
        assert_eq!(reply.header("idempotent-replayed"), None);
    }
    // Concurrent repeats of a new key append once.
    let key2 = [("idempotency-key", "register-2")];
    let org2 = new_org();
    let reg = json!({"org_id": org2, "name": "c", "plan": {"kind": "free"}}).to_string();
    let replies = futures::future::join_all(
        (0..8).map(|_| s.send("POST", "/v1/organizations", Some(PLATFORM), Some(&reg), &key2)),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == 201), "{replies:?}");
    let org2_events = s
        .call("GET", &org_path(&org2, "/events"), PLATFORM, None)
        .await
        .json()["events"]
        .as_array()
        .unwrap()
        .len();
    let once = s.call("GET", &org_path(&org2, ""), PLATFORM, None).await.json()["version"]
        .as_u64()
        .unwrap();
    assert_eq!(org2_events as u64, once);
    // Keys are per caller: another token's same key is its own.
    let other = s
        .send(
            "PUT",
            &org_path(&org, "/plan"),
            Some(BILLING),
            Some(r#"{"plan":{"kind":"enterprise","tier":"standard"},"reason":"x"}"#),
            &[("idempotency-key", "plan-change-2")],
        )
        .await;
    other.expect(200);
    // The same key with another body is refused and appends nothing.
    let count = s.event_count().await;
    s.send(
        "PUT",
        &org_path(&org, "/plan"),
        Some(BILLING),
        Some(r#"{"plan":{"kind":"free"},"reason":"x"}"#),
        &key,
    )
    .await
    .problem(409, "idempotency_key_reused");
    assert_eq!(s.event_count().await, count);
    // Keys are scoped by (subject, method, path): the same key on another organization's path
    // is another key, and its command is recorded there.
    let org3 = new_org();
    s.register(&org3).await;
    let before = s.call("GET", &org_path(&org3, ""), PLATFORM, None).await.json()["version"]
        .as_u64()
        .unwrap();
    let elsewhere = s
        .send("PUT", &org_path(&org3, "/plan"), Some(BILLING), Some(body), &key)
        .await
        .expect(200);
    assert_eq!(elsewhere.header("idempotent-replayed"), None);
    assert_eq!(elsewhere.json()["version"].as_u64(), Some(before + 1));
    assert_eq!(
        s.call("GET", &org_path(&org3, ""), PLATFORM, None).await.json()["plan"]["tier"],
        "premium"
    );
}

async fn stale_if_match_is_412(s: &Server) {
    let org = new_org();
    let v = s.register(&org).await;
    let version = v["version"].as_u64().unwrap();
    let etag = format!("\"{version}\"");
    let body = r#"{"plan":{"kind":"enterprise","tier":"premium"},"reason":"r"}"#;
    let r = s
        .send(
            "PUT",
            &org_path(&org, "/plan"),
            Some(BILLING),
            Some(body),
            &[("if-match", &etag)],
        )
        .await
        .expect(200);
    let new_etag = r.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let count = s.event_count().await;
    let r = s
        .send(
            "PUT",
            &org_path(&org, "/plan"),
            Some(BILLING),
            Some(body),
            &[("if-match", &etag)],
        )
        .await
        .problem(412, "version_mismatch");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains(&version.to_string())
    );
    assert_eq!(s.event_count().await, count);
    s.send(
        "PUT",
        &org_path(&org, "/plan"),
        Some(BILLING),
        Some(body),
        &[("if-match", "seven")],
    )
    .await
    .problem(400, "invalid_request");
}

async fn oversized_bodies_are_413(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let count = s.event_count().await;
    let huge = format!(
        r#"{{"plan":{{"kind":"free"}},"reason":"{}"}}"#,
        "r".repeat(64 * 1024)
    );
    // Every time: the service reads the oversized body before it answers, so the client gets
    // the 413 rather than a connection closed under it (which flaked about 1 in 50).
    for _ in 0..20 {
        s.send("PUT", &org_path(&org, "/plan"), Some(BILLING), Some(&huge), &[])
            .await
            .problem(413, "payload_too_large");
    }
    // With an idempotency key the limit holds too.
    s.send(
        "PUT",
        &org_path(&org, "/plan"),
        Some(BILLING),
        Some(&huge),
        &[("idempotency-key", "big")],
    )
    .await
    .problem(413, "payload_too_large");
    assert_eq!(s.event_count().await, count);
}

async fn bad_input_is_refused_and_appends_nothing(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let conn = s.connection(0);
    let with = |field: &str, value: Value| {
        let mut c = conn.clone();
        c[field] = value;
        c.to_string()
    };
    let cmk = org_path(&org, "/customer-managed-key");
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("POST", cmk.clone(), "{\"directory_id\":".into(), ""),
        ("POST", cmk.clone(), "[1,2,3]".into(), ""),
        (
            "POST",
            cmk.clone(),
            with("directory_id", json!(42)),
            "directory_id",
        ),
        (
            "POST",
            cmk.clone(),
            with("directory_id", json!("not-a-uuid")),
            "directory_id",
        ),
        (
            "POST",
            cmk.clone(),
            with("client_secret", json!(7)),
            "client_secret",
        ),
        (
            "POST",
            cmk.clone(),
            with("key_identifier", json!("http://demo.vault.azure.net/keys/cmk")),
            "key_identifier",
        ),
        (
            "POST",
            cmk.clone(),
            with("key_identifier", json!("https://evil.example.com/keys/cmk")),
            "key_identifier",
        ),
        (
            "POST",
            cmk.clone(),
            with(
                "key_identifier",
                json!("https://demo.vault.azure.net/secrets/cmk"),
            ),
            "key_identifier",
        ),
        ("POST", cmk.clone(), with("surprise", json!(true)), ""),
        (
            "PUT",
            org_path(&org, "/plan"),
            r#"{"plan":{"kind":"platinum"},"reason":"r"}"#.into(),
            "plan",
        ),
        (
            "PUT",
            org_path(&org, "/plan"),
            r#"{"plan":{"kind":"pro","tier":"x"},"reason":"r"}"#.into(),
            "plan",
        ),
        (
            "PUT",
            org_path(&org, "/plan"),
            r#"{"plan":{"kind":"pro"},"reason":5}"#.into(),
            "reason",
        ),
        (
            "PUT",
            "/v1/organizations/not-a-uuid/plan".into(),
            r#"{"plan":{"kind":"pro"},"reason":"r"}"#.into(),
            "org",
        ),
        (
            "POST",
            "/v1/organizations".into(),
            r#"{"org_id":"123","name":"x","plan":{"kind":"free"}}"#.into(),
            "org_id",
        ),
        (
            "POST",
            org_path(&org, "/tenants"),
            r#"{"tenant_id":"zzz","name":"x"}"#.into(),
            "tenant_id",
        ),
    ];
    let count = s.event_count().await;
    for (method, path, body, field) in cases {
        let r = s
            .send(
                method,
                &path,
                Some(ADMIN_OR_ROLE(method, &path)),
                Some(&body),
                &[],
            )
            .await;
        assert!(
            r.status == 400 || r.status == 422,
            "{method} {path} {body}: {}",
            r.text
        );
        let p = r.problem(400, "invalid_request");
        let errors = p.json()["errors"].clone();
        if !field.is_empty() {
            assert!(
                errors
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["field"].as_str().unwrap().starts_with(field)),
                "{body}: {errors}"
            );
        }
        assert!(!p.text.contains(&s.demo.client_secret));
    }
    // A wrong content type is refused too.
    let r = s
        .http
        .post(s.url(&cmk))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(conn.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.call("GET", "/v1/events?after=abc", PLATFORM, None)
        .await
        .problem(400, "invalid_request");
    s.call(
        "GET",
        &format!("/v1/tenants/{TENANT_A}/audit?since=yesterday"),
        AUDITOR,
        None,
    )
    .await
    .problem(400, "invalid_request");
    assert_eq!(s.event_count().await, count);
}

/// The token with the role a command route needs, so only the input is wrong.
#[allow(non_snake_case)]
fn ADMIN_OR_ROLE(method: &str, path: &str) -> &'static str {
    if path.ends_with("/plan") {
        BILLING
    } else if path == "/v1/organizations" || path.ends_with("/tenants") {
        PLATFORM
    } else {
        let _ = method;
        ADMIN
    }
}

/// A consumer far behind is sent the log in large chunks, several rendered at once on their own
/// tasks: the stream still carries every event once, in commit order, each the same CloudEvent
/// as the pages of `GET /v1/events` show.
async fn a_stream_far_behind_gets_every_event_once_in_order_as_the_pages_show_it(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    // Enough for several chunks of 256 events in flight at once.
    for tier in ["premium", "standard"].into_iter().cycle().take(800) {
        change_tier(s, &org, tier).await;
    }
    let positions = s.all_published().await;
    assert!(positions.len() > 800);
    let pages = event_pages(s).await;
    let (streamed, _) = sse_events(
        s,
        "/v1/events/stream?after=0",
        None,
        positions.len(),
        Duration::from_secs(60),
    )
    .await;
    let ids: Vec<u64> = streamed.iter().map(|e| e.0).collect();
    assert_eq!(ids, positions, "every event once, in commit order");
    assert_eq!(pages.len(), streamed.len());
    for ((id, event_type, data), page) in streamed.iter().zip(&pages) {
        assert_eq!(data, page, "the CloudEvent of position {id}");
        let prefix = format!("keyledger.{event_type}.v");
        assert!(page["type"].as_str().unwrap().starts_with(&prefix), "{page}");
    }
}

async fn sse_resumes_with_last_event_id_without_gap_or_duplicate(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let mut plans = ["premium", "standard"].into_iter().cycle();
    for _ in 0..10 {
        change_tier(s, &org, plans.next().unwrap()).await;
    }
    let head = s.event_count().await;
    // Read part, disconnect, resume from the last id while more events are appended.
    let (first, _) = sse_events(s, "/v1/events/stream", None, 5, Duration::from_secs(10)).await;
    let last = first.last().unwrap().0;
    let writer = async {
        for _ in 0..10 {
            change_tier(s, &org, plans.next().unwrap()).await;
        }
    };
    let want = head + 10 - first.len();
    let last_id = last.to_string();
    let reader = sse_events(
        s,
        "/v1/events/stream?after=0",
        Some(&last_id),
        want,
        Duration::from_secs(20),
    );
    let ((rest, raw), ()) = tokio::join!(reader, writer);
    let mut ids: Vec<u64> = first.iter().chain(rest.iter()).map(|e| e.0).collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicates across the reconnect");
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ids.len(), head + 10);
    s.all_published().await;
    let page = s
        .call("GET", "/v1/events?after=0&limit=1000", PLATFORM, None)
        .await
        .json();
    let all: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, all);
    // The heartbeat is a comment; wait for one on an idle stream.
    let (_, idle) = sse_events(
        s,
        &format!("/v1/events/stream?after={}", all.last().unwrap()),
        None,
        1,
        Duration::from_millis(900),
    )
    .await;
    assert!(
        idle.contains(": heartbeat") || raw.contains(": heartbeat"),
        "no heartbeat in {idle:?}"
    );
    // A malformed Last-Event-ID is a 400.
    let r = s
        .http
        .get(s.url("/v1/events/stream"))
        .bearer_auth(PLATFORM)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

async fn operations_endpoints(s: &Server) {
    let r = s.send("GET", "/healthz", None, None, &[]).await.expect(200);
    assert_eq!(r.json()["status"], "ok");
    let r = s.send("GET", "/readyz", None, None, &[]).await.expect(200);
    assert_eq!(r.json()["status"], "ready");
    s.register(&new_org()).await;
    let r = s.send("GET", "/metrics", None, None, &[]).await.expect(200);
    assert!(r.text.contains("keyledger_http_requests_total"), "{}", r.text);
    assert!(r.text.contains("route=\"/v1/organizations\""), "{}", r.text);
    assert!(r.text.contains("keyledger_events_appended_total"));
    s.send("GET", "/nowhere", None, None, &[])
        .await
        .problem(404, "not_found");
}

/// Above every position and version the store can hold (2^63), and the store's largest
/// (2^63 - 1), after which no position can follow.
const TOO_FAR: [&str; 2] = ["9223372036854775808", "9223372036854775807"];

#[track_caller]
fn names_field(r: Reply, field: &str) {
    let r = r.problem(400, "invalid_request");
    assert_eq!(r.json()["errors"][0]["field"], field, "{}", r.text);
}

async fn out_of_range_positions_and_versions_are_400(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    s.tenant_known(TENANT_A).await;
    for n in TOO_FAR {
        names_field(
            s.call("GET", &format!("/v1/events?after={n}"), PLATFORM, None)
                .await,
            "after",
        );
        names_field(
            s.call(
                "GET",
                &org_path(&org, &format!("/events?after_version={n}")),
                PLATFORM,
                None,
            )
            .await,
            "after_version",
        );
        names_field(
            s.call(
                "GET",
                &format!("/v1/tenants/{TENANT_A}/audit?after={n}"),
                AUDITOR,
                None,
            )
            .await,
            "after",
        );
        let r = s
            .http
            .get(s.url(&format!("/v1/events/stream?after={n}")))
            .bearer_auth(PLATFORM)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "stream ?after={n}");
    }
    // Malformed and past u64 are 400 too; the largest accepted values still answer.
    for q in [
        "after=-1",
        "after=1e3",
        "after=18446744073709551616",
        "limit=4294967296",
    ] {
        s.call("GET", &format!("/v1/events?{q}"), PLATFORM, None)
            .await
            .problem(400, "invalid_request");
    }
    let r = s
        .call("GET", "/v1/events?after=9223372036854775806", PLATFORM, None)
        .await
        .expect(200);
    assert_eq!(r.json()["events"], json!([]));
    s.call(
        "GET",
        &org_path(&org, "/events?after_version=9223372036854775806"),
        PLATFORM,
        None,
    )
    .await
    .expect(200);
}

async fn an_out_of_range_last_event_id_is_a_400_not_a_dead_stream(s: &Server) {
    for id in TOO_FAR.into_iter().chain(["-1", "18446744073709551616"]) {
        let r = s
            .send(
                "GET",
                "/v1/events/stream",
                Some(PLATFORM),
                None,
                &[("last-event-id", id)],
            )
            .await;
        names_field(r, "last-event-id");
    }
}

async fn a_tenant_auditor_with_no_organizations_sees_every_row_of_its_tenant(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    // Two key-relevant events, each an audit row of tenant A.
    s.call(
        "POST",
        &org_path(&org, "/customer-managed-key"),
        ADMIN,
        Some(s.connection(0)),
    )
    .await
    .expect(201);
    s.call(
        "POST",
        &org_path(&org, "/customer-managed-key/rotation"),
        ADMIN,
        Some(json!({"key_identifier": s.demo.key_identifiers[1]})),
    )
    .await
    .expect(200);
    let all = s.audit_rows(TENANT_A, 2).await;
    assert!(all.len() >= 2, "{all:?}");
    let page = s
        .call(
            "GET",
            &format!("/v1/tenants/{TENANT_A}/audit?limit=1000"),
            AUDITOR_A_NO_ORGS,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page["entries"].as_array().unwrap().len(), all.len(), "{page}");
    // `tenants` still governs: tenant B stays closed to it.
    s.call(
        "GET",
        &format!("/v1/tenants/{TENANT_B}/audit"),
        AUDITOR_A_NO_ORGS,
        None,
    )
    .await
    .problem(403, "forbidden");
    // An empty organization list widens nothing for a token with every tenant: it names no
    // organization and no tenant, so it reads no row.
    let page = s
        .call(
            "GET",
            &format!("/v1/tenants/{TENANT_A}/audit?limit=1000"),
            ADMIN_NO_ORGS,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page["entries"], json!([]), "{page}");
}

/// The `keyledger_http_requests_total` series, one line each.
fn request_series(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("keyledger_http_requests_total{"))
        .map(|l| l.rsplit_once(' ').map_or(l, |(series, _)| series).to_owned())
        .collect()
}

async fn an_unknown_method_is_405_and_adds_no_metric_label(s: &Server) {
    // Warm up every series this test can add: one request of each shape.
    s.send("BREW", "/healthz", None, None, &[]).await;
    s.send("GET", "/made-up-0", None, None, &[]).await;
    s.send("BREW", "/made-up-0", None, None, &[]).await;
    let before = request_series(&s.send("GET", "/metrics", None, None, &[]).await.text);
    for i in 0..40 {
        let method = format!("X-METHOD-{i}");
        let r = s
            .send(&method, "/healthz", None, None, &[])
            .await
            .problem(405, "method_not_allowed");
        assert!(
            r.header("allow").is_some_and(|a| a.contains("GET")),
            "{:?}",
            r.headers
        );
        s.send(&method, "/v1/events", Some(PLATFORM), None, &[])
            .await
            .problem(405, "method_not_allowed");
        s.send(&method, &format!("/made-up-{i}"), None, None, &[])
            .await
            .problem(405, "method_not_allowed");
        s.send("GET", &format!("/made-up-{i}/{method}"), None, None, &[])
            .await
            .problem(404, "not_found");
    }
    // A known method the route does not serve is 405 too.
    s.send("DELETE", "/healthz", None, None, &[])
        .await
        .problem(405, "method_not_allowed");
    let metrics = s.send("GET", "/metrics", None, None, &[]).await.text;
    assert!(!metrics.contains("X-METHOD"), "{metrics}");
    assert!(!metrics.contains("made-up"), "{metrics}");
    let after = request_series(&metrics);
    let added: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    // At most: GET /metrics, X-METHOD on /v1/events, DELETE /healthz.
    assert!(added.len() <= 3, "new series: {added:#?}");
}

async fn the_bearer_scheme_is_case_insensitive(s: &Server) {
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let auth = format!("{scheme} {PLATFORM}");
        s.send(
            "GET",
            "/v1/events?limit=1",
            None,
            None,
            &[("authorization", &auth)],
        )
        .await
        .expect(200);
    }
    s.send(
        "GET",
        "/v1/events",
        None,
        None,
        &[("authorization", &format!("Basic {PLATFORM}"))],
    )
    .await
    .problem(401, "unauthenticated");
}

async fn a_caller_outside_the_scope_learns_nothing_from_if_match(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    s.call(
        "POST",
        &org_path(&org, "/customer-managed-key"),
        ADMIN,
        Some(s.connection(0)),
    )
    .await
    .expect(201);
    let count = s.event_count().await;
    // ADMIN_OTHER administers another organization: stale or current If-Match, the answer
    // is the same 403 and names no version.
    for etag in ["\"1\"", "\"999\""] {
        let r = s
            .send(
                "DELETE",
                &org_path(&org, "/customer-managed-key"),
                Some(ADMIN_OTHER),
                None,
                &[("if-match", etag)],
            )
            .await
            .problem(403, "forbidden");
        assert!(
            !r.text.contains("999") && !r.text.contains("version"),
            "{}",
            r.text
        );
        // A role that may not run the command at all, in scope: also 403, not 412.
        s.send(
            "PUT",
            &org_path(&org, "/plan"),
            Some(ADMIN),
            Some(r#"{"plan":{"kind":"enterprise","tier":"premium"},"reason":"r"}"#),
            &[("if-match", etag)],
        )
        .await
        .problem(403, "forbidden");
    }
    // An organization that does not exist looks the same to it.
    s.send(
        "DELETE",
        &org_path(&new_org(), "/customer-managed-key"),
        Some(ADMIN_OTHER),
        None,
        &[("if-match", "\"999\"")],
    )
    .await
    .problem(403, "forbidden");
    assert_eq!(s.event_count().await, count);
    // The administrator in scope still gets the 412.
    s.send(
        "DELETE",
        &org_path(&org, "/customer-managed-key"),
        Some(ADMIN),
        None,
        &[("if-match", "\"999\"")],
    )
    .await
    .problem(412, "version_mismatch");
}

async fn a_tenant_scoped_reader_cannot_tell_a_missing_organization_from_a_forbidden_one(s: &Server) {
    let elsewhere = new_org();
    s.call(
        "POST",
        "/v1/organizations",
        PLATFORM,
        Some(json!({"org_id": elsewhere, "name": "o", "plan": {"kind": "free"},
                    "tenants": [{"tenant_id": "01900000-0000-7000-8000-0000000000de", "name": "x"}]})),
    )
    .await
    .expect(201);
    let missing = new_org();
    for rest in ["", "/key-health", "/data-keys", "/events"] {
        let a = s.call("GET", &org_path(&elsewhere, rest), AUDITOR_A, None).await;
        let b = s.call("GET", &org_path(&missing, rest), AUDITOR_A, None).await;
        assert_eq!(
            (a.status, a.code()),
            (b.status, b.code()),
            "{rest}: {} vs {}",
            a.text,
            b.text
        );
        b.problem(403, "forbidden");
    }
    // An unrestricted auditor still learns that an organization does not exist.
    s.call("GET", &org_path(&missing, ""), AUDITOR, None)
        .await
        .problem(404, "organization_not_found");
}

/// Stream `audit` (ADR 0025): its checkpoints reach the platform feed and the SSE stream as
/// CloudEvents of source `keyledger/audit`, and never an organization's events, view or
/// tenant audit; the projections fold on past them.
async fn the_audit_stream_is_in_the_feed_and_in_no_organization_read(s: &Server) {
    use keyledger_domain::{AuditLog, StreamId, StreamVersion};
    let org = new_org();
    s.register(&org).await;
    let org_id: keyledger_domain::OrgId = org.parse().unwrap();
    let cp = s
        .store
        .append(
            StreamId::Audit,
            StreamVersion::NONE,
            vec![keyledger_store::conformance::checkpoint_signed(
                AuditLog::Org(org_id),
                2,
            )],
            None,
        )
        .await
        .unwrap();
    s.call(
        "POST",
        &org_path(&org, "/customer-managed-key"),
        ADMIN,
        Some(s.connection(0)),
    )
    .await
    .expect(201);

    let all = s.all_published().await;
    let page = s
        .call("GET", "/v1/events?after=0&limit=1000", PLATFORM, None)
        .await
        .expect(200)
        .json();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), all.len());
    let audit: Vec<&Value> = events
        .iter()
        .filter(|e| e["source"] == "keyledger/audit")
        .collect();
    assert_eq!(audit.len(), 1, "{page}");
    assert_eq!(audit[0]["type"], "keyledger.AuditCheckpointSigned.v1");
    assert_eq!(audit[0]["subject"], org.as_str());
    assert_eq!(audit[0]["sequence"], cp.last_position.0.to_string());
    assert_eq!(audit[0]["data"]["tree_size"], 2);
    assert_eq!(audit[0]["data"]["log"], org.as_str());
    assert!(audit[0]["data"]["note"].as_str().unwrap().contains("/org/"));

    let (sse, _) = sse_events(
        s,
        "/v1/events/stream?after=0",
        None,
        all.len(),
        Duration::from_secs(10),
    )
    .await;
    let checkpoint = sse
        .iter()
        .find(|(_, event, _)| event == "AuditCheckpointSigned")
        .expect("the checkpoint on the SSE stream");
    assert_eq!(checkpoint.0, cp.last_position.0);
    assert_eq!(checkpoint.2, *audit[0]);

    // The organization's own reads hold none of it; its projections went on past it.
    let rows = s.audit_rows(TENANT_A, 1).await;
    assert!(
        rows.iter().any(|r| r["action"] == "CustomerManagedKeyEnabled"),
        "the tenant audit folded past the checkpoint: {rows:?}"
    );
    assert!(rows.iter().all(|r| r["action"] != "AuditCheckpointSigned"));
    for token in [AUDITOR, PLATFORM] {
        let own = s
            .call("GET", &org_path(&org, "/events?limit=1000"), token, None)
            .await
            .expect(200)
            .json();
        let own = own["events"].as_array().unwrap();
        assert!(!own.is_empty());
        assert!(
            own.iter().all(|e| e["stream_id"] == format!("org-{org}")
                && e["event_type"] != "AuditCheckpointSigned"),
            "{own:?}"
        );
    }
    // "audit" is no organization id.
    s.call("GET", "/v1/organizations/audit/events", AUDITOR, None)
        .await
        .problem(400, "invalid_request");
}
