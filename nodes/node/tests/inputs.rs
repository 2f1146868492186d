#![allow(clippy::unwrap_used)]
//! Inputs of any shape and type, end to end on a real broker with the real MNIST edge model:
//! each first-tier format (`tensor`, `json`, `image`, `kafka-ml`), models taking uint8 and
//! float16, and a dead letter with an exact reason for every kind of mismatch. Plus the
//! topology checks of the formats' settings against the model.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{free_port, ort_dylib, repo_root, NodeProc};
use common::Broker;
use ddnn::client::{self, Digits};
use ddnn::wire::ExitRecord;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb};
use rskafka::record::Record;

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn edge_model() -> PathBuf {
    repo_root().join("models/mnist/edge.onnx")
}

/// One tier (the last, so every record exits there) reading `prefix.in` with `input` settings.
fn topology(dir: &Path, brokers: &str, prefix: &str, model: &Path, input: &str, metrics_port: u16) -> PathBuf {
    let text = format!(
        r#"
[clusters.local]
brokers = ["{brokers}"]

[[tiers]]
name = "edge"
model = "{model}"
input = {{ cluster = "local", topic = "{prefix}.in", {input} }}
exits = {{ cluster = "local", topic = "{prefix}.exits" }}
threshold = 0.8
workers = 1
batch = {{ max = 16, max_delay = "1ms" }}

[dead_letter]
cluster = "local"
topic = "{prefix}.dlq"

[metrics]
listen = "127.0.0.1:{metrics_port}"
"#,
        model = model.display(),
    );
    let path = dir.join(format!("{prefix}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A running node of [`topology`].
struct Tier {
    prefix: String,
    node: NodeProc,
}

fn start(broker: &Broker, dir: &Path, prefix: &str, model: &Path, input: &str) -> Tier {
    let port = free_port();
    let topo = topology(dir, &broker.addr, prefix, model, input, port);
    let node = NodeProc::start(&topo, "all", port, &dir.join(format!("{prefix}.log"))).expect("node");
    Tier { prefix: prefix.to_string(), node }
}

fn record(key: &str, value: Vec<u8>) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

async fn send(addr: &str, topic: &str, records: Vec<Record>) {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, topic).await.unwrap();
    for chunk in records.chunks(50) {
        parts[0].produce(chunk.to_vec(), Default::default()).await.unwrap();
    }
}

/// The label of each exit, by key, once every key in `keys` has exited.
async fn labels(addr: &str, t: &Tier, keys: &[String]) -> HashMap<String, usize> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, &format!("{}.exits", t.prefix)).await.unwrap();
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, Duration::from_secs(120)).await.unwrap();
    let got: HashMap<String, usize> = seen.into_iter().map(|s| (s.key, s.exit.label as usize)).collect();
    let missing: Vec<&String> = expected.iter().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "every record exits; {} missing, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        t.node.log_text()
    );
    got
}

/// Waits for `n` dead letters; returns (key, x-ddnn-error) of each, sorted by key.
async fn dead_letters(addr: &str, t: &Tier, n: usize) -> Vec<(String, String)> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut out = Vec::new();
        for pc in client::partitions(&c, &format!("{}.dlq", t.prefix)).await.unwrap() {
            for r in ddnn::kafka::read_to_end(&pc, 0).await.unwrap() {
                let reason = r.record.headers.get("x-ddnn-error").map(|v| String::from_utf8_lossy(v).into_owned());
                let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned();
                out.push((key, reason.unwrap_or_default()));
            }
        }
        if out.len() >= n || Instant::now() > deadline {
            out.sort();
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The f32 edge model's label for each held-out digit in `range` (raw pixels 0..=255).
fn reference(d: &Digits, range: std::ops::Range<usize>) -> Vec<usize> {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let mut m = ddnn::inference::model::Model::load(&edge_model()).unwrap();
    range
        .map(|i| {
            let x: Vec<f32> = d.pixels[i].iter().map(|&p| f32::from(p)).collect();
            let probs = m.run(&x, 1).unwrap().probs;
            (0..probs.len()).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap()
        })
        .collect()
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            // `encode` with the color type: `encode_image` of a DynamicImage would write RGB.
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode(img.as_bytes(), img.width(), img.height(), img.color())
                .unwrap();
        }
        _ => img.write_to(&mut out, format).unwrap(),
    }
    out.into_inner()
}

