//! The OpenAPI 3.1 document of the HTTP API, generated from this route table and the JSON
//! Schemas of the request and response types (schemars). `schemas/openapi.json` is checked
//! in; a test fails when it drifts from the code, and another that every documented route is
//! served. `.ci/api-check` holds the running service to it with schemathesis (ADR 0018), so
//! each schema here says what the service's parsers accept, no more and no less.

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

/// A query, path or header parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub location: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    /// Path parameters always; a query parameter the route cannot do without.
    pub required: bool,
}

/// What a parameter's text must be; each kind is what the service's parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A hyphenated UUID other than the nil UUID.
    Uuid,
    /// A global position or stream version: 0 to [`api::MAX_POSITION`].
    Position,
    /// A stream version or tree size that names at least one event: 1 to
    /// [`api::MAX_POSITION`].
    Count,
    /// A page size: [`api::MIN_LIMIT`] to [`api::MAX_LIMIT`].
    Limit,
    /// A DEK id: 1 to `u32::MAX`.
    DekId,
    Boolean,
    String,
    /// RFC 3339.
    DateTime,
}

const fn path(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "path",
        kind: Kind::Uuid,
        description,
        required: true,
    }
}

const fn query(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        kind,
        description,
        required: false,
    }
}

const fn required_query(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        required: true,
        ..query(name, kind, description)
    }
}

const LIMIT: Param = query(
    "limit",
    Kind::Limit,
    "At most this many (1–1000, default 100); another number is refused.",
);

const ORG: Param = path("org", "The organization id (UUID).");
const TENANT: Param = path("tenant", "The tenant id (UUID).");
const DEK_ID: Param = Param {
    kind: Kind::DekId,
    ..path("dek_id", "The DEK id (1, 2, …), as the ciphertext names it.")
};
const RELEASE_ERRORS: &[&str] = &[
    "invalid_request",
    "organization_not_found",
    "data_key_not_found",
    "key_unavailable",
    "data_lost",
    "key_vault_unavailable",
];

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
    /// Takes `Idempotency-Key` and `If-Match`, and so may answer `idempotency_key_reused` and
    /// `version_mismatch`.
    pub command: bool,
}

const ANY: &[&str] = &["org_admin", "auditor", "platform", "billing", "support"];

/// Who reads an organization's verifiable audit log.
const AUDIT_LOG_READERS: &[&str] = &["org_admin", "auditor", "support"];

/// The media type of a signed checkpoint.
pub const CHECKPOINT_TYPE: &str = "text/plain; charset=utf-8";

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
        body: Some(tenant_schema),
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
                Kind::Boolean,
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
        method: "post",
        path: "/v1/organizations/{org}/data-keys/active/release",
        summary: "Release the active DEK, for encrypting new data. Customer-managed: unwrapped in the customer's vault now, so the customer can refuse. Every release is recorded (tenant audit `DataKeyReleased`).",
        roles: &["platform"],
        params: &[ORG],
        body: None,
        success: Success::Json(200, schema::<api::ReleasedKey>),
        errors: RELEASE_ERRORS,
        command: false,
    },
    RouteDoc {
        method: "post",
        path: "/v1/organizations/{org}/data-keys/{dek_id}/release",
        summary: "Release a DEK by id, for reading data encrypted with it. Same rules and record as the active release.",
        roles: &["platform"],
        params: &[ORG, DEK_ID],
        body: None,
        success: Success::Json(200, schema::<api::ReleasedKey>),
        errors: RELEASE_ERRORS,
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
                Kind::Position,
                "Only events after this stream version.",
            ),
            LIMIT,
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
            query("after", Kind::Position, "The `next` cursor of the previous page."),
            LIMIT,
            query("action", Kind::String, "Only this event type."),
            query(
                "since",
                Kind::DateTime,
                "Only entries at or after this time (RFC 3339).",
            ),
            query(
                "until",
                Kind::DateTime,
                "Only entries before this time (RFC 3339).",
            ),
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
            query("after", Kind::Position, "Only events after this global position."),
            LIMIT,
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
        params: &[
            query(
                "after",
                Kind::Position,
                "Start after this global position (Last-Event-ID wins).",
            ),
            Param {
                name: "Last-Event-ID",
                location: "header",
                kind: Kind::Position,
                description: "On a reconnect: the `id` of the last event received; resumes after it.",
                required: false,
            },
        ],
        body: None,
        success: Success::EventStream,
        errors: errors!["invalid_request", "too_many_streams"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/audit/checkpoint",
        summary: "The latest signed checkpoint (C2SP signed note) of the organization's Merkle log, \
                  signed now if the log grew since.",
        roles: AUDIT_LOG_READERS,
        params: &[ORG],
        body: None,
        success: Success::Text(CHECKPOINT_TYPE),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/audit/proof",
        summary: "An inclusion proof (RFC 9162) of one event of the organization's log.",
        roles: AUDIT_LOG_READERS,
        params: &[
            ORG,
            required_query(
                "version",
                Kind::Count,
                "The stream version to prove (leaf index version − 1).",
            ),
            query(
                "tree_size",
                Kind::Count,
                "The size of the tree to prove against (at least `version`); the latest signed \
                 checkpoint's when left out.",
            ),
        ],
        body: None,
        success: Success::Json(200, schema::<api::InclusionProof>),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/audit/consistency",
        summary: "A consistency proof (RFC 9162) that the organization's log at `to` extends it at `from`.",
        roles: AUDIT_LOG_READERS,
        params: &[
            ORG,
            required_query("from", Kind::Position, "The earlier tree size."),
            required_query(
                "to",
                Kind::Position,
                "The later tree size: at least `from`, at most the log's size.",
            ),
        ],
        body: None,
        success: Success::Json(200, schema::<api::ConsistencyProof>),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/organizations/{org}/audit/bundle",
        summary: "The organization's public envelopes, their leaf inputs and the signed checkpoint \
                  over them, for `keyledger audit verify`. No secret and no key material.",
        roles: AUDIT_LOG_READERS,
        params: &[ORG],
        body: None,
        success: Success::Json(200, schema::<keyledger_audit::Bundle>),
        errors: errors!["invalid_request", "organization_not_found"],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/audit/checkpoint",
        summary: "The latest signed checkpoint of the global log (every event in commit order).",
        roles: &["platform", "auditor"],
        params: &[],
        body: None,
        success: Success::Text(CHECKPOINT_TYPE),
        errors: &[],
        command: false,
    },
    RouteDoc {
        method: "get",
        path: "/v1/audit/public-key",
        summary: "The note verifier key of the audit checkpoints.",
        roles: &[],
        params: &[],
        body: None,
        success: Success::Json(200, schema::<api::AuditPublicKey>),
        errors: &[],
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

/// The 503s any route may answer besides its own: the request timeout (every route but the
/// stream, which is meant to stay open) and, on every authenticated route (each reads the store
/// or the projections, ADR 0015), a store that does not answer in time.
fn implicit_unavailable(route: &RouteDoc) -> &'static [&'static str] {
    match (route.path == crate::routes::STREAM_PATH, route.roles.is_empty()) {
        (true, _) => &["store_unavailable"],
        (false, false) => &["request_timeout", "store_unavailable"],
        (false, true) => &["request_timeout"],
    }
}

