//! Scaling: rate estimation from a tier's counters (`rates`) and the pure policy (`policy`);
//! the adaptive exit rule under a latency target (`exits`, pure).

pub mod exits;
pub mod policy;
pub mod rates;
