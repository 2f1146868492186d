#![allow(clippy::unwrap_used)]
//! A node's life with a real broker: SIGTERM drain, broker restarts, broker down at start.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::node::{http_get, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};
use rskafka::record::Record;

fn records(n: usize) -> Vec<Record> {
    let d = Digits::load(&repo_root().join("models/heldout.bin")).unwrap();
    (0..n)
        .map(|i| {
            client::paper_record(
                &uuid::Uuid::new_v4().to_string(),
                ddnn::wire::encode_paper_json(&d.pixels[i % d.len()]),
            )
        })
        .collect()
}

fn keys(recs: &[Record]) -> Vec<String> {
    recs.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect()
}

async fn send(addr: &str, recs: Vec<Record>, pause: Duration) {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, "t.edge.input").await.unwrap();
    for (i, chunk) in recs.chunks(20).enumerate() {
        // A broker being restarted refuses for a moment: retry the same chunk.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = parts[i % parts.len()].produce(chunk.to_vec(), Default::default()).await {
            assert!(Instant::now() < deadline, "produce kept failing: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Exit records per key.
async fn exits(addr: &str, keys: &[String], timeout: Duration) -> HashMap<String, usize> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, "t.exits").await.unwrap();
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, timeout).await.unwrap();
    let mut count = HashMap::new();
    for s in seen.into_iter().filter(|s| expected.contains(&s.key)) {
        *count.entry(s.key).or_insert(0) += 1;
    }
    count
}

async fn exit_count(addr: &str) -> i64 {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, "t.exits").await.unwrap();
    client::end_offsets(&parts).await.unwrap().iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_three_tiers_within_ten_seconds_and_restart_duplicates_nothing() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let log = dir.path().join("n.log");
    let mut node = NodeProc::start(&topo, "all", spec.metrics_port, &log).expect("node");
    let recs = records(600);
    let all = keys(&recs);
    let addr = broker.addr.clone();
    let sender = tokio::spawn(async move { send(&addr, recs, Duration::from_millis(20)).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while exit_count(&broker.addr).await < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    let status = node.terminate().unwrap();
    let took = t0.elapsed();
    println!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "clean exit: {status}");
    assert!(took < Duration::from_secs(10), "drained within Docker's 10 s grace: {took:?}");
    assert!(node.log_text().contains("final offsets committed"), "log:\n{}", node.log_text());
    sender.await.unwrap();

    let node = NodeProc::start(&topo, "all", spec.metrics_port, &log).expect("restarted");
    let count = exits(&broker.addr, &all, Duration::from_secs(120)).await;
    assert_eq!(count.len(), all.len(), "every key answered; log:\n{}", node.log_text());
    let dups: usize = count.values().map(|c| c - 1).sum();
    assert_eq!(dups, 0, "a drained stop replays nothing");
    // Polled: the counters are published on the first scaler tick after start.
    for t in ["edge", "fog", "cloud"] {
        let replayed =
            node.wait_metric("ddnn_messages_replayed_total", &format!("tier=\"{t}\""), Duration::from_secs(5), |v| {
                v == 0.0
            });
        assert_eq!(replayed, Some(0.0), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let first = records(200);
    let second = records(200);
    let all: Vec<String> = keys(&first).into_iter().chain(keys(&second)).collect();
    send(&broker.addr, first, Duration::from_millis(5)).await;
    broker.restart().await.expect("broker back on the same data");
    send(&broker.addr, second, Duration::from_millis(5)).await;
    let count = exits(&broker.addr, &all, Duration::from_secs(120)).await;
    let dups: usize = count.values().map(|c| c - 1).sum();
    println!("broker restart: {} of {} answered, {dups} duplicates", count.len(), all.len());
    assert_eq!(count.len(), all.len(), "0 keys lost; log:\n{}", node.log_text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(spec.metrics_port, "/healthz").map(|(c, _)| c).unwrap_or(0) != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(spec.metrics_port, "/healthz").unwrap().0, 200, "healthy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_is_not_ready_then_ready() {
    let mut broker = Broker::start().await.expect("broker");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let mut node =
        NodeProc::spawn_with(&topo, "all", spec.metrics_port, &dir.path().join("n.log"), &[]).expect("spawn");
    // The endpoint answers at once, but the node is not ready while its broker is away.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Ok(r) = http_get(spec.metrics_port, "/readyz") {
            seen = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, why) = seen.expect("endpoint up while the broker is down");
    assert_eq!(code, 503);
    assert!(why.contains("waiting for its clusters"), "{why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(http_get(spec.metrics_port, "/readyz").unwrap().0, 503, "still not ready");
    // Waiting longer than a start takes is a stall: /healthz says so too (Docker's healthcheck).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut code, mut body) = http_get(spec.metrics_port, "/healthz").unwrap();
    // The cluster's connection error may show first; the waiting tier must be named too.
    while (code == 200 || !body.contains("tier edge: starting")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (code, body) = http_get(spec.metrics_port, "/healthz").unwrap();
    }
    assert_eq!(code, 503);
    assert!(body.contains("tier edge: starting (waiting for its clusters) (for "), "{body}");
    broker.restart().await.expect("broker up");
    node.wait_ready(Duration::from_secs(60)).expect("ready once the broker is up");
    assert_eq!(http_get(spec.metrics_port, "/healthz").unwrap(), (200, "ok\n".to_string()), "healthy again");
    let recs = records(20);
    let all = keys(&recs);
    send(&broker.addr, recs, Duration::ZERO).await;
    assert_eq!(exits(&broker.addr, &all, Duration::from_secs(60)).await.len(), 20, "log:\n{}", node.log_text());
}