/// The HTTP status of each problem code.
pub fn status_of(code: &str) -> u16 {
    match code {
        "invalid_request" => 400,
        "unauthenticated" => 401,
        "forbidden" => 403,
        "organization_not_found" | "tenant_not_found" | "data_key_not_found" | "not_found" => 404,
        "version_mismatch" => 412,
        "payload_too_large" => 413,
        "key_validation_failed" => 422,
        "method_not_allowed" => 405,
        "key_vault_unavailable" | "store_unavailable" | "request_timeout" | "too_many_streams" => 503,
        "internal_error" => 500,
        _ => 409,
    }
}

fn parameter(p: &Param) -> Value {
    let schema = match p.kind {
        Kind::Uuid => json!({"type": "string", "format": "uuid"}),
        Kind::Position => json!({"type": "integer", "minimum": 0, "maximum": api::MAX_POSITION}),
        Kind::Count => json!({"type": "integer", "minimum": 1, "maximum": api::MAX_POSITION}),
        Kind::Limit => json!({"type": "integer", "minimum": api::MIN_LIMIT, "maximum": api::MAX_LIMIT}),
        Kind::DekId => json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}),
        Kind::Boolean => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::DateTime => json!({"type": "string", "format": "date-time"}),
    };
    json!({"name": p.name, "in": p.location, "required": p.required,
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
            "description": "A repeat with the same body returns the first response and appends \
                nothing. Visible ASCII; inner spaces allowed.",
            "schema": {"type": "string", "maxLength": crate::idempotency::MAX_KEY_LEN,
                       "pattern": IDEMPOTENCY_KEY_PATTERN}}),
        );
        params.push(json!({"name": "If-Match", "in": "header", "required": false,
            "description": "The organization version (its ETag) the change was decided on, \
                e.g. `\"7\"`.",
            "schema": {"type": "string", "pattern": crate::extract::IF_MATCH_PATTERN}}));
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
        Success::EventStream => (200, json!({"text/event-stream": {"schema": sse_event()}})),
        Success::Text(ct) => (200, json!({ ct: {"schema": {"type": "string"}} })),
    };
    responses.insert(
        status.to_string(),
        json!({"description": "Success.", "content": content}),
    );
    let mut codes: Vec<&str> = route.errors.to_vec();
    if !route.roles.is_empty() {
        codes.extend(["unauthenticated", "forbidden"]);
    }
    if route.command {
        codes.extend(["idempotency_key_reused", "version_mismatch"]);
    }
    codes.extend(implicit_unavailable(route));
    let mut seen = std::collections::BTreeSet::new();
    codes.retain(|c| seen.insert(*c));
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

/// One Server-Sent Event as OpenAPI 3.1 tools read a `text/event-stream` schema: `id` is the
/// global position, `event` the event type, `data` the CloudEvent as JSON text.
fn sse_event() -> Value {
    json!({
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The global position."},
            "event": {"type": "string", "description": "The event type, e.g. `OrganizationRegistered` or `AuditCheckpointSigned`."},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "description": "The CloudEvent (spec 1.0, structured JSON)."},
        },
    })
}

