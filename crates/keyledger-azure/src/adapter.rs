//! The key-access port on the official SDK: `KeyClient` (azure_security_keyvault_keys) with a
//! `ClientSecretCredential` (azure_identity) per connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::Secret;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientGetKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use chrono::{DateTime, Utc};
use keyledger_domain::{Connection, Edek, HostAllowList, KeyIdentifier, WrappedBy, WrappedDek};
use keyledger_keys::{
    Dek, DeletedKeyRecord, KeyAccess, KeyAccessError, KeyDescription, KeyOperation, Reason, RetryPolicy,
    Retrying,
};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::errors::map_error;

/// `[keys.azure]` of CONTRACT.md.
#[derive(Clone)]
pub struct AzureConfig {
    /// Entra ID authority, e.g. `https://login.microsoftonline.com`.
    pub authority_host: String,
    /// Vault hosts requests may go to. Checked before any network call (SSRF guard).
    pub allowed_vault_hosts: HostAllowList,
    /// An extra trust root (PEM) for a private CA or the test emulator.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Per-request timeout, also enforced by [`RetryPolicy::request_timeout`].
    pub request_timeout: Duration,
    /// The SDK's check that the 401 challenge's `resource` matches the vault's domain
    /// (`KeyClientOptions::verify_challenge_resource`). On by default. It is skipped anyway for
    /// a vault at an IP address or `localhost` (an emulator, which the allow list must name
    /// exactly): no `resource` host can be a parent domain of those, so the check could only
    /// fail.
    pub verify_challenge_resource: bool,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("authority_host", &self.authority_host)
            .field("allowed_vault_hosts", &self.allowed_vault_hosts)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|p| p.len()))
            .field("request_timeout", &self.request_timeout)
            .field("verify_challenge_resource", &self.verify_challenge_resource)
            .finish()
    }
}

impl Default for AzureConfig {
    /// The public Azure cloud, its vault suffixes, 10 s per request.
    fn default() -> Self {
        Self {
            authority_host: "https://login.microsoftonline.com".into(),
            allowed_vault_hosts: HostAllowList::azure_public_clouds(),
            ca_cert_pem: None,
            request_timeout: Duration::from_secs(10),
            verify_challenge_resource: true,
        }
    }
}

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `ca_cert` is not a PEM certificate. Fix the configuration.
    #[error("ca_cert is not a valid PEM certificate")]
    BadCaCert,
    /// The HTTP client could not be created (TLS backend initialisation).
    #[error("could not build the HTTP client")]
    HttpClient,
}

/// One client per (directory, application, vault); rebuilt when the secret changes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    directory_id: String,
    application_id: String,
    vault_url: String,
}

struct CachedClient {
    secret: SecretString,
    client: Arc<KeyClient>,
    last_used: u64,
}

/// How many clients are cached by default; past it the least recently used is dropped.
pub const DEFAULT_CLIENT_CACHE_LIMIT: usize = 1024;

/// [`KeyAccess`] on the official Azure SDK. Wrap it in [`Retrying`] (see [`Self::retrying`]):
/// SDK retries are turned off so that the bound and the backoff are keyledger's.
pub struct AzureKeyAccess {
    config: AzureConfig,
    transport: Transport,
    clients: Mutex<Cache>,
    cache_limit: usize,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<CacheKey, CachedClient>,
    clock: u64,
}

impl fmt::Debug for AzureKeyAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyAccess")
            .field("config", &self.config)
            .field("cached_clients", &self.cached_clients())
            .finish_non_exhaustive()
    }
}

