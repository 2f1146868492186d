//! The inference stage: an elastic pool of ONNX Runtime workers.
//!
//! Input: [`Consumed`](crate::consumer::Consumed) from the consumer's bounded channel (plus a
//! retry queue for batches whose inference failed). Output: one [`Inferred`] per input into the
//! producer's bounded channel (a full channel blocks the worker: backpressure). Each worker is a
//! dedicated thread owning its ONNX session; it takes a micro-batch of what is waiting. Failure:
//! a worker whose inference errors or panics puts its batch on the retry queue and exits; the
//! pool restarts it with capped backoff; a message failing `MAX_ATTEMPTS` times is
//! dead-lettered.

pub mod batch;
pub mod exit_rule;
pub mod offline;

/// The model contract and session wrapper live in `crate::onnx` (shared with config validation).
pub use crate::onnx::{model, runtime};
pub mod pool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{Device, Exit, ExitFormat, ExitRule, InputFormat, InputSettings, ModelId, Tier};
use crate::onnx::model::ModelInfo;

pub use crate::messages::{Inferred, Route};

/// Why a worker could not produce outputs for a batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferenceError {
    /// The worker could not open its session: no record was tried.
    #[error("cannot load {path}: {message}")]
    Load { path: String, message: String },
    /// ONNX Runtime returned an error for the batch.
    #[error("{0}")]
    Run(String),
    #[error("inference panicked: {0}")]
    Panicked(String),
    /// Test-only fault switch.
    #[error("injected fault")]
    Injected,
}

impl InferenceError {
    /// Every inference failure may be transient (a worker restart with backoff follows), so
    /// the batch is always retried; only a record failing alone `MAX_ATTEMPTS` times is
    /// dead-lettered. Whether the failure says anything about the records of the batch: a
    /// session that did not load never saw them, so they wait without an attempt counted.
    pub fn counts_against_records(&self) -> bool {
        !matches!(self, InferenceError::Load { .. })
    }
}

/// What the workers of one tier need to know; the live-tunable parts are atomics so a
/// topology reload can change them in place.
#[derive(Debug)]
pub struct TierSpec {
    pub name: String,
    pub input_topic: String,
    pub format: InputFormat,
    pub settings: InputSettings,
    pub model: PathBuf,
    pub model_info: ModelInfo,
    pub is_last: bool,
    /// How exit records are written (a change restarts the tier, so not live-tunable).
    pub exit_format: ExitFormat,
    /// Named in json exit records.
    pub model_id: ModelId,
    /// Where the workers' sessions run.
    pub device: Device,
    /// Null relay (benchmark baseline): no model, each record passes on unchanged.
    pub relay: bool,
    /// Test-only: abort the process before inferring the record with this key.
    pub crash_on_key: Option<Vec<u8>>,
    /// The exit rule and threshold packed in one word ([`pack_exit`]), so that a reload never
    /// pairs one rule with the other's threshold for a batch.
    exit_bits: AtomicU64,
    batch_max: AtomicUsize,
    batch_delay_us: AtomicU64,
}

impl TierSpec {
    pub fn new(tier: &Tier, is_last: bool) -> Self {
        let spec = Self {
            name: tier.name.clone(),
            input_topic: tier.input.topic.topic.clone(),
            format: tier.input.format,
            settings: tier.input.settings.clone(),
            model: tier.model.clone(),
            model_info: tier.model_info.clone(),
            is_last,
            exit_format: tier.exit_format,
            model_id: tier.model_id.clone(),
            device: tier.device,
            relay: false,
            crash_on_key: None,
            exit_bits: AtomicU64::new(0),
            batch_max: AtomicUsize::new(1),
            batch_delay_us: AtomicU64::new(0),
        };
        spec.apply(tier);
        spec
    }

    /// Applies the live-tunable settings of `tier`.
    pub fn apply(&self, tier: &Tier) {
        self.exit_bits.store(pack_exit(tier.exit), Ordering::Relaxed);
        self.batch_max.store(tier.batch.max.max(1), Ordering::Relaxed);
        self.batch_delay_us.store(tier.batch.max_delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// The adaptive exit's move: the same rule, another threshold.
    pub fn set_threshold(&self, threshold: f32) {
        let exit = Exit { rule: self.exit().rule, threshold };
        self.exit_bits.store(pack_exit(exit), Ordering::Relaxed);
    }

    pub fn exit(&self) -> Exit {
        unpack_exit(self.exit_bits.load(Ordering::Relaxed))
    }
    pub fn batch_max(&self) -> usize {
        self.batch_max.load(Ordering::Relaxed)
    }
    pub fn batch_delay(&self) -> Duration {
        Duration::from_micros(self.batch_delay_us.load(Ordering::Relaxed))
    }
}

/// Rule index in the high word, threshold bits in the low word.
fn pack_exit(exit: Exit) -> u64 {
    let rule = ExitRule::ALL.iter().position(|&r| r == exit.rule).unwrap_or(0) as u64;
    rule << 32 | u64::from(exit.threshold.to_bits())
}

fn unpack_exit(bits: u64) -> Exit {
    let rule = ExitRule::ALL.get((bits >> 32) as usize).copied().unwrap_or(ExitRule::MaxProb);
    Exit { rule, threshold: f32::from_bits(bits as u32) }
}

#[cfg(test)]
mod tests {
    use super::InferenceError;
    use crate::config::{Exit, ExitRule};

    #[test]
    fn exit_settings_pack_into_one_word_and_back() {
        for rule in ExitRule::ALL {
            for threshold in [0.0, 0.3, 0.8, 1.0] {
                let exit = Exit { rule, threshold };
                assert_eq!(super::unpack_exit(super::pack_exit(exit)), exit);
            }
        }
    }

    #[test]
    fn only_failures_that_saw_the_records_count_against_them() {
        let load = InferenceError::Load { path: "m.onnx".into(), message: "no such file".into() };
        assert!(!load.counts_against_records());
        assert_eq!(load.to_string(), "cannot load m.onnx: no such file");
        for e in
            [InferenceError::Run("bad dims".into()), InferenceError::Panicked("boom".into()), InferenceError::Injected]
        {
            assert!(e.counts_against_records(), "{e}");
        }
        assert_eq!(InferenceError::Panicked("boom".into()).to_string(), "inference panicked: boom");
    }
}
