#![allow(clippy::unwrap_used)]
//! Steering a running continuum: live topology edits (scaling out across instances: `groups.rs`).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::node::{offline_cascade, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits, SeenExit};

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

async fn send(addr: &str, topic: &str, d: &Digits, range: std::ops::Range<usize>) -> Vec<String> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, topic).await.expect("input topic");
    let mut keys = Vec::new();
    for (n, i) in range.enumerate() {
        let key = uuid::Uuid::new_v4().to_string();
        let rec = client::paper_record(&key, ddnn::wire::encode_paper_json(&d.pixels[i]));
        parts[n % parts.len()].produce(vec![rec], Default::default()).await.expect("produce");
        keys.push(key);
    }
    keys
}

async fn exits(addr: &str, keys: &[String]) -> Vec<SeenExit> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, "t.exits").await.expect("exits");
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, Duration::from_secs(60)).await.unwrap();
    seen.into_iter().filter(|s| expected.contains(&s.key)).collect()
}

fn wait_log(node: &NodeProc, needle: &str, times: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if node.log_text().matches(needle).count() >= times {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_edit_applies_live_and_a_bad_edit_is_rejected() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.threshold = 0.999;
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let d = digits();

    let before = send(&broker.addr, "t.edge.input", &d, 0..100).await;
    let seen_before = exits(&broker.addr, &before).await;
    assert_eq!(seen_before.len(), 100);
    assert!(seen_before.iter().any(|s| s.exit.exit_tier != "edge"), "with 0.999 some digits go past the edge");

    // Edit while records flow: none may be lost or duplicated across the edit.
    let (addr, d2) = (broker.addr.clone(), d.clone());
    let during = tokio::spawn(async move {
        let mut keys = Vec::new();
        for i in 100..200 {
            keys.extend(send(&addr, "t.edge.input", &d2, i..i + 1).await);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        keys
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Any softmax over 10 classes has a max >= 0.1: with this threshold everything exits at the edge.
    spec.threshold = 0.05;
    spec.write(dir.path());
    assert!(wait_log(&node, "applied in place", 3), "log:\n{}", node.log_text());
    let during = during.await.unwrap();
    let seen_during = exits(&broker.addr, &during).await;
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for s in &seen_during {
        *per_key.entry(s.key.as_str()).or_default() += 1;
    }
    assert_eq!(per_key.len(), 100, "nothing lost across the edit");
    assert!(per_key.values().all(|&c| c == 1), "nothing duplicated across the edit");

    let after = send(&broker.addr, "t.edge.input", &d, 200..300).await;
    let seen_after = exits(&broker.addr, &after).await;
    assert_eq!(seen_after.len(), 100);
    assert!(seen_after.iter().all(|s| s.exit.exit_tier == "edge"), "exits follow the new threshold");

    // An invalid edit: rejected with the field-naming error, the node keeps the last good topology.
    std::fs::write(&topo, spec.toml().replace("threshold = 0.05", "threshold = 1.5")).unwrap();
    assert!(wait_log(&node, "topology edit rejected", 1), "log:\n{}", node.log_text());
    let log = node.log_text();
    assert!(log.contains("tiers[0].threshold: 1.5 is outside (0, 1]"), "the error names field and value:\n{log}");
    let later = send(&broker.addr, "t.edge.input", &d, 300..350).await;
    let seen_later = exits(&broker.addr, &later).await;
    assert_eq!(seen_later.len(), 50, "still serving");
    assert!(seen_later.iter().all(|s| s.exit.exit_tier == "edge"), "still on the last good threshold");
    let all: Vec<&String> = before.iter().chain(&during).chain(&after).chain(&later).collect();
    let answered: HashSet<&str> =
        seen_before.iter().chain(&seen_during).chain(&seen_after).chain(&seen_later).map(|s| s.key.as_str()).collect();
    assert_eq!(answered.len(), all.len());
}

/// Switching every tier from max-prob to entropy applies in place (no tier restarts), is logged
/// as a diff, and the digits sent afterwards exit exactly where the offline cascade with the
/// new rule says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_rule_edit_applies_live() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.threshold = 0.999;
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let d = digits();
    let before = send(&broker.addr, "t.edge.input", &d, 0..50).await;
    assert_eq!(exits(&broker.addr, &before).await.len(), 50);

    spec.exit_rule = "entropy";
    spec.threshold = 0.1;
    spec.write(dir.path());
    assert!(wait_log(&node, "applied in place", 3), "log:\n{}", node.log_text());
    let log = node.log_text();
    assert!(log.contains("exit.rule: max-prob -> entropy; threshold: 0.999 -> 0.1"), "the diff is logged:\n{log}");
    assert!(!log.contains("restarting the tier"), "a rule change restarts nothing:\n{log}");

    let n = 200;
    let after = send(&broker.addr, "t.edge.input", &d, 0..n).await;
    let seen = exits(&broker.addr, &after).await;
    assert_eq!(seen.len(), n, "log:\n{}", node.log_text());
    let reference = offline_cascade("mnist", &d, 0..n, spec.exit());
    let index: HashMap<&str, usize> = after.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let tiers = ["edge", "fog", "cloud"];
    for s in &seen {
        let r = reference[index[s.key.as_str()]];
        assert_eq!(s.exit.exit_tier, tiers[r.exit_tier], "digit {} exit tier", index[s.key.as_str()]);
        assert_eq!(s.exit.label as usize, r.label, "digit {} label", index[s.key.as_str()]);
    }
    // The edit made a difference: under the old rule some of these digits exit elsewhere.
    let old = offline_cascade("mnist", &d, 0..n, ddnn::config::Exit::max_prob(0.999));
    assert!(old.iter().zip(&reference).any(|(o, r)| o.exit_tier != r.exit_tier));
}