impl AzureKeyAccess {
    /// Over HTTPS with reqwest (rustls), trusting `ca_cert_pem` in addition to the platform's
    /// roots. Redirects are never followed, from a vault or from the token endpoint: the vault
    /// host was checked against the allow list, a redirect's target was not, and a followed
    /// token request would carry the client secret to it. A 3xx is a failure (`vault_error`).
    /// (azure_core's own reqwest client turns redirects off the same way; this one is built
    /// here for the extra trust root and the timeouts.)
    pub fn new(config: AzureConfig) -> Result<Self, BuildError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout);
        if let Some(pem) = &config.ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|_| BuildError::BadCaCert)?;
            builder = builder.tls_certs_merge([cert]);
        }
        let client = builder.build().map_err(|_| BuildError::HttpClient)?;
        Ok(Self::with_transport(config, Transport::new(Arc::new(client))))
    }

    /// With any azure_core transport (e.g. [`crate::InProcessTransport`]).
    pub fn with_transport(config: AzureConfig, transport: Transport) -> Self {
        Self {
            config,
            transport,
            clients: Mutex::default(),
            cache_limit: DEFAULT_CLIENT_CACHE_LIMIT,
        }
    }

    /// Caps the client cache (at least 1). Connections that were edited away are dropped
    /// least-recently-used first.
    pub fn with_client_cache_limit(mut self, limit: usize) -> Self {
        self.cache_limit = limit.max(1);
        self
    }

    /// `keys.vault = "simulated"` (dev mode): the official SDK against a simulated vault in
    /// process, with the public-cloud defaults (use a `*.vault.azure.net` base URL for the
    /// vault's keys, e.g. from [`keyledger_vault_sim::Vault::seed_demo`]).
    #[cfg(feature = "in-process")]
    pub fn simulated(vault: Arc<keyledger_vault_sim::Vault>) -> Self {
        Self::with_transport(
            AzureConfig::default(),
            crate::in_process::InProcessTransport::transport(vault),
        )
    }

    /// This adapter with keyledger's bounded, jittered retry and per-request timeout.
    pub fn retrying(self, mut policy: RetryPolicy) -> Retrying<Self> {
        policy.request_timeout = self.config.request_timeout;
        Retrying::new(self, policy)
    }

    pub fn config(&self) -> &AzureConfig {
        &self.config
    }

    /// How many SDK clients (each with its credential and token cache) are cached.
    pub fn cached_clients(&self) -> usize {
        self.lock().entries.len()
    }

    /// Drops the cached client and credential of `connection` (call it when a connection is
    /// edited or removed).
    pub fn evict(&self, connection: &Connection) {
        self.lock().entries.remove(&cache_key(connection));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The map holds only fully built entries; a poisoned lock still has consistent data.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The SSRF guard: the identifier's host must be on the allow list. Runs before any
    /// client is built or request sent.
    fn check_allowed(&self, id: &KeyIdentifier) -> Result<(), KeyAccessError> {
        if self.config.allowed_vault_hosts.allows(id.host(), id.port()) {
            Ok(())
        } else {
            let authority = id.vault_url();
            tracing::warn!(
                vault = %authority,
                "key vault host or port not on the allow list; no request sent"
            );
            Err(KeyAccessError::with_detail(
                Reason::KeyNotAllowed,
                format!("{authority} not allowed"),
            ))
        }
    }

    fn client(&self, connection: &Connection) -> Result<Arc<KeyClient>, KeyAccessError> {
        self.check_allowed(&connection.key_identifier)?;
        let key = cache_key(connection);
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        if let Some(c) = cache.entries.get_mut(&key)
            && c.secret.expose_secret() == connection.client_secret.expose_secret()
        {
            c.last_used = now;
            return Ok(c.client.clone());
        }
        // New connection, or the secret changed: the old credential (and its token) is dropped.
        let client = Arc::new(self.build_client(connection)?);
        cache.entries.insert(
            key,
            CachedClient {
                secret: connection.client_secret.clone(),
                client: client.clone(),
                last_used: now,
            },
        );
        while cache.entries.len() > self.cache_limit {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => cache.entries.remove(&k),
                None => break,
            };
        }
        Ok(client)
    }

    fn client_options(&self) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.config.authority_host.clone();
        ClientOptions {
            transport: Some(self.transport.clone()),
            retry: RetryOptions::none(),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..Default::default()
        }
    }

    fn build_client(&self, connection: &Connection) -> Result<KeyClient, KeyAccessError> {
        let credential = ClientSecretCredential::new(
            &connection.directory_id.to_string(),
            connection.application_id.to_string(),
            Secret::from(connection.client_secret.expose_secret().to_owned()),
            Some(ClientSecretCredentialOptions {
                client_options: self.client_options(),
            }),
        )
        .map_err(|e| map_error(KeyOperation::Get, &e))?;
        let options = KeyClientOptions {
            client_options: self.client_options(),
            verify_challenge_resource: Some(
                self.config.verify_challenge_resource
                    && !is_ip_or_localhost(connection.key_identifier.host()),
            ),
            ..Default::default()
        };
        KeyClient::new(&connection.key_identifier.vault_url(), credential, Some(options))
            .map_err(|e| map_error(KeyOperation::Get, &e))
    }

    /// Parses a `kid` from the vault and checks it names the key that was asked for.
    fn returned_key(
        &self,
        asked: &KeyIdentifier,
        kid: Option<&str>,
    ) -> Result<KeyIdentifier, KeyAccessError> {
        let bad =
            |what: &str| KeyAccessError::with_detail(Reason::VaultError, format!("vault returned {what}"));
        let kid = kid.ok_or_else(|| bad("no key id"))?;
        let parsed = KeyIdentifier::parse_shape(kid).map_err(|_| bad("a malformed key id"))?;
        let version = parsed
            .version()
            .ok_or_else(|| bad("a key id without a version"))?;
        if !parsed.name().eq_ignore_ascii_case(asked.name()) {
            return Err(bad("another key"));
        }
        if asked.version().is_some_and(|v| !v.eq_ignore_ascii_case(version)) {
            return Err(bad("another key version"));
        }
        // Keep the configured vault authority (the kid's host is the vault's own name for itself).
        asked
            .with_version(version)
            .map_err(|_| bad("an invalid key version"))
    }
}

