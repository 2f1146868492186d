#![allow(clippy::unwrap_used)]
//! End to end on a real broker with the real dense models: digits in, exits out.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::node::{offline_cascade, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits, SeenExit};
use rskafka::record::Record;

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

/// Sends records to the edge input (round robin over partitions) and returns their keys.
async fn send(addr: &str, topic: &str, records: Vec<Record>) -> Vec<String> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, topic).await.expect("input topic");
    let keys = records.iter().map(|r| String::from_utf8(r.key.clone().unwrap_or_default()).unwrap()).collect();
    for (i, chunk) in records.chunks(50).enumerate() {
        parts[i % parts.len()].produce(chunk.to_vec(), Default::default()).await.expect("produce");
    }
    keys
}

async fn exits_for(addr: &str, topic: &str, keys: &[String], timeout: Duration) -> Vec<SeenExit> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, topic).await.expect("exit topic");
    let from = vec![0; parts.len()];
    let expected: HashSet<String> = keys.iter().cloned().collect();
    client::collect_exits(&parts, &from, &expected, timeout).await.expect("collect")
}

fn paper_records(d: &Digits, range: std::ops::Range<usize>) -> Vec<Record> {
    range
        .map(|i| client::paper_record(&uuid::Uuid::new_v4().to_string(), ddnn::wire::encode_paper_json(&d.pixels[i])))
        .collect()
}

/// Runs the spec's topology in one node, sends the first `n` held-out digits and checks that
/// every digit exits at the tier, with the label, the offline cascade (same models, same exit
/// rule) gives it. Returns the exits per tier.
async fn matches_the_offline_cascade(
    broker: &Broker,
    dir: &std::path::Path,
    spec: &TopoSpec,
    n: usize,
) -> BTreeMap<String, usize> {
    let topo = spec.write(dir);
    let log = dir.join(format!("{}.log", spec.prefix));
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &log).expect("node");

    let d = digits();
    let records = paper_records(&d, 0..n);
    let label_of: HashMap<String, usize> =
        records.iter().enumerate().map(|(i, r)| (String::from_utf8(r.key.clone().unwrap()).unwrap(), i)).collect();
    let keys = send(&broker.addr, &format!("{}.edge.input", spec.prefix), records).await;
    let seen = exits_for(&broker.addr, &format!("{}.exits", spec.prefix), &keys, Duration::from_secs(120)).await;

    let mut per_key: HashMap<&str, Vec<&SeenExit>> = HashMap::new();
    for s in &seen {
        per_key.entry(&s.key).or_default().push(s);
    }
    assert_eq!(per_key.len(), n, "every key answered; log:\n{}", node.log_text());
    assert!(per_key.values().all(|v| v.len() == 1), "exactly one exit per key when nothing fails");

    let reference = offline_cascade(spec.models, &d, 0..n, spec.exit());
    let tiers = ["edge", "fog", "cloud"];
    let mut want_counts = BTreeMap::new();
    let mut got_counts = BTreeMap::new();
    let (mut want_correct, mut got_correct) = (0, 0);
    for (key, v) in &per_key {
        let i = label_of[*key];
        let r = reference[i];
        *want_counts.entry(tiers[r.exit_tier].to_string()).or_insert(0) += 1;
        *got_counts.entry(v[0].exit.exit_tier.clone()).or_insert(0) += 1;
        want_correct += usize::from(r.label == usize::from(d.labels[i]));
        got_correct += usize::from(v[0].exit.label as usize == usize::from(d.labels[i]));
        assert_eq!(v[0].exit.exit_tier, tiers[r.exit_tier], "digit {i} exit tier ({})", spec.exit());
        assert_eq!(v[0].exit.label as usize, r.label, "digit {i} label ({})", spec.exit());
        assert_eq!(v[0].exit.trace.len(), r.exit_tier + 1, "one trace stamp per tier visited");
        let decided = if r.exit_tier == tiers.len() - 1 { "last tier".to_string() } else { spec.exit().to_string() };
        assert_eq!(v[0].exit.exit_rule, decided, "digit {i}: what decided");
    }
    assert_eq!(got_counts, want_counts, "{}", spec.exit());
    assert_eq!(got_correct, want_correct, "{}", spec.exit());
    println!("{}: exits per tier {got_counts:?}; accuracy {:.1}%", spec.exit(), 100.0 * got_correct as f64 / n as f64);
    got_counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_digits_match_the_offline_cascade() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let counts = matches_the_offline_cascade(&broker, dir.path(), &spec, 1000).await;
    // Early exits really happen at more than one tier with these thresholds.
    assert!(counts.len() >= 2, "{counts:?}");
}

