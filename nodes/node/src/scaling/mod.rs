//! Scaling: rate estimation from a tier's counters (`rates`) and the pure policy (`policy`).

pub mod policy;
pub mod rates;
