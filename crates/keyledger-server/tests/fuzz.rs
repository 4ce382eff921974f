//! Fuzz-style robustness: 10,000 random or mutated bodies to each command route, through the
//! full router (middleware included) over SQLite. No 5xx other than 503, no panic, and a
//! refused request appends nothing.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use common::*;
use keyledger_server::dev::DemoVault;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const BODIES_PER_ROUTE: usize = 10_000;

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..12) {
        0 => Value::Null,
        1 => json!(rng.r#gen::<bool>()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(rng.r#gen::<f64>() * 1e300),
        4 => json!(u64::MAX),
        5 => json!(""),
        6 => json!("x".repeat(rng.gen_range(0..3000))),
        7 => json!(
            (0..rng.gen_range(0..40))
                .map(|_| char::from_u32(rng.gen_range(0..0x11_0000)).unwrap_or('\u{fffd}'))
                .collect::<String>()
        ),
        8 => json!("01900000-0000-7000-8000-00000000000a"),
        9 => json!("https://demo.vault.azure.net/keys/cmk-2"),
        10 if depth < 4 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ if depth < 4 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..4) {
                m.insert(format!("k{}", rng.gen_range(0..5)), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => json!(0),
    }
}

/// One random or mutated body derived from a valid one.
fn mutate(rng: &mut StdRng, valid: &Value) -> Vec<u8> {
    let text = valid.to_string().into_bytes();
    match rng.gen_range(0..9) {
        // Random bytes.
        0 => (0..rng.gen_range(0..300)).map(|_| rng.r#gen::<u8>()).collect(),
        // One byte flipped, dropped or inserted.
        1 => {
            let mut t = text.clone();
            let i = rng.gen_range(0..t.len());
            match rng.gen_range(0..3) {
                0 => t[i] ^= 1 << rng.gen_range(0..8),
                1 => {
                    t.remove(i);
                }
                _ => t.insert(i, rng.r#gen()),
            }
            t
        }
        // Truncated.
        2 => text[..rng.gen_range(0..text.len())].to_vec(),
        // A field replaced by a random value.
        3 | 4 => {
            let mut v = valid.clone();
            if let Some(obj) = v.as_object_mut() {
                let keys: Vec<String> = obj.keys().cloned().collect();
                if !keys.is_empty() {
                    let k = &keys[rng.gen_range(0..keys.len())];
                    obj.insert(k.clone(), random_value(rng, 0));
                }
            }
            v.to_string().into_bytes()
        }
        // A field removed, or an unknown one added.
        5 => {
            let mut v = valid.clone();
            if let Some(obj) = v.as_object_mut() {
                if rng.r#gen() {
                    let keys: Vec<String> = obj.keys().cloned().collect();
                    if let Some(k) = keys.get(rng.gen_range(0..keys.len().max(1))) {
                        obj.remove(k);
                    }
                } else {
                    obj.insert("unexpected".into(), random_value(rng, 0));
                }
            }
            v.to_string().into_bytes()
        }
        // Deep nesting.
        6 => {
            let depth = rng.gen_range(100..5000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        // Any JSON value at all.
        7 => random_value(rng, 0).to_string().into_bytes(),
        // The valid body itself (some commands then succeed, or are refused by the rules).
        _ => text,
    }
}

async fn count(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mutated_bodies_per_command_route() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Arc::new(keyledger_store::KeyRing::generate());
    let store = keyledger_sqlite::SqliteStore::open(&dir.path().join("fuzz.db"), ring)
        .await
        .unwrap();
    let pool = store.read_pool().clone();
    let sink = Arc::new(keyledger_sqlite::SqliteProjections::new(&store));
    let demo = DemoVault::new();
    let services = services(Arc::new(store), sink, &demo);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let router = keyledger_server::router(services, test_config(), stopped);
    let send = |method: &str, path: String, token: &str, body: Vec<u8>| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        router.clone().oneshot(request)
    };
    // One organization with a customer-managed key, one without.
    let cmk_org = new_org();
    let plain_org = new_org();
    for org in [&cmk_org, &plain_org] {
        let body = json!({"org_id": org, "name": "Fuzz", "plan": {"kind": "enterprise", "tier": "standard"},
                          "tenants": [{"tenant_id": TENANT_A, "name": "A"}]});
        let r = send(
            "POST",
            "/v1/organizations".into(),
            PLATFORM,
            body.to_string().into_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
    }
    let conn = json!({
        "directory_id": demo.directory_id, "application_id": demo.application_id,
        "client_secret": demo.client_secret, "key_identifier": demo.key_identifiers[0],
    });
    let r = send(
        "POST",
        format!("/v1/organizations/{cmk_org}/customer-managed-key"),
        ADMIN,
        conn.to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);

    let routes: Vec<(&str, String, &str, Value)> = vec![
        (
            "POST",
            "/v1/organizations".into(),
            PLATFORM,
            json!({"name": "n", "plan": {"kind": "enterprise", "tier": "standard"},
                   "tenants": [{"tenant_id": TENANT_B, "name": "B"}]}),
        ),
        (
            "PUT",
            format!("/v1/organizations/{plain_org}/plan"),
            BILLING,
            json!({"plan": {"kind": "enterprise", "tier": "premium"}, "reason": "r"}),
        ),
        (
            "POST",
            format!("/v1/organizations/{plain_org}/tenants"),
            PLATFORM,
            json!({"tenant_id": TENANT_B, "name": "B"}),
        ),
        (
            "POST",
            format!("/v1/organizations/{plain_org}/customer-managed-key/test"),
            ADMIN,
            conn.clone(),
        ),
        (
            "POST",
            format!("/v1/organizations/{plain_org}/customer-managed-key"),
            ADMIN,
            conn.clone(),
        ),
        (
            "PATCH",
            format!("/v1/organizations/{cmk_org}/customer-managed-key"),
            ADMIN,
            json!({"client_secret": demo.client_secret}),
        ),
        (
            "POST",
            format!("/v1/organizations/{cmk_org}/customer-managed-key/rotation"),
            ADMIN,
            json!({"key_identifier": demo.key_identifiers[1]}),
        ),
        (
            "POST",
            format!("/v1/organizations/{cmk_org}/data-loss"),
            ADMIN,
            json!({"reason": "r", "ticket": "T-1"}),
        ),
        (
            "DELETE",
            format!("/v1/organizations/{cmk_org}/customer-managed-key"),
            ADMIN,
            json!({}),
        ),
    ];
    let mut rng = StdRng::seed_from_u64(0x6b65_796c_6564);
    for (method, path, token, valid) in routes {
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for _ in 0..BODIES_PER_ROUTE {
            let body = mutate(&mut rng, &valid);
            let before = count(&pool).await;
            let response = send(method, path.clone(), token, body.clone()).await.unwrap();
            let status = response.status().as_u16();
            *statuses.entry(status).or_default() += 1;
            let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            assert!(
                status < 500 || status == 503,
                "{method} {path} → {status} for body {shown:?}"
            );
            if !(200..300).contains(&status) {
                assert_eq!(
                    count(&pool).await,
                    before,
                    "{method} {path} → {status} appended: {shown:?}"
                );
            }
        }
        println!("{method} {path}: {statuses:?}");
        // A DELETE reads no body: only the rules answer it.
        if method != "DELETE" {
            assert!(
                statuses.contains_key(&400),
                "the route refused nothing: {statuses:?}"
            );
        }
    }
}
