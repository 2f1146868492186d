//! ONNX Runtime: loading the library once, a model's contract (read from its header, used by
//! config validation) and the session wrapper the inference workers run. Below both `config`
//! and `inference`, so neither imports the other for it.

pub mod contract;
pub mod device;
pub mod meta;
pub mod model;
pub mod runtime;
