#![allow(clippy::unwrap_used)]
//! Every tier is a Kafka consumer group: several nodes running the same tier split its input
//! partitions through the group coordinator, rebalance without loss when one joins, leaves or
//! dies, and their progress is the standard one (read and moved by a plain Kafka client).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{metric, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};

const PARTITIONS: i32 = 6;
const INPUT: &str = "t.edge.input";
/// The tests' session timeout (the broker's minimum): a killed node's partitions move after it.
const SESSION_MS: u64 = 6_000;

fn digits() -> Digits {
    Digits::load(&repo_root().join("models/heldout.bin")).expect("models/heldout.bin")
}

fn python() -> String {
    std::env::var("DDNN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// One instance of the edge tier (everything exits there), with its own metrics port.
fn instance(dir: &Path, broker: &Broker, name: &str, extra_edge: &str) -> NodeProc {
    let mut spec = TopoSpec::new(&broker.addr);
    spec.edge_partitions = PARTITIONS;
    spec.threshold = 0.05;
    spec.extra_edge = extra_edge.to_string();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec.toml()).unwrap();
    let log = dir.join(format!("{name}.log"));
    let session = SESSION_MS.to_string();
    NodeProc::start_with(&path, "edge", spec.metrics_port, &log, &["--session-timeout-ms", &session]).expect(name)
}

/// Every assignment a node logged, in order: (generation, partitions).
fn assignments(node: &NodeProc) -> Vec<(i32, Vec<i32>)> {
    let re = regex::Regex::new(r"generation (\d+): assigned partitions \[([0-9, ]*)\]").unwrap();
    let text = node.log_text();
    re.captures_iter(&text)
        .filter_map(|caps| {
            let generation = caps[1].parse().ok()?;
            Some((generation, caps[2].split(',').filter_map(|p| p.trim().parse().ok()).collect()))
        })
        .collect()
}

/// A node's membership log lines (rejoins, assignments, revocations, release waits), for the
/// timeline a failover prints.
fn membership(node: &NodeProc) -> String {
    let keep = [
        "JoinGroup",
        "SyncGroup",
        "rejoin",
        "generation",
        "revoked",
        "released",
        "release",
        "plan does not name",
        "joining again",
    ];
    node.log_text().lines().filter(|l| keep.iter().any(|k| l.contains(k))).collect::<Vec<_>>().join("\n")
}

/// The JoinGroup calls of a node's last rebalance and the longest time the coordinator held one.
fn last_rebalance(node: &NodeProc) -> Option<(u32, Duration)> {
    let re = regex::Regex::new(r"(\d+) JoinGroup calls, the longest held (\d+) ms").unwrap();
    let text = node.log_text();
    let caps = re.captures_iter(&text).last()?;
    Some((caps[1].parse().ok()?, Duration::from_millis(caps[2].parse().ok()?)))
}

fn last_assignment(node: &NodeProc) -> Option<(i32, Vec<i32>)> {
    assignments(node).pop()
}

/// Waits until every node logged the same generation and their partitions are a disjoint cover
/// of the input: each partition owned by exactly one of them. Returns the shares.
fn wait_stable(nodes: &[&NodeProc], timeout: Duration) -> Result<Vec<Vec<i32>>, String> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = nodes.iter().map(|n| last_assignment(n)).collect::<Vec<_>>();
        if let Some(shares) = stable(&last) {
            return Ok(shares);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no stable assignment within {timeout:?}: {last:?}"))
}

fn stable(seen: &[Option<(i32, Vec<i32>)>]) -> Option<Vec<Vec<i32>>> {
    let seen: Vec<&(i32, Vec<i32>)> = seen.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let generation = seen.first()?.0;
    if seen.iter().any(|(g, _)| *g != generation) {
        return None;
    }
    let mut all: Vec<i32> = seen.iter().flat_map(|(_, p)| p.clone()).collect();
    all.sort_unstable();
    (all == (0..PARTITIONS).collect::<Vec<_>>()).then(|| seen.iter().map(|(_, p)| p.clone()).collect())
}

/// Sends `n` digits round-robin over the partitions, `per_s` per second; returns their keys
/// and partitions.
async fn send(addr: &str, n: usize, per_s: f64, tag: &str) -> Vec<(String, i32)> {
    let d = digits();
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, INPUT).await.expect("input topic");
    let start = Instant::now();
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("{tag}-{i}-{}", uuid::Uuid::new_v4());
        let p = (i % parts.len()) as i32;
        let rec = client::paper_record(&key, ddnn::wire::encode_paper_json(&d.pixels[i % d.pixels.len()]));
        parts[p as usize].produce(vec![rec], Default::default()).await.expect("produce");
        keys.push((key, p));
        let due = start + Duration::from_secs_f64((i + 1) as f64 / per_s);
        tokio::time::sleep_until(due.into()).await;
    }
    keys
}

