#![allow(clippy::unwrap_used)]
//! Test helpers around a `ddnn node` child process and the topologies it runs.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

pub fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".ddnn/ort/libonnxruntime.so.1.31.1"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Settings of a test topology (one cluster, the three dense tiers).
#[derive(Debug, Clone)]
pub struct TopoSpec {
    pub brokers: String,
    pub prefix: String,
    pub format: &'static str,
    pub models: &'static str,
    pub threshold: f32,
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
threshold = {th}
workers = {{ min = {wmin}, max = {wmax} }}
batch = {{ max = 16, max_delay = "1ms" }}
{extra}

[[tiers]]
name = "fog"
model = "{fog}"
input = {{ cluster = "local", topic = "{p}.fog.input", format = "envelope" }}
exits = {{ cluster = "local", topic = "{p}.exits" }}
next = "cloud"
threshold = {th}
workers = {{ min = 1, max = 1 }}
batch = {{ max = 16, max_delay = "1ms" }}

[[tiers]]
name = "cloud"
model = "{cloud}"
input = {{ cluster = "local", topic = "{p}.cloud.input", format = "envelope" }}
exits = {{ cluster = "local", topic = "{p}.exits" }}
threshold = {th}
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
            th = self.threshold,
            extra = self.extra_edge,
            mport = self.metrics_port,
        )
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.toml", self.prefix));
        std::fs::write(&path, self.toml()).expect("write topology");
        path
    }
}

/// A `ddnn node` child process, killed (by PID) on drop.
pub struct NodeProc {
    pub child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl NodeProc {
    pub fn start(topology: &Path, tier: &str, metrics_port: u16, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(topology, tier, metrics_port, log, &[])
    }

    pub fn start_with(
        topology: &Path,
        tier: &str,
        metrics_port: u16,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut node = Self::spawn_with(topology, tier, metrics_port, log, extra)?;
        node.wait_ready(Duration::from_secs(60))?;
        Ok(node)
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn_with(
        topology: &Path,
        tier: &str,
        metrics_port: u16,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_ddnn"))
            .args(["node", "--topology"])
            .arg(topology)
            .args(["--tier", tier])
            .args(extra)
            .env("ORT_DYLIB_PATH", ort_dylib())
            .env("RUST_LOG", "info,rskafka=warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("spawning ddnn node")?;
        Ok(Self { child, log: log.to_path_buf(), metrics_port })
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("node exited early ({status}); log:\n{}", self.log_text());
            }
            if http_get(self.metrics_port, "/readyz").map(|(code, _)| code == 200).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("node not ready in {timeout:?}; log:\n{}", self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        let (code, body) = http_get(self.metrics_port, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Polls /metrics until `pred` holds for the value of `name{labels}` or `timeout` passes;
    /// returns the last value seen.
    pub fn wait_metric(&self, name: &str, labels: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.metrics().ok().and_then(|b| metric(&b, name, labels));
            if last.is_some_and(&pred) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last
    }

    /// SIGKILL: no drain, no final commit.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("node did not stop within 30 s of SIGTERM")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("bad HTTP response")?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Value of a Prometheus sample `name{labels}` from a /metrics body (labels must match exactly
/// as rendered, e.g. `tier="edge"`).
pub fn metric(body: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    body.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == want).then(|| v.parse().ok()).flatten()
    })
}
