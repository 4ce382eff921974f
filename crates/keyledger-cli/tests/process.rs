//! The shipped binaries as processes: `akv-emulator` (HTTPS, self-signed CA) and `keyledger
//! serve --config FILE` pointed at it through the official Azure SDK. Runs the seed flow over
//! HTTP, checks the audit and the stream, stops the server with SIGTERM (exit 0), runs
//! `keyledger verify` (exit 0), and searches every output for the client secrets and for the
//! data keys released to a platform service.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Api, Emulator, Killed, first_line, keyledger};
use serde_json::{Value, json};

const APP: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000e2";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET_1: &str = "process-test-secret-ONE-4f1c";
const SECRET_2: &str = "process-test-secret-TWO-9b7e";
const TENANT_A: &str = "01900000-0000-7000-8000-00000000000a";
const TENANT_B: &str = "01900000-0000-7000-8000-00000000000b";
const ORG: &str = "01900000-0000-7000-8000-0000000000e1";

const ADMIN: &str = "process-admin-token-000001";
const AUDITOR: &str = "process-auditor-token-00001";
const PLATFORM: &str = "process-platform-token-0001";
const BILLING: &str = "process-billing-token-00001";

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyledger_and_the_emulator_as_processes_run_the_seed_flow() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/keyledger.db");
    seed_flow(dir.path(), &format!("sqlite://{}", db.display()), Some(&db)).await;
}

/// The same flow, one request at a time, on PostgreSQL with `serve`'s own pool (issue 11 item
/// 14: requests of this flow waited 30 s for a connection and failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_runs_request_by_request_on_postgres() {
    let Some(pg) = keyledger_postgres::testing::TestDatabase::create("kl_process").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    seed_flow(dir.path(), pg.url(), None).await;
}

