#![allow(clippy::unwrap_used)]
//! `ddnn inspect MODEL.onnx`: the contract as the node sees it, every violation with a hint, and
//! the exit status; on our six models and on small broken ones (tests/fixtures/bad/make_bad.py).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".ddnn/ort/libonnxruntime.so.1.31.1"))
}

/// Runs `ddnn inspect PATH` (PATH relative to the repository root, where it runs): stdout,
/// stderr and whether it succeeded.
fn inspect(path: &str) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddnn"))
        .args(["inspect", path])
        .current_dir(root())
        .env("ORT_DYLIB_PATH", ort_dylib())
        .output()
        .unwrap();
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.success())
}

fn good(path: &str, expected: &str) {
    let (stdout, stderr, ok) = inspect(path);
    assert_eq!(stdout.trim_end(), format!("{path}\n{expected}"), "stderr: {stderr}");
    assert!(ok, "exit status 0 for a model within the contract");
}

fn bad(path: &str, expected: &str) {
    let (stdout, stderr, ok) = inspect(path);
    assert_eq!(stdout.trim_end(), format!("{path}\n{expected}"), "stderr: {stderr}");
    assert!(!ok, "exit status 1 on violations");
}

#[test]
fn dense_models_meet_the_contract() {
    good(
        "models/mnist/edge.onnx",
        r#"  input   pixels: f32 [N, 1, 28, 28] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  output  features: f32 [N, 32] (handed to the next tier)
  as a first tier, takes input.format: "tensor", "json", "image", "kafka-ml", "paper-json", "raw-u8", "envelope"
  can be followed by a tier whose model takes 32 values
contract ok: 10 classes"#,
    );
    good(
        "models/mnist/fog.onnx",
        r#"  input   x: f32 [N, 32] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  output  features: f32 [N, 16] (handed to the next tier)
  as a first tier, takes input.format: "tensor", "json", "kafka-ml", "envelope"
  can be followed by a tier whose model takes 16 values
contract ok: 10 classes"#,
    );
    good(
        "models/mnist/cloud.onnx",
        r#"  input   x: f32 [N, 16] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  as a first tier, takes input.format: "tensor", "json", "kafka-ml", "envelope"
  no `features` output: fine for a last tier (no `next`); a tier with `next` needs one
contract ok: 10 classes"#,
    );
}

#[test]
fn cnn_models_meet_the_contract() {
    good(
        "models/mnist-cnn/edge.onnx",
        r#"  input   pixels: f32 [N, 1, 28, 28] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  output  features: f32 [N, 64, 14, 14] (handed to the next tier)
  as a first tier, takes input.format: "tensor", "json", "image", "kafka-ml", "paper-json", "raw-u8", "envelope"
  can be followed by a tier whose model takes 12544 values
contract ok: 10 classes"#,
    );
    good(
        "models/mnist-cnn/fog.onnx",
        r#"  input   x: f32 [N, 64, 14, 14] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  output  features: f32 [N, 128, 7, 7] (handed to the next tier)
  as a first tier, takes input.format: "tensor", "json", "kafka-ml", "envelope"
  can be followed by a tier whose model takes 6272 values
contract ok: 10 classes"#,
    );
    good(
        "models/mnist-cnn/cloud.onnx",
        r#"  input   x: f32 [N, 128, 7, 7] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  as a first tier, takes input.format: "tensor", "json", "kafka-ml", "envelope"
  no `features` output: fine for a last tier (no `next`); a tier with `next` needs one
contract ok: 10 classes"#,
    );
}

#[test]
fn a_fixed_batch_dimension_is_reported_with_its_consequence() {
    good(
        "nodes/node/tests/fixtures/cloud_batch1.onnx",
        r#"  input   in_features: f32 [1, 16] (batch dimension fixed to 1: batch.max must be <= 1)
  output  probs: f32 [1, 10] (the softmax the exit rule reads)
  as a first tier, takes input.format: "tensor", "json", "kafka-ml", "envelope"
  no `features` output: fine for a last tier (no `next`); a tier with `next` needs one
contract ok: 10 classes"#,
    );
}

