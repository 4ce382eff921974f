//! Azure Key Vault key identifiers: `https://HOST/keys/NAME[/VERSION]`.
//!
//! Parsing is also the SSRF guard: an identifier whose host is not on the caller's allow list
//! never becomes a [`KeyIdentifier`], so no code path can send a request to it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a key identifier was refused. Reported as a 400 (or 422 `key_not_allowed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyIdentifierError {
    /// Not a URL at all, or it holds whitespace or backslashes.
    #[error("key identifier is not a valid URL")]
    Malformed,
    /// Only `https` is accepted: the client secret's token must never cross plain HTTP.
    #[error("key identifier must use https")]
    NotHttps,
    /// `user:password@` in the URL is refused.
    #[error("key identifier must not contain user information")]
    UserInfo,
    /// `?…` is refused.
    #[error("key identifier must not contain a query string")]
    QueryString,
    /// `#…` is refused.
    #[error("key identifier must not contain a fragment")]
    Fragment,
    /// The path is not `/keys/NAME[/VERSION]`.
    #[error("key identifier path must be /keys/NAME[/VERSION]")]
    NotAKeyPath,
    /// `/keys/` with no name.
    #[error("key identifier has no key name")]
    MissingName,
    /// A key name is 1 to 127 letters, digits or hyphens.
    #[error("key name must be 1 to 127 letters, digits or hyphens")]
    BadName,
    /// A key version is 1 to 64 letters or digits.
    #[error("key version must be 1 to 64 letters or digits")]
    BadVersion,
    /// The host is not on the configured allow list of vault hosts.
    #[error("key vault host {host} is not on the allow list")]
    HostNotAllowed { host: String },
}

/// The vault hosts a deployment may talk to. An entry starting with `.` matches any host that
/// ends with it; any other entry must equal the host. An entry may end in `:PORT` (IPv6 as
/// `[::1]:PORT`): it then matches that port only. An entry without a port matches only the
/// default HTTPS port, 443 (ADR 0017): a test emulator on `127.0.0.1:8443` is allowed by the
/// entry `127.0.0.1:8443`, never by `127.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostAllowList {
    entries: Vec<String>,
}

impl HostAllowList {
    pub fn new<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            entries: entries
                .into_iter()
                .map(|e| e.as_ref().trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty() && e != ".")
                .collect(),
        }
    }

    /// The public Azure clouds' vault and managed-HSM suffixes.
    pub fn azure_public_clouds() -> Self {
        Self::new([
            ".vault.azure.net",
            ".vault.azure.cn",
            ".vault.usgovcloudapi.net",
            ".managedhsm.azure.net",
        ])
    }

    /// Whether `host` on `port` (`None`: the default HTTPS port) is allowed.
    pub fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        let port = port.filter(|p| *p != DEFAULT_HTTPS_PORT);
        self.entries.iter().any(|entry| {
            let (pattern, entry_port) = split_port(entry);
            let host_matches = if pattern.starts_with('.') {
                host.len() > pattern.len() && host.ends_with(pattern)
            } else {
                host == pattern
            };
            host_matches && entry_port == port
        })
    }

    pub fn entries(&self) -> &[String] {
        &self.entries
    }
}

/// The port Key Vault serves on; a URL that names it is the same as one that does not.
const DEFAULT_HTTPS_PORT: u16 = 443;

/// An allow-list entry as (host pattern, port). `None` is the default port; so is `:443`.
/// A suffix that is not a port (`host:abc`) stays part of the pattern and matches no host.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    let (pattern, port) = if entry.starts_with('[') {
        match entry.find(']') {
            Some(end) => (&entry[..=end], entry[end + 1..].strip_prefix(':')),
            None => (entry, None),
        }
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (entry, None),
        }
    };
    match port.map(str::parse::<u16>) {
        None => (pattern, None),
        Some(Ok(p)) if p == DEFAULT_HTTPS_PORT => (pattern, None),
        Some(Ok(p)) => (pattern, Some(p)),
        Some(Err(_)) => (entry, None),
    }
}

