//! The OpenAPI 3.1 document of the HTTP API, generated from this route table and the JSON
//! Schemas of the request and response types (schemars). `schemas/openapi.json` is checked
//! in; a test fails when it drifts from the code, and another that every documented route is
//! served.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::api;
use crate::problem::Problem;

/// A schema producer for one body type.
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A query or path parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub location: &'static str,
    pub kind: &'static str,
    pub description: &'static str,
}

const fn path(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "path",
        kind: "uuid",
        description,
    }
}

const fn query(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        kind,
        description,
    }
}

const ORG: Param = path("org", "The organization id (UUID).");
const TENANT: Param = path("tenant", "The tenant id (UUID).");

/// What a successful call returns.
#[derive(Debug, Clone, Copy)]
pub enum Success {
    Json(u16, SchemaFn),
    EventStream,
    Text(&'static str),
}

/// One route: method, path, who may call it, what it takes and what it returns.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Roles (CONTRACT.md); empty: no token needed.
    pub roles: &'static [&'static str],
    pub params: &'static [Param],
    pub body: Option<SchemaFn>,
    pub success: Success,
    /// Problem codes besides `unauthenticated` and `forbidden`, which every `/v1` route has.
    pub errors: &'static [&'static str],
    /// Takes `Idempotency-Key` and `If-Match`.
    pub command: bool,
}

const ANY: &[&str] = &["org_admin", "auditor", "platform", "billing", "support"];

macro_rules! errors {
    ($($code:literal),* $(,)?) => { &[$($code),*] };
}

