#![allow(clippy::unwrap_used)]
//! What a tier writes and where it runs: `exit_format` ("json" | "kafka-ml"), the model name and
//! version in json exit records, and `device` ("cpu" | "cuda:N"). Config errors with their exact
//! messages; a Kafka-ML client, unchanged, against a continuum writing Kafka-ML's format on a
//! real broker; json exits naming each tier's model.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::node::{ort_dylib, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::config::{load, Device, ExitFormat, ModelId};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.onnx")).display().to_string()
}

/// A valid three-tier topology of the fixture models; `edge_extra` is added to the edge tier.
fn topo(edge_extra: &str) -> (tempfile::TempDir, PathBuf) {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let text = format!(
        r#"
[clusters.local]
brokers = ["127.0.0.1:9092"]

[[tiers]]
name = "edge"
model = "{edge}"
input = {{ cluster = "local", topic = "in", format = "raw-u8" }}
exits = {{ cluster = "local", topic = "exits" }}
next = "fog"
threshold = 0.8
{edge_extra}

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
        edge = fixture("edge"),
        fog = fixture("fog"),
        cloud = fixture("cloud"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The error lines for `edge_extra`, without the `FILE: ` prefix.
fn errors(edge_extra: &str) -> Vec<String> {
    let (_dir, path) = topo(edge_extra);
    let e = load(&path).expect_err("should be invalid");
    let prefix = format!("{}: ", path.display());
    e.to_string().lines().map(|l| l.strip_prefix(&prefix).expect("file prefix").to_string()).collect()
}

fn id(name: &str, version: Option<&str>) -> ModelId {
    ModelId { name: name.to_string(), version: version.map(str::to_string) }
}

#[test]
fn defaults_are_json_on_the_cpu_named_by_the_model_file() {
    let (_dir, path) = topo("");
    let t = load(&path).unwrap();
    for tier in &t.tiers {
        assert_eq!((tier.exit_format, tier.device), (ExitFormat::Json, Device::Cpu), "{}", tier.name);
    }
    // The fixtures set no metadata: the graph's name (the file's name when written) and no version.
    let ids: Vec<&ModelId> = t.tiers.iter().map(|t| &t.model_id).collect();
    assert_eq!(ids, [&id("edge.onnx", None), &id("fog.onnx", None), &id("cloud.onnx", None)]);
    let s = t.summary();
    assert!(s.contains("    runs   edge.onnx on cpu, exit records as json\n"), "{s}");
}

#[test]
fn exit_format_device_and_model_name_are_read() {
    let (_dir, path) =
        topo("exit_format = \"kafka-ml\"\ndevice = \"cpu\"\nmodel_name = \"mnist-edge\"\nmodel_version = \"2.1\"");
    let t = load(&path).unwrap();
    assert_eq!(t.tiers[0].exit_format, ExitFormat::KafkaMl);
    assert_eq!(t.tiers[0].model_id, id("mnist-edge", Some("2.1")));
    assert_eq!(t.tiers[1].exit_format, ExitFormat::Json, "set per tier");
    assert!(t.summary().contains("    runs   mnist-edge version 2.1 on cpu, exit records as kafka-ml\n"));
    // A bare number is a version too.
    let (_dir, path) = topo("model_version = 3");
    assert_eq!(load(&path).unwrap().tiers[0].model_id, id("edge.onnx", Some("3")));
}

#[test]
fn the_onnx_files_metadata_names_the_model_unless_the_topology_does() {
    // edge_meta.onnx: metadata_props name = "digits-edge", model_version = 7
    // (tests/fixtures/make_meta_fixture.py).
    let meta = fixture("edge_meta");
    let (_dir, path) = topo("");
    let text = std::fs::read_to_string(&path).unwrap().replacen(&fixture("edge"), &meta, 1);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(load(&path).unwrap().tiers[0].model_id, id("digits-edge", Some("7")));
    let text = text.replacen("threshold = 0.8\n", "threshold = 0.8\nmodel_name = \"mine\"\n", 1);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(load(&path).unwrap().tiers[0].model_id, id("mine", Some("7")));
}

#[test]
fn bad_values_name_file_field_and_value() {
    assert_eq!(
        errors("exit_format = \"xml\""),
        ["tiers[0].exit_format: unknown format \"xml\" (known: json, kafka-ml)"]
    );
    assert_eq!(
        errors("exit_format = \"Kafka-ML\""),
        ["tiers[0].exit_format: unknown format \"Kafka-ML\" (known: json, kafka-ml)"]
    );
    for bad in ["cuda", "cuda:x", "gpu", "cuda:", "cuda:-1", "cuda:+0", "CPU", "cuda:0 ", "cuda:99999999999"] {
        assert_eq!(
            errors(&format!("device = \"{bad}\"")),
            [format!("tiers[0].device: unknown device {bad:?} (known: cpu, cuda:N with N the GPU's index)")],
            "{bad:?}"
        );
    }
    assert_eq!(
        errors("model_name = \" \"\nmodel_version = \"\""),
        [
            "tiers[0].model_name: must not be empty (leave it out to take it from the model file)",
            "tiers[0].model_version: must not be empty (leave it out to take it from the model file)",
        ]
    );
}

/// What this machine's ONNX Runtime (the CPU build from PyPI, no CUDA provider library) says
/// when a tier asks for a GPU, after our prefix naming the tier and the device.
fn no_cuda_line(tier_index: usize, tier: &str, device: &str) -> String {
    format!(
        "tiers[{tier_index}].device: tier \"{tier}\": cannot run on {device}: {ORT_NO_CUDA} (a GPU needs the \
         onnxruntime-gpu build of libonnxruntime.so.1.31.1 with its CUDA provider library next to it, and \
         CUDA/cuDNN; device = \"cpu\" runs without)"
    )
}

/// ONNX Runtime 1.31.1 (CPU wheel)'s own words.
const ORT_NO_CUDA: &str = "CUDA execution provider is not enabled in this build.";

#[test]
fn a_gpu_tier_without_cuda_fails_validation_naming_tier_and_device() {
    assert_eq!(errors("device = \"cuda:0\""), [no_cuda_line(0, "edge", "cuda:0")]);
    // Every such tier is reported, each with its own device.
    let (_dir, path) = topo("device = \"cuda:1\"");
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "topic = \"cloud.in\", format = \"envelope\" }\n",
        "topic = \"cloud.in\", format = \"envelope\" }\ndevice = \"cuda:0\"\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let e = load(&path).unwrap_err().to_string();
    let prefix = format!("{}: ", path.display());
    let lines: Vec<&str> = e.lines().map(|l| l.strip_prefix(&prefix).unwrap()).collect();
    assert_eq!(lines, [no_cuda_line(0, "edge", "cuda:1"), no_cuda_line(2, "cloud", "cuda:0")]);
}

#[test]
fn check_and_node_refuse_a_gpu_tier_at_startup() {
    let (dir, path) = topo("device = \"cuda:0\"");
    let line = format!("{}: {}", path.display(), no_cuda_line(0, "edge", "cuda:0"));
    let check = Command::new(env!("CARGO_BIN_EXE_ddnn"))
        .arg("check")
        .arg("--topology")
        .arg(&path)
        .env("ORT_DYLIB_PATH", ort_dylib())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&check.stderr), format!("{line}\n"));
    let node = Command::new(env!("CARGO_BIN_EXE_ddnn"))
        .args(["node", "--tier", "edge", "--topology"])
        .arg(&path)
        .env("ORT_DYLIB_PATH", ort_dylib())
        .output()
        .unwrap();
    assert_eq!(node.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&node.stderr);
    assert!(stderr.ends_with(&format!("error: invalid topology:\n{line}\n")), "{stderr}");
    drop(dir);
}

#[test]
fn changing_format_device_or_model_name_restarts_the_tier() {
    let (_dir, path) = topo("");
    let old = load(&path).unwrap();
    let mut new = old.clone();
    let t = &mut new.tiers[0];
    t.exit_format = ExitFormat::KafkaMl;
    t.device = Device::Cuda(0);
    t.model_id = id("mnist-edge", Some("2"));
    let d = ddnn::supervisor::reload::diff(&old, &old.tiers[0], &new, &new.tiers[0]);
    assert!(d.live.is_empty(), "{d:?}");
    assert_eq!(d.structural, [
        "exit_format: Json -> KafkaMl",
        "device: Cpu -> Cuda(0)",
        "model_id: ModelId { name: \"edge.onnx\", version: None } -> ModelId { name: \"mnist-edge\", version: Some(\"2\") }",
    ]);
}

fn python() -> String {
    std::env::var("DDNN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The cascade run here, one digit at a time, with the same ONNX files and exit rule: per
/// digit, the exit tier's name and its probabilities.
fn reference(d: &ddnn::client::Digits, count: usize, exit: ddnn::config::Exit) -> Vec<(&'static str, Vec<f32>)> {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let dir = repo_root().join("models/mnist");
    let names = ["edge", "fog", "cloud"];
    let mut models: Vec<ddnn::onnx::model::Model> =
        names.iter().map(|t| ddnn::onnx::model::Model::load(&dir.join(format!("{t}.onnx"))).unwrap()).collect();
    (0..count)
        .map(|i| {
            let mut x: Vec<f32> = d.pixels[i].iter().map(|&p| f32::from(p)).collect();
            for (t, m) in models.iter_mut().enumerate() {
                let out = m.run(&x, 1).unwrap();
                let last = t == names.len() - 1;
                if ddnn::inference::exit_rule::decide(exit, &out.probs, last) {
                    return (names[t], out.probs);
                }
                x = out.features.unwrap();
            }
            unreachable!("the last tier always exits")
        })
        .collect()
}

/// Every tier writes Kafka-ML's format to one output topic; Kafka-ML's client sends raw MNIST
/// bytes without key and reads the values as Kafka-ML's backend does (tests/interop/
/// kafka_ml_client.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_ml_client_reads_a_kafka_ml_format_continuum_unchanged() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.prefix = "kml".into();
    spec.format = "raw-u8";
    let exits = "exits = { cluster = \"local\", topic = \"kml.exits\" }\n";
    let toml = spec.toml().replace(exits, &format!("{exits}exit_format = \"kafka-ml\"\n"));
    assert_eq!(toml.matches("exit_format = \"kafka-ml\"").count(), 3, "{toml}");
    let topo = dir.path().join("kml.toml");
    std::fs::write(&topo, toml).unwrap();
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");

    let count = 40;
    let heldout = repo_root().join("models/heldout.bin");
    let out = Command::new(python())
        .arg(repo_root().join("nodes/node/tests/interop/kafka_ml_client.py"))
        .args([broker.addr.as_str(), "kml.edge.input", "kml.exits"])
        .arg(&heldout)
        .arg(count.to_string())
        .output()
        .expect("run python (set DDNN_PYTHON to an interpreter with confluent-kafka; scripts/setup.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), count, "one output per image; node log:\n{}", node.log_text());

    // Outputs carry no key (as with Kafka-ML): each is matched to the digit whose reference
    // output is nearest.
    let d = ddnn::client::Digits::load(&heldout).unwrap();
    let mut unmatched: Vec<(usize, (&str, Vec<f32>))> =
        reference(&d, count, spec.exit()).into_iter().enumerate().collect();
    let mut tiers: BTreeMap<&str, usize> = BTreeMap::new();
    let mut correct = 0;
    for l in &lines {
        assert_eq!((&l["key"], &l["headers"]), (&serde_json::Value::Null, &serde_json::Value::Null), "{l}");
        assert_eq!(l["reencoded"], true, "byte for byte what a Kafka-ML pod writes: {l}");
        let values: Vec<f32> = l["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let diff = |r: &[f32]| r.iter().zip(&values).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let nearest =
            (0..unmatched.len()).min_by(|&a, &b| diff(&unmatched[a].1 .1).total_cmp(&diff(&unmatched[b].1 .1)));
        let (digit, (tier, probs)) = unmatched.swap_remove(nearest.unwrap());
        assert_eq!(values.len(), probs.len(), "{l}");
        assert!(diff(&probs) < 1e-5, "the reference cascade's output for digit {digit} ({tier}): {probs:?}; {l}");
        *tiers.entry(tier).or_default() += 1;
        correct += usize::from(l["label"].as_u64() == Some(u64::from(d.labels[digit])));
    }
    // Early exits happened (the edge answers most digits at 0.8) and the labels are the models'.
    assert!(tiers.get("edge").copied().unwrap_or(0) > count / 2, "{tiers:?}");
    assert!(tiers.len() > 1, "some digits went on: {tiers:?}");
    assert!(correct >= count * 9 / 10, "{correct}/{count} right");

    // ddnn's own reader of exits (`ddnn demo`, the bench) wants json exit records.
    let c = ddnn::client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let parts = ddnn::client::partitions(&c, "kml.exits").await.unwrap();
    let keys: HashSet<String> = HashSet::from(["any".to_string()]);
    let e = ddnn::client::collect_exits(&parts, &[0], &keys, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.to_string(), "exit record at 0:0 is not valid JSON");
}

/// json exit records name the exit tier's model: the topology's `model_name`/`model_version`,
/// else the ONNX file's (models/mnist: graph name = file name, no version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_exits_name_each_tiers_model() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.prefix = "mid".into();
    spec.extra_edge = "model_name = \"mnist-edge\"\nmodel_version = \"2\"".into();
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");

    let d = ddnn::client::Digits::load(&repo_root().join("models/heldout.bin")).unwrap();
    let c = ddnn::client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let parts = ddnn::client::partitions(&c, "mid.edge.input").await.unwrap();
    let mut keys = HashSet::new();
    let records: Vec<_> = (0..60)
        .map(|i| {
            let key = format!("mid-{i}");
            keys.insert(key.clone());
            ddnn::client::paper_record(&key, ddnn::wire::encode_paper_json(&d.pixels[i]))
        })
        .collect();
    parts[0].produce(records, Default::default()).await.unwrap();
    let exits = ddnn::client::partitions(&c, "mid.exits").await.unwrap();
    let from = vec![0; exits.len()];
    let seen = ddnn::client::collect_exits(&exits, &from, &keys, Duration::from_secs(60)).await.unwrap();
    assert_eq!(seen.len(), keys.len(), "log:\n{}", node.log_text());
    let mut named: BTreeMap<(String, String, Option<String>), usize> = BTreeMap::new();
    for s in &seen {
        *named.entry((s.exit.exit_tier.clone(), s.exit.model.clone(), s.exit.model_version.clone())).or_default() += 1;
    }
    let expected = |tier: &str| match tier {
        "edge" => ("mnist-edge".to_string(), Some("2".to_string())),
        other => (format!("{other}.onnx"), None),
    };
    for (tier, model, version) in named.keys() {
        assert_eq!((model.clone(), version.clone()), expected(tier), "{named:?}");
    }
    // Both kinds were seen: an overridden edge and a tier named by its file.
    assert!(named.keys().any(|k| k.0 == "edge") && named.keys().any(|k| k.0 != "edge"), "{named:?}");
}
