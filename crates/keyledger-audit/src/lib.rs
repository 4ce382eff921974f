//! The verifiable audit log's signatures and offline checks (CONTRACT.md "Verifiable audit
//! log", issue 13): what a customer needs, beside the Merkle hashing of
//! `keyledger_store::merkle`, to check their organization's key history without trusting the
//! operator.
//!
//! - [`note`]: checkpoints signed in the C2SP signed-note format with Ed25519
//!   ([`AuditSigner`], [`Verifier`], [`open_checkpoint`]).
//! - [`signing_key`]: the `audit.signing_key_file` and the guard that never replaces it beside
//!   existing checkpoints ([`settle_signing_key`]).
//! - [`bundle`]: an organization's [`Bundle`] and [`verify_bundle`], which
//!   `keyledger audit verify` runs offline.
//! - [`store_check`]: holding a whole store against the checkpoints it recorded in stream
//!   `audit` ([`StoreCheck`]), which `keyledger verify --store` runs.

pub mod bundle;
pub mod note;
pub mod signing_key;
pub mod store_check;

pub use bundle::{BUNDLE_FORMAT, Bundle, BundleEntry, BundleError, Verified, verify_bundle};
pub use note::{
    AuditSigner, Checkpoint, NoteError, Verifier, global_origin, note_text, open_checkpoint, open_note,
    org_origin,
};
pub use signing_key::{KeyFileOutcome, SigningKeyError, settle_signing_key};
pub use store_check::{CheckScope, CheckpointFailure, LeafLocator, StoreCheck, StoreCheckReport};
