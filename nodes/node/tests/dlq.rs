#![allow(clippy::unwrap_used)]
//! `ddnn dlq list` and `ddnn dlq replay` on a real broker: a failing tier dead-letters records,
//! the list shows them by reason and source, a replay after the fix gets every key answered
//! exactly once, and running the replay again replays nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};
use rskafka::record::Record;

/// Runs `ddnn dlq ARGS --topology TOPO`; returns stdout (fails on a non-zero exit).
fn dlq(topo: &std::path::Path, args: &[&str]) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ddnn")).arg("dlq").args(args).arg("--topology").arg(topo).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ddnn dlq {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn input_records(addr: &str) -> Vec<Record> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let mut out = Vec::new();
    for pc in client::partitions(&c, "t.edge.input").await.unwrap() {
        out.extend(ddnn::kafka::read_to_end(&pc, 0).await.unwrap().into_iter().map(|r| r.record));
    }
    out
}

async fn dead_letter_count(addr: &str) -> usize {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let mut n = 0;
    for pc in client::partitions(&c, "t.dlq").await.unwrap() {
        n += ddnn::kafka::read_to_end(&pc, 0).await.unwrap().len();
    }
    n
}

/// Exit records per key (every exit in the topic).
async fn exits_per_key(addr: &str, keys: &[String]) -> HashMap<String, usize> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, "t.exits").await.unwrap();
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, Duration::from_secs(60)).await.unwrap();
    let mut out = HashMap::new();
    for s in seen {
        *out.entry(s.key).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_after_the_fix_and_never_replayed_twice() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let log = dir.path().join("n.log");

    // 1. A broken edge tier: its first 6 inferences fail, so each of two digits sent one at a
    //    time fails 3 times and is dead-lettered; then a record of garbage is dead-lettered
    //    for what it is.
    let mut node = NodeProc::start_with(&topo, "all", spec.metrics_port, &log, &["--fail-batches", "edge=6"]).unwrap();
    let d = Digits::load(&repo_root().join("models/heldout.bin")).unwrap();
    let keys: Vec<String> = (0..2).map(|i| format!("digit-{i}")).collect();
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let input = client::partitions(&c, "t.edge.input").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, key) in keys.iter().enumerate() {
        let r = client::paper_record(key, ddnn::wire::encode_paper_json(&d.pixels[i]));
        input[0].produce(vec![r], Default::default()).await.unwrap();
        while dead_letter_count(&broker.addr).await <= i {
            assert!(Instant::now() < deadline, "not dead-lettered; log:\n{}", node.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    input[1].produce(vec![client::paper_record("garbage", b"not json".to_vec())], Default::default()).await.unwrap();
    while dead_letter_count(&broker.addr).await < 3 {
        assert!(Instant::now() < deadline, "not dead-lettered; log:\n{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.terminate().unwrap();

    // 2. The list groups them by reason and source.
    let list = dlq(&topo, &["list"]);
    assert!(list.starts_with("t.dlq: 3 dead letter(s), 3 matching, 2 group(s)\n"), "{list}");
    assert!(list.contains("\n2 x inference failed 3 times: injected fault\n  source  t.edge.input/0\n"), "{list}");
    assert!(list.contains("\n1 x PaperJson input: bad JSON"), "{list}");
    assert!(list.contains("  source  t.edge.input/1\n"), "{list}");
    let only_garbage = dlq(&topo, &["list", "--source", "t.edge.input/1"]);
    assert!(only_garbage.starts_with("t.dlq: 3 dead letter(s), 1 matching, 1 group(s)\n"), "{only_garbage}");
    let none_yet = dlq(&topo, &["list", "--since", "2099-01-01T00:00:00Z"]);
    assert!(none_yet.starts_with("t.dlq: 3 dead letter(s), 0 matching, 0 group(s)\n"), "{none_yet}");

    // 3. The fix: the tier runs again without the fault. A dry run writes nothing.
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &log).unwrap();
    let before = input_records(&broker.addr).await.len();
    let dry = dlq(&topo, &["replay", "--reason", "injected fault"]);
    assert!(dry.contains("would replay 2 into t.edge.input/0: "), "{dry}");
    assert!(
        dry.ends_with("dry run: 2 record(s) would be replayed; nothing was written (--execute replays)\n"),
        "{dry}"
    );
    assert_eq!(input_records(&broker.addr).await.len(), before, "a dry run writes nothing");

    // 4. The replay: every key answered exactly once, key and headers kept, marker added.
    let done = dlq(
        &topo,
        &["replay", "--reason-regex", r"inference failed \d times", "--source", "t.edge.input", "--execute"],
    );
    assert!(done.starts_with("2 matching dead letter(s)\nreplayed 2 into t.edge.input/0: "), "{done}");
    assert!(done.ends_with("replayed 2 record(s)\n"), "{done}");
    let all = input_records(&broker.addr).await;
    assert_eq!(all.len(), before + 2);
    let replayed: Vec<Record> = all.into_iter().filter(|r| r.headers.contains_key("x-ddnn-replayed-from")).collect();
    assert_eq!(replayed.len(), 2);
    for r in &replayed {
        assert!(r.headers.contains_key("X-INFERENCE-TS"), "input headers kept: {:?}", r.headers);
        assert!(!r.headers.contains_key("x-ddnn-error") && !r.headers.contains_key("x-ddnn-source"));
        let marker = String::from_utf8(r.headers["x-ddnn-replayed-from"].clone()).unwrap();
        assert!(marker.starts_with("t.dlq/"), "{marker}");
    }
    let replayed_keys: HashSet<String> =
        replayed.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();
    assert_eq!(replayed_keys, keys.iter().cloned().collect());
    let answers = exits_per_key(&broker.addr, &keys).await;
    assert_eq!(answers.len(), 2, "every replayed key answered; log:\n{}", node.log_text());

    // 5. The same replay again replays nothing and says so; only --again would.
    let again = dlq(&topo, &["replay", "--reason", "injected fault", "--execute"]);
    assert!(again.contains("2 replayed before, not again (--again replays them anyway): "), "{again}");
    assert!(again.ends_with("nothing to replay\n"), "{again}");
    let garbage = dlq(&topo, &["replay", "--source", "t.edge.input/1"]);
    assert!(garbage.contains("would replay 1 into t.edge.input/1: "), "{garbage}");
    let forced = dlq(&topo, &["replay", "--reason", "injected fault", "--again"]);
    assert!(forced.contains("would replay 2 into t.edge.input/0"), "{forced}");
    assert_eq!(input_records(&broker.addr).await.len(), before + 2, "nothing written after the first replay");

    // Everything the node was given is processed: still one answer per key.
    let lag = node.wait_metric("ddnn_lag", "tier=\"edge\",partition=\"0\"", Duration::from_secs(20), |v| v == 0.0);
    assert_eq!(lag, Some(0.0));
    let answers = exits_per_key(&broker.addr, &keys).await;
    assert!(answers.values().all(|&n| n == 1), "exactly once per replayed key: {answers:?}");
}
