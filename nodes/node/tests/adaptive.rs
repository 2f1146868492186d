#![allow(clippy::unwrap_used)]
//! SLO-driven adaptive exits on a real broker and the real CNN models (whose calibration
//! accuracy falls steadily with the threshold, so a floor cuts the ladder short): over its p99
//! target the edge relaxes its exit rule down the model's calibration ladder, each decision at
//! least halving the share sent on (never past the accuracy floor), the records then exit
//! exactly where that threshold sends them, and idle it tightens back to the topology's
//! threshold. (Pure policy: `scaling::exits`. The overload benchmark with the inference-bound
//! family: `bench/RESULTS.md`.)

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::node::{offline_cascade, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits, SeenExit};
use ddnn::config::{calibration, Exit};
use ddnn::scaling::exits::{ladder, ExitController};

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

async fn send(addr: &str, d: &Digits, range: std::ops::Range<usize>, per_s: f64) -> Vec<(String, usize)> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, "t.edge.input").await.expect("input topic");
    let mut keys = Vec::new();
    for (n, i) in range.enumerate() {
        let key = uuid::Uuid::new_v4().to_string();
        let rec = client::paper_record(&key, ddnn::wire::encode_paper_json(&d.pixels[i]));
        parts[n % parts.len()].produce(vec![rec], Default::default()).await.expect("produce");
        keys.push((key, i));
        tokio::time::sleep(Duration::from_secs_f64(1.0 / per_s)).await;
    }
    keys
}

async fn exits(addr: &str, keys: &[(String, usize)]) -> Vec<SeenExit> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, "t.exits").await.expect("exits");
    let expected: HashSet<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, Duration::from_secs(60)).await.unwrap();
    seen.into_iter().filter(|s| expected.contains(&s.key)).collect()
}

fn threshold(node: &NodeProc) -> Option<f64> {
    common::node::metric(&node.metrics().ok()?, "ddnn_threshold", "tier=\"edge\"")
}

fn wait_threshold(node: &NodeProc, want: f32, timeout: Duration) -> Option<f64> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        last = threshold(node);
        if last.is_some_and(|t| (t - f64::from(want)).abs() < 1e-6) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// A floor that leaves a ladder of 3-4 steps from `base`, and that ladder.
