//! Percentiles and rates for the bench report.

use serde::Serialize;
use std::time::Duration;

/// p50/p90/p99/max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (any order).
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |fraction: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
            millis(sorted[rank.clamp(1, sorted.len()) - 1])
        };
        Percentiles {
            count: sorted.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// A duration in milliseconds.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `count / seconds`, 0 when nothing was timed.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let percentiles = Percentiles::of(&samples);
        assert_eq!(percentiles.count, 100);
        assert_eq!(percentiles.p50, 50.0);
        assert_eq!(percentiles.p90, 90.0);
        assert_eq!(percentiles.p99, 99.0);
        assert_eq!(percentiles.max, 100.0);
        assert_eq!(Percentiles::of(&[]).max, 0.0);
        assert_eq!(Percentiles::of(&[Duration::from_millis(3)]).p50, 3.0);
    }
}
