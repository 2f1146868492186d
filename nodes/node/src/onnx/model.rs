//! One tier's ONNX model: its input/output contract and a session wrapper that runs a batch.
//!
//! The contract itself (one float32, float16 or uint8 input with a leading batch dimension, `probs` [N, classes],
//! `features` on every tier but the last) is checked in `contract.rs`, shared with `ddnn inspect`.

use std::path::Path;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use crate::onnx::contract;
use crate::onnx::device::{device_error, Device};
use crate::onnx::runtime::ensure_init;
use crate::wire::{DType, Tensor};

pub const PROBS_OUTPUT: &str = "probs";
pub const FEATURES_OUTPUT: &str = "features";

/// What a model expects and produces, read from its header.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub input_name: String,
    /// Input shape without the batch dimension.
    pub input_shape: Vec<usize>,
    /// Element type of the input (float32, float16 or uint8).
    pub input_dtype: DType,
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

/// A session for reading a model's header (contract, metadata), never run: no graph
/// optimisation, so checking a topology (every tier's model, in every node) does not pay, in
/// time and in peak memory, for plans that only the workers' sessions need.
pub(crate) fn open_session(path: &Path) -> Result<Session, String> {
    let env = ensure_init()?;
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| e.to_string())?
        .with_intra_threads(1)
        .map_err(|e| e.to_string())?
        .commit_from_file(path)
        .map_err(|e| e.to_string())
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
        .map_err(|e| e.to_string())?
        // Batches vary in size, and a memory pattern is planned and kept per input shape: off,
        // the resnet edge's peak under a burst fell from 112-121 to 85-94 MiB at the same CPU
        // per digit (bench/RESULTS.md). The CPU arena stays on: without it the same run peaked
        // at 129-132 MiB (freed activations fragment the heap instead of being reused).
        .with_memory_pattern(false)
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

/// A batch of samples laid out contiguously in the model's input type.
#[derive(Debug, Clone, PartialEq)]
pub enum InputBatch {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    U8(Vec<u8>),
}

impl InputBatch {
    pub fn with_capacity(dtype: DType, values: usize) -> Self {
        match dtype {
            DType::F32 => InputBatch::F32(Vec::with_capacity(values)),
            DType::F16 => InputBatch::F16(Vec::with_capacity(values)),
            DType::U8 => InputBatch::U8(Vec::with_capacity(values)),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            InputBatch::F32(_) => DType::F32,
            InputBatch::F16(_) => DType::F16,
            InputBatch::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            InputBatch::F32(v) => v.len(),
            InputBatch::F16(v) => v.len(),
            InputBatch::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one sample, converted to the batch's type. uint8 widens exactly into either
    /// float; float16 widens exactly into float32; float32 rounds to the nearest float16 (the
    /// model was declared half precision). Floats never go into a uint8 model: that is a
    /// mismatch, and the batch is left unchanged.
    pub fn push(&mut self, t: &Tensor) -> Result<(), String> {
        let f16s =
            |data: &[u8]| data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>();
        match (self, t.dtype) {
            (InputBatch::F32(v), _) => t.extend_f32(v),
            (InputBatch::F16(v), DType::F16) => v.extend(f16s(&t.data)),
            (InputBatch::F16(v), DType::U8) => v.extend(t.data.iter().map(|&b| half::f16::from(b))),
            (InputBatch::F16(v), DType::F32) => {
                let mut f = Vec::with_capacity(t.elements());
                t.extend_f32(&mut f);
                v.extend(f.into_iter().map(half::f16::from_f32));
            }
            (InputBatch::U8(v), DType::U8) => v.extend_from_slice(&t.data),
            (InputBatch::U8(_), other) => {
                return Err(format!("dtype mismatch: the record carries {other} values, the model takes uint8"))
            }
        }
        Ok(())
    }
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

    /// Runs `rows` samples given as f32 (converted to the model's input type): for callers
    /// outside the data path (offline cascade, tools).
    pub fn run(&mut self, input: &[f32], rows: usize) -> Result<BatchOutput, String> {
        let batch = if self.info.input_dtype == DType::U8 {
            // Pixel values 0..=255 as f32 are exact as uint8; anything else cannot be fed.
            let bytes: Option<Vec<u8>> =
                input.iter().map(|&v| (v.fract() == 0.0 && (0.0..=255.0).contains(&v)).then_some(v as u8)).collect();
            InputBatch::U8(bytes.ok_or("the model takes uint8; the values are not all integers 0..=255")?)
        } else {
            let mut batch = InputBatch::with_capacity(self.info.input_dtype, input.len());
            batch.push(&Tensor::from_f32(vec![input.len() as u32], input))?;
            batch
        };
        self.run_batch(&batch, rows)
    }

    /// Runs `rows` samples laid out contiguously in `input` (rows * input_width values).
    pub fn run_batch(&mut self, input: &InputBatch, rows: usize) -> Result<BatchOutput, String> {
        let width = self.info.input_width();
        if input.len() != rows * width {
            return Err(format!("batch of {rows} needs {} values, got {}", rows * width, input.len()));
        }
        if input.dtype() != self.info.input_dtype {
            return Err(format!("the model takes {}, the batch is {}", self.info.input_dtype, input.dtype()));
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.info.input_shape);
        let name = self.info.input_name.as_str();
        let outputs = match input {
            InputBatch::F32(v) => {
                let tensor = TensorRef::from_array_view((shape, v.as_slice())).map_err(|e| e.to_string())?;
                self.session.run(ort::inputs![name => tensor])
            }
            InputBatch::F16(v) => {
                let tensor = TensorRef::from_array_view((shape, v.as_slice())).map_err(|e| e.to_string())?;
                self.session.run(ort::inputs![name => tensor])
            }
            InputBatch::U8(v) => {
                let tensor = TensorRef::from_array_view((shape, v.as_slice())).map_err(|e| e.to_string())?;
                self.session.run(ort::inputs![name => tensor])
            }
        }
        .map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_samples_in_the_models_type() {
        let u8s = Tensor { dtype: DType::U8, shape: vec![2], data: vec![3, 255] };
        let f16s = Tensor {
            dtype: DType::F16,
            shape: vec![2],
            data: [0.5f32, -2.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        };
        let f32s = Tensor::from_f32(vec![2], &[0.1, 70_000.0]);
        let mut b = InputBatch::with_capacity(DType::F32, 6);
        for t in [&u8s, &f16s, &f32s] {
            b.push(t).unwrap();
        }
        assert_eq!(b, InputBatch::F32(vec![3.0, 255.0, 0.5, -2.0, 0.1, 70_000.0]));
        let mut b = InputBatch::with_capacity(DType::F16, 6);
        for t in [&u8s, &f16s, &f32s] {
            b.push(t).unwrap();
        }
        let want: Vec<half::f16> =
            [3.0, 255.0, 0.5, -2.0, 0.1, f32::INFINITY].iter().map(|&v| half::f16::from_f32(v)).collect();
        assert_eq!(b, InputBatch::F16(want), "float32 rounds to float16; beyond its range is infinite");
        let mut b = InputBatch::with_capacity(DType::U8, 2);
        b.push(&u8s).unwrap();
        assert_eq!(
            b.push(&f32s).unwrap_err(),
            "dtype mismatch: the record carries float32 values, the model takes uint8"
        );
        assert_eq!(
            b.push(&f16s).unwrap_err(),
            "dtype mismatch: the record carries float16 values, the model takes uint8"
        );
        assert_eq!(b, InputBatch::U8(vec![3, 255]), "a refused sample leaves the batch as it was");
    }
}
