//! [`Client`]: the directory, the cache and the release calls behind `encrypt` / `decrypt`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use keyledger_domain::{DekId, OrgId};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use url::Url;
use zeroize::Zeroizing;

use crate::cache::{DekCache, Fetched, Released, Slot};
use crate::directory::{Applied, CloudEvent, Eviction, KeyDirectory, OrgKeys};
use crate::envelope::{self, DataKey};
use crate::error::{BuildError, ClientError};
use crate::position::{Checkpoint, FilePositionStore, PositionStore};

/// The default checkpoint file, relative to the working directory.
pub const DEFAULT_POSITION_FILE: &str = "keyledger-client.position.json";

/// How the client behaves; every field has a default ([`ClientBuilder`] sets them).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// At most this many DEKs are cached (the least recently used goes first). Default 10 000.
    pub max_cached_keys: usize,
    /// A cap on the release's `cache_ttl_seconds`. Default: none (the release decides).
    pub max_cache_ttl: Option<Duration>,
    /// The first reconnect delay; it doubles up to `max_backoff`, with jitter. Default 100 ms.
    pub min_backoff: Duration,
    /// Default 30 s.
    pub max_backoff: Duration,
    /// A stream silent this long (no event, no heartbeat) is dropped and reopened. keyledger
    /// sends a heartbeat every 15 s. Default 45 s.
    pub idle_timeout: Duration,
    /// The checkpoint is saved once the stream has paused this long after an event.
    /// Default 250 ms.
    pub checkpoint_delay: Duration,
    /// Timeout of one release call. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_cached_keys: 10_000,
            max_cache_ttl: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(45),
            checkpoint_delay: Duration::from_millis(250),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Builds a [`Client`]: `Client::builder(base_url, token)`.
pub struct ClientBuilder {
    base_url: String,
    token: SecretString,
    ca_certs: Vec<Vec<u8>>,
    position_store: Option<Arc<dyn PositionStore>>,
    config: ClientConfig,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &"[redacted]")
            .field("ca_certs", &self.ca_certs.len())
            .field("position_store", &self.position_store)
            .field("config", &self.config)
            .finish()
    }
}

impl ClientBuilder {
    /// Trusts this root CA (PEM) too, for a keyledger served with a private CA.
    pub fn ca_cert_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_certs.push(pem.as_ref().to_vec());
        self
    }

    /// Where the consumer keeps its checkpoint. Default: a [`FilePositionStore`] at
    /// [`DEFAULT_POSITION_FILE`] in the working directory.
    pub fn position_store(mut self, store: impl PositionStore) -> Self {
        self.position_store = Some(Arc::new(store));
        self
    }

    /// [`ClientBuilder::position_store`] with a [`FilePositionStore`] at `path`.
    pub fn position_file(self, path: impl Into<PathBuf>) -> Self {
        self.position_store(FilePositionStore::new(path))
    }

    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    pub fn max_cached_keys(mut self, n: usize) -> Self {
        self.config.max_cached_keys = n;
        self
    }

    pub fn max_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.max_cache_ttl = Some(ttl);
        self
    }

    /// Reconnect backoff: from `min`, doubling up to `max`, with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        // A zero delay would retry a refusing server in a busy loop.
        self.config.min_backoff = min.max(Duration::from_millis(1));
        self.config.max_backoff = max.max(self.config.min_backoff);
        self
    }

    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Builds the client and loads the checkpoint (a checkpoint of another base URL is
    /// ignored). The consumer is not started: see [`Client::spawn_consumer`].
    pub fn build(self) -> Result<Client, BuildError> {
        let base = parse_base(&self.base_url)?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("keyledger-client/", env!("CARGO_PKG_VERSION")));
        if !self.ca_certs.is_empty() {
            let mut certs = Vec::new();
            for pem in &self.ca_certs {
                let bundle = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| BuildError::CaCert)?;
                if bundle.is_empty() {
                    return Err(BuildError::CaCert);
                }
                certs.extend(bundle);
            }
            http = http.tls_certs_merge(certs);
        }
        let http = http.build().map_err(|e| BuildError::Http(e.to_string()))?;
        let store = match self.position_store {
            Some(store) => store,
            None => Arc::new(FilePositionStore::new(DEFAULT_POSITION_FILE)),
        };
        let folded = match store.load().map_err(BuildError::PositionStore)? {
            Some(c) if c.base_url == base.as_str() => Folded {
                position: c.position,
                directory: c.directory,
            },
            Some(c) => {
                tracing::warn!(checkpoint_base_url = %c.base_url, base_url = %base,
                    "the checkpoint is of another keyledger; starting from the beginning");
                Folded::default()
            }
            None => Folded::default(),
        };
        let (applied, _) = watch::channel(folded.position);
        let (changes, _) = broadcast::channel(1024);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                token: self.token,
                cache: DekCache::new(self.config.max_cached_keys),
                folded: Mutex::new(folded),
                applied,
                changes,
                evictions: AtomicU64::new(0),
                releases: AtomicU64::new(0),
                store,
                config: self.config,
            }),
        })
    }
}