/// The entropy and margin rules, end to end: the node decides exactly as the offline cascade
/// with the same rule. Thresholds from the model card, where every tier sees exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entropy_and_margin_exits_match_the_offline_cascade() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    for (rule, threshold) in [("entropy", 0.1), ("margin", 0.7)] {
        let mut spec = TopoSpec::new(&broker.addr);
        spec.exit_rule = rule;
        spec.threshold = threshold;
        spec.prefix = rule.to_string();
        let counts = matches_the_offline_cascade(&broker, dir.path(), &spec, 500).await;
        assert_eq!(counts.len(), 3, "{}: exits at every tier {counts:?}", spec.exit());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_format_keeps_key_and_headers() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let d = digits();
    for format in ["paper-json", "raw-u8", "envelope"] {
        let mut spec = TopoSpec::new(&broker.addr);
        spec.format = format;
        spec.prefix = format.replace('-', "");
        let topo = spec.write(dir.path());
        let node =
            NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join(format!("{format}.log"))).expect("node");
        let mut records = Vec::new();
        for i in 0..20 {
            let key = format!("{format}-key-{i}");
            let value = match format {
                "paper-json" => ddnn::wire::encode_paper_json(&d.pixels[i]),
                "raw-u8" => d.pixels[i].clone(),
                _ => ddnn::wire::encode_envelope(&ddnn::wire::Envelope {
                    version: ddnn::wire::ENVELOPE_VERSION,
                    key: Some(key.clone().into_bytes()),
                    headers: vec![("x-test".into(), b"kept".to_vec()), ("X-INFERENCE-TS".into(), b"1.0".to_vec())],
                    origin_ts_ms: 1000,
                    tensor: ddnn::wire::Tensor {
                        dtype: ddnn::wire::DType::U8,
                        shape: vec![1, 28, 28],
                        data: d.pixels[i].clone(),
                    },
                    trace: vec![],
                }),
            };
            let mut r = client::paper_record(&key, value);
            r.headers.insert("x-test".into(), b"kept".to_vec());
            r.headers.insert("x-binary".into(), vec![0, 159, 255]);
            records.push(r);
        }
        let topic = format!("{}.edge.input", spec.prefix);
        let keys = send(&broker.addr, &topic, records).await;
        let seen = exits_for(&broker.addr, &format!("{}.exits", spec.prefix), &keys, Duration::from_secs(60)).await;
        let got: HashSet<&str> = seen.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(got.len(), keys.len(), "{format}: all answered; log:\n{}", node.log_text());
        for s in &seen {
            assert_eq!(s.exit.key, s.key, "{format}: JSON key = record key");
            assert_eq!(s.headers.get("x-test").map(Vec::as_slice), Some(&b"kept"[..]), "{format}: header kept");
            assert!(s.headers.contains_key("X-INFERENCE-TS"), "{format}: send-time header kept");
            if format != "envelope" {
                assert_eq!(s.headers.get("x-binary").map(Vec::as_slice), Some(&[0u8, 159, 255][..]));
            }
            assert!(s.exit.probabilities.len() == 10 && (s.exit.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-3);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let d = digits();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.edge_partitions = 1;
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("node.log")).expect("node");

    let mut ragged = vec![vec![0u8; 28]; 28];
    ragged[3].pop();
    let bad: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("bad-json", Some(b"{\"not\": json".to_vec()), "bad JSON"),
        ("wrong-shape", Some(b"[[1,2,3]]".to_vec()), "wrong shape"),
        (
            "out-of-range",
            Some(serde_json::to_vec(&[vec![vec![999u16; 28]; 28]]).unwrap()),
            "expected an integer 0..=255",
        ),
        ("ragged", Some(serde_json::to_vec(&[ragged]).unwrap()), "ragged nested list"),
        ("garbage", Some(vec![0xff, 0x00, 0x13, 0x37]), "bad JSON"),
        ("empty", None, "record has no value"),
    ];
    let mut records = Vec::new();
    for (key, value, _) in &bad {
        let mut r = client::paper_record(key, value.clone().unwrap_or_default());
        r.value = value.clone();
        records.push(r);
    }
    records.extend(paper_records(&d, 0..5));
    let good: Vec<String> =
        records[bad.len()..].iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();
    send(&broker.addr, "t.edge.input", records).await;

    // Fog gets envelopes; a truncated and a garbage one must dead-letter there too.
    let env = ddnn::wire::encode_envelope(&ddnn::wire::Envelope {
        version: ddnn::wire::ENVELOPE_VERSION,
        key: Some(b"k".to_vec()),
        headers: vec![],
        origin_ts_ms: 0,
        tensor: ddnn::wire::Tensor::from_f32(vec![32], &[0.5; 32]),
        trace: vec![],
    });
    send(
        &broker.addr,
        "t.fog.input",
        vec![
            client::paper_record("truncated-envelope", env[..env.len() / 2].to_vec()),
            client::paper_record("garbage-envelope", b"hello".to_vec()),
            client::paper_record("wrong-width-envelope", {
                let mut e = ddnn::wire::decode_envelope(&env).unwrap();
                e.tensor = ddnn::wire::Tensor::from_f32(vec![7], &[0.0; 7]);
                ddnn::wire::encode_envelope(&e)
            }),
        ],
    )
    .await;

    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let dlq = client::partitions(&c, "t.dlq").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut dead: HashMap<String, (Option<Vec<u8>>, String)> = HashMap::new();
    while dead.len() < bad.len() + 3 && std::time::Instant::now() < deadline {
        let records = ddnn::kafka::read_to_end(&dlq[0], 0).await.unwrap();
        for r in records {
            let key = String::from_utf8(r.record.key.clone().unwrap_or_default()).unwrap();
            let why = String::from_utf8(r.record.headers.get("x-ddnn-error").cloned().unwrap_or_default()).unwrap();
            dead.insert(key, (r.record.value.clone(), why));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (key, value, reason) in &bad {
        let (got_value, why) =
            dead.get(*key).unwrap_or_else(|| panic!("{key} not dead-lettered; log:\n{}", node.log_text()));
        assert_eq!(
            got_value.clone().unwrap_or_default(),
            value.clone().unwrap_or_default(),
            "{key}: original bytes kept"
        );
        assert!(why.contains(reason), "{key}: reason {why:?} should mention {reason:?}");
    }
    for (key, reason) in [
        ("truncated-envelope", "envelope"),
        ("garbage-envelope", "missing DDNE magic"),
        ("wrong-width-envelope", "the model takes 32"),
    ] {
        let (_, why) = dead.get(key).unwrap_or_else(|| panic!("{key} not dead-lettered"));
        assert!(why.contains(reason), "{key}: {why:?}");
    }
    // The node kept serving: the good digits sent after the bad ones all exit.
    let seen = exits_for(&broker.addr, "t.exits", &good, Duration::from_secs(60)).await;
    let got: HashSet<&str> = seen.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(got.len(), good.len());
    let n = bad.len() as f64;
    let counted =
        node.wait_metric("ddnn_messages_dead_lettered_total", "tier=\"edge\"", Duration::from_secs(5), |v| v == n);
    assert_eq!(counted, Some(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_nothing() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let log = dir.path().join("node.log");
    let mut node = NodeProc::start(&topo, "all", spec.metrics_port, &log).expect("node");
    let d = digits();
    let records = paper_records(&d, 0..1000);
    let keys: Vec<String> = records.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();

    // Send in the background while the node is killed mid-stream.
    let addr = broker.addr.clone();
    let sender = tokio::spawn(async move {
        let c = client::connect(&[addr]).await.unwrap();
        let parts = client::partitions(&c, "t.edge.input").await.unwrap();
        for (i, chunk) in records.chunks(20).enumerate() {
            parts[i % parts.len()].produce(chunk.to_vec(), Default::default()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Kill once some (not all) exits are out.
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let exit_parts = client::partitions(&c, "t.exits").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let end = client::end_offsets(&exit_parts).await.unwrap().iter().sum::<i64>();
        if end >= 100 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill9();
    sender.await.unwrap();
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &log).expect("restarted node");

    let seen = exits_for(&broker.addr, "t.exits", &keys, Duration::from_secs(120)).await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for s in &seen {
        *count.entry(&s.key).or_default() += 1;
    }
    let missing = keys.iter().filter(|k| !count.contains_key(k.as_str())).count();
    let duplicates: usize = count.values().map(|&c| c - 1).sum();
    // Polled: the counters are published on the scaler's tick.
    let replayed_now = || -> f64 {
        let body = node.metrics().unwrap();
        ["edge", "fog", "cloud"]
            .iter()
            .filter_map(|t| common::node::metric(&body, "ddnn_messages_replayed_total", &format!("tier=\"{t}\"")))
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut replayed = replayed_now();
    while replayed < duplicates as f64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        replayed = replayed_now();
    }
    println!(
        "after kill -9: {} keys answered, {missing} missing, {duplicates} duplicates, {replayed} replayed",
        count.len()
    );
    assert_eq!(missing, 0, "at-least-once: nothing lost; log:\n{}", node.log_text());
    assert!(
        duplicates as f64 <= replayed,
        "every duplicate is counted as replayed: {duplicates} duplicates, {replayed} replayed"
    );
}

/// Records fetched but not delivered when the node dies are counted as replayed on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_minus_nine_counts_its_replays() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.edge_partitions = 1;
    let topo = spec.write(dir.path());
    let log = dir.path().join("node.log");
    // The edge's first batches fail: its records sit fetched but undelivered for a while
    // (worker restarts back off 0.1 + 0.2 + 0.4 s), and commits record that.
    let mut node =
        NodeProc::start_with(&topo, "all", spec.metrics_port, &log, &["--fail-batches", "edge=4"]).expect("node");
    let records = paper_records(&digits(), 0..30);
    let keys = send(&broker.addr, "t.edge.input", records).await;
    let fetched = node.wait_metric("ddnn_messages_in_total", "tier=\"edge\"", Duration::from_secs(10), |v| v >= 30.0);
    assert_eq!(fetched, Some(30.0));
    // One commit tick (200 ms) records the fetch position.
    tokio::time::sleep(Duration::from_millis(250)).await;
    node.kill9();
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &log).expect("restarted node");
    // Nothing is lost. When the first batch happened to hold one record, the injected failures
    // hit it alone three times before the kill and it was dead-lettered, as designed.
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let dlq = client::partitions(&c, "t.dlq").await.unwrap();
    let dead: Vec<(String, String)> = ddnn::kafka::read_to_end(&dlq[0], 0)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned();
            (key, String::from_utf8_lossy(&r.record.headers["x-ddnn-error"]).into_owned())
        })
        .collect();
    assert!(
        dead.len() <= 1 && dead.iter().all(|(_, why)| why == "inference failed 3 times: injected fault"),
        "{dead:?}"
    );
    let others: Vec<String> = keys.iter().filter(|k| !dead.iter().any(|(d, _)| d == *k)).cloned().collect();
    let seen = exits_for(&broker.addr, "t.exits", &others, Duration::from_secs(60)).await;
    let answered: HashSet<&str> = seen.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(answered.len() + dead.len(), 30, "log:\n{}", node.log_text());
    let replayed =
        node.wait_metric("ddnn_messages_replayed_total", "tier=\"edge\"", Duration::from_secs(5), |v| v > 0.0);
    assert!(replayed.is_some_and(|v| v >= 1.0), "the restart reports its replays: {replayed:?}");
}

/// A record that kills the process (as an ONNX Runtime abort would) is replayed one record at
/// a time after each crash, and dead-lettered at the third crash in a row; its neighbours
/// are answered, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_crashes_the_node_is_dead_lettered_after_three_crashes() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&broker.addr);
    spec.edge_partitions = 1;
    let topo = spec.write(dir.path());
    let log = dir.path().join("node.log");
    let records = paper_records(&digits(), 0..10);
    let crasher = String::from_utf8(records[4].key.clone().unwrap()).unwrap();
    let crasher_value = records[4].value.clone().unwrap();
    // All ten wait in the input before the node starts, so they arrive in one fetch.
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    c.controller_client().unwrap().create_topic("t.edge.input", 1, 1, 5_000).await.unwrap();
    let keys = send(&broker.addr, "t.edge.input", records).await;
    let mut crashes = 0;
    let mut node = loop {
        let mut node =
            NodeProc::spawn_with(&topo, "all", spec.metrics_port, &log, &["--crash-on-key", &crasher]).expect("node");
        // Either the node dies on the crash key (a restart policy brings it back), or it
        // stays up because the key was dead-lettered.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut died = false;
        while std::time::Instant::now() < deadline {
            if node.child.try_wait().unwrap().is_some() {
                died = true;
                break;
            }
            if node.log_text().contains("ended the node 3 times in a row") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !died {
            break node;
        }
        crashes += 1;
        assert!(crashes <= 5, "a crash loop: log:\n{}", node.log_text());
    };
    node.wait_ready(Duration::from_secs(30)).unwrap();
    println!("the node crashed {crashes} times before the record was dead-lettered");
    // 1: normal run; 2: fast replay, no progress; 3: careful replay commits the four records
    // before it and crashes on it (progress: the count restarts); 4: fast replay, stuck on it;
    // 5: careful replay, alone in flight; then the third start in a row on it dead-letters it.
    assert_eq!(crashes, 5);
    let others: Vec<String> = keys.iter().filter(|k| **k != crasher).cloned().collect();
    let seen = exits_for(&broker.addr, "t.exits", &others, Duration::from_secs(60)).await;
    let answered: HashSet<&str> = seen.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(answered.len(), 9, "every other record answered; log:\n{}", node.log_text());
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let dlq = client::partitions(&c, "t.dlq").await.unwrap();
    let dead = ddnn::kafka::read_to_end(&dlq[0], 0).await.unwrap();
    assert_eq!(dead.len(), 1, "only the crashing record is dead-lettered");
    let r = &dead[0].record;
    assert_eq!(r.key.as_deref(), Some(crasher.as_bytes()));
    assert_eq!(r.value.as_deref(), Some(crasher_value.as_slice()), "with its original bytes");
    let why = String::from_utf8_lossy(&r.headers["x-ddnn-error"]).into_owned();
    assert!(why.starts_with("processing this record ended the node 3 times in a row"), "{why}");
    node.kill9();
}
