//! Raw topology -> validated [`Topology`], collecting every error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawCluster, RawInput, RawPreprocess, RawTier, RawTopic, RawTopology, RawWorkers};
use super::*;
use crate::onnx::contract::{PAPER_SHAPE, RAW_U8_WIDTH};
use crate::onnx::meta::read_meta;
use crate::onnx::model::{probe, ModelInfo};

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

const DEFAULT_OFFSETS_TOPIC: &str = "__ddnn_offsets";
const DEFAULT_BATCH_MAX: i64 = 32;
/// Upper bound of `batch.max`: a batch's input buffer is allocated outside the worker's panic
/// guard, so an absurd value must not reach it.
const MAX_BATCH: i64 = 4096;
/// Environment override of a cluster's brokers: `DDNN_BROKERS_<CLUSTER>=host:port,...`.
pub const BROKERS_ENV_PREFIX: &str = "DDNN_BROKERS_";

/// The variable that overrides `clusters.<name>.brokers`.
pub fn brokers_env_var(cluster: &str) -> String {
    let name: String =
        cluster.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("{BROKERS_ENV_PREFIX}{name}")
}

struct Errors {
    file: String,
    list: Vec<ConfigError>,
}

impl Errors {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigError { file: self.file.clone(), field: field.into(), message: message.into() });
    }
}

pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
    let mut errors = Errors { file: path.display().to_string(), list: Vec::new() };
    if !path.is_file() {
        errors.add("(file)", "cannot read: file not found");
        return Err(ConfigErrors(errors.list));
    }
    let raw: RawTopology = match config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(config::Environment::with_prefix("DDNN").prefix_separator("__").separator("__").try_parsing(true))
        .build()
        .and_then(|c| c.try_deserialize())
    {
        Ok(raw) => raw,
        Err(e) => {
            let (field, message) = describe(&e);
            errors.add(field, message);
            return Err(ConfigErrors(errors.list));
        }
    };
    let topology = validate(path, raw, &mut errors);
    match topology {
        Some(t) if errors.list.is_empty() => Ok(t),
        _ => Err(ConfigErrors(errors.list)),
    }
}

/// A config-crate error as (field path, message), the message on one line and without the
/// `for key` / `in FILE` tails the crate appends.
fn describe(e: &config::ConfigError) -> (String, String) {
    use config::ConfigError as E;
    const FILE: &str = "(file)";
    match e {
        E::Type { unexpected, expected, key, .. } => (
            key.as_deref().map_or_else(|| FILE.to_string(), dotted),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        E::At { error, key, .. } => {
            let (inner, message) = describe(error);
            match key {
                Some(key) if inner == FILE => (dotted(key), message),
                _ => (inner, message),
            }
        }
        // The crate puts the whole path in the field name: `tiers[0]threshold`.
        E::NotFound(path) => match dotted(path).rsplit_once('.') {
            Some((parent, field)) => (parent.to_string(), format!("missing field `{field}`")),
            None => (FILE.to_string(), format!("missing field `{path}`")),
        },
        E::FileParse { cause, .. } => (FILE.to_string(), one_line(&cause.to_string())),
        other => (FILE.to_string(), one_line(&other.to_string())),
    }
}

/// The config crate joins an index and a key without a dot (`tiers[0]threshold`); restore it.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '[' && c != '.' {
            out.push('.');
        }
        after_index = c == ']';
        out.push(c);
    }
    out
}

/// Folds a multi-line message (TOML parse errors quote the line with a caret) into one line,
/// keeping the position and the explanation.
fn one_line(text: &str) -> String {
    let is_snippet = |l: &str| {
        let l = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
        l.is_empty() || l.starts_with('|')
    };
    text.lines().map(str::trim).filter(|l| !is_snippet(l)).collect::<Vec<_>>().join(": ")
}

fn duration(errors: &mut Errors, field: &str, value: Option<&str>, default: Duration) -> Duration {
    match value {
        None => default,
        Some(v) => humantime::parse_duration(v).unwrap_or_else(|e| {
            errors.add(field, format!("{v:?} is not a duration ({e}); e.g. \"250ms\", \"5s\""));
            default
        }),
    }
}

fn partitions(errors: &mut Errors, field: &str, value: Option<i64>) -> i32 {
    match value {
        None => 1,
        Some(p) if (1..=i64::from(i32::MAX)).contains(&p) => p as i32,
        Some(p) => {
            errors.add(field, format!("{p} must be at least 1"));
            1
        }
    }
}

