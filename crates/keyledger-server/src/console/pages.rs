//! The console's pages (maud). Each has `lang`, one `<main>`, headings in order, labelled
//! inputs and scoped table headers. No page shows a secret: views carry only
//! `client_secret_set`, data keys only their ids and wrapping, sessions no token.

use keyledger_domain::{CrossRead, Role, TenantId, WrappedBy, authorize_cross_read};
use keyledger_projection::{AuditEntry, DataKeyInventory, EncryptionMode, OrganizationView};
use maud::{DOCTYPE, Markup, html};

use super::AuditFilters;
use super::session::{CSRF_FIELD, Session};

pub(super) const CROSS_SITE: &str = "Sign-in must come from the console's own page.";

/// What the page shows of a signed checkpoint.
pub(super) struct Checkpoint {
    pub size: u64,
    /// The root hash line of the note (base64).
    pub root: String,
    pub signed_at: chrono::DateTime<chrono::Utc>,
}

/// The audit-log verification status of an organization.
pub(super) struct Verification {
    /// The latest signed checkpoint; `None` before the first.
    pub checkpoint: Option<Checkpoint>,
    /// The C2SP verifier key of the checkpoints.
    pub verifier_key: String,
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// What is left until `until`, in days and hours: "6 days 23 hours left", or "past".
fn time_left(until: &chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let left = *until - now;
    if left <= chrono::Duration::zero() {
        return "past".into();
    }
    let (days, hours) = (left.num_days(), left.num_hours() % 24);
    match days {
        0 => format!("{hours} hours left"),
        1 => format!("1 day {hours} hours left"),
        n => format!("{n} days {hours} hours left"),
    }
}

fn role_name(role: Role) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether the tenant's audit link is worth showing: the API's own rule for the read.
fn may_audit(session: &Session, tenant: TenantId) -> bool {
    authorize_cross_read(&session.actor, CrossRead::TenantAudit(tenant)).is_ok()
}

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyledger console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header.bar {
                    a.brand href="/console" { "keyledger console" }
                    @if let Some(s) = session {
                        span.who {
                            "Signed in as " strong { (s.actor.id) }
                            " (" (s.actor.roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>().join(", ")) ")"
                        }
                        form.inline method="post" action="/console/sign-out" {
                            input type="hidden" name=(CSRF_FIELD) value=(s.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(super) fn sign_in(message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Sign in with a keyledger bearer token. The token is checked once; the console keeps only who you are, for this session." }
            @if let Some(m) = message {
                p.alert role="alert" { (m) }
            }
            form method="post" action="/console/sign-in" {
                label for="token" { "Bearer token" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub(super) fn error(session: Option<&Session>, title: &str, message: &str) -> Markup {
    layout(
        title,
        session,
        html! {
            h1 { (title) }
            p { (message) }
            p { a href="/console" { "Back to the organizations" } }
        },
    )
}

fn mode(m: EncryptionMode) -> &'static str {
    match m {
        EncryptionMode::ProviderManaged => "Provider-managed key",
        EncryptionMode::CustomerManaged => "Customer-managed key",
    }
}

pub(super) fn home(session: &Session, orgs: &[OrganizationView]) -> Markup {
    layout(
        "Organizations",
        Some(session),
        html! {
            h1 { "Organizations" }
            @if orgs.is_empty() {
                p { "No organization is in the scope of your sign-in." }
            } @else {
                table {
                    caption { "Organizations in your scope" }
                    thead { tr {
                        th scope="col" { "Organization" }
                        th scope="col" { "Plan" }
                        th scope="col" { "Encryption" }
                        th scope="col" { "Tenants (audit)" }
                    } }
                    tbody {
                        @for o in orgs {
                            tr {
                                th scope="row" { a href={ "/console/organizations/" (o.org_id) } { (o.name) } }
                                td { (o.plan.kind()) }
                                td { (mode(o.encryption.mode)) }
                                td {
                                    ul.plain {
                                        @for t in &o.tenants {
                                            @if may_audit(session, t.tenant_id) {
                                                li { a href={ "/console/tenants/" (t.tenant_id) "/audit" } { (t.name) } }
                                            } @else {
                                                li { (t.name) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(super) fn organization(
    session: &Session,
    view: &OrganizationView,
    data_keys: Option<&DataKeyInventory>,
    verification: Option<&Verification>,
) -> Markup {
    let enc = &view.encryption;
    layout(
        &view.name,
        Some(session),
        html! {
            h1 { (view.name) }
            p.muted { "Organization " code { (view.org_id) } ", version " (view.version) }
            h2 { "Encryption" }
            dl {
                dt { "Mode" } dd #mode { (mode(enc.mode)) @if enc.locked { " (locked by the plan)" } }
                dt { "Active key" }
                dd #active-key {
                    @match &enc.customer_managed_key {
                        Some(k) => { code { (k.key_identifier) } }
                        None => { "The provider's internal key" }
                    }
                }
                @if let Some(k) = &enc.customer_managed_key {
                    dt { "Directory (tenant) id" } dd { code { (k.directory_id) } }
                    dt { "Application id" } dd { code { (k.application_id) } }
                    dt { "Client secret" } dd { @if k.client_secret_set { "set (never shown)" } @else { "not set" } }
                    dt { "Enabled" } dd { (time(&k.enabled_at)) }
                    @if let Some(r) = &k.last_rotated_at { dt { "Last rotated" } dd { (time(r)) } }
                }
                dt { "Active data key" } dd { (enc.active_data_key_id) }
                @if enc.data_lost { dt { "Customer data" } dd.alert { "declared lost" } }
            }
            h2 { "Key health" }
            @match &enc.health {
                Some(h) => {
                    p #health { strong { (h.status.as_str()) } " since " (time(&h.since)) }
                    @if let Some(until) = &h.recoverable_until {
                        p #countdown .alert {
                            "The key is deleted in the customer's vault. It, and the data under it, can be recovered until "
                            strong { (time(until)) } " (" (time_left(until, chrono::Utc::now())) "); then the vault purges it."
                        }
                    }
                    @if let Some(d) = &h.detail { p { (d) } }
                }
                None => { p #health { "Not monitored while the provider-managed key is in use." } }
            }
            h2 { "Key history" }
            @if view.key_history.is_empty() {
                p { "No customer-managed key has been used." }
            } @else {
                table #key-history {
                    caption { "Customer-managed keys, oldest first" }
                    thead { tr { th scope="col" { "Key" } th scope="col" { "From" } th scope="col" { "To" } } }
                    tbody {
                        @for k in &view.key_history {
                            tr {
                                th scope="row" { code { (k.key_identifier) } }
                                td { (time(&k.from)) }
                                td { @match &k.to { Some(t) => { (time(t)) } None => { "active" } } }
                            }
                        }
                    }
                }
            }
            h2 { "Tenants" }
            ul {
                @for t in &view.tenants {
                    li {
                        @if may_audit(session, t.tenant_id) {
                            a href={ "/console/tenants/" (t.tenant_id) "/audit" } { (t.name) " — audit" }
                        } @else {
                            (t.name)
                        }
                    }
                }
            }
            h2 { "Data keys" }
            @match data_keys {
                None => { p { "Data keys are outside the scope of your sign-in." } }
                Some(inv) => {
                    table #data-keys {
                        caption { "Data keys: ids and wrapping only" }
                        thead { tr {
                            th scope="col" { "Id" } th scope="col" { "Wrapped by" }
                            th scope="col" { "Created" } th scope="col" { "Rewrapped" } th scope="col" { "Lost" }
                        } }
                        tbody {
                            @for k in &inv.data_keys {
                                tr {
                                    th scope="row" { (k.dek_id) }
                                    td { @match &k.wrapped_by {
                                        WrappedBy::Customer { key_identifier } => { "customer key " code { (key_identifier) } }
                                        WrappedBy::Provider { internal_key_id } => { "provider key " code { (internal_key_id) } }
                                    } }
                                    td { (time(&k.created_at)) }
                                    td { @if let Some(r) = &k.rewrapped_at { (time(r)) } @else { "—" } }
                                    td { @if k.lost { "yes" } @else { "no" } }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Audit-log verification" }
            @match verification {
                None => { p { "The verifiable audit log is outside the scope of your sign-in." } }
                Some(v) => {
                    dl #verification {
                        dt { "Latest signed checkpoint" }
                        dd {
                            @match &v.checkpoint {
                                Some(c) => {
                                    "tree size " strong { (c.size) } ", signed " (time(&c.signed_at))
                                    br; "root " code.wrap { (c.root) }
                                }
                                None => { "none signed yet" }
                            }
                        }
                        dt { "Verifier key" } dd { code.wrap { (v.verifier_key) } }
                    }
                    p.muted { "Check it offline with " code { "keyledger audit verify" } " and the organization's bundle." }
                }
            }
        },
    )
}

pub(super) fn tenant_audit(
    session: &Session,
    tenant: TenantId,
    filters: &AuditFilters,
    entries: &[AuditEntry],
    next: Option<&str>,
) -> Markup {
    let base = format!("/console/tenants/{tenant}/audit");
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    layout(
        "Tenant audit",
        Some(session),
        html! {
            h1 { "Tenant audit" }
            p.muted { "Tenant " code { (tenant) } }
            h2 { "Filters" }
            form.filters method="get" action=(base) {
                div { label for="action" { "Action" }
                      input #action type="text" name="action" value=(value(&filters.action)) placeholder="e.g. CustomerManagedKeyRotated"; }
                div { label for="since" { "Since (UTC, inclusive)" }
                      input #since type="datetime-local" name="since" value=(value(&filters.since)); }
                div { label for="until" { "Until (UTC, exclusive)" }
                      input #until type="datetime-local" name="until" value=(value(&filters.until)); }
                div { label for="limit" { "Rows per page" }
                      input #limit type="number" min="1" max="1000" name="limit" value=(value(&filters.limit)); }
                div { button type="submit" { "Apply" } }
            }
            p { a #csv href={ (base) ".csv?" (filters.encoded(None)) } download { "Download CSV (all matching rows)" } }
            h2 { "Entries" }
            @if entries.is_empty() {
                p { "No entries match." }
            } @else {
                table #audit {
                    caption { "Audit entries, oldest first" }
                    thead { tr {
                        th scope="col" { "Position" } th scope="col" { "When" } th scope="col" { "Action" }
                        th scope="col" { "Actor" } th scope="col" { "Organization" } th scope="col" { "Details" }
                    } }
                    tbody {
                        @for e in entries {
                            tr {
                                th scope="row" { (e.position) }
                                td { (time(&e.occurred_at)) }
                                td.action { (e.action) }
                                td { (e.actor.id) }
                                td { a href={ "/console/organizations/" (e.org_id) } { code { (e.org_id) } } }
                                td { code.wrap { (e.details) } }
                            }
                        }
                    }
                }
            }
            nav aria-label="Pages" {
                a href={ (base) "?" (filters.encoded(None)) } { "First page" }
                @if let Some(n) = next {
                    " · " a #next rel="next" href={ (base) "?" (filters.encoded(Some(n))) } { "Next page" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_countdown_says_days_and_hours_left() {
        let now = chrono::Utc::now();
        let at = |h: i64| now + chrono::Duration::hours(h);
        assert_eq!(time_left(&at(7 * 24 + 5), now), "7 days 5 hours left");
        assert_eq!(time_left(&at(24 + 1), now), "1 day 1 hours left");
        assert_eq!(time_left(&at(3), now), "3 hours left");
        assert_eq!(time_left(&at(-1), now), "past");
    }
}