/// How many exits each key got (keys with none are absent).
async fn answers(addr: &str, keys: &[(String, i32)], timeout: Duration) -> HashMap<String, usize> {
    let c = client::connect(&[addr.to_string()]).await.expect("connect");
    let parts = client::partitions(&c, "t.exits").await.expect("exits");
    let expected = keys.iter().map(|(k, _)| k.clone()).collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, timeout).await.unwrap();
    let mut count = HashMap::new();
    for s in seen.into_iter().filter(|s| expected.contains(&s.key)) {
        *count.entry(s.key).or_insert(0) += 1;
    }
    count
}

fn consumed(node: &NodeProc) -> f64 {
    node.metrics().ok().and_then(|b| metric(&b, "ddnn_messages_in_total", "tier=\"edge\"")).unwrap_or(0.0)
}

fn admin(args: &[&str]) -> serde_json::Value {
    let script = repo_root().join("nodes/node/tests/interop/group_admin.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run python (set DDNN_PYTHON to an interpreter with confluent-kafka; scripts/setup.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_then_three_instances_split_the_partitions_and_each_key_is_answered_once() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let a = instance(dir.path(), &broker, "a", "");
    let b = instance(dir.path(), &broker, "b", "");
    let shares = wait_stable(&[&a, &b], Duration::from_secs(60)).unwrap();
    println!("two instances: {shares:?}");
    assert_eq!(shares.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3], "range: 3 + 3");
    let mut keys = send(&broker.addr, 300, 300.0, "two").await;

    let c = instance(dir.path(), &broker, "c", "");
    let shares = wait_stable(&[&a, &b, &c], Duration::from_secs(60)).unwrap();
    println!("three instances: {shares:?}");
    assert!(shares.iter().all(|s| s.len() == 2), "2 + 2 + 2: {shares:?}");
    keys.extend(send(&broker.addr, 300, 300.0, "three").await);

    let count = answers(&broker.addr, &keys, Duration::from_secs(90)).await;
    let missing = keys.iter().filter(|(k, _)| !count.contains_key(k)).count();
    let twice: usize = count.values().map(|&c| c - 1).sum();
    assert_eq!((missing, twice), (0, 0), "every key answered exactly once");
    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        let work = consumed(n);
        println!("{name} consumed {work}");
        assert!(work > 0.0, "instance {name} did work; log:\n{}", n.log_text());
    }
    // Every input record was consumed by exactly one instance (a clean rebalance re-reads
    // nothing). Counters reach /metrics on the next scaler tick: give them a moment.
    let total = || consumed(&a) + consumed(&b) + consumed(&c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while total() < 600.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(total(), 600.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_moves_its_partitions_within_the_session_timeout_and_loses_nothing() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let a = instance(dir.path(), &broker, "a", "");
    let b = instance(dir.path(), &broker, "b", "");
    let mut c = instance(dir.path(), &broker, "c", "");
    let shares = wait_stable(&[&a, &b, &c], Duration::from_secs(60)).unwrap();
    let killed_share = shares[2].clone();

    let addr = broker.addr.clone();
    let sender = tokio::spawn(async move { send(&addr, 900, 100.0, "kill").await });
    // Kill c once it has done some of the work.
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumed(&c) < 30.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill9();
    let killed = Instant::now();
    println!("killed c at {}", humantime::format_rfc3339_millis(std::time::SystemTime::now()));
    let shares = wait_stable(&[&a, &b], Duration::from_secs(60)).unwrap_or_else(|e| {
        let broker_log = std::fs::read_to_string(broker.dir().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = broker_log
            .lines()
            .filter(|l| l.contains("heartbeat") || l.contains("leader") || l.contains("member"))
            .collect();
        panic!("{e}; a's log:\n{}\nb's log:\n{}\nbroker:\n{}", a.log_text(), b.log_text(), lines.join("\n"))
    });
    let moved = killed.elapsed();
    println!("after kill -9 the survivors own {shares:?}, {} ms after the kill", moved.as_millis());
    println!("a's membership:\n{}\nb's membership:\n{}", membership(&a), membership(&b));
    // The session timeout, then a survivor's next heartbeat (1 s) hears of it, then at most
    // three JoinGroup rounds (the join, one with new metadata where the coordinator kept the
    // generation, one after a SyncGroup that a dead leader never answers), each as long as the
    // coordinator holds it: tansu 0.6.0 holds a follower's JoinGroup for 3 s (PAUSE_MS in its
    // group coordinator), a broker that answers at once adds almost nothing.
    let (joins, held) = [&a, &b]
        .iter()
        .filter_map(|n| last_rebalance(n))
        .fold((0, Duration::ZERO), |acc, (j, h)| (acc.0.max(j), acc.1.max(h)));
    let bound = Duration::from_millis(SESSION_MS) + Duration::from_secs(2) + held * 3 + Duration::from_secs(2);
    println!(
        "the survivors' last rebalance: up to {joins} JoinGroup calls, the longest held {held:?}; bound {bound:?}"
    );
    assert!(joins <= 4, "a rebalance that needed {joins} JoinGroup calls:\n{}\n{}", membership(&a), membership(&b));
    assert!(moved < bound, "moved after {moved:?}, bound {bound:?}; a:\n{}\nb:\n{}", a.log_text(), b.log_text());

    let keys = sender.await.unwrap();
    let count = answers(&broker.addr, &keys, Duration::from_secs(120)).await;
    let missing: Vec<&String> = keys.iter().filter(|(k, _)| !count.contains_key(k)).map(|(k, _)| k).collect();
    assert!(missing.is_empty(), "{} keys lost: {:?}", missing.len(), &missing[..missing.len().min(5)]);
    let mut dups_by_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for (k, p) in &keys {
        if count[k] > 1 {
            *dups_by_partition.entry(*p).or_default() += count[k] - 1;
        }
    }
    let dups: usize = dups_by_partition.values().sum();
    // Polled: the counters are published on the scaler's tick.
    let replayed_now = || -> f64 {
        [&a, &b]
            .iter()
            .filter_map(|n| metric(&n.metrics().unwrap(), "ddnn_messages_replayed_total", "tier=\"edge\""))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut replayed = replayed_now();
    while replayed < dups as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        replayed = replayed_now();
    }
    println!("duplicates per partition {dups_by_partition:?}; replayed counted by the new owners: {replayed}");
    assert!(
        dups_by_partition.keys().all(|p| killed_share.contains(p)),
        "duplicates only from the killed instance's partitions {killed_share:?}: {dups_by_partition:?}"
    );
    assert!(dups as f64 <= replayed, "every duplicate is counted as replayed: {dups} duplicates, {replayed} replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_instance_joins_then_one_leaves_with_sigterm_without_loss_or_duplicates() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut a = instance(dir.path(), &broker, "a", "");
    let b = instance(dir.path(), &broker, "b", "");
    let c = instance(dir.path(), &broker, "c", "");
    wait_stable(&[&a, &b, &c], Duration::from_secs(60)).unwrap();

    let addr = broker.addr.clone();
    let sender = tokio::spawn(async move { send(&addr, 1200, 100.0, "churn").await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let joined = Instant::now();
    let d = instance(dir.path(), &broker, "d", "");
    let shares = wait_stable(&[&a, &b, &c, &d], Duration::from_secs(60)).unwrap();
    println!("four instances after {} ms: {shares:?}", joined.elapsed().as_millis());
    let first = Instant::now();
    let deadline = first + Duration::from_secs(30);
    while consumed(&d) == 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("the new instance processed its first record {} ms after it joined", joined.elapsed().as_millis());
    assert!(consumed(&d) > 0.0, "d took over work; log:\n{}", d.log_text());

    let status = a.terminate().unwrap();
    assert!(status.success(), "a drained and exited cleanly: {status}");
    let shares = wait_stable(&[&b, &c, &d], Duration::from_secs(60)).unwrap();
    println!("after a left: {shares:?}");
    assert!(a.log_text().contains("left the group"), "{}", a.log_text());

    let keys = sender.await.unwrap();
    let count = answers(&broker.addr, &keys, Duration::from_secs(120)).await;
    let missing = keys.iter().filter(|(k, _)| !count.contains_key(k)).count();
    let twice: usize = count.values().map(|&c| c - 1).sum();
    assert_eq!((missing, twice), (0, 0), "no loss and no duplicates through a join and a leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_client_reads_joins_and_moves_the_tiers_group() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut a = instance(dir.path(), &broker, "a", "");
    wait_stable(&[&a], Duration::from_secs(60)).unwrap();
    let keys = send(&broker.addr, 120, 500.0, "interop").await;
    assert_eq!(answers(&broker.addr, &keys, Duration::from_secs(60)).await.len(), 120);

    // A plain consumer with default settings joins ddnn.edge and is given a share.
    let n = PARTITIONS.to_string();
    let theirs = admin(&["join", &broker.addr, "ddnn.edge", INPUT, "60"]);
    let theirs: Vec<i32> = serde_json::from_value(theirs).unwrap();
    println!("the plain consumer was given {theirs:?}");
    assert!(!theirs.is_empty() && theirs.len() < PARTITIONS as usize, "{theirs:?}");
    // Meanwhile ddnn held exactly the rest.
    let shared = assignments(&a)
        .into_iter()
        .any(|(_, mine)| mine.len() + theirs.len() == PARTITIONS as usize && mine.iter().all(|p| !theirs.contains(p)));
    assert!(shared, "ddnn owned the other partitions: {:?}", assignments(&a));
    // It left again: ddnn owns everything once more.
    wait_stable(&[&a], Duration::from_secs(60)).unwrap();

    // After a drained stop, the AdminClient reads exactly what ddnn committed: every record.
    a.terminate().unwrap();
    let final_line = a.log_text().lines().rev().find(|l| l.contains("final offsets committed")).unwrap().to_string();
    let seen = admin(&["offsets", &broker.addr, "ddnn.edge", INPUT, &n]);
    println!("{seen}\n{final_line}");
    for p in 0..PARTITIONS {
        let committed = seen["committed"][p.to_string()].as_i64().unwrap();
        let hw = seen["high_watermarks"][p.to_string()].as_i64().unwrap();
        assert_eq!(committed, hw, "partition {p}: everything processed is committed");
        assert!(final_line.contains(&format!("{p}: {committed}")), "ddnn logged the same: {final_line}");
    }

    // Moved back by the standard tool while the tier is stopped: it resumes exactly there.
    let hw0 = seen["high_watermarks"]["0"].as_i64().unwrap();
    admin(&["alter", &broker.addr, "ddnn.edge", INPUT, "0", "5"]);
    let a2 = instance(dir.path(), &broker, "a", "");
    let want = (hw0 - 5) as f64;
    let got = a2.wait_metric("ddnn_messages_in_total", "tier=\"edge\"", Duration::from_secs(30), |v| v >= want);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(consumed(&a2), want, "re-read partition 0 from offset 5 only (got {got:?}); log:\n{}", a2.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_at_the_commits_and_a_new_group_follows_auto_offset_reset() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut a = instance(dir.path(), &broker, "a", "");
    wait_stable(&[&a], Duration::from_secs(60)).unwrap();
    let first = send(&broker.addr, 60, 500.0, "before").await;
    assert_eq!(answers(&broker.addr, &first, Duration::from_secs(60)).await.len(), 60);
    a.terminate().unwrap();
    // Sent while no instance runs: waiting in Kafka.
    let second = send(&broker.addr, 30, 500.0, "while-down").await;
    let a = instance(dir.path(), &broker, "a", "");
    let got = a.wait_metric("ddnn_messages_in_total", "tier=\"edge\"", Duration::from_secs(30), |v| v >= 30.0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(consumed(&a), 30.0, "exactly the records after the commits (saw {got:?})");
    let count =
        answers(&broker.addr, &first.iter().chain(&second).cloned().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    assert!(count.len() == 90 && count.values().all(|&c| c == 1), "each once: {} keys", count.len());

    // A group with no commits and `latest` skips what is already there.
    let late = instance(dir.path(), &broker, "late", "group = \"ddnn.edge.late\"\nauto_offset_reset = \"latest\"");
    wait_stable(&[&late], Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(consumed(&late), 0.0, "latest: the 90 records before it joined are not read");
    send(&broker.addr, 12, 500.0, "after").await;
    let got = late.wait_metric("ddnn_messages_in_total", "tier=\"edge\"", Duration::from_secs(30), |v| v >= 12.0);
    assert_eq!(got, Some(12.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_migrates_from_the_offsets_topic_once() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    // The input as an older release left it: 18 records in, partition 0 committed at 2 in
    // `__ddnn_offsets` (its other partitions never committed there).
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let controller = c.controller_client().unwrap();
    controller.create_topic(INPUT, PARTITIONS, 1, 5_000).await.unwrap();
    controller.create_topic("__ddnn_offsets", 1, 1, 5_000).await.unwrap();
    let keys = send(&broker.addr, 18, 500.0, "old").await;
    let legacy =
        c.partition_client("__ddnn_offsets", 0, rskafka::client::partition::UnknownTopicHandling::Retry).await.unwrap();
    let record = rskafka::record::Record {
        key: Some(format!("edge/{INPUT}/0").into_bytes()),
        value: Some(br#"{"offset":2,"fetched":2,"crashes":0,"clean":true}"#.to_vec()),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    legacy.produce(vec![record], Default::default()).await.unwrap();

    let mut a = instance(dir.path(), &broker, "a", "");
    // Partition 0 holds offsets 0..3 (every sixth key): 2 of them were done by the old release.
    let got = a.wait_metric("ddnn_messages_in_total", "tier=\"edge\"", Duration::from_secs(30), |v| v >= 16.0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(consumed(&a), 16.0, "partition 0 resumed at the old commit (saw {got:?}); log:\n{}", a.log_text());
    assert_eq!(a.log_text().matches("migration from an older release").count(), 1);
    let answered = answers(&broker.addr, &keys[2 * PARTITIONS as usize..], Duration::from_secs(30)).await;
    assert!(!answered.is_empty());
    a.terminate().unwrap();
    // From now on the group's commit is what counts: nothing is re-read, nothing migrated again.
    let a = instance(dir.path(), &broker, "a", "");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(consumed(&a), 0.0);
    // (The log file is appended to by the second run.)
    assert_eq!(a.log_text().matches("migration from an older release").count(), 1, "{}", a.log_text());
}