#[test]
fn each_violation_is_named_with_a_hint() {
    bad(
        "nodes/node/tests/fixtures/bad/no_probs.onnx",
        r#"  input   x: f32 [N, 16] (batch dimension dynamic)
  output  output: f32 [N, 10] (ignored by the node)
  output  features: f32 [N, 8] (handed to the next tier)
  violation: no output named `probs` (outputs: `output`, `features`)
    hint: name the softmax output `probs`
1 contract violation(s)"#,
    );
    bad(
        "nodes/node/tests/fixtures/bad/probs_3d.onnx",
        r#"  input   x: f32 [N, 16] (batch dimension dynamic)
  output  probs: f32 [N, 10, 1] (the softmax the exit rule reads)
  violation: output `probs` must be [N, classes], found f32 [N, 10, 1]
    hint: flatten to [N, classes] before the softmax (Flatten or Reshape)
1 contract violation(s)"#,
    );
    bad(
        "nodes/node/tests/fixtures/bad/two_inputs.onnx",
        r#"  input   a: f32 [N, 16] (batch dimension dynamic)
  input   b: f32 [N, 16] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  violation: expected exactly 1 input, found 2: `a`, `b`
    hint: export the tier with one input (the batch of samples); turn the others into constants (initializers)
1 contract violation(s)"#,
    );
    // A uint8 input was a violation before the node fed uint8; it is within the contract now.
    good(
        "nodes/node/tests/fixtures/bad/u8_input.onnx",
        r#"  input   pixels: u8 [N, 16] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  as a first tier, takes input.format: "tensor", "json", "kafka-ml", "envelope"
  no `features` output: fine for a last tier (no `next`); a tier with `next` needs one
contract ok: 10 classes"#,
    );
    bad(
        "nodes/node/tests/fixtures/bad/dynamic_width.onnx",
        r#"  input   x: f32 [N, W] (batch dimension dynamic)
  output  probs: f32 [N, 10] (the softmax the exit rule reads)
  violation: input `x` has a dynamic dimension after the batch: f32 [N, W]
    hint: fix every dimension but the first (export with a static shape, only the batch axis dynamic)
1 contract violation(s)"#,
    );
}

#[test]
fn every_violation_is_listed_not_just_the_first() {
    bad(
        "nodes/node/tests/fixtures/bad/int_input_no_probs.onnx",
        r#"  input   ids: i64 [N, 16] (batch dimension dynamic)
  output  softmax: f32 [N, 10] (ignored by the node)
  violation: input `ids` is i64; the node feeds f32, f16 or u8
    hint: declare the input float32, float16 or uint8 and cast inside the graph if the model needs another type
  violation: no output named `probs` (outputs: `softmax`)
    hint: name the softmax output `probs`
2 contract violation(s)"#,
    );
}

#[test]
fn a_file_that_is_not_a_model_is_an_error() {
    let (stdout, stderr, ok) = inspect("models/README.md");
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(stderr.starts_with("error: models/README.md: "), "{stderr}");
    let (stdout, stderr, ok) = inspect("models/nothing.onnx");
    assert!(!ok);
    assert_eq!(stdout, "");
    assert_eq!(stderr, "error: models/nothing.onnx: file not found\n");
}

/// A topology naming a broken model gets the same problems `inspect` lists, one line per tier.
#[test]
fn topology_validation_reports_the_same_violations() {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("nodes/node/tests/fixtures/bad/int_input_no_probs.onnx");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[clusters.local]
brokers = ["127.0.0.1:9092"]

[[tiers]]
name = "only"
model = "{}"
input = {{ cluster = "local", topic = "in", format = "envelope" }}
exits = {{ cluster = "local", topic = "exits" }}
threshold = 0.8

[dead_letter]
cluster = "local"
topic = "dlq"
"#,
            model.display()
        ),
    )
    .unwrap();
    let e = ddnn::config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: tiers[0].model: {:?}: input `ids` is i64; the node feeds f32, f16 or u8; no output named `probs` (outputs: \
             `softmax`)",
            path.display(),
            model.display().to_string()
        )
    );
}
