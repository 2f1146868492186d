//! Turns a tier's running totals into the smoothed rates the policy needs, once per tick.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::policy::{self, Ewma, Observation, Policy};
use crate::config::{Scaling, Tier};
use crate::observe::stats::TierStats;

/// Smoothing of the per-tick rate samples.
const ALPHA: f64 = 0.3;

pub fn policy_of(tier: &Tier) -> Policy {
    Policy {
        min: tier.workers.min,
        max: tier.workers.max,
        fixed: tier.scaling == Scaling::Fixed,
        target_drain: tier.scaler.target_drain,
        stabilization: tier.scaler.stabilization,
    }
}

/// Scaler memory and the counters of the previous tick.
#[derive(Debug, Default)]
pub struct Scaler {
    state: policy::State,
    arrival: Ewma,
    per_worker: Ewma,
    last_end: Option<i64>,
    last_rows: u64,
    last_busy_ns: u64,
    last_tick: Option<Instant>,
}

/// A change of worker count and the numbers behind it (for the log line).
#[derive(Debug, Clone)]
pub struct Change {
    pub from: usize,
    pub to: usize,
    pub obs: Observation,
    pub demand: f64,
}

impl Scaler {
    /// One tick: observe, decide; `Some` when the worker count should change.
    pub fn tick(&mut self, stats: &TierStats, policy: &Policy, since_start: Duration) -> Option<Change> {
        let now = Instant::now();
        let dt = self.last_tick.map(|t| now.duration_since(t).as_secs_f64()).unwrap_or(0.0);
        self.last_tick = Some(now);
        let backlog: i64 = stats.lag().iter().map(|(_, l)| l).sum();
        let end: i64 = stats.high_watermarks().values().sum();
        let rows = stats.inferred_rows.load(Ordering::Relaxed);
        let busy = stats.busy_ns.load(Ordering::Relaxed);
        if dt > 0.0 {
            if let Some(last) = self.last_end {
                self.arrival.update((end - last).max(0) as f64 / dt, ALPHA);
            }
            let (d_rows, d_busy) = (rows.saturating_sub(self.last_rows), busy.saturating_sub(self.last_busy_ns));
            if d_rows > 0 && d_busy > 0 {
                self.per_worker.update(d_rows as f64 / (d_busy as f64 / 1e9), ALPHA);
            }
        }
        self.last_end = Some(end);
        self.last_rows = rows;
        self.last_busy_ns = busy;
        let current = stats.workers_desired.load(Ordering::Relaxed);
        let obs = Observation {
            backlog: backlog.max(0) as u64,
            arrival_rate: self.arrival.get().unwrap_or(0.0),
            per_worker_rate: self.per_worker.get(),
            current,
        };
        let decision = policy::decide(&obs, policy, &mut self.state, since_start);
        (decision.desired != current).then_some(Change {
            from: current,
            to: decision.desired,
            obs,
            demand: decision.demand,
        })
    }
}
