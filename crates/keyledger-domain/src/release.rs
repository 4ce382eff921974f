//! Releasing a DEK to a platform service (CONTRACT.md "Data keys for platform services"):
//! who may, which DEKs, and what must be unwrapped. Pure, like [`plan`](crate::plan): the
//! application carries out the [`Release`] and records it (ADR 0030).

use crate::actor::{Actor, Role};
use crate::attest::WrappedBy;
use crate::connection::Connection;
use crate::decide::DomainError;
use crate::ids::{DekId, OrgId};
use crate::secret::{Edek, Protected};
use crate::state::State;

/// Which DEK a platform service asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOf {
    /// The active DEK: the one new data is encrypted with.
    Active,
    /// A DEK by id, active or older: for reading data encrypted earlier.
    Dek(DekId),
}

/// How a released DEK is to be unwrapped.
#[derive(Debug, Clone)]
pub enum Unwrap {
    /// With the internal key ring, by key id.
    Provider { internal_key_id: String },
    /// In the customer's vault, with the connection in use: the customer can refuse.
    Customer { connection: Connection },
}

/// A release the rules allow: unwrap `edek` as `unwrap` says, then hand out DEK `dek_id`.
#[derive(Debug, Clone)]
pub struct Release {
    pub dek_id: DekId,
    pub wrapped_by: WrappedBy,
    pub edek: Edek,
    pub unwrap: Unwrap,
}

