//! Bearer-token authentication: each configured static token names a subject, roles and a
//! scope; Entra ID access tokens of the `[[auth.entra]]` issuers carry theirs in claims
//! ([`crate::entra`]).

use std::collections::BTreeSet;

use keyledger_domain::{Actor, ActorKind, OrgId, Reach, Role, Scope, TenantId};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::entra::{EntraIssuer, EntraIssuers};
use crate::problem::Problem;

/// A request without a valid bearer token (401 `unauthenticated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthenticated;

impl From<Unauthenticated> for Problem {
    fn from(_: Unauthenticated) -> Self {
        Problem::unauthenticated()
    }
}

/// One configured token and what it grants.
#[derive(Clone)]
pub struct TokenGrant {
    pub token: String,
    pub subject: String,
    pub roles: Vec<Role>,
    /// `None` means every organization (`"*"`).
    pub organizations: Option<BTreeSet<OrgId>>,
    /// `None` means every tenant (`"*"`).
    pub tenants: Option<BTreeSet<TenantId>>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("token", &"<hidden>")
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The tokens the server accepts. Static tokens are kept as SHA-256 digests and compared in
/// constant time, so a lookup leaks neither a token nor how much of one matched. A token that
/// is none of them is tried as an Entra ID access token when issuers are configured.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Actor)>,
    entra: EntraIssuers,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn reach<T: Ord + Clone>(ids: &Option<BTreeSet<T>>) -> Reach<T> {
    match ids {
        None => Reach::All,
        Some(set) => Reach::Only(set.clone()),
    }
}

impl Tokens {
    pub fn new(grants: &[TokenGrant]) -> Self {
        let entries = grants
            .iter()
            .map(|g| {
                // People administer and audit; services provision, bill and consume streams.
                let kind = if g
                    .roles
                    .iter()
                    .any(|r| matches!(r, Role::OrgAdmin | Role::Auditor | Role::Support))
                {
                    ActorKind::User
                } else {
                    ActorKind::Service
                };
                let actor = Actor::new(
                    kind,
                    g.subject.clone(),
                    g.roles.iter().copied(),
                    Scope {
                        organizations: reach(&g.organizations),
                        tenants: reach(&g.tenants),
                    },
                );
                (digest(&g.token), actor)
            })
            .collect();
        Self {
            entries,
            entra: EntraIssuers::default(),
        }
    }

    /// Also accepts the Entra ID access tokens of `issuers`.
    pub fn with_entra(mut self, issuers: Vec<EntraIssuer>) -> Self {
        self.entra = EntraIssuers::new(issuers);
        self
    }

    /// The actor of an `Authorization` header value, or 401 `unauthenticated`. The scheme
    /// name is case-insensitive (RFC 9110 §11.1). A refused Entra ID token is logged at debug
    /// level with the reason, never with the token.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Actor, Unauthenticated> {
        let token = bearer(authorization)?;
        if let Some(actor) = self.static_actor(token) {
            return Ok(actor);
        }
        if self.entra.is_empty() {
            return Err(Unauthenticated);
        }
        self.entra.authenticate(token).await.map_err(|refusal| {
            tracing::debug!(?refusal, "bearer token refused");
            Unauthenticated
        })
    }

    fn static_actor(&self, token: &str) -> Option<Actor> {
        let d = digest(token);
        let mut found = None;
        for (candidate, actor) in &self.entries {
            // Constant time over every entry: no early exit on a match.
            if bool::from(candidate.as_slice().ct_eq(d.as_slice())) {
                found = Some(actor);
            }
        }
        found.cloned()
    }
}

/// The token of a `Bearer` authorization.
fn bearer(authorization: Option<&str>) -> Result<&str, Unauthenticated> {
    authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or(Unauthenticated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "01900000-0000-7000-8000-0000000000aa";

    fn tokens() -> Tokens {
        Tokens::new(&[
            TokenGrant {
                token: "admin-token-0123456789".into(),
                subject: "alice@example.com".into(),
                roles: vec![Role::OrgAdmin],
                organizations: Some([ORG.parse().unwrap()].into()),
                tenants: None,
            },
            TokenGrant {
                token: "billing-token-0123456789".into(),
                subject: "billing".into(),
                roles: vec![Role::Billing],
                organizations: None,
                tenants: None,
            },
        ])
    }

    #[tokio::test]
    async fn a_known_token_is_its_actor() {
        let a = tokens()
            .authenticate(Some("Bearer admin-token-0123456789"))
            .await
            .unwrap();
        assert_eq!(a.id, "alice@example.com");
        assert_eq!(a.kind, ActorKind::User);
        assert!(a.reaches_org(ORG.parse().unwrap()));
        assert!(!a.reaches_org("01900000-0000-7000-8000-0000000000bb".parse().unwrap()));
        let b = tokens()
            .authenticate(Some("Bearer billing-token-0123456789"))
            .await
            .unwrap();
        assert_eq!(b.kind, ActorKind::Service);
        assert!(b.has_role(Role::Billing));
    }

    #[tokio::test]
    async fn the_bearer_scheme_is_case_insensitive() {
        for h in ["bearer", "BEARER", "bEaReR"] {
            let a = tokens()
                .authenticate(Some(&format!("{h} billing-token-0123456789")))
                .await
                .unwrap();
            assert_eq!(a.id, "billing", "{h}");
        }
    }

    #[tokio::test]
    async fn missing_malformed_or_unknown_tokens_are_401() {
        for h in [
            None,
            Some(""),
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer nope"),
            Some("Bearerbilling-token-0123456789"),
            Some("Bear billing-token-0123456789"),
        ] {
            let p = Problem::from(tokens().authenticate(h).await.unwrap_err());
            assert_eq!((p.status, p.code), (401, "unauthenticated"), "{h:?}");
        }
    }

    #[test]
    fn debug_never_shows_a_token() {
        let g = TokenGrant {
            token: "very-secret-token-value".into(),
            subject: "x".into(),
            roles: vec![Role::Auditor],
            organizations: None,
            tenants: None,
        };
        assert!(
            !format!("{g:?} {:?}", Tokens::new(std::slice::from_ref(&g))).contains("very-secret-token-value")
        );
    }
}