fn short_ladder(base: Exit, table: &[ddnn::config::CalPoint]) -> (f64, Vec<f32>) {
    table
        .iter()
        .map(|p| p.accuracy)
        .filter_map(|floor| {
            let steps = ladder(base, table, floor);
            (3..=4).contains(&steps.len()).then_some((floor, steps))
        })
        .next()
        .unwrap_or_else(|| panic!("no floor gives a ladder of 3-4 steps from {base:?}: {table:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_target_the_edge_relaxes_down_the_calibration_ladder_and_idle_tightens_back() {
    let base = Exit::max_prob(0.9);
    // A floor that leaves a short ladder (two or three steps below the base), from the table
    // models/card.py wrote: the last step is the loosest threshold whose held-out accuracy is
    // at least the floor.
    let table = calibration::load(&repo_root().join("models/mnist-cnn/edge.onnx"), base.rule).expect("calibration");
    let (floor, steps) = short_ladder(base, &table);
    let loosest = *steps.last().unwrap();
    println!("floor {floor}: ladder {steps:?}");

    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.models = "mnist-cnn";
    spec.threshold = base.threshold;
    // 1 ms: every record is over the target, so each decision relaxes further.
    spec.extra_edge = format!("adaptive = {{ p99_target = \"1ms\", accuracy_floor = {floor} }}");
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    assert_eq!(wait_threshold(&node, base.threshold, Duration::from_secs(10)), Some(f64::from(base.threshold)));

    let d = digits();
    let warm = send(&broker.addr, &d, 0..(steps.len() * 100 + 200), 100.0).await;
    assert_eq!(exits(&broker.addr, &warm).await.len(), warm.len());
    let at = wait_threshold(&node, loosest, Duration::from_secs(10));
    assert_eq!(at, Some(f64::from(loosest)), "relaxed down to the floor's step; log:\n{}", node.log_text());
    // As many relaxations as the policy takes to walk this ladder (each at least halves the
    // share sent on, by the table).
    let mut policy = ExitController::new(base, Duration::from_millis(1), floor, &table);
    let walk = std::iter::from_fn(|| policy.decide(Some(Duration::from_secs(1)))).count();
    println!("the policy walks the ladder in {walk} relaxations");
    assert_eq!(
        node.log_text().matches(" relaxed max-prob ").count(),
        walk,
        "one relaxation per decision of the policy; log:\n{}",
        node.log_text()
    );

    // Still over the target: the rule stays at the last step, and the records exit exactly
    // where that threshold sends them (the edge's decision does not depend on later tiers).
    let range = 1000..1300;
    let keys = send(&broker.addr, &d, range.clone(), 100.0).await;
    let seen = exits(&broker.addr, &keys).await;
    assert_eq!(seen.len(), keys.len());
    let at_edge: HashSet<&str> = seen.iter().filter(|s| s.exit.exit_tier == "edge").map(|s| s.key.as_str()).collect();
    let offline = offline_cascade("mnist-cnn", &d, range.clone(), Exit::max_prob(loosest));
    let expected: HashSet<&str> =
        keys.iter().zip(&offline).filter(|(_, o)| o.exit_tier == 0).map(|((k, _), _)| k.as_str()).collect();
    assert_eq!(at_edge, expected, "edge exits follow the relaxed threshold {loosest}");
    let at_base = offline_cascade("mnist-cnn", &d, range, base).iter().filter(|o| o.exit_tier == 0).count();
    println!("edge exits of 300: {} at {loosest} vs {at_base} at the base {}", at_edge.len(), base.threshold);
    assert!(at_edge.len() > at_base, "relaxing lets more inputs exit early");

    // Idle: no latency over the target; one step back per three seconds, to the base.
    let back = wait_threshold(&node, base.threshold, Duration::from_secs(3 * steps.len() as u64 + 10));
    assert_eq!(back, Some(f64::from(base.threshold)), "log:\n{}", node.log_text());
    assert_eq!(node.log_text().matches(" tightened max-prob ").count(), steps.len() - 1);

    // A live edit of the threshold moves the base the rule returns to.
    spec.threshold = 0.95;
    spec.write(dir.path());
    assert_eq!(
        wait_threshold(&node, 0.95, Duration::from_secs(10)),
        Some(f64::from(0.95f32)),
        "log:\n{}",
        node.log_text()
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(threshold(&node), Some(f64::from(0.95f32)), "idle at the new base");
}

/// The next tier runs in another process (its latency is not in the edge's stats): when it
/// stops reading, the age of the records waiting for it crosses the edge's target and the
/// edge relaxes; once it reads again, the edge tightens back to its base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_relaxes_while_the_next_tier_in_another_process_falls_behind() {
    let base = Exit::max_prob(0.9);
    let table = calibration::load(&repo_root().join("models/mnist-cnn/edge.onnx"), base.rule).expect("calibration");
    // A short ladder (as above), so that tightening back takes a bounded few steps.
    let (floor, steps) = short_ladder(base, &table);

    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.models = "mnist-cnn";
    spec.threshold = base.threshold;
    spec.extra_edge = format!("adaptive = {{ p99_target = \"1500ms\", accuracy_floor = {floor} }}");
    let mut nodes = Vec::new();
    for tier in ["cloud", "fog", "edge"] {
        spec.metrics_port = common::node::free_port();
        let d = dir.path().join(tier);
        std::fs::create_dir_all(&d).unwrap();
        let topo = spec.write(&d);
        nodes.push(NodeProc::start(&topo, tier, spec.metrics_port, &d.join("n.log")).expect(tier));
    }
    let (fog, edge) = (&nodes[1], &nodes[2]);
    let d = digits();
    // Warm: everything answered, so the fog's group has committed.
    let warm = send(&broker.addr, &d, 0..200, 100.0).await;
    assert_eq!(exits(&broker.addr, &warm).await.len(), warm.len());
    assert_eq!(threshold(edge), Some(f64::from(base.threshold)), "under its target: at the base");

    // The fog freezes: what the edge forwards waits.
    let pid = fog.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let behind = send(&broker.addr, &d, 200..700, 50.0).await;
    let relaxed = {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = threshold(edge);
        while Instant::now() < deadline && last.is_some_and(|t| t >= f64::from(base.threshold)) {
            std::thread::sleep(Duration::from_millis(100));
            last = threshold(edge);
        }
        last
    };
    let log = edge.log_text();
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert!(relaxed.is_some_and(|t| t < f64::from(base.threshold)), "relaxed: {relaxed:?}; log:\n{log}");
    assert!(log.contains("(tier fog's backlog)"), "the fog's backlog was the reason; log:\n{log}");

    // The fog reads again: everything is answered and the edge goes back to its base.
    assert_eq!(exits(&broker.addr, &behind).await.len(), behind.len(), "fog log:\n{}", fog.log_text());
    // One step back per three calm decisions (about 3.5 s each here), plus the fog's rejoin.
    let back = wait_threshold(edge, base.threshold, Duration::from_secs(5 * steps.len() as u64 + 30));
    assert_eq!(back, Some(f64::from(base.threshold)), "log:\n{}", edge.log_text());
}