fn known(names: impl Iterator<Item = String>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

fn topic_ref(errors: &mut Errors, field: &str, t: &RawTopic, clusters: &BTreeMap<String, Cluster>) -> TopicRef {
    check_topic(errors, field, &t.cluster, &t.topic, clusters);
    TopicRef {
        cluster: t.cluster.clone(),
        topic: t.topic.clone(),
        partitions: partitions(errors, &format!("{field}.partitions"), t.partitions),
    }
}

fn check_topic(errors: &mut Errors, field: &str, cluster: &str, topic: &str, clusters: &BTreeMap<String, Cluster>) {
    if !clusters.contains_key(cluster) {
        errors.add(
            format!("{field}.cluster"),
            format!("unknown cluster {cluster:?} (known: {})", known(clusters.keys().cloned())),
        );
    }
    if topic.trim().is_empty() {
        errors.add(format!("{field}.topic"), "must not be empty");
    } else {
        check_topic_name(errors, &format!("{field}.topic"), topic);
    }
}

/// Kafka's longest topic name.
const MAX_TOPIC_LEN: usize = 249;

/// Kafka's rule for topic names: 1..=249 characters of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
fn is_valid_topic_name(name: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_topic_name(errors: &mut Errors, field: &str, topic: &str) {
    if !is_valid_topic_name(topic) {
        errors.add(
            field,
            format!("{topic:?} is not a valid Kafka topic name (1-{MAX_TOPIC_LEN} characters of a-z A-Z 0-9 . _ -)"),
        );
    }
}

fn input(errors: &mut Errors, field: &str, i: &RawInput, clusters: &BTreeMap<String, Cluster>) -> Input {
    check_topic(errors, field, &i.cluster, &i.topic, clusters);
    let format = InputFormat::parse(&i.format).unwrap_or_else(|| {
        let known: Vec<&str> = InputFormat::ALL.iter().map(|f| f.name()).collect();
        errors.add(format!("{field}.format"), format!("unknown format {:?} (known: {})", i.format, known.join(", ")));
        InputFormat::Envelope
    });
    let settings = input_settings(errors, field, i, format);
    Input {
        topic: TopicRef {
            cluster: i.cluster.clone(),
            topic: i.topic.clone(),
            partitions: partitions(errors, &format!("{field}.partitions"), i.partitions),
        },
        format,
        settings,
    }
}

/// The format's own settings, checked for what can be checked without the model (the rest is
/// checked against the model in [`check_input_against_model`]).
fn input_settings(errors: &mut Errors, field: &str, i: &RawInput, format: InputFormat) -> InputSettings {
    let mut settings = InputSettings::default();
    // Each setting belongs to some formats; set on another it would silently do nothing.
    let owners: [(&str, bool, &[InputFormat]); 4] = [
        ("dtype", i.dtype.is_some(), &[InputFormat::Tensor, InputFormat::Json]),
        ("preprocess", i.preprocess.is_some(), &[InputFormat::Image]),
        ("data_type", i.data_type.is_some(), &[InputFormat::KafkaMl]),
        ("data_reshape", i.data_reshape.is_some(), &[InputFormat::KafkaMl]),
    ];
    for (name, set, formats) in owners {
        if set && !formats.contains(&format) {
            let names: Vec<String> = formats.iter().map(|f| format!("{:?}", f.name())).collect();
            errors.add(
                format!("{field}.{name}"),
                format!("only format {} takes it (format is {:?})", names.join(" or "), format.name()),
            );
        }
    }
    if let Some(d) = &i.dtype {
        settings.dtype = DType::parse(d).or_else(|| {
            let known: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
            errors.add(format!("{field}.dtype"), format!("unknown dtype {d:?} (known: {})", known.join(", ")));
            None
        });
    }
    if let Some(p) = &i.preprocess {
        settings.preprocess = preprocess(errors, &format!("{field}.preprocess"), p);
    }
    if format == InputFormat::KafkaMl {
        let data_type = match &i.data_type {
            None => {
                errors.add(
                    field,
                    "missing field `data_type` (Kafka-ML's data_type of the records, e.g. \"uint8\" or \"float32\")",
                );
                None
            }
            Some(t) => RawType::parse(t).or_else(|| {
                errors.add(
                    format!("{field}.data_type"),
                    format!("unknown data_type {t:?} (known: {})", RawType::known()),
                );
                None
            }),
        };
        // Empty until checked against the model: absent means the model's shape.
        let data_reshape = match &i.data_reshape {
            None => Some(Vec::new()),
            Some(text) => crate::wire::kafka_ml::parse_reshape(text)
                .map_err(|e| errors.add(format!("{field}.data_reshape"), e))
                .ok(),
        };
        if let (Some(data_type), Some(data_reshape)) = (data_type, data_reshape) {
            settings.kafka_ml = Some(KafkaMlRaw { data_type, data_reshape });
        }
    }
    settings
}

fn preprocess(errors: &mut Errors, field: &str, p: &RawPreprocess) -> Preprocess {
    let mut out = Preprocess::default();
    if let Some(r) = &p.resize {
        match r.as_slice() {
            &[h, w] if (1..=i64::from(u32::MAX)).contains(&h) && (1..=i64::from(u32::MAX)).contains(&w) => {
                out.resize = Some([h as u32, w as u32]);
            }
            _ => errors.add(format!("{field}.resize"), format!("{r:?} is not [height, width] of positive sizes")),
        }
    }
    if let Some(c) = p.channels {
        if matches!(c, 1 | 3) {
            out.channels = Some(c as usize);
        } else {
            errors.add(format!("{field}.channels"), format!("{c} is neither 1 (grayscale) nor 3 (RGB)"));
        }
    }
    if let Some(scale) = p.scale {
        if scale.is_finite() && scale != 0.0 {
            out.scale = scale as f32;
        } else {
            errors.add(format!("{field}.scale"), format!("{scale} must be a finite number other than 0"));
        }
    }
    for (name, values, target) in [("mean", &p.mean, &mut out.mean), ("std", &p.std, &mut out.std)] {
        let Some(values) = values else { continue };
        let bad = values.iter().any(|v| !v.is_finite() || (name == "std" && *v == 0.0));
        if values.is_empty() || bad {
            let what = if name == "std" { "non-zero finite numbers" } else { "finite numbers" };
            errors.add(format!("{field}.{name}"), format!("{values:?} must be 1 or one per channel {what}"));
        } else {
            *target = values.iter().map(|&v| v as f32).collect();
        }
    }
    match p.layout.as_deref() {
        None | Some("NCHW") => {}
        Some("NHWC") => out.layout = Layout::Nhwc,
        Some(other) => errors.add(format!("{field}.layout"), format!("unknown layout {other:?} (known: NCHW, NHWC)")),
    }
    out
}

/// The input settings against the model's input type and shape; fills what defaults to the
/// model (kafka-ml's `data_reshape`).
fn check_input_against_model(errors: &mut Errors, field: &str, input: &mut Input, info: &ModelInfo) {
    let (shape, dtype, width) = (&info.input_shape, info.input_dtype, info.input_width());
    let no_narrowing = |errors: &mut Errors, name: &str, what: String| {
        errors.add(
            format!("{field}.{name}"),
            format!("{what} values cannot feed the model's uint8 input (a cast would wrap or truncate); send uint8"),
        );
    };
    match input.format {
        InputFormat::Tensor | InputFormat::Json => {
            if let Some(d) = input.settings.dtype.filter(|&d| d != DType::U8 && dtype == DType::U8) {
                no_narrowing(errors, "dtype", format!("{:?}", d.name()));
            }
        }
        InputFormat::Image => {
            let p = &input.settings.preprocess;
            let Some((c, h, w)) = crate::wire::image::image_dims(shape, p.layout) else {
                errors.add(
                    format!("{field}.format"),
                    format!(
                        "\"image\" needs a model input of [C, H, W] (layout NCHW) or [H, W, C] (NHWC) with C = 1 or 3, \
                         or [H, W]; the model takes {shape:?} (layout {})",
                        p.layout.name()
                    ),
                );
                return;
            };
            if let Some(ch) = p.channels.filter(|&ch| ch != c) {
                errors.add(
                    format!("{field}.preprocess.channels"),
                    format!("{ch}, but the model takes {c} channel(s) ({shape:?}, layout {})", p.layout.name()),
                );
            }
            if let Some([rh, rw]) = p.resize.filter(|&[rh, rw]| (rh as usize, rw as usize) != (h, w)) {
                errors.add(
                    format!("{field}.preprocess.resize"),
                    format!("[{rh}, {rw}], but the model takes {h}x{w} (H x W): resize = [{h}, {w}]"),
                );
            }
            for (name, values) in [("mean", &p.mean), ("std", &p.std)] {
                if values.len() != 1 && values.len() != c {
                    errors.add(
                        format!("{field}.preprocess.{name}"),
                        format!("{} values, but the model takes {c} channel(s): give 1 or {c}", values.len()),
                    );
                }
            }
            if p.normalizes() && dtype == DType::U8 {
                errors.add(
                    format!("{field}.preprocess"),
                    "scale/mean/std make float values, but the model takes uint8; leave them out to feed the pixels \
                     as they are",
                );
            }
        }
        InputFormat::KafkaMl => {
            let Some(raw) = input.settings.kafka_ml.as_mut() else { return };
            if raw.data_reshape.is_empty() {
                raw.data_reshape = shape.clone();
            } else if raw.values() != width {
                errors.add(
                    format!("{field}.data_reshape"),
                    format!(
                        "{:?} holds {} values, but the model takes {shape:?} ({width} values)",
                        raw.reshape_text(),
                        raw.values()
                    ),
                );
            }
            if !raw.data_type.feeds(dtype) {
                no_narrowing(errors, "data_type", format!("{:?}", raw.data_type.name()));
            }
        }
        InputFormat::PaperJson | InputFormat::RawU8 | InputFormat::Envelope => {}
    }
}

/// The range a rule's threshold must lie in, as text and as a test. The end at which every
/// sample would exit is excluded (a threshold there turns the rule off; leave `next` out
/// instead); the end at which only certain samples exit is included.
fn threshold_range(rule: ExitRule) -> (&'static str, fn(f64) -> bool) {
    match rule {
        ExitRule::MaxProb | ExitRule::Margin => ("(0, 1]", |t| t > 0.0 && t <= 1.0),
        ExitRule::Entropy => ("[0, 1)", |t| (0.0..1.0).contains(&t)),
    }
}

/// `threshold = X` (max-prob) or `exit = { rule, threshold }`: exactly one of them.
fn exit_of(errors: &mut Errors, i: usize, t: &RawTier) -> Exit {
    let f = |s: &str| format!("tiers[{i}].{s}");
    let fallback = Exit::max_prob(1.0);
    let (field, rule, threshold) = match (t.threshold, &t.exit) {
        (Some(th), Some(e)) => {
            errors.add(
                f("threshold"),
                format!(
                    "{th} is set together with exit = {{ rule = {:?}, threshold = {} }}; keep one (threshold = X is \
                     shorthand for exit = {{ rule = \"max-prob\", threshold = X }})",
                    e.rule, e.threshold
                ),
            );
            return fallback;
        }
        (None, None) => {
            errors.add(format!("tiers[{i}]"), "missing field `exit` (or its shorthand `threshold`)");
            return fallback;
        }
        (Some(th), None) => (f("threshold"), ExitRule::MaxProb, th),
        (None, Some(e)) => match ExitRule::parse(&e.rule) {
            Some(rule) => (f("exit.threshold"), rule, e.threshold),
            None => {
                let known: Vec<&str> = ExitRule::ALL.iter().map(|r| r.name()).collect();
                errors.add(f("exit.rule"), format!("unknown rule {:?} (known: {})", e.rule, known.join(", ")));
                return fallback;
            }
        },
    };
    let (range, within) = threshold_range(rule);
    if !within(threshold) {
        let rule_note = if t.exit.is_some() { format!(" for rule {rule}") } else { String::new() };
        errors.add(field, format!("{threshold} is outside {range}{rule_note}"));
        return fallback;
    }
    Exit { rule, threshold: threshold as f32 }
}

/// Default upper bound of workers: the cores this machine offers to CPU inference.
pub fn default_max_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8)
}