/// A parsed key identifier. The host has passed the allow list it was parsed with.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyIdentifier {
    /// Lower-case host, with `:port` when one was given.
    authority: String,
    host_len: usize,
    name: String,
    version: Option<String>,
}

impl KeyIdentifier {
    /// Parses `s` and checks its host against `allow`.
    pub fn parse(s: &str, allow: &HostAllowList) -> Result<Self, KeyIdentifierError> {
        let id = Self::parse_shape(s)?;
        if !allow.allows(id.host(), id.port()) {
            return Err(KeyIdentifierError::HostNotAllowed {
                host: id.authority.clone(),
            });
        }
        Ok(id)
    }

    /// Checks the form only, not the host. Used to read identifiers back from the event log,
    /// where they were checked against the allow list in force when they were recorded.
    pub fn parse_shape(s: &str) -> Result<Self, KeyIdentifierError> {
        use KeyIdentifierError as E;
        if s.is_empty()
            || s.len() > 2048
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        {
            return Err(E::Malformed);
        }
        let url = url::Url::parse(s).map_err(|_| E::Malformed)?;
        if url.scheme() != "https" {
            return Err(E::NotHttps);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(E::UserInfo);
        }
        if url.query().is_some() {
            return Err(E::QueryString);
        }
        if url.fragment().is_some() {
            return Err(E::Fragment);
        }
        let host = url.host_str().ok_or(E::Malformed)?.to_ascii_lowercase();
        // The raw path, so that `..` and percent-escapes cannot slip past the segment checks.
        let raw_path = raw_path(s).ok_or(E::Malformed)?;
        let mut segments: Vec<&str> = raw_path.split('/').skip(1).collect();
        if segments.last() == Some(&"") && segments.len() > 1 {
            segments.pop(); // one trailing slash is tolerated, as Azure does
        }
        match segments.first() {
            Some(&"keys") => {}
            _ => return Err(E::NotAKeyPath),
        }
        let name = match segments.get(1) {
            None | Some(&"") => return Err(E::MissingName),
            Some(n) => *n,
        };
        if name.len() > 127 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(E::BadName);
        }
        let version = match segments.get(2) {
            None => None,
            Some(v) => {
                if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(E::BadVersion);
                }
                Some((*v).to_owned())
            }
        };
        if segments.len() > 3 {
            return Err(E::NotAKeyPath);
        }
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(Self {
            host_len: host.len(),
            authority,
            name: name.to_owned(),
            version,
        })
    }

    /// The host, without a port.
    pub fn host(&self) -> &str {
        &self.authority[..self.host_len]
    }

    /// The port, when the identifier names one other than 443.
    pub fn port(&self) -> Option<u16> {
        self.authority
            .get(self.host_len + 1..)
            .and_then(|p| p.parse().ok())
    }

    /// `https://HOST[:PORT]`, the vault URL the SDK client is built with.
    pub fn vault_url(&self) -> String {
        format!("https://{}", self.authority)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The same key pinned to `version`. Fails only on an invalid version string.
    pub fn with_version(&self, version: &str) -> Result<Self, KeyIdentifierError> {
        if version.is_empty() || version.len() > 64 || !version.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(KeyIdentifierError::BadVersion);
        }
        Ok(Self {
            version: Some(version.to_owned()),
            ..self.clone()
        })
    }

    /// The same key with no version ("latest").
    pub fn versionless(&self) -> Self {
        Self {
            version: None,
            ..self.clone()
        }
    }

    /// Same vault and key name (Key Vault names are case-insensitive), any version.
    pub fn same_key_name(&self, other: &KeyIdentifier) -> bool {
        self.authority == other.authority && self.name.eq_ignore_ascii_case(&other.name)
    }

    /// Same vault, name and version. Two identifiers without a version are not "the same
    /// key version": nothing pins them.
    pub fn same_key_version(&self, other: &KeyIdentifier) -> bool {
        self.same_key_name(other) && matches!((&self.version, &other.version), (Some(a), Some(b)) if a == b)
    }
}

