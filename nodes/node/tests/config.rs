#![allow(clippy::unwrap_used)]
//! topology.toml validation: every error with its exact message, and the valid files we ship.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ddnn::config::{load, Exit, ExitRule, InputFormat, ScalerSettings, Scaling};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn init_ort() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        std::env::set_var("ORT_DYLIB_PATH", root().join(".ddnn/ort/libonnxruntime.so.1.31.1"));
    }
}

/// Tiny models with the tier contract (tests/fixtures/make_fixtures.py): edge [1,28,28] -> 32
/// features, fog 32 -> 16, cloud 16 -> probs only.
fn model(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.onnx")).display().to_string()
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
    assert_eq!(edge.group, "ddnn.edge");
    assert_eq!(edge.auto_offset_reset, ddnn::config::OffsetReset::Earliest);
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
fn exit_rules_load_and_threshold_is_shorthand_for_max_prob() {
    let (_dir, path) = topo(|t| {
        t.replacen("threshold = 0.8", "exit = { rule = \"entropy\", threshold = 0.3 }", 1).replacen(
            "threshold = 0.8",
            "exit = { rule = \"margin\", threshold = 0.5 }",
            1,
        )
    });
    let t = load(&path).unwrap();
    let exits: Vec<Exit> = t.tiers.iter().map(|t| t.exit).collect();
    assert_eq!(
        exits,
        [
            Exit { rule: ExitRule::Entropy, threshold: 0.3 },
            Exit { rule: ExitRule::Margin, threshold: 0.5 },
            Exit { rule: ExitRule::MaxProb, threshold: 0.8 },
        ]
    );
    let s = t.summary();
    assert!(s.contains("exits  local/exits [1 partition(s)] when entropy <= 0.3, else -> fog"), "{s}");
    assert!(s.contains("exits  local/exits [1 partition(s)] when margin >= 0.5, else -> cloud"), "{s}");
    // The long form of max-prob is the same as the shorthand.
    let (_dir, path) = topo(|t| t.replacen("threshold = 0.8", "exit = { rule = \"max-prob\", threshold = 0.8 }", 1));
    assert_eq!(load(&path).unwrap().tiers[0].exit, Exit::max_prob(0.8));
    // Each rule's range: the end at which every sample would exit is excluded.
    let (_dir, path) = topo(|t| {
        t.replacen("threshold = 0.8", "exit = { rule = \"entropy\", threshold = 0 }", 1).replacen(
            "threshold = 0.8",
            "exit = { rule = \"margin\", threshold = 1 }",
            1,
        )
    });
    let t = load(&path).unwrap();
    assert_eq!((t.tiers[0].exit.threshold, t.tiers[1].exit.threshold), (0.0, 1.0));
}

#[test]
fn exit_rule_errors_name_field_and_value() {
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "threshold = 0.8\nexit = { rule = \"entropy\", threshold = 0.3 }", 1)),
        ["tiers[0].threshold: 0.8 is set together with exit = { rule = \"entropy\", threshold = 0.3 }; keep one \
          (threshold = X is shorthand for exit = { rule = \"max-prob\", threshold = X })"]
    );
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "exit = { rule = \"confidence\", threshold = 0.3 }", 1)),
        ["tiers[0].exit.rule: unknown rule \"confidence\" (known: max-prob, entropy, margin)"]
    );
    assert_eq!(
        errors(|t| {
            t.replacen("threshold = 0.8", "exit = { rule = \"entropy\", threshold = 1 }", 1)
                .replacen("threshold = 0.8", "exit = { rule = \"margin\", threshold = 0 }", 1)
                .replacen("threshold = 0.8", "exit = { rule = \"max-prob\", threshold = 1.5 }", 1)
        }),
        [
            "tiers[0].exit.threshold: 1 is outside [0, 1) for rule entropy",
            "tiers[1].exit.threshold: 0 is outside (0, 1] for rule margin",
            "tiers[2].exit.threshold: 1.5 is outside (0, 1] for rule max-prob",
        ]
    );
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "exit = { rule = \"entropy\", threshold = -0.1 }", 1)),
        ["tiers[0].exit.threshold: -0.1 is outside [0, 1) for rule entropy"]
    );
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "exit = { rule = \"margin\" }", 1)),
        ["tiers[0].exit: missing field `threshold`"]
    );
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "exit = { rule = \"margin\", threshold = 0.5, above = true }", 1)),
        ["tiers[0].exit: unknown field `above`, expected `rule` or `threshold`"]
    );
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
        ["tiers[0]: unknown field `treshold`, expected one of `name`, `model`, `input`, `exits`, `next`, `threshold`, `exit`, `scaling`, `workers`, `batch`, `scaler`, `instance`, `group`, `auto_offset_reset`, `exit_format`, `device`, `model_name`, `model_version`, `adaptive`"]
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
            "tiers[0].instance: removed: tiers are Kafka consumer groups now; run more nodes with the same topology and the group `ddnn.edge` spreads the input partitions among them (delete this line)",
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
    // The models are committed: a missing one is a failure, not a skip.
    assert!(root().join("models/mnist/edge.onnx").is_file(), "models/mnist/edge.onnx is missing");
    for f in ["topology/local.toml", "topology/continuum.toml"] {
        let t = load(&root().join(f)).unwrap_or_else(|e| panic!("{f}:\n{e}"));
        assert_eq!(t.tiers.len(), 3, "{f}");
        assert!(t.tiers.iter().all(|t| t.workers.max <= 8));
    }
}

