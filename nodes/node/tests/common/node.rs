//! Test helpers around a `ddnn node` child process (this crate's binary, via `ddnn-testkit`)
//! and the topologies it runs.

#![allow(dead_code, unused_imports)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ddnn_testkit::{free_port, http_get, metric};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

pub fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".ddnn/ort/libonnxruntime.so.1.31.1"))
}

/// The offline cascade's answer (same models, same exit rule, one process) for held-out digits
/// `range`: the reference the node's exits are compared with.
pub fn offline_cascade(
    models: &str,
    d: &ddnn::client::Digits,
    range: std::ops::Range<usize>,
    exit: ddnn::config::Exit,
) -> Vec<ddnn::inference::offline::Outcome> {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let dir = repo_root().join("models").join(models);
    let mut tiers: Vec<ddnn::inference::model::Model> = ["edge", "fog", "cloud"]
        .iter()
        .map(|t| ddnn::inference::model::Model::load(&dir.join(format!("{t}.onnx"))).expect("model"))
        .collect();
    range
        .map(|i| {
            let x: Vec<f32> = d.pixels[i].iter().map(|&p| f32::from(p)).collect();
            ddnn::inference::offline::cascade(&mut tiers, &x, exit).expect("offline cascade")
        })
        .collect()
}

/// Settings of a test topology (one cluster, the three dense tiers).
#[derive(Debug, Clone)]
pub struct TopoSpec {
    pub brokers: String,
    pub prefix: String,
    pub format: &'static str,
    pub models: &'static str,
    pub threshold: f32,
    /// Exit rule of every tier: "max-prob" is written as `threshold = X` (the shorthand), any
    /// other rule as `exit = { rule, threshold }`.
    pub exit_rule: &'static str,
    pub edge_partitions: i32,
    pub workers: (usize, usize),
    pub metrics_port: u16,
    pub extra_edge: String,
}

impl TopoSpec {
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            prefix: "t".into(),
            format: "paper-json",
            models: "mnist",
            threshold: 0.8,
            exit_rule: "max-prob",
            edge_partitions: 2,
            workers: (1, 2),
            metrics_port: free_port(),
            extra_edge: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let models = repo_root().join("models").join(self.models);
        let m = |t: &str| models.join(format!("{t}.onnx")).display().to_string();
        let p = &self.prefix;
        let (wmin, wmax) = self.workers;
        format!(
            r#"
[clusters.local]
brokers = ["{brokers}"]

[[tiers]]
name = "edge"
model = "{edge}"
input = {{ cluster = "local", topic = "{p}.edge.input", format = "{format}", partitions = {parts} }}
exits = {{ cluster = "local", topic = "{p}.exits" }}
next = "fog"
{exit}
workers = {{ min = {wmin}, max = {wmax} }}
batch = {{ max = 16, max_delay = "1ms" }}
{extra}

[[tiers]]
name = "fog"
model = "{fog}"
input = {{ cluster = "local", topic = "{p}.fog.input", format = "envelope" }}
exits = {{ cluster = "local", topic = "{p}.exits" }}
next = "cloud"
{exit}
workers = {{ min = 1, max = 1 }}
batch = {{ max = 16, max_delay = "1ms" }}

[[tiers]]
name = "cloud"
model = "{cloud}"
input = {{ cluster = "local", topic = "{p}.cloud.input", format = "envelope" }}
exits = {{ cluster = "local", topic = "{p}.exits" }}
{exit}
workers = {{ min = 1, max = 1 }}
batch = {{ max = 16, max_delay = "1ms" }}

[dead_letter]
cluster = "local"
topic = "{p}.dlq"

[metrics]
listen = "127.0.0.1:{mport}"
"#,
            brokers = self.brokers,
            edge = m("edge"),
            fog = m("fog"),
            cloud = m("cloud"),
            format = self.format,
            parts = self.edge_partitions,
            exit = self.exit_line(),
            extra = self.extra_edge,
            mport = self.metrics_port,
        )
    }

    /// The tiers' exit setting, as written in the file.
    pub fn exit_line(&self) -> String {
        match self.exit_rule {
            "max-prob" => format!("threshold = {}", self.threshold),
            rule => format!("exit = {{ rule = \"{rule}\", threshold = {} }}", self.threshold),
        }
    }

    /// The tiers' exit setting, as the node reads it.
    pub fn exit(&self) -> ddnn::config::Exit {
        let rule = ddnn::config::ExitRule::parse(self.exit_rule).expect("known exit rule");
        ddnn::config::Exit { rule, threshold: self.threshold }
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.toml", self.prefix));
        std::fs::write(&path, self.toml()).expect("write topology");
        path
    }
}

/// `ddnn_testkit::NodeProc` running this crate's `ddnn` binary with `ort_dylib()`.
pub struct NodeProc(pub ddnn_testkit::NodeProc);

impl NodeProc {
    pub fn start(topology: &Path, tier: &str, metrics_port: u16, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(topology, tier, metrics_port, log, &[])
    }

    pub fn start_with(topo: &Path, tier: &str, port: u16, log: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Ok(Self(cmd(topo, tier, port, log, extra).start(Duration::from_secs(60))?))
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn_with(topo: &Path, tier: &str, port: u16, log: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Ok(Self(cmd(topo, tier, port, log, extra).spawn()?))
    }
}

fn cmd(topology: &Path, tier: &str, metrics_port: u16, log: &Path, extra: &[&str]) -> ddnn_testkit::NodeCmd {
    ddnn_testkit::NodeCmd::new(env!("CARGO_BIN_EXE_ddnn"), topology, tier, metrics_port, log)
        .args(extra)
        .env("ORT_DYLIB_PATH", ort_dylib())
}

impl Deref for NodeProc {
    type Target = ddnn_testkit::NodeProc;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for NodeProc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
