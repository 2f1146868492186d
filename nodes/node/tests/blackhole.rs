#![allow(clippy::unwrap_used)]
//! A connection that dies without a reset. After a network cut (a host off its network and
//! back with a new address, a WAN proxy whose upstream vanished) a Kafka connection can stay
//! open while nothing comes back on it; rskafka 0.6 has no request timeout and no keepalive, so
//! a client that keeps such a connection waits forever. Here every connection the node has
//! made is frozen mid-run (kept open, carrying nothing more) while new connections work: the
//! node must notice through its own timeouts, connect afresh and answer every digit.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::node::{repo_root, NodeProc, TopoSpec};
use ddnn_testkit::{tansu_bin, Broker, BrokerOptions, SQLITE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of the broker whose connections can be frozen: a frozen connection
/// stays open but carries nothing more either way, not even a close; connections accepted
/// after the freeze work.
struct FreezingProxy {
    addr: String,
    epoch: Arc<AtomicU64>,
}

impl FreezingProxy {
    async fn bind() -> (FreezingProxy, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (FreezingProxy { addr, epoch: Arc::new(AtomicU64::new(0)) }, listener)
    }

    fn serve(&self, listener: TcpListener, upstream: String) {
        let epoch = Arc::clone(&self.epoch);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(&upstream).await else { continue };
                let born = epoch.load(Ordering::SeqCst);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, born, Arc::clone(&epoch)));
                tokio::spawn(pump(ur, dw, born, Arc::clone(&epoch)));
            }
        });
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    born: u64,
    epoch: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        let frozen = epoch.load(Ordering::SeqCst) > born;
        if n == 0 {
            if frozen {
                // A dead link does not pass the close on either: hold both halves open.
                std::future::pending::<()>().await;
            }
            let _ = to.shutdown().await;
            return;
        }
        if !frozen && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `ddnn demo` with `count` digits: whether every one was answered, and its report.
fn demo(topo: &Path, count: usize, timeout_s: u64) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddnn"))
        .args(["demo", "--topology"])
        .arg(topo)
        .arg("--digits")
        .arg(repo_root().join("models/heldout.bin"))
        .args(["--count", &count.to_string(), "--rate", "100", "--timeout-s", &timeout_s.to_string()])
        .env("ORT_DYLIB_PATH", common::node::ort_dylib())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connections_die_silently_reconnects_and_answers_every_digit() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, listener) = FreezingProxy::bind().await;
    // The broker advertises the proxy: every connection the node makes goes through it.
    let options = BrokerOptions { advertised: Some(proxy.addr.clone()), ..Default::default() };
    let broker = Broker::start_opts(&tansu_bin().unwrap(), SQLITE, options).await.unwrap();
    proxy.serve(listener, broker.addr.clone());

    let spec = TopoSpec::new(&proxy.addr);
    let topo = spec.write(dir.path());
    // The default fetch mode (the test harness otherwise picks `adaptive` for tansu): its long
    // polls once let a connection freeze hold a rebalance past the demo's deadline.
    let log = dir.path().join("node.log");
    let mut node = NodeProc::start_with(&topo, "all", spec.metrics_port, &log, &["--fetch-mode", "auto"]).unwrap();

    let t = topo.clone();
    let (ok, report) = tokio::task::spawn_blocking(move || demo(&t, 20, 60)).await.unwrap();
    assert!(ok, "before the freeze: {report}\nnode log:\n{}", node.log_text());

    proxy.freeze();
    // The node's fetches time out after 5 s (plus their wait), and every older connection to
    // the cluster is then replaced before its next request; the demo's own connections are
    // new, so they work.
    let t = topo.clone();
    // 60 s: about one fetch deadline plus reconnects is what it takes (p99 6 s here); finding
    // each dead connection through its own timeout took over 150 s along the tiers.
    let (ok, report) = tokio::task::spawn_blocking(move || demo(&t, 30, 60)).await.unwrap();
    let log = node.log_text();
    assert!(ok, "after the freeze: {report}\nnode log:\n{log}");
    assert!(log.contains("fetch timed out: reconnected"), "no fetch reconnected:\n{log}");
    // A producer learns of the dead link from its own 30 s timeout, or sooner from the fetch
    // loops' (`kafka::suspect`); either way it must have connected afresh.
    assert!(
        log.contains("produce timed out: reconnected")
            || log.contains("produce: a request to this cluster timed out since this connection was made: reconnected"),
        "no producer reconnected:\n{log}"
    );
    println!("after the freeze: {}", report.lines().find(|l| l.starts_with("summary:")).unwrap_or(&report));
    node.stop(Duration::from_secs(10));
    drop(broker);
}