#[test]
fn thresholds_zero_negative_and_nan_are_rejected() {
    assert_eq!(
        errors(|t| t
            .replacen("threshold = 0.8", "threshold = -0.5", 1)
            .replacen("threshold = 0.8", "threshold = nan", 1)
            .replacen("threshold = 0.8", "threshold = 1.0", 1)),
        ["tiers[0].threshold: -0.5 is outside (0, 1]", "tiers[1].threshold: NaN is outside (0, 1]"]
    );
}

#[test]
fn unknown_clusters_everywhere_and_empty_brokers() {
    assert_eq!(
        errors(|t| t
            .replace(
                "[clusters.local]\nbrokers = [\"127.0.0.1:9092\"]",
                "[clusters.local]\nbrokers = []\n\n[clusters.far]\nbrokers = [\"far:x\"]"
            )
            .replacen("input = { cluster = \"local\"", "input = { cluster = \"x\"", 1)
            .replace("cluster = \"local\"\ntopic = \"dlq\"", "cluster = \"nowhere\"\ntopic = \"dlq\"")),
        [
            "clusters.far.brokers: \"far:x\" is not host:port",
            "clusters.local.brokers: needs at least one host:port",
            "tiers[0].input.cluster: unknown cluster \"x\" (known: far, local)",
            "dead_letter.cluster: unknown cluster \"nowhere\" (known: far, local)",
        ]
    );
}

#[test]
fn empty_topics_and_partition_counts() {
    assert_eq!(
        errors(|t| t
            .replace("topic = \"fog.in\"", "topic = \" \"")
            .replace("topic = \"exits\" }", "topic = \"exits\", partitions = -3 }")),
        [
            "tiers[0].exits.partitions: -3 must be at least 1",
            "tiers[1].input.topic: must not be empty",
            "tiers[1].exits.partitions: -3 must be at least 1",
            "tiers[2].exits.partitions: -3 must be at least 1",
        ]
    );
}

#[test]
fn topic_names_follow_kafkas_rule() {
    let long = "x".repeat(250);
    assert_eq!(
        errors(|t| t
            .replace("topic = \"in\"", "topic = \"a b\"")
            .replacen("topic = \"exits\" }", "topic = \"..\" }", 2)
            .replace("topic = \"cloud.in\"", "topic = \"cloud/in\"")
            .replace("topic = \"dlq\"", &format!("topic = \"{long}\""))
            .replace("[clusters.local]", "offsets_topic = \".\"\n\n[clusters.local]")),
        [
            "tiers[0].input.topic: \"a b\" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)".to_string(),
            "tiers[0].exits.topic: \"..\" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)".to_string(),
            "tiers[1].exits.topic: \"..\" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)".to_string(),
            "tiers[2].input.topic: \"cloud/in\" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)".to_string(),
            format!("dead_letter.topic: \"{long}\" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)"),
            "offsets_topic: \".\" is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)".to_string(),
        ]
    );
    // The longest name Kafka accepts, and every allowed character.
    let longest = "y".repeat(249);
    let (_dir, path) = topo(|t| {
        t.replace("topic = \"dlq\"", &format!("topic = \"{longest}\"")).replace("\"fog.in\"", "\"Fog_in-2.x\"")
    });
    let t = load(&path).unwrap();
    assert_eq!(t.dead_letter.topic, longest);
    assert_eq!(t.tiers[1].input.topic.topic, "Fog_in-2.x");
}

