//! The Key Vault keys REST API (api-version 2025-07-01) and the Entra ID token endpoint over the
//! model, as an axum router; plus the emulator's control API (CONTRACT.md).
//!
//! Paths are parsed by hand rather than with axum's matcher because the official SDK sends an
//! empty key version as an empty path segment (`keys/{name}//wrapkey`, `keys/{name}/`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, patch, post, put};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::model::{
    AkvError, AppPatch, AppRegistration, Caller, CryptoOp, Faults, KeyPatch, NewKey, Vault, random_hex,
};

const JSON_UTF8: &str = "application/json; charset=utf-8";

/// The data plane: Key Vault keys and the Entra ID token endpoint, with faults applied.
pub fn router(vault: Arc<Vault>) -> Router {
    Router::new().fallback(dispatch).with_state(vault)
}

/// The control API of CONTRACT.md (`/_emulator/...`). No authentication: serve it on loopback
/// only.
pub fn control_router(vault: Arc<Vault>) -> Router {
    Router::new()
        .route("/_emulator/apps", post(ctl_create_app))
        .route(
            "/_emulator/apps/{client_id}",
            patch(ctl_patch_app).delete(ctl_delete_app),
        )
        .route("/_emulator/keys", post(ctl_create_key))
        .route("/_emulator/keys/restore", post(ctl_restore))
        .route("/_emulator/keys/{name}", delete(ctl_delete_key))
        .route("/_emulator/keys/{name}/backup", post(ctl_backup))
        .route("/_emulator/keys/{name}/{version}", patch(ctl_patch_key))
        .route("/_emulator/deletedkeys/{name}", delete(ctl_purge))
        .route("/_emulator/deletedkeys/{name}/recover", post(ctl_recover))
        .route("/_emulator/faults", put(ctl_set_faults).delete(ctl_clear_faults))
        .route("/_emulator/signing-keys/roll", post(ctl_roll_signing_key))
        .with_state(vault)
}

/// The data plane and the control API on one router (what the emulator serves).
pub fn router_with_control(vault: Arc<Vault>) -> Router {
    control_router(vault.clone()).merge(router(vault))
}

async fn dispatch(
    State(vault): State<Arc<Vault>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    vault.count_request();
    let faults = vault.faults();
    if let Some(ms) = faults.latency_ms {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let client_request_id = headers.get("x-ms-client-request-id").cloned();
    let mut response = if let Some(base) = &faults.redirect_to {
        redirect(base, &uri)
    } else {
        match vault.roll_fault() {
            Some(status) => fault_response(status),
            None => handle(&vault, &method, &uri, &headers, &body),
        }
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-ms-keyvault-service-version",
        HeaderValue::from_static("keyledger-vault-sim"),
    );
    if let Ok(v) = HeaderValue::from_str(&random_hex(16)) {
        h.insert("x-ms-request-id", v);
    }
    if let Some(v) = client_request_id {
        h.insert("x-ms-client-request-id", v);
    }
    response
}

/// The injected redirect: 307 to `base` plus the request's path and query.
fn redirect(base: &str, uri: &Uri) -> Response {
    let target = format!(
        "{}{}",
        base.trim_end_matches('/'),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    match HeaderValue::from_str(&target) {
        Ok(location) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn fault_response(status: u16) -> Response {
    let err = match status {
        429 => AkvError {
            status,
            code: "Throttled",
            inner: None,
            message: "Request was not processed because too many requests were received.".into(),
        },
        _ => AkvError {
            status,
            code: "ServiceUnavailable",
            inner: None,
            message: "The service is unavailable (injected fault).".into(),
        },
    };
    let mut r = akv_error(&err);
    if status == 429 || status == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, JSON_UTF8)], body.to_string()).into_response()
}

fn akv_error(e: &AkvError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.body())
}

fn ok(body: Result<Value, AkvError>) -> Response {
    match body {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => akv_error(&e),
    }
}

