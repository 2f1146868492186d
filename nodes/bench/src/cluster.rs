//! The system under test: a tansu broker and one `ddnn node` process per tier, per mode.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How the tiers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The topology as configured (elastic pools, micro-batching).
    Elastic,
    /// One worker per tier, no batching: a Kafka-ML-like monolith.
    Fixed,
    /// No model: each tier passes records on unchanged (the broker's floor, hop for hop).
    Relay,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "elastic" => Ok(Mode::Elastic),
            "fixed" => Ok(Mode::Fixed),
            "relay" => Ok(Mode::Relay),
            _ => bail!("unknown mode {s:?} (elastic, fixed, relay)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Elastic => "elastic",
            Mode::Fixed => "fixed",
            Mode::Relay => "relay",
        }
    }
}

pub struct Broker {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// `storage`: tansu's engine, e.g. `sqlite://tansu.db` (durable) or `memory://tansu/`.
    pub fn start(tansu: &Path, storage: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .current_dir(dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", tansu.display()))?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("broker did not open {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { addr, child, _dir: dir })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tier process.
pub struct TierProc {
    pub tier: String,
    pub metrics_port: u16,
    child: Child,
    pub log: PathBuf,
}

impl TierProc {
    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TierProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tiers of one mode, with the topic names they use.
pub struct System {
    pub tiers: Vec<TierProc>,
    pub input_topic: String,
    pub exit_topic: String,
    pub tier_names: Vec<String>,
}

/// Writes one topology per tier process: topics prefixed by the mode, the broker, the models
/// folder, a metrics port per process; `fixed` mode pins one worker and no batching.
fn rewrite(
    base: &toml::Table,
    broker: &str,
    mode: Mode,
    models: &Path,
    metrics_port: u16,
) -> anyhow::Result<toml::Table> {
    let mut t = base.clone();
    let prefix = |topic: &str| format!("{}.{}", mode.name(), topic.trim_start_matches("ddnn."));
    if let Some(toml::Value::Table(clusters)) = t.get_mut("clusters") {
        for (_, c) in clusters.iter_mut() {
            if let toml::Value::Table(c) = c {
                c.insert("brokers".into(), toml::Value::Array(vec![toml::Value::String(broker.to_string())]));
            }
        }
    }
    let tiers = t.get_mut("tiers").and_then(|v| v.as_array_mut()).context("topology has no tiers")?;
    for tier in tiers.iter_mut() {
        let tier = tier.as_table_mut().context("tier is not a table")?;
        let name = tier.get("name").and_then(|v| v.as_str()).context("tier without name")?.to_string();
        tier.insert("model".into(), toml::Value::String(models.join(format!("{name}.onnx")).display().to_string()));
        for key in ["input", "exits"] {
            if let Some(toml::Value::Table(io)) = tier.get_mut(key) {
                let topic = io.get("topic").and_then(|v| v.as_str()).unwrap_or_default().to_string();
                io.insert("topic".into(), toml::Value::String(prefix(&topic)));
            }
        }
        if mode == Mode::Fixed {
            tier.insert("scaling".into(), toml::Value::String("fixed".into()));
            tier.insert("workers".into(), toml::Value::Integer(1));
            let mut batch = toml::Table::new();
            batch.insert("max".into(), toml::Value::Integer(1));
            batch.insert("max_delay".into(), toml::Value::String("0ms".into()));
            tier.insert("batch".into(), toml::Value::Table(batch));
        }
    }
    if let Some(toml::Value::Table(dl)) = t.get_mut("dead_letter") {
        let topic = dl.get("topic").and_then(|v| v.as_str()).unwrap_or("ddnn.dlq").to_string();
        dl.insert("topic".into(), toml::Value::String(prefix(&topic)));
    }
    let mut metrics = toml::Table::new();
    metrics.insert("listen".into(), toml::Value::String(format!("127.0.0.1:{metrics_port}")));
    t.insert("metrics".into(), toml::Value::Table(metrics));
    t.insert("offsets_topic".into(), toml::Value::String(format!("__ddnn_offsets.{}", mode.name())));
    Ok(t)
}

pub struct Launch<'a> {
    pub ddnn: &'a Path,
    pub base_topology: &'a Path,
    pub models: &'a Path,
    pub broker: &'a str,
    pub dir: &'a Path,
}

impl Launch<'_> {
    pub fn start(&self, mode: Mode) -> anyhow::Result<System> {
        let text = std::fs::read_to_string(self.base_topology)
            .with_context(|| format!("reading {}", self.base_topology.display()))?;
        let base: toml::Table = toml::from_str(&text)?;
        let names: Vec<String> = base
            .get("tiers")
            .and_then(|v| v.as_array())
            .context("no tiers")?
            .iter()
            .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect();
        let mut tiers = Vec::new();
        let mut first: Option<toml::Table> = None;
        // Downstream first, so each tier's output topic has a reader when traffic starts.
        for name in names.iter().rev() {
            let port = free_port()?;
            let topo = rewrite(&base, self.broker, mode, self.models, port)?;
            let path = self.dir.join(format!("{}-{name}.toml", mode.name()));
            std::fs::write(&path, toml::to_string(&topo)?)?;
            let log = self.dir.join(format!("{}-{name}.log", mode.name()));
            let mut cmd = Command::new(self.ddnn);
            cmd.args(["node", "--topology"]).arg(&path).args(["--tier", name]);
            if mode == Mode::Relay {
                cmd.arg("--relay");
            }
            let child = cmd
                .env("RUST_LOG", "info,rskafka=error")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("starting {}", self.ddnn.display()))?;
            let mut proc = TierProc { tier: name.clone(), metrics_port: port, child, log };
            wait_ready(&mut proc)?;
            tiers.push(proc);
            first = Some(topo);
        }
        tiers.reverse();
        let topo = first.context("no tiers")?;
        let tier0 = topo.get("tiers").and_then(|v| v.as_array()).and_then(|a| a.first()).context("no tiers")?;
        let topic = |k: &str| tier0.get(k).and_then(|v| v.get("topic")).and_then(|v| v.as_str()).map(str::to_string);
        Ok(System {
            tiers,
            input_topic: topic("input").context("no input topic")?,
            exit_topic: topic("exits").context("no exit topic")?,
            tier_names: names,
        })
    }
}

fn wait_ready(p: &mut TierProc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = p.child.try_wait()? {
            bail!("tier {} exited ({status}); see {}", p.tier, p.log.display());
        }
        if http_get(p.metrics_port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("tier {} not ready; see {}", p.tier, p.log.display())
}

pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("bad HTTP response")?;
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// `ddnn_workers{tier="X"}` of a tier process.
pub fn workers(port: u16, tier: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").ok()?;
    let want = format!("ddnn_workers{{tier=\"{tier}\"}}");
    body.lines().find_map(|l| l.strip_prefix(&want).and_then(|v| v.trim().parse().ok()))
}
