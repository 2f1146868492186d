//! The inference stage: an elastic pool of ONNX Runtime workers.
pub mod model;
pub mod runtime;
