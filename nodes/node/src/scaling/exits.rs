//! SLO-driven adaptive exits (pure policy): when a tier's latency (or a later tier's in this
//! node) exceeds the target, relax the exit rule so that more inputs leave early and less work
//! travels on; tighten back one step at a time, with hysteresis, as load falls. The steps come
//! from the model's calibration table (`models/card.py` writes it next to the model: threshold
//! -> share exiting -> end-to-end accuracy on held-out digits) and stop before the first
//! threshold whose accuracy falls under the floor. The topology's threshold is the base the
//! rule returns to.
//!
//! Decrease fast, increase slowly (TCP's congestion control, for the work sent on): one
//! relaxation walks down the ladder until the share of inputs sent on is at most half of what
//! it was, so a tier sending on 22 % reaches 1 % in five decisions rather than ten; the ladder
//! is dense where little changes. A tightening to a step that the next decisions have to undo
//! doubles the calm a tightening to that step waits for next time (one that holds halves it),
//! so a step that cannot carry the load is not retried every few seconds.

use std::time::Duration;

use crate::config::{CalPoint, Exit, ExitRule};

/// Tighten only once the latency stayed under this share of the target...
pub const CALM_SHARE: f64 = 0.5;
/// ...for this many decisions in a row, three seconds at the supervisor's four decisions a
/// second (a relaxation acts at once: overload costs more).
pub const CALM_DECISIONS: u32 = 12;

/// The longest calm a tightening to a step waits for after tightenings to it were undone
/// (doubling from `CALM_DECISIONS`): 48 s at four decisions a second.
pub const MAX_CALM_DECISIONS: u32 = CALM_DECISIONS * 16;

/// One relaxation sends on at most this share of what the rule sent on before it.
pub const RELAX_FACTOR: f64 = 0.5;

/// Whether a lower threshold lets more inputs exit (`max-prob`, `margin`: exit when the
/// measure is at least the threshold) or a higher one does (`entropy`: at most).
fn looser(rule: ExitRule, a: f32, b: f32) -> bool {
    match rule {
        ExitRule::Entropy => a > b,
        ExitRule::MaxProb | ExitRule::Margin => a < b,
    }
}

/// The thresholds the controller may use, base first, each looser than the one before; the
/// table's points looser than the base, up to (not including) the first under the floor.
pub fn ladder(base: Exit, table: &[CalPoint], floor: f64) -> Vec<f32> {
    let mut points: Vec<&CalPoint> = table.iter().filter(|p| looser(base.rule, p.threshold, base.threshold)).collect();
    // Nearest the base first.
    points.sort_by(|a, b| match base.rule {
        ExitRule::Entropy => a.threshold.total_cmp(&b.threshold),
        ExitRule::MaxProb | ExitRule::Margin => b.threshold.total_cmp(&a.threshold),
    });
    let mut steps = vec![base.threshold];
    steps.extend(points.iter().take_while(|p| p.accuracy >= floor).map(|p| p.threshold));
    steps
}

/// One change of threshold and the numbers behind it (for the log line and the metric).
#[derive(Debug, Clone, PartialEq)]
pub struct ExitChange {
    pub from: f32,
    pub to: f32,
    pub relaxed: bool,
    /// The latency estimate that decided it (`None`: nothing passed since the last decision).
    pub p99: Option<Duration>,
    /// Held-out accuracy and exit share of the new threshold, where the table has it.
    pub accuracy: Option<f64>,
    pub exit_fraction: Option<f64>,
}

/// Where a tier's exit rule stands on its ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitController {
    pub rule: ExitRule,
    pub target: Duration,
    steps: Vec<f32>,
    table: Vec<CalPoint>,
    at: usize,
    calm: u32,
    /// Per step, the calm decisions a tightening to it waits for.
    waits: Vec<u32>,
    /// The step the last tightening went to and the decisions since, while on probation (as
    /// many decisions as it waited for).
    probation: Option<(usize, u32)>,
}

