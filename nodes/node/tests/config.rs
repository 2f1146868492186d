#![allow(clippy::unwrap_used)]
//! topology.toml validation: every error with its exact message, and the valid files we ship.

use std::path::{Path, PathBuf};

use ddnn::config::{load, InputFormat, Scaling};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn init_ort() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        std::env::set_var("ORT_DYLIB_PATH", root().join(".ddnn/ort/libonnxruntime.so.1.31.1"));
    }
}

fn model(name: &str) -> String {
    root().join("models/mnist").join(format!("{name}.onnx")).display().to_string()
}

/// A valid three-tier topology; `edit` rewrites its text.
fn topo(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    init_ort();
    let text = format!(
        r#"
[clusters.local]
brokers = ["127.0.0.1:9092"]

[[tiers]]
name = "edge"
model = "{edge}"
input = {{ cluster = "local", topic = "in", format = "paper-json", partitions = 2 }}
exits = {{ cluster = "local", topic = "exits" }}
next = "fog"
threshold = 0.8
workers = {{ min = 1, max = 2 }}

[[tiers]]
name = "fog"
model = "{fog}"
input = {{ cluster = "local", topic = "fog.in", format = "envelope" }}
exits = {{ cluster = "local", topic = "exits" }}
next = "cloud"
threshold = 0.8

[[tiers]]
name = "cloud"
model = "{cloud}"
input = {{ cluster = "local", topic = "cloud.in", format = "envelope" }}
exits = {{ cluster = "local", topic = "exits" }}
threshold = 0.8

[dead_letter]
cluster = "local"
topic = "dlq"
"#,
        edge = model("edge"),
        fog = model("fog"),
        cloud = model("cloud")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, edit(text)).unwrap();
    (dir, path)
}

/// The error lines, without the `FILE: ` prefix.
fn errors(edit: impl Fn(String) -> String) -> Vec<String> {
    let (_dir, path) = topo(edit);
    let e = load(&path).expect_err("should be invalid");
    let prefix = format!("{}: ", path.display());
    e.to_string().lines().map(|l| l.strip_prefix(&prefix).expect("file prefix").to_string()).collect()
}

#[test]
fn a_valid_topology_loads_in_pipeline_order_with_defaults() {
    // Tiers listed out of order still come back in pipeline order.
    let (_dir, path) = topo(|t| {
        let (head, rest) = t.split_once("[[tiers]]").unwrap();
        let parts: Vec<&str> = rest.split("[[tiers]]").collect();
        format!(
            "{head}[[tiers]]{}[[tiers]]{}[[tiers]]{}",
            parts[2].split("[dead_letter]").next().unwrap(),
            parts[0],
            parts[1].to_string() + "[dead_letter]" + parts[2].split("[dead_letter]").nth(1).unwrap()
        )
    });
    let t = load(&path).unwrap();
    let names: Vec<&str> = t.tiers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["edge", "fog", "cloud"]);
    let edge = &t.tiers[0];
    assert_eq!(edge.input.format, InputFormat::PaperJson);
    assert_eq!(edge.input.topic.partitions, 2);
    assert_eq!(edge.model_info.features_shape, Some(vec![32]));
    assert_eq!((edge.workers.min, edge.workers.max), (1, 2));
    assert_eq!(edge.batch.max, 32);
    assert_eq!(edge.batch.max_delay.as_millis(), 2);
    assert_eq!(edge.scaling, Scaling::Elastic);
    assert_eq!(edge.scaler.tick.as_millis(), 250);
    assert_eq!((edge.instance.index, edge.instance.count), (0, 1));
    let fog = &t.tiers[1];
    assert!(fog.workers.max >= 1 && fog.workers.max <= std::thread::available_parallelism().unwrap().get());
    assert_eq!(t.offsets_topic, "__ddnn_offsets");
    assert_eq!(t.metrics_listen, None);
    assert_eq!(t.tiers[2].next, None);
}

