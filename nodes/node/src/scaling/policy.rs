//! The scaling policy: a pure function from what a tier observes to the worker count it wants.
//!
//! Demand is the work that must be done per second to serve arrivals *and* drain the current
//! backlog within the target drain time: `need = ceil((arrival + backlog / drain) / per_worker)`.
//! Up: at once, to `need` (one tick). Down: one worker at a time, only after demand stayed
//! below the current count for a whole stabilization window, and only when one worker fewer
//! would still run below `DOWN_UTILIZATION` (hysteresis: a steady load never flaps).

use std::time::Duration;

/// Scale down only if the remaining workers would be at most this busy.
pub const DOWN_UTILIZATION: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub min: usize,
    pub max: usize,
    pub fixed: bool,
    pub target_drain: Duration,
    pub stabilization: Duration,
}

/// What the tier saw during the last tick (rates smoothed by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Messages not yet fully processed: sum over owned partitions of end offset - committed.
    pub backlog: u64,
    /// Messages per second arriving (smoothed).
    pub arrival_rate: f64,
    /// Messages per second one busy worker completes (smoothed); `None` before any measurement.
    pub per_worker_rate: Option<f64>,
    pub current: usize,
}

/// Memory the policy keeps between ticks (owned by the caller, no clock inside).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct State {
    /// Since when demand has been below the current count.
    below_since: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: usize,
    /// Demand in workers (fractional), for the log line.
    pub demand: f64,
}

pub fn decide(obs: &Observation, policy: &Policy, state: &mut State, now: Duration) -> Decision {
    let clamp = |n: usize| n.clamp(policy.min, policy.max.max(policy.min));
    if policy.fixed {
        return Decision { desired: clamp(policy.max), demand: f64::NAN };
    }
    let drain = policy.target_drain.as_secs_f64().max(0.001);
    let work = obs.arrival_rate.max(0.0) + obs.backlog as f64 / drain;
    let demand = match obs.per_worker_rate.filter(|r| *r > 0.0) {
        Some(rate) => work / rate,
        // Nothing measured yet: any work needs at least one worker; more is unknown.
        None if obs.backlog > 0 || obs.arrival_rate > 0.0 => obs.current.max(1) as f64,
        None => 0.0,
    };
    let need = clamp(demand.ceil() as usize);
    if need > obs.current {
        state.below_since = None;
        return Decision { desired: need, demand };
    }
    let fewer = obs.current.saturating_sub(1);
    let can_shrink = obs.current > policy.min
        && need < obs.current
        && (demand <= fewer as f64 * DOWN_UTILIZATION || (fewer == 0 && demand == 0.0));
    if !can_shrink {
        state.below_since = None;
        return Decision { desired: clamp(obs.current), demand };
    }
    match state.below_since {
        None => {
            state.below_since = Some(now);
            Decision { desired: clamp(obs.current), demand }
        }
        Some(since) if now.saturating_sub(since) >= policy.stabilization => {
            // Each further step waits a new window.
            state.below_since = Some(now);
            Decision { desired: clamp(fewer), demand }
        }
        Some(_) => Decision { desired: clamp(obs.current), demand },
    }
}