fn challenge(vault: &Vault, message: &str) -> Response {
    let cfg = vault.config();
    let mut r = akv_error(&AkvError {
        status: 401,
        code: "Unauthorized",
        inner: None,
        message: message.into(),
    });
    let value = format!(
        "Bearer authorization=\"{}/{}\", resource=\"{}\"",
        cfg.authority_host.trim_end_matches('/'),
        cfg.tenant_id,
        cfg.resource
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The base URL the client used, from the Host header; `kid`s are built on it.
fn base_url(headers: &HeaderMap, uri: &Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}")
}

fn handle(vault: &Vault, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Response {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    // Entra ID: POST /{tenant}/oauth2/v2.0/token
    if let [tenant, "oauth2", "v2.0", "token"] = segments.as_slice() {
        if method != Method::POST {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        return token(vault, tenant, body);
    }

    // Entra ID: GET /{tenant}/discovery/v2.0/keys, the keys keyledger tokens are signed with.
    if let [tenant, "discovery", "v2.0", "keys"] = segments.as_slice() {
        if method != Method::GET {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        if *tenant != vault.config().tenant_id {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_tenant", "error_description": format!("AADSTS90002: Tenant '{tenant}' not found.")}),
            );
        }
        return json_response(StatusCode::OK, &vault.jwks());
    }

    let query: HashMap<String, String> = uri
        .query()
        .map(|q| url_decode_pairs(q.as_bytes()))
        .unwrap_or_default();
    if !query.contains_key("api-version") {
        return akv_error(&AkvError::bad_parameter(
            "The 'api-version' query parameter is missing.",
        ));
    }

    // Key Vault: every request needs a bearer token; without one, the challenge.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return challenge(
            vault,
            "AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token.",
        );
    };
    let Some(caller) = vault.authenticate(bearer) else {
        return challenge(vault, "AKV10022: Invalid or expired token.");
    };
    let base = base_url(headers, uri);
    let m = method.clone();
    match (m, segments.as_slice()) {
        (Method::POST, ["keys", "restore"]) => guard(vault, &caller, "restore", || {
            let req: ValueBody = parse(body)?;
            vault.restore_key(&base, &req.value)
        }),
        (Method::POST, ["keys", name, "create"]) => guard(vault, &caller, "create", || {
            let mut new: NewKey = parse(body)?;
            new.name = (*name).to_owned();
            if let Some(a) = parse_attributes(body)? {
                new.enabled = a.enabled.or(new.enabled);
                new.exp = a.exp.or(new.exp);
                new.nbf = a.nbf.or(new.nbf);
            }
            vault.create_key(&base, new)
        }),
        (Method::POST, ["keys", name, "backup"]) => {
            guard(vault, &caller, "backup", || vault.backup_key(name))
        }
        (Method::GET, ["keys", name]) => guard(vault, &caller, "get", || vault.key(&base, name, None)),
        (Method::GET, ["keys", name, version]) => {
            guard(vault, &caller, "get", || vault.key(&base, name, Some(version)))
        }
        (Method::PATCH, ["keys", name] | ["keys", name, ""]) => guard(vault, &caller, "update", || {
            update(vault, &base, name, None, body)
        }),
        (Method::PATCH, ["keys", name, version]) => guard(vault, &caller, "update", || {
            update(vault, &base, name, Some(version), body)
        }),
        (Method::DELETE, ["keys", name]) => guard(vault, &caller, "delete", || vault.delete_key(&base, name)),
        (Method::POST, ["keys", name, version, op]) => {
            let op = match *op {
                "wrapkey" => CryptoOp::WrapKey,
                "unwrapkey" => CryptoOp::UnwrapKey,
                "encrypt" => CryptoOp::Encrypt,
                "decrypt" => CryptoOp::Decrypt,
                _ => return not_found(),
            };
            guard(vault, &caller, op.name(), || {
                let req: CryptoBody = parse(body)?;
                let input = Zeroizing::new(
                    B64.decode(req.value.trim_end_matches('='))
                        .map_err(|_| AkvError::bad_parameter("value is not base64url"))?,
                );
                vault.crypto(&base, name, Some(version), op, &req.alg, &input)
            })
        }
        (Method::GET, ["deletedkeys", name]) => {
            guard(vault, &caller, "get", || vault.deleted_key(&base, name))
        }
        (Method::POST, ["deletedkeys", name, "recover"]) => {
            guard(vault, &caller, "recover", || vault.recover_key(&base, name))
        }
        (Method::DELETE, ["deletedkeys", name]) => match vault.authorize(&caller, "purge") {
            Err(e) => akv_error(&e),
            Ok(()) => match vault.purge_key(name) {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => akv_error(&e),
            },
        },
        _ => not_found(),
    }
}

fn not_found() -> Response {
    akv_error(&AkvError {
        status: 404,
        code: "NotFound",
        inner: None,
        message: "The requested operation is not supported by the simulated vault.".into(),
    })
}

fn guard(
    vault: &Vault,
    caller: &Caller,
    permission: &str,
    f: impl FnOnce() -> Result<Value, AkvError>,
) -> Response {
    ok(vault.authorize(caller, permission).and_then(|()| f()))
}

fn update(
    vault: &Vault,
    base: &str,
    name: &str,
    version: Option<&str>,
    body: &Bytes,
) -> Result<Value, AkvError> {
    #[derive(Deserialize)]
    struct Update {
        #[serde(default)]
        key_ops: Option<Vec<String>>,
        #[serde(default)]
        tags: Option<std::collections::BTreeMap<String, String>>,
    }
    let u: Update = parse(body)?;
    let a = parse_attributes(body)?.unwrap_or_default();
    let patch = KeyPatch {
        enabled: a.enabled,
        exp: a.exp.map(Some),
        nbf: a.nbf.map(Some),
        key_ops: u.key_ops,
        tags: u.tags,
    };
    vault.update_key(base, name, version, patch)
}

#[derive(Debug, Default, Deserialize)]
struct Attributes {
    enabled: Option<bool>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

fn parse_attributes(body: &Bytes) -> Result<Option<Attributes>, AkvError> {
    #[derive(Deserialize)]
    struct WithAttributes {
        #[serde(default)]
        attributes: Option<Attributes>,
    }
    if body.is_empty() {
        return Ok(None);
    }
    Ok(parse::<WithAttributes>(body)?.attributes)
}

#[derive(Deserialize)]
struct CryptoBody {
    alg: String,
    value: String,
}

#[derive(Deserialize)]
struct ValueBody {
    value: String,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, AkvError> {
    serde_json::from_slice(body)
        .map_err(|e| AkvError::bad_parameter(format!("The request body is not valid: {e}")))
}

fn token(vault: &Vault, tenant: &str, body: &Bytes) -> Response {
    let form = url_decode_pairs(body);
    let get = |k: &str| form.get(k).map(String::as_str);
    match vault.issue_token(
        tenant,
        get("grant_type"),
        get("client_id"),
        get("client_secret"),
        get("scope"),
    ) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_response(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            &e.body(),
        ),
    }
}

/// `application/x-www-form-urlencoded` (and query strings) into a map.
fn url_decode_pairs(input: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let byte = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match byte {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(input)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

// ---- control API ----

#[derive(Deserialize)]
struct CreateApp {
    #[serde(flatten)]
    app: AppRegistration,
}

async fn ctl_create_app(State(vault): State<Arc<Vault>>, body: Bytes) -> Response {
    match serde_json::from_slice::<CreateApp>(&body) {
        Ok(c) if !known_permissions(&c.app.key_permissions) => ctl_bad_request(UNKNOWN_PERMISSION),
        Ok(c) => {
            let client_id = c.app.client_id.clone();
            match vault.add_app(c.app) {
                Ok(()) => json_response(StatusCode::CREATED, &json!({ "client_id": client_id })),
                Err(problem) => ctl_bad_request(&problem),
            }
        }
        Err(_) => ctl_bad_request(
            "expected {tenant_id, client_id, client_secret, expires_at?, key_permissions, roles?, organizations?, tenants?}",
        ),
    }
}

async fn ctl_patch_app(
    State(vault): State<Arc<Vault>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<AppPatch>(&body) {
        Ok(p) if p.key_permissions.as_ref().is_some_and(|k| !known_permissions(k)) => {
            ctl_bad_request(UNKNOWN_PERMISSION)
        }
        Ok(p) if p.empties_secret() => ctl_bad_request("client_secret must not be empty"),
        Ok(p) => {
            if vault.update_app(&client_id, p) {
                json_response(StatusCode::OK, &json!({ "client_id": client_id }))
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }
        Err(_) => ctl_bad_request("expected {client_secret?, expires_at?, key_permissions?}"),
    }
}

async fn ctl_delete_app(State(vault): State<Arc<Vault>>, Path(client_id): Path<String>) -> Response {
    if vault.delete_app(&client_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

const UNKNOWN_PERMISSION: &str = "key_permissions must be among get, list, create, update, delete, recover, purge, backup, restore, wrapKey, unwrapKey, encrypt, decrypt";

fn known_permissions(perms: &std::collections::BTreeSet<String>) -> bool {
    perms
        .iter()
        .all(|p| crate::model::KEY_PERMISSIONS.contains(&p.as_str()))
}

fn ctl_base(headers: &HeaderMap, uri: &Uri) -> String {
    base_url(headers, uri)
}

fn ctl(status: StatusCode, r: Result<Value, AkvError>) -> Response {
    match r {
        Ok(v) => json_response(status, &v),
        Err(e) => akv_error(&e),
    }
}

async fn ctl_create_key(
    State(vault): State<Arc<Vault>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(new) = serde_json::from_slice::<NewKey>(&body) else {
        return ctl_bad_request("expected {name, kty:\"RSA\", size, key_ops?, enabled?, exp?, nbf?}");
    };
    let base = ctl_base(&headers, &uri);
    // Key generation is CPU-bound.
    let r = tokio::task::spawn_blocking(move || vault.create_key(&base, new)).await;
    match r {
        Ok(Ok(bundle)) => json_response(
            StatusCode::CREATED,
            &json!({ "kid": bundle["key"]["kid"], "key": bundle }),
        ),
        Ok(Err(e)) => akv_error(&e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ctl_patch_key(
    State(vault): State<Arc<Vault>>,
    Path((name, version)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<KeyPatch>(&body) else {
        return ctl_bad_request("expected {enabled?, exp?, nbf?, key_ops?}");
    };
    ctl(
        StatusCode::OK,
        vault.update_key(&ctl_base(&headers, &uri), &name, Some(&version), patch),
    )
}

async fn ctl_delete_key(
    State(vault): State<Arc<Vault>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    ctl(StatusCode::OK, vault.delete_key(&ctl_base(&headers, &uri), &name))
}

async fn ctl_recover(
    State(vault): State<Arc<Vault>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    ctl(
        StatusCode::OK,
        vault.recover_key(&ctl_base(&headers, &uri), &name),
    )
}

async fn ctl_purge(State(vault): State<Arc<Vault>>, Path(name): Path<String>) -> Response {
    match vault.purge_key(&name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => akv_error(&e),
    }
}

async fn ctl_backup(State(vault): State<Arc<Vault>>, Path(name): Path<String>) -> Response {
    ctl(StatusCode::OK, vault.backup_key(&name))
}

async fn ctl_restore(State(vault): State<Arc<Vault>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<ValueBody>(&body) else {
        return ctl_bad_request("expected {value}");
    };
    ctl(
        StatusCode::OK,
        vault.restore_key(&ctl_base(&headers, &uri), &req.value),
    )
}

async fn ctl_set_faults(State(vault): State<Arc<Vault>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f)
            if f.status.is_none_or(|s| matches!(s, 429 | 500 | 503))
                && f.rate.is_none_or(|r| (0.0..=1.0).contains(&r))
                && f.redirect_to.as_deref().is_none_or(|r| r.starts_with("https://")) =>
        {
            vault.set_faults(f.clone());
            json_response(StatusCode::OK, &json!(f))
        }
        _ => ctl_bad_request(
            "expected {status?: 429|500|503, rate?: 0..1, latency_ms?, unreachable?, redirect_to?: \"https://…\"}",
        ),
    }
}

/// A new signing key for keyledger tokens; the JWKS keeps the previous one (see
/// [`crate::model`]'s issuer).
async fn ctl_roll_signing_key(State(vault): State<Arc<Vault>>) -> Response {
    // Key generation is CPU-bound.
    match tokio::task::spawn_blocking(move || {
        let previous = vault.signing_kid();
        (vault.roll_signing_key(), previous)
    })
    .await
    {
        Ok((kid, previous)) => {
            json_response(StatusCode::OK, &json!({ "kid": kid, "previous_kid": previous }))
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ctl_clear_faults(State(vault): State<Arc<Vault>>) -> Response {
    vault.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

fn ctl_bad_request(expected: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "error": { "code": "BadRequest", "message": expected } }),
    )
}
