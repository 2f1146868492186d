//! A model's contract with the node, read from its header: what `ddnn inspect` prints and what
//! config validation and the workers accept. One check for all three, so that `inspect` says
//! exactly what a topology using the model would be told, plus how to fix it.
//!
//! Contract (models/README.md): exactly one float32, float16 or uint8 input whose first dimension is the batch and
//! whose other dimensions are fixed; an output `probs` [N, classes] (float32, the softmax); on
//! every tier but the last an output `features` (float32, fixed non-batch dimensions) handed to
//! the next tier. Other outputs are ignored.

use std::fmt::Write as _;
use std::path::Path;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::model::{ModelInfo, FEATURES_OUTPUT, PROBS_OUTPUT};
use crate::wire::{image, DType};

/// One dimension as declared: a size, or dynamic (its symbol, e.g. `N`, or `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Dynamic(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(s) => f.write_str(s),
        }
    }
}

/// What an input or output is declared as.
#[derive(Debug, Clone, PartialEq)]
pub enum PortType {
    Tensor {
        dtype: TensorElementType,
        dims: Vec<Dim>,
    },
    /// A sequence, map or optional: printed as ONNX Runtime describes it.
    Other(String),
}

/// A named input or output of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub ty: PortType,
}

impl Port {
    fn of(name: &str, v: &ValueType) -> Self {
        let ty = match v {
            ValueType::Tensor { ty, shape, dimension_symbols } => PortType::Tensor {
                dtype: *ty,
                dims: shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match usize::try_from(d) {
                        // ONNX marks a symbolic or unknown dimension with a value <= 0.
                        Ok(d) if d > 0 => Dim::Fixed(d),
                        _ => Dim::Dynamic(
                            dimension_symbols.get(i).filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| "?".into()),
                        ),
                    })
                    .collect(),
            },
            other => PortType::Other(other.to_string()),
        };
        Self { name: name.to_string(), ty }
    }

    /// `f32 [N, 1, 28, 28]`.
    pub fn describe(&self) -> String {
        match &self.ty {
            PortType::Tensor { dtype, dims } => {
                let dims: Vec<String> = dims.iter().map(ToString::to_string).collect();
                format!("{dtype} [{}]", dims.join(", "))
            }
            PortType::Other(t) => t.clone(),
        }
    }
}

/// A broken rule of the contract and how to fix the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub problem: String,
    pub hint: String,
}

/// The contract as read from one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub violations: Vec<Violation>,
    /// What the node uses; `Some` exactly when there is no violation.
    pub info: Option<ModelInfo>,
}

struct Check {
    violations: Vec<Violation>,
}

impl Check {
    fn violation(&mut self, problem: String, hint: impl Into<String>) {
        self.violations.push(Violation { problem, hint: hint.into() });
    }

    /// The batch dimension and the fixed other dimensions of a float32 tensor; records a
    /// violation (and returns `None`) otherwise. `what`: "input `x`", "output `probs`".
    fn tensor(&mut self, port: &Port, what: &str, is_input: bool) -> Option<(Dim, Vec<usize>)> {
        let (dtype, dims) = match &port.ty {
            PortType::Tensor { dtype, dims } => (*dtype, dims),
            PortType::Other(t) => {
                self.violation(
                    format!("{what} is a {t}, not a tensor"),
                    "the node exchanges plain tensors; export a tensor instead",
                );
                return None;
            }
        };
        let mut ok = true;
        if is_input && input_dtype(dtype).is_none() {
            self.violation(
                format!("{what} is {dtype}; the node feeds f32, f16 or u8"),
                "declare the input float32, float16 or uint8 and cast inside the graph if the model needs another \
                 type",
            );
            ok = false;
        } else if !is_input && dtype != TensorElementType::Float32 {
            self.violation(
                format!("{what} is {dtype}; the node needs f32"),
                "add a Cast to float32 before this output",
            );
            ok = false;
        }
        let Some((batch, rest)) = dims.split_first() else {
            self.violation(
                format!("{what} has no batch dimension (a scalar)"),
                "give it a leading batch dimension, e.g. [N, ...]",
            );
            return None;
        };
        let mut fixed = Vec::with_capacity(rest.len());
        for d in rest {
            match d {
                Dim::Fixed(n) => fixed.push(*n),
                Dim::Dynamic(_) => {
                    self.violation(
                        format!("{what} has a dynamic dimension after the batch: {}", port.describe()),
                        "fix every dimension but the first (export with a static shape, only the batch axis dynamic)",
                    );
                    return None;
                }
            }
        }
        ok.then(|| (batch.clone(), fixed))
    }
}

/// The node's type for a model input of ONNX type `t`, when the node can feed it: float32,
/// float16 (where ONNX Runtime runs it) or uint8.
pub fn input_dtype(t: TensorElementType) -> Option<DType> {
    match t {
        TensorElementType::Float32 => Some(DType::F32),
        TensorElementType::Float16 => Some(DType::F16),
        TensorElementType::Uint8 => Some(DType::U8),
        _ => None,
    }
}

