//! Releasing DEKs to platform services (CONTRACT.md "Data keys for platform services"): the
//! domain's rules ([`plan_release`]), the unwrap (in the customer's vault, merged across
//! concurrent callers, or with the internal key ring), and the record of every release in
//! the organization's release stream before the key leaves (ADR 0030).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use keyledger_domain::event::DataKeyReleased;
use keyledger_domain::{
    Actor, CorrelationId, DekId, Event, OrgId, ReleaseOf, StreamId, StreamVersion, Unwrap, WrappedBy,
    plan_release,
};
use keyledger_keys::{Dek, KeyAccessError};
use keyledger_store::envelope::{EnvelopeActor, EventMetadata};
use keyledger_store::{NewEvent, StoreError, provider};
use tokio::sync::{OnceCell, oneshot};

use crate::error::AppError;
use crate::service::{App, Appended};

/// A platform service's request for a DEK.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    pub org_id: OrgId,
    pub actor: Actor,
    pub of: ReleaseOf,
    /// The client address, recorded in the release's envelope.
    pub source_ip: Option<String>,
    pub correlation_id: Option<CorrelationId>,
}

/// A released DEK, recorded. Its Debug output hides the key.
#[derive(Debug)]
pub struct Released {
    pub dek_id: DekId,
    pub key: Dek,
    pub wrapped_by: WrappedBy,
}

impl App {
    /// Releases a DEK: the domain's rules, the unwrap, then the record; the key is returned
    /// only once its record is stored. Refusals: [`AppError::Rejected`] (forbidden, not found,
    /// `data_lost`, `key_unavailable` for a revoked key), [`AppError::KeyUnavailable`] when
    /// the vault refuses now, [`AppError::VaultUnavailable`] for a transient failure.
    pub async fn release(&self, request: ReleaseRequest) -> Result<Released, AppError> {
        let org = request.org_id;
        let state = self.state(org).await?;
        let release = plan_release(&state, &request.actor, org, request.of)?;
        let key = match &release.unwrap {
            Unwrap::Provider { internal_key_id } => {
                let clear = provider::unwrap_dek(
                    self.store().key_ring(),
                    org,
                    release.dek_id,
                    internal_key_id,
                    &release.edek,
                )
                .map_err(|e| {
                    tracing::error!(%org, dek_id = %release.dek_id, error = %e, "a provider-wrapped DEK does not unwrap");
                    AppError::Internal("a provider-wrapped DEK does not unwrap")
                })?;
                Dek::from_bytes(clear)
            }
            Unwrap::Customer { connection } => {
                let flight = Flight {
                    org,
                    dek_id: release.dek_id,
                    key: connection.key_identifier.to_string(),
                };
                let unwrap = self.keys().unwrap(connection, &release.edek);
                let unwrapped = match self.config().release_single_flight {
                    true => self.flights().join(flight, unwrap).await,
                    false => unwrap.await,
                };
                unwrapped.map_err(AppError::from_release)?
            }
        };
        let event = Event::DataKeyReleased(DataKeyReleased {
            dek_id: release.dek_id,
            wrapped_by: release.wrapped_by.clone(),
            active: request.of == ReleaseOf::Active,
        });
        let metadata = EventMetadata {
            occurred_at: self.clock().now(),
            actor: EnvelopeActor::from_actor(&request.actor, request.source_ip.clone()),
            correlation_id: request.correlation_id,
            causation_id: None,
        };
        self.release_log()
            .record(self, org, NewEvent { event, metadata })
            .await?;
        Ok(Released {
            dek_id: release.dek_id,
            key,
            wrapped_by: release.wrapped_by,
        })
    }
}

impl AppError {
    /// A vault's answer to a release's unwrap: a transient failure is a 503, any other
    /// refusal is the customer's (409 `key_unavailable`).
    fn from_release(error: KeyAccessError) -> Self {
        match error.reason.is_transient() {
            true => Self::from_key(crate::KeyRole::Old, error, Vec::new()),
            false => AppError::KeyUnavailable { error },
        }
    }
}

