//! `keyledger serve` as a process with an `[[auth.entra]]` entry and no static token, the
//! `akv-emulator` process as the Entra ID issuer (over HTTPS, trusted through `ca_cert`): its
//! tokens work with their roles, a forged one gets 401, and the debug log names the refusal but
//! holds no token.

mod common;

use common::{Emulator, Serving, audit_key_file, serve_command};
use serde_json::{Value, json};

const TENANT_A: &str = "01900000-0000-7000-8000-00000000000a";

async fn token(emulator: &Emulator, client_id: &str) -> String {
    let r = emulator
        .control
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            emulator.authority_host, emulator.tenant_id
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={client_id}&client_secret=s3cret-value&scope=api%3A%2F%2Fkeyledger%2F.default"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_accepts_the_emulators_entra_tokens_with_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(&dir.path().join("emulator"));
    for (client, roles, tenants) in [
        ("platform-svc", json!(["platform"]), json!(["*"])),
        ("auditor-a", json!(["auditor"]), json!([TENANT_A])),
    ] {
        let app = json!({"tenant_id": emulator.tenant_id, "client_id": client,
                         "client_secret": "s3cret-value", "key_permissions": [],
                         "roles": roles, "organizations": ["*"], "tenants": tenants});
        assert_eq!(emulator.control("POST", "apps", app).await, 201);
    }
    let key_file = dir.path().join("internal-key.json");
    let config = dir.path().join("keyledger.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\nurl = \"sqlite://{}\"\n\n\
             [keys]\ninternal_key_file = \"{}\"\nvault = \"simulated\"\n\n\
             [audit]\nsigning_key_file = \"{}\"\n\n\
             [[auth.entra]]\nissuer = \"{host}/{tid}/v2.0\"\naudience = \"api://keyledger\"\n\
             jwks_uri = \"{host}/{tid}/discovery/v2.0/keys\"\nca_cert = \"{}\"\n",
            dir.path().join("keyledger.db").display(),
            key_file.display(),
            audit_key_file(&key_file).display(),
            emulator.ca_cert,
            host = emulator.authority_host,
            tid = emulator.tenant_id,
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let mut cmd = serve_command(&config, &log);
    cmd.env("RUST_LOG", "debug");
    let server = Serving::spawn(cmd, &log);
    let http = reqwest::Client::new();
    let call = |method: &str, path: &str, token: &str, body: Option<Value>| {
        let mut req = http
            .request(method.parse().unwrap(), format!("{}{path}", server.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    let platform = token(&emulator, "platform-svc").await;
    let auditor = token(&emulator, "auditor-a").await;
    let org = "01900000-0000-7000-8000-0000000e17a0";
    let (status, body) = call(
        "POST",
        "/v1/organizations",
        &platform,
        Some(json!({"org_id": org, "name": "Contoso", "plan": {"kind": "free"},
                    "tenants": [{"tenant_id": TENANT_A, "name": "Default"}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // The auditor may not register, but reads tenant A's audit once the projection has it.
    let (status, body) = call(
        "POST",
        "/v1/organizations",
        &auditor,
        Some(
            json!({"org_id": "01900000-0000-7000-8000-0000000e17a1", "name": "x", "plan": {"kind": "free"},
                    "tenants": [{"tenant_id": TENANT_A, "name": "x"}]}),
        ),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = call("GET", &format!("/v1/tenants/{TENANT_A}/audit"), &auditor, None).await;
        if status == 200 {
            break;
        }
        assert!(
            status == 404 && std::time::Instant::now() < deadline,
            "{status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A forged payload (the auditor's token claiming the platform role) is refused.
    let parts: Vec<&str> = auditor.split('.').collect();
    let forged_claims = {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let mut c: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        c["roles"] = json!(["platform"]);
        B64.encode(c.to_string())
    };
    let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    let (status, body) = call("GET", "/v1/events", &forged, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthenticated"), "{body}");

    assert!(server.stop().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("fetched the Entra ID JWKS"), "{log}");
    assert!(log.contains("bearer token refused"), "{log}");
    for t in [&platform, &auditor, &forged] {
        for part in t.split('.') {
            assert!(!log.contains(part), "a token part is in the log");
        }
    }
}
