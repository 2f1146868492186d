//! The paper's exit rule: leave at this tier when the top softmax probability reaches the
//! tier's threshold; the last tier always exits.

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

/// Whether a sample with these probabilities exits here.
pub fn exits(confidence: f32, threshold: f32, is_last: bool) -> bool {
    is_last || confidence >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_inclusive() {
        assert!(exits(0.8, 0.8, false));
        assert!(!exits(0.7999, 0.8, false));
        assert!(exits(0.1, 0.8, true), "the last tier always exits");
        assert!(!exits(f32::NAN, 0.5, false));
    }

    #[test]
    fn top1_picks_the_largest_first() {
        assert_eq!(top1(&[0.1, 0.6, 0.3]), (1, 0.6));
        assert_eq!(top1(&[0.5, 0.5]), (0, 0.5));
        assert_eq!(top1(&[f32::NAN, 0.2]), (1, 0.2));
    }
}
