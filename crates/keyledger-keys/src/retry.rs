//! Bounded retry with jittered backoff for transient reasons, and a per-request timeout.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use keyledger_domain::{Connection, Edek, WrappedDek};
use rand::Rng;

use crate::port::{Dek, DeletedKeyRecord, KeyAccess, KeyDescription};
use crate::reason::{KeyAccessError, Reason};

/// How often and how long to retry. Only transient reasons are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included. At least 1.
    pub max_attempts: u32,
    /// The backoff cap before the first retry; doubled for each later one.
    pub base_delay: Duration,
    /// No backoff is longer than this.
    pub max_delay: Duration,
    /// Each attempt is abandoned after this long, as `vault_unreachable`.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 200 ms then 400 ms caps ("full jitter"), 10 s per request (CONTRACT.md
    /// `keys.azure.request_timeout`).
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1-based): uniform in [0, min(max, base·2^(retry-1))].
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(16);
        let cap = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    /// Runs `op` with the timeout, retrying transient failures within the bound. The last
    /// failure is returned when every attempt failed.
    pub async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, KeyAccessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KeyAccessError>>,
    {
        let attempts = self.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = match tokio::time::timeout(self.request_timeout, op()).await {
                Ok(r) => r,
                Err(_) => Err(KeyAccessError::with_detail(
                    Reason::VaultUnreachable,
                    "request timed out",
                )),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < attempts => {
                    // The service's Retry-After is a floor, our max_delay the ceiling.
                    let asked = e.retry_after.unwrap_or_default().min(self.max_delay);
                    let delay = self.backoff(attempt).max(asked);
                    tracing::debug!(operation = what, attempt, reason = %e.reason, ?delay, "transient key access failure, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::debug!(operation = what, attempt, reason = %e.reason, "key access failed");
                    return Err(e);
                }
            }
        }
    }
}

/// A [`KeyAccess`] that applies a [`RetryPolicy`] to every call of the inner one.
#[derive(Debug, Clone)]
pub struct Retrying<K> {
    inner: K,
    policy: RetryPolicy,
}

impl<K> Retrying<K> {
    pub fn new(inner: K, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }
    pub fn inner(&self) -> &K {
        &self.inner
    }
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

#[async_trait]
impl<K: KeyAccess> KeyAccess for Retrying<K> {
    async fn describe(&self, connection: &Connection) -> Result<KeyDescription, KeyAccessError> {
        self.policy
            .run("describe", || self.inner.describe(connection))
            .await
    }
    async fn wrap(&self, connection: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError> {
        self.policy.run("wrap", || self.inner.wrap(connection, dek)).await
    }
    async fn unwrap(&self, connection: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError> {
        self.policy
            .run("unwrap", || self.inner.unwrap(connection, edek))
            .await
    }
    async fn deleted_key(&self, connection: &Connection) -> Result<Option<DeletedKeyRecord>, KeyAccessError> {
        self.policy
            .run("deleted_key", || self.inner.deleted_key(connection))
            .await
    }
    fn forget_token(&self, connection: &Connection) {
        self.inner.forget_token(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            request_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_is_capped_and_grows() {
        let p = policy();
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(100));
            assert!(p.backoff(2) <= Duration::from_millis(200));
            assert!(p.backoff(5) <= Duration::from_millis(300));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_up_to_the_bound() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(KeyAccessError::new(Reason::Throttled))
            })
            .await;
        assert_eq!(r.unwrap_err().reason, Reason::Throttled);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_then_success_succeeds() {
        let calls = AtomicU32::new(0);
        let r = policy()
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(KeyAccessError::new(Reason::VaultError))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_a_floor_capped_by_max_delay() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let r = policy()
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(KeyAccessError::new(Reason::Throttled).retry_after(Some(Duration::from_millis(250))))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(r.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(250));

        // A server asking for an hour does not stall us past max_delay (300 ms).
        let started = tokio::time::Instant::now();
        let _ = policy()
            .run("t", || async {
                Err::<(), _>(
                    KeyAccessError::new(Reason::Throttled).retry_after(Some(Duration::from_secs(3600))),
                )
            })
            .await;
        assert!(started.elapsed() <= Duration::from_millis(900) + Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn definitive_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(KeyAccessError::new(Reason::KeyDisabled))
            })
            .await;
        assert_eq!(r.unwrap_err().reason, Reason::KeyDisabled);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_request_times_out_as_unreachable_and_is_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(())
            })
            .await;
        assert_eq!(r.unwrap_err().reason, Reason::VaultUnreachable);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