impl ExitController {
    pub fn new(base: Exit, target: Duration, floor: f64, table: &[CalPoint]) -> Self {
        let steps = ladder(base, table, floor);
        let waits = vec![CALM_DECISIONS; steps.len()];
        Self { rule: base.rule, target, steps, table: table.to_vec(), at: 0, calm: 0, waits, probation: None }
    }

    pub fn threshold(&self) -> f32 {
        self.steps[self.at]
    }

    /// The steps, base first.
    pub fn steps(&self) -> &[f32] {
        &self.steps
    }

    /// Calm decisions the next tightening waits for (`None` at the base).
    pub fn calm_needed(&self) -> Option<u32> {
        self.at.checked_sub(1).map(|j| self.waits[j])
    }

    /// The share of inputs that step `at` sends on, where the table has it.
    fn sent_on(&self, at: usize) -> Option<f64> {
        let t = self.steps[at];
        self.table.iter().find(|p| p.threshold == t).map(|p| 1.0 - p.exit_fraction)
    }

    /// The step a relaxation from `self.at` goes to: the first looser one that sends on at most
    /// `RELAX_FACTOR` of the current share; when none does, the first that sends on the least
    /// (a step that sends on no less buys nothing for its accuracy). One step where the table
    /// does not know the current share.
    fn relaxed_step(&self) -> usize {
        let next = self.at + 1;
        let Some(now) = self.sent_on(self.at) else { return next };
        let goal = now * RELAX_FACTOR;
        let mut best = (next, self.sent_on(next).unwrap_or(now));
        for j in next..self.steps.len() {
            let Some(share) = self.sent_on(j) else { continue };
            if share <= goal {
                return j;
            }
            if share < best.1 {
                best = (j, share);
            }
        }
        best.0
    }

    /// One decision on the latest p99 estimate (`None` when nothing passed).
    pub fn decide(&mut self, p99: Option<Duration>) -> Option<ExitChange> {
        let from = self.threshold();
        let over = p99.is_some_and(|p| p > self.target);
        let calm = p99.is_none_or(|p| p.as_secs_f64() < self.target.as_secs_f64() * CALM_SHARE);
        if let Some((j, n)) = self.probation.as_mut() {
            *n += 1;
            let wait = &mut self.waits[*j];
            if over {
                *wait = wait.saturating_mul(2).min(MAX_CALM_DECISIONS);
                self.probation = None;
            } else if *n >= *wait {
                *wait = (*wait / 2).max(CALM_DECISIONS);
                self.probation = None;
            }
        }
        if over {
            self.calm = 0;
            if self.at + 1 < self.steps.len() {
                self.at = self.relaxed_step();
                return Some(self.change(from, true, p99));
            }
            return None;
        }
        if !calm {
            self.calm = 0;
            return None;
        }
        self.calm += 1;
        if self.at > 0 && self.calm >= self.waits[self.at - 1] {
            self.calm = 0;
            self.at -= 1;
            self.probation = Some((self.at, 0));
            return Some(self.change(from, false, p99));
        }
        None
    }

