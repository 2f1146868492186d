//! One harness for ddnn's integration tests and its bench: a real tansu broker in a temp dir
//! (`Broker`), `ddnn node` child processes (`NodeCmd`, `NodeProc`), and loopback HTTP for
//! `/readyz` and Prometheus `/metrics` (`http_get`, `scrape`, `metric`).
//!
//! It does not depend on `ddnn`: callers pass the binary's path (`env!("CARGO_BIN_EXE_ddnn")`
//! in the node's tests, `--ddnn-bin` in the bench).

mod broker;
mod http;
mod node;

pub use broker::{tansu_bin, Broker, SQLITE};
pub use http::{http_get, metric, scrape};
pub use node::{NodeCmd, NodeProc};

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