#[test]
fn batch_max_has_an_upper_bound() {
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "threshold = 0.8\nbatch = { max = 5000 }", 1)),
        ["tiers[0].batch.max: 5000 must be at most 4096"]
    );
    let (_dir, path) = topo(|t| t.replacen("threshold = 0.8", "threshold = 0.8\nbatch = { max = 4096 }", 1));
    assert_eq!(load(&path).unwrap().tiers[0].batch.max, 4096);
}

#[test]
fn batch_max_must_fit_a_fixed_batch_dimension() {
    let batch1 = |t: String| t.replace(&model("cloud"), &model("cloud_batch1"));
    assert_eq!(
        errors(batch1),
        ["tiers[2].batch.max: 32 (the default) exceeds the model's fixed batch dimension 1; set batch.max = 1 or export the model with a dynamic batch axis"]
    );
    assert_eq!(
        errors(move |t| batch1(t).replace("threshold = 0.8\n\n[dead_letter]", "threshold = 0.8\nbatch = { max = 2 }\n\n[dead_letter]")),
        ["tiers[2].batch.max: 2 exceeds the model's fixed batch dimension 1; set batch.max = 1 or export the model with a dynamic batch axis"]
    );
    let (_dir, path) = topo(move |t| {
        batch1(t).replace("threshold = 0.8\n\n[dead_letter]", "threshold = 0.8\nbatch = { max = 1 }\n\n[dead_letter]")
    });
    let t = load(&path).unwrap();
    assert_eq!((t.tiers[2].batch.max, t.tiers[2].model_info.fixed_batch), (1, Some(1)));
    assert_eq!(t.tiers[0].model_info.fixed_batch, None, "edge.onnx has a dynamic batch axis");
}

#[test]
fn group_and_offset_reset_are_checked() {
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "threshold = 0.8\ngroup = \"\"\nauto_offset_reset = \"smallest\"", 1)),
        [
            "tiers[0].group: \"\": a group id must be 1 to 249 characters",
            "tiers[0].auto_offset_reset: unknown value \"smallest\" (known: earliest, latest)"
        ]
    );
}

#[test]
fn bad_enumerations_and_durations() {
    assert_eq!(
        errors(|t| t
            .replacen("format = \"paper-json\"", "format = \"protobuf\"", 1)
            .replacen("threshold = 0.8", "threshold = 0.8\nscaling = \"auto\"\nscaler = { tick = \"0s\", target_drain = \"1 fortnight\" }", 1)),
        [
            "tiers[0].scaling: unknown scaling \"auto\" (known: elastic, fixed)",
            "tiers[0].scaler.target_drain: \"1 fortnight\" is not a duration (unknown time unit \"fortnight\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); e.g. \"250ms\", \"5s\"",
            "tiers[0].scaler.tick: must be longer than 0",
            "tiers[0].input.format: unknown format \"protobuf\" (known: tensor, json, image, kafka-ml, paper-json, raw-u8, envelope)",
        ]
    );
}

