//! Helpers for integration tests: the shared `ddnn-testkit` (a real tansu broker per test, killed
//! by PID on drop) and `ddnn node` child processes of this crate's binary (`node`).

#![allow(dead_code, unused_imports)]

pub mod node;

pub use ddnn_testkit::Broker;
