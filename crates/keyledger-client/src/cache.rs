//! The DEK cache: released data keys by (organization, DEK id), each kept for the release's
//! `cache_ttl_seconds`, at most `max_entries` in all (the least recently used goes first),
//! with one release call for concurrent misses of one key (single flight).
//!
//! Evicting an organization ([`DekCache::evict_org`]) drops its keys and bumps its
//! generation: a release that started before the eviction does not put its key back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use keyledger_domain::{DekId, OrgId};
use tokio::time::Instant;

use crate::ClientError;
use crate::envelope::DataKey;

/// Which key of an organization a release asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// `POST …/data-keys/active/release`.
    Active,
    /// `POST …/data-keys/{dek_id}/release`.
    Dek(DekId),
}

/// A key as a release returned it.
#[derive(Debug, Clone)]
pub(crate) struct Released {
    pub(crate) key: Arc<DataKey>,
    pub(crate) ttl: Duration,
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) key: Arc<DataKey>,
    /// The organization was evicted while the release was in flight: the key was not cached.
    pub(crate) evicted_meanwhile: bool,
}

/// No key is kept longer than this, whatever a release says.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

type Flight = Shared<BoxFuture<'static, Result<Released, ClientError>>>;

#[derive(Debug)]
struct Entry {
    key: Arc<DataKey>,
    expires_at: Instant,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(OrgId, DekId), Entry>,
    /// The active DEK an `active` release named, for organizations the directory does not
    /// know yet. Dropped with the organization's keys.
    learned_active: HashMap<OrgId, DekId>,
    generations: HashMap<OrgId, u64>,
    inflight: HashMap<(OrgId, Slot), Flight>,
    tick: u64,
}

/// The cache. Cheap to share behind an `Arc`.
pub(crate) struct DekCache {
    inner: Mutex<Inner>,
    max_entries: usize,
}

impl std::fmt::Debug for DekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("entries", &self.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl DekCache {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; a panic elsewhere cannot tear them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// The organization's generation: bumped at each eviction.
    pub(crate) fn generation(&self, org: OrgId) -> u64 {
        self.lock().generations.get(&org).copied().unwrap_or(0)
    }

    /// The active DEK learned from an `active` release, if still cached.
    pub(crate) fn learned_active(&self, org: OrgId) -> Option<DekId> {
        self.lock().learned_active.get(&org).copied()
    }

    /// Drops every key of `org` and bumps its generation. Returns how many keys went.
    pub(crate) fn evict_org(&self, org: OrgId) -> usize {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|(o, _), _| *o != org);
        inner.learned_active.remove(&org);
        // A release started before the eviction is not joined by callers after it.
        inner.inflight.retain(|(o, _), _| *o != org);
        *inner.generations.entry(org).or_insert(0) += 1;
        before - inner.entries.len()
    }

    /// The key for `slot` of `org`: from the cache, or from `release` (one call for concurrent
    /// misses). `generation` is [`DekCache::generation`] read before the caller looked at the
    /// directory: when it moved meanwhile, the released key is returned but not cached.
    pub(crate) async fn get_or_release<F, Fut>(
        &self,
        org: OrgId,
        slot: Slot,
        generation: u64,
        release: F,
    ) -> Result<Fetched, ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Released, ClientError>> + Send + 'static,
    {
        let flight = {
            let mut inner = self.lock();
            let now = Instant::now();
            if let Some(key) = inner.hit(org, slot, now) {
                return Ok(Fetched {
                    key,
                    evicted_meanwhile: false,
                });
            }
            match inner.inflight.get(&(org, slot)) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = release().boxed().shared();
                    inner.inflight.insert((org, slot), flight.clone());
                    flight
                }
            }
        };
        let result = flight.clone().await;
        let mut inner = self.lock();
        if inner
            .inflight
            .get(&(org, slot))
            .is_some_and(|f| f.ptr_eq(&flight))
        {
            inner.inflight.remove(&(org, slot));
        }
        let released = result?;
        let current = inner.generations.get(&org).copied().unwrap_or(0);
        if current != generation {
            return Ok(Fetched {
                key: released.key,
                evicted_meanwhile: true,
            });
        }
        let id = released.key.id();
        if slot == Slot::Active {
            inner.learned_active.insert(org, id);
        }
        inner.tick += 1;
        let tick = inner.tick;
        let now = Instant::now();
        let Some(expires_at) = now.checked_add(released.ttl.min(MAX_TTL)) else {
            return Ok(Fetched {
                key: released.key,
                evicted_meanwhile: false,
            });
        };
        inner.entries.insert(
            (org, id),
            Entry {
                key: released.key.clone(),
                expires_at,
                last_used: tick,
            },
        );
        inner.bound(self.max_entries, now);
        Ok(Fetched {
            key: released.key,
            evicted_meanwhile: false,
        })
    }
}

