#![allow(clippy::unwrap_used)]
//! Supervision and steering on a real broker: retries and dead letters after repeated
//! inference failures, health that says why, structural reloads (SIGHUP) including an
//! unreachable cluster, an invalid topic name and a removed tier, and two clusters.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{free_port, http_get, repo_root, NodeProc, TopoSpec};
use common::Broker;
use ddnn::client::{self, Digits};

fn records(n: usize, from: usize) -> Vec<rskafka::record::Record> {
    let d = Digits::load(&repo_root().join("models/heldout.bin")).unwrap();
    (from..from + n)
        .map(|i| {
            client::paper_record(
                &uuid::Uuid::new_v4().to_string(),
                ddnn::wire::encode_paper_json(&d.pixels[i % d.len()]),
            )
        })
        .collect()
}

async fn send(addr: &str, topic: &str, recs: &[rskafka::record::Record]) -> Vec<String> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, topic).await.unwrap();
    for (i, r) in recs.iter().enumerate() {
        parts[i % parts.len()].produce(vec![r.clone()], Default::default()).await.unwrap();
    }
    recs.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect()
}

async fn answered(addr: &str, topic: &str, keys: &[String], timeout: Duration) -> HashSet<String> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let parts = client::partitions(&c, topic).await.unwrap();
    let expected: HashSet<String> = keys.iter().cloned().collect();
    let seen = client::collect_exits(&parts, &vec![0; parts.len()], &expected, timeout).await.unwrap();
    seen.into_iter().map(|s| s.key).filter(|k| expected.contains(k)).collect()
}

async fn dlq_errors(addr: &str) -> Vec<(String, String)> {
    let c = client::connect(&[addr.to_string()]).await.unwrap();
    let mut out = Vec::new();
    for pc in client::partitions(&c, "t.dlq").await.unwrap() {
        for r in ddnn::kafka::read_to_end(&pc, 0).await.unwrap() {
            let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned();
            let err =
                String::from_utf8_lossy(r.record.headers.get("x-ddnn-error").map(Vec::as_slice).unwrap_or_default())
                    .into_owned();
            out.push((key, err));
        }
    }
    out
}