#[test]
fn relative_model_paths_resolve_against_the_topology_file() {
    let (dir, path) = topo(|t| t.replace(&model("cloud"), "models/cloud.onnx"));
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::copy(model("cloud"), dir.path().join("models/cloud.onnx")).unwrap();
    let t = load(&path).unwrap();
    assert_eq!(t.tiers[2].model, dir.path().join("models/cloud.onnx").canonicalize().unwrap());
}

#[test]
fn unknown_next_tier() {
    assert_eq!(
        errors(|t| t.replace("next = \"cloud\"", "next = \"clod\"")),
        ["tiers[1].next: unknown tier \"clod\" (known: edge, fog, cloud)"]
    );
}

#[test]
fn cycles_are_reported_once() {
    let e = errors(|t| {
        t.replacen("threshold = 0.8\n\n[dead_letter]", "threshold = 0.8\nnext = \"fog\"\n\n[dead_letter]", 1)
    });
    assert_eq!(e, ["tiers[1].next: cycle fog -> cloud -> fog"]);
}

#[test]
fn threshold_outside_the_unit_interval() {
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "threshold = 1.5", 1).replacen("threshold = 0.8", "threshold = 0", 1)),
        ["tiers[0].threshold: 1.5 is outside (0, 1]", "tiers[1].threshold: 0 is outside (0, 1]"]
    );
}

#[test]
fn worker_bounds() {
    assert_eq!(errors(|t| t.replace("min = 1, max = 2", "min = 4, max = 2")), ["tiers[0].workers: min 4 > max 2"]);
    assert_eq!(
        errors(|t| t.replace("workers = { min = 1, max = 2 }", "scaling = \"fixed\"\nworkers = { min = 1, max = 4 }")),
        ["tiers[0].workers: fixed scaling needs min = max, found min 1, max 4"]
    );
    assert_eq!(
        errors(|t| t.replace("min = 1, max = 2", "min = 0, max = 0")),
        ["tiers[0].workers: max must be at least 1, found 0"]
    );
}

#[test]
fn missing_and_unreadable_models() {
    let e = errors(|t| t.replace(&model("fog"), "/nonexistent/fog.onnx"));
    assert_eq!(e, ["tiers[1].model: cannot read \"/nonexistent/fog.onnx\": file not found"]);
    let (dir, path) = topo(|t| t);
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap().replace(&model("cloud"), &junk.display().to_string()),
    )
    .unwrap();
    let text = load(&path).unwrap_err().to_string();
    assert!(text.starts_with(&format!("{}: tiers[2].model: \"{}\": ", path.display(), junk.display())), "{text}");
}

#[test]
fn feature_width_must_match_the_next_input() {
    // cloud.onnx takes 16 values; the edge sends 32.
    assert_eq!(
        errors(|t| t.replace(&model("fog"), &model("cloud")).replace("next = \"cloud\"\n", "")),
        [
            "tiers: more than one first tier (no other tier's next points to it): edge, cloud",
            "tiers[0].model: features width 32 does not match input width 16 of tiers[1] (\"fog\")",
        ]
    );
    assert_eq!(
        errors(|t| t.replace(&model("fog"), &model("cloud"))),
        [
            "tiers[1].model: has no \"features\" output, but next = \"cloud\" needs one",
            "tiers[0].model: features width 32 does not match input width 16 of tiers[1] (\"fog\")",
        ]
        .iter()
        .rev()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    );
}

#[test]
fn unknown_keys_name_the_field() {
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "treshold = 0.8", 1)),
        ["tiers[0]: unknown field `treshold`, expected one of `name`, `model`, `input`, `exits`, `next`, `threshold`, `scaling`, `workers`, `batch`, `scaler`, `instance`"]
    );
    assert_eq!(
        errors(|t| t + "\n[metrics]\nlisten = \"127.0.0.1:9464\"\nport = 3\n"),
        ["metrics: unknown field `port`, expected `listen`"]
    );
}

