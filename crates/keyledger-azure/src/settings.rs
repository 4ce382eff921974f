//! `[keys.azure]` of CONTRACT.md as read from TOML or the environment, turned into an
//! [`AzureConfig`].

use std::path::PathBuf;
use std::time::Duration;

use keyledger_domain::HostAllowList;
use serde::Deserialize;

use crate::adapter::AzureConfig;

/// The `[keys.azure]` table. Every field has the documented default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    #[serde(default = "default_authority_host")]
    pub authority_host: String,
    /// An entry starting with "." matches any host ending with it; any other entry must equal
    /// the host.
    #[serde(default = "default_allowed_vault_hosts")]
    pub allowed_vault_hosts: Vec<String>,
    /// Path of an extra trust root (PEM).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// `"10s"`, `"500ms"`, `"1m"`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    /// Beyond CONTRACT.md: see [`AzureConfig::verify_challenge_resource`]. Default true.
    #[serde(default = "default_true")]
    pub verify_challenge_resource: bool,
}

impl Default for AzureSettings {
    fn default() -> Self {
        Self {
            authority_host: default_authority_host(),
            allowed_vault_hosts: default_allowed_vault_hosts(),
            ca_cert: None,
            request_timeout: default_request_timeout(),
            verify_challenge_resource: true,
        }
    }
}

fn default_authority_host() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_allowed_vault_hosts() -> Vec<String> {
    HostAllowList::azure_public_clouds().entries().to_vec()
}
fn default_request_timeout() -> String {
    "10s".into()
}
fn default_true() -> bool {
    true
}

/// Why `[keys.azure]` is unusable. Reported at start-up; fix the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("keys.azure.authority_host must be an https URL")]
    AuthorityHost,
    #[error("keys.azure.request_timeout must look like \"10s\", \"500ms\" or \"1m\" and be positive")]
    RequestTimeout,
    #[error("keys.azure.ca_cert {0} cannot be read")]
    CaCert(String),
    #[error("keys.azure.allowed_vault_hosts is empty: no vault could be used")]
    EmptyAllowList,
}

impl AzureSettings {
    pub fn into_config(self) -> Result<AzureConfig, SettingsError> {
        if !self.authority_host.starts_with("https://") {
            return Err(SettingsError::AuthorityHost);
        }
        let request_timeout = parse_duration(&self.request_timeout).ok_or(SettingsError::RequestTimeout)?;
        let allowed_vault_hosts = HostAllowList::new(&self.allowed_vault_hosts);
        if allowed_vault_hosts.entries().is_empty() {
            return Err(SettingsError::EmptyAllowList);
        }
        let ca_cert_pem = match &self.ca_cert {
            Some(path) => {
                Some(std::fs::read(path).map_err(|_| SettingsError::CaCert(path.display().to_string()))?)
            }
            None => None,
        };
        Ok(AzureConfig {
            authority_host: self.authority_host,
            allowed_vault_hosts,
            ca_cert_pem,
            request_timeout,
            verify_challenge_resource: self.verify_challenge_resource,
        })
    }
}

/// `"250ms"`, `"10s"`, `"2m"`; positive only.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = AzureSettings::default().into_config().unwrap();
        assert_eq!(c.authority_host, "https://login.microsoftonline.com");
        assert!(c.allowed_vault_hosts.allows("contoso.vault.azure.net"));
        assert!(c.allowed_vault_hosts.allows("x.managedhsm.azure.net"));
        assert!(!c.allowed_vault_hosts.allows("127.0.0.1"));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert!(c.verify_challenge_resource);
        assert!(c.ca_cert_pem.is_none());
    }

    #[test]
    fn parses_a_table() {
        let s: AzureSettings = serde_json::from_value(serde_json::json!({
            "authority_host": "https://127.0.0.1:9443",
            "allowed_vault_hosts": ["127.0.0.1"],
            "request_timeout": "1500ms",
            "verify_challenge_resource": false
        }))
        .unwrap();
        let c = s.into_config().unwrap();
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert!(c.allowed_vault_hosts.allows("127.0.0.1"));
        assert!(!c.verify_challenge_resource);
    }

    #[test]
    fn refuses_bad_values() {
        let bad = |f: fn(&mut AzureSettings)| {
            let mut s = AzureSettings::default();
            f(&mut s);
            s.into_config().unwrap_err()
        };
        assert_eq!(
            bad(|s| s.authority_host = "http://login".into()),
            SettingsError::AuthorityHost
        );
        assert_eq!(
            bad(|s| s.request_timeout = "0s".into()),
            SettingsError::RequestTimeout
        );
        assert_eq!(
            bad(|s| s.request_timeout = "10".into()),
            SettingsError::RequestTimeout
        );
        assert_eq!(
            bad(|s| s.allowed_vault_hosts = vec![]),
            SettingsError::EmptyAllowList
        );
        assert!(matches!(
            bad(|s| s.ca_cert = Some("/nonexistent/ca.pem".into())),
            SettingsError::CaCert(_)
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5h"), None);
    }
}
