//! topology.toml: raw serde structs (`raw`) -> validated [`Topology`] (`validate`).
//!
//! Validation does no I/O except reading model headers and a secured cluster's TLS files and
//! password source; it collects every error, one line each, naming file, field and value.

pub mod calibration;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::onnx::device::Device;
pub use crate::onnx::meta::ModelId;
use crate::onnx::model::ModelInfo;
pub use crate::wire::image::{Layout, Preprocess};
pub use crate::wire::kafka_ml::{KafkaMlRaw, RawType};
pub use crate::wire::DType;

pub use validate::{brokers_env_var, default_max_workers, ConfigError, ConfigErrors, BROKERS_ENV_PREFIX};

/// Input wire format of a tier's input topic (decoding: `crate::wire::decode_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// The paper's clients: `json` of uint8 in [1][28][28], header `X-INFERENCE-TS`.
    PaperJson,
    /// `tensor` of uint8 for a 784-value model (kept for topologies written before `tensor`).
    RawU8,
    /// The bincode envelope used between tiers.
    Envelope,
    /// Raw little-endian values of `dtype` (default: the model's input type) in the model's shape.
    Tensor,
    /// Nested JSON arrays of the model's shape.
    Json,
    /// PNG or JPEG bytes, turned into the model's input by `preprocess`.
    Image,
    /// Kafka-ML's RAW format (`data_type`, `data_reshape`).
    KafkaMl,
}

impl InputFormat {
    pub const ALL: [InputFormat; 7] = [
        InputFormat::Tensor,
        InputFormat::Json,
        InputFormat::Image,
        InputFormat::KafkaMl,
        InputFormat::PaperJson,
        InputFormat::RawU8,
        InputFormat::Envelope,
    ];

    /// The name in topology.toml.
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::PaperJson => "paper-json",
            InputFormat::RawU8 => "raw-u8",
            InputFormat::Envelope => "envelope",
            InputFormat::Tensor => "tensor",
            InputFormat::Json => "json",
            InputFormat::Image => "image",
            InputFormat::KafkaMl => "kafka-ml",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The settings of a tier's input format beyond its name (each used by one format only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InputSettings {
    /// `dtype` of `tensor` and `json` values; `None`: the model's input type.
    pub dtype: Option<DType>,
    /// `preprocess` of `image` records.
    pub preprocess: Preprocess,
    /// `data_type` and `data_reshape` of `kafka-ml` records.
    pub kafka_ml: Option<KafkaMlRaw>,
}

/// What a tier writes to its exits topic (`exit_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitFormat {
    /// ddnn's exit record ([`crate::wire::ExitRecord`]): label, confidence, probabilities,
    /// exit tier and rule, model, trace.
    Json,
    /// What Kafka-ML's inference pods write: `{"values": [...]}`, byte for byte as Python's
    /// `json.dumps` prints it (see `wire/exit.rs`).
    KafkaMl,
}

impl ExitFormat {
    pub const ALL: [ExitFormat; 2] = [ExitFormat::Json, ExitFormat::KafkaMl];

    /// The name used in topology.toml and `ddnn check`.
    pub fn name(self) -> &'static str {
        match self {
            ExitFormat::Json => "json",
            ExitFormat::KafkaMl => "kafka-ml",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    Elastic,
    Fixed,
}

/// How a tier decides that a sample leaves here (`exit.rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitRule {
    /// The paper's rule: the top softmax probability is at least the threshold.
    MaxProb,
    /// BranchyNet's: the softmax's entropy divided by ln(classes) is at most the threshold.
    Entropy,
    /// Top-1 minus top-2 probability is at least the threshold.
    Margin,
}

impl ExitRule {
    pub const ALL: [ExitRule; 3] = [ExitRule::MaxProb, ExitRule::Entropy, ExitRule::Margin];

    /// The name used in topology.toml, logs and `ddnn check`.
    pub fn name(self) -> &'static str {
        match self {
            ExitRule::MaxProb => "max-prob",
            ExitRule::Entropy => "entropy",
            ExitRule::Margin => "margin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// `>=` for rules measuring confidence, `<=` for entropy (which measures doubt).
    pub fn comparison(self) -> &'static str {
        match self {
            ExitRule::MaxProb | ExitRule::Margin => ">=",
            ExitRule::Entropy => "<=",
        }
    }
}

