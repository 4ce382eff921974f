//! Licensing plans (R2, R8).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The plan families. Customer-managed keys are open to `enterprise` only, every tier (R2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    Free,
    Pro,
    Enterprise,
}

impl fmt::Display for PlanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlanKind::Free => "free",
            PlanKind::Pro => "pro",
            PlanKind::Enterprise => "enterprise",
        })
    }
}

/// Why a plan could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Only the enterprise family has tiers.
    #[error("only enterprise plans have a tier")]
    TierOnNonEnterprise,
    /// A tier is 1 to 64 characters of letters, digits, `-` or `_`.
    #[error("tier must be 1 to 64 characters of letters, digits, '-' or '_'")]
    BadTier,
}

/// A plan: its family and, for enterprise, a free-form tier such as `standard`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    kind: PlanKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
}

impl Plan {
    pub fn new(kind: PlanKind, tier: Option<String>) -> Result<Self, PlanError> {
        if let Some(t) = &tier {
            if kind != PlanKind::Enterprise {
                return Err(PlanError::TierOnNonEnterprise);
            }
            let ok = !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(PlanError::BadTier);
            }
        }
        Ok(Self { kind, tier })
    }

    pub fn free() -> Self {
        Self {
            kind: PlanKind::Free,
            tier: None,
        }
    }

    pub fn pro() -> Self {
        Self {
            kind: PlanKind::Pro,
            tier: None,
        }
    }

    /// An enterprise plan of the given tier. Panics only on an invalid tier literal, so it is
    /// meant for constants and tests; use [`Plan::new`] for input.
    pub fn enterprise(tier: &str) -> Self {
        match Plan::new(PlanKind::Enterprise, Some(tier.to_owned())) {
            Ok(p) => p,
            Err(e) => panic!("invalid enterprise tier literal {tier:?}: {e}"),
        }
    }

    pub fn kind(&self) -> PlanKind {
        self.kind
    }

    pub fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    /// R2: the whole enterprise family may use customer-managed keys, the standard tier
    /// included.
    pub fn allows_customer_managed_key(&self) -> bool {
        self.kind == PlanKind::Enterprise
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tier {
            Some(t) => write!(f, "{}/{}", self.kind, t),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl<'de> Deserialize<'de> for Plan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            kind: PlanKind,
            #[serde(default)]
            tier: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        Plan::new(raw.kind, raw.tier).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enterprise_tier_allows_cmk_and_nothing_else_does() {
        assert!(Plan::enterprise("standard").allows_customer_managed_key());
        assert!(Plan::enterprise("advanced").allows_customer_managed_key());
        assert!(
            Plan::new(PlanKind::Enterprise, None)
                .unwrap()
                .allows_customer_managed_key()
        );
        assert!(!Plan::free().allows_customer_managed_key());
        assert!(!Plan::pro().allows_customer_managed_key());
    }

    #[test]
    fn tier_is_only_for_enterprise() {
        assert_eq!(
            Plan::new(PlanKind::Free, Some("standard".into())),
            Err(PlanError::TierOnNonEnterprise)
        );
    }

    #[test]
    fn bad_tiers_are_rejected() {
        for t in ["", "has space", &"x".repeat(65)] {
            assert_eq!(
                Plan::new(PlanKind::Enterprise, Some(t.to_owned())),
                Err(PlanError::BadTier),
                "{t:?}"
            );
        }
    }

    #[test]
    fn plan_json_rejects_unknown_kind_and_fields() {
        assert!(serde_json::from_str::<Plan>(r#"{"kind":"gold"}"#).is_err());
        assert!(serde_json::from_str::<Plan>(r#"{"kind":"free","x":1}"#).is_err());
        assert!(serde_json::from_str::<Plan>(r#"{"kind":"free","tier":"a"}"#).is_err());
        let p: Plan = serde_json::from_str(r#"{"kind":"enterprise","tier":"standard"}"#).unwrap();
        assert_eq!(p, Plan::enterprise("standard"));
    }
}
