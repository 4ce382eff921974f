//! The REST surface of the simulated vault: token endpoint errors, the challenge, empty-version
//! paths, soft-delete conflicts, and the control API.

use axum::body::Body;
use axum::http::{Method, Request, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt as _;
use keyledger_vault_sim::{AppRegistration, Clock, Vault, VaultConfig, router, router_with_control};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const CLIENT: &str = "8a1f0000-0000-4000-8000-00000000c1d1";
const HOST: &str = "contoso.vault.azure.net";

struct Sim {
    vault: std::sync::Arc<Vault>,
    router: axum::Router,
    tenant: String,
}

fn sim() -> Sim {
    let clock = Clock::fixed(Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap());
    let vault = Vault::new(VaultConfig::default(), clock);
    let tenant = vault.config().tenant_id.clone();
    vault.register_app(
        AppRegistration::new(&tenant, CLIENT, "s3cret", keyledger_vault_sim::KEY_PERMISSIONS)
            .with_expiry(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()),
    );
    Sim {
        router: router_with_control(vault.clone()),
        vault,
        tenant,
    }
}

impl Sim {
    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, axum::http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, HOST);
        if let Some(t) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, headers, json)
    }

    async fn token_with(&self, tenant: &str, client: &str, secret: &str) -> (u16, Value) {
        let form = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={secret}&scope=https%3A%2F%2Fvault.azure.net%2F.default"
        );
        let req = Request::post(format!("/{tenant}/oauth2/v2.0/token"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn token(&self) -> String {
        let (status, body) = self.token_with(&self.tenant.clone(), CLIENT, "s3cret").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn entra_errors_carry_aadsts_codes() {
    let s = sim();
    let tenant = s.tenant.clone();
    let (status, body) = s.token_with(&tenant, CLIENT, "wrong").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(body["error_codes"], json!([7000215]));
    assert!(!body.to_string().contains("s3cret"));
    // A prefix or an extension of the secret is not the secret.
    for near in ["s3cre", "s3cret!"] {
        let (status, body) = s.token_with(&tenant, CLIENT, near).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{near}"
        );
    }

    let (status, body) = s
        .token_with(&tenant, "99999999-0000-4000-8000-000000000000", "x")
        .await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([700016])));

    let (status, body) = s
        .token_with("00000000-0000-4000-8000-000000000000", CLIENT, "s3cret")
        .await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([90002])));

    s.vault
        .clock()
        .set(Utc.with_ymd_and_hms(2027, 1, 2, 0, 0, 0).unwrap());
    let (status, body) = s.token_with(&tenant, CLIENT, "s3cret").await;
    assert_eq!((status, body["error_codes"].clone()), (401, json!([7000222])));
}