/// Reads the contract of an open session.
pub fn check(session: &Session) -> Contract {
    let inputs: Vec<Port> = session.inputs().iter().map(|i| Port::of(i.name(), i.dtype())).collect();
    let outputs: Vec<Port> = session.outputs().iter().map(|o| Port::of(o.name(), o.dtype())).collect();
    check_ports(inputs, outputs)
}

/// The contract of a model with these declared inputs and outputs (pure).
pub fn check_ports(inputs: Vec<Port>, outputs: Vec<Port>) -> Contract {
    let mut c = Check { violations: Vec::new() };
    let names = |ports: &[Port]| ports.iter().map(|p| format!("`{}`", p.name)).collect::<Vec<_>>().join(", ");

    let input = match inputs.as_slice() {
        [input] => c.tensor(input, &format!("input `{}`", input.name), true).map(|dims| {
            let dtype = match &input.ty {
                PortType::Tensor { dtype, .. } => input_dtype(*dtype),
                PortType::Other(_) => None,
            };
            (input.name.clone(), dtype.unwrap_or(DType::F32), dims)
        }),
        _ => {
            c.violation(
                format!("expected exactly 1 input, found {}: {}", inputs.len(), names(&inputs)),
                "export the tier with one input (the batch of samples); turn the others into constants \
                 (initializers)",
            );
            None
        }
    };

    let classes = match outputs.iter().find(|o| o.name == PROBS_OUTPUT) {
        None => {
            c.violation(
                format!("no output named `{PROBS_OUTPUT}` (outputs: {})", names(&outputs)),
                format!("name the softmax output `{PROBS_OUTPUT}`"),
            );
            None
        }
        Some(probs) => match c.tensor(probs, &format!("output `{PROBS_OUTPUT}`"), false) {
            Some((_, dims)) if dims.len() == 1 => Some(dims[0]),
            Some(_) => {
                c.violation(
                    format!("output `{PROBS_OUTPUT}` must be [N, classes], found {}", probs.describe()),
                    "flatten to [N, classes] before the softmax (Flatten or Reshape)",
                );
                None
            }
            None => None,
        },
    };

    let features = outputs
        .iter()
        .find(|o| o.name == FEATURES_OUTPUT)
        .map(|f| c.tensor(f, &format!("output `{FEATURES_OUTPUT}`"), false).map(|(_, dims)| dims));

    let info = match (input, classes, features) {
        (Some((input_name, input_dtype, (batch, input_shape))), Some(classes), features) if c.violations.is_empty() => {
            Some(ModelInfo {
                input_name,
                input_shape,
                input_dtype,
                classes,
                features_shape: features.flatten(),
                fixed_batch: match batch {
                    Dim::Fixed(n) => Some(n),
                    Dim::Dynamic(_) => None,
                },
            })
        }
        _ => None,
    };
    Contract { inputs, outputs, violations: c.violations, info }
}

/// Why a model could not be inspected at all (the file is not a model ONNX Runtime can load).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InspectError {
    pub path: String,
    pub message: String,
}

/// Opens the model (no inference) and reads its contract.
pub fn inspect(path: &Path) -> Result<Contract, InspectError> {
    let err = |message: String| InspectError { path: path.display().to_string(), message };
    if !path.is_file() {
        return Err(err("file not found".to_string()));
    }
    let session = super::model::open_session(path).map_err(err)?;
    Ok(check(&session))
}

/// What the first-tier formats deliver (here, below config, so that `inspect` and topology
/// validation share them): `paper-json` a [1, 28, 28] image, `raw-u8` (784 bytes) 784 values in
/// any shape.
pub const PAPER_SHAPE: [usize; 3] = [1, 28, 28];
pub const RAW_U8_WIDTH: usize = 784;

/// First-tier input formats (`input.format`) this model can take.
pub fn first_tier_formats(info: &ModelInfo) -> Vec<&'static str> {
    let mut out = vec!["tensor", "json"];
    if image::image_dims(&info.input_shape, image::Layout::Nchw).is_some()
        || image::image_dims(&info.input_shape, image::Layout::Nhwc).is_some()
    {
        out.push("image");
    }
    out.push("kafka-ml");
    if info.input_shape == PAPER_SHAPE {
        out.push("paper-json");
    }
    if info.input_width() == RAW_U8_WIDTH {
        out.push("raw-u8");
    }
    out.push("envelope");
    out
}

