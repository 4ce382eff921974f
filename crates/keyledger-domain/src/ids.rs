//! Identifier, version and position newtypes. Parse, don't validate: every constructor from
//! outside input returns a typed [`IdError`].

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why an identifier could not be parsed. Callers report it as a 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text is not a UUID (`8-4-4-4-12` hex digits).
    #[error("{what} is not a valid UUID")]
    NotUuid { what: &'static str },
    /// The nil UUID is never a valid identifier.
    #[error("{what} must not be the nil UUID")]
    NilUuid { what: &'static str },
    /// A stream id must read `org-<uuid>`, `releases-<uuid>` or `audit`.
    #[error("stream id must look like org-<uuid> or releases-<uuid>, or be audit")]
    BadStreamId,
    /// An audit log is `global` or an organization id.
    #[error("audit log must be global or an organization id")]
    BadAuditLog,
    /// Idempotency and command ids are 1 to 200 visible ASCII characters.
    #[error("command id must be 1 to 200 visible ASCII characters")]
    BadCommandId,
}

fn parse_uuid(s: &str, what: &'static str) -> Result<Uuid, IdError> {
    // Only the hyphenated form is accepted: other forms (braced, urn, simple) are ambiguous
    // in URLs and logs.
    if s.len() != 36 {
        return Err(IdError::NotUuid { what });
    }
    let id = Uuid::try_parse(s).map_err(|_| IdError::NotUuid { what })?;
    if id.is_nil() {
        return Err(IdError::NilUuid { what });
    }
    Ok(id)
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
        #[schemars(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) identifier.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }
            /// Wraps an existing UUID. The nil UUID is refused.
            pub fn from_uuid(id: Uuid) -> Result<Self, IdError> {
                if id.is_nil() {
                    return Err(IdError::NilUuid { what: $what });
                }
                Ok(Self(id))
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_uuid(s, $what).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// An organization: the unit that owns one encryption configuration and one event stream.
    OrgId,
    "organization id"
);
uuid_id!(
    /// A tenant of an organization. Audit rows are per tenant.
    TenantId,
    "tenant id"
);
uuid_id!(
    /// The identity of one stored event (UUIDv7).
    EventId,
    "event id"
);
uuid_id!(
    /// Ties together the events caused by one request.
    CorrelationId,
    "correlation id"
);
uuid_id!(
    /// The Azure directory (Entra ID tenant) that holds the customer's app registration.
    DirectoryId,
    "directory id"
);
uuid_id!(
    /// The Azure application (client) id of the customer's app registration.
    ApplicationId,
    "application id"
);

/// The kinds of stream the store holds: a small closed set (ADR 0025). Adding a kind is a
/// change to this enum, so every `match` on it (stores, projections, feeds) must say what
/// the new kind means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamKind {
    /// `org-<uuid>`: the events of one organization, folded into its state and views.
    Organization,
    /// `audit`: the engine's own records about the log (signed checkpoints). No organization
    /// owns it; only the global feed and `keyledger verify` read it.
    Audit,
    /// `releases-<uuid>`: the record of one organization's data-key releases (ADR 0030). The
    /// organization owns it, but it is not part of its state: only the tenant audit and the
    /// feeds read it.
    Releases,
}

/// One stream: `org-<uuid>` for an organization, `releases-<uuid>` for its data-key releases,
/// or `audit`. The text form is what the
/// stores keep in `stream_id`; an organization's text form is unchanged since the first
/// release, so old data and golden files still parse.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamId {
    /// The stream of one organization: `org-<uuid>`.
    Org(OrgId),
    /// The stream of signed audit checkpoints: `audit`.
    Audit,
    /// The record of an organization's data-key releases: `releases-<uuid>` (ADR 0030).
    Releases(OrgId),
}

/// The text form of [`StreamId::Audit`].
const AUDIT_STREAM: &str = "audit";

impl StreamId {
    pub fn for_org(org: OrgId) -> Self {
        Self::Org(org)
    }

    /// The organization whose state this stream is: `Some` for `org-<uuid>` only.
    /// Organization folds, their Merkle logs and org-scoped reads skip every other stream.
    pub fn org_id(&self) -> Option<OrgId> {
        match self {
            StreamId::Org(org) => Some(*org),
            StreamId::Audit | StreamId::Releases(_) => None,
        }
    }