#[test]
fn first_tier_formats_need_a_784_value_model() {
    // raw-u8 on the edge model (784 inputs) is fine.
    let (_dir, path) = topo(|t| t.replace("format = \"paper-json\"", "format = \"raw-u8\""));
    assert_eq!(load(&path).unwrap().tiers[0].input.format, InputFormat::RawU8);
    // The fog model takes 32 values: neither raw-u8 nor paper-json fits it.
    let only_fog = |format: &'static str| {
        move |t: String| {
            let (head, _) = t.split_once("[[tiers]]\nname = \"fog\"").unwrap();
            let head = head.replace(&model("edge"), &model("fog")).replace("format = \"paper-json\"", format);
            format!("{head}[dead_letter]\ncluster = \"local\"\ntopic = \"dlq\"\n").replace("next = \"fog\"\n", "")
        }
    };
    assert_eq!(
        errors(only_fog("format = \"raw-u8\"")),
        [
            "tiers[0].model: has no \"features\" output, but next = \"fog\" needs one",
            "tiers[0].input.format: \"raw-u8\" sends 784 values but the model takes [32] (32 values)"
        ][1..]
    );
    assert_eq!(
        errors(only_fog("format = \"paper-json\"")),
        ["tiers[0].input.format: \"paper-json\" sends [1, 28, 28] but the model takes [32]"]
    );
}

#[test]
fn no_tiers_at_all() {
    assert_eq!(
        errors(|t| {
            let (head, rest) = t.split_once("[[tiers]]").unwrap();
            format!("{head}[dead_letter]{}", rest.split_once("[dead_letter]").unwrap().1)
        }),
        ["tiers: at least one tier is required"]
    );
}

#[test]
fn type_and_missing_field_errors_name_the_field() {
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8", "threshold = \"high\"", 1)),
        ["tiers[0].threshold: invalid type: string \"high\", expected a floating point"]
    );
    assert_eq!(
        errors(|t| t.replacen("threshold = 0.8\n", "", 1)),
        ["tiers[0]: missing field `exit` (or its shorthand `threshold`)"]
    );
    assert_eq!(
        errors(|t| t.replace("[dead_letter]\ncluster = \"local\"\ntopic = \"dlq\"", "")),
        ["(file): missing field `dead_letter`"]
    );
    assert_eq!(
        errors(|t| t.replace("min = 1, max = 2", "min = 1, mx = 2")),
        ["tiers[0].workers: unknown field `mx`, expected `min` or `max`"]
    );
    assert_eq!(
        errors(|t| t.replace("workers = { min = 1, max = 2 }", "workers = \"many\"")),
        ["tiers[0].workers: invalid type: string \"many\", expected an integer or a table { min, max }"]
    );
    assert_eq!(
        errors(|t| t.replace("partitions = 2", "partitions = \"two\"")),
        ["tiers[0].input.partitions: invalid type: string \"two\", expected an integer"]
    );
}

#[test]
fn toml_syntax_errors_are_one_line_with_the_position() {
    assert_eq!(
        errors(|t| t.replace("[dead_letter]", "[dead_letter")),
        ["(file): TOML parse error at line 29, column 13: unclosed table, expected `]`"]
    );
}

#[test]
fn workers_as_a_single_number_and_the_default_range() {
    let (_dir, path) = topo(|t| {
        t.replace("workers = { min = 1, max = 2 }", "scaling = \"fixed\"\nworkers = 3").replacen(
            "next = \"cloud\"\n",
            "next = \"cloud\"\nscaling = \"fixed\"\n",
            1,
        )
    });
    let t = load(&path).unwrap();
    assert_eq!((t.tiers[0].workers.min, t.tiers[0].workers.max, t.tiers[0].scaling), (3, 3, Scaling::Fixed));
    // fixed without workers: one worker.
    assert_eq!((t.tiers[1].workers.min, t.tiers[1].workers.max), (1, 1));
    // elastic without workers: 1 ..= cores, at most 8.
    let cores = std::thread::available_parallelism().unwrap().get().min(8);
    assert_eq!((t.tiers[2].workers.min, t.tiers[2].workers.max), (1, cores));
    assert_eq!(t.tiers[2].workers.max, ddnn::config::default_max_workers());
}