impl Contract {
    /// The report `ddnn inspect` prints: the contract as the node sees it, then every violation
    /// with a hint, then a verdict.
    pub fn report(&self, path: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", path.display());
        for p in &self.inputs {
            let batch = match &p.ty {
                PortType::Tensor { dims, .. } => match dims.first() {
                    Some(Dim::Fixed(n)) => format!(" (batch dimension fixed to {n}: batch.max must be <= {n})"),
                    Some(Dim::Dynamic(_)) => " (batch dimension dynamic)".to_string(),
                    None => String::new(),
                },
                PortType::Other(_) => String::new(),
            };
            let _ = writeln!(s, "  input   {}: {}{batch}", p.name, p.describe());
        }
        for p in &self.outputs {
            let role = match p.name.as_str() {
                PROBS_OUTPUT => "the softmax the exit rule reads",
                FEATURES_OUTPUT => "handed to the next tier",
                _ => "ignored by the node",
            };
            let _ = writeln!(s, "  output  {}: {} ({role})", p.name, p.describe());
        }
        if let Some(info) = &self.info {
            let _ = writeln!(
                s,
                "  as a first tier, takes input.format: {}",
                first_tier_formats(info).iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ")
            );
            match info.features_width() {
                Some(w) => {
                    let _ = writeln!(s, "  can be followed by a tier whose model takes {w} values");
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  no `{FEATURES_OUTPUT}` output: fine for a last tier (no `next`); a tier with `next` needs one"
                    );
                }
            }
        }
        for v in &self.violations {
            let _ = writeln!(s, "  violation: {}", v.problem);
            let _ = writeln!(s, "    hint: {}", v.hint);
        }
        match self.violations.len() {
            0 => {
                let _ = write!(s, "contract ok: {} classes", self.info.as_ref().map_or(0, |i| i.classes));
            }
            n => {
                let _ = write!(s, "{n} contract violation(s)");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dtype: TensorElementType, dims: &[&str]) -> Port {
        let dims = dims.iter().map(|d| d.parse().map(Dim::Fixed).unwrap_or_else(|_| Dim::Dynamic(d.to_string())));
        Port { name: name.into(), ty: PortType::Tensor { dtype, dims: dims.collect() } }
    }

    fn f32(name: &str, dims: &[&str]) -> Port {
        tensor(name, TensorElementType::Float32, dims)
    }

    fn problems(c: &Contract) -> Vec<&str> {
        c.violations.iter().map(|v| v.problem.as_str()).collect()
    }

    #[test]
    fn a_good_tier_yields_what_the_node_uses() {
        let c = check_ports(
            vec![f32("pixels", &["N", "1", "28", "28"])],
            vec![f32("probs", &["N", "10"]), f32("features", &["N", "32"]), f32("logits", &["N", "10"])],
        );
        assert!(c.violations.is_empty());
        let info = c.info.unwrap_or_else(|| panic!("no info"));
        assert_eq!(info.input_name, "pixels");
        assert_eq!(info.input_shape, [1, 28, 28]);
        assert_eq!((info.classes, info.features_shape.clone(), info.fixed_batch), (10, Some(vec![32]), None));
        assert_eq!(info.input_dtype, DType::F32);
        assert_eq!(
            first_tier_formats(&info),
            ["tensor", "json", "image", "kafka-ml", "paper-json", "raw-u8", "envelope"]
        );
    }

    #[test]
    fn float16_and_uint8_inputs_are_fed_as_they_are() {
        for (t, d) in [(TensorElementType::Float16, DType::F16), (TensorElementType::Uint8, DType::U8)] {
            let c = check_ports(vec![tensor("x", t, &["N", "4", "4", "3"])], vec![f32("probs", &["N", "10"])]);
            let info = c.info.unwrap_or_else(|| panic!("no info: {:?}", c.violations));
            assert_eq!((info.input_dtype, info.input_shape), (d, vec![4, 4, 3]));
        }
        // Outputs stay float32: the exit rule reads them.
        let c =
            check_ports(vec![f32("x", &["N", "4"])], vec![tensor("probs", TensorElementType::Float16, &["N", "10"])]);
        assert_eq!(problems(&c), ["output `probs` is f16; the node needs f32"]);
    }

    #[test]
    fn a_fixed_batch_is_kept_and_features_are_optional() {
        let c = check_ports(vec![f32("x", &["4", "16"])], vec![f32("probs", &["4", "10"])]);
        let info = c.info.unwrap_or_else(|| panic!("no info"));
        assert_eq!((info.fixed_batch, info.features_shape), (Some(4), None));
    }

    #[test]
    fn violations_that_no_fixture_exercises() {
        let seq = Port { name: "probs".into(), ty: PortType::Other("Sequence<Tensor<f32>>".into()) };
        let c = check_ports(vec![f32("x", &[])], vec![seq, f32("features", &["N", "C"])]);
        assert_eq!(
            problems(&c),
            [
                "input `x` has no batch dimension (a scalar)",
                "output `probs` is a Sequence<Tensor<f32>>, not a tensor",
                "output `features` has a dynamic dimension after the batch: f32 [N, C]",
            ]
        );
        assert_eq!(c.info, None);
        let c =
            check_ports(vec![f32("x", &["N", "16"])], vec![tensor("probs", TensorElementType::Float64, &["N", "10"])]);
        assert_eq!(problems(&c), ["output `probs` is f64; the node needs f32"]);
        assert_eq!(c.violations[0].hint, "add a Cast to float32 before this output");
        let c =
            check_ports(vec![tensor("ids", TensorElementType::Int64, &["N", "16"])], vec![f32("probs", &["N", "10"])]);
        assert_eq!(problems(&c), ["input `ids` is i64; the node feeds f32, f16 or u8"]);
        let c = check_ports(vec![], vec![f32("probs", &["N", "10"])]);
        assert_eq!(problems(&c), ["expected exactly 1 input, found 0: "]);
    }
}
