#![allow(clippy::unwrap_used)]
//! Interop: a different Kafka client (librdkafka through Python's confluent-kafka) produces
//! the paper's records and reads our exits.

mod common;

use std::process::Command;

use common::node::{repo_root, NodeProc, TopoSpec};
use common::Broker;

fn python() -> String {
    std::env::var("DDNN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_client_produces_inputs_and_reads_exits() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");

    let script = repo_root().join("nodes/node/tests/interop/confluent_client.py");
    let heldout = repo_root().join("models/heldout.bin");
    let out = Command::new(python())
        .arg(&script)
        .args([broker.addr.as_str(), "t.edge.input", "t.exits"])
        .arg(&heldout)
        .arg("10")
        .output()
        .expect("run python (set DDNN_PYTHON to an interpreter with confluent-kafka; scripts/setup.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 10, "every key answered; node log:\n{}", node.log_text());
    for l in &lines {
        assert_eq!(l["json_key"], l["key"]);
        assert_eq!(l["headers"]["x-client"], "confluent-kafka", "input headers copied to the exit");
        assert!(["edge", "fog", "cloud"].contains(&l["exit_tier"].as_str().unwrap()));
    }
}
