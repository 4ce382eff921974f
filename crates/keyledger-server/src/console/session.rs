//! Console sessions: a random 256-bit id in an `HttpOnly; SameSite=Strict` cookie, the actor
//! it signed in as kept server-side (never the token), a per-session CSRF token, and the
//! same-origin check every console POST passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use keyledger_domain::Actor;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::Shared;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "keyledger_console";
/// The form field that carries the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
const ABSOLUTE: Duration = Duration::from_secs(8 * 60 * 60);
/// Sessions kept at most; past it the one closest to its end is dropped.
const MAX_SESSIONS: usize = 10_000;

/// The actor of a token typed into the sign-in form, or `None`: a static token or an Entra ID
/// access token, checked as on `/v1`. The console's only use of authentication.
pub(crate) async fn actor_for(state: &Shared, token: &str) -> Option<Actor> {
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    state
        .services
        .tokens
        .authenticate(Some(&format!("Bearer {token}")))
        .await
        .ok()
}

/// What a signed-in request knows.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub actor: Actor,
    /// Goes into every form as [`CSRF_FIELD`].
    pub csrf: String,
    /// The digest of the id, the key of the session table.
    key: [u8; 32],
}

struct Entry {
    actor: Actor,
    csrf: String,
    idle_until: Instant,
    ends_at: Instant,
}

/// The sessions of this process (in memory: a restart signs everyone out).
#[derive(Default)]
pub(crate) struct Sessions {
    /// Keyed by the SHA-256 of the cookie's id, so the table holds no usable id.
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for `actor`; returns the cookie's id.
    pub(crate) fn start(&self, actor: Actor) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.retain(|_, e| e.idle_until > now && e.ends_at > now);
        if table.len() >= MAX_SESSIONS {
            let closest = table
                .iter()
                .min_by_key(|(_, e)| e.idle_until.min(e.ends_at))
                .map(|(k, _)| *k);
            if let Some(k) = closest {
                table.remove(&k);
            }
        }
        table.insert(
            digest(&id),
            Entry {
                actor,
                csrf: random_hex(),
                idle_until: now + IDLE,
                ends_at: now + ABSOLUTE,
            },
        );
        id
    }

    /// The live session of a request's cookie, its idle time renewed.
    pub(crate) fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers)?;
        let key = digest(&id);
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let entry = table.get_mut(&key)?;
        if entry.idle_until <= now || entry.ends_at <= now {
            table.remove(&key);
            return None;
        }
        entry.idle_until = now + IDLE;
        Some(Session {
            actor: entry.actor.clone(),
            csrf: entry.csrf.clone(),
            key,
        })
    }

    /// Ends `session`.
    pub(crate) fn end(&self, session: &Session) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&session.key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Session {
    /// Whether `submitted` is this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, submitted: Option<&str>) -> bool {
        submitted.is_some_and(|s| bool::from(s.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

/// The session id in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that carries `id` (`Secure` when the server serves TLS).
pub(crate) fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/console{secure}");
    // Hex and fixed text only: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `Set-Cookie` value that removes the cookie.
pub(crate) fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0{secure}");
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a POST comes from the console's own pages: `Sec-Fetch-Site`, when the browser
/// sends it, must be `same-origin`; `Origin`, when sent, must be this server's own
/// (`scheme://host` of the request's `Host`). A client that sends neither (curl) is no
/// browser a cross-site page could drive, and passes.
pub(crate) fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() != b"same-origin")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    origin
        .to_str()
        .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::{ActorKind, Role, Scope};

    fn actor() -> Actor {
        Actor::new(ActorKind::User, "auditor", [Role::Auditor], Scope::everything())
    }

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_started_session_is_found_by_its_cookie_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.start(actor());
        assert_eq!(id.len(), 64);
        let s = sessions.find(&with_cookie(&id)).unwrap();
        assert_eq!(s.actor.id, "auditor");
        assert!(s.csrf_matches(Some(&s.csrf.clone())));
        assert!(!s.csrf_matches(Some("nope")));
        assert!(!s.csrf_matches(None));
        sessions.end(&s);
        assert!(sessions.find(&with_cookie(&id)).is_none());
        assert!(sessions.find(&with_cookie(&"0".repeat(64))).is_none());
    }

    #[test]
    fn the_session_count_is_bounded() {
        let sessions = Sessions::default();
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.start(actor());
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let plain = set_cookie("ab", false);
        assert_eq!(
            plain,
            "keyledger_console=ab; HttpOnly; SameSite=Strict; Path=/console"
        );
        assert!(set_cookie("ab", true).to_str().unwrap().ends_with("; Secure"));
        assert!(clear_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn only_same_origin_posts_pass() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&h(&[]), false));
        assert!(same_origin(&h(&[("origin", "http://127.0.0.1:8080")]), false));
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")]), false));
        assert!(!same_origin(&h(&[("origin", "http://127.0.0.1:8080")]), true));
        assert!(!same_origin(&h(&[("origin", "http://127.0.0.1:9999")]), false));
        assert!(!same_origin(&h(&[("origin", "null")]), false));
        assert!(!same_origin(&h(&[("sec-fetch-site", "same-site")]), false));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")]), false));
    }
}