/// A host that has no parent domain for the challenge check: an IP literal or `localhost`.
fn is_ip_or_localhost(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok()
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
}

fn cache_key(connection: &Connection) -> CacheKey {
    CacheKey {
        directory_id: connection.directory_id.to_string(),
        application_id: connection.application_id.to_string(),
        vault_url: connection.key_identifier.vault_url(),
    }
}

fn to_chrono(t: Option<time::OffsetDateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), 0))
}

fn rsa_bits(n: Option<&[u8]>) -> Option<u32> {
    let n = n?;
    let first = n.iter().position(|b| *b != 0)?;
    let significant = &n[first..];
    let whole_bytes = u32::try_from(significant.len() - 1).ok()?;
    whole_bytes
        .checked_mul(8)?
        .checked_add(8 - significant[0].leading_zeros())
}

fn parameters(value: &[u8]) -> Result<RequestContent<KeyOperationParameters>, KeyAccessError> {
    let p = KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::RsaOaep256),
        value: Some(value.to_vec()),
        ..Default::default()
    };
    p.try_into()
        .map_err(|_| KeyAccessError::with_detail(Reason::VaultError, "could not encode the request"))
}

#[async_trait]
impl KeyAccess for AzureKeyAccess {
    async fn describe(&self, connection: &Connection) -> Result<KeyDescription, KeyAccessError> {
        let client = self.client(connection)?;
        let id = &connection.key_identifier;
        let options = KeyClientGetKeyOptions {
            key_version: id.version().map(str::to_owned),
            ..Default::default()
        };
        let key = client
            .get_key(id.name(), Some(options))
            .await
            .map_err(|e| map_error(KeyOperation::Get, &e))?
            .into_model()
            .map_err(|e| map_error(KeyOperation::Get, &e))?;
        let jwk = key.key.unwrap_or_default();
        let attributes = key.attributes.unwrap_or_default();
        let key_identifier = self.returned_key(id, jwk.kid.as_deref())?;
        let kty = jwk.kty.as_ref().map(|k| k.to_string()).unwrap_or_default();
        Ok(KeyDescription {
            key_identifier,
            key_size: rsa_bits(jwk.n.as_deref()),
            kty,
            key_ops: jwk.key_ops.unwrap_or_default(),
            enabled: attributes.enabled.unwrap_or(false),
            expires_at: to_chrono(attributes.expires),
            not_before: to_chrono(attributes.not_before),
        })
    }

