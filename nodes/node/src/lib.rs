//! ddnn: one tier of a distributed DNN (edge, fog, cloud) as a small native stream processor.
//!
//! # Layout
//! The folders follow the data path of a tier, and imports point down this list:
//! `consumer` (the tier's consumer-group membership, and one fetch loop per partition the group
//! assigned) -> `Consumed` -> `inference` (elastic pool
//! of ONNX Runtime workers, micro-batching, the exit rule) -> `Inferred` -> `producer` (exits,
//! forwards, dead letters) -> `Delivered` -> `offsets` (the per-tier owner: contiguous
//! watermark, group commits, recovery journal, crash-loop recovery). `messages` is their shared vocabulary.
//! `supervisor` wires one tier (`pipeline`, downstream first; `input` starts and drains fetch
//! loops as partitions are assigned and revoked), runs the node loop, reloads and
//! drains; `scaling` turns counters into rates and rates into a worker count (pure policy).
//! Below them: `kafka` (connections, typed errors, murmur2, backoff), `observe` (stats,
//! Prometheus metrics, the HTTP endpoint), `config` (topology.toml -> validated `Topology`),
//! `wire` (every byte format). `client` is the load generator / exit collector used by the
//! demo, tests and bench; `dlq` lists and replays dead letters (`ddnn dlq`).

pub mod backoff;
pub mod client;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod error;
pub mod heap;
pub mod inference;
pub mod kafka;
pub mod messages;
pub mod observe;
pub mod offsets;
pub mod onnx;
pub mod producer;
pub mod scaling;
pub mod shutdown;
pub mod supervisor;
pub mod wire;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
