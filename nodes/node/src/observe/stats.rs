//! Live counters of one tier, written by its stages, read by the scaler and the metrics
//! endpoint (observation only: the stages never steer each other through these).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Debug, Default)]
pub struct TierStats {
    pub consumed: AtomicU64,
    pub exited: AtomicU64,
    pub forwarded: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Records a restart replays that already had outputs (duplicates downstream).
    pub replayed: AtomicU64,
    /// Input offsets that could not be read and were skipped (retention removed them before
    /// they were processed): counted, logged, never silent.
    pub skipped: AtomicU64,
    /// Fetches that returned an unreadable batch (the batch was dead-lettered as a range).
    pub unreadable_batches: AtomicU64,
    /// Requests to the broker for input: fetches, and (quiet partitions on a broker that holds
    /// fetches) asks for the end of the log only.
    pub fetch_requests: AtomicU64,
    pub end_offset_requests: AtomicU64,
    /// Produce attempts that failed (each retry counts).
    pub produce_failures: AtomicU64,
    pub restarts: AtomicU64,
    pub cold_starts: AtomicU64,
    pub last_cold_start_us: AtomicU64,
    /// Rows run through the model and the time spent doing it (all workers).
    pub inferred_rows: AtomicU64,
    pub busy_ns: AtomicU64,
    pub batches: AtomicU64,
    pub workers_current: AtomicUsize,
    pub workers_desired: AtomicUsize,
    /// Consecutive failed inference batches (reset on success); high means unhealthy.
    pub consecutive_failures: AtomicU32,
    /// Input partitions the group assigned to this instance, and assignment changes so far.
    pub assigned_partitions: AtomicUsize,
    pub rebalances: AtomicU64,
    /// End-to-end latency of what this tier delivered since the last adaptive-exit decision.
    pub latency: super::latency::LatencyWindow,
    high_watermarks: DashMap<i32, i64>,
    /// Committed position per owned partition.
    positions: DashMap<i32, i64>,
    /// Conditions that stop progress (fetch, produce, commit failing), with when they began.
    problems: DashMap<String, (String, Instant)>,
}

impl TierStats {
    pub fn set_high_watermark(&self, partition: i32, hw: i64) {
        self.high_watermarks.insert(partition, hw);
    }
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        self.high_watermarks.iter().map(|e| (*e.key(), *e.value())).collect()
    }
    pub fn set_position(&self, partition: i32, offset: i64) {
        self.positions.insert(partition, offset);
    }
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.positions.iter().map(|e| (*e.key(), *e.value())).collect()
    }

    /// Another member owns the partition now: its lag is no longer ours to report.
    pub fn forget_partition(&self, partition: i32) {
        self.positions.remove(&partition);
        self.high_watermarks.remove(&partition);
    }

    /// Lag per owned partition: end of log minus the committed position (what
    /// `kafka-consumer-groups --describe` prints for this group on Apache Kafka).
    pub fn lag(&self) -> Vec<(i32, i64)> {
        let hw = self.high_watermarks();
        self.positions().into_iter().map(|(p, c)| (p, hw.get(&p).map_or(0, |h| (h - c).max(0)))).collect()
    }

    /// Records a condition that stops progress; true when it is new (log it once, not per retry).
    pub fn set_problem(&self, what: &str, why: String) -> bool {
        let mut fresh = true;
        self.problems
            .entry(what.to_string())
            .and_modify(|(reason, _)| {
                fresh = false;
                *reason = why.clone();
            })
            .or_insert_with(|| (why, Instant::now()));
        fresh
    }

    /// The condition cleared; true when it had been recorded.
    pub fn clear_problem(&self, what: &str) -> bool {
        self.problems.remove(what).is_some()
    }

    /// Problems that have lasted at least `grace`, as `reason (for Ns)`.
    pub fn problems(&self, grace: Duration) -> Vec<String> {
        let mut out: Vec<String> = self
            .problems
            .iter()
            .filter(|e| e.value().1.elapsed() >= grace)
            .map(|e| format!("{} (for {:.0} s)", e.value().0, e.value().1.elapsed().as_secs_f64()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_reported_once_and_after_the_grace_time() {
        let s = TierStats::default();
        assert!(s.set_problem("fetch p0", "cannot fetch: down".into()));
        assert!(!s.set_problem("fetch p0", "cannot fetch: still down".into()), "a retry is not news");
        assert!(s.problems(Duration::from_secs(60)).is_empty());
        let now = s.problems(Duration::ZERO);
        assert_eq!(now.len(), 1);
        assert!(now[0].starts_with("cannot fetch: still down (for "), "{now:?}");
        assert!(s.clear_problem("fetch p0"));
        assert!(!s.clear_problem("fetch p0"));
        assert!(s.problems(Duration::ZERO).is_empty());
    }

    #[test]
    fn lag_is_end_of_log_minus_position() {
        let s = TierStats::default();
        s.set_position(0, 5);
        s.set_position(1, 0);
        s.set_high_watermark(0, 12);
        assert_eq!(s.lag(), vec![(0, 7), (1, 0)]);
    }
}
