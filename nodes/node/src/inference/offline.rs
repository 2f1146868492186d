//! The continuum's answer computed offline, in one process, with the same models and exit
//! rule: the reference the pipeline is checked against (tests, model card, bench).

use super::exit_rule::{decide, top1};
use crate::config::Exit;
use crate::onnx::model::Model;

/// Where one sample left and what it predicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub exit_tier: usize,
    pub label: usize,
    pub confidence: f32,
}

/// Runs one sample (model-0 input, as f32) through the tiers in order, every tier with `exit`.
pub fn cascade(models: &mut [Model], input: &[f32], exit: Exit) -> Result<Outcome, String> {
    let mut x = input.to_vec();
    let last = models.len().checked_sub(1).ok_or("no models")?;
    for (i, m) in models.iter_mut().enumerate() {
        let out = m.run(&x, 1)?;
        let (label, confidence) = top1(&out.probs);
        let is_last = i == last;
        match out.features {
            Some(f) if !decide(exit, &out.probs, is_last) => x = f,
            _ => return Ok(Outcome { exit_tier: i, label, confidence }),
        }
    }
    Err("no tier exited".to_string())
}
