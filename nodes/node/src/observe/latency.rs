//! A tier's recent end-to-end latencies (client send to delivery by this tier), as a
//! histogram of log-spaced buckets that the adaptive exit controller empties at each decision.
//! Atomic counters: the producer records, the supervisor's tick reads, nobody waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in ms: 1, 1.25, 1.6, 2, ... (x1.25 each) up to ~10 min; finer than the
/// 2x steps of a Prometheus histogram so a p99 compared with a target is off by < 25 %.
const BUCKETS: usize = 60;

fn upper_ms(i: usize) -> f64 {
    1.25f64.powi(i as i32)
}

fn bucket(ms: i64) -> usize {
    let ms = ms.max(1) as f64;
    (ms.ln() / 1.25f64.ln()).ceil().clamp(0.0, (BUCKETS - 1) as f64) as usize
}

#[derive(Debug)]
pub struct LatencyWindow {
    counts: [AtomicU64; BUCKETS],
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self { counts: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl LatencyWindow {
    pub fn record(&self, ms: i64) {
        self.counts[bucket(ms)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile of what was recorded since the last call (its bucket's upper bound),
    /// and the count; `None` when nothing was. Empties the window.
    pub fn take_quantile(&self, q: f64) -> Option<(Duration, u64)> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((Duration::from_secs_f64(upper_ms(i) / 1000.0), total));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_within_a_bucket_of_the_true_one_and_the_window_empties() {
        let w = LatencyWindow::default();
        assert_eq!(w.take_quantile(0.99), None);
        for ms in 1..=1000 {
            w.record(ms);
        }
        let (p99, n) = w.take_quantile(0.99).unwrap();
        assert_eq!(n, 1000);
        let p99 = p99.as_secs_f64() * 1000.0;
        assert!((990.0..=990.0 * 1.25).contains(&p99), "p99 {p99} ms");
        assert_eq!(w.take_quantile(0.99), None, "emptied");
        w.record(0);
        w.record(-5);
        assert_eq!(w.take_quantile(0.5).map(|(d, _)| d), Some(Duration::from_millis(1)));
        w.record(i64::MAX);
        assert!(w.take_quantile(0.5).unwrap().0 > Duration::from_secs(60));
    }
}