impl Inner {
    fn hit(&mut self, org: OrgId, slot: Slot, now: Instant) -> Option<Arc<DataKey>> {
        let id = match slot {
            Slot::Dek(id) => id,
            Slot::Active => *self.learned_active.get(&org)?,
        };
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(&(org, id)) {
            Some(e) if e.expires_at > now => {
                e.last_used = tick;
                Some(e.key.clone())
            }
            Some(_) => {
                self.entries.remove(&(org, id));
                None
            }
            None => None,
        }
    }

    /// Drops expired keys, then the least recently used, until at most `max` remain.
    fn bound(&mut self, max: usize, now: Instant) {
        if self.entries.len() <= max {
            return;
        }
        self.entries.retain(|_, e| e.expires_at > now);
        while self.entries.len() > max {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(id: u32) -> Released {
        Released {
            key: Arc::new(DataKey::new(DekId(id), &[id.to_le_bytes()[0]; 32]).unwrap()),
            ttl: Duration::from_secs(60),
        }
    }

    fn org(n: u8) -> OrgId {
        format!("01900000-0000-7000-8000-0000000000{n:02x}")
            .parse()
            .unwrap()
    }

    async fn get(
        cache: &DekCache,
        o: OrgId,
        slot: Slot,
        calls: &Arc<AtomicUsize>,
    ) -> Result<Fetched, ClientError> {
        let calls = calls.clone();
        let id = match slot {
            Slot::Dek(id) => id.0,
            Slot::Active => 7,
        };
        let generation = cache.generation(o);
        cache
            .get_or_release(o, slot, generation, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(key(id))
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_makes_no_call_until_the_ttl_ends() {
        let cache = DekCache::new(10);
        let calls = Arc::new(AtomicUsize::new(0));
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "expired after the release's ttl");
    }

    #[tokio::test(start_paused = true)]
    async fn the_entry_count_is_bounded_least_recently_used_first() {
        let cache = DekCache::new(2);
        let calls = Arc::new(AtomicUsize::new(0));
        for id in [1, 2] {
            get(&cache, org(1), Slot::Dek(DekId(id)), &calls).await.unwrap();
        }
        // Use 1, so 2 is the least recently used.
        get(&cache, org(1), Slot::Dek(DekId(1)), &calls).await.unwrap();
        get(&cache, org(1), Slot::Dek(DekId(3)), &calls).await.unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        get(&cache, org(1), Slot::Dek(DekId(1)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "1 stayed");
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "2 was dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_make_one_release_call() {
        let cache = Arc::new(DekCache::new(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let generation = cache.generation(org(1));
                cache
                    .get_or_release(org(1), Slot::Dek(DekId(4)), generation, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(key(4))
                    })
                    .await
                    .map(|f| f.key.id())
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), DekId(4));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_release_is_shared_then_retried() {
        let cache = DekCache::new(10);
        let e = cache
            .get_or_release(org(1), Slot::Active, 0, || async {
                Err(ClientError::Unavailable { retry_after: None })
            })
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unavailable { .. }));
        let calls = Arc::new(AtomicUsize::new(0));
        get(&cache, org(1), Slot::Active, &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the failure was not cached");
    }

    #[tokio::test]
    async fn an_active_release_teaches_the_active_dek() {
        let cache = DekCache::new(10);
        let calls = Arc::new(AtomicUsize::new(0));
        get(&cache, org(1), Slot::Active, &calls).await.unwrap();
        assert_eq!(cache.learned_active(org(1)), Some(DekId(7)));
        get(&cache, org(1), Slot::Active, &calls).await.unwrap();
        get(&cache, org(1), Slot::Dek(DekId(7)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn eviction_drops_only_that_org() {
        let cache = DekCache::new(10);
        let calls = Arc::new(AtomicUsize::new(0));
        get(&cache, org(1), Slot::Active, &calls).await.unwrap();
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        get(&cache, org(2), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(cache.evict_org(org(1)), 2);
        assert_eq!(cache.learned_active(org(1)), None);
        assert_eq!(cache.len(), 1);
        get(&cache, org(2), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        get(&cache, org(1), Slot::Dek(DekId(2)), &calls).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_release_in_flight_during_an_eviction_is_not_cached() {
        let cache = Arc::new(DekCache::new(10));
        let generation = cache.generation(org(1));
        let evicting = cache.clone();
        let fetched = cache
            .get_or_release(org(1), Slot::Dek(DekId(2)), generation, move || async move {
                evicting.evict_org(org(1));
                Ok(key(2))
            })
            .await
            .unwrap();
        assert!(fetched.evicted_meanwhile);
        assert_eq!(cache.len(), 0);
    }
}
