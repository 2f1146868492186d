#![allow(clippy::unwrap_used)]
//! Elastic tiers on a real broker: scaling, supervision and scale-to-zero, observed through
//! the node's /metrics endpoint (not its internals).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::node::{repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};
use rskafka::record::Record;

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

fn records(d: &Digits, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let px = &d.pixels[i % d.len()];
            client::paper_record(&uuid::Uuid::new_v4().to_string(), ddnn::wire::encode_paper_json(px))
        })
        .collect()
}

async fn send_all(addr: &str, topic: &str, recs: &[Record]) -> Vec<String> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, topic).await.expect("input topic");
    for (i, chunk) in recs.chunks(100).enumerate() {
        parts[i % parts.len()].produce(chunk.to_vec(), Default::default()).await.expect("produce");
    }
    recs.iter().map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()).collect()
}

/// Distinct keys answered and the number of exit records for them.
async fn answered(addr: &str, topic: &str, keys: &[String], timeout: Duration) -> (usize, usize) {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, topic).await.expect("exit topic");
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, timeout).await.expect("collect");
    let mine: Vec<_> = seen.iter().filter(|s| expected.contains(&s.key)).collect();
    let distinct: HashSet<&str> = mine.iter().map(|s| s.key.as_str()).collect();
    (distinct.len(), mine.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_worker_is_restarted_and_nothing_is_lost() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    // The first two edge batches fail: the worker restarts twice and the batch is retried.
    let node =
        NodeProc::start_with(&topo, "all", spec.metrics_port, &dir.path().join("n.log"), &["--fail-batches", "edge=2"])
            .expect("node");
    let keys = send_all(&broker.addr, "t.edge.input", &records(&digits(), 100)).await;
    let (distinct, total) = answered(&broker.addr, "t.exits", &keys, Duration::from_secs(60)).await;
    assert_eq!(distinct, 100, "log:\n{}", node.log_text());
    assert_eq!(total, 100, "no duplicates when the failure is inside the node");
    let restarts = node.wait_metric("ddnn_restarts_total", "tier=\"edge\"", Duration::from_secs(5), |v| v >= 2.0);
    assert_eq!(restarts, Some(2.0));
    let dead =
        node.wait_metric("ddnn_messages_dead_lettered_total", "tier=\"edge\"", Duration::from_secs(2), |v| v == 0.0);
    assert_eq!(dead, Some(0.0), "retried, not dead-lettered");
    assert!(node.log_text().contains("worker failed: injected fault"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_zero_tier_sleeps_without_workers_and_wakes_on_a_message() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.workers = (0, 1);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let idle = node.wait_metric("ddnn_workers", "tier=\"edge\"", Duration::from_secs(10), |v| v == 0.0);
    assert_eq!(idle, Some(0.0), "idle tier holds no worker");
    assert_eq!(
        node.wait_metric("ddnn_cold_starts_total", "tier=\"edge\"", Duration::from_secs(1), |v| v == 0.0),
        Some(0.0),
        "and no session was ever opened"
    );
    let keys = send_all(&broker.addr, "t.edge.input", &records(&digits(), 1)).await;
    let (distinct, _) = answered(&broker.addr, "t.exits", &keys, Duration::from_secs(30)).await;
    assert_eq!(distinct, 1, "the message is answered; log:\n{}", node.log_text());
    let cold = node.wait_metric("ddnn_cold_start_seconds", "tier=\"edge\"", Duration::from_secs(5), |v| v > 0.0);
    println!("cold start from zero workers: {:?} s", cold);
    assert!(cold.is_some_and(|v| v > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_scales_the_cnn_tier_up_then_back_to_min() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.models = "mnist-cnn";
    spec.workers = (1, 2);
    spec.threshold = 0.99;
    spec.extra_edge = r#"scaler = { tick = "100ms", target_drain = "1s", stabilization = "2s" }"#.into();
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    assert_eq!(node.wait_metric("ddnn_workers", "tier=\"edge\"", Duration::from_secs(5), |v| v == 1.0), Some(1.0));

    let keys = send_all(&broker.addr, "t.edge.input", &records(&digits(), 1500)).await;
    let peak = node.wait_metric("ddnn_workers", "tier=\"edge\"", Duration::from_secs(30), |v| v >= 2.0);
    assert_eq!(peak, Some(2.0), "a burst one worker cannot absorb scales the tier up; log:\n{}", node.log_text());
    let (distinct, _) = answered(&broker.addr, "t.exits", &keys, Duration::from_secs(180)).await;
    assert_eq!(distinct, keys.len(), "the backlog drains and every key is answered");
    let settled = node.wait_metric("ddnn_workers", "tier=\"edge\"", Duration::from_secs(30), |v| v == 1.0);
    assert_eq!(settled, Some(1.0), "back to min after the stabilization window");
    let body = node.metrics().unwrap();
    let ups = common::node::metric(&body, "ddnn_scale_events_total", "direction=\"up\",tier=\"edge\"")
        .or_else(|| common::node::metric(&body, "ddnn_scale_events_total", "tier=\"edge\",direction=\"up\""));
    assert!(ups.is_some_and(|v| v >= 1.0), "scale-up counted: {ups:?}");
    assert!(node.log_text().contains("scaling"), "decisions are logged");
}