#[test]
fn references_formats_and_values_are_all_reported_together() {
    let e = errors(|t| {
        t.replace("cluster = \"local\", topic = \"exits\" }", "cluster = \"locl\", topic = \"exits\" }")
            .replace("format = \"envelope\" }", "format = \"paper-json\" }")
            .replace("partitions = 2", "partitions = 0")
            .replace("topic = \"dlq\"", "topic = \"\"")
            + "\n[metrics]\nlisten = \"nowhere\"\n"
    });
    assert_eq!(
        e,
        [
            "tiers[0].input.partitions: 0 must be at least 1",
            "tiers[0].exits.cluster: unknown cluster \"locl\" (known: local)",
            "tiers[1].exits.cluster: unknown cluster \"locl\" (known: local)",
            "tiers[2].exits.cluster: unknown cluster \"locl\" (known: local)",
            "dead_letter.topic: must not be empty",
            "metrics.listen: \"nowhere\" is not a socket address (e.g. 127.0.0.1:9464)",
            "tiers[1].input.format: \"paper-json\", but tier \"edge\" forwards envelopes to this tier; use \"envelope\"",
            "tiers[1].input.format: \"paper-json\" sends [1, 28, 28] but the model takes [32]",
            "tiers[2].input.format: \"paper-json\", but tier \"fog\" forwards envelopes to this tier; use \"envelope\"",
            "tiers[2].input.format: \"paper-json\" sends [1, 28, 28] but the model takes [16]",
        ]
    );
}

#[test]
fn durations_instances_batches_and_duplicate_names() {
    let e = errors(|t| {
        t.replacen(
            "workers = { min = 1, max = 2 }",
            "workers = { min = 1, max = 2 }\nbatch = { max = 0, max_delay = \"soon\" }\ninstance = { index = 2, count = 2 }",
            1,
        )
        .replace("name = \"cloud\"", "name = \"fog\"")
        .replace("next = \"cloud\"", "next = \"fog\"")
    });
    assert_eq!(
        e,
        [
            "tiers[0].batch.max: 0 must be at least 1",
            "tiers[0].batch.max_delay: \"soon\" is not a duration (expected number at 0); e.g. \"250ms\", \"5s\"",
            "tiers[0].instance.index: 2 is outside 0..2",
            "tiers[2].name: \"fog\" is already the name of tiers[1]",
            "tiers[1].next: cycle fog -> fog",
        ]
    );
}

#[test]
fn missing_file_and_bad_toml() {
    init_ort();
    let e = load(Path::new("/nonexistent/topology.toml")).unwrap_err().to_string();
    assert_eq!(e, "/nonexistent/topology.toml: (file): cannot read: file not found");
    let e = errors(|t| t.replace("[dead_letter]", "[dead_letter"));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("(file): "), "{e:?}");
}

#[test]
fn brokers_can_be_overridden_from_the_environment() {
    let (_dir, path) = topo(|t| {
        t.replace("clusters.local", "clusters.env-test").replace("cluster = \"local\"", "cluster = \"env-test\"")
    });
    std::env::set_var("DDNN_BROKERS_ENV_TEST", "10.0.0.1:9092, 10.0.0.2:9093");
    let t = load(&path).unwrap();
    std::env::remove_var("DDNN_BROKERS_ENV_TEST");
    assert_eq!(t.cluster("env-test").unwrap().brokers, ["10.0.0.1:9092", "10.0.0.2:9093"]);
}

#[test]
fn the_shipped_topologies_are_valid() {
    init_ort();
    for f in ["topology/local.toml", "topology/continuum.toml"] {
        let t = load(&root().join(f)).unwrap_or_else(|e| panic!("{f}:\n{e}"));
        assert_eq!(t.tiers.len(), 3, "{f}");
        assert!(t.tiers.iter().all(|t| t.workers.max <= 8));
    }
}
