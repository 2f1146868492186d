//! Exit rules: whether a sample leaves at this tier, from its softmax. Pure; the node's workers
//! and the offline cascade (tests, model card reference) call the same functions, so both
//! always decide alike.
//!
//! - `max-prob` (the paper's): top probability >= threshold;
//! - `entropy` (BranchyNet's): entropy of the softmax / ln(classes) <= threshold;
//! - `margin`: top-1 minus top-2 probability >= threshold.
//!
//! The last tier always exits, whatever its rule says.

use crate::config::{Exit, ExitRule};

/// Index and value of the largest probability (first wins on ties; NaN never wins).
pub fn top1(probs: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &p) in probs.iter().enumerate() {
        if p > best.1 {
            best = (i, p);
        }
    }
    best
}

/// Top-1 minus top-2 probability: 0 on a tie for first place; with one class, the top
/// probability itself (the missing runner-up counts as 0).
pub fn margin(probs: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &p in probs {
        if p > first {
            second = first;
            first = p;
        } else if p > second {
            second = p;
        }
    }
    match (first.is_finite(), second.is_finite()) {
        (true, true) => first - second,
        (true, false) => first,
        _ => f32::NAN,
    }
}

/// Entropy of `probs` (natural log, 0·ln 0 = 0) divided by ln(classes): 0 when one class is
/// certain, 1 for the uniform distribution. A single class cannot be uncertain: 0. Summed in
/// f64 so that the normalisation does not amplify rounding for large class counts.
pub fn normalized_entropy(probs: &[f32]) -> f32 {
    if probs.len() < 2 {
        return 0.0;
    }
    let h: f64 = probs.iter().map(|&p| f64::from(p)).filter(|&p| p != 0.0).map(|p| -p * p.ln()).sum();
    (h / (probs.len() as f64).ln()) as f32
}

/// What `rule` measures on these probabilities (compared with the threshold by [`exits`]).
pub fn measure(rule: ExitRule, probs: &[f32]) -> f32 {
    match rule {
        ExitRule::MaxProb => top1(probs).1,
        ExitRule::Entropy => normalized_entropy(probs),
        ExitRule::Margin => margin(probs),
    }
}

/// Whether a sample whose rule measured `value` exits; thresholds are inclusive, NaN never
/// exits (except at the last tier).
pub fn exits(exit: Exit, value: f32, is_last: bool) -> bool {
    is_last
        || match exit.rule {
            ExitRule::MaxProb | ExitRule::Margin => value >= exit.threshold,
            ExitRule::Entropy => value <= exit.threshold,
        }
}