#[tokio::test]
async fn requests_without_a_token_get_the_challenge() {
    let s = sim();
    let (status, headers, body) = s
        .call(Method::GET, "/keys/cmk?api-version=2025-07-01", None, None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert_eq!(
        headers[header::WWW_AUTHENTICATE],
        format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"https://vault.azure.net\"",
            s.tenant
        )
    );
    let (status, headers, _) = s
        .call(
            Method::GET,
            "/keys/cmk?api-version=2025-07-01",
            Some("forged"),
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn empty_versions_mean_the_latest_and_wrap_round_trips() {
    let s = sim();
    let t = s.token().await;
    let (status, _, created) = s
        .call(
            Method::POST,
            "/keys/cmk/create?api-version=2025-07-01",
            Some(&t),
            Some(json!({"kty":"RSA","key_size":2048})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let kid = created["key"]["kid"].as_str().unwrap().to_owned();
    assert!(kid.starts_with("https://contoso.vault.azure.net/keys/cmk/"));

    for path in [
        "/keys/cmk?api-version=2025-07-01",
        "/keys/cmk/?api-version=2025-07-01",
    ] {
        let (status, _, got) = s.call(Method::GET, path, Some(&t), None).await;
        assert_eq!(
            (status, got["key"]["kid"].as_str()),
            (200, Some(kid.as_str())),
            "{path}"
        );
    }
    let dek = [7u8; 32];
    let (status, _, wrapped) = s
        .call(
            Method::POST,
            "/keys/cmk//wrapkey?api-version=2025-07-01",
            Some(&t),
            Some(json!({"alg":"RSA-OAEP-256","value":B64.encode(dek)})),
        )
        .await;
    assert_eq!(status, 200, "{wrapped}");
    assert_eq!(wrapped["kid"], kid);
    let version = kid.rsplit('/').next().unwrap();
    let (status, _, clear) = s
        .call(
            Method::POST,
            &format!("/keys/cmk/{version}/unwrapkey?api-version=2025-07-01"),
            Some(&t),
            Some(json!({"alg":"RSA-OAEP-256","value":wrapped["value"]})),
        )
        .await;
    assert_eq!(
        (status, clear["value"].as_str()),
        (200, Some(B64.encode(dek).as_str()))
    );
    // Other algorithms are refused, not silently accepted.
    let (status, _, err) = s
        .call(
            Method::POST,
            "/keys/cmk//wrapkey?api-version=2025-07-01",
            Some(&t),
            Some(json!({"alg":"RSA1_5","value":B64.encode(dek)})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("BadParameter"))
    );
}

#[tokio::test]
async fn a_soft_deleted_name_cannot_be_recreated_until_purged() {
    let s = sim();
    let t = s.token().await;
    let create = json!({"kty":"RSA","key_size":2048});
    s.call(
        Method::POST,
        "/keys/cmk/create?api-version=2025-07-01",
        Some(&t),
        Some(create.clone()),
    )
    .await;
    let (status, _, deleted) = s
        .call(Method::DELETE, "/keys/cmk?api-version=2025-07-01", Some(&t), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted["recoveryId"],
        "https://contoso.vault.azure.net/deletedkeys/cmk"
    );
    let (status, _, err) = s
        .call(
            Method::POST,
            "/keys/cmk/create?api-version=2025-07-01",
            Some(&t),
            Some(create.clone()),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "Conflict");
    assert_eq!(
        err["error"]["innererror"]["code"],
        "ObjectIsDeletedButRecoverable"
    );
    let (status, _, _) = s
        .call(Method::GET, "/keys/cmk?api-version=2025-07-01", Some(&t), None)
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = s
        .call(
            Method::DELETE,
            "/deletedkeys/cmk?api-version=2025-07-01",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = s
        .call(
            Method::POST,
            "/keys/cmk/create?api-version=2025-07-01",
            Some(&t),
            Some(create),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn missing_permission_is_forbidden_by_policy() {
    let s = sim();
    let tenant = s.tenant.clone();
    s.vault.register_app(AppRegistration::new(
        &tenant,
        "11111111-0000-4000-8000-000000000000",
        "pw",
        &["get"],
    ));
    let (_, tok) = s
        .token_with(&tenant, "11111111-0000-4000-8000-000000000000", "pw")
        .await;
    let t = tok["access_token"].as_str().unwrap();
    let (status, _, err) = s
        .call(
            Method::POST,
            "/keys/cmk//wrapkey?api-version=2025-07-01",
            Some(t),
            Some(json!({"alg":"RSA-OAEP-256","value":"AAAA"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["innererror"]["code"], "ForbiddenByPolicy");
}

#[tokio::test]
async fn control_api_manages_apps_keys_backups_and_faults() {
    let s = sim();
    let (status, _, body) = s
        .call(
            Method::POST,
            "/_emulator/apps",
            None,
            Some(json!({"tenant_id": s.tenant, "client_id":"33333333-0000-4000-8000-000000000000","client_secret":"c","key_permissions":["get","wrapKey","unwrapKey"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, key) = s
        .call(
            Method::POST,
            "/_emulator/keys",
            None,
            Some(json!({"name":"cmk","kty":"RSA","size":2048,"exp": 1900000000})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let kid = key["kid"].as_str().unwrap().to_owned();
    let version = kid.rsplit('/').next().unwrap().to_owned();
    let (status, _, patched) = s
        .call(
            Method::PATCH,
            &format!("/_emulator/keys/cmk/{version}"),
            None,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(
        (status, patched["attributes"]["enabled"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(patched["attributes"]["exp"], 1900000000);

    let (status, _, backup) = s
        .call(Method::POST, "/_emulator/keys/cmk/backup", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.call(Method::DELETE, "/_emulator/keys/cmk", None, None).await.0,
        200
    );
    assert_eq!(
        s.call(Method::POST, "/_emulator/deletedkeys/cmk/recover", None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call(Method::DELETE, "/_emulator/keys/cmk", None, None).await.0,
        200
    );
    assert_eq!(
        s.call(Method::DELETE, "/_emulator/deletedkeys/cmk", None, None)
            .await
            .0,
        204
    );
    let (status, _, restored) = s
        .call(Method::POST, "/_emulator/keys/restore", None, Some(backup))
        .await;
    assert_eq!(
        (status, restored["key"]["kid"].as_str()),
        (200, Some(kid.as_str()))
    );

    assert_eq!(
        s.call(
            Method::PUT,
            "/_emulator/faults",
            None,
            Some(json!({"status": 503}))
        )
        .await
        .0,
        200
    );
    let t = s.token_with(&s.tenant.clone(), CLIENT, "s3cret").await;
    assert_eq!(t.0, 503, "faults apply to the token endpoint too");
    assert_eq!(
        s.call(
            Method::PUT,
            "/_emulator/faults",
            None,
            Some(json!({"status": 418}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        s.call(Method::DELETE, "/_emulator/faults", None, None).await.0,
        204
    );
    assert_eq!(s.token_with(&s.tenant.clone(), CLIENT, "s3cret").await.0, 200);
    assert_eq!(s.vault.request_count(), 2, "the control API is not counted");
}

#[tokio::test]
async fn the_data_plane_router_has_no_control_api() {
    let vault = Vault::new(VaultConfig::default(), Clock::system());
    let r = router(vault);
    let req = Request::delete("/_emulator/faults").body(Body::empty()).unwrap();
    let resp = r.oneshot(req).await.unwrap();
    assert_ne!(resp.status().as_u16(), 204);
}

#[tokio::test]
async fn state_survives_save_and_load() {
    let s = sim();
    let t = s.token().await;
    let create = json!({"kty":"RSA","key_size":2048});
    let (_, _, a) = s
        .call(
            Method::POST,
            "/keys/keep/create?api-version=2025-07-01",
            Some(&t),
            Some(create.clone()),
        )
        .await;
    s.call(
        Method::POST,
        "/keys/gone/create?api-version=2025-07-01",
        Some(&t),
        Some(create),
    )
    .await;
    s.call(
        Method::DELETE,
        "/keys/gone?api-version=2025-07-01",
        Some(&t),
        None,
    )
    .await;
    let saved = s.vault.save_state().unwrap();

    let fresh = sim();
    fresh.vault.load_state(&saved).unwrap();
    let t = fresh.token().await;
    let (status, _, b) = fresh
        .call(Method::GET, "/keys/keep?api-version=2025-07-01", Some(&t), None)
        .await;
    assert_eq!(
        (status, &b["key"]),
        (200, &a["key"]),
        "same key material and version"
    );
    let (status, _, _) = fresh
        .call(
            Method::POST,
            "/deletedkeys/gone/recover?api-version=2025-07-01",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(fresh.vault.load_state(b"{}").is_err());
}

#[tokio::test]
async fn the_demo_seed_gives_a_working_connection() {
    let s = sim();
    let demo = s.vault.seed_demo("https://contoso.vault.azure.net").unwrap();
    assert!(format!("{demo:?}").contains("<hidden>"));
    assert!(!format!("{demo:?}").contains(demo.client_secret.as_str()));
    assert_eq!(
        demo.key_identifier,
        "https://contoso.vault.azure.net/keys/demo-cmk"
    );
    let (status, _) = s
        .token_with(&demo.directory_id, &demo.application_id, &demo.client_secret)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_control_api_refuses_unknown_permissions() {
    let s = sim();
    let body = json!({"tenant_id": s.tenant, "client_id":"44444444-0000-4000-8000-000000000000","client_secret":"c","key_permissions":["wrap"]});
    assert_eq!(
        s.call(Method::POST, "/_emulator/apps", None, Some(body)).await.0,
        400
    );
    let patch = json!({"key_permissions":["get","sudo"]});
    assert_eq!(
        s.call(
            Method::PATCH,
            &format!("/_emulator/apps/{CLIENT}"),
            None,
            Some(patch)
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn a_fault_rate_fails_about_that_share_of_requests() {
    let s = sim();
    s.vault.set_faults(keyledger_vault_sim::Faults {
        status: Some(500),
        rate: Some(0.5),
        ..Default::default()
    });
    let mut failed = 0;
    for _ in 0..200 {
        let (status, _, _) = s
            .call(Method::GET, "/keys/none?api-version=2025-07-01", None, None)
            .await;
        match status {
            500 => failed += 1,
            401 => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Binomial(200, 0.5): outside 60..=140 has a probability far below 1e-8.
    assert!((60..=140).contains(&failed), "{failed} of 200 failed");
}

#[tokio::test]
async fn latency_is_added_to_every_request() {
    let s = sim();
    s.vault.set_faults(keyledger_vault_sim::Faults {
        latency_ms: Some(120),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    s.call(Method::GET, "/keys/none?api-version=2025-07-01", None, None)
        .await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(120));
}

/// `GET deletedkeys/{name}` as in the AKV spec's GetDeletedKey example: the key bundle plus
/// `recoveryId`, `deletedDate` and `scheduledPurgeDate` (Unix seconds); 404 `KeyNotFound` when
/// the key is not deleted, or once purged.
#[tokio::test]
async fn a_deleted_key_record_has_the_spec_shape() {
    let s = sim();
    let t = s.token().await;
    let path = "/deletedkeys/cmk?api-version=2025-07-01";
    s.call(
        Method::POST,
        "/keys/cmk/create?api-version=2025-07-01",
        Some(&t),
        Some(json!({"kty":"RSA","key_size":2048})),
    )
    .await;
    let (status, _, err) = s.call(Method::GET, path, Some(&t), None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("KeyNotFound"))
    );
    let now = s.vault.clock().unix();
    s.call(Method::DELETE, "/keys/cmk?api-version=2025-07-01", Some(&t), None)
        .await;
    let (status, _, record) = s.call(Method::GET, path, Some(&t), None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        record["recoveryId"],
        "https://contoso.vault.azure.net/deletedkeys/cmk"
    );
    assert_eq!(record["deletedDate"], now);
    let retention = i64::from(s.vault.config().retention_days);
    assert_eq!(record["scheduledPurgeDate"], now + retention * 86_400);
    assert!(
        record["key"]["kid"]
            .as_str()
            .unwrap()
            .starts_with("https://contoso.vault.azure.net/keys/cmk/")
    );
    assert_eq!(record["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    s.call(Method::DELETE, path, Some(&t), None).await;
    let (status, _, _) = s.call(Method::GET, path, Some(&t), None).await;
    assert_eq!(status, 404);
}