fn gray(pixels: &[u8]) -> DynamicImage {
    DynamicImage::ImageLuma8(ImageBuffer::from_raw(28, 28, pixels.to_vec()).unwrap())
}

/// The digit as an RGB image of `side` x `side` (each pixel repeated side/28 times each way).
fn rgb(pixels: &[u8], side: u32) -> DynamicImage {
    let k = side / 28;
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(side, side, |x, y| {
        let v = pixels[((y / k) * 28 + x / k) as usize];
        Rgb([v, v, v])
    }))
}

fn same(got: &HashMap<String, usize>, key: impl Fn(usize) -> String, want: &[usize]) -> usize {
    want.iter().enumerate().filter(|&(i, &w)| got[&key(i)] == w).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_digits_predict_as_their_pixels_and_jpeg_nearly_so() {
    const N: usize = 300;
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let t = start(&broker, dir.path(), "img", &edge_model(), r#"format = "image""#);
    let d = digits();
    let mut records = Vec::new();
    for i in 0..N {
        records.push(record(&format!("png-{i}"), encode(gray(&d.pixels[i]), ImageFormat::Png)));
        records.push(record(&format!("jpeg-{i}"), encode(gray(&d.pixels[i]), ImageFormat::Jpeg)));
    }
    let mut truncated = encode(gray(&d.pixels[0]), ImageFormat::Png);
    truncated.truncate(60);
    records.push(record("bad-garbage", b"hello, not an image".to_vec()));
    records.push(record("bad-truncated", truncated));
    records.push(record("bad-rgb", encode(rgb(&d.pixels[0], 28), ImageFormat::Png)));
    let big = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(32, 30, Luma([0])));
    records.push(record("bad-size", encode(big, ImageFormat::Png)));
    send(&broker.addr, "img.in", records).await;

    let keys: Vec<String> = (0..N).flat_map(|i| [format!("png-{i}"), format!("jpeg-{i}")]).collect();
    let got = labels(&broker.addr, &t, &keys).await;
    let want = reference(&d, 0..N);
    assert_eq!(same(&got, |i| format!("png-{i}"), &want), N, "PNG: exactly the raw pixels' predictions");
    let jpeg = same(&got, |i| format!("jpeg-{i}"), &want);
    eprintln!("JPEG quality 90: {jpeg} of {N} predictions as the raw pixels'");
    assert!(jpeg * 100 >= N * 99, "JPEG quality 90: {jpeg} of {N} predictions as the raw pixels' (99 % needed)");

    assert_eq!(
        dead_letters(&broker.addr, &t, 4).await,
        [
            ("bad-garbage".into(), "Image input: undecodable image: not a PNG or JPEG (first bytes: 68 65 6c 6c)".into()),
            (
                "bad-rgb".into(),
                "Image input: image has 3 channels (Rgb8), the model takes 1; set preprocess.channels = 1 to convert".into()
            ),
            (
                "bad-size".into(),
                "Image input: image is 32x30 (width x height), the model takes 28x28; set preprocess.resize = [28, 28] \
                 to resize"
                    .into()
            ),
            ("bad-truncated".into(), "Image input: undecodable Png image: unexpected end of file".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_preprocess_converts_channels_resizes_and_normalizes() {
    const N: usize = 200;
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    // (v * 2 - 0) / 2 = v: normalization that must leave every pixel's value exactly as it was.
    let input = r#"format = "image", preprocess = { resize = [28, 28], channels = 1, scale = 2.0, mean = [0.0], std = [2.0], layout = "NCHW" }"#;
    let t = start(&broker, dir.path(), "pre", &edge_model(), input);
    let d = digits();
    let mut records = Vec::new();
    for i in 0..N {
        records.push(record(&format!("rgb-{i}"), encode(rgb(&d.pixels[i], 28), ImageFormat::Png)));
        records.push(record(&format!("big-{i}"), encode(rgb(&d.pixels[i], 56), ImageFormat::Png)));
    }
    send(&broker.addr, "pre.in", records).await;
    let keys: Vec<String> = (0..N).flat_map(|i| [format!("rgb-{i}"), format!("big-{i}")]).collect();
    let got = labels(&broker.addr, &t, &keys).await;
    let want = reference(&d, 0..N);
    assert_eq!(
        same(&got, |i| format!("rgb-{i}"), &want),
        N,
        "gray RGB -> luma and the identity normalization are exact"
    );
    let big = same(&got, |i| format!("big-{i}"), &want);
    eprintln!("56x56 RGB resized: {big} of {N} predictions as the raw pixels'");
    assert!(big * 100 >= N * 99, "56x56 resized to 28x28: {big} of {N} as the raw pixels' (99 % needed)");
    assert_eq!(dead_letters(&broker.addr, &t, 0).await, []);
}

fn f32_bytes(pixels: &[u8]) -> Vec<u8> {
    pixels.iter().flat_map(|&p| f32::from(p).to_le_bytes()).collect()
}

fn f16_bytes(pixels: &[u8]) -> Vec<u8> {
    pixels.iter().flat_map(|&p| half::f16::from(p).to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_records_feed_float32_uint8_and_float16_models() {
    const N: usize = 100;
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let d = digits();
    let want = reference(&d, 0..N);
    // (prefix, model, input settings, encoding of a digit, expected bytes).
    type Encode = fn(&[u8]) -> Vec<u8>;
    let cases: [(&str, PathBuf, &str, Encode, &str); 4] = [
        ("f32", edge_model(), r#"format = "tensor""#, f32_bytes, "784 float32 values for shape [1, 28, 28]"),
        (
            "u8",
            fixture("edge_u8.onnx"),
            r#"format = "tensor""#,
            <[u8]>::to_vec,
            "784 uint8 values for shape [1, 28, 28]",
        ),
        (
            "f16",
            fixture("edge_f16.onnx"),
            r#"format = "tensor""#,
            f16_bytes,
            "784 float16 values for shape [1, 28, 28]",
        ),
        // uint8 values declared in the topology, widened for the float16 model.
        (
            "u8f16",
            fixture("edge_f16.onnx"),
            r#"format = "tensor", dtype = "uint8""#,
            <[u8]>::to_vec,
            "784 uint8 values for shape [1, 28, 28]",
        ),
    ];
    let tiers: Vec<Tier> =
        cases.iter().map(|(p, model, input, ..)| start(&broker, dir.path(), p, model, input)).collect();
    for ((prefix, _, _, enc, _), t) in cases.iter().zip(&tiers) {
        let mut records: Vec<Record> = (0..N).map(|i| record(&format!("{prefix}-{i}"), enc(&d.pixels[i]))).collect();
        let mut short = enc(&d.pixels[0]);
        short.pop();
        records.push(record("bad-short", short));
        send(&broker.addr, &format!("{}.in", t.prefix), records).await;
    }
    for ((prefix, _, _, enc, expected), t) in cases.iter().zip(&tiers) {
        let keys: Vec<String> = (0..N).map(|i| format!("{prefix}-{i}")).collect();
        let got = labels(&broker.addr, t, &keys).await;
        assert_eq!(
            same(&got, |i| format!("{prefix}-{i}"), &want),
            N,
            "{prefix}: exactly the float32 model's predictions"
        );
        let full = enc(&d.pixels[0]).len();
        assert_eq!(
            dead_letters(&broker.addr, t, 1).await,
            [("bad-short".to_string(), format!("Tensor input: expected {full} bytes ({expected}), got {}", full - 1))]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_of_the_models_shape_and_type() {
    const N: usize = 100;
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let d = digits();
    let want = reference(&d, 0..N);
    // Pixels as JSON floats (12.0) for the float16 model; as integers for the uint8 model.
    let nested = |pixels: &[u8], float: bool| {
        let rows: Vec<Vec<serde_json::Value>> = pixels
            .chunks(28)
            .map(|r| {
                r.iter().map(|&p| if float { serde_json::json!(f64::from(p)) } else { serde_json::json!(p) }).collect()
            })
            .collect();
        serde_json::to_vec(&[rows]).unwrap()
    };
    let f16 = start(&broker, dir.path(), "jf16", &fixture("edge_f16.onnx"), r#"format = "json""#);
    let u8 = start(&broker, dir.path(), "ju8", &fixture("edge_u8.onnx"), r#"format = "json""#);
    for (t, float) in [(&f16, true), (&u8, false)] {
        let mut records: Vec<Record> =
            (0..N).map(|i| record(&format!("{}-{i}", t.prefix), nested(&d.pixels[i], float))).collect();
        let flat: Vec<Vec<u8>> = d.pixels[0].chunks(28).map(<[u8]>::to_vec).collect();
        records.push(record("bad-shape", serde_json::to_vec(&flat).unwrap()));
        records
            .push(record("bad-value", nested(&[vec![1u8; 783], vec![0]].concat(), true).replace_first(b"1.0", b"1e6")));
        send(&broker.addr, &format!("{}.in", t.prefix), records).await;
    }
    for t in [&f16, &u8] {
        let keys: Vec<String> = (0..N).map(|i| format!("{}-{i}", t.prefix)).collect();
        let got = labels(&broker.addr, t, &keys).await;
        assert_eq!(
            same(&got, |i| format!("{}-{i}", t.prefix), &want),
            N,
            "{}: the float32 model's predictions",
            t.prefix
        );
    }
    let shape = "Json input: wrong shape: expected nested list [1, 28, 28], found [28, 28]";
    assert_eq!(
        dead_letters(&broker.addr, &f16, 2).await,
        [
            ("bad-shape".to_string(), shape.to_string()),
            (
                "bad-value".into(),
                "Json input: value at element 0 is 1000000.0, expected a number within float16 (±65504)".into()
            ),
        ]
    );
    assert_eq!(
        dead_letters(&broker.addr, &u8, 2).await,
        [
            ("bad-shape".to_string(), shape.to_string()),
            ("bad-value".into(), "Json input: value at element 0 is 1000000.0, expected an integer 0..=255".into()),
        ]
    );
}

trait ReplaceFirst {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceFirst for Vec<u8> {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self.windows(from.len()).position(|w| w == from).unwrap();
        [&self[..at], to, &self[at + from.len()..]].concat()
    }
}

/// Runs tests/interop/kafka_ml_produce.py: `count` digits as Kafka-ML's client sends them, then
/// one record a byte short.
fn produce_kafka_ml(broker: &str, topic: &str, data_type: &str, count: usize) {
    let python = std::env::var("DDNN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python)
        .arg(repo_root().join("nodes/node/tests/interop/kafka_ml_produce.py"))
        .args([broker, topic])
        .arg(repo_root().join("models/heldout.bin"))
        .args([data_type, &count.to_string()])
        .output()
        .expect("run python (set DDNN_PYTHON to an interpreter with confluent-kafka and numpy; scripts/setup.sh does)");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Exit labels of keyless records, by input offset (the first trace stamp's), once `n` exited.
async fn labels_by_offset(addr: &str, t: &Tier, n: usize) -> HashMap<i64, usize> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, &format!("{}.exits", t.prefix)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = HashMap::new();
    while got.len() < n && Instant::now() < deadline {
        got.clear();
        for pc in &parts {
            for r in ddnn::kafka::read_to_end(pc, 0).await.unwrap() {
                let exit = ExitRecord::from_json(r.record.value.as_deref().unwrap_or_default()).unwrap();
                got.insert(exit.trace[0].offset, exit.label as usize);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got.len(), n, "every record exits; log:\n{}", t.node.log_text());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ml_raw_records_as_kafka_mls_client_sends_them() {
    const N: usize = 100;
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let d = digits();
    let want = reference(&d, 0..N);
    for (data_type, size) in [("uint8", 1), ("float32", 4)] {
        let input = format!(r#"format = "kafka-ml", data_type = "{data_type}", data_reshape = "28 28""#);
        let t = start(&broker, dir.path(), &format!("kml-{data_type}"), &edge_model(), &input);
        produce_kafka_ml(&broker.addr, &format!("{}.in", t.prefix), data_type, N);
        let got = labels_by_offset(&broker.addr, &t, N).await;
        let matching = (0..N).filter(|&i| got[&(i as i64)] == want[i]).count();
        assert_eq!(matching, N, "{data_type}: exactly the raw pixels' predictions");
        assert_eq!(
            dead_letters(&broker.addr, &t, 1).await,
            [(
                String::new(),
                format!(
                    "KafkaMl input: expected {} bytes (784 {data_type} values for data_reshape \"28 28\"), got {}",
                    784 * size,
                    784 * size - 1
                )
            )]
        );
    }
}

// Topology checks of the input settings (no broker).

fn check(model: &Path, input: &str) -> Vec<String> {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let dir = tempfile::tempdir().unwrap();
    let path = topology(dir.path(), "127.0.0.1:9092", "c", model, input, 9464);
    match ddnn::config::load(&path) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let prefix = format!("{}: ", path.display());
            e.0.iter().map(|e| e.to_string().trim_start_matches(&prefix).to_string()).collect()
        }
    }
}

#[test]
fn valid_input_settings_load() {
    for input in [
        r#"format = "tensor""#,
        r#"format = "tensor", dtype = "uint8""#,
        r#"format = "json", dtype = "float16""#,
        r#"format = "image""#,
        r#"format = "image", preprocess = { resize = [28, 28], channels = 1, scale = 0.5, mean = [0.1], std = [0.3] }"#,
        r#"format = "kafka-ml", data_type = "uint8""#,
        r#"format = "kafka-ml", data_type = "half", data_reshape = "784""#,
        r#"format = "paper-json""#,
    ] {
        assert_eq!(check(&edge_model(), input), Vec::<String>::new(), "{input}");
    }
    assert_eq!(check(&fixture("edge_u8.onnx"), r#"format = "kafka-ml", data_type = "bool""#), Vec::<String>::new());
    // Without data_reshape, Kafka-ML's records have the model's shape.
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let dir = tempfile::tempdir().unwrap();
    let path =
        topology(dir.path(), "127.0.0.1:9092", "c", &edge_model(), r#"format = "kafka-ml", data_type = "uint8""#, 1);
    let t = ddnn::config::load(&path).unwrap();
    assert_eq!(t.tiers[0].input.settings.kafka_ml.as_ref().unwrap().data_reshape, [1, 28, 28]);
    assert_eq!(t.tiers[0].model_info.input_dtype, ddnn::wire::DType::F32);
}

#[test]
fn input_settings_are_checked_against_the_format_and_the_model() {
    let e = |model: &Path, input: &str| check(model, input);
    let u8_model = fixture("edge_u8.onnx");
    assert_eq!(
        e(&edge_model(), r#"format = "protobuf""#),
        ["tiers[0].input.format: unknown format \"protobuf\" (known: tensor, json, image, kafka-ml, paper-json, raw-u8, envelope)"]
    );
    assert_eq!(
        e(&edge_model(), r#"format = "tensor", dtype = "int4", preprocess = { channels = 1 }, data_type = "uint8""#),
        [
            "tiers[0].input.preprocess: only format \"image\" takes it (format is \"tensor\")",
            "tiers[0].input.data_type: only format \"kafka-ml\" takes it (format is \"tensor\")",
            "tiers[0].input.dtype: unknown dtype \"int4\" (known: uint8, float32, float16)",
        ]
    );
    assert_eq!(
        e(&u8_model, r#"format = "json", dtype = "float32""#),
        ["tiers[0].input.dtype: \"float32\" values cannot feed the model's uint8 input (a cast would wrap or truncate); send uint8"]
    );
    assert_eq!(
        e(
            &edge_model(),
            r#"format = "image", preprocess = { resize = [32], channels = 2, scale = 0.0, std = [1.0, 0.0], layout = "CHW" }"#
        ),
        [
            "tiers[0].input.preprocess.resize: [32] is not [height, width] of positive sizes",
            "tiers[0].input.preprocess.channels: 2 is neither 1 (grayscale) nor 3 (RGB)",
            "tiers[0].input.preprocess.scale: 0 must be a finite number other than 0",
            "tiers[0].input.preprocess.std: [1.0, 0.0] must be 1 or one per channel non-zero finite numbers",
            "tiers[0].input.preprocess.layout: unknown layout \"CHW\" (known: NCHW, NHWC)",
        ]
    );
    assert_eq!(
        e(&edge_model(), r#"format = "image", preprocess = { resize = [32, 32], channels = 3, mean = [0.5, 0.5] }"#),
        [
            "tiers[0].input.preprocess.channels: 3, but the model takes 1 channel(s) ([1, 28, 28], layout NCHW)",
            "tiers[0].input.preprocess.resize: [32, 32], but the model takes 28x28 (H x W): resize = [28, 28]",
            "tiers[0].input.preprocess.mean: 2 values, but the model takes 1 channel(s): give 1 or 1",
        ]
    );
    assert_eq!(
        e(&edge_model(), r#"format = "image", preprocess = { layout = "NHWC" }"#),
        ["tiers[0].input.format: \"image\" needs a model input of [C, H, W] (layout NCHW) or [H, W, C] (NHWC) with C = 1 or 3, or [H, W]; the model takes [1, 28, 28] (layout NHWC)"]
    );
    assert_eq!(
        e(&u8_model, r#"format = "image", preprocess = { scale = 0.5 }"#),
        ["tiers[0].input.preprocess: scale/mean/std make float values, but the model takes uint8; leave them out to feed the pixels as they are"]
    );
    assert_eq!(e(&edge_model(), r#"format = "kafka-ml""#), ["tiers[0].input: missing field `data_type` (Kafka-ML's data_type of the records, e.g. \"uint8\" or \"float32\")"]);
    assert_eq!(
        e(&edge_model(), r#"format = "kafka-ml", data_type = "string", data_reshape = "28x28""#),
        [
            "tiers[0].input.data_type: unknown data_type \"string\" (known: half, float16, float32, float, double, float64, int8, int16, int32, int64, uint8, uint16, bool, bool_, float_)",
            "tiers[0].input.data_reshape: \"28x28\" is not a list of positive integers separated by spaces, e.g. \"28 28\"",
        ]
    );
    assert_eq!(
        e(&u8_model, r#"format = "kafka-ml", data_type = "float32", data_reshape = "28 28 3""#),
        [
            "tiers[0].input.data_reshape: \"28 28 3\" holds 2352 values, but the model takes [1, 28, 28] (784 values)",
            "tiers[0].input.data_type: \"float32\" values cannot feed the model's uint8 input (a cast would wrap or truncate); send uint8",
        ]
    );
}

#[test]
fn a_uint8_model_cannot_follow_a_tier() {
    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let dir = tempfile::tempdir().unwrap();
    let path = topology(dir.path(), "127.0.0.1:9092", "c", &edge_model(), r#"format = "tensor""#, 1);
    let text = std::fs::read_to_string(&path).unwrap().replace("threshold = 0.8\n", "threshold = 0.8\nnext = \"u8\"\n")
        + &format!(
            "\n[[tiers]]\nname = \"u8\"\nmodel = \"{}\"\ninput = {{ cluster = \"local\", topic = \"u8.in\", format = \
             \"envelope\" }}\nexits = {{ cluster = \"local\", topic = \"c.exits\" }}\nthreshold = 0.8\n",
            fixture("edge_u8.onnx").display()
        );
    std::fs::write(&path, text).unwrap();
    let prefix = format!("{}: ", path.display());
    let errors: Vec<String> = ddnn::config::load(&path)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string().trim_start_matches(&prefix).to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "tiers[0].model: features width 32 does not match input width 784 of tiers[1] (\"u8\")",
            "tiers[1].model: takes uint8 input, but tier \"edge\" forwards float32 features to it; declare the input \
             float32 or float16",
        ]
    );
}