/// `Idempotency-Key`: what the service takes, 1 to 200 visible ASCII characters. Spaces
/// only inside, as HTTP drops them at either end.
const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~\\t]*[!-~])?$";

/// A character `check_name` refuses: a control character (Unicode Cc).
const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";

/// Names of organizations and tenants: 1 to 200 characters, not all blank, no control
/// characters (`keyledger_domain` `check_name`).
pub(crate) fn name_schema(_: &mut SchemaGenerator) -> Schema {
    let pattern = format!("^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$");
    schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 200, "pattern": pattern})
}

/// Reasons and tickets: 1 to 1000 characters, not all blank (`check_reason`).
pub(crate) fn reason_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "\\S"})
}

pub(crate) fn optional_reason_schema(g: &mut SchemaGenerator) -> Schema {
    nullable(reason_schema(g))
}

fn nullable(schema: Schema) -> Schema {
    let mut value = schema.to_value();
    value["type"] = json!([value["type"].clone(), "null"]);
    Schema::try_from(value).unwrap_or_default()
}

/// A plan (`Plan::new`): a tier only on enterprise, 1 to 64 letters, digits, `-` or `_`.
pub(crate) fn plan_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "description": "The plan: `free` or `pro` without a tier, or `enterprise` with an optional tier.",
        "oneOf": [
            {"type": "object", "additionalProperties": false, "required": ["kind"],
             "properties": {"kind": {"type": "string", "enum": ["free", "pro"]},
                            "tier": {"type": "null"}}},
            {"type": "object", "additionalProperties": false, "required": ["kind"],
             "properties": {"kind": {"type": "string", "const": "enterprise"},
                            "tier": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{1,64}$"}}},
        ],
    })
}

/// `POST …/tenants` and each entry of `tenants`.
pub(crate) fn tenant_schema(g: &mut SchemaGenerator) -> Schema {
    let id = g.subschema_for::<keyledger_domain::TenantId>();
    let name = name_schema(g);
    schemars::json_schema!({
        "type": "object", "additionalProperties": false, "required": ["tenant_id", "name"],
        "properties": {"tenant_id": id, "name": name},
    })
}

/// The tenants of a new organization; a tenant id may appear once (the service refuses a
/// repeat, which JSON Schema cannot say of one property).
pub(crate) fn tenants_schema(g: &mut SchemaGenerator) -> Schema {
    let tenant = tenant_schema(g);
    schemars::json_schema!({"type": "array", "items": tenant, "uniqueItems": true})
}

/// `https://HOST/keys/NAME[/VERSION]` (`KeyIdentifier::parse`) on a host of the default
/// allow-list (`keys.azure.allowed_vault_hosts`); a deployment that changes the list changes
/// which hosts are refused with 400.
pub(crate) fn key_identifier_schema(_: &mut SchemaGenerator) -> Schema {
    let hosts: Vec<String> = keyledger_domain::HostAllowList::azure_public_clouds()
        .entries()
        .iter()
        .map(|e| match e.strip_prefix('.') {
            Some(suffix) => format!(
                "[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.{}",
                suffix.replace('.', "\\.")
            ),
            None => e.replace('.', "\\."),
        })
        .collect();
    let pattern = format!(
        "^https://({})/keys/[A-Za-z0-9-]{{1,127}}(/[A-Za-z0-9]{{1,64}})?$",
        hosts.join("|")
    );
    schemars::json_schema!({"type": "string", "maxLength": 2048, "pattern": pattern})
}

pub(crate) fn optional_key_identifier_schema(g: &mut SchemaGenerator) -> Schema {
    nullable(key_identifier_schema(g))
}

/// The nil UUID is never an id (`keyledger_domain` refuses it); says so wherever a UUID is.
fn refuse_nil_uuids(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("format") == Some(&json!("uuid")) && !map.contains_key("not") {
                map.insert(
                    "not".into(),
                    json!({"const": "00000000-0000-0000-0000-000000000000"}),
                );
            }
            map.values_mut().for_each(refuse_nil_uuids);
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_nil_uuids),
        _ => {}
    }
}

/// The whole document.
pub fn document() -> Value {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12: `null` is a type, not `nullable`.
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = settings.into_generator();
    let mut paths = Map::new();
    for route in ROUTES {
        let op = operation(route, &mut g);
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[route.method] = op;
    }
    let schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "keyledger",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Customer-managed-key state for a SaaS platform: commands, views, the \
                            tenant audit and the CloudEvents stream. Errors are \
                            application/problem+json with a `code`. A method a path does \
                            not serve gets 405 `method_not_allowed` with `Allow`; an \
                            unknown path gets 404 `not_found`. A 503 carries `Retry-After`.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A static token of [[auth.tokens]], or an Entra ID access token (RS256 JWT) of an [[auth.entra]] issuer: scope api://keyledger/.default, roles and reach from its configured claims.",
            }},
        },
    });
    refuse_nil_uuids(&mut doc);
    doc
}

/// The document as checked in: pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}
