//! The keyledger application service: turns requests into recorded events.
//!
//! Each command is handled in seven steps (issue "Application service"):
//! 1. load the organization's stream (from a cached state plus the events after it);
//! 2. authorize the actor and check the rules' preconditions (R3, without vault calls);
//! 3. run the key tests the command needs (R4, R7, R9);
//! 4. generate and wrap DEKs;
//! 5. `decide`;
//! 6. seal (the store seals protected fields with the internal key ring);
//! 7. append with the expected version and the command id.
//!
//! On a concurrency conflict it reloads and retries up to a bound, re-running key tests only
//! when the key-relevant state changed. A refused command or a failed key test appends
//! nothing. The returned view is folded from the events, never read from a projection.

pub mod clock;
pub mod error;
pub mod health;
pub mod request;
mod service;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{AppError, KeyRole};
pub use health::{HealthConfig, HealthMonitor, ProbeResult};
pub use request::{Action, ConnectionPatch, Outcome, Request, TestReport};
pub use service::{App, AppConfig};
