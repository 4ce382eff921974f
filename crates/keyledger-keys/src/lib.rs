//! Key access for keyledger: the port every vault adapter implements, the reasons a key
//! access fails (DESIGN.md §4), the "Test and save" connection test (R4), and bounded retry with
//! a per-request timeout.
//!
//! Adapters: `keyledger-azure` (the official Azure SDK, against real Key Vault, the HTTPS
//! emulator, or the simulated vault in process).

pub mod evidence;
pub mod port;
pub mod reason;
pub mod retry;
pub mod validate;

pub use port::{Dek, DeletedKeyRecord, KeyAccess, KeyDescription};
pub use reason::{KeyAccessError, KeyOperation, Reason};
pub use retry::{RetryPolicy, Retrying};
pub use validate::{Check, CheckName, ConnectionTest, MIN_RSA_BITS, test_connection};
