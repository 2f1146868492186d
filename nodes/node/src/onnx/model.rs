//! One tier's ONNX model: its input/output contract and a session wrapper that runs a batch.
//!
//! Contract (see models/README.md): one float32 input whose first dimension is the batch; an
//! output named `probs` ([N, classes], softmax) and, on every tier but the last, an output named
//! `features` (the activations handed to the next tier).

use std::path::Path;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{TensorElementType, TensorRef, ValueType};

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

fn fixed_dims(v: &ValueType, what: &str) -> Result<Vec<usize>, String> {
    let Some(shape) = v.tensor_shape() else {
        return Err(format!("{what} is not a tensor"));
    };
    if v.tensor_type() != Some(TensorElementType::Float32) {
        return Err(format!("{what} must be float32, found {:?}", v.tensor_type()));
    }
    if shape.is_empty() {
        return Err(format!("{what} has no batch dimension"));
    }
    shape[1..]
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .ok_or_else(|| format!("{what} has a dynamic non-batch dimension ({shape:?})"))
        })
        .collect()
}

/// The first (batch) dimension of a tensor type, when it is a fixed size; ONNX marks a
/// symbolic or unknown dimension with a value <= 0.
fn fixed_batch_dim(v: &ValueType) -> Option<usize> {
    let first = *v.tensor_shape()?.first()?;
    usize::try_from(first).ok().filter(|&d| d > 0)
}

fn info_of(session: &Session) -> Result<ModelInfo, String> {
    let [input] = session.inputs() else {
        return Err(format!("expected exactly 1 input, found {}", session.inputs().len()));
    };
    let input_shape = fixed_dims(input.dtype(), &format!("input `{}`", input.name()))?;
    let fixed_batch = fixed_batch_dim(input.dtype());
    let mut classes = None;
    let mut features_shape = None;
    for out in session.outputs() {
        match out.name() {
            PROBS_OUTPUT => {
                let d = fixed_dims(out.dtype(), "output `probs`")?;
                if d.len() != 1 {
                    return Err(format!("output `probs` must be [N, classes], found [N, {d:?}]"));
                }
                classes = Some(d[0]);
            }
            FEATURES_OUTPUT => {
                features_shape = Some(fixed_dims(out.dtype(), "output `features`")?);
            }
            _ => {}
        }
    }
    let classes = classes.ok_or("no output named `probs`")?;
    Ok(ModelInfo { input_name: input.name().to_string(), input_shape, classes, features_shape, fixed_batch })
}

fn open_session(path: &Path) -> Result<Session, String> {
    let env = ensure_init()?;
    let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
    builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?
        .with_intra_threads(1)
        .map_err(|e| e.to_string())?;
    builder.commit_from_file(path).map_err(|e| e.to_string())
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
        let session = open_session(path)?;
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
