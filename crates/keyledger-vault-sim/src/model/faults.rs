//! Fault injection on the data plane and the token endpoint.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Vault;

/// Faults applied to the data plane and the token endpoint (not to the control API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// 429, 500 or 503.
    #[serde(default)]
    pub status: Option<u16>,
    /// The share of requests that get `status`, 0..=1. Absent means every request.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Added to every request.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Requests never reach the vault: transports drop the connection.
    #[serde(default)]
    pub unreachable: bool,
    /// Only the next `count` requests get `status` (beyond CONTRACT.md: makes "fails twice,
    /// then succeeds" deterministic). Absent means no limit.
    #[serde(default)]
    pub count: Option<u32>,
    /// Every request is answered `307 Temporary Redirect` to this base URL plus the request's
    /// path and query (beyond CONTRACT.md: shows that clients do not follow a vault's or the
    /// token endpoint's redirect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_to: Option<String>,
}

impl Vault {
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// The injected failure status for this request, if the dice say so.
    pub(crate) fn roll_fault(&self) -> Option<u16> {
        let mut s = self.lock();
        let f = &mut s.faults;
        let status = f.status?;
        if f.count == Some(0) {
            return None;
        }
        let rate = f.rate.unwrap_or(1.0);
        let hit = rand::thread_rng().r#gen::<f64>() < rate;
        if hit && let Some(c) = f.count.as_mut() {
            *c -= 1;
        }
        hit.then_some(status)
    }
}