fn parse_base(s: &str) -> Result<Url, BuildError> {
    let mut url = Url::parse(s).map_err(|e| BuildError::BaseUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BuildError::BaseUrl("the scheme must be http or https".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BuildError::BaseUrl(
            "a user or password in the URL is not accepted (the token authenticates)".into(),
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// A change the directory applied, as [`Client::subscribe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryChange {
    /// The stream position of the event.
    pub position: u64,
    pub org: OrgId,
    /// Set when the organization's cached DEKs were evicted.
    pub eviction: Option<Eviction>,
    /// How many cached DEKs went.
    pub evicted_keys: usize,
    /// When the directory applied it (and evicted): for eviction-latency measurements.
    pub applied_at: std::time::Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Folded {
    pub(crate) position: u64,
    pub(crate) directory: KeyDirectory,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Url,
    pub(crate) token: SecretString,
    pub(crate) cache: DekCache,
    pub(crate) folded: Mutex<Folded>,
    pub(crate) applied: watch::Sender<u64>,
    pub(crate) changes: broadcast::Sender<DirectoryChange>,
    pub(crate) evictions: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) store: Arc<dyn PositionStore>,
    pub(crate) config: ClientConfig,
}

/// What a platform service holds: encrypt and decrypt under an organization's DEKs, with
/// the key directory kept current by the stream consumer. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("token", &"[redacted]")
            .field("position", &self.position())
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `base_url` is keyledger's root (`https://keyledger.example.com`); `token` a bearer token
    /// of role `platform`.
    pub fn builder(base_url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: SecretString::from(token.into()),
            ca_certs: Vec::new(),
            position_store: None,
            config: ClientConfig::default(),
        }
    }

    /// Seals `plaintext` for `org` under its active DEK, bound to `context` (see
    /// [`crate::envelope`]). When the directory does not know the organization yet, the
    /// active DEK is released and its id learned from the answer.
    pub async fn encrypt(
        &self,
        org: OrgId,
        plaintext: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let generation = self.inner.cache.generation(org);
        let keys = self.org_keys(org);
        let slot = match keys.as_ref().and_then(|k| k.active_dek) {
            Some(id) => Slot::Dek(id),
            None => self
                .inner
                .cache
                .learned_active(org)
                .map_or(Slot::Active, Slot::Dek),
        };
        self.check(org, keys.as_ref(), slot)?;
        let fetched = self.key(org, slot, generation).await?;
        let key = self.recheck(org, fetched)?;
        Ok(envelope::seal(org, &key, plaintext, context)?)
    }

    /// Opens `ciphertext` sealed for `org` with `context`, releasing the DEK it names on a
    /// miss. The plaintext is wiped when it drops.
    pub async fn decrypt(
        &self,
        org: OrgId,
        ciphertext: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let dek = envelope::dek_of(ciphertext)?;
        let generation = self.inner.cache.generation(org);
        let keys = self.org_keys(org);
        let slot = Slot::Dek(dek);
        self.check(org, keys.as_ref(), slot)?;
        let fetched = self.key(org, slot, generation).await?;
        let key = self.recheck(org, fetched)?;
        Ok(Zeroizing::new(envelope::open(org, &key, ciphertext, context)?))
    }

    /// What the directory knows about `org` (`None` before any of its events).
    pub fn org_keys(&self, org: OrgId) -> Option<OrgKeys> {
        self.folded().directory.org(org).cloned()
    }

    /// The last stream position applied.
    pub fn position(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Waits until the consumer has applied position `position` (or later).
    pub async fn caught_up(&self, position: u64) {
        let mut rx = self.inner.applied.subscribe();
        // The sender lives in `self`: `wait_for` cannot see it closed.
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    /// A watch of the last position applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Every directory change from now on, with its eviction if any (a lagging receiver
    /// loses the oldest: see [`broadcast`]).
    pub fn subscribe(&self) -> broadcast::Receiver<DirectoryChange> {
        self.inner.changes.subscribe()
    }

    /// How many organization evictions the directory has triggered.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    /// How many release calls this client made.
    pub fn releases(&self) -> u64 {
        self.inner.releases.load(Ordering::Relaxed)
    }

    /// How many DEKs are cached now.
    pub fn cached_keys(&self) -> usize {
        self.inner.cache.len()
    }

    pub(crate) fn folded(&self) -> MutexGuard<'_, Folded> {
        // Each apply leaves the directory whole; a panic elsewhere cannot tear it.
        self.inner.folded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one CloudEvent at `position` and evicts as it says.
    pub(crate) fn apply(&self, position: u64, event: &CloudEvent) {
        let applied = {
            let mut folded = self.folded();
            if position <= folded.position {
                return;
            }
            folded.position = position;
            folded.directory.apply(event)
        };
        if let Applied::Org { org, eviction } = applied {
            // After the directory changed, so a caller that read the old directory sees the
            // generation move (see `DekCache::get_or_release`).
            let evicted_keys = match eviction {
                Some(_) => {
                    self.inner.evictions.fetch_add(1, Ordering::Relaxed);
                    self.inner.cache.evict_org(org)
                }
                None => 0,
            };
            if let Some(reason) = eviction {
                tracing::info!(%org, position, ?reason, evicted_keys, "evicted the organization's data keys");
            }
            let _ = self.inner.changes.send(DirectoryChange {
                position,
                org,
                eviction,
                evicted_keys,
                applied_at: std::time::Instant::now(),
            });
        }
        self.inner.applied.send_replace(position);
    }

    /// The checkpoint of what is applied now.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        let folded = self.folded();
        Checkpoint {
            base_url: self.inner.base.to_string(),
            position: folded.position,
            directory: folded.directory.clone(),
        }
    }

    /// Fails fast from the directory: a lost DEK (final, so it comes first), or a revoked key.
    fn check(&self, org: OrgId, keys: Option<&OrgKeys>, slot: Slot) -> Result<(), ClientError> {
        let Some(keys) = keys else { return Ok(()) };
        let dek = match slot {
            Slot::Dek(id) => Some(id),
            Slot::Active => keys.active_dek,
        };
        if let Some(id) = dek
            && keys.lost_dek_ids.contains(&id)
        {
            return Err(ClientError::DataLost {
                org,
                dek_id: Some(id),
            });
        }
        if let Some(status) = keys.revoked_status() {
            return Err(ClientError::KeyRevoked { org, status });
        }
        Ok(())
    }

    /// After a release that raced an eviction: fail as the directory now says.
    fn recheck(&self, org: OrgId, fetched: Fetched) -> Result<Arc<DataKey>, ClientError> {
        if fetched.evicted_meanwhile {
            let keys = self.org_keys(org);
            self.check(org, keys.as_ref(), Slot::Dek(fetched.key.id()))?;
        }
        Ok(fetched.key)
    }

    async fn key(&self, org: OrgId, slot: Slot, generation: u64) -> Result<Fetched, ClientError> {
        let inner = self.inner.clone();
        self.inner
            .cache
            .get_or_release(org, slot, generation, move || release(inner, org, slot))
            .await
    }
}

/// The 200 body of a release. `key` is moved into a wiped buffer at once.
#[derive(Deserialize)]
struct ReleaseBody {
    dek_id: u32,
    key: String,
    #[serde(default)]
    cache_ttl_seconds: Option<u64>,
}

/// A problem+json body: the fields the client reads.
#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST {base}/v1/organizations/{org}/data-keys/{active|dek_id}/release`.
async fn release(inner: Arc<Inner>, org: OrgId, slot: Slot) -> Result<Released, ClientError> {
    let which = match slot {
        Slot::Active => "active".to_owned(),
        Slot::Dek(id) => id.0.to_string(),
    };
    let url = inner
        .base
        .join(&format!("v1/organizations/{org}/data-keys/{which}/release"))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    inner.releases.fetch_add(1, Ordering::Relaxed);
    let response = inner
        .http
        .post(url)
        .bearer_auth(inner.token.expose_secret())
        .timeout(inner.config.request_timeout)
        .send()
        .await
        .map_err(http_error)?;
    let status = response.status();
    if status.is_success() {
        let body = Zeroizing::new(Vec::from(response.bytes().await.map_err(http_error)?));
        let parsed: ReleaseBody = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("release body: {}", e.classify_name())))?;
        let encoded = Zeroizing::new(parsed.key);
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|_| ClientError::Protocol("the released key is not base64".into()))?,
        );
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
            decoded
                .as_slice()
                .try_into()
                .map_err(|_| ClientError::Protocol("the released key is not 32 bytes".into()))?,
        );
        let id = DekId(parsed.dek_id);
        if let Slot::Dek(asked) = slot
            && asked != id
        {
            return Err(ClientError::Protocol(format!(
                "asked for DEK {asked}, keyledger released DEK {id}"
            )));
        }
        let key = DataKey::new(id, &bytes)?;
        let mut ttl = Duration::from_secs(parsed.cache_ttl_seconds.unwrap_or(0));
        if let Some(max) = inner.config.max_cache_ttl {
            ttl = ttl.min(max);
        }
        return Ok(Released {
            key: Arc::new(key),
            ttl,
        });
    }
    let retry_after = retry_after(&response);
    let problem: Problem = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Err(refusal(org, slot, status.as_u16(), problem, retry_after))
}

