//! keyledger's key-access adapter for Azure Key Vault, on the official SDK crates
//! (`azure_security_keyvault_keys`, `azure_identity`, `azure_core`).
//!
//! - [`AzureKeyAccess`] implements [`keyledger_keys::KeyAccess`]: RSA-OAEP-256 wrap and unwrap,
//!   the version pinned from the first wrap, every SDK error mapped to a
//!   [`keyledger_keys::Reason`] by kind, status and service code ([`errors`]), the vault-host allow
//!   list checked before any network call, one cached client and credential per connection;
//! - with the `in-process` feature, [`InProcessTransport`] runs the SDK against
//!   `keyledger-vault-sim` with no sockets.

pub mod adapter;
pub mod errors;
#[cfg(feature = "in-process")]
pub mod in_process;

pub use adapter::{AzureConfig, AzureKeyAccess, BuildError};
#[cfg(feature = "in-process")]
pub use in_process::InProcessTransport;
