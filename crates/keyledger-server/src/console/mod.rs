//! The auditor console at `/console` (CONTRACT.md "Console and sign-in"): server-rendered
//! HTML (maud) over the same reads and scope rules as `/v1`, a token sign-in that starts a
//! server-side session, and CSRF-checked forms. No JavaScript; one vendored stylesheet.
//!
//! The console is not part of the `/v1` API: it is outside the idempotency layer and the
//! OpenAPI document.

mod pages;
pub(crate) mod session;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, Utc};
use keyledger_app::AppError;
use keyledger_domain::{DomainError, OrgId, Read, TenantId};
use keyledger_projection::{AuditEntry, Projection};
use keyledger_store::merkle::AuditLog;
use maud::Markup;
use serde::Deserialize;

use crate::Shared;
use crate::api::{AuditQueryParams, MAX_LIMIT};
use crate::problem::Problem;
use crate::routes::audit::audit_page;
use session::{Session, same_origin};

/// Organizations the overview lists at most.
const MAX_LISTED_ORGS: u32 = 500;
/// Rows one audit page of the console shows unless the address says otherwise.
const PAGE_ROWS: u32 = 50;
/// Rows a CSV download holds at most.
const MAX_CSV_ROWS: usize = 10_000;
const STYLESHEET: &str = include_str!("console.css");

/// The console's routes, with their security headers.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/console", get(home))
        .route("/console/console.css", get(stylesheet))
        .route("/console/sign-in", post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/organizations/{org}", get(organization))
        .route("/console/tenants/{tenant}/audit", get(tenant_audit))
        .route("/console/tenants/{tenant}/audit.csv", get(tenant_audit_csv))
        .layer(axum::middleware::map_response(secure_headers))
}

/// No caching of signed-in pages, no framing, no script, forms post only to the console.
/// `Referrer-Policy: same-origin`, not `no-referrer`: under the latter Chromium sends
/// `Origin: null` with the console's own form posts, which the same-origin check refuses.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

fn tls(state: &Shared) -> bool {
    state.config.tls.is_some()
}

/// A failed read as a page: its status and title, never internal text.
fn error_page(session: Option<&Session>, problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match problem.status {
        403 => "This is outside the scope of your sign-in.",
        404 => "There is no such organization or tenant.",
        400 => "The address or a filter is not valid.",
        503 => "The service is busy; try again in a moment.",
        _ => "Something went wrong; the service logged it.",
    };
    html(status, pages::error(session, &problem.title, message))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// `GET /console`: the sign-in form, or the organizations in the caller's scope.
async fn home(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let Some(session) = state.sessions.find(&headers) else {
        return html(StatusCode::OK, pages::sign_in(None));
    };
    match organizations_in_scope(&state, &session).await {
        Ok(orgs) => html(StatusCode::OK, pages::home(&session, &orgs)),
        Err(p) => error_page(Some(&session), &p),
    }
}

/// The organizations `session`'s actor may view, by the domain's read rules (through the
/// app, as `GET /v1/organizations/{org}` does).
async fn organizations_in_scope(
    state: &Shared,
    session: &Session,
) -> Result<Vec<keyledger_projection::OrganizationView>, Problem> {
    let ids = state
        .services
        .projections
        .organizations(Projection::OrganizationEncryption, MAX_LISTED_ORGS)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "listing organizations failed");
            Problem::store_unavailable()
        })?;
    let mut views = Vec::new();
    for org in ids {
        match state
            .services
            .app
            .readable_view(&session.actor, org, Read::View)
            .await
        {
            Ok(view) => views.push(view),
            Err(AppError::Rejected(_)) => {}
            Err(e) => return Err(Problem::from(&e)),
        }
    }
    Ok(views)
}

#[derive(Debug, Default, Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

/// `POST /console/sign-in`: a token typed in → a session cookie. Same-origin posts only
/// (login CSRF). The token itself is neither kept nor echoed.
async fn sign_in(State(state): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !same_origin(&headers, tls(&state)) {
        return html(StatusCode::FORBIDDEN, pages::sign_in(Some(pages::CROSS_SITE)));
    }
    let form: SignInForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let Some(actor) = session::actor_for(&state, &form.token).await else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(Some("That token was not accepted.")),
        );
    };
    // A sign-in over a live session replaces it: the old id stops working.
    if let Some(old) = state.sessions.find(&headers) {
        state.sessions.end(&old);
    }
    let id = state.sessions.start(actor);
    let mut response = see_other("/console");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&id, tls(&state)));
    response
}