/// A tier's consumer group when the topology names none.
pub fn default_group(tier: &str) -> String {
    format!("ddnn.{tier}")
}

fn tier(
    errors: &mut Errors,
    i: usize,
    t: &RawTier,
    base: &Path,
    clusters: &BTreeMap<String, Cluster>,
) -> (Tier, Option<ModelInfo>) {
    let f = |s: &str| format!("tiers[{i}].{s}");
    if t.name.trim().is_empty() {
        errors.add(f("name"), "must not be empty");
    }
    let model = base.join(&t.model);
    let model = model.canonicalize().unwrap_or_else(|_| normalize(&model));
    let info = if !model.is_file() {
        errors.add(f("model"), format!("cannot read {:?}: file not found", model.display().to_string()));
        None
    } else {
        match probe(&model) {
            Ok(info) => Some(info),
            Err(e) => {
                errors.add(f("model"), format!("{:?}: {e}", model.display().to_string()));
                None
            }
        }
    };
    let exit = exit_of(errors, i, t);
    let exit_format = match t.exit_format.as_deref().map(|v| (v, ExitFormat::parse(v))) {
        None => ExitFormat::Json,
        Some((_, Some(format))) => format,
        Some((other, None)) => {
            let known: Vec<&str> = ExitFormat::ALL.iter().map(|f| f.name()).collect();
            errors.add(f("exit_format"), format!("unknown format {other:?} (known: {})", known.join(", ")));
            ExitFormat::Json
        }
    };
    let device = match t.device.as_deref().map(|v| (v, Device::parse(v))) {
        None => Device::Cpu,
        Some((_, Some(device))) => device,
        Some((other, None)) => {
            errors.add(f("device"), format!("unknown device {other:?} (known: cpu, cuda:N with N the GPU's index)"));
            Device::Cpu
        }
    };
    // Only a model that opened on the CPU is tried on its device, so that a bad file gives one
    // line; the session is dropped again (workers open their own).
    if let (Some(_), Device::Cuda(_)) = (&info, device) {
        if let Err(e) = crate::onnx::device::check_device(&model, device) {
            errors.add(f("device"), format!("tier {:?}: {e}", t.name));
        }
    }
    for (field, value) in [("model_name", &t.model_name), ("model_version", &t.model_version)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            errors.add(f(field), "must not be empty (leave it out to take it from the model file)");
        }
    }
    let model_id = match info.as_ref().map(|_| read_meta(&model)) {
        Some(Ok(meta)) => meta.identify(&model, t.model_name.as_deref(), t.model_version.as_deref()),
        Some(Err(e)) => {
            errors.add(f("model"), format!("{:?}: cannot read its metadata: {e}", model.display().to_string()));
            ModelId::default()
        }
        None => ModelId::default(),
    };
    let scaling = match t.scaling.as_deref() {
        None | Some("elastic") => Scaling::Elastic,
        Some("fixed") => Scaling::Fixed,
        Some(other) => {
            errors.add(f("scaling"), format!("unknown scaling {other:?} (known: elastic, fixed)"));
            Scaling::Elastic
        }
    };
    let (min, max) = match &t.workers {
        None if scaling == Scaling::Fixed => (1, 1),
        None => (1, default_max_workers() as i64),
        Some(RawWorkers::Count(n)) => (*n, *n),
        Some(RawWorkers::Range(r)) => (r.min, r.max),
    };
    if min < 0 {
        errors.add(f("workers"), format!("min {min} must not be negative"));
    }
    if max < 1 {
        errors.add(f("workers"), format!("max must be at least 1, found {max}"));
    } else if min > max {
        errors.add(f("workers"), format!("min {min} > max {max}"));
    } else if scaling == Scaling::Fixed && min != max {
        errors.add(f("workers"), format!("fixed scaling needs min = max, found min {min}, max {max}"));
    }
    let raw_batch = t.batch.as_ref();
    let batch_max = raw_batch.and_then(|b| b.max).unwrap_or(DEFAULT_BATCH_MAX);
    if batch_max < 1 {
        errors.add(f("batch.max"), format!("{batch_max} must be at least 1"));
    } else if batch_max > MAX_BATCH {
        errors.add(f("batch.max"), format!("{batch_max} must be at most {MAX_BATCH}"));
    } else if let Some(fixed) = info.as_ref().and_then(|i| i.fixed_batch) {
        if batch_max > fixed as i64 {
            let default = if raw_batch.and_then(|b| b.max).is_none() { " (the default)" } else { "" };
            errors.add(
                f("batch.max"),
                format!(
                    "{batch_max}{default} exceeds the model's fixed batch dimension {fixed}; set batch.max = \
                     {fixed} or export the model with a dynamic batch axis"
                ),
            );
        }
    }
    let max_delay = duration(
        errors,
        &f("batch.max_delay"),
        raw_batch.and_then(|b| b.max_delay.as_deref()),
        Duration::from_millis(2),
    );
    let s = t.scaler.as_ref();
    let scaler = ScalerSettings {
        tick: duration(errors, &f("scaler.tick"), s.and_then(|s| s.tick.as_deref()), Duration::from_millis(250)),
        target_drain: duration(
            errors,
            &f("scaler.target_drain"),
            s.and_then(|s| s.target_drain.as_deref()),
            Duration::from_secs(1),
        ),
        stabilization: duration(
            errors,
            &f("scaler.stabilization"),
            s.and_then(|s| s.stabilization.as_deref()),
            Duration::from_secs(5),
        ),
    };
    if scaler.tick.is_zero() {
        errors.add(f("scaler.tick"), "must be longer than 0");
    }
    if t.instance.is_some() {
        errors.add(
            f("instance"),
            format!(
                "removed: tiers are Kafka consumer groups now; run more nodes with the same topology and the group `{}` spreads the input partitions among them (delete this line)",
                t.group.clone().unwrap_or_else(|| default_group(&t.name))
            ),
        );
    }
    let group = match &t.group {
        None => default_group(&t.name),
        Some(g) if g.trim().is_empty() || g.len() > 249 => {
            errors.add(f("group"), format!("{g:?}: a group id must be 1 to 249 characters"));
            default_group(&t.name)
        }
        Some(g) => g.clone(),
    };
    let auto_offset_reset = match t.auto_offset_reset.as_deref().map(|v| (v, OffsetReset::parse(v))) {
        None => OffsetReset::Earliest,
        Some((_, Some(r))) => r,
        Some((other, None)) => {
            errors.add(f("auto_offset_reset"), format!("unknown value {other:?} (known: earliest, latest)"));
            OffsetReset::Earliest
        }
    };
    let adaptive =
        t.adaptive.as_ref().and_then(|a| adaptive(errors, &f("adaptive"), a, t, &model, exit, info.is_some()));
    let built = Tier {
        name: t.name.clone(),
        model,
        model_info: info.clone().unwrap_or(ModelInfo {
            input_name: String::new(),
            input_shape: Vec::new(),
            input_dtype: DType::F32,
            classes: 0,
            features_shape: None,
            fixed_batch: None,
        }),
        input: input(errors, &f("input"), &t.input, clusters),
        exits: topic_ref(errors, &f("exits"), &t.exits, clusters),
        next: t.next.clone(),
        exit,
        workers: Workers { min: min.max(0) as usize, max: max.max(1) as usize },
        scaling,
        batch: Batch { max: batch_max.clamp(1, MAX_BATCH) as usize, max_delay },
        scaler,
        group,
        auto_offset_reset,
        exit_format,
        device,
        model_id,
        adaptive,
    };
    (built, info)
}

