//! Protected fields: values that the store seals with the internal key before they reach disk
//! (R13; DESIGN.md §1 "EDEK").
//!
//! A [`Protected`] value is in one of three forms:
//! - `Open`: in memory, usable (a client secret, an EDEK). It refuses to serialize, so an
//!   unsealed secret cannot reach JSON by accident.
//! - `Sealed`: AES-256-GCM ciphertext with the internal key id. This is the stored form.
//! - `Redacted`: the value is withheld (public views, replay fixtures, exports for humans).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A value sealed under one key of the internal key ring.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedBox {
    /// Id of the internal key that sealed it.
    pub kid: String,
    /// The 96-bit nonce, base64url.
    #[serde(with = "b64")]
    #[schemars(with = "String")]
    pub nonce: Vec<u8>,
    /// Ciphertext and tag, base64url.
    #[serde(with = "b64")]
    #[schemars(with = "String")]
    pub ct: Vec<u8>,
    /// The additional authenticated data it was sealed with. Absent: `v1`.
    #[serde(default, skip_serializing_if = "AadScheme::is_v1")]
    pub aad: AadScheme,
}

impl fmt::Debug for SealedBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedBox(kid={}, aad={:?}, {} bytes)",
            self.kid,
            self.aad,
            self.ct.len()
        )
    }
}

/// Which additional authenticated data (AAD) a [`SealedBox`] was sealed with (ADR 0017). It is
/// recorded in the sealed value, so opening uses exactly the scheme the value was sealed with
/// and never tries another. Each scheme's AAD starts with its own tag, so rewriting the marker
/// makes the value fail to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum AadScheme {
    /// `keyledger-seal/v1`: binds the stream, version and the field's position in the payload
    /// (`data_keys[0].edek`). Everything sealed before ADR 0017; such values carry no marker.
    #[default]
    #[serde(rename = "v1")]
    V1,
    /// `keyledger-seal/v2`: binds the stream, version and the field's identity
    /// (`data_keys[dek_id=7].edek`), so an EDEK cannot be moved to another DEK id. Every new
    /// seal.
    #[serde(rename = "v2")]
    V2,
}

impl AadScheme {
    pub fn is_v1(&self) -> bool {
        *self == AadScheme::V1
    }
}

mod b64 {
    use super::*;
    pub(crate) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// A key-wrapped DEK (EDEK) as returned by the KEK's wrap operation. Not a DEK in clear, but
/// still sealed at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct Edek(pub Vec<u8>);

impl fmt::Debug for Edek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Edek({} bytes)", self.0.len())
    }
}

/// What can sit inside a [`Protected`] field.
pub trait ProtectedValue: Sized {
    fn to_bytes(&self) -> Zeroizing<Vec<u8>>;
    fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Option<Self>;
}

impl ProtectedValue for SecretString {
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.expose_secret().as_bytes().to_vec())
    }
    fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Option<Self> {
        let s = std::str::from_utf8(&bytes).ok()?;
        Some(SecretString::from(s.to_owned()))
    }
}

impl ProtectedValue for Edek {
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.clone())
    }
    fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Option<Self> {
        Some(Edek(bytes.to_vec()))
    }
}

/// A field that is sealed at rest. See the module docs.
#[derive(Clone)]
pub enum Protected<T> {
    Open(T),
    Sealed(SealedBox),
    Redacted,
}

impl<T> fmt::Debug for Protected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protected::Open(_) => f.write_str("Protected::Open(<hidden>)"),
            Protected::Sealed(b) => write!(f, "Protected::{b:?}"),
            Protected::Redacted => f.write_str("Protected::Redacted"),
        }
    }
}

impl<T> Protected<T> {
    pub fn open(&self) -> Option<&T> {
        match self {
            Protected::Open(v) => Some(v),
            _ => None,
        }
    }
    pub fn sealed(&self) -> Option<&SealedBox> {
        match self {
            Protected::Sealed(b) => Some(b),
            _ => None,
        }
    }
}

