//! Configuration: a TOML file plus `KEYLEDGER_*` environment variables (CONTRACT.md
//! "Configuration"). `KEYLEDGER_STORE__URL` sets `store.url`; a double underscore separates
//! levels. Errors name the bad key and where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use keyledger_domain::Role;
use serde::{Deserialize, Serialize};

/// The whole configuration, with defaults for everything but the tokens.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection that takes longer to send a request's headers is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open connections at most; past it the server accepts no more until one closes.
    pub max_connections: usize,
    /// Open SSE streams at most; past it a stream gets 503 `too_many_streams`.
    pub max_streams: usize,
    /// The certificate chain (PEM) the listener serves HTTPS with, together with `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert`'s first certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 65536,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_streams: 1000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// PostgreSQL: connections in this instance's pool, shared by requests, the projection
    /// runners and the health monitor (the projection leases hold their own sessions outside
    /// it). SQLite ignores it (one writer, its own readers).
    pub max_connections: u32,
    /// PostgreSQL: how long a caller waits for a pooled connection before it gives up; a request
    /// then gets 503 `store_unavailable` with `Retry-After`. Shorter than
    /// `server.request_timeout`.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let postgres = keyledger_postgres::PostgresOptions::default();
        Self {
            url: "sqlite://keyledger-data/keyledger.db".into(),
            max_connections: postgres.max_connections,
            acquire_timeout: postgres.acquire_timeout,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL pool these settings describe.
    pub(crate) fn postgres_options(&self) -> keyledger_postgres::PostgresOptions {
        keyledger_postgres::PostgresOptions {
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            ..keyledger_postgres::PostgresOptions::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VaultKind {
    /// The customer's Azure Key Vault through the official SDK.
    Azure,
    /// The in-process simulated vault (dev mode and tests).
    Simulated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysConfig {
    pub internal_key_file: PathBuf,
    pub vault: VaultKind,
    #[serde(default)]
    pub azure: AzureConfig,
    /// How long a platform service may cache a released customer-managed DEK: seconds
    /// (`3600`) or a duration (`"1h"`).
    #[serde(default = "default_external_cache_ttl", with = "seconds_or_duration")]
    pub external_cache_ttl: Duration,
    /// The same for a provider-managed DEK.
    #[serde(default = "default_internal_cache_ttl", with = "seconds_or_duration")]
    pub internal_cache_ttl: Duration,
    /// Concurrent releases of one customer-managed DEK share one vault call. Turn off only
    /// to measure what that saves.
    #[serde(default = "single_flight_on")]
    pub release_single_flight: bool,
}

fn single_flight_on() -> bool {
    true
}

fn default_external_cache_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_internal_cache_ttl() -> Duration {
    Duration::from_secs(900)
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            internal_key_file: PathBuf::from("keyledger-data/internal-keys.json"),
            vault: VaultKind::Azure,
            azure: AzureConfig::default(),
            external_cache_ttl: default_external_cache_ttl(),
            internal_cache_ttl: default_internal_cache_ttl(),
            release_single_flight: true,
        }
    }
}

/// A duration written as whole seconds (the contract's `3600`) or as a humantime text
/// (`"1h"`, like every other duration in the file).
mod seconds_or_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(u64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Written::deserialize(d)? {
            Written::Seconds(secs) => Ok(Duration::from_secs(secs)),
            Written::Text(text) => match text.parse::<u64>() {
                // From an environment variable, a number arrives as text.
                Ok(secs) => Ok(Duration::from_secs(secs)),
                Err(_) => {
                    humantime_serde::re::humantime::parse_duration(&text).map_err(serde::de::Error::custom)
                }
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AzureConfig {
    pub authority_host: String,
    pub allowed_vault_hosts: Vec<String>,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for AzureConfig {
    fn default() -> Self {
        Self {
            authority_host: "https://login.microsoftonline.com".into(),
            allowed_vault_hosts: keyledger_domain::HostAllowList::azure_public_clouds()
                .entries()
                .to_vec(),
            ca_cert: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthConfig {
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub transient_grace: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(5 * 60),
            transient_grace: Duration::from_secs(15 * 60),
        }
    }
}

/// The verifiable audit log (CONTRACT.md "Verifiable audit log").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditConfig {
    /// The signer name of the checkpoints and the prefix of their origins
    /// (`<origin>/org/<org_id>`, `<origin>/global`). Changing it changes the verifier key.
    pub origin: String,
    /// The Ed25519 signing key (a note signer key), created 0600 on first start and never
    /// replaced beside existing checkpoints.
    pub signing_key_file: PathBuf,
    /// How often the logs that grew get a signed checkpoint.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            origin: "keyledger.localhost".into(),
            signing_key_file: PathBuf::from("keyledger-data/audit-signing-key"),
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Entra ID issuers whose RS256 access tokens are accepted next to the static tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entra: Vec<EntraConfig>,
}

/// One `[[auth.entra]]` entry (CONTRACT.md "Console and sign-in").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntraConfig {
    /// `https://login.microsoftonline.com/<tid>/v2.0`: the exact `iss`; `tid` must match.
    pub issuer: String,
    /// The exact `aud`, e.g. `api://keyledger`.
    pub audience: String,
    /// `https://login.microsoftonline.com/<tid>/discovery/v2.0/keys`.
    pub jwks_uri: String,
    #[serde(default = "roles_claim")]
    pub roles_claim: String,
    #[serde(default = "organizations_claim")]
    pub organizations_claim: String,
    #[serde(default = "tenants_claim")]
    pub tenants_claim: String,
    /// An extra trust root (PEM) for `jwks_uri` (private CA, emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

fn roles_claim() -> String {
    "roles".into()
}

fn organizations_claim() -> String {
    "keyledger_orgs".into()
}

fn tenants_claim() -> String {
    "keyledger_tenants".into()
}

/// One bearer token and what it may do.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenConfig {
    pub token: String,
    pub subject: String,
    pub roles: Vec<Role>,
    #[serde(default = "everything")]
    pub organizations: Vec<String>,
    #[serde(default = "everything")]
    pub tenants: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"<hidden>")
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .field("organizations", &self.organizations)
            .field("tenants", &self.tenants)
            .finish()
    }
}

/// A configuration that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// A value has the wrong type or format, or a key is unknown.
    #[error("{0}")]
    Invalid(String),
    /// The values parse but do not make sense together.
    #[error("{key}: {message}")]
    Rule { key: String, message: String },
}

impl From<figment::Error> for ConfigError {
    fn from(errors: figment::Error) -> Self {
        let lines: Vec<String> = errors
            .into_iter()
            .map(|e| {
                let key = e.path.join(".").to_lowercase();
                let from = match e.metadata.as_ref() {
                    Some(m) if m.name.contains("environment") => {
                        format!(" (from KEYLEDGER_{})", key.to_uppercase().replace('.', "__"))
                    }
                    Some(m) => m
                        .source
                        .as_ref()
                        .map(|s| format!(" (from {s})"))
                        .unwrap_or_default(),
                    None => String::new(),
                };
                if key.is_empty() {
                    format!("{}{from}", e.kind)
                } else {
                    format!("{key}: {}{from}", e.kind)
                }
            })
            .collect();
        ConfigError::Invalid(lines.join("\n"))
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// No file and no `KEYLEDGER_*` variable: dev mode (DESIGN.md §8).
    DevMode,
    /// A file and/or environment variables.
    Explicit,
}

/// The `KEYLEDGER_*` variables that configure the service. Every key sits in a table, so a
/// configuration variable always has a `__` (`KEYLEDGER_STORE__URL`); others, such as the test
/// suite's `KEYLEDGER_REQUIRE_POSTGRES`, are not configuration.
fn config_vars() -> Env {
    Env::prefixed("KEYLEDGER_")
        .filter(|k| k.as_str().contains("__"))
        .split("__")
}

/// Loads the configuration: defaults, then `file`, then `KEYLEDGER_*` variables.
pub(crate) fn load(file: Option<&Path>) -> Result<(Config, Origin), ConfigError> {
    let has_env = std::env::vars().any(|(k, _)| k.starts_with("KEYLEDGER_") && k.contains("__"));
    // (the same rule as `config_vars`)
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Rule {
                key: "--config".into(),
                message: format!("{} does not exist", path.display()),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let config: Config = figment.merge(config_vars()).extract()?;
    check(&config)?;
    let origin = if file.is_none() && !has_env {
        Origin::DevMode
    } else {
        Origin::Explicit
    };
    Ok((config, origin))
}

fn rule(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Rule {
        key: key.into(),
        message: message.into(),
    }
}

/// The checks serde cannot express.
fn check(c: &Config) -> Result<(), ConfigError> {
    match (&c.server.tls_cert, &c.server.tls_key) {
        (Some(_), None) => return Err(rule("server.tls_key", "must be set with server.tls_cert")),
        (None, Some(_)) => return Err(rule("server.tls_cert", "must be set with server.tls_key")),
        _ => {}
    }
    if c.server.max_body_bytes < 1024 {
        return Err(rule("server.max_body_bytes", "must be at least 1024"));
    }
    if c.server.header_read_timeout.is_zero() {
        return Err(rule("server.header_read_timeout", "must be more than zero"));
    }
    if c.server.max_connections == 0 {
        return Err(rule("server.max_connections", "must be at least 1"));
    }
    if c.server.max_streams == 0 {
        return Err(rule("server.max_streams", "must be at least 1"));
    }
    let url = &c.store.url;
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(rule("store.url", "must start with sqlite: or postgres://"));
    }
    if c.store.max_connections == 0 {
        return Err(rule("store.max_connections", "must be at least 1"));
    }
    if c.store.acquire_timeout.is_zero() || c.store.acquire_timeout >= c.server.request_timeout {
        return Err(rule(
            "store.acquire_timeout",
            "must be more than zero and shorter than server.request_timeout, so that a request \
             that gets no connection is answered 503 store_unavailable",
        ));
    }
    if !c.keys.azure.authority_host.starts_with("https://") {
        return Err(rule("keys.azure.authority_host", "must be an https URL"));
    }
    if c.keys
        .azure
        .allowed_vault_hosts
        .iter()
        .any(|h| h.trim().is_empty() || h.contains('/'))
    {
        return Err(rule(
            "keys.azure.allowed_vault_hosts",
            "entries are host names or .suffixes (with :PORT for a port other than 443), not URLs",
        ));
    }
    if c.keys.azure.request_timeout.is_zero() {
        return Err(rule("keys.azure.request_timeout", "must be more than zero"));
    }
    if c.health.probe_interval < Duration::from_secs(1) {
        return Err(rule("health.probe_interval", "must be at least 1s"));
    }
    if keyledger_audit::note::check_name(&c.audit.origin).is_err() {
        return Err(rule(
            "audit.origin",
            "must be a note signer name: not empty, with no space and no '+' (e.g. keyledger.example.com)",
        ));
    }
    if c.audit.signing_key_file.as_os_str().is_empty() {
        return Err(rule("audit.signing_key_file", "must not be empty"));
    }
    if c.audit.checkpoint_interval < Duration::from_secs(1) {
        return Err(rule("audit.checkpoint_interval", "must be at least 1s"));
    }
    for (i, t) in c.auth.tokens.iter().enumerate() {
        let key = |f: &str| format!("auth.tokens[{i}].{f}");
        if t.token.len() < 16 {
            return Err(rule(&key("token"), "must be at least 16 characters"));
        }
        if t.subject.trim().is_empty() {
            return Err(rule(&key("subject"), "must not be empty"));
        }
        if t.roles.is_empty() {
            return Err(rule(&key("roles"), "must name at least one role"));
        }
        if t.roles.contains(&Role::System) {
            return Err(rule(
                &key("roles"),
                "the system role is the engine's own and cannot be granted",
            ));
        }
        for o in &t.organizations {
            if o != "*" && o.parse::<keyledger_domain::OrgId>().is_err() {
                return Err(rule(
                    &key("organizations"),
                    format!("{o:?} is neither \"*\" nor a UUID"),
                ));
            }
        }
        for x in &t.tenants {
            if x != "*" && x.parse::<keyledger_domain::TenantId>().is_err() {
                return Err(rule(
                    &key("tenants"),
                    format!("{x:?} is neither \"*\" nor a UUID"),
                ));
            }
        }
    }
    for (i, e) in c.auth.entra.iter().enumerate() {
        let key = |f: &str| format!("auth.entra[{i}].{f}");
        let https_with_path = |v: &str| {
            v.strip_prefix("https://")
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty())
        };
        if !https_with_path(&e.issuer) || e.issuer.split('/').nth(3).is_none_or(str::is_empty) {
            return Err(rule(
                &key("issuer"),
                "must be https://<host>/<tenant id>/v2.0 (the tokens' exact iss)",
            ));
        }
        if e.audience.trim().is_empty() {
            return Err(rule(&key("audience"), "must not be empty"));
        }
        if !https_with_path(&e.jwks_uri) {
            return Err(rule(&key("jwks_uri"), "must be an https:// URL"));
        }
        for (field, claim) in [
            ("roles_claim", &e.roles_claim),
            ("organizations_claim", &e.organizations_claim),
            ("tenants_claim", &e.tenants_claim),
        ] {
            if claim.trim().is_empty() {
                return Err(rule(&key(field), "must name a claim"));
            }
        }
    }
    let mut issuers: Vec<&str> = c.auth.entra.iter().map(|e| e.issuer.as_str()).collect();
    issuers.sort_unstable();
    if issuers.windows(2).any(|w| w[0] == w[1]) {
        return Err(rule("auth.entra", "two entries have the same issuer"));
    }
    let mut tokens: Vec<&str> = c.auth.tokens.iter().map(|t| t.token.as_str()).collect();
    tokens.sort_unstable();
    if tokens.windows(2).any(|w| w[0] == w[1]) {
        return Err(rule("auth.tokens", "two entries have the same token"));
    }
    Ok(())
}

#[cfg(test)]
// figment's Jail closures return its (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail, toml: &str) -> Result<(Config, Origin), ConfigError> {
        let path = jail.directory().join("keyledger.toml");
        std::fs::write(&path, toml).unwrap();
        load(Some(&path))
    }

    #[test]
    fn no_file_and_no_variables_is_dev_mode_with_defaults() {
        Jail::expect_with(|_| {
            let (c, origin) = load(None).unwrap();
            assert_eq!(origin, Origin::DevMode);
            assert_eq!(c, Config::default());
            Ok(())
        });
    }

    #[test]
    fn the_contract_example_parses() {
        Jail::expect_with(|jail| {
            let (c, origin) = load_in(
                jail,
                r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
[store]
url = "postgres://root@127.0.0.1/keyledger"
[keys]
internal_key_file = "keyledger-data/internal-keys.json"
vault = "azure"
[keys.azure]
authority_host = "https://login.microsoftonline.com"
allowed_vault_hosts = [".vault.azure.net"]
request_timeout = "10s"
[health]
probe_interval = "5m"
transient_grace = "15m"
[[auth.tokens]]
token = "a-long-random-string"
subject = "alice@example.com"
roles = ["org_admin"]
organizations = ["*"]
tenants = ["*"]
"#,
            )
            .unwrap();
            assert_eq!(origin, Origin::Explicit);
            assert_eq!(c.health.probe_interval, Duration::from_secs(300));
            assert_eq!(c.auth.tokens[0].roles, vec![Role::OrgAdmin]);
            assert_eq!(c.server.listen.port(), 0);
            assert_eq!(c.store.max_connections, 16);
            assert_eq!(c.store.acquire_timeout, Duration::from_secs(5));
            Ok(())
        });
    }

    #[test]
    fn release_cache_ttls_default_to_the_seed_and_take_seconds_or_durations() {
        Jail::expect_with(|jail| {
            let (c, _) = load_in(
                jail,
                "[keys]\ninternal_key_file = \"k.json\"\nvault = \"simulated\"\n",
            )
            .unwrap();
            assert_eq!(c.keys.external_cache_ttl, Duration::from_secs(3600));
            assert_eq!(c.keys.internal_cache_ttl, Duration::from_secs(900));
            let toml = "[keys]\ninternal_key_file = \"k.json\"\nvault = \"simulated\"\nexternal_cache_ttl = 120\ninternal_cache_ttl = \"2m 30s\"\n";
            let (c, _) = load_in(jail, toml).unwrap();
            assert_eq!(c.keys.external_cache_ttl, Duration::from_secs(120));
            assert_eq!(c.keys.internal_cache_ttl, Duration::from_secs(150));
            jail.set_env("KEYLEDGER_KEYS__EXTERNAL_CACHE_TTL", "60");
            let (c, _) = load_in(jail, toml).unwrap();
            assert_eq!(c.keys.external_cache_ttl, Duration::from_secs(60));
            let bad = "[keys]\ninternal_key_file = \"k.json\"\nvault = \"simulated\"\ninternal_cache_ttl = \"soon\"\n";
            assert!(load_in(jail, bad).is_err());
            Ok(())
        });
    }

    #[test]
    fn environment_variables_override_the_file_and_leave_dev_mode() {
        Jail::expect_with(|jail| {
            jail.set_env("KEYLEDGER_STORE__URL", "postgres://root@127.0.0.1/other");
            jail.set_env("KEYLEDGER_SERVER__LISTEN", "127.0.0.1:9999");
            let (c, origin) = load(None).unwrap();
            assert_eq!(origin, Origin::Explicit);
            assert_eq!(c.store.url, "postgres://root@127.0.0.1/other");
            assert_eq!(c.server.listen.port(), 9999);
            Ok(())
        });
    }

    #[test]
    fn variables_without_a_table_are_not_configuration() {
        Jail::expect_with(|jail| {
            jail.set_env("KEYLEDGER_REQUIRE_POSTGRES", "1");
            jail.set_env("KEYLEDGER_TEST_POSTGRES_URL", "postgres://x");
            let (c, origin) = load(None).unwrap();
            assert_eq!(origin, Origin::DevMode);
            assert_eq!(c, Config::default());
            Ok(())
        });
    }

    #[test]
    fn the_pool_comes_from_the_store_section_or_its_variables() {
        Jail::expect_with(|jail| {
            jail.set_env("KEYLEDGER_STORE__ACQUIRE_TIMEOUT", "2s");
            let (c, _) = load_in(
                jail,
                "[store]\nurl = \"postgres://root@h/k\"\nmax_connections = 40\n",
            )
            .unwrap();
            let options = c.store.postgres_options();
            assert_eq!(options.max_connections, 40);
            assert_eq!(options.acquire_timeout, Duration::from_secs(2));
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        Jail::expect_with(|jail| {
            let err = load_in(jail, "[server]\nmax_body_bytes = \"lots\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("server.max_body_bytes"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_variable_names_the_key_and_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("KEYLEDGER_HEALTH__PROBE_INTERVAL", "often");
            let err = load(None).unwrap_err().to_string();
            assert!(err.contains("health.probe_interval"), "{err}");
            assert!(err.contains("KEYLEDGER_HEALTH__PROBE_INTERVAL"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_server_limits_default_to_the_contract_and_can_be_set() {
        Jail::expect_with(|jail| {
            let (c, _) = load(None).unwrap();
            assert_eq!(c.server.header_read_timeout, Duration::from_secs(30));
            assert_eq!(c.server.max_connections, 10_000);
            assert_eq!(c.server.max_streams, 1000);
            let (c, _) = load_in(
                jail,
                "[server]\nheader_read_timeout = \"5s\"\nmax_connections = 20\nmax_streams = 2\n",
            )
            .unwrap();
            assert_eq!(c.server.header_read_timeout, Duration::from_secs(5));
            assert_eq!((c.server.max_connections, c.server.max_streams), (20, 2));
            jail.set_env("KEYLEDGER_SERVER__MAX_STREAMS", "7");
            assert_eq!(load(None).unwrap().0.server.max_streams, 7);
            Ok(())
        });
    }

    #[test]
    fn server_limits_of_zero_are_refused_by_name() {
        for (key, toml) in [
            ("server.header_read_timeout", "header_read_timeout = \"0s\""),
            ("server.max_connections", "max_connections = 0"),
            ("server.max_streams", "max_streams = 0"),
        ] {
            Jail::expect_with(|jail| {
                let err = load_in(jail, &format!("[server]\n{toml}\n"))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{err}");
                Ok(())
            });
        }
    }

    #[test]
    fn the_audit_section_defaults_to_dev_mode_and_can_be_set() {
        Jail::expect_with(|jail| {
            let (c, _) = load(None).unwrap();
            assert_eq!(c.audit.origin, "keyledger.localhost");
            assert_eq!(
                c.audit.signing_key_file,
                PathBuf::from("keyledger-data/audit-signing-key")
            );
            assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(60));
            let (c, _) = load_in(
                jail,
                "[audit]\norigin = \"keyledger.example.com\"\nsigning_key_file = \"/var/lib/keyledger/audit-key\"\ncheckpoint_interval = \"5m\"\n",
            )
            .unwrap();
            assert_eq!(c.audit.origin, "keyledger.example.com");
            assert_eq!(
                c.audit.signing_key_file,
                PathBuf::from("/var/lib/keyledger/audit-key")
            );
            assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(300));
            jail.set_env("KEYLEDGER_AUDIT__ORIGIN", "audit.example.org");
            jail.set_env("KEYLEDGER_AUDIT__CHECKPOINT_INTERVAL", "30s");
            let (c, origin) = load(None).unwrap();
            assert_eq!(origin, Origin::Explicit);
            assert_eq!(c.audit.origin, "audit.example.org");
            assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(30));
            Ok(())
        });
    }

    #[test]
    fn audit_rules_name_the_key() {
        for (toml, key) in [
            ("origin = \"has space\"", "audit.origin"),
            ("origin = \"a+b\"", "audit.origin"),
            ("origin = \"\"", "audit.origin"),
            ("signing_key_file = \"\"", "audit.signing_key_file"),
            ("checkpoint_interval = \"0s\"", "audit.checkpoint_interval"),
        ] {
            Jail::expect_with(|jail| {
                let err = load_in(jail, &format!("[audit]\n{toml}\n"))
                    .unwrap_err()
                    .to_string();
                assert!(err.starts_with(key), "{toml}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        Jail::expect_with(|jail| {
            let err = load_in(jail, "[server]\nlisten_on = \"127.0.0.1:1\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_on"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_role_is_refused() {
        Jail::expect_with(|jail| {
            let err = load_in(
                jail,
                "[[auth.tokens]]\ntoken = \"0123456789abcdef0\"\nsubject = \"x\"\nroles = [\"root\"]\n",
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("auth.tokens"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn rules_name_the_key() {
        Jail::expect_with(|jail| {
            let cases = [
                ("[store]\nurl = \"mysql://x\"\n", "store.url"),
                ("[store]\nmax_connections = 0\n", "store.max_connections"),
                ("[store]\nacquire_timeout = \"1m\"\n", "store.acquire_timeout"),
                (
                    "[keys.azure]\nauthority_host = \"http://login\"\nallowed_vault_hosts = []\nrequest_timeout = \"1s\"\n",
                    "keys.azure.authority_host",
                ),
                (
                    "[[auth.tokens]]\ntoken = \"short\"\nsubject = \"x\"\nroles = [\"auditor\"]\n",
                    "auth.tokens[0].token",
                ),
                (
                    "[[auth.tokens]]\ntoken = \"0123456789abcdef0\"\nsubject = \"x\"\nroles = [\"system\"]\n",
                    "auth.tokens[0].roles",
                ),
                (
                    "[[auth.tokens]]\ntoken = \"0123456789abcdef0\"\nsubject = \"x\"\nroles = [\"auditor\"]\ntenants = [\"t1\"]\n",
                    "auth.tokens[0].tenants",
                ),
                (
                    "[[auth.entra]]\nissuer = \"https://login.microsoftonline.com\"\naudience = \"api://keyledger\"\njwks_uri = \"https://login.microsoftonline.com/t/discovery/v2.0/keys\"\n",
                    "auth.entra[0].issuer",
                ),
                (
                    "[[auth.entra]]\nissuer = \"https://login.microsoftonline.com/t/v2.0\"\naudience = \"api://keyledger\"\njwks_uri = \"http://login.microsoftonline.com/t/discovery/v2.0/keys\"\n",
                    "auth.entra[0].jwks_uri",
                ),
                (
                    "[[auth.entra]]\nissuer = \"https://login.microsoftonline.com/t/v2.0\"\naudience = \" \"\njwks_uri = \"https://login.microsoftonline.com/t/discovery/v2.0/keys\"\n",
                    "auth.entra[0].audience",
                ),
                (
                    "[[auth.entra]]\nissuer = \"https://login.microsoftonline.com/t/v2.0\"\naudience = \"api://keyledger\"\njwks_uri = \"https://login.microsoftonline.com/t/discovery/v2.0/keys\"\nroles_claim = \"\"\n",
                    "auth.entra[0].roles_claim",
                ),
                ("[server]\ntls_cert = \"cert.pem\"\n", "server.tls_key"),
                ("[server]\ntls_key = \"key.pem\"\n", "server.tls_cert"),
            ];
            for (toml, key) in cases {
                let err = load_in(jail, toml).unwrap_err().to_string();
                assert!(err.starts_with(key), "{toml}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn entra_entries_take_the_contracts_keys_and_default_the_claim_names() {
        Jail::expect_with(|jail| {
            let (c, _) = load_in(
                jail,
                r#"
[[auth.entra]]
issuer = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
audience = "api://keyledger"
jwks_uri = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/discovery/v2.0/keys"
roles_claim = "roles"
organizations_claim = "keyledger_orgs"
tenants_claim = "keyledger_tenants"
ca_cert = "/path/to/extra-root.pem"

[[auth.entra]]
issuer = "https://login.example/other/v2.0"
audience = "api://keyledger"
jwks_uri = "https://login.example/other/discovery/v2.0/keys"
"#,
            )
            .unwrap();
            assert!(c.auth.tokens.is_empty());
            assert_eq!(c.auth.entra.len(), 2);
            assert_eq!(
                c.auth.entra[0].ca_cert,
                Some(PathBuf::from("/path/to/extra-root.pem"))
            );
            let second = &c.auth.entra[1];
            assert_eq!(
                (
                    second.roles_claim.as_str(),
                    second.organizations_claim.as_str(),
                    second.tenants_claim.as_str()
                ),
                ("roles", "keyledger_orgs", "keyledger_tenants")
            );
            assert_eq!(second.ca_cert, None);
            Ok(())
        });
    }

    #[test]
    fn errors_and_debug_never_show_a_token() {
        Jail::expect_with(|jail| {
            let (c, _) = load_in(
                jail,
                "[[auth.tokens]]\ntoken = \"super-secret-token-value\"\nsubject = \"x\"\nroles = [\"auditor\"]\n",
            )
            .unwrap();
            assert!(!format!("{c:?}").contains("super-secret-token-value"));
            let err = load_in(
                jail,
                "[[auth.tokens]]\ntoken = \"super-secret-token-value\"\nsubject = \"\"\nroles = [\"auditor\"]\n",
            )
            .unwrap_err()
            .to_string();
            assert!(!err.contains("super-secret-token-value"), "{err}");
            Ok(())
        });
    }
}
