//! The system under test: one `ddnn node` process per tier, per mode (the broker and the
//! process handling are `ddnn-testkit`'s).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use ddnn_testkit::{free_port, metric, scrape, NodeCmd, NodeProc};

/// How the tiers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The topology as configured (elastic pools, micro-batching).
    Elastic,
    /// One worker per tier, no batching: a Kafka-ML-like monolith.
    Fixed,
    /// One worker per tier, batching as configured: the elastic pool without its scaler.
    FixedOne,
    /// The topology's maximum workers per tier from the start, batching as configured.
    FixedMax,
    /// Elastic, plus SLO-driven adaptive exits on every tier but the last.
    Adaptive,
    /// No model: each tier passes records on unchanged (the broker's floor, hop for hop).
    Relay,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "elastic" => Ok(Mode::Elastic),
            "fixed" => Ok(Mode::Fixed),
            "fixed-1" => Ok(Mode::FixedOne),
            "fixed-max" => Ok(Mode::FixedMax),
            "adaptive" => Ok(Mode::Adaptive),
            "relay" => Ok(Mode::Relay),
            _ => bail!("unknown mode {s:?} (elastic, fixed, fixed-1, fixed-max, adaptive, relay)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Elastic => "elastic",
            Mode::Fixed => "fixed",
            Mode::FixedOne => "fixed-1",
            Mode::FixedMax => "fixed-max",
            Mode::Adaptive => "adaptive",
            Mode::Relay => "relay",
        }
    }
}

/// The tiers of one mode, with the topic names they use.
pub struct System {
    pub tiers: Vec<NodeProc>,
    pub input_topic: String,
    pub exit_topic: String,
    pub tier_names: Vec<String>,
}

/// What the command line changes in the base topology, for every mode.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// Base exit thresholds per tier (`--thresholds edge=0.99,fog=0.99`).
    pub thresholds: BTreeMap<String, f64>,
    /// CPU limit per tier process in cores (`--cpu-limit fog=0.1`): a constrained fog box on
    /// this one machine.
    pub cpu_limits: BTreeMap<String, f64>,
    /// Extra `ddnn node` arguments.
    pub node_args: Vec<String>,
    /// `adaptive` mode's `p99_target` (e.g. "200ms") and `accuracy_floor`.
    pub p99_target: String,
    pub accuracy_floor: f64,
}

/// The most workers a tier may run: `workers.max`, `workers = N`, or the node's default (the
/// available cores, at most 8).
fn max_workers(tier: &toml::Table) -> i64 {
    match tier.get("workers") {
        Some(toml::Value::Integer(n)) => *n,
        Some(toml::Value::Table(w)) => w.get("max").and_then(toml::Value::as_integer).unwrap_or_else(default_max),
        _ => default_max(),
    }
}

fn default_max() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as i64)
}

/// Writes one topology per tier process: topics prefixed by the mode, the broker, the models
/// folder, a metrics port per process; `fixed` mode pins one worker and no batching, `fixed-1`
/// and `fixed-max` pin one or the maximum workers and keep batching, `adaptive` adds
/// `adaptive = {..}` to every tier with a `next`.
fn rewrite(
    base: &toml::Table,
    broker: &str,
    mode: Mode,
    models: &Path,
    metrics_port: u16,
    tuning: &Tuning,
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
        if let Some(th) = tuning.thresholds.get(&name) {
            tier.insert("threshold".into(), toml::Value::Float(*th));
        }
        match mode {
            Mode::FixedOne | Mode::FixedMax => {
                let n = if mode == Mode::FixedOne { 1 } else { max_workers(tier) };
                tier.insert("scaling".into(), toml::Value::String("fixed".into()));
                tier.insert("workers".into(), toml::Value::Integer(n));
            }
            Mode::Adaptive if tier.contains_key("next") => {
                let mut a = toml::Table::new();
                a.insert("p99_target".into(), toml::Value::String(tuning.p99_target.clone()));
                a.insert("accuracy_floor".into(), toml::Value::Float(tuning.accuracy_floor));
                tier.insert("adaptive".into(), toml::Value::Table(a));
            }
            _ => {}
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
    pub tuning: &'a Tuning,
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
            let port = free_port();
            let topo = rewrite(&base, self.broker, mode, self.models, port, self.tuning)?;
            let path = self.dir.join(format!("{}-{name}.toml", mode.name()));
            std::fs::write(&path, toml::to_string(&topo)?)?;
            let log = self.dir.join(format!("{}-{name}.log", mode.name()));
            let relay: &[&str] = if mode == Mode::Relay { &["--relay"] } else { &[] };
            let proc = NodeCmd::new(self.ddnn, &path, name, port, &log)
                .args(relay)
                // The bench always runs tansu, which holds fetches: skip `auto`'s first slow
                // fetches unless told otherwise.
                .args(if self.tuning.node_args.iter().any(|a| a.starts_with("--fetch-mode")) {
                    &[][..]
                } else {
                    &["--fetch-mode", "adaptive"][..]
                })
                .args(&self.tuning.node_args)
                .env("RUST_LOG", "info,rskafka=error")
                .start(Duration::from_secs(60))?;
            if let Some(cores) = self.tuning.cpu_limits.get(name) {
                limit_cpu(proc.pid(), &format!("ddnn-bench-{}-{name}", mode.name()), *cores)?;
            }
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

/// Puts a process in a CPU cgroup limited to `cores` (cgroup v2 `cpu.max`, else v1
/// `cpu.cfs_quota_us`); needs root.
fn limit_cpu(pid: u32, name: &str, cores: f64) -> anyhow::Result<()> {
    let period = 100_000u64;
    let quota = (cores * period as f64).round().max(1000.0) as u64;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    let (dir, files): (std::path::PathBuf, Vec<(&str, String)>) = if v2.is_file() {
        (Path::new("/sys/fs/cgroup").join(name), vec![("cpu.max", format!("{quota} {period}"))])
    } else {
        (
            Path::new("/sys/fs/cgroup/cpu").join(name),
            vec![("cpu.cfs_period_us", period.to_string()), ("cpu.cfs_quota_us", quota.to_string())],
        )
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("--cpu-limit: creating {} (needs root)", dir.display()))?;
    for (file, value) in files {
        std::fs::write(dir.join(file), &value).with_context(|| format!("--cpu-limit: writing {value} to {file}"))?;
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("--cpu-limit: moving {pid} into {}", dir.display()))?;
    Ok(())
}

/// `ddnn_workers{tier="X"}` and `ddnn_threshold{tier="X"}` of a tier process.
pub fn workers_and_threshold(port: u16, tier: &str) -> Option<(f64, Option<f64>)> {
    let text = scrape(port).ok()?;
    let label = format!("tier=\"{tier}\"");
    Some((metric(&text, "ddnn_workers", &label)?, metric(&text, "ddnn_threshold", &label)))
}
