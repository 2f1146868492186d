//! One tier's ONNX model: its input/output contract and a session wrapper that runs a batch.
//!
//! The contract itself (one float32 input with a leading batch dimension, `probs` [N, classes],
//! `features` on every tier but the last) is checked in `contract.rs`, shared with `ddnn inspect`.

use std::path::Path;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use crate::onnx::contract;
use crate::onnx::device::{device_error, Device};
use crate::onnx::runtime::ensure_init;

pub const PROBS_OUTPUT: &str = "probs";
pub const FEATURES_OUTPUT: &str = "features";

/// What a model expects and produces, read from its header.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub input_name: String,
    /// Input shape without the batch dimension.
    pub input_shape: Vec<usize>,
    pub classes: usize,
    /// Shape of the `features` output without the batch dimension; `None` when absent.
    pub features_shape: Option<Vec<usize>>,
    /// The input's batch dimension when the model fixes it (e.g. exported with batch 1);
    /// `None` when the batch axis is dynamic.
    pub fixed_batch: Option<usize>,
}

impl ModelInfo {
    pub fn input_width(&self) -> usize {
        self.input_shape.iter().product()
    }
    pub fn features_width(&self) -> Option<usize> {
        self.features_shape.as_ref().map(|s| s.iter().product())
    }
}

/// The model's contract as the node uses it, or every violation (`ddnn inspect` explains them).
fn info_of(session: &Session) -> Result<ModelInfo, String> {
    let contract = contract::check(session);
    contract.info.ok_or_else(|| {
        let problems: Vec<String> = contract.violations.into_iter().map(|v| v.problem).collect();
        problems.join("; ")
    })
}

pub(crate) fn open_session(path: &Path) -> Result<Session, String> {
    open_session_on(path, Device::Cpu)
}

/// A session whose nodes run on `device`. For `cuda:N` the CUDA execution provider is
/// registered with `error_on_failure`: without it ort logs the failure and quietly runs on the
/// CPU, and a tier configured for a GPU must not do that unnoticed.
pub(crate) fn open_session_on(path: &Path, device: Device) -> Result<Session, String> {
    let env = ensure_init()?;
    let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
    builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?
        .with_intra_threads(1)
        .map_err(|e| e.to_string())?;
    if let Device::Cuda(id) = device {
        // `Device::parse` keeps N within i32.
        let cuda = ort::ep::CUDA::default().with_device_id(id as i32).build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| device_error(device, &e.to_string()))?;
    }
    builder.commit_from_file(path).map_err(|e| match device {
        // A provider that registered can still fail when the session binds the GPU.
        Device::Cuda(_) => device_error(device, &e.to_string()),
        Device::Cpu => e.to_string(),
    })
}

/// Reads a model's header (opens a session; no inference).
pub fn probe(path: &Path) -> Result<ModelInfo, String> {
    if !path.is_file() {
        return Err("file not found".to_string());
    }
    let session = open_session(path)?;
    info_of(&session)
}

/// Result of running one batch: row-major probabilities and (optionally) features.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    pub probs: Vec<f32>,
    pub features: Option<Vec<f32>>,
}

/// A session owned by one worker (`Session::run` needs `&mut self`).
pub struct Model {
    session: Session,
    pub info: ModelInfo,
}

impl Model {
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_on(path, Device::Cpu)
    }

    /// A session on `device` (see [`open_session_on`]).
    pub fn load_on(path: &Path, device: Device) -> Result<Self, String> {
        let session = open_session_on(path, device)?;
        let info = info_of(&session)?;
        Ok(Self { session, info })
    }

    /// Runs `rows` samples laid out contiguously in `input` (rows * input_width floats).
    pub fn run(&mut self, input: &[f32], rows: usize) -> Result<BatchOutput, String> {
        let width = self.info.input_width();
        if input.len() != rows * width {
            return Err(format!("batch of {rows} needs {} floats, got {}", rows * width, input.len()));
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.info.input_shape);
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| e.to_string())?;
        let outputs =
            self.session.run(ort::inputs![self.info.input_name.as_str() => tensor]).map_err(|e| e.to_string())?;
        let probs = outputs
            .get(PROBS_OUTPUT)
            .ok_or("model returned no `probs`")?
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?
            .1
            .to_vec();
        let features = match (outputs.get(FEATURES_OUTPUT), &self.info.features_shape) {
            (Some(v), Some(_)) => Some(v.try_extract_tensor::<f32>().map_err(|e| e.to_string())?.1.to_vec()),
            _ => None,
        };
        Ok(BatchOutput { probs, features })
    }
}
