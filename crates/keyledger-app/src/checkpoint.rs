//! Recording signed audit checkpoints in stream `audit` (ADR 0025). The checkpointer signs;
//! this only appends what it signed, as the engine itself, with optimistic concurrency like
//! any append.

use std::sync::Mutex;

use keyledger_domain::{Actor, AuditCheckpointSigned, CommandId, Event, StreamId, StreamVersion};
use keyledger_store::envelope::{EnvelopeActor, EventMetadata};
use keyledger_store::{AppendResult, NewEvent};

use crate::error::AppError;
use crate::service::{App, Appended};

/// The last version of stream `audit` this instance has seen: where its next append expects
/// the stream to be.
#[derive(Debug, Default)]
pub(crate) struct AuditHead(Mutex<StreamVersion>);

impl AuditHead {
    fn get(&self) -> StreamVersion {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn advance(&self, to: StreamVersion) {
        let mut head = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *head = (*head).max(to);
    }
}

/// The command id of a checkpoint: one per log and tree size, so two instances recording
/// the same checkpoint append it once (the second gets the first's result as a repeat).
fn checkpoint_command_id(checkpoint: &AuditCheckpointSigned) -> Result<CommandId, AppError> {
    CommandId::parse(&format!(
        "audit-checkpoint:{}:{}",
        checkpoint.log, checkpoint.tree_size
    ))
    .map_err(|_| AppError::Internal("a checkpoint's command id is not a command id"))
}

impl App {
    /// Appends `checkpoint` to stream `audit` as the `system` actor. Retries, up to the
    /// configured bound, when another writer appended to `audit` first
    /// ([`AppError::Contended`] after that). Recording the same log at the same tree size
    /// again appends nothing and answers with the first append (`repeat: true`).
    pub async fn record_checkpoint(
        &self,
        checkpoint: AuditCheckpointSigned,
    ) -> Result<AppendResult, AppError> {
        let command_id = checkpoint_command_id(&checkpoint)?;
        let event = Event::AuditCheckpointSigned(checkpoint);
        for _attempt in 0..=self.config().max_conflict_retries {
            let metadata = EventMetadata {
                occurred_at: self.clock().now(),
                actor: EnvelopeActor::from_actor(&Actor::system(), None),
                correlation_id: None,
                causation_id: None,
            };
            let new = vec![NewEvent {
                event: event.clone(),
                metadata,
            }];
            // Append at the remembered head; a conflict names the stream's real head, so
            // no read is needed before or after.
            let expected = self.audit_head().get();
            match self
                .append_to(StreamId::Audit, expected, new, Some(command_id.clone()))
                .await?
            {
                Appended::Stored(result) => {
                    self.audit_head().advance(result.last_version);
                    return Ok(result);
                }
                Appended::Behind { actual } => {
                    tracing::debug!(%actual, "checkpoint append lost a race; retrying at the head");
                    self.audit_head().advance(actual);
                }
            }
        }
        Err(AppError::Contended)
    }
}