/// The rules of a release, before any vault call:
///
/// - platform services only, on organizations in their scope ([`DomainError::Forbidden`],
///   first, before anything about the organization);
/// - the DEK exists ([`DomainError::DataKeyNotFound`]) and was not declared lost
///   ([`DomainError::DataLost`]);
/// - a DEK under the customer's key is not released while the key's recorded health is of
///   the revoked class ([`DomainError::KeyUnavailable`], [`HealthStatus::is_revoked`]): the
///   customer's refusal holds even before the vault is asked again.
pub fn plan_release(
    state: &State,
    actor: &Actor,
    org_id: OrgId,
    of: ReleaseOf,
) -> Result<Release, DomainError> {
    if !(actor.has_role(Role::Platform) && actor.reaches_org(org_id)) {
        return Err(DomainError::Forbidden);
    }
    let org = state.org().ok_or(DomainError::OrganizationNotFound)?;
    let dek_id = match of {
        ReleaseOf::Active => org.active_dek,
        ReleaseOf::Dek(id) => id,
    };
    let dek = org
        .data_keys
        .get(&dek_id)
        .ok_or(DomainError::DataKeyNotFound { dek_id })?;
    if dek.lost {
        return Err(DomainError::DataLost);
    }
    let Protected::Open(edek) = &dek.edek else {
        return Err(DomainError::NotOpen("the EDEK to release"));
    };
    let unwrap = match &dek.wrapped_by {
        WrappedBy::Provider { internal_key_id } => Unwrap::Provider {
            internal_key_id: internal_key_id.clone(),
        },
        WrappedBy::Customer { key_identifier } => {
            // Every DEK that is not lost is under the key in use (R7, R9 re-wrap them all).
            let key = org
                .customer_key()
                .filter(|k| k.key().same_key_version(key_identifier))
                .ok_or(DomainError::EvidenceMismatch(
                    "a DEK is wrapped by a customer key that is not the key in use",
                ))?;
            if key.data_lost {
                return Err(DomainError::DataLost);
            }
            if key.health.status.is_revoked() {
                return Err(DomainError::KeyUnavailable {
                    reason: key.health.status,
                });
            }
            let connection = key
                .connection
                .to_connection()
                .ok_or(DomainError::NotOpen("the client secret of the connection in use"))?;
            Unwrap::Customer { connection }
        }
    };
    Ok(Release {
        dek_id,
        wrapped_by: dek.wrapped_by.clone(),
        edek: edek.clone(),
        unwrap,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::actor::{ActorKind, Reach, Scope};
    use crate::health::HealthStatus;
    use crate::plan::Plan;
    use crate::testing::*;

    fn platform_of(org: OrgId) -> Actor {
        let scope = Scope {
            organizations: Reach::Only(BTreeSet::from([org])),
            tenants: Reach::All,
        };
        Actor::new(ActorKind::Service, "reports", [Role::Platform], scope)
    }

    #[test]
    fn only_platform_services_in_scope_get_a_release() {
        let history = History::new().register(Plan::pro());
        let state = history.state();
        let release = plan_release(state, &platform(), org_id(), ReleaseOf::Active).unwrap();
        assert_eq!(release.dek_id, DekId::FIRST);
        assert!(matches!(release.unwrap, Unwrap::Provider { .. }));
        assert_eq!(
            plan_release(
                state,
                &platform_of(org_id()),
                org_id(),
                ReleaseOf::Dek(DekId::FIRST)
            )
            .unwrap()
            .dek_id,
            DekId::FIRST
        );
        for actor in [
            admin(),
            auditor(),
            support(),
            billing(),
            platform_of(other_org_id()),
        ] {
            let refused = plan_release(state, &actor, org_id(), ReleaseOf::Active).unwrap_err();
            assert_eq!(refused, DomainError::Forbidden, "{actor:?}");
        }
        // Forbidden comes before anything about the organization.
        let nothing = State::default();
        assert_eq!(
            plan_release(&nothing, &admin(), org_id(), ReleaseOf::Active).unwrap_err(),
            DomainError::Forbidden
        );
        assert_eq!(
            plan_release(&nothing, &platform(), org_id(), ReleaseOf::Active).unwrap_err(),
            DomainError::OrganizationNotFound
        );
    }

    #[test]
    fn an_unknown_dek_is_not_found() {
        let history = History::new().register(Plan::pro());
        let refused =
            plan_release(history.state(), &platform(), org_id(), ReleaseOf::Dek(DekId(9))).unwrap_err();
        assert_eq!(refused, DomainError::DataKeyNotFound { dek_id: DekId(9) });
        assert_eq!(refused.code(), "data_key_not_found");
    }

    #[test]
    fn customer_deks_go_to_the_vault_with_the_connection_in_use() {
        let history = cmk_org().rotate(&key_b());
        let state = history.state();
        let org = state.org().unwrap();
        let customer: Vec<DekId> = org.deks_under(&key_b());
        assert!(
            customer.contains(&org.active_dek),
            "the active DEK is the customer's"
        );
        for dek in &customer {
            let release = plan_release(state, &platform(), org_id(), ReleaseOf::Dek(*dek)).unwrap();
            let Unwrap::Customer { connection } = &release.unwrap else {
                panic!("a customer-managed DEK unwraps in the vault");
            };
            // A rotation re-wraps the DEKs under the old key: they go to the key in use.
            assert_eq!(connection.key_identifier, key_b());
            assert_eq!(release.wrapped_by.customer_key(), Some(&key_b()));
        }
        // The DEK from before the enable stays under the internal key.
        let first = plan_release(state, &platform(), org_id(), ReleaseOf::Dek(DekId::FIRST)).unwrap();
        assert!(matches!(first.unwrap, Unwrap::Provider { .. }));
    }

    #[test]
    fn a_revoked_key_refuses_before_the_vault_is_asked() {
        let revoked = [
            HealthStatus::KeyDisabled,
            HealthStatus::KeyDeleted,
            HealthStatus::KeyNotFound,
            HealthStatus::PermissionDenied,
            HealthStatus::CredentialsInvalid,
            HealthStatus::CredentialsExpired,
        ];
        for status in revoked {
            let history = cmk_org().health(status);
            let refused =
                plan_release(history.state(), &platform(), org_id(), ReleaseOf::Active).unwrap_err();
            assert_eq!(refused, DomainError::KeyUnavailable { reason: status });
            assert_eq!(refused.code(), "key_unavailable");
        }
        for status in [
            HealthStatus::KeyExpired,
            HealthStatus::KeyNearExpiry,
            HealthStatus::VaultUnreachable,
        ] {
            let history = cmk_org().health(status);
            plan_release(history.state(), &platform(), org_id(), ReleaseOf::Active).unwrap();
        }
        // Recovered: released again.
        let history = cmk_org()
            .health(HealthStatus::KeyDisabled)
            .health(HealthStatus::Healthy);
        plan_release(history.state(), &platform(), org_id(), ReleaseOf::Active).unwrap();
    }

    #[test]
    fn lost_deks_are_never_released_but_provider_deks_are() {
        let lost = cmk_org().health(HealthStatus::KeyNotFound).declare_lost();
        let lost_deks = lost
            .state()
            .org()
            .unwrap()
            .data_loss
            .clone()
            .unwrap()
            .lost_dek_ids;
        assert!(!lost_deks.is_empty());
        let active = lost.state().org().unwrap().active_dek;
        for of in std::iter::once(ReleaseOf::Active).chain(lost_deks.iter().map(|d| ReleaseOf::Dek(*d))) {
            let refused = plan_release(lost.state(), &platform(), org_id(), of).unwrap_err();
            assert_eq!(refused, DomainError::DataLost, "{of:?}");
        }
        let abandoned = lost.run(admin(), |_| abandon_switch_kind());
        let state = abandoned.state();
        let release = plan_release(state, &platform(), org_id(), ReleaseOf::Active).unwrap();
        assert!(matches!(release.unwrap, Unwrap::Provider { .. }));
        assert_ne!(release.dek_id, active);
        let refused = plan_release(state, &platform(), org_id(), ReleaseOf::Dek(active)).unwrap_err();
        assert_eq!(refused, DomainError::DataLost);
    }
}