/// The path part of an absolute URL, taken from the raw text (no normalisation).
fn raw_path(s: &str) -> Option<&str> {
    let after_scheme = s.split_once("://")?.1;
    let Some(slash) = after_scheme.find('/') else {
        return Some("");
    };
    let path = &after_scheme[slash..];
    let end = path.find(['?', '#']).unwrap_or(path.len());
    Some(&path[..end])
}

impl fmt::Display for KeyIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}/keys/{}", self.authority, self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyIdentifier({self})")
    }
}

impl Serialize for KeyIdentifier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyIdentifier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyIdentifier::parse_shape(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for KeyIdentifier {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeyIdentifier".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An Azure Key Vault key identifier, https://HOST/keys/NAME[/VERSION]",
            "pattern": "^https://[^/?#@]+/keys/[0-9A-Za-z-]{1,127}(/[0-9A-Za-z]{1,64})?$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> HostAllowList {
        HostAllowList::azure_public_clouds()
    }

    fn parse(s: &str) -> Result<KeyIdentifier, KeyIdentifierError> {
        KeyIdentifier::parse(s, &allow())
    }

    #[test]
    fn parses_versioned_identifier() {
        let k = parse("https://contoso.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(k.host(), "contoso.vault.azure.net");
        assert_eq!(k.name(), "cmk");
        assert_eq!(k.version(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(k.vault_url(), "https://contoso.vault.azure.net");
    }

    #[test]
    fn parses_versionless_identifier_with_or_without_trailing_slash() {
        assert_eq!(
            parse("https://c.vault.azure.net/keys/cmk").unwrap().version(),
            None
        );
        assert_eq!(
            parse("https://c.vault.azure.net/keys/cmk/").unwrap().version(),
            None
        );
    }

    #[test]
    fn host_is_lower_cased_and_display_round_trips() {
        let k = parse("https://Contoso.Vault.Azure.NET/keys/cmk/v1").unwrap();
        assert_eq!(k.to_string(), "https://contoso.vault.azure.net/keys/cmk/v1");
        assert_eq!(parse(&k.to_string()).unwrap(), k);
    }

    #[test]
    fn rejects_http() {
        assert_eq!(
            parse("http://c.vault.azure.net/keys/cmk"),
            Err(KeyIdentifierError::NotHttps)
        );
    }

    #[test]
    fn rejects_other_schemes() {
        assert_eq!(
            parse("ftp://c.vault.azure.net/keys/cmk"),
            Err(KeyIdentifierError::NotHttps)
        );
    }

    #[test]
    fn rejects_missing_name() {
        assert_eq!(
            parse("https://c.vault.azure.net/keys/"),
            Err(KeyIdentifierError::MissingName)
        );
        assert_eq!(
            parse("https://c.vault.azure.net/keys"),
            Err(KeyIdentifierError::MissingName)
        );
    }

    #[test]
    fn rejects_query_string() {
        assert_eq!(
            parse("https://c.vault.azure.net/keys/cmk?api-version=1"),
            Err(KeyIdentifierError::QueryString)
        );
    }

    #[test]
    fn rejects_fragment() {
        assert_eq!(
            parse("https://c.vault.azure.net/keys/cmk#x"),
            Err(KeyIdentifierError::Fragment)
        );
    }

    #[test]
    fn rejects_userinfo() {
        assert_eq!(
            parse("https://user:pw@c.vault.azure.net/keys/cmk"),
            Err(KeyIdentifierError::UserInfo)
        );
        assert_eq!(
            parse("https://user@c.vault.azure.net/keys/cmk"),
            Err(KeyIdentifierError::UserInfo)
        );
    }

    #[test]
    fn rejects_host_not_on_allow_list() {
        assert_eq!(
            parse("https://evil.example.com/keys/cmk"),
            Err(KeyIdentifierError::HostNotAllowed {
                host: "evil.example.com".into()
            })
        );
        // A suffix entry does not match the bare suffix, nor a look-alike.
        assert!(parse("https://vault.azure.net/keys/cmk").is_err());
        assert!(parse("https://c.vault.azure.net.evil.com/keys/cmk").is_err());
        assert!(parse("https://127.0.0.1/keys/cmk").is_err());
    }

    #[test]
    fn a_key_identifier_on_a_non_default_port_is_refused() {
        assert!(parse("https://c.vault.azure.net:8443/keys/cmk").is_err());
        assert!(parse("https://c.vault.azure.net:80/keys/cmk").is_err());
        // The default port spelled out is the default port.
        assert!(parse("https://c.vault.azure.net:443/keys/cmk").is_ok());
        let host_only = HostAllowList::new(["127.0.0.1"]);
        assert!(KeyIdentifier::parse("https://127.0.0.1:8443/keys/cmk", &host_only).is_err());
        assert!(KeyIdentifier::parse("https://127.0.0.1/keys/cmk", &host_only).is_ok());
    }

    #[test]
    fn an_allow_list_entry_with_a_port_allows_that_host_on_that_port_only() {
        let allow = HostAllowList::new(["127.0.0.1:8443", "[::1]:9443"]);
        let k = KeyIdentifier::parse("https://127.0.0.1:8443/keys/cmk", &allow).unwrap();
        assert_eq!(k.vault_url(), "https://127.0.0.1:8443");
        assert_eq!(k.host(), "127.0.0.1");
        assert!(KeyIdentifier::parse("https://127.0.0.1/keys/cmk", &allow).is_err());
        assert!(KeyIdentifier::parse("https://127.0.0.1:8444/keys/cmk", &allow).is_err());
        assert!(KeyIdentifier::parse("https://127.0.0.2:8443/keys/cmk", &allow).is_err());
        assert!(KeyIdentifier::parse("https://[::1]:9443/keys/cmk", &allow).is_ok());
        assert!(KeyIdentifier::parse("https://[::1]/keys/cmk", &allow).is_err());
    }

    #[test]
    fn empty_allow_list_allows_nothing() {
        assert!(
            KeyIdentifier::parse("https://c.vault.azure.net/keys/cmk", &HostAllowList::default()).is_err()
        );
    }

    #[test]
    fn rejects_paths_that_are_not_keys() {
        for s in [
            "https://c.vault.azure.net/secrets/cmk",
            "https://c.vault.azure.net/",
            "https://c.vault.azure.net",
            "https://c.vault.azure.net/keys/cmk/v1/wrapkey",
            "https://c.vault.azure.net/x/keys/cmk",
        ] {
            assert!(
                matches!(parse(s), Err(KeyIdentifierError::NotAKeyPath)),
                "{s}: {:?}",
                parse(s)
            );
        }
    }

    #[test]
    fn rejects_dot_segments_and_escapes() {
        assert!(parse("https://c.vault.azure.net/keys/../secrets/x").is_err());
        assert!(parse("https://c.vault.azure.net/keys/c%6dk").is_err());
    }

    #[test]
    fn rejects_bad_names_and_versions() {
        assert_eq!(
            parse("https://c.vault.azure.net/keys/c_mk"),
            Err(KeyIdentifierError::BadName)
        );
        assert_eq!(
            parse(&format!("https://c.vault.azure.net/keys/{}", "a".repeat(128))),
            Err(KeyIdentifierError::BadName)
        );
        assert_eq!(
            parse("https://c.vault.azure.net/keys/cmk/v-1"),
            Err(KeyIdentifierError::BadVersion)
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for s in [
            "",
            "not a url",
            " https://c.vault.azure.net/keys/cmk",
            "https:\\\\c/keys/k",
        ] {
            assert_eq!(parse(s), Err(KeyIdentifierError::Malformed), "{s:?}");
        }
    }

    #[test]
    fn version_comparison() {
        let a = parse("https://c.vault.azure.net/keys/cmk/v1").unwrap();
        let b = parse("https://c.vault.azure.net/keys/CMK/v1").unwrap();
        let c = parse("https://c.vault.azure.net/keys/cmk/v2").unwrap();
        assert!(a.same_key_version(&b));
        assert!(!a.same_key_version(&c));
        assert!(a.same_key_name(&c));
        assert!(!a.versionless().same_key_version(&b.versionless()));
    }
}
