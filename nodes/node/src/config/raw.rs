//! topology.toml as written by the user: serde structs, no meaning attached yet.
//!
//! Enumerations and durations stay strings here so that validation can report every bad
//! value at once, naming the field.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopology {
    #[serde(default)]
    pub offsets_topic: Option<String>,
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub tiers: Vec<RawTier>,
    pub dead_letter: RawTopic,
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub brokers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    pub cluster: String,
    pub topic: String,
    #[serde(default)]
    pub partitions: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub cluster: String,
    pub topic: String,
    pub format: String,
    #[serde(default)]
    pub partitions: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawWorkers {
    Count(i64),
    Range(RawRange),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    pub min: i64,
    pub max: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub max_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScaler {
    #[serde(default)]
    pub tick: Option<String>,
    #[serde(default)]
    pub target_drain: Option<String>,
    #[serde(default)]
    pub stabilization: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub index: i64,
    pub count: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub name: String,
    pub model: String,
    pub input: RawInput,
    pub exits: RawTopic,
    #[serde(default)]
    pub next: Option<String>,
    pub threshold: f64,
    #[serde(default)]
    pub scaling: Option<String>,
    #[serde(default)]
    pub workers: Option<RawWorkers>,
    #[serde(default)]
    pub batch: Option<RawBatch>,
    #[serde(default)]
    pub scaler: Option<RawScaler>,
    #[serde(default)]
    pub instance: Option<RawInstance>,
}
