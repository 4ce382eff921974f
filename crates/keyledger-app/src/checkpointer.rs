//! The checkpointer (CONTRACT.md "Verifiable audit log", ADR 0027): signs the audit logs'
//! tree heads and records them in stream `audit`.
//!
//! - [`Checkpointer::round`], every `audit.checkpoint_interval`: for each organization log
//!   that grew past its latest checkpoint, a checkpoint of it, and then one of the global
//!   log. The global log also holds the checkpoint events themselves, so "it grew" alone
//!   would sign forever: it is signed in a round where an organization log grew, or where it
//!   grew by more than the checkpoint events this checkpointer appended since it last signed
//!   it (events of streams no organization log holds: an organization's release record,
//!   ADR 0030). After a start, the first round signs it if it grew at all.
//! - [`Checkpointer::current`], for a reader: the latest checkpoint of one log, signed first
//!   when the log grew since.
//!
//! Sizes and roots come from the stored trees ([`AuditTrees`]), so a checkpoint covers what
//! the `audit_tree` projection has folded, which may trail the store by a moment. The latest
//! checkpoint of each log is known from stream `audit` itself: read once, then only its new
//! events, before each decision. Several instances may sign at once: a checkpoint's command
//! id names its log and size, and Ed25519 signatures are deterministic, so the same
//! checkpoint is recorded once whoever signs it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use keyledger_audit::AuditSigner;
use keyledger_domain::{Event, StreamId, StreamVersion};
use keyledger_store::merkle::{AuditLog, AuditTrees};

use crate::error::AppError;
use crate::service::App;

/// A signed checkpoint of one log, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub log: AuditLog,
    pub tree_size: u64,
    /// The signed note, as served (`text/plain`).
    pub note: String,
    /// When it was signed (the console shows it).
    pub signed_at: chrono::DateTime<chrono::Utc>,
}

/// What one [`Checkpointer::round`] signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// The organization logs checkpointed, with their new sizes.
    pub organizations: Vec<SignedCheckpoint>,
    /// The global log's checkpoint, when an organization log grew or the global log grew
    /// by more than checkpoints.
    pub global: Option<SignedCheckpoint>,
}

/// Signs checkpoints of the audit logs and records them in stream `audit`.
pub struct Checkpointer {
    app: Arc<App>,
    trees: Arc<dyn AuditTrees>,
    signer: AuditSigner,
    /// The latest recorded checkpoint of each log, as far as stream `audit` has been read;
    /// held across a whole decision, so one instance signs one log once at a time.
    known: tokio::sync::Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// The last version of stream `audit` read.
    read_to: StreamVersion,
    latest: HashMap<AuditLog, SignedCheckpoint>,
    /// The size the global log reaches once the checkpoints of this checkpointer's last
    /// signing round are folded, if nothing else is appended; `None` until a round signed.
    global_quiet_at: Option<u64>,
}

impl Checkpointer {
    /// A checkpointer signing with `signer` (its name is `audit.origin`) over the trees that
    /// `trees` stores.
    pub fn new(app: Arc<App>, trees: Arc<dyn AuditTrees>, signer: AuditSigner) -> Self {
        Self {
            app,
            trees,
            signer,
            known: tokio::sync::Mutex::new(Known::default()),
        }
    }

    /// The note verifier key of the signing key (`GET /v1/audit/public-key`).
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// The latest checkpoint of `log`, signed and recorded now if the folded log grew past
    /// it. `None` only for a log with no leaf and no checkpoint yet.
    pub async fn current(&self, log: AuditLog) -> Result<Option<SignedCheckpoint>, AppError> {
        let mut known = self.known.lock().await;
        self.catch_up(&mut known).await?;
        let size = self.trees.tree_size(log).await?;
        let latest = known.latest.get(&log).cloned();
        match latest {
            Some(latest) if latest.tree_size >= size => Ok(Some(latest)),
            None if size == 0 => Ok(None),
            _ => self.sign(&mut known, log, size).await.map(Some),
        }
    }

    /// The latest recorded checkpoint of `log`, without signing.
    pub async fn latest(&self, log: AuditLog) -> Result<Option<SignedCheckpoint>, AppError> {
        let mut known = self.known.lock().await;
        self.catch_up(&mut known).await?;
        Ok(known.latest.get(&log).cloned())
    }

