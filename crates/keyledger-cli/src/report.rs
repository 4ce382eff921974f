//! What the operator sees: one-line errors (`keyledger: <what failed>: <cause>`), exit codes,
//! and progress on stderr (a bar on a terminal, a summary line otherwise). Standard output is
//! kept for data (`events export`).

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a command that ran ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 3: `verify` found a broken hash chain (already reported on stderr).
    ChainBroken,
    /// Exit 3: `audit verify` found a bundle that does not hold (already reported on stderr).
    AuditFailed,
    /// Exit 3: `verify` found a signed checkpoint the store does not hold (already reported on
    /// stderr).
    CheckpointBroken,
}

impl Outcome {
    pub(crate) fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Done => ExitCode::SUCCESS,
            Outcome::ChainBroken | Outcome::AuditFailed | Outcome::CheckpointBroken => ExitCode::from(3),
        }
    }
}

/// A command that failed (exit 1): what failed and why, on one line. The cause is the error's
/// chain of sources, never a Debug dump.
#[derive(Debug)]
pub(crate) struct Failure {
    what: String,
    cause: String,
}

impl Failure {
    pub(crate) fn new(what: impl Into<String>, cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut parts = vec![cause.to_string()];
        let mut source = cause.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Some errors repeat their source's text in their own message.
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
            source = s.source();
        }
        Self::msg(what, parts.join(": "))
    }

    pub(crate) fn msg(what: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Self {
            what: what.into(),
            cause: cause.to_string(),
        }
    }

    pub(crate) fn cause(&self) -> &str {
        &self.cause
    }

    /// Prints `keyledger: <what>: <cause>` as one line on stderr and gives exit code 1.
    pub(crate) fn report(&self) -> ExitCode {
        let line = format!("keyledger: {}: {}", self.what, self.cause);
        eprintln!("{}", line.replace(['\n', '\r'], " "));
        ExitCode::FAILURE
    }
}

/// Progress of a long command on stderr: a bar (or a counter when the total is unknown) when
/// stderr is a terminal, nothing otherwise; [`Progress::finish`] prints the summary line.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// `total`: the number of events when known.
    pub(crate) fn new(message: &'static str, total: Option<u64>) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), target).with_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} {msg} {pos} events ({per_sec}, {elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            started: Instant::now(),
        }
    }

    /// Events done so far.
    pub(crate) fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Clears the bar and prints `summary` on stderr.
    pub(crate) fn finish(&self, summary: impl std::fmt::Display) {
        self.bar.finish_and_clear();
        eprintln!("{summary}");
    }

    /// Clears the bar (the command failed; its error follows).
    pub(crate) fn abandon(&self) {
        self.bar.finish_and_clear();
    }
}

/// `n` events in `elapsed`, as events per second.
pub(crate) fn rate(n: u64, elapsed: Duration) -> u64 {
    match elapsed.as_nanos() {
        0 => n,
        nanos => u64::try_from(u128::from(n) * 1_000_000_000 / nanos).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_events_per_second_rounded_down() {
        assert_eq!(rate(10, Duration::from_secs(2)), 5);
        assert_eq!(rate(1_000, Duration::from_millis(3)), 333_333);
    }

    #[test]
    fn rate_without_elapsed_time_is_the_count_and_saturates() {
        assert_eq!(rate(7, Duration::ZERO), 7);
        assert_eq!(rate(u64::MAX, Duration::from_nanos(1)), u64::MAX);
    }
}
