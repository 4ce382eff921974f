//! Replays every request of the recorded official-SDK sessions (tests/fixtures/akv-recordings,
//! from Azure/azure-sdk-assets) against the simulated vault's router, and checks the status,
//! the headers that matter (Content-Type, WWW-Authenticate) and the body shape against the
//! recorded response.
//!
//! Values the real service generated (key versions, ciphertexts) differ in the simulation; as
//! in a test proxy, each recorded value is mapped to the simulated one the first time a
//! response shows it, and later requests are rewritten with that map.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt as _;
use keyledger_vault_sim::{AppRegistration, Clock, KEY_PERMISSIONS, Vault, VaultConfig, router};
use serde_json::Value;
use tower::ServiceExt as _;

const CLIENT_ID: &str = "8a1f0000-0000-4000-8000-00000000c1d1";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/akv-recordings")
}

struct Replay {
    router: axum::Router,
    host: String,
    token: String,
    subs: Vec<(String, String)>,
}

async fn send(router: &axum::Router, req: Request<Body>) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

impl Replay {
    async fn new(host: &str) -> Self {
        let config = VaultConfig {
            retention_days: 7,
            deletion_settle_requests: 1,
            ..VaultConfig::default()
        };
        let tenant = config.tenant_id.clone();
        let vault = Vault::new(config, Clock::system());
        vault.register_app(AppRegistration::new(
            &tenant,
            CLIENT_ID,
            "replay-secret",
            KEY_PERMISSIONS,
        ));
        let router = router(vault);
        let form = format!(
            "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret=replay-secret&scope=https%3A%2F%2Fvault.azure.net%2F.default"
        );
        let req = Request::post(format!("/{tenant}/oauth2/v2.0/token"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let (status, _, body) = send(&router, req).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let token: Value = serde_json::from_slice(&body).unwrap();
        Self {
            router,
            host: host.to_owned(),
            token: token["access_token"].as_str().unwrap().to_owned(),
            subs: Vec::new(),
        }
    }

    fn rewrite(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (from, to) in &self.subs {
            out = out.replace(from, to);
        }
        out
    }

    /// Learns recorded → simulated values from a pair of response bodies.
    fn learn(&mut self, recorded: &Value, actual: &Value, key: &str) {
        match (recorded, actual) {
            (Value::Object(r), Value::Object(a)) => {
                for (k, rv) in r {
                    if let Some(av) = a.get(k) {
                        self.learn(rv, av, k);
                    }
                }
            }
            (Value::String(r), Value::String(a)) if r != a && matches!(key, "kid" | "value") => {
                if key == "kid" {
                    let rv = r.rsplit('/').next().unwrap().to_owned();
                    let av = a.rsplit('/').next().unwrap().to_owned();
                    self.subs.push((rv, av));
                }
                self.subs.push((r.clone(), a.clone()));
            }
            _ => {}
        }
    }
}

/// Same JSON shape: the same object keys at every level and the same value types.
fn same_shape(path: &str, recorded: &Value, actual: &Value, problems: &mut Vec<String>) {
    match (recorded, actual) {
        (Value::Object(r), Value::Object(a)) => {
            for k in r.keys() {
                match a.get(k) {
                    Some(av) => same_shape(&format!("{path}.{k}"), &r[k], av, problems),
                    None => problems.push(format!("{path}.{k} missing")),
                }
            }
            for k in a.keys().filter(|k| !r.contains_key(*k)) {
                problems.push(format!("{path}.{k} not in the recording"));
            }
        }
        (Value::Array(r), Value::Array(a)) => {
            if let (Some(r0), Some(a0)) = (r.first(), a.first()) {
                same_shape(&format!("{path}[0]"), r0, a0, problems);
            }
        }
        (r, a) => {
            let kind = |v: &Value| match v {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            if kind(r) != kind(a) {
                problems.push(format!("{path}: recorded {} but got {}", kind(r), kind(a)));
            }
        }
    }
}

/// Values that must be equal, not just of the same type.
const EQUAL_FIELDS: &[&str] = &[
    "/error/code",
    "/error/innererror/code",
    "/key/kty",
    "/key/key_ops",
    "/key/e",
    "/key/kid",
    "/kid",
    "/attributes/enabled",
    "/attributes/key_size",
    "/attributes/recoveryLevel",
    "/attributes/recoverableDays",
    "/attributes/exportable",
    "/recoveryId",
    "/tags",
];

async fn replay_file(name: &str) -> usize {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    let recording: Value = serde_json::from_str(&text).unwrap();
    let vault_url = recording["Variables"]["AZURE_KEYVAULT_URL"].as_str().unwrap();
    let host = vault_url.trim_start_matches("https://").trim_end_matches('/');
    let mut replay = Replay::new(host).await;
    let entries = recording["Entries"].as_array().unwrap();
    for (i, entry) in entries.iter().enumerate() {
        let what = format!(
            "{name} entry {i} ({} {})",
            entry["RequestMethod"], entry["RequestUri"]
        );
        let uri = entry["RequestUri"].as_str().unwrap();
        let path_and_query = &uri[uri.find(".net").unwrap() + 4..];
        let mut req = Request::builder()
            .method(entry["RequestMethod"].as_str().unwrap())
            .uri(replay.rewrite(path_and_query))
            .header(header::HOST, &replay.host);
        let headers = entry["RequestHeaders"].as_object().unwrap();
        if headers.contains_key("Authorization") {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", replay.token));
        }
        let body = match &entry["RequestBody"] {
            Value::Null => Body::empty(),
            v => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(replay.rewrite(&v.to_string()))
            }
        };
        let (status, got_headers, got_body) = send(&replay.router, req.body(body).unwrap()).await;

        assert_eq!(
            u64::from(status),
            entry["StatusCode"].as_u64().unwrap(),
            "{what}: status; body {}",
            String::from_utf8_lossy(&got_body)
        );
        let recorded_headers = entry["ResponseHeaders"].as_object().unwrap();
        if let Some(ct) = recorded_headers.get("Content-Type") {
            assert_eq!(
                got_headers.get(header::CONTENT_TYPE).unwrap(),
                ct.as_str().unwrap(),
                "{what}: Content-Type"
            );
        }
        if let Some(cc) = recorded_headers.get("Cache-Control") {
            assert_eq!(
                got_headers.get(header::CACHE_CONTROL).unwrap(),
                cc.as_str().unwrap(),
                "{what}: Cache-Control"
            );
        }
        for present in ["x-ms-request-id", "x-ms-keyvault-service-version"] {
            if recorded_headers.keys().any(|k| k.eq_ignore_ascii_case(present)) {
                assert!(got_headers.contains_key(present), "{what}: no {present}");
            }
        }
        if !recorded_headers.contains_key("WWW-Authenticate") {
            assert!(
                !got_headers.contains_key(header::WWW_AUTHENTICATE),
                "{what}: unexpected challenge"
            );
        }
        if let Some(challenge) = recorded_headers.get("WWW-Authenticate") {
            let got = got_headers
                .get(header::WWW_AUTHENTICATE)
                .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
                .to_str()
                .unwrap();
            let recorded = challenge.as_str().unwrap();
            // Same scheme and parameters; the tenant in `authorization` is the vault's own.
            assert!(
                got.starts_with("Bearer authorization=\"https://login.microsoftonline.com/"),
                "{what}: {got}"
            );
            let resource = |s: &str| s.split("resource=").nth(1).map(str::to_owned);
            assert_eq!(resource(got), resource(recorded), "{what}: challenge resource");
        }

        let recorded_body = &entry["ResponseBody"];
        if recorded_body.is_null() {
            assert!(got_body.is_empty(), "{what}: expected no body");
            continue;
        }
        let actual: Value = serde_json::from_slice(&got_body).unwrap();
        let mut problems = Vec::new();
        same_shape("$", recorded_body, &actual, &mut problems);
        replay.learn(recorded_body, &actual, "");
        for field in EQUAL_FIELDS {
            if let Some(r) = recorded_body.pointer(field) {
                let r = replay.rewrite(&r.to_string());
                let a = actual.pointer(field).map(|a| a.to_string()).unwrap_or_default();
                if r != a {
                    problems.push(format!("{field}: recorded {r} got {a}"));
                }
            }
        }
        // Decrypted and unwrapped values must equal what was encrypted or wrapped.
        let round_trip = path_and_query.contains("/unwrapkey") || path_and_query.contains("/decrypt");
        if round_trip && recorded_body["value"] != actual["value"] {
            problems.push("value: the round trip did not return the plaintext".into());
        }
        if let (Some(d), Some(p)) = (
            recorded_body["deletedDate"].as_i64(),
            recorded_body["scheduledPurgeDate"].as_i64(),
        ) {
            let (ad, ap) = (
                actual["deletedDate"].as_i64().unwrap(),
                actual["scheduledPurgeDate"].as_i64().unwrap(),
            );
            if p - d != ap - ad {
                problems.push("scheduledPurgeDate - deletedDate differs from the retention".into());
            }
        }
        assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
    }
    entries.len()
}

#[tokio::test]
async fn replay_wrap_key_unwrap_key() {
    assert_eq!(replay_file("wrap_key_unwrap_key.json").await, 4);
}

#[tokio::test]
async fn replay_key_roundtrip() {
    assert_eq!(replay_file("key_roundtrip.json").await, 3);
}

#[tokio::test]
async fn replay_encrypt_decrypt_latest_key_version() {
    assert_eq!(replay_file("encrypt_decrypt_latest_key_version.json").await, 4);
}

#[tokio::test]
async fn replay_purge_key() {
    assert_eq!(replay_file("purge_key.json").await, 5);
}

#[tokio::test]
async fn replay_update_key_properties() {
    assert_eq!(replay_file("update_key_properties.json").await, 3);
}

#[test]
fn every_recording_has_a_replay_test() {
    let mut files: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "encrypt_decrypt_latest_key_version.json",
            "key_roundtrip.json",
            "purge_key.json",
            "update_key_properties.json",
            "wrap_key_unwrap_key.json"
        ]
    );
}