    async fn wrap(&self, connection: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError> {
        let client = self.client(connection)?;
        let id = &connection.key_identifier;
        let options = KeyClientWrapKeyOptions {
            key_version: id.version().map(str::to_owned),
            ..Default::default()
        };
        let result = client
            .wrap_key(id.name(), parameters(dek.expose())?, Some(options))
            .await
            .map_err(|e| map_error(KeyOperation::WrapKey, &e))?
            .into_model()
            .map_err(|e| map_error(KeyOperation::WrapKey, &e))?;
        // Pin the version the vault used: later unwraps must use exactly this one.
        let pinned = self.returned_key(id, result.kid.as_deref())?;
        let edek = result
            .result
            .ok_or_else(|| KeyAccessError::with_detail(Reason::VaultError, "wrap returned no value"))?;
        Ok(WrappedDek::attest(
            WrappedBy::Customer {
                key_identifier: pinned,
            },
            Edek(edek),
        ))
    }

    async fn unwrap(&self, connection: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError> {
        let client = self.client(connection)?;
        let id = &connection.key_identifier;
        // An empty version selects the latest, as the SDK documents; callers pass pinned ones.
        let result = client
            .unwrap_key(id.name(), id.version().unwrap_or(""), parameters(&edek.0)?, None)
            .await
            .map_err(|e| map_error(KeyOperation::UnwrapKey, &e))?
            .into_model()
            .map_err(|e| map_error(KeyOperation::UnwrapKey, &e))?;
        // Owned by a zeroizing buffer first, so it is wiped even when the kid check fails.
        let clear =
            Zeroizing::new(result.result.ok_or_else(|| {
                KeyAccessError::with_detail(Reason::VaultError, "unwrap returned no value")
            })?);
        self.returned_key(id, result.kid.as_deref())?;
        Ok(Dek::from_bytes(clear))
    }

    /// `KeyClient::get_deleted_key` (`GET deletedkeys/{name}`, which needs `keys/get`). A 404
    /// means no record: purged, or not deleted.
    async fn deleted_key(&self, connection: &Connection) -> Result<Option<DeletedKeyRecord>, KeyAccessError> {
        let client = self.client(connection)?;
        let id = &connection.key_identifier;
        let deleted = match client.get_deleted_key(id.name(), None).await {
            Ok(response) => response
                .into_model()
                .map_err(|e| map_error(KeyOperation::Get, &e))?,
            Err(e) => {
                let e = map_error(KeyOperation::Get, &e);
                return match e.reason {
                    Reason::KeyNotFound => Ok(None),
                    _ => Err(e),
                };
            }
        };
        // The record names the key's latest version, not necessarily the pinned one: check the
        // name only.
        let kid = deleted.key.and_then(|k| k.kid);
        let same_name = kid
            .as_deref()
            .and_then(|kid| KeyIdentifier::parse_shape(kid).ok())
            .is_some_and(|k| k.name().eq_ignore_ascii_case(id.name()));
        if !same_name {
            return Err(KeyAccessError::with_detail(
                Reason::VaultError,
                "vault returned another deleted key",
            ));
        }
        Ok(Some(DeletedKeyRecord {
            recovery_id: deleted.recovery_id,
            deleted_at: to_chrono(deleted.deleted_date),
            scheduled_purge_at: to_chrono(deleted.scheduled_purge_date),
        }))
    }

    /// `ClientSecretCredential` keeps its token until five minutes before it expires and offers
    /// no bypass: the cached client, with its credential, is dropped instead, so the next call
    /// builds a new credential that asks the token endpoint.
    fn forget_token(&self, connection: &Connection) {
        self.evict(connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_check_is_skipped_only_for_ip_and_localhost_hosts() {
        assert!(is_ip_or_localhost("127.0.0.1"));
        assert!(is_ip_or_localhost("[::1]"));
        assert!(is_ip_or_localhost("LOCALHOST"));
        assert!(!is_ip_or_localhost("contoso.vault.azure.net"));
        assert!(!is_ip_or_localhost("localhost.evil.example"));
    }

    #[test]
    fn rsa_bits_ignores_leading_zero_bytes() {
        let mut n = vec![0u8];
        n.extend(std::iter::repeat_n(0xFF, 256));
        assert_eq!(rsa_bits(Some(&n)), Some(2048));
        assert_eq!(rsa_bits(Some(&[0x01, 0x00])), Some(9));
        assert_eq!(rsa_bits(None), None);
    }

    #[test]
    fn config_debug_shows_no_certificate_bytes() {
        let c = AzureConfig {
            ca_cert_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            ..AzureConfig::default()
        };
        assert!(!format!("{c:?}").contains("BEGIN"));
    }
}