/// `adaptive = { p99_target, accuracy_floor }` with the model's calibration table.
fn adaptive(
    errors: &mut Errors,
    field: &str,
    a: &super::raw::RawAdaptive,
    t: &RawTier,
    model: &Path,
    exit: Exit,
    model_read: bool,
) -> Option<Adaptive> {
    let before = errors.len();
    let target = duration(errors, &format!("{field}.p99_target"), Some(&a.p99_target), Duration::ZERO);
    if target.is_zero() && errors.len() == before {
        errors.add(format!("{field}.p99_target"), format!("{:?} must be longer than 0", a.p99_target));
    }
    if !(a.accuracy_floor > 0.0 && a.accuracy_floor <= 1.0) {
        errors.add(
            format!("{field}.accuracy_floor"),
            format!(
                "{} is outside (0, 1]: the end-to-end accuracy on held-out data to keep, e.g. 0.95",
                a.accuracy_floor
            ),
        );
    }
    if t.next.is_none() {
        errors.add(
            field,
            "the last tier answers every input: there is no exit rule to relax (set it on an earlier tier)",
        );
    }
    if !model_read {
        return None;
    }
    let calibration = match super::calibration::load(model, exit.rule) {
        Ok(c) => c,
        Err(e) => {
            errors.add(field, e);
            return None;
        }
    };
    (errors.len() == before).then(|| Adaptive {
        p99_target: target,
        accuracy_floor: a.accuracy_floor,
        calibration,
        calibration_file: super::calibration::file_of(model),
    })
}