/// `POST /console/sign-out`: ends the session, given its CSRF token from a same-origin page;
/// anything else is 403 and ends nothing.
async fn sign_out(State(state): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let session = state.sessions.find(&headers);
    let submitted: Option<String> = form_urlencoded::parse(&body)
        .find(|(k, _)| k == session::CSRF_FIELD)
        .map(|(_, v)| v.into_owned());
    let allowed = same_origin(&headers, tls(&state))
        && session
            .as_ref()
            .is_some_and(|s| s.csrf_matches(submitted.as_deref()));
    let Some(session) = session.filter(|_| allowed) else {
        return html(
            StatusCode::FORBIDDEN,
            pages::error(
                None,
                "Forbidden",
                "This form did not come from the console's own page, or its session has ended; nothing was changed.",
            ),
        );
    };
    state.sessions.end(&session);
    let mut response = see_other("/console");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(tls(&state)));
    response
}

/// `GET /console/organizations/{org}`.
async fn organization(State(state): State<Shared>, headers: HeaderMap, Path(org): Path<String>) -> Response {
    let Some(session) = state.sessions.find(&headers) else {
        return see_other("/console");
    };
    let Ok(org) = org.parse::<OrgId>() else {
        return error_page(Some(&session), &Problem::organization_not_found());
    };
    let app = &state.services.app;
    let view = match app.readable_view(&session.actor, org, Read::View).await {
        Ok(view) => view,
        Err(AppError::Rejected(DomainError::Forbidden)) => {
            return error_page(Some(&session), &Problem::forbidden());
        }
        Err(e) => return error_page(Some(&session), &Problem::from(&e)),
    };
    // The data keys and the audit log have their own read rules (a platform token views the
    // organization but not its data keys): a section out of scope says so.
    let data_keys = match app.readable_view(&session.actor, org, Read::DataKeys).await {
        Ok(_) => match app.data_keys(org).await {
            Ok(inventory) => Some(inventory),
            Err(e) => return error_page(Some(&session), &Problem::from(&e)),
        },
        Err(_) => None,
    };
    let verification = match app.readable_view(&session.actor, org, Read::AuditLog).await {
        Ok(_) => {
            let checkpointer = &state.services.checkpointer;
            match checkpointer.latest(AuditLog::Org(org)).await {
                Ok(latest) => Some(pages::Verification {
                    checkpoint: latest.map(|c| pages::Checkpoint {
                        size: c.tree_size,
                        root: checkpoint_root(&c.note),
                        signed_at: c.signed_at,
                    }),
                    verifier_key: checkpointer.verifier_key(),
                }),
                Err(e) => return error_page(Some(&session), &Problem::from(&e)),
            }
        }
        Err(_) => None,
    };
    html(
        StatusCode::OK,
        pages::organization(&session, &view, data_keys.as_ref(), verification.as_ref()),
    )
}

/// The root hash line of a signed checkpoint note (its third line), for display.
fn checkpoint_root(note: &str) -> String {
    note.lines().nth(2).unwrap_or_default().to_owned()
}

/// The audit filters as the console's form sends them: empty fields mean "any";
/// `datetime-local` values (no zone) are UTC.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditFilters {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
}

fn nonempty(v: Option<&String>) -> Option<&str> {
    v.map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn instant(field: &str, raw: Option<&String>) -> Result<Option<DateTime<Utc>>, Problem> {
    let Some(raw) = nonempty(raw) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| crate::extract::invalid(field, "must be a date and time"))
}

