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
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub sasl: Option<RawSasl>,
}

/// `tls = { ca, cert, key }`; which combinations make sense is checked in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// `sasl = { mechanism, username, password_env | password_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSasl {
    pub mechanism: String,
    pub username: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
    /// Accepted by the parser only to be rejected by validation with a message that says what
    /// to use instead (serde's "unknown field" would not); its value is never kept or shown.
    #[serde(default)]
    pub password: Option<serde::de::IgnoredAny>,
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
    /// `tensor` and `json`: the values' type (default: the model's input type).
    #[serde(default)]
    pub dtype: Option<String>,
    /// `image`: how a picture becomes the model's input.
    #[serde(default)]
    pub preprocess: Option<RawPreprocess>,
    /// `kafka-ml`: Kafka-ML's `data_type` (numpy's name of the values' type).
    #[serde(default)]
    pub data_type: Option<String>,
    /// `kafka-ml`: Kafka-ML's `data_reshape`, integers separated by spaces (default: the model's
    /// input shape).
    #[serde(default)]
    pub data_reshape: Option<String>,
}

/// `preprocess = { resize = [H, W], channels, scale, mean, std, layout }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreprocess {
    #[serde(default)]
    pub resize: Option<Vec<i64>>,
    #[serde(default)]
    pub channels: Option<i64>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub mean: Option<Vec<f64>>,
    #[serde(default)]
    pub std: Option<Vec<f64>>,
    #[serde(default)]
    pub layout: Option<String>,
}

/// `workers = N` or `workers = { min = A, max = B }`.
#[derive(Debug)]
pub enum RawWorkers {
    Count(i64),
    Range(RawRange),
}

/// Hand-written instead of `#[serde(untagged)]`, whose only error is "data did not match any
/// variant"; this one names the bad key or type.
impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawWorkers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer or a table { min, max }")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawWorkers, E> {
                i64::try_from(v)
                    .map(RawWorkers::Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawWorkers, A::Error> {
                RawRange::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawWorkers::Range)
            }
        }
        d.deserialize_any(Visitor)
    }
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

/// `exit = { rule = "max-prob" | "entropy" | "margin", threshold = X }`; the rule stays a
/// string so that validation names the bad value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExit {
    pub rule: String,
    pub threshold: f64,
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
    /// Shorthand for `exit = { rule = "max-prob", threshold = X }`; exactly one of the two.
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub exit: Option<RawExit>,
    #[serde(default)]
    pub scaling: Option<String>,
    #[serde(default)]
    pub workers: Option<RawWorkers>,
    #[serde(default)]
    pub batch: Option<RawBatch>,
    #[serde(default)]
    pub scaler: Option<RawScaler>,
    /// Removed with consumer groups: kept in the schema only to say so by name.
    #[serde(default)]
    pub instance: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub auto_offset_reset: Option<String>,
    /// `"json"` (default) or `"kafka-ml"`; a string so that validation names a bad value.
    #[serde(default)]
    pub exit_format: Option<String>,
    /// `"cpu"` (default) or `"cuda:N"`.
    #[serde(default)]
    pub device: Option<String>,
    /// Override the name and version the ONNX file's metadata gives the model.
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub adaptive: Option<RawAdaptive>,
}

/// `adaptive = { p99_target = "200ms", accuracy_floor = 0.95 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    pub p99_target: String,
    pub accuracy_floor: f64,
}