/// A path from the topology, absolute (relative ones are relative to the topology's folder).
fn resolve(base: &Path, path: &str) -> PathBuf {
    normalize(&base.join(path))
}

/// `tls` and `sasl` of a cluster, checked for shape (files and variables come later).
fn security(errors: &mut Errors, name: &str, c: &RawCluster, base: &Path) -> (Option<Tls>, Option<Sasl>) {
    let f = |s: &str| format!("clusters.{name}.{s}");
    let tls = c.tls.as_ref().and_then(|t| {
        let client = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => Some(ClientCert { cert: resolve(base, cert), key: resolve(base, key) }),
            (None, None) => None,
            (Some(cert), None) => {
                errors.add(f("tls.key"), format!("missing: cert = {cert:?} needs its key (mutual TLS takes both)"));
                None
            }
            (None, Some(key)) => {
                errors.add(
                    f("tls.cert"),
                    format!("missing: key = {key:?} needs its certificate (mutual TLS takes both)"),
                );
                None
            }
        };
        match &t.ca {
            Some(ca) => Some(Tls { ca: resolve(base, ca), client }),
            None => {
                errors.add(f("tls.ca"), "missing: the PEM file of the CA that signed the brokers' certificates");
                None
            }
        }
    });
    let sasl = c.sasl.as_ref().and_then(|s| {
        if s.password.is_some() {
            // The value is deliberately not echoed: it is a secret.
            errors.add(
                f("sasl.password"),
                "a password must not be written in the topology file; use password_env = \"VARIABLE\" or \
                 password_file = \"PATH\"",
            );
            return None;
        }
        let mechanism = SaslMechanism::parse(&s.mechanism);
        if mechanism.is_none() {
            let known: Vec<&str> = SaslMechanism::ALL.iter().map(|m| m.name()).collect();
            errors
                .add(f("sasl.mechanism"), format!("unknown mechanism {:?} (known: {})", s.mechanism, known.join(", ")));
        }
        if s.username.is_empty() {
            errors.add(f("sasl.username"), "must not be empty");
        }
        let password = match (&s.password_env, &s.password_file) {
            (Some(var), None) if var.is_empty() => {
                errors.add(f("sasl.password_env"), "must name an environment variable");
                None
            }
            (Some(var), None) => Some(PasswordSource::Env(var.clone())),
            (None, Some(path)) => Some(PasswordSource::File(resolve(base, path))),
            (Some(var), Some(path)) => {
                errors.add(
                    f("sasl.password_env"),
                    format!("{var:?} is set together with password_file = {path:?}; keep one"),
                );
                None
            }
            (None, None) => {
                errors.add(f("sasl"), "missing field `password_env` or `password_file`");
                None
            }
        };
        Some(Sasl { mechanism: mechanism?, username: s.username.clone(), password: password? })
    });
    (tls, sasl)
}

