//! The errors of the client. None carries key bytes, plaintext or the bearer token.

use std::time::Duration;

use keyledger_domain::{DekId, HealthStatus, OrgId};

use crate::envelope::EnvelopeError;

/// Why [`crate::Client::encrypt`] or [`crate::Client::decrypt`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The organization's customer key is in the revoked class
    /// ([`HealthStatus::is_revoked`]): the customer disabled or deleted it, or took
    /// keyledger's access away. Failed fast, with no call to keyledger. **Handling:** fail
    /// the request as "customer key unavailable"; do not retry until the directory sees the
    /// health recover ([`crate::Client::org_keys`]).
    #[error("the customer key of organization {org} is revoked ({status})")]
    KeyRevoked { org: OrgId, status: HealthStatus },
    /// The DEK (or the active DEK) was declared lost (R11): the data under it never opens
    /// again. **Handling:** report the data as lost; do not retry.
    #[error("data key {dek_id:?} of organization {org} was declared lost")]
    DataLost { org: OrgId, dek_id: Option<DekId> },
    /// keyledger refused the release (409 `key_unavailable`), with the vault's `reason`
    /// (DESIGN.md §4). **Handling:** fail the request; retrying helps only once the customer
    /// fixes the key.
    #[error("keyledger did not release the key: {reason}")]
    KeyUnavailable { reason: String },
    /// A transient failure of keyledger or of the customer's vault (503). **Handling:**
    /// retry after `retry_after` (or with backoff).
    #[error("keyledger or the key vault is unavailable for now")]
    Unavailable { retry_after: Option<Duration> },
    /// keyledger does not know the organization (404). **Handling:** a caller bug or an
    /// organization that was never registered; do not retry.
    #[error("keyledger does not know organization {org}")]
    OrganizationNotFound { org: OrgId },
    /// The bearer token was refused (401) or lacks the platform role (403). **Handling:**
    /// fix the configuration.
    #[error("keyledger refused the client's token (HTTP {status})")]
    Unauthorized { status: u16 },
    /// The ciphertext does not open: changed, sealed for another organization or context,
    /// truncated, or of an unknown version. **Handling:** treat the data as corrupt or
    /// misplaced; retrying does not help.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// keyledger could not be reached, or answered with an unexpected status. **Handling:**
    /// retry with backoff.
    #[error("HTTP failure: {message}")]
    Http { status: Option<u16>, message: String },
    /// keyledger answered something this client cannot read (a malformed body, a key that
    /// is not 32 bytes, another DEK than asked for). **Handling:** a version mismatch or a
    /// bug; report it.
    #[error("unexpected answer from keyledger: {0}")]
    Protocol(String),
}

/// Why [`crate::ClientBuilder::build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The base URL is not an `http`/`https` URL, or carries a user or password.
    #[error("invalid base URL: {0}")]
    BaseUrl(String),
    /// The root CA is not PEM.
    #[error("the CA certificate is not valid PEM")]
    CaCert,
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built: {0}")]
    Http(String),
    /// The position store could not load its checkpoint (a corrupt file: remove it to start
    /// from the beginning of the stream).
    #[error("the position store could not load its checkpoint: {0}")]
    PositionStore(#[source] std::io::Error),
}
