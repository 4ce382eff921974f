//! A controllable clock: real time plus an offset, or a fixed instant.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// The simulated vault's notion of "now". Cloning shares the clock.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    state: Arc<Mutex<ClockState>>,
}

#[derive(Debug, Default)]
struct ClockState {
    fixed: Option<DateTime<Utc>>,
    offset: Duration,
}

impl Clock {
    /// Real time.
    pub fn system() -> Self {
        Self::default()
    }

    /// Stopped at `t` until it is moved.
    pub fn fixed(t: DateTime<Utc>) -> Self {
        let c = Self::default();
        c.set(t);
        c
    }

    pub fn now(&self) -> DateTime<Utc> {
        let s = self.lock();
        s.fixed.unwrap_or_else(Utc::now) + s.offset
    }

    /// Unix seconds, as Key Vault reports times.
    pub fn unix(&self) -> i64 {
        self.now().timestamp()
    }

    /// Stops the clock at `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        let mut s = self.lock();
        s.fixed = Some(t);
        s.offset = Duration::zero();
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, d: Duration) {
        let mut s = self.lock();
        s.offset += d;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // A poisoned clock only means a panic elsewhere while holding it; its data is still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let t = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let c = Clock::fixed(t);
        assert_eq!(c.now(), t);
        c.advance(Duration::days(2));
        assert_eq!(c.now(), t + Duration::days(2));
        assert_eq!(c.clone().unix(), t.timestamp() + 172_800);
    }
}