/// `a/b/../c` -> `a/c`, without touching the file system (for paths that do not exist).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn validate(path: &Path, raw: RawTopology, errors: &mut Errors) -> Option<Topology> {
    // Model paths are relative to the topology file's folder, made absolute so that messages
    // and the runtime do not depend on the working directory.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    let mut clusters = BTreeMap::new();
    for (name, c) in &raw.clusters {
        let brokers = match std::env::var(brokers_env_var(name)) {
            Ok(v) => v.split(',').map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect(),
            Err(_) => c.brokers.clone(),
        };
        if brokers.is_empty() {
            errors.add(format!("clusters.{name}.brokers"), "needs at least one host:port");
        }
        for b in &brokers {
            if b.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                errors.add(format!("clusters.{name}.brokers"), format!("{b:?} is not host:port"));
            }
        }
        let (tls, sasl) = security(errors, name, c, &base);
        let cluster = Cluster { name: name.clone(), brokers, tls, sasl };
        // Files and variables are checked only when the settings are complete, so that one
        // mistake gives one line.
        if errors.list.iter().all(|e| !e.field.starts_with(&format!("clusters.{name}."))) {
            for e in crate::kafka::security::check(&cluster) {
                errors.add(format!("clusters.{name}.{}", e.field), e.message);
            }
        }
        clusters.insert(name.clone(), cluster);
    }
    if raw.tiers.is_empty() {
        errors.add("tiers", "at least one tier is required");
        return None;
    }
    let mut tiers = Vec::new();
    let mut infos = Vec::new();
    for (i, t) in raw.tiers.iter().enumerate() {
        let (tier, info) = tier(errors, i, t, &base, &clusters);
        tiers.push(tier);
        infos.push(info);
    }
    let dead_letter = topic_ref(errors, "dead_letter", &raw.dead_letter, &clusters);
    let offsets_topic = raw.offsets_topic.clone().unwrap_or_else(|| DEFAULT_OFFSETS_TOPIC.to_string());
    check_topic_name(errors, "offsets_topic", &offsets_topic);
    let metrics_listen = raw.metrics.as_ref().and_then(|m| match m.listen.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.add("metrics.listen", format!("{:?} is not a socket address (e.g. 127.0.0.1:9464)", m.listen));
            None
        }
    });

    // Names, links, cycles.
    let mut index = BTreeMap::new();
    for (i, t) in tiers.iter().enumerate() {
        if let Some(&first) = index.get(&t.name) {
            errors.add(format!("tiers[{i}].name"), format!("{:?} is already the name of tiers[{first}]", t.name));
        } else {
            index.insert(t.name.clone(), i);
        }
    }
    let names = || known(tiers.iter().map(|t| t.name.clone()));
    for (i, t) in tiers.iter().enumerate() {
        if let Some(next) = &t.next {
            if !index.contains_key(next) {
                errors.add(format!("tiers[{i}].next"), format!("unknown tier {next:?} (known: {})", names()));
            }
        }
    }
    let unknown_next = errors.list.iter().any(|e| e.field.ends_with(".next"));
    let mut in_cycle = BTreeSet::new();
    for start in 0..tiers.len() {
        let mut path = vec![start];
        let mut at = start;
        while let Some(&n) = tiers[at].next.as_ref().and_then(|n| index.get(n)) {
            if n == start {
                if path.iter().all(|p| !in_cycle.contains(p)) {
                    let mut chain: Vec<&str> = path.iter().map(|&p| tiers[p].name.as_str()).collect();
                    chain.push(&tiers[start].name);
                    errors.add(format!("tiers[{start}].next"), format!("cycle {}", chain.join(" -> ")));
                }
                in_cycle.extend(path.iter().copied());
                break;
            }
            if path.contains(&n) {
                break; // a cycle not through `start`: reported from one of its members
            }
            path.push(n);
            at = n;
        }
    }
    if !in_cycle.is_empty() {
        return None;
    }
    let targets: BTreeSet<&str> = tiers.iter().filter_map(|t| t.next.as_deref()).collect();
    let firsts: Vec<usize> = (0..tiers.len()).filter(|&i| !targets.contains(tiers[i].name.as_str())).collect();
    if firsts.len() > 1 && !unknown_next {
        let list: Vec<&str> = firsts.iter().map(|&i| tiers[i].name.as_str()).collect();
        errors
            .add("tiers", format!("more than one first tier (no other tier's next points to it): {}", list.join(", ")));
    }

    // Formats and widths along the chain.
    let mut feeders: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, t) in tiers.iter().enumerate() {
        if let Some(&n) = t.next.as_ref().and_then(|n| index.get(n)) {
            feeders.insert(n, i);
        }
    }
    for (i, t) in tiers.iter_mut().enumerate() {
        if let Some(info) = &infos[i] {
            check_input_against_model(errors, &format!("tiers[{i}].input"), &mut t.input, info);
        }
    }
    for (i, t) in tiers.iter().enumerate() {
        match feeders.get(&i) {
            Some(&from) if t.input.format != InputFormat::Envelope => errors.add(
                format!("tiers[{i}].input.format"),
                format!(
                    "{:?}, but tier {:?} forwards envelopes to this tier; use \"envelope\"",
                    raw.tiers[i].input.format, tiers[from].name
                ),
            ),
            Some(&from) if infos[i].as_ref().is_some_and(|info| info.input_dtype == DType::U8) => errors.add(
                format!("tiers[{i}].model"),
                format!(
                    "takes uint8 input, but tier {:?} forwards float32 features to it; declare the input float32 or \
                     float16",
                    tiers[from].name
                ),
            ),
            _ => {}
        }
        let Some(info) = &infos[i] else { continue };
        if t.input.format == InputFormat::PaperJson && info.input_shape != PAPER_SHAPE {
            errors.add(
                format!("tiers[{i}].input.format"),
                format!("\"paper-json\" sends [1, 28, 28] but the model takes {:?}", info.input_shape),
            );
        }
        if t.input.format == InputFormat::RawU8 && info.input_width() != RAW_U8_WIDTH {
            errors.add(
                format!("tiers[{i}].input.format"),
                format!(
                    "\"raw-u8\" sends {RAW_U8_WIDTH} values but the model takes {:?} ({} values)",
                    info.input_shape,
                    info.input_width()
                ),
            );
        }
        if let Some(&n) = t.next.as_ref().and_then(|n| index.get(n)) {
            match (info.features_width(), &infos[n]) {
                (None, _) => errors.add(
                    format!("tiers[{i}].model"),
                    format!("has no \"features\" output, but next = {:?} needs one", tiers[n].name),
                ),
                (Some(w), Some(next)) if w != next.input_width() => errors.add(
                    format!("tiers[{i}].model"),
                    format!(
                        "features width {w} does not match input width {} of tiers[{n}] ({:?})",
                        next.input_width(),
                        tiers[n].name
                    ),
                ),
                _ => {}
            }
        }
    }
    if !errors.list.is_empty() {
        return None;
    }

    // Pipeline order: from the first tier along `next`.
    let mut ordered = Vec::new();
    let mut at = firsts.first().copied();
    while let Some(i) = at {
        ordered.push(tiers[i].clone());
        at = tiers[i].next.as_ref().and_then(|n| index.get(n)).copied();
    }
    Some(Topology { source: path.to_path_buf(), clusters, tiers: ordered, dead_letter, offsets_topic, metrics_listen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_crate_keys_get_their_dots_back() {
        assert_eq!(dotted("tiers[0]threshold"), "tiers[0].threshold");
        assert_eq!(dotted("tiers[0].input.format"), "tiers[0].input.format");
        assert_eq!(dotted("a[1][2]b"), "a[1][2].b");
        assert_eq!(dotted("tiers[3]"), "tiers[3]");
    }

    #[test]
    fn multi_line_messages_fold_to_one() {
        let toml = "TOML parse error at line 3, column 5\n  |\n3 | [a\n  |     ^\nunclosed table, expected `]`\n";
        assert_eq!(one_line(toml), "TOML parse error at line 3, column 5: unclosed table, expected `]`");
    }

    #[test]
    fn paths_normalize_lexically() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d.onnx")), Path::new("/a/c/d.onnx"));
        assert_eq!(normalize(Path::new("../x")), Path::new("../x"));
    }

    #[test]
    fn kafka_topic_names() {
        for ok in ["a", "ddnn.edge.input", "A_b-9.x", "...", "__ddnn_offsets", &"x".repeat(249)] {
            assert!(is_valid_topic_name(ok), "{ok:?} should be valid");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", "t\n", "a:b", &"x".repeat(250)] {
            assert!(!is_valid_topic_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn broker_variables_are_upper_case_with_underscores() {
        assert_eq!(brokers_env_var("edge"), "DDNN_BROKERS_EDGE");
        assert_eq!(brokers_env_var("fog-2.eu"), "DDNN_BROKERS_FOG_2_EU");
    }
}
