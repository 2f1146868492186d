#![allow(clippy::unwrap_used)]
//! Rolling upgrades: the recorded envelope of every version keeps decoding, and a record newer
//! than a tier reads is dead-lettered with both versions named while the tier keeps serving.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::node::{offline_cascade, ort_dylib, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};
use ddnn::wire::{decode_envelope, DType};
use rskafka::record::Record;

/// Held-out digit recorded in `envelope-v1.bin`: the first one the edge does not answer at
/// threshold 0.8 (so the edge really forwarded it to fog).
const V1_DIGIT: usize = 19;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("nodes/node/tests/fixtures/wire").join(name)
}

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

/// Re-records `fixtures/wire/envelope-v1.bin`: runs the continuum on a real broker, sends
/// held-out digit `V1_DIGIT` (paper-json) and keeps the bytes the edge tier wrote to fog's
/// input. Run it only when adding a fixture: `cargo test -p ddnn --test rolling -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "re-records a committed fixture"]
async fn record_envelope_v1_fixture() {
    let d = digits();
    let spec_exit = TopoSpec::new("unused").exit();
    let first_forwarded =
        offline_cascade("mnist", &d, 0..50, spec_exit).iter().position(|o| o.exit_tier > 0).expect("a forwarded digit");
    assert_eq!(first_forwarded, V1_DIGIT, "update V1_DIGIT");

    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let _node = NodeProc::start(&topo, "edge", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let input = client::partitions(&c, "t.edge.input").await.unwrap();
    let key = "5f0c7a0e-3b8e-4d51-9a8e-2f6f1c9e4b21";
    let mut record = client::paper_record(key, ddnn::wire::encode_paper_json(&d.pixels[V1_DIGIT]));
    record.headers.insert("x-client".into(), b"fixture-recorder".to_vec());
    input[0].produce(vec![record], Default::default()).await.unwrap();
    let fog = client::partitions(&c, "t.fog.input").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let bytes = 'found: loop {
        assert!(Instant::now() < deadline, "no forward to fog");
        for pc in &fog {
            if let Some(r) = ddnn::kafka::read_to_end(pc, 0).await.unwrap().into_iter().next() {
                break 'found r.record.value.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::fs::create_dir_all(fixture("")).unwrap();
    std::fs::write(fixture("envelope-v1.bin"), &bytes).unwrap();
}

/// The committed version-1 envelope decodes to what the edge model computes for its digit:
/// every later version of the node must still read it.
#[test]
fn the_recorded_v1_envelope_holds_the_edge_models_features() {
    let bytes = std::fs::read(fixture("envelope-v1.bin")).expect("fixture");
    assert_eq!(&bytes[..5], b"DDNE\x01");
    let env = decode_envelope(&bytes).expect("version 1 still decodes");
    assert_eq!(env.key.as_deref(), Some(&b"5f0c7a0e-3b8e-4d51-9a8e-2f6f1c9e4b21"[..]));
    assert_eq!(env.trace.len(), 1);
    assert_eq!(env.trace[0].tier, "edge");
    assert!(env.trace[0].confidence < 0.8, "the edge forwarded it: {}", env.trace[0].confidence);
    assert_eq!(env.tensor.dtype, DType::F32);

    std::env::set_var("ORT_DYLIB_PATH", ort_dylib());
    let mut edge = ddnn::onnx::model::Model::load(&repo_root().join("models/mnist/edge.onnx")).expect("edge model");
    let x: Vec<f32> = digits().pixels[V1_DIGIT].iter().map(|&p| f32::from(p)).collect();
    let want = edge.run(&x, 1).unwrap().features.expect("edge has features");
    let mut got = Vec::new();
    env.tensor.extend_f32(&mut got);
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "features differ from the edge model's by up to {worst}");
}

async fn dead_letters(addr: &str, topic: &str) -> Vec<(String, String, String)> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let mut out = Vec::new();
    for pc in client::partitions(&c, topic).await.unwrap() {
        for r in ddnn::kafka::read_to_end(&pc, 0).await.unwrap() {
            let h = |k: &str| {
                String::from_utf8_lossy(r.record.headers.get(k).map(Vec::as_slice).unwrap_or_default()).into_owned()
            };
            let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned();
            out.push((key, h("x-ddnn-error"), h("x-ddnn-source")));
        }
    }
    out
}

/// A fog tier of version N-1 meets an envelope of version N (here: the recorded v1 bytes with
/// their version byte raised past what this node reads): dead letter naming both versions, and
/// the tier answers the v1 record sent after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_envelope_is_dead_lettered_naming_both_versions_and_the_tier_keeps_serving() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let mut node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");

    let v1 = std::fs::read(fixture("envelope-v1.bin")).unwrap();
    let newer_version = ddnn::wire::ENVELOPE_VERSION + 1;
    let mut newer = v1.clone();
    newer[4] = newer_version;
    let record = |key: &str, value: Vec<u8>| Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let fog = client::partitions(&c, "t.fog.input").await.unwrap();
    // The Kafka key of the newer record; the v1 record's answer carries the envelope's key.
    fog[0]
        .produce(vec![record("from-newer-edge", newer), record("from-older-edge", v1)], Default::default())
        .await
        .unwrap();

    let v1_key = "5f0c7a0e-3b8e-4d51-9a8e-2f6f1c9e4b21".to_string();
    let exits = client::partitions(&c, "t.exits").await.unwrap();
    let expected: HashSet<String> = [v1_key.clone()].into();
    let seen = client::collect_exits(&exits, &vec![0; exits.len()], &expected, Duration::from_secs(60)).await.unwrap();
    assert!(seen.iter().any(|s| s.key == v1_key), "the v1 record behind it is answered; log:\n{}", node.log_text());

    let deadline = Instant::now() + Duration::from_secs(20);
    let dlq = loop {
        let d = dead_letters(&broker.addr, "t.dlq").await;
        if !d.is_empty() || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].0, "from-newer-edge");
    assert_eq!(
        dlq[0].1,
        format!(
            "Envelope input: envelope version {newer_version} is newer than this node reads (1..=1): upgrade this tier"
        )
    );
    assert_eq!(dlq[0].2, "tier=fog topic=t.fog.input partition=0 offset=0");
    assert!(node.child.try_wait().unwrap().is_none(), "the node is still running");
}