impl std::fmt::Display for ExitRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tier's exit rule and its threshold (`exit = { rule, threshold }`, or `threshold = X` for
/// max-prob).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exit {
    pub rule: ExitRule,
    pub threshold: f32,
}

impl Exit {
    pub fn max_prob(threshold: f32) -> Self {
        Self { rule: ExitRule::MaxProb, threshold }
    }
}

/// `max-prob >= 0.8`, `entropy <= 0.3`: the condition under which a sample exits.
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.rule, self.rule.comparison(), self.threshold)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub brokers: Vec<String>,
    /// `tls = { ca, cert, key }`: connect over TLS.
    pub tls: Option<Tls>,
    /// `sasl = { mechanism, username, password_env | password_file }`: authenticate.
    pub sasl: Option<Sasl>,
}

impl Cluster {
    /// A plaintext cluster without authentication.
    pub fn plain(name: &str, brokers: Vec<String>) -> Self {
        Self { name: name.to_string(), brokers, tls: None, sasl: None }
    }
}

/// TLS settings of a cluster; paths are absolute (resolved against the topology's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// PEM file of the CA that signed the brokers' certificates.
    pub ca: PathBuf,
    /// Client certificate and key for mutual TLS; `None`: the server is authenticated only.
    pub client: Option<ClientCert>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub const ALL: [SaslMechanism; 3] = [SaslMechanism::Plain, SaslMechanism::ScramSha256, SaslMechanism::ScramSha512];

    /// The name in topology.toml and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Where the password comes from; the password itself is read at each connection attempt and
/// never kept in the topology (so neither `Debug` nor `ddnn check` can show it).
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordSource {
    /// An environment variable's name.
    Env(String),
    /// A file (absolute path); its trailing newline is not part of the password.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: PasswordSource,
}

impl std::fmt::Display for Sasl {
    /// `sasl SCRAM-SHA-256 as alice, password from env DDNN_PW`: what `ddnn check` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sasl {} as {}, password from ", self.mechanism.name(), self.username)?;
        match &self.password {
            PasswordSource::Env(var) => write!(f, "env {var}"),
            PasswordSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl std::fmt::Display for Tls {
    /// `tls (CA /etc/ca.pem)` or `mutual tls (CA ..., client cert ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.client {
            None => write!(f, "tls (CA {})", self.ca.display()),
            Some(c) => write!(f, "mutual tls (CA {}, client cert {})", self.ca.display(), c.cert.display()),
        }
    }
}

/// A topic on a named cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRef {
    pub cluster: String,
    pub topic: String,
    /// Partition count used when the node creates the topic.
    pub partitions: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub topic: TopicRef,
    pub format: InputFormat,
    pub settings: InputSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    pub min: usize,
    pub max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub max: usize,
    pub max_delay: Duration,
}

/// Where a consumer group with no committed offset for a partition starts (Kafka's
/// `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "earliest" => Some(Self::Earliest),
            "latest" => Some(Self::Latest),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Scaler knobs (issue: elastic tiers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerSettings {
    pub tick: Duration,
    pub target_drain: Duration,
    pub stabilization: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: String,
    /// Absolute (resolved against the topology file's folder).
    pub model: PathBuf,
    pub model_info: ModelInfo,
    pub input: Input,
    pub exits: TopicRef,
    pub next: Option<String>,
    /// Ignored on the last tier, which always exits.
    pub exit: Exit,
    pub workers: Workers,
    pub scaling: Scaling,
    pub batch: Batch,
    pub scaler: ScalerSettings,
    /// The tier's Kafka consumer group (`group`, default `ddnn.<tier name>`): every node
    /// running this tier joins it and the group coordinator spreads the input partitions.
    pub group: String,
    /// Where a partition without a committed offset starts (`auto_offset_reset`).
    pub auto_offset_reset: OffsetReset,
    /// What the exit records look like (`exit_format`, default json).
    pub exit_format: ExitFormat,
    /// Where the sessions run (`device`, default cpu).
    pub device: Device,
    /// Name and version of the model, written into json exit records.
    pub model_id: ModelId,
    /// SLO-driven adaptive exit (`adaptive = { p99_target, accuracy_floor }`), if set.
    pub adaptive: Option<Adaptive>,
}

/// A latency target the tier meets by relaxing its exit rule, never below an accuracy floor.
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    pub p99_target: Duration,
    /// End-to-end accuracy on the held-out digits the relaxed rule must keep.
    pub accuracy_floor: f64,
    /// The model's calibration for this tier and the tier's rule (`calibration.json`).
    pub calibration: Vec<CalPoint>,
    /// Where it was read from (for messages).
    pub calibration_file: PathBuf,
}