fn refusal(
    org: OrgId,
    slot: Slot,
    status: u16,
    problem: Problem,
    retry_after: Option<Duration>,
) -> ClientError {
    let dek_id = match slot {
        Slot::Dek(id) => Some(id),
        Slot::Active => None,
    };
    match (status, problem.code.as_deref()) {
        (409, Some("key_unavailable")) => ClientError::KeyUnavailable {
            reason: problem.reason.unwrap_or_else(|| "unknown".into()),
        },
        (409, Some("data_lost")) => ClientError::DataLost { org, dek_id },
        (503, _) => ClientError::Unavailable { retry_after },
        (404, Some("organization_not_found")) => ClientError::OrganizationNotFound { org },
        (401 | 403, _) => ClientError::Unauthorized { status },
        (_, code) => ClientError::Http {
            status: Some(status),
            message: format!("HTTP {status} {}", code.unwrap_or("(no problem code)")),
        },
    }
}

/// A transport error, without its URL (which names the organization but nothing secret; kept
/// out anyway so messages stay short and uniform).
pub(crate) fn http_error(e: reqwest::Error) -> ClientError {
    let status = e.status().map(|s| s.as_u16());
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Http { status, message }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// The kind of a JSON error without its text (which could quote the key).
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected fields or types",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// A response's `Retry-After` in seconds, if it has one.
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::MemoryPositionStore;
    use keyledger_domain::testing;
    use keyledger_domain::{Event, HealthStatus};

    fn cloud_event(event: &Event) -> CloudEvent {
        serde_json::from_value(serde_json::json!({
            "source": format!("keyledger/organizations/{}", testing::org_id()),
            "type": format!("keyledger.{}.v1", event.event_type()),
            "data": event.public_payload(),
        }))
        .unwrap()
    }

    /// A client whose keyledger is not there: any release call fails with `Http`.
    fn offline() -> Client {
        Client::builder("http://127.0.0.1:9", "token")
            .position_store(MemoryPositionStore::new())
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_revoked_org_fails_fast_and_a_lost_dek_fails_without_a_release_call() {
        let client = offline();
        let events = testing::cmk_org()
            .health(HealthStatus::PermissionDenied)
            .health(HealthStatus::KeyNotFound)
            .events();
        let lost = testing::cmk_org()
            .health(HealthStatus::PermissionDenied)
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .events();
        for (i, e) in events.iter().enumerate() {
            client.apply(u64::try_from(i).unwrap() + 1, &cloud_event(e));
        }
        let org = testing::org_id();
        let revoked = ClientError::KeyRevoked {
            org,
            status: HealthStatus::KeyNotFound,
        };
        assert_eq!(client.encrypt(org, b"x", b"c").await.unwrap_err(), revoked);
        let key = DataKey::new(DekId(2), &[1; 32]).unwrap();
        let sealed = envelope::seal(org, &key, b"x", b"c").unwrap();
        assert_eq!(client.decrypt(org, &sealed, b"c").await.unwrap_err(), revoked);
        // Declared lost: the loss is final and says more than the revocation.
        client.apply(50, &cloud_event(lost.last().unwrap()));
        let dek_lost = ClientError::DataLost {
            org,
            dek_id: Some(DekId(2)),
        };
        assert_eq!(client.encrypt(org, b"x", b"c").await.unwrap_err(), dek_lost);
        assert_eq!(client.decrypt(org, &sealed, b"c").await.unwrap_err(), dek_lost);
        assert_eq!(client.releases(), 0);

        // Out of the revoked class: DEK 2 is lost, still no call.
        let healthy = testing::cmk_org()
            .health(HealthStatus::KeyNotFound)
            .health(HealthStatus::Healthy)
            .events();
        client.apply(100, &cloud_event(&healthy[healthy.len() - 1]));
        assert_eq!(
            client.decrypt(org, &sealed, b"c").await.unwrap_err(),
            ClientError::DataLost {
                org,
                dek_id: Some(DekId(2))
            }
        );
        assert_eq!(client.releases(), 0);
        // DEK 1 (provider-wrapped, not lost) is asked for.
        let key = DataKey::new(DekId(1), &[1; 32]).unwrap();
        let sealed = envelope::seal(org, &key, b"x", b"c").unwrap();
        assert!(matches!(
            client.decrypt(org, &sealed, b"c").await.unwrap_err(),
            ClientError::Http { status: None, .. }
        ));
        assert_eq!(client.releases(), 1);
    }

    #[tokio::test]
    async fn positions_apply_once_in_order() {
        let client = offline();
        let events = testing::cmk_org().events();
        let mut changes = client.subscribe();
        client.apply(2, &cloud_event(&events[0]));
        client.apply(2, &cloud_event(&events[0]));
        client.apply(1, &cloud_event(&events[0]));
        assert_eq!(client.position(), 2);
        assert_eq!(changes.try_recv().unwrap().position, 2);
        assert!(
            changes.try_recv().is_err(),
            "a position at or below the last is skipped"
        );
    }

    #[test]
    fn a_base_url_with_credentials_or_another_scheme_is_refused() {
        for bad in ["ftp://k.example", "https://user:pw@k.example", "not a url"] {
            assert!(matches!(
                Client::builder(bad, "t")
                    .position_store(MemoryPositionStore::new())
                    .build(),
                Err(BuildError::BaseUrl(_))
            ));
        }
        let c = Client::builder("https://k.example/prefix", "t")
            .position_store(MemoryPositionStore::new())
            .build()
            .unwrap();
        assert_eq!(c.inner.base.as_str(), "https://k.example/prefix/");
    }
}
