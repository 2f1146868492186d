//! Live counters of one tier, shared by its stages, read by the scaler and the metrics endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

#[derive(Debug, Default)]
pub struct TierStats {
    pub consumed: AtomicU64,
    pub exited: AtomicU64,
    pub forwarded: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Records a restart replays that may already have outputs (upper bound on duplicates).
    pub replayed: AtomicU64,
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
    fetch_error: AtomicBool,
    high_watermarks: DashMap<i32, i64>,
}

impl TierStats {
    pub fn set_high_watermark(&self, partition: i32, hw: i64) {
        self.high_watermarks.insert(partition, hw);
    }
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        self.high_watermarks.iter().map(|e| (*e.key(), *e.value())).collect()
    }
    pub fn set_fetch_error(&self, failing: bool) {
        self.fetch_error.store(failing, Ordering::Relaxed);
    }
    pub fn fetch_failing(&self) -> bool {
        self.fetch_error.load(Ordering::Relaxed)
    }
}