    /// The organization this stream is about, state or not: its own stream and its release
    /// record. `None` for `audit`. The tenant audit follows this.
    pub fn owner(&self) -> Option<OrgId> {
        match self {
            StreamId::Org(org) | StreamId::Releases(org) => Some(*org),
            StreamId::Audit => None,
        }
    }

    /// The stream of `org`'s data-key releases.
    pub fn releases_of(org: OrgId) -> Self {
        Self::Releases(org)
    }

    pub fn kind(&self) -> StreamKind {
        match self {
            StreamId::Org(_) => StreamKind::Organization,
            StreamId::Audit => StreamKind::Audit,
            StreamId::Releases(_) => StreamKind::Releases,
        }
    }
}

impl FromStr for StreamId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s == AUDIT_STREAM {
            return Ok(StreamId::Audit);
        }
        if let Some(rest) = s.strip_prefix("releases-") {
            return rest.parse().map(Self::Releases).map_err(|_| IdError::BadStreamId);
        }
        let rest = s.strip_prefix("org-").ok_or(IdError::BadStreamId)?;
        rest.parse().map(Self::Org).map_err(|_| IdError::BadStreamId)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamId::Org(org) => write!(f, "org-{org}"),
            StreamId::Audit => f.write_str(AUDIT_STREAM),
            StreamId::Releases(org) => write!(f, "releases-{org}"),
        }
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for StreamId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StreamId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^((org|releases)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|audit)$"
        })
    }
}

/// Which Merkle log an audit checkpoint covers: the global log (`"global"`) or one
/// organization's log (its id). The same names end the checkpoint's origin
/// (`<audit.origin>/global`, `<audit.origin>/org/<org_id>`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditLog {
    Global,
    Org(OrgId),
}

/// The text form of [`AuditLog::Global`].
const GLOBAL_LOG: &str = "global";

impl FromStr for AuditLog {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s == GLOBAL_LOG {
            return Ok(AuditLog::Global);
        }
        s.parse().map(AuditLog::Org).map_err(|_| IdError::BadAuditLog)
    }
}

impl fmt::Display for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditLog::Global => f.write_str(GLOBAL_LOG),
            AuditLog::Org(org) => org.fmt(f),
        }
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditLog({self})")
    }
}

impl Serialize for AuditLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AuditLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for AuditLog {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AuditLog".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(global|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
        })
    }
}

/// A 1-based position inside one stream. `StreamVersion::NONE` (0) means "no events yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamVersion(pub u64);

impl StreamVersion {
    pub const NONE: StreamVersion = StreamVersion(0);
    pub fn next(self) -> StreamVersion {
        StreamVersion(self.0 + 1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl JsonSchema for StreamVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StreamVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 0 })
    }
}

/// A position in the global, commit-ordered log. Assigned by the store; `0` means "before the
/// first event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GlobalPosition(pub u64);

impl GlobalPosition {
    pub const START: GlobalPosition = GlobalPosition(0);
}

impl JsonSchema for GlobalPosition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GlobalPosition".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 0 })
    }
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of one data encryption key (DEK) of an organization. DEK 1 is created at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DekId(pub u32);

impl DekId {
    pub const FIRST: DekId = DekId(1);
    pub fn next(self) -> DekId {
        DekId(self.0 + 1)
    }
}

impl fmt::Display for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The idempotency key of a command (`Idempotency-Key`). A repeat with the same id appends
/// nothing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct CommandId(String);

