//! One harness for ddnn's integration tests and its bench: a real tansu broker in a temp dir
//! (`Broker`, optionally with SASL users, behind a stunnel TLS terminator: `TlsTerminator`,
//! `Pki`), `ddnn node` child processes (`NodeCmd`, `NodeProc`), and loopback HTTP for
//! `/readyz` and Prometheus `/metrics` (`http_get`, `scrape`, `metric`).
//!
//! It does not depend on `ddnn`: callers pass the binary's path (`env!("CARGO_BIN_EXE_ddnn")`
//! in the node's tests, `--ddnn-bin` in the bench).

mod broker;
pub mod cpu;
mod http;
mod node;
mod tls;

pub use broker::{tansu_bin, Broker, BrokerOptions, SQLITE};
pub use http::{http_get, metric, scrape};
pub use node::{NodeCmd, NodeProc};
pub use tls::{stunnel_bin, Pki, TlsTerminator};

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