impl AuditFilters {
    /// The API's query for these filters.
    fn query(&self, limit: u32) -> Result<AuditQueryParams, Problem> {
        let limit = match nonempty(self.limit.as_ref()) {
            None => limit,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| crate::extract::invalid("limit", "must be a page size"))?,
        };
        Ok(AuditQueryParams {
            after: nonempty(self.after.as_ref()).map(str::to_owned),
            limit: Some(limit),
            action: nonempty(self.action.as_ref()).map(str::to_owned),
            since: instant("since", self.since.as_ref())?,
            until: instant("until", self.until.as_ref())?,
        })
    }

    /// The filters as a query string (without the cursor), for links.
    pub(crate) fn encoded(&self, after: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
            ("limit", &self.limit),
        ] {
            if let Some(v) = nonempty(v.as_ref()) {
                q.append_pair(k, v);
            }
        }
        if let Some(after) = after {
            q.append_pair("after", after);
        }
        q.finish()
    }
}

/// The session of a tenant page's request and the tenant it names; otherwise the answer:
/// to the sign-in page without a session, 404 for a tenant id that does not parse.
fn signed_in_tenant(
    state: &Shared,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<(Session, TenantId), Response> {
    let Some(session) = state.sessions.find(headers) else {
        return Err(see_other("/console"));
    };
    match tenant.parse::<TenantId>() {
        Ok(tenant) => Ok((session, tenant)),
        Err(_) => Err(error_page(Some(&session), &Problem::tenant_not_found())),
    }
}

/// `GET /console/tenants/{tenant}/audit?action=&since=&until=&after=&limit=`.
async fn tenant_audit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let (session, tenant) = match signed_in_tenant(&state, &headers, &tenant) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let page = match filters.query(PAGE_ROWS) {
        Ok(q) => audit_page(&state, &session.actor, tenant, &q).await,
        Err(p) => Err(p),
    };
    match page {
        Ok(page) => html(
            StatusCode::OK,
            pages::tenant_audit(&session, tenant, &filters, &page.entries, page.next.as_deref()),
        ),
        Err(p) => error_page(Some(&session), &p),
    }
}

/// `GET /console/tenants/{tenant}/audit.csv`: every row the filters match (from `after`,
/// up to [`MAX_CSV_ROWS`]), as CSV.
async fn tenant_audit_csv(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let (session, tenant) = match signed_in_tenant(&state, &headers, &tenant) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let mut q = match filters.query(MAX_LIMIT) {
        Ok(q) => q,
        Err(p) => return error_page(Some(&session), &p),
    };
    q.limit = Some(MAX_LIMIT);
    let mut rows: Vec<AuditEntry> = Vec::new();
    loop {
        let page = match audit_page(&state, &session.actor, tenant, &q).await {
            Ok(page) => page,
            Err(p) => return error_page(Some(&session), &p),
        };
        rows.extend(page.entries);
        match page.next {
            Some(next) if rows.len() < MAX_CSV_ROWS => q.after = Some(next),
            _ => break,
        }
    }
    rows.truncate(MAX_CSV_ROWS);
    let disposition = format!("attachment; filename=\"audit-{tenant}.csv\"");
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv(&rows),
    )
        .into_response()
}

/// One CSV field (RFC 4180), with a leading formula character defused for spreadsheets.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

fn csv(rows: &[AuditEntry]) -> String {
    let mut out =
        String::from("position,occurred_at,tenant_id,org_id,action,actor_kind,actor_id,event_id,details\r\n");
    for r in rows {
        let kind = serde_json::to_value(r.actor.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let fields = [
            r.position.to_string(),
            r.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            r.tenant_id.to_string(),
            r.org_id.to_string(),
            r.action.clone(),
            kind,
            r.actor.id.clone(),
            r.event_id.to_string(),
            r.details.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }

    #[test]
    fn filters_accept_datetime_local_and_rfc3339() {
        let f = AuditFilters {
            since: Some("2026-12-05T04:30".into()),
            until: Some("2026-12-06T00:00:00Z".into()),
            action: Some(" ".into()),
            ..AuditFilters::default()
        };
        let q = f.query(10).unwrap();
        assert_eq!(q.since.unwrap().to_rfc3339(), "2026-12-05T04:30:00+00:00");
        assert!(q.until.is_some());
        assert_eq!(q.action, None);
        assert_eq!(q.limit, Some(10));
        let bad = AuditFilters {
            since: Some("yesterday".into()),
            ..AuditFilters::default()
        };
        assert_eq!(bad.query(10).unwrap_err().status, 400);
    }
}
