//! The system under test: one `ddnn node` process per tier, per mode (the broker and the
//! process handling are `ddnn-testkit`'s).

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

/// The tiers of one mode, with the topic names they use.
pub struct System {
    pub tiers: Vec<NodeProc>,
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
            let port = free_port();
            let topo = rewrite(&base, self.broker, mode, self.models, port)?;
            let path = self.dir.join(format!("{}-{name}.toml", mode.name()));
            std::fs::write(&path, toml::to_string(&topo)?)?;
            let log = self.dir.join(format!("{}-{name}.log", mode.name()));
            let relay: &[&str] = if mode == Mode::Relay { &["--relay"] } else { &[] };
            let proc = NodeCmd::new(self.ddnn, &path, name, port, &log)
                .args(relay)
                .env("RUST_LOG", "info,rskafka=error")
                .start(Duration::from_secs(60))?;
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

/// `ddnn_workers{tier="X"}` of a tier process.
pub fn workers(port: u16, tier: &str) -> Option<f64> {
    metric(&scrape(port).ok()?, "ddnn_workers", &format!("tier=\"{tier}\""))
}
