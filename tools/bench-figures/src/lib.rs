//! Latency summaries shared by the benchmark tools (`http-bench`, `client-bench`), so that their
//! figures are computed the same way.

use std::time::Duration;

/// The count, median, 99th percentile and maximum of a set of latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Summarizes latencies by nearest rank (the sample at the percentile's place in the sorted
/// list, rounded). An empty set gives zeros.
pub fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort_unstable();
    let pct = |percent: usize| {
        let i = (v.len().saturating_sub(1) * percent + 50) / 100;
        v.get(i).copied().unwrap_or_default()
    };
    Summary {
        n: v.len(),
        p50: pct(50),
        p99: pct(99),
        max: v.last().copied().unwrap_or_default(),
    }
}

/// Milliseconds, with fractions.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rounded to two decimals (for JSON reports).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_any_order() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        v.reverse();
        let s = summarize(v);
        assert_eq!(s.n, 100);
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
    }

    #[test]
    fn an_empty_set_is_zeros_and_one_sample_is_every_figure() {
        assert_eq!(summarize(vec![]), Summary::default());
        let one = summarize(vec![Duration::from_micros(1500)]);
        let d = Duration::from_micros(1500);
        assert_eq!((one.n, one.p50, one.p99, one.max), (1, d, d, d));
    }

    #[test]
    fn milliseconds_and_rounding() {
        assert!((ms(Duration::from_micros(1500)) - 1.5).abs() < 1e-12);
        assert!((round2(1.23456) - 1.23).abs() < 1e-12);
        assert!((round2(2.675_01) - 2.68).abs() < 1e-12);
    }
}
