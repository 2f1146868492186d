#![allow(clippy::unwrap_used)]
//! No record stalls a partition: poison records of every kind among valid ones, and compressed
//! batches from a real Kafka client (librdkafka through confluent-kafka), on a real broker.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::node::{repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client;

fn python() -> String {
    std::env::var("DDNN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs tests/interop/produce.py; returns (key, kind) per record sent.
fn produce(broker: &str, topic: &str, partition: i32, args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new(python())
        .arg(repo_root().join("nodes/node/tests/interop/produce.py"))
        .args([broker, topic, &partition.to_string()])
        .arg(repo_root().join("models/heldout.bin"))
        .args(args)
        .output()
        .expect("run python (set DDNN_PYTHON to an interpreter with confluent-kafka; scripts/setup.sh does)");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_string(), v["kind"].as_str().unwrap().to_string())
        })
        .collect()
}

async fn answered(addr: &str, keys: &[String], timeout: Duration) -> HashSet<String> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, "t.exits").await.unwrap();
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, timeout).await.unwrap();
    seen.into_iter().map(|s| s.key).filter(|k| expected.contains(k)).collect()
}

/// Every record of the dead-letter topic: (key, value, x-ddnn-error, x-ddnn-source).
async fn dead_letters(addr: &str) -> Vec<(String, Vec<u8>, String, String)> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let mut out = Vec::new();
    for pc in client::partitions(&c, "t.dlq").await.unwrap() {
        for r in ddnn::kafka::read_to_end(&pc, 0).await.unwrap() {
            let h = |k: &str| {
                String::from_utf8_lossy(r.record.headers.get(k).map(Vec::as_slice).unwrap_or_default()).into_owned()
            };
            let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned();
            out.push((key, r.record.value.clone().unwrap_or_default(), h("x-ddnn-error"), h("x-ddnn-source")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_partition_moves_on() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");

    let sent = produce(&broker.addr, "t.edge.input", 0, &["poison"]);
    let mut good: Vec<String> = sent.iter().filter(|(_, k)| k == "digit").map(|(key, _)| key.clone()).collect();
    good.extend(produce(&broker.addr, "t.edge.input", 1, &["gzip", "5"]).into_iter().map(|(k, _)| k));
    assert_eq!(good.len(), 10);

    let got = answered(&broker.addr, &good, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 10, "every valid key behind the poison is answered; log:\n{}", node.log_text());

    let garbage = sent.iter().find(|(_, k)| k == "garbage").unwrap().0.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dlq = loop {
        let d = dead_letters(&broker.addr).await;
        if d.len() >= 2 || std::time::Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dlq.len(), 2, "one dead letter per poison record: {dlq:?}");
    let g = dlq.iter().find(|d| d.0 == garbage).expect("the garbage record is dead-lettered under its key");
    assert_eq!(g.1, b"\x00\x01 not json at all", "with its original bytes");
    assert!(g.2.contains("bad JSON"), "and the reason: {}", g.2);
    assert_eq!(g.3, "tier=edge topic=t.edge.input partition=0 offset=6");
    let ts = dlq.iter().find(|d| d.0 != garbage).unwrap();
    assert!(ts.2.starts_with("unreadable record batch: ") && ts.2.contains("timestamp"), "reason: {}", ts.2);
    assert_eq!(ts.3, "tier=edge topic=t.edge.input partition=0 offsets=0..=0", "the range it covers");

    let unreadable =
        node.wait_metric("ddnn_unreadable_batches_total", "tier=\"edge\"", Duration::from_secs(5), |v| v == 1.0);
    assert_eq!(unreadable, Some(1.0));
    let lag = node.wait_metric("ddnn_lag", "tier=\"edge\",partition=\"0\"", Duration::from_secs(10), |v| v == 0.0);
    assert_eq!(lag, Some(0.0), "partition 0 caught up");
    let (code, body) = common::node::http_get(spec.metrics_port, "/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let log = node.log_text();
    assert_eq!(log.matches("cannot be decoded").count(), 1, "said once, not in a loop:\n{log}");
    let dead =
        node.wait_metric("ddnn_messages_dead_lettered_total", "tier=\"edge\"", Duration::from_secs(5), |v| v == 2.0);
    assert_eq!(dead, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_of_every_codec_are_served() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    // snappy is left out: tansu 0.6.0 accepts snappy batches but cannot serve them back to any
    // client (its fetch fails with `UnexpectedType("Snappy")` and drops the connection; seen
    // with librdkafka too). rskafka's snappy codec is enabled and exercised on Apache Kafka.
    let mut keys = Vec::new();
    for (i, codec) in ["gzip", "lz4", "zstd"].iter().enumerate() {
        keys.extend(produce(&broker.addr, "t.edge.input", (i % 2) as i32, &[codec, "20"]).into_iter().map(|(k, _)| k));
    }
    let got = answered(&broker.addr, &keys, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 60, "every compressed record answered; log:\n{}", node.log_text());
    let dead =
        node.wait_metric("ddnn_messages_dead_lettered_total", "tier=\"edge\"", Duration::from_secs(2), |v| v == 0.0);
    assert_eq!(dead, Some(0.0));
}