/// Exponentially weighted moving average.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    pub fn update(&mut self, sample: f64, alpha: f64) -> f64 {
        let v = match self.value {
            Some(v) => v + alpha * (sample - v),
            None => sample,
        };
        self.value = Some(v);
        v
    }
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);

    fn policy(min: usize, max: usize) -> Policy {
        Policy { min, max, fixed: false, target_drain: Duration::from_secs(1), stabilization: Duration::from_secs(5) }
    }

    /// Replays (backlog, arrival) per tick with a fixed per-worker rate; returns the counts.
    fn replay(p: &Policy, start: usize, per_worker: Option<f64>, trace: &[(u64, f64)]) -> Vec<usize> {
        let mut state = State::default();
        let mut current = start;
        trace
            .iter()
            .enumerate()
            .map(|(i, &(backlog, arrival_rate))| {
                let obs = Observation { backlog, arrival_rate, per_worker_rate: per_worker, current };
                current = decide(&obs, p, &mut state, TICK * i as u32).desired;
                current
            })
            .collect()
    }

    fn changes(counts: &[usize]) -> usize {
        counts.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn step_up_reacts_in_one_tick_and_respects_max() {
        // 100 msg/s per worker; a step to 350 msg/s with a 200-message backlog.
        let mut trace = vec![(0, 50.0); 4];
        trace.extend(vec![(200, 350.0); 8]);
        let counts = replay(&policy(1, 4), 1, Some(100.0), &trace);
        assert_eq!(counts[3], 1);
        assert_eq!(counts[4], 4, "first tick of the step: (350 + 200/1) / 100 = 5.5 -> capped at 4");
        assert!(counts.iter().all(|&c| (1..=4).contains(&c)));
    }

    #[test]
    fn spike_then_silence_scales_down_one_step_per_window() {
        let mut trace = vec![(1000, 500.0); 2];
        trace.extend(vec![(0, 0.0); 100]); // 25 s of silence
        let counts = replay(&policy(1, 4), 1, Some(100.0), &trace);
        assert_eq!(counts[0], 4);
        // No step down before the 5 s window (20 ticks) has passed.
        assert!(counts[2..21].iter().all(|&c| c == 4), "{counts:?}");
        let downs: Vec<usize> = counts.windows(2).filter(|w| w[1] < w[0]).map(|w| w[0] - w[1]).collect();
        assert!(downs.iter().all(|&d| d == 1), "one step at a time: {counts:?}");
        assert_eq!(*counts.last().unwrap(), 1, "back to min: {counts:?}");
    }

    #[test]
    fn steady_load_settles_and_never_flaps() {
        // 230 msg/s at 100 per worker, small jittering backlog.
        let trace: Vec<(u64, f64)> = (0..400).map(|i| ((i % 3) as u64 * 5, 230.0 + (i % 5) as f64)).collect();
        let counts = replay(&policy(1, 8), 1, Some(100.0), &trace);
        let settled = &counts[20..];
        assert_eq!(changes(settled), 0, "{counts:?}");
        assert_eq!(settled[0], 3);
    }

    #[test]
    fn slow_oscillation_follows_without_thrashing() {
        // Load alternates between 80 and 280 msg/s every 20 s.
        let trace: Vec<(u64, f64)> = (0..480).map(|i| if (i / 80) % 2 == 0 { (0, 80.0) } else { (0, 280.0) }).collect();
        let counts = replay(&policy(1, 8), 1, Some(100.0), &trace);
        // Up within one tick of each rise.
        for rise in [80, 240, 400] {
            assert_eq!(counts[rise], 3, "tick {rise}: {counts:?}");
        }
        // Down in steps of one, at most 2 steps per 20 s low phase (5 s window each).
        assert!(changes(&counts) <= 3 * 3 + 3, "{}", changes(&counts));
        assert!(counts.iter().all(|&c| (1..=3).contains(&c)));
    }

    #[test]
    fn persistent_lag_on_one_partition_keeps_workers() {
        // A backlog that never drains (e.g. a stuck partition) holds the count up, bounded.
        let trace = vec![(500, 10.0); 200];
        let counts = replay(&policy(1, 3), 1, Some(100.0), &trace);
        assert!(counts.iter().all(|&c| c == 3), "{counts:?}");
    }

    #[test]
    fn min_zero_sleeps_and_wakes_on_the_first_message() {
        let p = policy(0, 2);
        let mut trace = vec![(0, 0.0); 30];
        trace.push((1, 0.0));
        let counts = replay(&p, 1, None, &trace);
        assert_eq!(counts[29], 0, "idle tier drops its worker after the window: {counts:?}");
        assert_eq!(counts[30], 1, "one message wakes it");
    }

    #[test]
    fn fixed_mode_holds_its_count() {
        let p = Policy { fixed: true, ..policy(3, 3) };
        let counts = replay(&p, 3, Some(100.0), &[(10_000, 1000.0), (0, 0.0), (0, 0.0)]);
        assert_eq!(counts, vec![3, 3, 3]);
    }

    #[test]
    fn unknown_rate_with_work_keeps_at_least_one() {
        let counts = replay(&policy(0, 4), 0, None, &[(5, 0.0), (5, 0.0)]);
        assert_eq!(counts, vec![1, 1]);
    }
}