/// The seed flow against `keyledger serve` on `store` (`sqlite_file`: the SQLite file, searched
/// for secrets with the rest).
async fn seed_flow(dir: &Path, store: &str, sqlite_file: Option<&Path>) {
    // The emulator.
    let emulator = Emulator::start(&dir.join("emulator"));
    let vault = emulator.vault.clone();
    let ca_cert = emulator.ca_cert.clone();
    let r = emulator
        .control(
            "POST",
            "apps",
            json!({"tenant_id": TENANT, "client_id": APP, "client_secret": SECRET_1,
               "key_permissions": ["get", "wrapKey", "unwrapKey"]}),
        )
        .await;
    assert_eq!(r, 201);
    for name in ["cmk", "cmk-2"] {
        assert_eq!(
            emulator
                .control("POST", "keys", json!({"name": name, "kty": "RSA", "size": 2048}))
                .await,
            201
        );
    }
    let disabled = emulator
        .control(
            "POST",
            "keys",
            json!({"name": "cmk-off", "kty": "RSA", "size": 2048, "enabled": false}),
        )
        .await;
    assert_eq!(disabled, 201);

    // The server, configured by file.
    let config = dir.join("keyledger.toml");
    let token = |t: &str, role: &str| {
        format!("[[auth.tokens]]\ntoken = \"{t}\"\nsubject = \"{role}@example.com\"\nroles = [\"{role}\"]\n")
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\nurl = \"{store}\"\n\n[keys]\n\
             internal_key_file = \"{}\"\nvault = \"azure\"\n\n[keys.azure]\nauthority_host = \"{}\"\n\
             allowed_vault_hosts = [\"{}\"]\nca_cert = \"{ca_cert}\"\nrequest_timeout = \"10s\"\n\n\
             [health]\nprobe_interval = \"1h\"\ntransient_grace = \"15m\"\n\n\
             [audit]\nsigning_key_file = \"{}\"\n\n{}{}{}{}",
            dir.join("data/internal-keys.json").display(),
            emulator.authority_host,
            // The emulator's host with its port: an entry without one allows only port 443.
            vault.trim_start_matches("https://"),
            dir.join("data/audit-signing-key").display(),
            token(ADMIN, "org_admin"),
            token(AUDITOR, "auditor"),
            token(PLATFORM, "platform"),
            token(BILLING, "billing"),
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let mut server = Command::new(keyledger())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .env_remove("KEYLEDGER_STORE__URL")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let listening = first_line(&mut server);
    let base = listening
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first stdout line: {listening:?}"))
        .to_owned();
    let mut server = Killed(server);
    let c = Api::new(reqwest::Client::new(), base);
    let org = |rest: &str| format!("/v1/organizations/{ORG}{rest}");
    let conn = |key: &str, secret: &str| {
        json!({"directory_id": TENANT, "application_id": APP, "client_secret": secret,
               "key_identifier": format!("{vault}/keys/{key}")})
    };

    // The seed flow.
    c.ok(
        "POST",
        "/v1/organizations",
        PLATFORM,
        Some(json!({"org_id": ORG, "name": "Contoso", "plan": {"kind": "enterprise", "tier": "standard"},
                    "tenants": [{"tenant_id": TENANT_A, "name": "Default"}, {"tenant_id": TENANT_B, "name": "Finance"}]})),
    )
    .await;
    let t = c
        .ok(
            "POST",
            &org("/customer-managed-key/test"),
            ADMIN,
            Some(conn("cmk", SECRET_1)),
        )
        .await;
    assert_eq!(t["ok"], true, "{t}");
    let v = c
        .ok(
            "POST",
            &org("/customer-managed-key"),
            ADMIN,
            Some(conn("cmk", SECRET_1)),
        )
        .await;
    assert_eq!(v["encryption"]["mode"], "customer_managed");
    // Edit the secret after the app registration got a new one.
    let patch = emulator
        .control(
            "PATCH",
            &format!("apps/{APP}"),
            json!({"client_secret": SECRET_2}),
        )
        .await;
    assert!((200..300).contains(&patch), "{patch}");
    c.ok(
        "PATCH",
        &org("/customer-managed-key"),
        ADMIN,
        Some(json!({"client_secret": SECRET_2})),
    )
    .await;
    let v = c
        .ok(
            "POST",
            &org("/customer-managed-key/rotation"),
            ADMIN,
            Some(json!({"key_identifier": format!("{vault}/keys/cmk-2")})),
        )
        .await;
    assert_eq!(v["encryption"]["customer_managed_key"]["key_name"], "cmk-2");
    let p = c
        .refused(
            "POST",
            &org("/customer-managed-key/rotation"),
            ADMIN,
            Some(json!({"key_identifier": format!("{vault}/keys/cmk-off")})),
        )
        .await;
    assert_eq!(
        (p["code"].as_str(), p["reason"].as_str(), p["key"].as_str()),
        (Some("key_validation_failed"), Some("key_disabled"), Some("new"))
    );
    let v = c
        .ok(
            "PUT",
            &org("/plan"),
            BILLING,
            Some(json!({"plan": {"kind": "pro"}, "reason": "downgrade"})),
        )
        .await;
    assert_eq!(v["encryption"]["locked"], true);
    let p = c
        .refused(
            "PATCH",
            &org("/customer-managed-key"),
            ADMIN,
            Some(json!({"client_secret": SECRET_2})),
        )
        .await;
    assert_eq!(p["code"], "cmk_locked_by_plan");
    c.ok("DELETE", &org("/customer-managed-key"), ADMIN, None).await;
    let p = c
        .refused(
            "POST",
            &org("/customer-managed-key"),
            ADMIN,
            Some(conn("cmk", SECRET_2)),
        )
        .await;
    assert_eq!(p["code"], "plan_not_eligible");
    c.ok(
        "PUT",
        &org("/plan"),
        BILLING,
        Some(json!({"plan": {"kind": "enterprise", "tier": "standard"}, "reason": "upgrade"})),
    )
    .await;
    let v = c
        .ok(
            "POST",
            &org("/customer-managed-key"),
            ADMIN,
            Some(conn("cmk", SECRET_2)),
        )
        .await;
    assert_eq!(v["encryption"]["mode"], "customer_managed");
    let version = v["version"].as_u64().unwrap();

    // The audit (projections follow the log) and the stream.
    let mut audit = Value::Null;
    for _ in 0..200 {
        audit = c
            .ok(
                "GET",
                &format!("/v1/tenants/{TENANT_A}/audit?limit=1000"),
                AUDITOR,
                None,
            )
            .await;
        if audit["entries"].as_array().unwrap().len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "CustomerManagedKeyEnabled",
            "CustomerManagedKeyConnectionEdited",
            "CustomerManagedKeyRotated",
            "CustomerManagedKeyLocked",
            "SwitchedToProviderManagedKey",
            // The upgrade unlocks nothing: the key was switched off while locked.
            "CustomerManagedKeyEnabled",
        ]
    );
    // A platform service takes the active DEK twice (unwrapped in the emulator each time);
    // the keys must appear in no other output. Their answers stay out of the transcript.
    let mut released: Vec<Vec<u8>> = Vec::new();
    for _ in 0..2 {
        let r = c
            .http
            .post(format!("{}{}", c.base, org("/data-keys/active/release")))
            .bearer_auth(PLATFORM)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let key = STANDARD.decode(body["key"].as_str().unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        released.push(key);
    }
    c.call("GET", "/metrics", PLATFORM, None).await;
    let mut stream = c
        .http
        .get(format!("{}/v1/events/stream?after=0", c.base))
        .bearer_auth(PLATFORM)
        .send()
        .await
        .unwrap();
    let mut sse = String::new();
    let events = usize::try_from(version).unwrap();
    while sse.matches("\nid: ").count() + usize::from(sse.starts_with("id: ")) < events
        || sse.matches("event: DataKeyReleased").count() < released.len()
    {
        match tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => sse.push_str(std::str::from_utf8(&chunk).unwrap()),
            other => panic!("stream ended early: {other:?}\n{sse}"),
        }
    }
    drop(stream);
    assert!(sse.contains("event: CustomerManagedKeyRotated"));

    // SIGTERM drains and exits 0.
    let exit = terminate(&mut server.0);
    assert!(exit.success(), "serve exited with {exit:?}");

    // The log verifies; the export keeps sealed values sealed.
    let verify = Command::new(keyledger())
        .args(["verify", "--store", store])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let export = Command::new(keyledger())
        .args(["events", "export", "--store", store])
        .output()
        .unwrap();
    assert!(export.status.success());
    assert!(String::from_utf8_lossy(&export.stdout).lines().count() >= events);

    // The client secrets appear nowhere.
    let mut stderr = Vec::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    assert!(
        contains(&stderr, "listening") || contains(&stderr, "serving"),
        "the log is empty"
    );
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("responses".into(), c.transcript().join("\n").into_bytes()),
        ("SSE stream".into(), sse.into_bytes()),
        ("server stderr".into(), stderr),
        ("events export".into(), export.stdout),
    ];
    if let Some(db) = sqlite_file {
        for entry in std::fs::read_dir(db.parent().unwrap()).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().contains("keyledger.db") {
                files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    for (what, bytes) in &files {
        for secret in [SECRET_1, SECRET_2] {
            assert!(!contains(bytes, secret), "{secret} in clear in {what}");
        }
        for key in &released {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            for form in [STANDARD.encode(key), hex] {
                assert!(!contains(bytes, &form), "a released key in {what}");
            }
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "a released key's bytes in {what}"
            );
        }
    }
}
