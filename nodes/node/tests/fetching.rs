#![allow(clippy::unwrap_used)]
//! Fetch modes on a real broker: tansu holds fetches whose records are already there, so
//! under a stream of records `auto` must leave the long poll (and say so) on every tier's
//! input, while `long-poll` never does; both answer everything.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::node::{repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};
use ddnn_testkit::metric;

const SWITCH: &str = "fetches in a row whose records were already there";

/// The log's lines that say a partition left the long poll.
fn switch_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(SWITCH)).collect()
}

/// Sends `n` digits to partition 0 at 50 per second (so most fetches find records already
/// written, which a long poll answers at once); returns how many were answered.
async fn stream(addr: &str, prefix: &str, n: usize) -> usize {
    let (sent, answered) = stream_until(addr, prefix, n, || false).await;
    assert_eq!(sent, n);
    answered
}

/// Like `stream`, but stops early once `done()` (asked every 10 digits); returns how many
/// were sent and how many of those were answered.
async fn stream_until(addr: &str, prefix: &str, n: usize, done: impl Fn() -> bool) -> (usize, usize) {
    let d = Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin");
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let input = client::partitions(&c, &format!("{prefix}.edge.input")).await.expect("input topic");
    let exits = client::partitions(&c, &format!("{prefix}.exits")).await.expect("exit topic");
    let from = client::end_offsets(&exits).await.expect("end offsets");
    let mut want = HashSet::new();
    for i in 0..n {
        if i % 10 == 0 && done() {
            break;
        }
        let key = uuid::Uuid::new_v4().to_string();
        let rec = client::paper_record(&key, ddnn::wire::encode_paper_json(&d.pixels[i % d.pixels.len()]));
        input[0].produce(vec![rec], Default::default()).await.expect("produce");
        want.insert(key);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = client::collect_exits(&exits, &from, &want, Duration::from_secs(60)).await.expect("collect");
    (want.len(), seen.iter().filter(|s| want.contains(&s.key)).map(|s| s.key.as_str()).collect::<HashSet<_>>().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_leaves_the_long_poll_on_a_broker_that_holds_fetches_and_long_poll_stays() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    // Partition 0 of the edge input, and the fog's and the cloud's input. Each tier's proof
    // needs three held fetches of records that reached it before the fetch was sent, and the
    // cloud's records only flow steadily once the fog left the long poll: `auto` streams until
    // all three switched (at most 20 s; in CI about 2 s), `long-poll` for 6 s, longer than
    // `auto` has needed.
    let topics = ["auto.edge.input", "auto.fog.input", "auto.cloud.input"];
    for (mode, switches, n) in [("auto", true, 1_000), ("long-poll", false, 300)] {
        let mut spec = TopoSpec::new(&broker.addr);
        spec.prefix = mode.replace('-', "");
        // Every digit travels through all three tiers.
        spec.threshold = 1.0;
        let topo = spec.write(dir.path());
        let log = dir.path().join(format!("{mode}.log"));
        let node = NodeProc::start_with(&topo, "all", spec.metrics_port, &log, &["--fetch-mode", mode]).expect("node");
        let all_switched = || {
            let text = node.log_text();
            let lines = switch_lines(&text);
            topics.iter().all(|t| lines.iter().any(|l| l.contains(t)))
        };
        let (sent, answered) = stream_until(&broker.addr, &spec.prefix, n, || switches && all_switched()).await;
        eprintln!("{mode}: {sent} digits sent, {answered} answered");
        let text = node.log_text();
        assert_eq!(answered, sent, "{mode}: every digit answered; log:\n{text}");
        let lines = switch_lines(&text);
        if switches {
            for topic in topics {
                assert!(lines.iter().any(|l| l.contains(topic)), "{mode}: {topic} left the long poll; log:\n{text}");
            }
        } else {
            assert!(lines.is_empty(), "{mode}: never leaves the long poll; log:\n{text}");
        }
    }
}

/// Waits until `name{tier="edge"}` counts, then returns its value and `other`'s.
fn counters(node: &NodeProc, name: &str, other: &str) -> (f64, f64) {
    let body = node.metrics().expect("metrics");
    let get = |n: &str| metric(&body, n, "tier=\"edge\"").unwrap_or_else(|| panic!("{n} missing in:\n{body}"));
    (get(name), get(other))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_partitions_ask_only_for_the_end_of_the_log_and_fetch_when_it_moves() {
    const FETCHES: &str = "ddnn_fetch_requests_total";
    const ENDS: &str = "ddnn_end_offset_requests_total";
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.prefix = "quiet".into();
    spec.threshold = 1.0;
    let topo = spec.write(dir.path());
    let log = dir.path().join("quiet.log");
    let args = ["--fetch-mode", "adaptive", "--idle-fetch-wait-ms", "100"];
    let node = NodeProc::start_with(&topo, "all", spec.metrics_port, &log, &args).expect("node");
    // Once the group assigned the partitions, silence backs the waits off to the cap within a
    // second or two (1 s of quiet, then 10, 20, 40, 80, 100 ms).
    let seen = node.wait_metric(ENDS, "tier=\"edge\"", Duration::from_secs(60), |v| v > 0.0);
    assert!(seen.is_some(), "the quiet edge partitions never asked for the log's end; log:\n{}", node.log_text());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fetches0, ends0) = counters(&node, FETCHES, ENDS);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fetches1, ends1) = counters(&node, FETCHES, ENDS);
    assert_eq!(fetches1, fetches0, "no fetch while nothing arrives; log:\n{}", node.log_text());
    // 2 partitions at one look per 100 ms or so for 3 s: about 60.
    assert!(ends1 - ends0 >= 10.0, "the end of the log was watched: {ends0} -> {ends1}");
    // The log moves: the next look sees it and a fetch brings the digit through all tiers.
    assert_eq!(stream(&broker.addr, &spec.prefix, 1).await, 1, "the digit after the silence is answered");
    // The counters are published every scaler tick.
    let fetches2 = node.wait_metric(FETCHES, "tier=\"edge\"", Duration::from_secs(10), |v| v > fetches1);
    assert!(fetches2.is_some_and(|v| v > fetches1), "the moved log was fetched: {fetches1} -> {fetches2:?}");
}