/// Every route of the service.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "post",
        path: "/v1/organizations",
        summary: "Register an organization (provider-managed key).",
        roles: &["platform"],
        params: &[],
        body: Some(schema::<api::RegisterOrganization>),
        success: Success::Json(201, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "already_registered",
            "idempotency_key_reused",
            "payload_too_large"
        ],
        command: true,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}",
        summary: "The organization view: plan, tenants, encryption, key history. ETag = version.",
        roles: ANY,
        params: &[ORG],
        body: None,
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "put",
        path: "/v1/organizations/{org}/plan",
        summary: "Change the plan. A downgrade locks a customer-managed key; an upgrade unlocks it.",
        roles: &["billing"],
        params: &[ORG],
        body: Some(schema::<api::ChangePlan>),
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "idempotency_key_reused",
            "version_mismatch",
            "payload_too_large"
        ],
        command: true,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/tenants",
        summary: "Add a tenant.",
        roles: &["platform"],
        params: &[ORG],
        body: Some(schema::<keyledger_domain::Tenant>),
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "already_registered",
            "idempotency_key_reused",
            "version_mismatch",
            "payload_too_large"
        ],
        command: true,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/organizations/{org}/tenants/{tenant}",
        summary: "Remove a tenant. Its audit rows stay.",
        roles: &["platform"],
        params: &[ORG, TENANT],
        body: None,
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "tenant_not_found",
            "idempotency_key_reused",
            "version_mismatch"
        ],
        command: true,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/customer-managed-key/test",
        summary: "\"Test\": run the connection checks against the vault. Records nothing.",
        roles: &["org_admin"],
        params: &[ORG],
        body: Some(schema::<api::ConnectionBody>),
        success: Success::Json(200, schema::<api::TestResult>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "cmk_locked_by_plan",
            "plan_not_eligible",
            "key_vault_unavailable",
            "payload_too_large"
        ],
        command: false,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/customer-managed-key",
        summary: "\"Test and save\": enable the customer-managed key.",
        roles: &["org_admin"],
        params: &[ORG],
        body: Some(schema::<api::ConnectionBody>),
        success: Success::Json(201, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "cmk_already_enabled",
            "cmk_locked_by_plan",
            "plan_not_eligible",
            "data_lost",
            "idempotency_key_reused",
            "version_mismatch",
            "payload_too_large",
            "key_validation_failed",
            "key_vault_unavailable"
        ],
        command: true,
    },
    RouteDoc {
        method: "patch",
        path: "/v1/organizations/{org}/customer-managed-key",
        summary: "Edit the connection; a changed key is a rotation.",
        roles: &["org_admin"],
        params: &[ORG],
        body: Some(schema::<api::ConnectionPatchBody>),
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "cmk_not_enabled",
            "cmk_locked_by_plan",
            "data_lost",
            "same_key",
            "idempotency_key_reused",
            "version_mismatch",
            "payload_too_large",
            "key_validation_failed",
            "key_vault_unavailable"
        ],
        command: true,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/customer-managed-key/rotation",
        summary: "Rotate to another key; both the old and the new key must validate.",
        roles: &["org_admin"],
        params: &[ORG],
        body: Some(schema::<api::RotationBody>),
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "cmk_not_enabled",
            "cmk_locked_by_plan",
            "data_lost",
            "same_key",
            "idempotency_key_reused",
            "version_mismatch",
            "payload_too_large",
            "key_validation_failed",
            "key_vault_unavailable"
        ],
        command: true,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/organizations/{org}/customer-managed-key",
        summary: "Switch back to the provider-managed key.",
        roles: &["org_admin"],
        params: &[
            ORG,
            query(
                "abandon_lost_data",
                "boolean",
                "Only after a data-loss declaration: switch without the lost data.",
            ),
        ],
        body: None,
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "cmk_not_enabled",
            "data_lost",
            "idempotency_key_reused",
            "version_mismatch",
            "key_validation_failed",
            "key_vault_unavailable"
        ],
        command: true,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/data-loss",
        summary: "Declare customer data lost (the key was purged without a backup).",
        roles: &["org_admin", "support"],
        params: &[ORG],
        body: Some(schema::<api::DataLossBody>),
        success: Success::Json(200, schema::<keyledger_projection::OrganizationView>),
        errors: errors![
            "invalid_request",
            "organization_not_found",
            "cmk_not_enabled",
            "data_lost",
            "idempotency_key_reused",
            "version_mismatch",
            "payload_too_large"
        ],
        command: true,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/key-health",
        summary: "The key's health.",
        roles: ANY,
        params: &[ORG],
        body: None,
        success: Success::Json(200, schema::<api::KeyHealth>),
        errors: errors!["invalid_request", "organization_not_found", "cmk_not_enabled"],
        command: false,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/key-health/probe",
        summary: "Probe the key now; records a change of health.",
        roles: &["org_admin", "support"],
        params: &[ORG],
        body: None,
        success: Success::Json(200, schema::<api::KeyHealth>),
        errors: errors!["invalid_request", "organization_not_found", "cmk_not_enabled"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/data-keys",
        summary: "The organization's data keys and what wraps them. No key material.",
        roles: &["org_admin", "auditor", "support"],
        params: &[ORG],
        body: None,
        success: Success::Json(200, schema::<keyledger_projection::DataKeyInventory>),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/events",
        summary: "The organization's events as public envelopes.",
        roles: &["platform", "auditor"],
        params: &[
            ORG,
            query(
                "after_version",
                "integer",
                "Only events after this stream version.",
            ),
            query("limit", "integer", "At most this many (1–1000, default 100)."),
        ],
        body: None,
        success: Success::Json(200, schema::<api::OrgEvents>),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/tenants/{tenant}/audit",
        summary: "The tenant-level audit: each key-relevant event once per tenant the organization had.",
        roles: &["auditor", "org_admin", "support"],
        params: &[
            TENANT,
            query("after", "string", "The `next` cursor of the previous page."),
            query("limit", "integer", "At most this many (1–1000, default 100)."),
            query("action", "string", "Only this event type."),
            query(
                "since",
                "date-time",
                "Only entries at or after this time (RFC 3339).",
            ),
            query("until", "date-time", "Only entries before this time (RFC 3339)."),
        ],
        body: None,
        success: Success::Json(200, schema::<api::AuditPage>),
        errors: errors!["invalid_request", "tenant_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/events",
        summary: "A page of CloudEvents in commit order.",
        roles: &["platform"],
        params: &[
            query("after", "integer", "Only events after this global position."),
            query("limit", "integer", "At most this many (1–1000, default 100)."),
        ],
        body: None,
        success: Success::Json(200, schema::<api::EventsPage>),
        errors: errors!["invalid_request"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/events/stream",
        summary: "Server-Sent Events: `id` = position, `event` = type, `data` = CloudEvent; a comment \
                  heartbeat every 15 s. Resume with `Last-Event-ID`.",
        roles: &["platform"],
        params: &[query(
            "after",
            "integer",
            "Start after this global position (Last-Event-ID wins).",
        )],
        body: None,
        success: Success::EventStream,
        errors: errors!["invalid_request"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/healthz",
        summary: "Liveness.",
        roles: &[],
        params: &[],
        body: None,
        success: Success::Json(200, schema::<Value>),
        errors: &[],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/readyz",
        summary: "Readiness: 200 only while the store answers.",
        roles: &[],
        params: &[],
        body: None,
        success: Success::Json(200, schema::<Value>),
        errors: errors!["store_unavailable"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics (OpenMetrics text).",
        roles: &[],
        params: &[],
        body: None,
        success: Success::Text("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        errors: &[],
        command: false,
    },
];

/// The HTTP status of each problem code.
pub fn status_of(code: &str) -> u16 {
    match code {
        "invalid_request" => 400,
        "unauthenticated" => 401,
        "forbidden" => 403,
        "organization_not_found" | "tenant_not_found" | "not_found" => 404,
        "version_mismatch" => 412,
        "payload_too_large" => 413,
        "key_validation_failed" => 422,
        "method_not_allowed" => 405,
        "key_vault_unavailable" | "store_unavailable" | "request_timeout" => 503,
        "internal_error" => 500,
        _ => 409,
    }
}

fn parameter(p: &Param) -> Value {
    let schema = match p.kind {
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "date-time" => json!({"type": "string", "format": "date-time"}),
        other => json!({"type": other}),
    };
    json!({"name": p.name, "in": p.location, "required": p.location == "path",
           "description": p.description, "schema": schema})
}

fn operation(route: &RouteDoc, g: &mut SchemaGenerator) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(route.summary));
    let who = if route.roles.is_empty() {
        "No token needed.".to_owned()
    } else {
        format!("Roles: {}.", route.roles.join(", "))
    };
    op.insert("description".into(), json!(who));
    op.insert("x-roles".into(), json!(route.roles));
    let mut params: Vec<Value> = route.params.iter().map(parameter).collect();
    if route.command {
        params.push(
            json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A repeat with the same body returns the first response and appends nothing.",
            "schema": {"type": "string", "maxLength": crate::idempotency::MAX_KEY_LEN}}),
        );
        params.push(json!({"name": "If-Match", "in": "header", "required": false,
            "description": "The organization version (its ETag) the change was decided on.",
            "schema": {"type": "string"}}));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(body) = route.body {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": body(g)}}}),
        );
    }
    let mut responses = Map::new();
    let (status, content) = match route.success {
        Success::Json(status, f) => (status, json!({"application/json": {"schema": f(g)}})),
        Success::EventStream => (200, json!({"text/event-stream": {"schema": {"type": "string"}}})),
        Success::Text(ct) => (200, json!({ ct: {"schema": {"type": "string"}} })),
    };
    responses.insert(
        status.to_string(),
        json!({"description": "Success.", "content": content}),
    );
    let mut codes: Vec<&str> = route.errors.to_vec();
    if !route.roles.is_empty() {
        codes.extend(["unauthenticated", "forbidden"]);
        // Every authenticated route reads the store or the projections (ADR 0015).
        if !codes.contains(&"store_unavailable") {
            codes.push("store_unavailable");
        }
    }
    let problem = g.subschema_for::<Problem>();
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for code in codes {
        by_status.entry(status_of(code)).or_default().push(code);
    }
    for (status, codes) in by_status {
        let mut response = json!({
            "description": format!("Problem codes: {}.", codes.join(", ")),
            "content": {"application/problem+json": {"schema": problem.clone()}},
        });
        if status == 503 {
            response["headers"] = json!({"Retry-After": {"schema": {"type": "integer"},
                "description": "Seconds to wait before retrying."}});
        }
        responses.insert(status.to_string(), response);
    }
    op.insert("responses".into(), Value::Object(responses));
    if route.roles.is_empty() {
        op.insert("security".into(), json!([]));
    }
    Value::Object(op)
}

/// The whole document.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for route in ROUTES {
        let op = operation(route, &mut g);
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[route.method] = op;
    }
    let schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "keyledger",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Customer-managed-key state for a SaaS platform: commands, views, the \
                            tenant audit and the CloudEvents stream. Errors are \
                            application/problem+json with a `code`.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// The document as checked in: pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}
