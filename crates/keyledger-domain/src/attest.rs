//! Values that only the key-access port (or the internal key ring) can make.
//!
//! The domain cannot call a vault, so the results of live key tests enter commands as these
//! values. Their constructors exist only with the `attest` feature, which `keyledger-keys`
//! enables and nothing else should; tests get them through `testing`. So the domain cannot
//! record an untested key (R4), a rotation without proof that the old key still unwraps (R7), or
//! a DEK that no key wrapped.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::ids::DekId;
use crate::key_identifier::KeyIdentifier;
use crate::secret::Edek;

/// What a live test learned about the customer key. Recorded with the enable and rotate events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyProperties {
    /// `RSA` or `RSA-HSM`.
    pub kty: String,
    /// Modulus size in bits.
    pub key_size: u32,
    pub key_ops: Vec<String>,
    /// `exp`, when the key has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// `nbf`, when the key has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

/// A connection that passed every R4 check at `validated_at`. Its key identifier is pinned to
/// the version found at validation.
///
/// Outside the key-access port it cannot be made, so no command can carry an untested key:
///
/// ```compile_fail
/// # use keyledger_domain::*;
/// fn forge(connection: Connection, properties: KeyProperties) -> ValidatedKey {
///     ValidatedKey { connection, properties, validated_at: chrono::Utc::now() }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ValidatedKey {
    connection: Connection,
    properties: KeyProperties,
    validated_at: DateTime<Utc>,
}

impl ValidatedKey {
    /// For the key-access port only. `connection.key_identifier` must carry a version.
    #[cfg(feature = "attest")]
    pub fn attest(
        connection: Connection,
        properties: KeyProperties,
        validated_at: DateTime<Utc>,
    ) -> Result<Self, crate::key_identifier::KeyIdentifierError> {
        if connection.key_identifier.version().is_none() {
            return Err(crate::key_identifier::KeyIdentifierError::BadVersion);
        }
        Ok(Self {
            connection,
            properties,
            validated_at,
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }
    pub fn key(&self) -> &KeyIdentifier {
        &self.connection.key_identifier
    }
    pub fn properties(&self) -> &KeyProperties {
        &self.properties
    }
    pub fn validated_at(&self) -> DateTime<Utc> {
        self.validated_at
    }
}

/// Proof that every listed DEK unwrapped with `key` (R7 "old key valid", R9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwrapProof {
    key: KeyIdentifier,
    dek_ids: BTreeSet<DekId>,
}

impl UnwrapProof {
    #[cfg(feature = "attest")]
    pub fn attest(key: KeyIdentifier, dek_ids: BTreeSet<DekId>) -> Self {
        Self { key, dek_ids }
    }
    pub fn key(&self) -> &KeyIdentifier {
        &self.key
    }
    pub fn dek_ids(&self) -> &BTreeSet<DekId> {
        &self.dek_ids
    }
}

/// Which key wraps a DEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WrappedBy {
    /// The provider's internal key ring, by key id.
    Provider { internal_key_id: String },
    /// The customer's key, by pinned identifier.
    Customer { key_identifier: KeyIdentifier },
}

impl WrappedBy {
    pub fn customer_key(&self) -> Option<&KeyIdentifier> {
        match self {
            WrappedBy::Customer { key_identifier } => Some(key_identifier),
            WrappedBy::Provider { .. } => None,
        }
    }
    pub fn is_customer(&self, key: &KeyIdentifier) -> bool {
        self.customer_key().is_some_and(|k| k.same_key_version(key))
    }
}

/// A DEK wrapped by a KEK: the output of a wrap operation.
#[derive(Debug, Clone)]
pub struct WrappedDek {
    wrapped_by: WrappedBy,
    edek: Edek,
}

impl WrappedDek {
    #[cfg(feature = "attest")]
    pub fn attest(wrapped_by: WrappedBy, edek: Edek) -> Self {
        Self { wrapped_by, edek }
    }
    pub fn wrapped_by(&self) -> &WrappedBy {
        &self.wrapped_by
    }
    pub fn edek(&self) -> &Edek {
        &self.edek
    }
    pub fn into_parts(self) -> (WrappedBy, Edek) {
        (self.wrapped_by, self.edek)
    }
}