    fn change(&self, from: f32, relaxed: bool, p99: Option<Duration>) -> ExitChange {
        let to = self.threshold();
        let point = self.table.iter().find(|p| p.threshold == to);
        ExitChange {
            from,
            to,
            relaxed,
            p99,
            accuracy: point.map(|p| p.accuracy),
            exit_fraction: point.map(|p| p.exit_fraction),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(points: &[(f32, f64)]) -> Vec<CalPoint> {
        points.iter().map(|&(threshold, accuracy)| CalPoint { threshold, exit_fraction: 0.5, accuracy }).collect()
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_ladder_goes_looser_from_the_base_and_stops_before_the_floor() {
        let t = table(&[(0.5, 0.90), (0.6, 0.95), (0.7, 0.96), (0.8, 0.97), (0.9, 0.98)]);
        // max-prob: lower is looser; 0.5 is under the floor, so the ladder ends at 0.6.
        assert_eq!(ladder(Exit::max_prob(0.8), &t, 0.95), vec![0.8, 0.7, 0.6]);
        // A base between table points keeps its own value first.
        assert_eq!(ladder(Exit::max_prob(0.75), &t, 0.955), vec![0.75, 0.7]);
        // Entropy: higher is looser.
        let e = table(&[(0.1, 0.98), (0.2, 0.97), (0.3, 0.93), (0.4, 0.96)]);
        let base = Exit { rule: ExitRule::Entropy, threshold: 0.1 };
        assert_eq!(ladder(base, &e, 0.95), vec![0.1, 0.2], "stops at the first point under the floor (0.3)");
        // A floor the base already misses: no relaxing at all.
        assert_eq!(ladder(Exit::max_prob(0.8), &t, 0.99), vec![0.8]);
    }

    #[test]
    fn overload_relaxes_step_by_step_down_to_the_floor_and_calm_tightens_back_with_hysteresis() {
        let t = table(&[(0.5, 0.90), (0.6, 0.95), (0.7, 0.96), (0.8, 0.97)]);
        let mut c = ExitController::new(Exit::max_prob(0.8), MS(200), 0.95, &t);
        let trace: Vec<f32> = [300, 300, 300, 300]
            .iter()
            .map(|&p| {
                c.decide(Some(MS(p)));
                c.threshold()
            })
            .collect();
        assert_eq!(trace, vec![0.7, 0.6, 0.6, 0.6], "one step per decision, never past the floor");
        // Between half the target and the target: hold (the hysteresis band).
        for _ in 0..10 {
            assert_eq!(c.decide(Some(MS(150))), None);
        }
        assert_eq!(c.threshold(), 0.6);
        // Calm: tighten one step per CALM_DECISIONS decisions, back to the base and no further.
        let mut changes = Vec::new();
        for _ in 0..(CALM_DECISIONS * 4) {
            if let Some(ch) = c.decide(Some(MS(50))) {
                changes.push((ch.from, ch.to, ch.relaxed));
            }
        }
        assert_eq!(changes, vec![(0.6, 0.7, false), (0.7, 0.8, false)]);
        assert_eq!(c.threshold(), 0.8);
        // Idle (nothing passed) counts as calm; a spike in the middle restarts the count.
        let mut c = ExitController::new(Exit::max_prob(0.8), MS(200), 0.95, &t);
        c.decide(Some(MS(900)));
        assert_eq!(c.decide(None), None);
        assert_eq!(c.decide(Some(MS(210))).map(|ch| ch.to), Some(0.6));
        for _ in 1..CALM_DECISIONS {
            assert_eq!(c.decide(None), None);
        }
        let back = c.decide(None).expect("the last calm decision of the count tightens");
        assert_eq!((back.from, back.to, back.accuracy), (0.6, 0.7, Some(0.96)));
    }

    /// `(threshold, share exiting)` points, all above any floor.
    fn fractions(points: &[(f32, f64)]) -> Vec<CalPoint> {
        points.iter().map(|&(threshold, exit_fraction)| CalPoint { threshold, exit_fraction, accuracy: 0.99 }).collect()
    }

    #[test]
    fn a_relaxation_at_least_halves_what_is_sent_on() {
        // The resnet edge's calibration (models/mnist-resnet/calibration.json), in part.
        let t = fractions(&[
            (0.5, 0.992),
            (0.6, 0.9825),
            (0.7, 0.974),
            (0.75, 0.9635),
            (0.8, 0.951),
            (0.85, 0.935),
            (0.9, 0.917),
            (0.95, 0.885),
            (0.99, 0.7755),
        ]);
        let mut c = ExitController::new(Exit::max_prob(0.99), MS(200), 0.95, &t);
        let mut trace = Vec::new();
        while let Some(ch) = c.decide(Some(MS(900))) {
            assert!(ch.relaxed);
            trace.push(ch.to);
        }
        // Sent on: 22.4 % -> 8.3 (0.95's 11.5 is more than half) -> 3.7 -> 1.8 -> 0.8.
        assert_eq!(trace, vec![0.9, 0.75, 0.6, 0.5]);
        // Tightening still goes one step at a time.
        let mut back = Vec::new();
        for _ in 0..CALM_DECISIONS * 20 {
            if let Some(ch) = c.decide(None) {
                back.push(ch.to);
            }
        }
        assert_eq!(back, vec![0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99]);
        // A base the table does not know relaxes one step; looser steps that send on no less
        // than the first are skipped over only when one of them sends on less.
        let t = fractions(&[(0.5, 0.9), (0.6, 0.8), (0.7, 0.8), (0.8, 0.8)]);
        let mut c = ExitController::new(Exit::max_prob(0.85), MS(200), 0.95, &t);
        assert_eq!(c.decide(Some(MS(900))).map(|ch| ch.to), Some(0.8), "unknown base: one step");
        assert_eq!(c.decide(Some(MS(900))).map(|ch| ch.to), Some(0.5), "20 % -> 10 %: past the flat steps");
        let t = fractions(&[(0.6, 0.8), (0.7, 0.8), (0.8, 0.8)]);
        let mut c = ExitController::new(Exit::max_prob(0.8), MS(200), 0.95, &t);
        assert_eq!(c.decide(Some(MS(900))).map(|ch| ch.to), Some(0.7), "nothing sends on less: the nearest");
    }

    #[test]
    fn a_tightening_that_is_undone_waits_twice_as_long_next_time() {
        let t = table(&[(0.6, 0.95), (0.7, 0.96), (0.8, 0.97)]);
        let mut c = ExitController::new(Exit::max_prob(0.8), MS(200), 0.95, &t);
        c.decide(Some(MS(900)));
        c.decide(Some(MS(900)));
        assert_eq!(c.threshold(), 0.6);
        assert_eq!(c.calm_needed(), Some(CALM_DECISIONS));
        // Calm decisions until the rule tightens; returns how many it took.
        let tighten = |c: &mut ExitController| {
            (1..=MAX_CALM_DECISIONS * 2).find(|_| c.decide(Some(MS(50))).is_some()).expect("tightens")
        };
        // 0.7 cannot carry the load: each time it is undone, the next try waits twice as long,
        // up to the cap.
        let mut waited = Vec::new();
        for _ in 0..7 {
            waited.push(tighten(&mut c));
            assert_eq!(c.threshold(), 0.7);
            c.decide(Some(MS(50)));
            let undo = c.decide(Some(MS(300))).expect("overload relaxes");
            assert_eq!((undo.from, undo.to), (0.7, 0.6));
        }
        let d = CALM_DECISIONS;
        assert_eq!(waited, vec![d, 2 * d, 4 * d, 8 * d, 16 * d, 16 * d, 16 * d]);
        assert_eq!(MAX_CALM_DECISIONS, 16 * d);
        // This time 0.7 holds through its probation: the wait halves, and the base's own wait
        // was never raised.
        assert_eq!(tighten(&mut c), 16 * d);
        for _ in 0..16 * d - 1 {
            assert_eq!(c.decide(Some(MS(150))), None, "in the band: hold");
        }
        assert_eq!(c.decide(Some(MS(150))), None);
        assert_eq!(c.calm_needed(), Some(d), "0.8 waits the usual calm");
        assert_eq!(tighten(&mut c), d);
        assert_eq!(c.threshold(), 0.8);
        // Relaxing again, 0.7's wait is halved (8x), not back to 1x.
        c.decide(Some(MS(900)));
        c.decide(Some(MS(900)));
        assert_eq!(c.calm_needed(), Some(8 * d));
    }
}