#[test]
fn every_optional_value_can_be_set() {
    let (_dir, path) = topo(|t| {
        t.replacen(
            "workers = { min = 1, max = 2 }",
            "workers = { min = 0, max = 6 }\nbatch = { max = 8, max_delay = \"5ms\" }\n\
             scaler = { tick = \"100ms\", target_drain = \"2s\", stabilization = \"30s\" }\n\
             group = \"edge-fleet\"\nauto_offset_reset = \"latest\"",
            1,
        )
        .replace("topic = \"dlq\"", "topic = \"dlq\"\npartitions = 3")
        .replace("[clusters.local]", "offsets_topic = \"my_offsets\"\n\n[clusters.local]")
            + "\n[metrics]\nlisten = \"0.0.0.0:9100\"\n"
    });
    let t = load(&path).unwrap();
    let e = &t.tiers[0];
    assert_eq!((e.workers.min, e.workers.max), (0, 6));
    assert_eq!((e.batch.max, e.batch.max_delay), (8, Duration::from_millis(5)));
    assert_eq!(
        e.scaler,
        ScalerSettings {
            tick: Duration::from_millis(100),
            target_drain: Duration::from_secs(2),
            stabilization: Duration::from_secs(30)
        }
    );
    assert_eq!((e.group.as_str(), e.auto_offset_reset), ("edge-fleet", ddnn::config::OffsetReset::Latest));
    assert_eq!(t.dead_letter.partitions, 3);
    assert_eq!(t.offsets_topic, "my_offsets");
    assert_eq!(t.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
    assert_eq!(t.next_input(e).unwrap().topic.topic, "fog.in");
    // Defaults on the other tiers.
    let cloud = &t.tiers[2];
    assert_eq!((cloud.batch.max, cloud.batch.max_delay), (32, Duration::from_millis(2)));
    assert_eq!(
        cloud.scaler,
        ScalerSettings {
            tick: Duration::from_millis(250),
            target_drain: Duration::from_secs(1),
            stabilization: Duration::from_secs(5)
        }
    );
    assert_eq!(cloud.exits.partitions, 1);
    assert_eq!(cloud.model_info.features_shape, None);
    assert_eq!(cloud.model_info.input_shape, [16]);
    assert_eq!(t.cluster("local").unwrap().brokers, ["127.0.0.1:9092"]);
}

#[test]
fn missing_relative_models_are_reported_with_a_clean_absolute_path() {
    let (dir, path) = topo(|t| t.replace(&model("edge"), "../nope/./edge.onnx"));
    let e = load(&path).unwrap_err().to_string();
    let want = dir.path().parent().unwrap().join("nope/edge.onnx");
    assert_eq!(e, format!("{}: tiers[0].model: cannot read \"{}\": file not found", path.display(), want.display()));
}

#[test]
fn cluster_names_keep_their_case() {
    let (_dir, path) = topo(|t| t.replace("local", "Edge-Site_1"));
    let t = load(&path).unwrap();
    assert!(t.cluster("Edge-Site_1").is_some());
    // A quoted name may hold a dot.
    let (_dir, path) = topo(|t| t.replace("[clusters.local]", "[clusters.\"a.b\"]").replace("\"local\"", "\"a.b\""));
    assert_eq!(load(&path).unwrap().tiers[0].exits.cluster, "a.b");
    assert_eq!(ddnn::config::brokers_env_var("Edge-Site.1"), "DDNN_BROKERS_EDGE_SITE_1");
}

#[test]
fn summary_describes_the_pipeline() {
    let (_dir, path) = topo(|t| t + "\n[metrics]\nlisten = \"127.0.0.1:9464\"\n");
    let t = load(&path).unwrap();
    let s = t.summary();
    println!("{s}");
    assert!(s.contains("3 tier(s): edge -> fog -> cloud"), "{s}");
    assert!(s.contains("cluster local: 127.0.0.1:9092"), "{s}");
    assert!(s.contains("input  local/in [2 partition(s)] (paper-json)"), "{s}");
    assert!(s.contains("exits  local/exits [1 partition(s)] when max-prob >= 0.8, else -> fog"), "{s}");
    assert!(s.contains("workers 1..=2 elastic, batch <= 32 within 2ms, group ddnn.edge (no commit: earliest)"), "{s}");
    assert!(s.contains("exits  local/exits [1 partition(s)] always (last tier)"), "{s}");
    assert!(s.contains("dead letters local/dlq"), "{s}");
    assert!(s.contains("metrics on http://127.0.0.1:9464/metrics"), "{s}");
}

/// The test topology with `security` added to `[clusters.local]` (paths in it are relative to
/// the topology's folder, `dir`).
fn secured(security: &str) -> (tempfile::TempDir, PathBuf) {
    let security = security.to_string();
    topo(move |t| {
        t.replacen("brokers = [\"127.0.0.1:9092\"]\n", &format!("brokers = [\"127.0.0.1:9092\"]\n{security}\n"), 1)
    })
}

/// The error lines of `secured(security)` once `files` are written next to the topology.
fn secured_errors(security: &str, files: &[(&str, &str)]) -> (Vec<String>, PathBuf) {
    let (dir, path) = secured(security);
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let e = load(&path).expect_err("should be invalid").to_string();
    let prefix = format!("{}: ", path.display());
    let lines = e.lines().map(|l| l.strip_prefix(&prefix).expect("file prefix").to_string()).collect();
    (lines, dir.path().to_path_buf())
}

#[test]
fn a_literal_password_is_refused_without_being_echoed() {
    let (e, _) = secured_errors(r#"sasl = { mechanism = "PLAIN", username = "u", password = "hunter2" }"#, &[]);
    assert_eq!(
        e,
        [
            r#"clusters.local.sasl.password: a password must not be written in the topology file; use password_env = "VARIABLE" or password_file = "PATH""#
        ]
    );
    assert!(!e.concat().contains("hunter2"));
}

#[test]
fn sasl_errors_name_field_and_value() {
    let sasl = |rest: &str| format!("sasl = {{ username = \"alice\", {rest} }}");
    let (e, _) = secured_errors(&sasl(r#"mechanism = "GSSAPI", password_env = "X""#), &[]);
    assert_eq!(
        e,
        [r#"clusters.local.sasl.mechanism: unknown mechanism "GSSAPI" (known: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"#]
    );
    let (e, _) = secured_errors(&sasl(r#"mechanism = "PLAIN""#), &[]);
    assert_eq!(e, ["clusters.local.sasl: missing field `password_env` or `password_file`"]);
    let (e, _) = secured_errors(&sasl(r#"mechanism = "PLAIN", password_env = "A", password_file = "p""#), &[]);
    assert_eq!(e, [r#"clusters.local.sasl.password_env: "A" is set together with password_file = "p"; keep one"#]);
    let (e, _) =
        secured_errors(&sasl(r#"mechanism = "SCRAM-SHA-256", password_env = "DDNN_TEST_UNSET_PASSWORD""#), &[]);
    assert_eq!(e, [r#"clusters.local.sasl.password_env: environment variable "DDNN_TEST_UNSET_PASSWORD" is not set"#]);
    let (e, dir) = secured_errors(&sasl(r#"mechanism = "SCRAM-SHA-512", password_file = "secrets/pw""#), &[]);
    assert_eq!(
        e,
        [format!(r#"clusters.local.sasl.password_file: cannot read "{}/secrets/pw": file not found"#, dir.display())]
    );
    let (e, dir) = secured_errors(&sasl(r#"mechanism = "SCRAM-SHA-512", password_file = "pw""#), &[("pw", "\n")]);
    assert_eq!(e, [format!(r#"clusters.local.sasl.password_file: "{}/pw" is empty"#, dir.display())]);
    let (e, _) = secured_errors(r#"sasl = { mechanism = "PLAIN", username = "alice", pasword_env = "X" }"#, &[]);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("clusters.local.sasl: unknown field `pasword_env`"), "{e:?}");
}

#[test]
fn tls_errors_name_field_and_value() {
    let (e, dir) = secured_errors(r#"tls = { ca = "certs/ca.pem" }"#, &[]);
    assert_eq!(e, [format!(r#"clusters.local.tls.ca: cannot read "{}/certs/ca.pem": file not found"#, dir.display())]);
    let (e, dir) = secured_errors(r#"tls = { ca = "ca.pem" }"#, &[("ca.pem", "not a certificate\n")]);
    assert_eq!(
        e,
        [format!(
            r#"clusters.local.tls.ca: "{}/ca.pem" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"#,
            dir.display()
        )]
    );
    let (e, _) = secured_errors(r#"tls = { ca = "ca.pem", cert = "c.pem" }"#, &[]);
    assert_eq!(e, [r#"clusters.local.tls.key: missing: cert = "c.pem" needs its key (mutual TLS takes both)"#]);
    let (e, _) = secured_errors(r#"tls = { key = "k.pem" }"#, &[]);
    assert_eq!(
        e,
        [
            r#"clusters.local.tls.cert: missing: key = "k.pem" needs its certificate (mutual TLS takes both)"#,
            "clusters.local.tls.ca: missing: the PEM file of the CA that signed the brokers' certificates"
        ]
    );
    // A key file holding a certificate instead of a key.
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = ddnn_testkit::Pki::generate(pki_dir.path()).unwrap();
    let ca = std::fs::read_to_string(&pki.ca).unwrap();
    let cert = std::fs::read_to_string(&pki.client_cert).unwrap();
    let (e, dir) = secured_errors(
        r#"tls = { ca = "ca.pem", cert = "c.pem", key = "k.pem" }"#,
        &[("ca.pem", &ca), ("c.pem", &cert), ("k.pem", &cert)],
    );
    assert_eq!(
        e,
        [format!(r#"clusters.local.tls.key: cannot read "{}/k.pem": no PEM private key in it"#, dir.display())]
    );
}

#[test]
fn secured_clusters_load_and_check_shows_no_secret() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = ddnn_testkit::Pki::generate(pki_dir.path()).unwrap();
    std::env::set_var("DDNN_TEST_CONFIG_PW", "s3cret-from-env");
    let (dir, path) = secured(
        r#"tls = { ca = "certs/ca.pem", cert = "certs/client.pem", key = "certs/client.key" }
sasl = { mechanism = "SCRAM-SHA-256", username = "alice", password_env = "DDNN_TEST_CONFIG_PW" }"#,
    );
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    for f in [&pki.ca, &pki.client_cert, &pki.client_key] {
        std::fs::copy(f, certs.join(f.file_name().unwrap())).unwrap();
    }
    let t = load(&path).unwrap();
    let c = t.cluster("local").unwrap();
    let certs = dir.path().join("certs");
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.ca, certs.join("ca.pem"));
    assert_eq!(tls.client.as_ref().unwrap().key, certs.join("client.key"));
    let s = t.summary();
    assert!(
        s.contains(&format!(
            "cluster local: 127.0.0.1:9092; mutual tls (CA {0}/ca.pem, client cert {0}/client.pem); sasl SCRAM-SHA-256 \
             as alice, password from env DDNN_TEST_CONFIG_PW",
            certs.display()
        )),
        "{s}"
    );
    assert!(!s.contains("s3cret") && !format!("{t:?}").contains("s3cret"), "the password leaked");

    // A password file; `ca` alone (server authentication only).
    let (dir, path) = secured(
        r#"tls = { ca = "ca.pem" }
sasl = { mechanism = "PLAIN", username = "bob", password_file = "pw" }"#,
    );
    std::fs::copy(&pki.ca, dir.path().join("ca.pem")).unwrap();
    std::fs::write(dir.path().join("pw"), "file-s3cret\n").unwrap();
    let t = load(&path).unwrap();
    let s = t.summary();
    let d = dir.path();
    assert!(
        s.contains(&format!(
            "cluster local: 127.0.0.1:9092; tls (CA {0}/ca.pem); sasl PLAIN as bob, password from file {0}/pw",
            d.display()
        )),
        "{s}"
    );
    assert!(!s.contains("s3cret") && !format!("{t:?}").contains("s3cret"), "the password leaked");
}

/// The fixtures copied next to a calibration table, with `adaptive = ..` on `tier_line`'s tier.
fn adaptive_topo(adaptive: &str, on: &str, calibration: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = topo(|t| {
        let t = ["edge", "fog", "cloud"].iter().fold(t, |t, m| t.replace(&model(m), &format!("models/{m}.onnx")));
        t.replacen(&format!("name = \"{on}\"\n"), &format!("name = \"{on}\"\nadaptive = {adaptive}\n"), 1)
    });
    std::fs::create_dir(dir.path().join("models")).unwrap();
    for m in ["edge", "fog", "cloud"] {
        std::fs::copy(model(m), dir.path().join(format!("models/{m}.onnx"))).unwrap();
    }
    if let Some(c) = calibration {
        std::fs::write(dir.path().join("models/calibration.json"), c).unwrap();
    }
    (dir, path)
}

const CALIBRATION: &str = r#"{"set":"fixtures","heldout":4,"tiers":{"edge":{"max-prob":[
  {"threshold":0.6,"exit_fraction":0.95,"accuracy":0.91,"exit_accuracy":0.9},
  {"threshold":0.7,"exit_fraction":0.9,"accuracy":0.96,"exit_accuracy":0.95},
  {"threshold":0.8,"exit_fraction":0.8,"accuracy":0.97,"exit_accuracy":0.99}]}}}"#;

fn load_errors(path: &Path) -> Vec<String> {
    let e = load(path).expect_err("should be invalid");
    let prefix = format!("{}: ", path.display());
    e.to_string().lines().map(|l| l.strip_prefix(&prefix).expect("file prefix").to_string()).collect()
}

#[test]
fn adaptive_exits_load_the_models_calibration_table() {
    let (dir, path) = adaptive_topo(r#"{ p99_target = "200ms", accuracy_floor = 0.95 }"#, "edge", Some(CALIBRATION));
    let t = load(&path).unwrap();
    let a = t.tiers[0].adaptive.as_ref().expect("adaptive");
    assert_eq!(a.p99_target, Duration::from_millis(200));
    assert_eq!(a.accuracy_floor, 0.95);
    assert_eq!(a.calibration.len(), 3);
    assert_eq!(a.calibration_file, dir.path().join("models/calibration.json").canonicalize().unwrap());
    assert!(t.tiers[1].adaptive.is_none());
    // The ladder the node will walk: from the base 0.8 down to 0.7; 0.6 is under the floor.
    let c = ddnn::scaling::exits::ExitController::new(t.tiers[0].exit, a.p99_target, a.accuracy_floor, &a.calibration);
    assert_eq!(c.steps(), [0.8, 0.7]);
}

#[test]
fn adaptive_exit_errors_name_the_field_and_what_is_wrong() {
    let (_d, path) = adaptive_topo(r#"{ p99_target = "200ms", accuracy_floor = 0.95 }"#, "edge", None);
    let e = load_errors(&path);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("tiers[0].adaptive: cannot read ")
            && e[0].contains("calibration.json")
            && e[0].contains("card.py"),
        "{e:?}"
    );
    let (_d, path) = adaptive_topo(r#"{ p99_target = "soon", accuracy_floor = 1.5 }"#, "edge", Some(CALIBRATION));
    let e = load_errors(&path);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("tiers[0].adaptive.p99_target: \"soon\" is not a duration"), "{e:?}");
    assert!(e[1].starts_with("tiers[0].adaptive.accuracy_floor: 1.5 is outside (0, 1]"), "{e:?}");
    let (_d, path) = adaptive_topo(r#"{ p99_target = "200ms", accuracy_floor = 0.9 }"#, "cloud", Some(CALIBRATION));
    let e = load_errors(&path);
    assert!(e.iter().any(|l| l.starts_with("tiers[2].adaptive: the last tier answers every input")), "{e:?}");
    let (_d, path) = adaptive_topo(r#"{ p99_target = "200ms", accuracy_floor = 0.9 }"#, "fog", Some(CALIBRATION));
    let e = load_errors(&path);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("no table for tier \"fog\" (it has: edge)"), "{e:?}");
    let (_d, path) = adaptive_topo(r#"{ p99_target = "200ms", floor = 0.9 }"#, "edge", Some(CALIBRATION));
    let e = load_errors(&path);
    assert!(e.iter().any(|l| l.contains("floor")), "{e:?}");
}