impl CommandId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadCommandId)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({})", self.0)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        CommandId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0190f2a4-5b6c-7d8e-9f00-112233445566";

    #[test]
    fn org_id_parses_hyphenated_uuid() {
        let id: OrgId = GOOD.parse().unwrap();
        assert_eq!(id.to_string(), GOOD);
    }

    #[test]
    fn org_id_rejects_garbage() {
        assert_eq!(
            "not-a-uuid".parse::<OrgId>(),
            Err(IdError::NotUuid {
                what: "organization id"
            })
        );
    }

    #[test]
    fn org_id_rejects_non_hyphenated_forms() {
        assert!("0190f2a45b6c7d8e9f00112233445566".parse::<OrgId>().is_err());
        assert!(format!("{{{GOOD}}}").parse::<OrgId>().is_err());
        assert!(format!("urn:uuid:{GOOD}").parse::<OrgId>().is_err());
    }

    #[test]
    fn org_id_rejects_nil() {
        assert_eq!(
            "00000000-0000-0000-0000-000000000000".parse::<TenantId>(),
            Err(IdError::NilUuid { what: "tenant id" })
        );
    }

    #[test]
    fn org_id_rejects_trailing_garbage_and_whitespace() {
        assert!(format!("{GOOD} ").parse::<OrgId>().is_err());
        assert!(format!(" {GOOD}").parse::<OrgId>().is_err());
        assert!(format!("{GOOD}0").parse::<OrgId>().is_err());
    }

    #[test]
    fn stream_id_round_trips_and_rejects_other_prefixes() {
        let s: StreamId = format!("org-{GOOD}").parse().unwrap();
        assert_eq!(s.to_string(), format!("org-{GOOD}"));
        assert_eq!(
            format!("tenant-{GOOD}").parse::<StreamId>(),
            Err(IdError::BadStreamId)
        );
        assert_eq!("org-".parse::<StreamId>(), Err(IdError::BadStreamId));
    }

    #[test]
    fn the_audit_stream_round_trips_and_has_no_organization() {
        let s: StreamId = "audit".parse().unwrap();
        assert_eq!(s, StreamId::Audit);
        assert_eq!(s.to_string(), "audit");
        assert_eq!(s.org_id(), None);
        assert_eq!(s.kind(), StreamKind::Audit);
        let org: StreamId = format!("org-{GOOD}").parse().unwrap();
        assert_eq!(org.org_id(), Some(GOOD.parse().unwrap()));
        assert_eq!(org.kind(), StreamKind::Organization);
        for bad in ["Audit", "audit ", "audit-1", "org-audit", ""] {
            assert_eq!(bad.parse::<StreamId>(), Err(IdError::BadStreamId), "{bad:?}");
        }
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"audit\"");
        assert_eq!(serde_json::from_str::<StreamId>("\"audit\"").unwrap(), s);
    }

    #[test]
    fn a_release_stream_round_trips_and_is_owned_but_not_the_organization_state() {
        let org: OrgId = GOOD.parse().unwrap();
        let s: StreamId = format!("releases-{GOOD}").parse().unwrap();
        assert_eq!(s, StreamId::releases_of(org));
        assert_eq!(s.to_string(), format!("releases-{GOOD}"));
        assert_eq!((s.org_id(), s.owner()), (None, Some(org)));
        assert_eq!(s.kind(), StreamKind::Releases);
        assert_eq!(StreamId::for_org(org).owner(), Some(org));
        assert_eq!(StreamId::Audit.owner(), None);
        for bad in [
            "releases-",
            "releases-audit",
            "release-x",
            &format!("releases-{GOOD} "),
        ] {
            assert_eq!(bad.parse::<StreamId>(), Err(IdError::BadStreamId), "{bad:?}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StreamId>(&json).unwrap(), s);
    }

    #[test]
    fn an_audit_log_is_global_or_an_organization() {
        assert_eq!("global".parse::<AuditLog>(), Ok(AuditLog::Global));
        let org: AuditLog = GOOD.parse().unwrap();
        assert_eq!(org, AuditLog::Org(GOOD.parse().unwrap()));
        assert_eq!(org.to_string(), GOOD);
        assert_eq!(
            format!("org-{GOOD}").parse::<AuditLog>(),
            Err(IdError::BadAuditLog)
        );
        assert_eq!("Global".parse::<AuditLog>(), Err(IdError::BadAuditLog));
    }

    #[test]
    fn command_id_bounds() {
        assert!(CommandId::parse("k-1").is_ok());
        assert_eq!(CommandId::parse(""), Err(IdError::BadCommandId));
        assert_eq!(CommandId::parse("has space"), Err(IdError::BadCommandId));
        assert_eq!(CommandId::parse(&"x".repeat(201)), Err(IdError::BadCommandId));
        assert_eq!(CommandId::parse("é"), Err(IdError::BadCommandId));
    }

    #[test]
    fn ids_deserialize_with_typed_errors() {
        let err = serde_json::from_str::<OrgId>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("organization id is not a valid UUID"));
    }
}