/// One row of a calibration table: with this threshold at this tier (every other input
/// answered by the last tier), this share of the held-out inputs exits here and the answers
/// are this accurate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalPoint {
    pub threshold: f32,
    pub exit_fraction: f64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The file it was read from.
    pub source: PathBuf,
    pub clusters: BTreeMap<String, Cluster>,
    /// In pipeline order (first tier first).
    pub tiers: Vec<Tier>,
    pub dead_letter: TopicRef,
    /// The offsets topic of releases before consumer groups: read once, for a partition whose
    /// group has no commit yet (migration), never written.
    pub offsets_topic: String,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Topology {
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }
    /// The input topic of the tier after `tier`, if any.
    pub fn next_input(&self, tier: &Tier) -> Option<&Input> {
        let next = tier.next.as_deref()?;
        self.tier(next).map(|t| &t.input)
    }

    /// A short human-readable description (for `ddnn check`): clusters, then each tier in
    /// pipeline order with its model, topics, exit rule, workers and batching.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let names: Vec<&str> = self.tiers.iter().map(|t| t.name.as_str()).collect();
        let _ = writeln!(s, "{}: {} tier(s): {}", self.source.display(), self.tiers.len(), names.join(" -> "));
        for c in self.clusters.values() {
            let mut security: Vec<String> = Vec::new();
            security.extend(c.tls.as_ref().map(ToString::to_string));
            security.extend(c.sasl.as_ref().map(ToString::to_string));
            let security = if security.is_empty() { String::new() } else { format!("; {}", security.join("; ")) };
            let _ = writeln!(s, "  cluster {}: {}{security}", c.name, c.brokers.join(", "));
        }
        for t in &self.tiers {
            let info = &t.model_info;
            let features = match &info.features_shape {
                Some(f) => format!(" + features {f:?}"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "  tier {}: model {} (input {:?} -> {} classes{features})",
                t.name,
                t.model.display(),
                info.input_shape,
                info.classes
            );
            let version = t.model_id.version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default();
            let _ = writeln!(
                s,
                "    runs   {}{version} on {}, exit records as {}",
                t.model_id.name,
                t.device,
                t.exit_format.name()
            );
            let _ = writeln!(s, "    input  {} ({})", topic(&t.input.topic), t.input.format.name());
            let when = match &t.next {
                Some(next) => format!("when {}, else -> {next}", t.exit),
                None => "always (last tier)".to_string(),
            };
            let _ = writeln!(s, "    exits  {} {when}", topic(&t.exits));
            let scaling = match t.scaling {
                Scaling::Elastic => "elastic",
                Scaling::Fixed => "fixed",
            };
            let _ = writeln!(
                s,
                "    workers {}..={} {scaling}, batch <= {} within {}, group {} (no commit: {})",
                t.workers.min,
                t.workers.max,
                t.batch.max,
                humantime::format_duration(t.batch.max_delay),
                t.group,
                t.auto_offset_reset.name()
            );
        }
        let _ = writeln!(s, "  dead letters {}", topic(&self.dead_letter));
        let _ = writeln!(s, "  legacy offsets topic {} (read once to migrate)", self.offsets_topic);
        match self.metrics_listen {
            Some(a) => {
                let _ = write!(s, "  metrics on http://{a}/metrics");
            }
            None => {
                let _ = write!(s, "  metrics off");
            }
        }
        s
    }
}

fn topic(t: &TopicRef) -> String {
    format!("{}/{} [{} partition(s)]", t.cluster, t.topic, t.partitions)
}

/// Reads and validates a topology file.
pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
    validate::load(path)
}
