//! `keyledger serve` as a process, restarted over the same SQLite file: what must survive a
//! restart does (issue 11).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Serving, keyledger};
use serde_json::{Value, json};

const PLATFORM: &str = "restart-platform-token-0001";
const ORG_A: &str = "01900000-0000-7000-8000-0000000000a1";
const ORG_B: &str = "01900000-0000-7000-8000-0000000000b1";
const TENANT_1: &str = "01900000-0000-7000-8000-000000000a01";
const TENANT_2: &str = "01900000-0000-7000-8000-000000000b02";
const TENANT_3: &str = "01900000-0000-7000-8000-000000000b03";

impl Serving {
    async fn post(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(PLATFORM)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    common::write_config(
        &dir.join("keyledger.toml"),
        &format!("sqlite://{}", dir.join("data/keyledger.db").display()),
        &dir.join("data/internal-keys.json"),
        &[(PLATFORM, "platform")],
        "",
        "",
    )
}

fn tenant(id: &str, name: &str) -> Value {
    json!({"tenant_id": id, "name": name})
}

/// Every stored envelope, from `keyledger events export`.
fn exported(dir: &Path) -> Vec<Value> {
    let out = Command::new(keyledger())
        .args(["events", "export", "--store"])
        .arg(format!("sqlite://{}", dir.join("data/keyledger.db").display()))
        .env_remove("KEYLEDGER_STORE__URL")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

/// The `TenantAdded` events of `org` in `keyledger events export`.
fn exported_tenants_added(dir: &Path, org: &str) -> Vec<String> {
    exported(dir)
        .into_iter()
        .filter(|e| e["event_type"] == "TenantAdded" && e["stream_id"] == format!("org-{org}"))
        .map(|e| e["payload"]["tenant_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Issue 11, defect 1: a key used on organization A, reused on B after a restart, is another
/// key (keys are scoped by subject, method and path): B's tenant is recorded, and B keeps
/// working. Never a success with nothing recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_on_another_org_never_answers_without_recording() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Serving::start(&config, &dir.path().join("first.log"));
    for org in [ORG_A, ORG_B] {
        let (status, v) = server
            .post(
                "/v1/organizations",
                json!({"org_id": org, "name": "Org", "plan": {"kind": "enterprise", "tier": "standard"},
                       "tenants": [tenant(TENANT_1, "Default")]}),
                None,
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let (status, v) = server
        .post(
            &format!("/v1/organizations/{ORG_A}/tenants"),
            tenant(TENANT_2, "Finance"),
            Some("k1"),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(server.stop().success());

    let server = Serving::start(&config, &dir.path().join("second.log"));
    let (status, v) = server
        .post(
            &format!("/v1/organizations/{ORG_B}/tenants"),
            tenant(TENANT_3, "Legal"),
            Some("k1"),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tenant_id"] == TENANT_3),
        "{v}"
    );
    // B keeps working after it.
    let (status, v) = server
        .post(
            &format!("/v1/organizations/{ORG_B}/tenants"),
            tenant(TENANT_2, "Finance"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(server.stop().success());
    // What the server answered is what it stored.
    assert_eq!(exported_tenants_added(dir.path(), ORG_B), [TENANT_3, TENANT_2]);
    assert_eq!(exported_tenants_added(dir.path(), ORG_A), [TENANT_2]);
}

fn rebuild(dir: &Path) -> std::process::Output {
    Command::new(keyledger())
        .args(["projections", "rebuild", "--store"])
        .arg(format!("sqlite://{}", dir.join("data/keyledger.db").display()))
        .arg("--key-file")
        .arg(dir.join("data/internal-keys.json"))
        .env_remove("KEYLEDGER_STORE__URL")
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Issue 11, defect 11: on SQLite the server's runners are the projections' only writers, so
/// `projections rebuild` refuses (exit 1, naming why) while a server uses the file, and works
/// once it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_rebuild_refuses_while_a_server_uses_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Serving::start(&config, &dir.path().join("serve.log"));
    let (status, v) = server
        .post(
            "/v1/organizations",
            json!({"org_id": ORG_A, "name": "Org", "plan": {"kind": "free"},
                   "tenants": [tenant(TENANT_1, "Default")]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let refused = rebuild(dir.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use by a keyledger server"), "{stderr}");
    // A second server on the same file is refused the same way.
    let second = Command::new(keyledger())
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("KEYLEDGER_STORE__URL")
        .output()
        .unwrap();
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{second_err}");
    assert!(
        second_err.contains("in use by a keyledger server"),
        "{second_err}"
    );
    assert!(server.stop().success());
    let done = rebuild(dir.path());
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
}

/// A registration without `org_id`, repeated with the same `Idempotency-Key` after a restart,
/// answers the first organization and records no second one (ADR 0013: the org id comes from
/// the key when the body names none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_registration_without_org_id_after_a_restart_answers_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let body = json!({"name": "Org", "plan": {"kind": "enterprise", "tier": "standard"},
                      "tenants": [tenant(TENANT_1, "Default")]});
    let server = Serving::start(&config, &dir.path().join("first.log"));
    let (status, first) = server
        .post("/v1/organizations", body.clone(), Some("reg-1"))
        .await;
    assert_eq!(status, 201, "{first}");
    assert!(server.stop().success());

    let server = Serving::start(&config, &dir.path().join("second.log"));
    let (status, again) = server
        .post("/v1/organizations", body.clone(), Some("reg-1"))
        .await;
    assert!(status == 200 || status == 201, "{status} {again}");
    assert_eq!(again["org_id"], first["org_id"], "{again}");
    // Another key is another registration.
    let (status, other) = server.post("/v1/organizations", body, Some("reg-2")).await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["org_id"], first["org_id"]);
    assert!(server.stop().success());
    let registered = exported(dir.path())
        .iter()
        .filter(|e| e["event_type"] == "OrganizationRegistered")
        .count();
    assert_eq!(registered, 2);
}