/// What concurrent unwraps are merged on: the same DEK of the same organization under the
/// same key version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Flight {
    org: OrgId,
    dek_id: DekId,
    key: String,
}

type Shared = Arc<OnceCell<Result<Dek, KeyAccessError>>>;

/// Single flight for vault unwraps: while one unwrap of a DEK is under way, other releases
/// of it wait for its answer instead of calling the vault again. A finished flight is
/// forgotten, so every later release asks the vault afresh: the customer can refuse at any
/// time.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    under_way: Mutex<HashMap<Flight, Shared>>,
}

impl Flights {
    async fn join(
        &self,
        flight: Flight,
        call: impl Future<Output = Result<Dek, KeyAccessError>>,
    ) -> Result<Dek, KeyAccessError> {
        let (shared, _leader) = {
            let mut under_way = self.under_way.lock().unwrap_or_else(|p| p.into_inner());
            match under_way.get(&flight) {
                Some(shared) => (shared.clone(), None),
                None => {
                    let shared = Shared::default();
                    under_way.insert(flight.clone(), shared.clone());
                    // Forgets the flight when the leader is done, or dropped (its caller went
                    // away): a follower then makes the call itself.
                    let leader = Leader {
                        flights: self,
                        flight,
                        shared: shared.clone(),
                    };
                    (shared, Some(leader))
                }
            }
        };
        shared.get_or_init(|| call).await.clone()
    }

    #[cfg(test)]
    fn under_way(&self) -> usize {
        self.under_way.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

struct Leader<'a> {
    flights: &'a Flights,
    flight: Flight,
    shared: Shared,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut under_way = self.flights.under_way.lock().unwrap_or_else(|p| p.into_inner());
        if under_way
            .get(&self.flight)
            .is_some_and(|s| Arc::ptr_eq(s, &self.shared))
        {
            under_way.remove(&self.flight);
        }
    }
}

/// The record of releases: per organization, releases that arrive while one append is under
/// way are appended together by the next one (group commit), so concurrent releases of one
/// organization neither conflict nor wait for one append each. Appends to different
/// organizations run side by side (and the store commits them together).
#[derive(Debug, Default)]
pub(crate) struct ReleaseLog {
    queues: Mutex<HashMap<OrgId, Arc<Queue>>>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Vec<Pending>>,
    /// Held while appending; the version the release stream was last seen at.
    writer: tokio::sync::Mutex<StreamVersion>,
}

#[derive(Debug)]
struct Pending {
    event: NewEvent,
    done: oneshot::Sender<Result<(), Failed>>,
}

/// Why an append of releases failed, for every release in it.
#[derive(Debug, Clone, Copy)]
enum Failed {
    /// The store gave no connection in time (503).
    Unavailable,
    /// Logged by the writer (500).
    Other,
}

/// How often the writer re-reads the stream's version after losing a race (another instance
/// appended releases of the same organization).
const MAX_RELEASE_CONFLICTS: usize = 16;

impl ReleaseLog {
    /// Records `event` in `org`'s release stream; answers once it is stored.
    async fn record(&self, app: &App, org: OrgId, event: NewEvent) -> Result<(), AppError> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            if queues.len() >= app.config().cache_capacity && !queues.contains_key(&org) {
                queues.retain(|_, q| Arc::strong_count(q) > 1);
            }
            queues.entry(org).or_default().clone()
        };
        let (done, mut answer) = oneshot::channel();
        queue
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending { event, done });
        // Either another writer's append answers this release, or this caller becomes the
        // writer and appends everything queued. A release answered by another append does
        // not wait for the writer lock (that would make it wait for the next append too).
        let answered = tokio::select! {
            biased;
            answered = &mut answer => answered,
            mut version = queue.writer.lock() => {
                let batch = std::mem::take(&mut *queue.pending.lock().unwrap_or_else(|p| p.into_inner()));
                // Empty when an earlier writer took this release with its batch (and answered it).
                if !batch.is_empty() {
                    write(app, org, &mut version, batch).await;
                }
                drop(version);
                answer.await
            }
        };
        match answered {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Failed::Unavailable)) => Err(AppError::Store(StoreError::Unavailable(
                "no connection to the event store in time to record the release".into(),
            ))),
            Ok(Err(Failed::Other)) | Err(_) => Err(AppError::Internal("the release could not be recorded")),
        }
    }
}

