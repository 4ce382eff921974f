//! The keyledger application service: turns requests into recorded events.
//!
//! Each command goes load → plan → run the key work → decide → append → answer:
//! 1. load the organization's stream (from a cached state plus the events after it);
//! 2. `keyledger_domain::plan`: every rule, and the key work the command needs (no vault call
//!    for a refused command);
//! 3. run that key work: key tests (R4), unwraps and wraps (R7, R9), new DEKs;
//! 4. `keyledger_domain::decide` with the results;
//! 5. append with the expected version and the command id (the store seals protected fields
//!    with the internal key ring).
//!
//! A platform service's request for a DEK goes load → `keyledger_domain::plan_release` →
//! unwrap → record in the organization's release stream → answer ([`App::release`]).
//!
//! On a concurrency conflict it reloads and retries up to a bound, re-running key tests only
//! when the key-relevant state changed. A refused command or a failed key test appends
//! nothing. The returned view is folded from the events, never read from a projection.

mod checkpoint;
pub mod checkpointer;
pub mod clock;
pub mod error;
pub mod health;
pub mod release;
pub mod request;
mod service;
mod work;

pub use checkpointer::{Checkpointer, Round, SignedCheckpoint};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{AppError, KeyRole};
pub use health::{HealthConfig, HealthMonitor, ProbeResult};
pub use release::{ReleaseRequest, Released};
pub use request::{CommandRequest, Outcome, TestReport};
pub use service::{App, AppConfig};