    /// One round: a checkpoint of each organization log that grew, then of the global log
    /// if any did.
    pub async fn round(&self) -> Result<Round, AppError> {
        let mut known = self.known.lock().await;
        self.catch_up(&mut known).await?;
        let sizes: BTreeMap<AuditLog, u64> = self.trees.tree_sizes().await?;
        let mut round = Round::default();
        for (&log, &size) in &sizes {
            let AuditLog::Org(_) = log else { continue };
            if known.latest.get(&log).is_none_or(|c| c.tree_size < size) {
                round.organizations.push(self.sign(&mut known, log, size).await?);
            }
        }
        let global_size = sizes.get(&AuditLog::Global).copied().unwrap_or(0);
        let global_grew = match (known.global_quiet_at, known.latest.get(&AuditLog::Global)) {
            (_, None) => global_size > 0,
            (Some(quiet), Some(_)) => global_size > quiet,
            (None, Some(latest)) => global_size > latest.tree_size,
        };
        if !round.organizations.is_empty() || global_grew {
            round.global = Some(self.sign(&mut known, AuditLog::Global, global_size).await?);
            // This round's own checkpoint events, after the size it measured.
            let own = u64::try_from(round.organizations.len()).unwrap_or(u64::MAX - 1) + 1;
            known.global_quiet_at = Some(global_size.saturating_add(own));
        }
        Ok(round)
    }

    /// Runs [`Self::round`] every `interval` until `shutdown` resolves. A failed round is
    /// logged and tried again at the next tick.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            match self.round().await {
                Ok(round) if round.global.is_some() => tracing::info!(
                    organizations = round.organizations.len(),
                    global_size = round.global.as_ref().map_or(0, |g| g.tree_size),
                    "audit checkpoints signed"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "audit checkpoint round failed; retrying at the next tick")
                }
            }
        }
    }

    /// Signs `log` at `size` (which the trees hold) and records it.
    async fn sign(&self, known: &mut Known, log: AuditLog, size: u64) -> Result<SignedCheckpoint, AppError> {
        let root = self.trees.root(log, size).await?;
        let checkpoint = self
            .signer
            .sign_log(log, size, root, self.app.clock().now())
            .map_err(|_| AppError::Internal("a checkpoint origin is not a note origin"))?;
        let note = checkpoint.note.clone();
        let signed_at = checkpoint.signed_at;
        let recorded = self.app.record_checkpoint(checkpoint).await?;
        tracing::debug!(%log, size, repeat = recorded.repeat, "audit checkpoint recorded");
        let signed = SignedCheckpoint {
            log,
            tree_size: size,
            note,
            signed_at,
        };
        // `read_to` stays: events another instance appended before this one are read at the
        // next catch-up (a repeat's note is the same anyway: the signature is deterministic).
        remember(known, signed.clone());
        Ok(signed)
    }

    /// Reads the events of stream `audit` past `known.read_to`.
    async fn catch_up(&self, known: &mut Known) -> Result<(), AppError> {
        let from = StreamVersion(known.read_to.0 + 1);
        for stored in self.app.store().read_stream(StreamId::Audit, from).await? {
            let event = stored.decode().map_err(|e| {
                tracing::error!(event_id = %stored.event_id, error = %e, "a stored audit event cannot be decoded");
                AppError::Internal("a stored event cannot be decoded")
            })?;
            if let Event::AuditCheckpointSigned(c) = event {
                remember(
                    known,
                    SignedCheckpoint {
                        log: c.log,
                        tree_size: c.tree_size,
                        note: c.note,
                        signed_at: c.signed_at,
                    },
                );
            }
            known.read_to = stored.stream_version;
        }
        Ok(())
    }
}

/// Keeps `signed` as its log's latest unless a larger one is known.
fn remember(known: &mut Known, signed: SignedCheckpoint) {
    match known.latest.get(&signed.log) {
        Some(held) if held.tree_size >= signed.tree_size => {}
        _ => {
            known.latest.insert(signed.log, signed);
        }
    }
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}