/// [`measure`] then [`exits`].
pub fn decide(exit: Exit, probs: &[f32], is_last: bool) -> bool {
    exits(exit, measure(exit.rule, probs), is_last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_PROB: ExitRule = ExitRule::MaxProb;
    const ENTROPY: ExitRule = ExitRule::Entropy;
    const MARGIN: ExitRule = ExitRule::Margin;

    fn rule(rule: ExitRule, threshold: f32) -> Exit {
        Exit { rule, threshold }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn max_prob_threshold_is_inclusive() {
        assert!(exits(rule(MAX_PROB, 0.8), 0.8, false));
        assert!(!exits(rule(MAX_PROB, 0.8), 0.7999, false));
        assert!(exits(rule(MAX_PROB, 0.8), 0.1, true), "the last tier always exits");
        assert!(!exits(rule(MAX_PROB, 0.5), f32::NAN, false));
    }

    #[test]
    fn top1_picks_the_largest_first() {
        assert_eq!(top1(&[0.1, 0.6, 0.3]), (1, 0.6));
        assert_eq!(top1(&[0.5, 0.5]), (0, 0.5));
        assert_eq!(top1(&[f32::NAN, 0.2]), (1, 0.2));
    }

    #[test]
    fn entropy_is_zero_when_certain_and_one_when_uniform() {
        assert_eq!(normalized_entropy(&[0.0, 1.0, 0.0, 0.0]), 0.0, "0 ln 0 counts as 0");
        assert!(close(normalized_entropy(&[0.25; 4]), 1.0));
        assert!(close(normalized_entropy(&[0.1; 10]), 1.0));
        // Two classes at 0.5: one bit of one bit.
        assert!(close(normalized_entropy(&[0.5, 0.5]), 1.0));
        // H(0.9, 0.1) = 0.325083 nats; / ln 2 = 0.468996.
        assert!(close(normalized_entropy(&[0.9, 0.1]), 0.468_996), "{}", normalized_entropy(&[0.9, 0.1]));
        assert_eq!(normalized_entropy(&[1.0]), 0.0, "one class is never uncertain");
        assert_eq!(normalized_entropy(&[]), 0.0);
    }

    #[test]
    fn entropy_exits_at_or_below_the_threshold() {
        let e = rule(ENTROPY, 0.469);
        assert!(decide(e, &[0.9, 0.1], false), "0.468996 <= 0.469");
        assert!(!decide(rule(ENTROPY, 0.468), &[0.9, 0.1], false), "0.468996 > 0.468");
        assert!(decide(rule(ENTROPY, 0.0), &[0.0, 1.0, 0.0], false), "certain exits even at threshold 0");
        assert!(!decide(rule(ENTROPY, 0.99), &[0.25; 4], false), "uniform does not exit below 1");
        assert!(decide(rule(ENTROPY, 0.0), &[0.25; 4], true), "the last tier always exits");
        assert!(!exits(rule(ENTROPY, 0.5), f32::NAN, false));
    }

    #[test]
    fn margin_is_top1_minus_top2() {
        assert!(close(margin(&[0.1, 0.6, 0.3]), 0.3));
        assert!(close(margin(&[0.6, 0.1, 0.3]), 0.3), "the runner-up may come after the winner");
        assert_eq!(margin(&[0.4, 0.4, 0.2]), 0.0, "a tie for first place has no margin");
        assert_eq!(margin(&[0.25; 4]), 0.0, "uniform");
        assert_eq!(margin(&[0.0, 1.0, 0.0]), 1.0, "one class certain");
        assert_eq!(margin(&[0.7]), 0.7, "one class: the runner-up counts as 0");
        assert!(margin(&[]).is_nan());
    }

    #[test]
    fn margin_exits_at_or_above_the_threshold() {
        assert!(decide(rule(MARGIN, 0.5), &[0.75, 0.25], false), "0.5 >= 0.5");
        assert!(!decide(rule(MARGIN, 0.5), &[0.7, 0.3], false), "0.4 < 0.5");
        assert!(!decide(rule(MARGIN, 0.01), &[0.45, 0.45, 0.1], false), "a tie never exits");
        assert!(decide(rule(MARGIN, 1.0), &[0.0, 1.0], false), "certain exits even at threshold 1");
        assert!(decide(rule(MARGIN, 1.0), &[0.5, 0.5], true), "the last tier always exits");
        assert!(!exits(rule(MARGIN, 0.5), f32::NAN, false));
    }

    #[test]
    fn the_rules_disagree_where_they_should() {
        // A confident top-1 over a spread-out rest: max-prob and margin exit, entropy does not.
        let spread = [0.82, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02];
        assert!(decide(rule(MAX_PROB, 0.8), &spread, false));
        assert!(decide(rule(MARGIN, 0.75), &spread, false));
        assert!(!decide(rule(ENTROPY, 0.2), &spread, false), "{}", normalized_entropy(&spread));
        // Two close candidates: max-prob exits at 0.45, margin does not.
        let two = [0.5, 0.48, 0.02];
        assert!(decide(rule(MAX_PROB, 0.45), &two, false));
        assert!(!decide(rule(MARGIN, 0.1), &two, false));
    }
}
