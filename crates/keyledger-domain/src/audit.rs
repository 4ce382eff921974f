//! The engine's record of a signed audit checkpoint (CONTRACT.md "Verifiable audit log"):
//! every stream consumer that keeps these events holds the signed checkpoints and so can act
//! as a witness of the logs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::AuditLog;

/// A Merkle tree head: 32 bytes of SHA-256, written as standard base64 with padding (the
/// form of a checkpoint's third line).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootHash(pub [u8; 32]);

/// Why a text is not a [`RootHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("root hash must be 32 bytes in standard base64")]
pub struct BadRootHash;

impl RootHash {
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses standard base64 of exactly 32 bytes; the canonical encoding only (no stray
    /// bits), so one root hash has one text form.
    pub fn from_base64(text: &str) -> Result<Self, BadRootHash> {
        let bytes = STANDARD.decode(text).map_err(|_| BadRootHash)?;
        let hash: [u8; 32] = bytes.try_into().map_err(|_| BadRootHash)?;
        Ok(Self(hash))
    }
}

impl std::fmt::Debug for RootHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootHash({})", self.to_base64())
    }
}

impl Serialize for RootHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for RootHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RootHash::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for RootHash {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RootHash".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "SHA-256 tree head, standard base64 with padding.",
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]{43}=$"
        })
    }
}

/// The service signed a checkpoint of one log. Appended by the engine (the `system` actor) to
/// stream `audit`; it holds no protected field, and no organization fold reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpointSigned {
    /// The log: `"global"` or an organization id.
    pub log: AuditLog,
    /// The checkpoint's origin line, e.g. `keyledger.example.com/org/<org_id>`.
    pub origin: String,
    /// How many leaves the log had.
    pub tree_size: u64,
    /// The log's root at `tree_size`.
    pub root_hash: RootHash,
    /// The whole signed note (body, blank line, signature lines), as served.
    pub note: String,
    pub signed_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_hash_is_32_bytes_of_canonical_base64() {
        let hash = RootHash([7; 32]);
        let text = hash.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(RootHash::from_base64(&text), Ok(hash));
        assert_eq!(RootHash::from_base64(&STANDARD.encode([7; 31])), Err(BadRootHash));
        assert_eq!(RootHash::from_base64("not base64!"), Err(BadRootHash));
        // The same bytes with a stray low bit in the last character are refused.
        let mut stray = text.clone().into_bytes();
        stray[42] += 1;
        assert_eq!(
            RootHash::from_base64(std::str::from_utf8(&stray).unwrap()),
            Err(BadRootHash)
        );
    }
}
