//! Observation: live counters per tier, the Prometheus recorder, and the HTTP endpoint.

pub mod backlog;
pub mod http;
pub mod latency;
pub mod metrics;
pub mod stats;