impl<T: ProtectedValue> PartialEq for Protected<T> {
    /// Open values compare by content (in memory only; used by state equality checks).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Protected::Open(a), Protected::Open(b)) => *a.to_bytes() == *b.to_bytes(),
            (Protected::Sealed(a), Protected::Sealed(b)) => a == b,
            (Protected::Redacted, Protected::Redacted) => true,
            _ => false,
        }
    }
}

/// A protected field seen through a type-erased slot, so the store can seal and open every
/// protected field of an event without knowing its type.
pub trait ProtectedSlot {
    /// The clear bytes, when the field is open.
    fn clear_bytes(&self) -> Option<Zeroizing<Vec<u8>>>;
    fn sealed_box(&self) -> Option<&SealedBox>;
    fn set_sealed(&mut self, sealed: SealedBox);
    /// Puts clear bytes back. `false` when they are not a valid value of the field's type.
    fn set_clear(&mut self, bytes: Zeroizing<Vec<u8>>) -> bool;
    fn redact(&mut self);
}

impl<T: ProtectedValue> ProtectedSlot for Protected<T> {
    fn clear_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.open().map(ProtectedValue::to_bytes)
    }
    fn sealed_box(&self) -> Option<&SealedBox> {
        self.sealed()
    }
    fn set_sealed(&mut self, sealed: SealedBox) {
        *self = Protected::Sealed(sealed);
    }
    fn set_clear(&mut self, bytes: Zeroizing<Vec<u8>>) -> bool {
        match T::from_bytes(bytes) {
            Some(v) => {
                *self = Protected::Open(v);
                true
            }
            None => false,
        }
    }
    fn redact(&mut self) {
        *self = Protected::Redacted;
    }
}

/// The literal that stands for a redacted field in JSON.
pub const REDACTED: &str = "redacted";

impl<T> Serialize for Protected<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wrapper<'a> {
            sealed: &'a SealedBox,
        }
        match self {
            Protected::Open(_) => Err(serde::ser::Error::custom(
                "refusing to serialize an unsealed protected field",
            )),
            Protected::Sealed(b) => Wrapper { sealed: b }.serialize(s),
            Protected::Redacted => s.serialize_str(REDACTED),
        }
    }
}

impl<'de, T> Deserialize<'de> for Protected<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wrapper {
            sealed: SealedBox,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Sealed(Wrapper),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Sealed(w) => Ok(Protected::Sealed(w.sealed)),
            Form::Text(t) if t == REDACTED => Ok(Protected::Redacted),
            Form::Text(_) => Err(serde::de::Error::custom(
                "a protected field must be {\"sealed\":{…}} or \"redacted\"",
            )),
        }
    }
}

impl<T> JsonSchema for Protected<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Protected".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let sealed = generator.subschema_for::<SealedBox>();
        schemars::json_schema!({
            "description": "A field sealed with the internal key (AES-256-GCM). \"redacted\" appears only in public renderings and test fixtures.",
            "oneOf": [
                { "type": "object", "properties": { "sealed": sealed }, "required": ["sealed"], "additionalProperties": false },
                { "const": REDACTED }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_values_refuse_to_serialize() {
        let p: Protected<SecretString> = Protected::Open(SecretString::from("hunter2"));
        let err = serde_json::to_string(&p).unwrap_err();
        assert!(err.to_string().contains("unsealed"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn debug_never_shows_open_value() {
        let p: Protected<SecretString> = Protected::Open(SecretString::from("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn sealed_and_redacted_round_trip() {
        let p: Protected<Edek> = Protected::Sealed(SealedBox {
            aad: AadScheme::V2,
            kid: "ik-1".into(),
            nonce: vec![1; 12],
            ct: vec![2; 48],
        });
        let j = serde_json::to_string(&p).unwrap();
        let back: Protected<Edek> = serde_json::from_str(&j).unwrap();
        assert_eq!(back.sealed(), p.sealed());
        let r: Protected<Edek> = serde_json::from_str("\"redacted\"").unwrap();
        assert!(matches!(r, Protected::Redacted));
        assert!(serde_json::from_str::<Protected<Edek>>("\"clear text\"").is_err());
    }
}