/// Appends `batch` to `org`'s release stream and answers each release in it.
async fn write(app: &App, org: OrgId, version: &mut StreamVersion, batch: Vec<Pending>) {
    let stream = StreamId::releases_of(org);
    let (events, waiting): (Vec<NewEvent>, Vec<_>) = batch.into_iter().map(|p| (p.event, p.done)).unzip();
    let mut outcome = Err(Failed::Other);
    for _ in 0..MAX_RELEASE_CONFLICTS {
        match app.append_to(stream, *version, events.clone(), None).await {
            Ok(Appended::Stored(result)) => {
                *version = result.last_version;
                outcome = Ok(());
                break;
            }
            Ok(Appended::Behind { actual }) => *version = actual,
            Err(AppError::Store(StoreError::Unavailable(cause))) => {
                tracing::warn!(%org, error = %cause, "releases not recorded: no event-store connection in time");
                outcome = Err(Failed::Unavailable);
                break;
            }
            Err(e) => {
                tracing::error!(%org, error = %e, "releases could not be recorded");
                break;
            }
        }
    }
    for done in waiting {
        // A caller that went away does not take its release back: it is recorded.
        let _ = done.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use keyledger_keys::Reason;
    use zeroize::Zeroizing;

    use super::*;

    fn flight() -> Flight {
        Flight {
            org: OrgId::new_v7(),
            dek_id: DekId(2),
            key: "https://contoso.vault.azure.net/keys/cmk/v1".into(),
        }
    }

    async fn slow_unwrap(calls: &AtomicUsize, answer: Result<u8, Reason>) -> Result<Dek, KeyAccessError> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer
            .map(|b| Dek::from_bytes(Zeroizing::new(vec![b; 32])))
            .map_err(KeyAccessError::new)
    }

    #[tokio::test]
    async fn concurrent_unwraps_of_one_dek_make_one_call_and_later_ones_call_again() {
        let flights = Flights::default();
        let calls = AtomicUsize::new(0);
        let f = flight();
        let all =
            futures::future::join_all((0..8).map(|_| flights.join(f.clone(), slow_unwrap(&calls, Ok(7)))))
                .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(all.iter().all(|r| r.as_ref().unwrap().expose() == [7; 32]));
        assert_eq!(flights.under_way(), 0, "a finished flight is forgotten");
        // The customer can refuse the next release.
        let refused = flights
            .join(f, slow_unwrap(&calls, Err(Reason::KeyDisabled)))
            .await;
        assert_eq!(refused.unwrap_err().reason, Reason::KeyDisabled);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_deks_fly_separately() {
        let flights = Flights::default();
        let calls = AtomicUsize::new(0);
        let a = flight();
        let b = Flight {
            dek_id: DekId(3),
            ..a.clone()
        };
        let (x, y) = tokio::join!(
            flights.join(a, slow_unwrap(&calls, Ok(1))),
            flights.join(b, slow_unwrap(&calls, Ok(2)))
        );
        assert_eq!((x.unwrap().expose()[0], y.unwrap().expose()[0]), (1, 2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dropped_leader_leaves_no_stale_flight() {
        let flights = Flights::default();
        let calls = AtomicUsize::new(0);
        let f = flight();
        let leader = flights.join(f.clone(), slow_unwrap(&calls, Ok(1)));
        // The leader's caller goes away mid-call.
        let _ = tokio::time::timeout(Duration::from_millis(10), leader).await;
        assert_eq!(flights.under_way(), 0);
        let next = flights.join(f, slow_unwrap(&calls, Ok(2))).await.unwrap();
        assert_eq!(next.expose()[0], 2);
    }
}
