//! SLO-driven adaptive exits (pure policy): when a tier's latency (or a later tier's in this
//! node) exceeds the target, relax the exit rule one step so that more inputs leave early and
//! less work travels on; tighten back, with hysteresis, as load falls. The steps come from the
//! model's calibration table (`models/card.py` writes it next to the model: threshold -> share
//! exiting -> end-to-end accuracy on held-out digits) and stop before the first threshold whose
//! accuracy falls under the floor. The topology's threshold is the base the rule returns to.

use std::time::Duration;

use crate::config::{CalPoint, Exit, ExitRule};

/// Tighten only once the latency stayed under this share of the target...
pub const CALM_SHARE: f64 = 0.5;
/// ...for this many decisions in a row, three seconds at the supervisor's four decisions a
/// second (a relaxation acts at once: overload costs more).
pub const CALM_DECISIONS: u32 = 12;

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
}

impl ExitController {
    pub fn new(base: Exit, target: Duration, floor: f64, table: &[CalPoint]) -> Self {
        Self { rule: base.rule, target, steps: ladder(base, table, floor), table: table.to_vec(), at: 0, calm: 0 }
    }

    pub fn threshold(&self) -> f32 {
        self.steps[self.at]
    }

    /// The steps, base first.
    pub fn steps(&self) -> &[f32] {
        &self.steps
    }

    /// One decision on the latest p99 estimate (`None` when nothing passed).
    pub fn decide(&mut self, p99: Option<Duration>) -> Option<ExitChange> {
        let from = self.threshold();
        let over = p99.is_some_and(|p| p > self.target);
        let calm = p99.is_none_or(|p| p.as_secs_f64() < self.target.as_secs_f64() * CALM_SHARE);
        if over {
            self.calm = 0;
            if self.at + 1 < self.steps.len() {
                self.at += 1;
                return Some(self.change(from, true, p99));
            }
            return None;
        }
        if !calm {
            self.calm = 0;
            return None;
        }
        self.calm += 1;
        if self.calm >= CALM_DECISIONS && self.at > 0 {
            self.calm = 0;
            self.at -= 1;
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
}
