//! ddnn: one tier of a distributed DNN (edge, fog, cloud) as a small native stream processor.
//!
//! # Layout
//! The folders follow the data path of a tier:
//! `consumer` (fetch loops, one per owned partition) -> bounded channel -> `inference` (elastic
//! pool of ONNX Runtime workers, micro-batching, the exit rule) -> bounded channel -> `producer`
//! (exits, forwards, dead letters) -> delivery reports -> `offsets` (commits only what is fully
//! delivered). `supervisor` wires one tier (downstream first), restarts stages and runs the
//! scaler beside them. `config` turns topology.toml into a validated `Topology`; `wire` holds
//! every byte format; `client` is the load generator / exit collector used by the demo, tests
//! and bench.

pub mod client;
pub mod config;
pub mod consumer;
pub mod error;
pub mod inference;
pub mod kafka;
pub mod messages;
pub mod observe;
pub mod offsets;
pub mod producer;
pub mod scaling;
pub mod shutdown;
pub mod supervisor;
pub mod wire;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
