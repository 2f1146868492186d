// TEMPORARY minimal loader (replaced by the config branch).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

#[derive(serde::Deserialize)]
struct RawTopic {
    cluster: String,
    topic: String,
    #[serde(default)]
    partitions: Option<i32>,
    #[serde(default)]
    format: Option<InputFormat>,
}
#[derive(serde::Deserialize)]
struct RawWorkers {
    min: usize,
    max: usize,
}
#[derive(serde::Deserialize)]
struct RawBatch {
    max: usize,
    #[serde(with = "humantime_serde")]
    max_delay: Duration,
}
#[derive(serde::Deserialize)]
struct RawTier {
    name: String,
    model: String,
    input: RawTopic,
    exits: RawTopic,
    next: Option<String>,
    threshold: f32,
    workers: RawWorkers,
    batch: RawBatch,
}
#[derive(serde::Deserialize)]
struct RawCluster {
    brokers: Vec<String>,
}
#[derive(serde::Deserialize)]
struct RawMetrics {
    listen: String,
}
#[derive(serde::Deserialize)]
struct Raw {
    clusters: BTreeMap<String, RawCluster>,
    tiers: Vec<RawTier>,
    dead_letter: RawTopic,
    metrics: Option<RawMetrics>,
}

pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
    let err =
        |m: String| ConfigErrors(vec![ConfigError { file: path.display().to_string(), field: "-".into(), message: m }]);
    let raw: Raw = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| err(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let topic = |t: &RawTopic| TopicRef {
        cluster: t.cluster.clone(),
        topic: t.topic.clone(),
        partitions: t.partitions.unwrap_or(1),
    };
    let mut tiers = Vec::new();
    for t in &raw.tiers {
        let model = dir.join(&t.model);
        let model_info = crate::inference::model::probe(&model).map_err(err)?;
        tiers.push(Tier {
            name: t.name.clone(),
            model,
            model_info,
            input: Input { topic: topic(&t.input), format: t.input.format.unwrap_or(InputFormat::Envelope) },
            exits: topic(&t.exits),
            next: t.next.clone(),
            threshold: t.threshold,
            workers: Workers { min: t.workers.min, max: t.workers.max },
            scaling: Scaling::Elastic,
            batch: Batch { max: t.batch.max, max_delay: t.batch.max_delay },
            scaler: ScalerSettings {
                tick: Duration::from_millis(250),
                target_drain: Duration::from_secs(1),
                stabilization: Duration::from_secs(5),
            },
            instance: Instance { index: 0, count: 1 },
        });
    }
    Ok(Topology {
        source: path.to_path_buf(),
        clusters: raw.clusters.into_iter().map(|(k, v)| (k.clone(), Cluster { name: k, brokers: v.brokers })).collect(),
        tiers,
        dead_letter: topic(&raw.dead_letter),
        offsets_topic: "__ddnn_offsets".into(),
        metrics_listen: raw.metrics.and_then(|m| m.listen.parse().ok()),
    })
}