fn wait_log(node: &NodeProc, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if node.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn hangup(node: &NodeProc) {
    Command::new("kill").args(["-HUP", &node.child.id().to_string()]).status().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_three_times_is_dead_lettered_and_five_failures_make_the_tier_unhealthy() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = TopoSpec::new(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start_with(
        &topo,
        "all",
        spec.metrics_port,
        &dir.path().join("n.log"),
        &["--fail-batches", "edge=1000"],
    )
    .expect("node");
    assert_eq!(http_get(spec.metrics_port, "/healthz").unwrap(), (200, "ok\n".to_string()));
    let mut sent = Vec::new();
    for i in 0..2 {
        let key = send(&broker.addr, "t.edge.input", &records(1, i)).await.remove(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dlq_errors(&broker.addr).await.iter().any(|(k, _)| k == &key) {
            assert!(Instant::now() < deadline, "not dead-lettered; log:\n{}", node.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent.push(key);
    }
    let dlq = dlq_errors(&broker.addr).await;
    for key in &sent {
        let (_, why) = dlq.iter().find(|(k, _)| k == key).unwrap();
        assert_eq!(why, "inference failed 3 times: injected fault");
    }
    // Six failed attempts in a row (3 per record): unhealthy, and /healthz says why.
    let (code, body) = http_get(spec.metrics_port, "/healthz").unwrap();
    assert_eq!(code, 503);
    assert!(body.starts_with("tier edge: ") && body.contains("consecutive inference failures"), "{body}");
    let restarts = node.wait_metric("ddnn_restarts_total", "tier=\"edge\"", Duration::from_secs(5), |v| v >= 6.0);
    assert!(restarts.is_some_and(|v| v >= 6.0), "{restarts:?}");
}

/// The test topology with thresholds that make the edge answer everything.
fn base(broker: &str) -> TopoSpec {
    let mut spec = TopoSpec::new(broker);
    spec.threshold = 0.05;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structural_reloads_by_sighup_never_stall_the_other_tiers() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = base(&broker.addr);
    let topo = spec.write(dir.path());
    let mut node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let good = spec.toml();

    // 1. The cloud tier moves to a cluster nobody answers on: fog (which forwards to it) and
    //    cloud restart and wait; the edge keeps serving and the node keeps ticking.
    let far = format!("[clusters.far]\nbrokers = [\"127.0.0.1:{}\"]\n\n[[tiers]]\nname = \"edge\"", free_port());
    let unreachable = good
        .replacen("[[tiers]]\nname = \"edge\"", &far, 1)
        .replace("cluster = \"local\", topic = \"t.cloud.input\"", "cluster = \"far\", topic = \"t.cloud.input\"");
    std::fs::write(&topo, &unreachable).unwrap();
    hangup(&node);
    assert!(wait_log(&node, "structural change: restarting the tier", Duration::from_secs(10)), "{}", node.log_text());
    let keys = send(&broker.addr, "t.edge.input", &records(50, 0)).await;
    assert_eq!(answered(&broker.addr, "t.exits", &keys, Duration::from_secs(60)).await.len(), 50);
    let exited =
        node.wait_metric("ddnn_messages_exited_total", "tier=\"edge\"", Duration::from_secs(10), |v| v >= 50.0);
    assert_eq!(exited, Some(50.0), "the node loop keeps publishing while a tier waits for its cluster");
    let (code, why) = http_get(spec.metrics_port, "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(why.contains("tier cloud: starting (waiting for its clusters)"), "{why}");

    // 2. An invalid topic name is rejected; the node keeps running what it had.
    std::fs::write(&topo, unreachable.replace("topic = \"t.cloud.input\"", "topic = \"a b\"")).unwrap();
    hangup(&node);
    assert!(
        wait_log(&node, "tiers[2].input.topic: \"a b\" is not a valid Kafka topic name", Duration::from_secs(10)),
        "{}",
        node.log_text()
    );

    // 3. Remove the cloud tier (fog becomes the last): cloud stops, fog comes back on `local`.
    let cut = good.find("[[tiers]]\nname = \"cloud\"").unwrap();
    let tail = good.find("[dead_letter]").unwrap();
    let two_tiers = format!("{}{}", &good[..cut], &good[tail..]).replace("next = \"cloud\"\n", "");
    std::fs::write(&topo, two_tiers).unwrap();
    hangup(&node);
    assert!(
        wait_log(&node, "tier removed from the topology: stopping it", Duration::from_secs(10)),
        "{}",
        node.log_text()
    );
    node.wait_ready(Duration::from_secs(30)).expect("ready with edge and fog");
    let keys = send(&broker.addr, "t.edge.input", &records(20, 50)).await;
    assert_eq!(answered(&broker.addr, "t.exits", &keys, Duration::from_secs(60)).await.len(), 20);

    // 4. Add the cloud tier back: it starts.
    std::fs::write(&topo, &good).unwrap();
    hangup(&node);
    assert!(wait_log(&node, "tier added to the topology: starting it", Duration::from_secs(10)), "{}", node.log_text());
    node.wait_ready(Duration::from_secs(30)).expect("ready with three tiers");
    assert_eq!(http_get(spec.metrics_port, "/healthz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_forward_between_brokers() {
    let a = Broker::start().await.expect("broker a");
    let b = Broker::start().await.expect("broker b");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopoSpec::new(&a.addr);
    spec.threshold = 0.999; // most digits go past the edge, onto the other cluster
    let toml = spec
        .toml()
        .replace(
            "[[tiers]]\nname = \"edge\"",
            &format!("[clusters.remote]\nbrokers = [\"{}\"]\n\n[[tiers]]\nname = \"edge\"", b.addr),
        )
        .replace("cluster = \"local\", topic = \"t.fog.input\"", "cluster = \"remote\", topic = \"t.fog.input\"")
        .replace("cluster = \"local\", topic = \"t.cloud.input\"", "cluster = \"remote\", topic = \"t.cloud.input\"");
    // Fog and cloud exit on the remote cluster; the edge exits locally.
    let fog_at = toml.find("name = \"fog\"").unwrap();
    let toml = format!(
        "{}{}",
        &toml[..fog_at],
        toml[fog_at..].replace("exits = { cluster = \"local\"", "exits = { cluster = \"remote\"")
    );
    let topo = dir.path().join("two.toml");
    std::fs::write(&topo, toml).unwrap();
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let keys = send(&a.addr, "t.edge.input", &records(100, 0)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (local, remote) = loop {
        let local = answered(&a.addr, "t.exits", &keys, Duration::from_secs(1)).await;
        let remote = answered(&b.addr, "t.exits", &keys, Duration::from_secs(1)).await;
        if local.union(&remote).count() == keys.len() || Instant::now() > deadline {
            break (local, remote);
        }
    };
    println!("edge exits on cluster a: {}, fog/cloud exits on cluster b: {}", local.len(), remote.len());
    assert!(!remote.is_empty(), "records crossed to the other cluster; log:\n{}", node.log_text());
    assert_eq!(local.union(&remote).count(), 100, "every key answered once across both clusters");
    assert!(local.is_disjoint(&remote));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_shows_in_health_within_seconds_then_heals() {
    // (A deleted output topic would be the other classic stall, but tansu 0.6.0 drops every
    // connection once a topic in use is deleted; the produce error classes are unit-tested.)
    let mut broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = base(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    broker.stop();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    // The group's heartbeats may notice first; the fetch stall must be named too.
    let (code, body) = loop {
        let (code, body) = http_get(spec.metrics_port, "/healthz").unwrap();
        if (code != 200 && body.contains("cannot fetch")) || Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("unhealthy {:?} after the broker went away: {body}", t0.elapsed());
    assert_eq!(code, 503, "log:\n{}", node.log_text());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "within seconds (fetch timeout 5 s + 2 s grace): {:?}",
        t0.elapsed()
    );
    assert!(body.contains("tier edge: cannot fetch from t.edge.input/0"), "{body}");
    let (ready, why) = http_get(spec.metrics_port, "/readyz").unwrap();
    assert_eq!(ready, 503);
    assert!(why.contains("cannot fetch"), "{why}");
    let stalled = node.wait_metric("ddnn_stalled", "tier=\"edge\"", Duration::from_secs(5), |v| v >= 1.0);
    assert!(stalled.is_some_and(|v| v >= 1.0), "{stalled:?}");
    let warnings = node.log_text().matches("fetch failed").count();
    assert!(warnings <= 4, "one warning per partition loop, not one per retry: {warnings}");

    broker.restart().await.expect("broker back");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(spec.metrics_port, "/healthz").unwrap().0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(spec.metrics_port, "/healthz").unwrap(), (200, "ok\n".to_string()), "healed");
    assert!(node.log_text().contains("fetching again"));
    let keys = send(&broker.addr, "t.edge.input", &records(10, 0)).await;
    assert_eq!(answered(&broker.addr, "t.exits", &keys, Duration::from_secs(60)).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_tick_edit_applies_live() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let spec = base(&broker.addr);
    let topo = spec.write(dir.path());
    let node = NodeProc::start(&topo, "all", spec.metrics_port, &dir.path().join("n.log")).expect("node");
    let edited = spec.toml().replacen(
        "batch = { max = 16, max_delay = \"1ms\" }",
        "batch = { max = 16, max_delay = \"1ms\" }\nscaler = { tick = \"100ms\" }",
        1,
    );
    std::fs::write(&topo, edited).unwrap();
    hangup(&node);
    assert!(wait_log(&node, "scaler tick now 100ms", Duration::from_secs(10)), "{}", node.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_held_to_the_tiers_byte_budget() {
    let broker = Broker::start().await.expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = base(&broker.addr);
    spec.edge_partitions = 1;
    let topo = spec.write(dir.path());
    // The pool stalls for ~13 s (seven failed batches, backing off 0.1 s doubling to 6.4 s),
    // far longer than producing and sampling take even on a loaded machine; the budget admits
    // two 50 KB records at a time.
    let extra = ["--fail-batches", "edge=7", "--queue-bytes", "120000"];
    let node = NodeProc::start_with(&topo, "all", spec.metrics_port, &dir.path().join("n.log"), &extra).expect("node");
    let c = client::connect(std::slice::from_ref(&broker.addr)).await.unwrap();
    let part = client::partitions(&c, "t.edge.input").await.unwrap().remove(0);
    for i in 0..40 {
        let rec = rskafka::record::Record {
            key: Some(format!("big-{i}").into_bytes()),
            value: Some(vec![b'x'; 50_000]),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        part.produce(vec![rec], Default::default()).await.unwrap();
    }
    let mut most = 0.0f64;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Some(v) =
            node.metrics().ok().and_then(|b| common::node::metric(&b, "ddnn_messages_in_total", "tier=\"edge\""))
        {
            most = most.max(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("records handed to the stalled pool: at most {most}");
    assert!(most >= 1.0, "the consumer did start");
    assert!(most <= 4.0, "held to the byte budget while the pool is stalled (the channel alone would take 64): {most}");
    let done =
        node.wait_metric("ddnn_messages_dead_lettered_total", "tier=\"edge\"", Duration::from_secs(60), |v| v >= 40.0);
    assert_eq!(done, Some(40.0), "every record went through once the pool recovered (not JSON: dead-lettered)");
}
