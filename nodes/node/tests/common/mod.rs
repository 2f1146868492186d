#![allow(clippy::unwrap_used)]
//! Helpers for integration tests: a real tansu broker per test (free port, temp dir, killed by
//! PID on drop) and `ddnn node` child processes (`node`).

#![allow(dead_code)]

pub mod node;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn tansu_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("TANSU_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var("HOME").context("HOME")?).join(".cache/ddnn/tansu/bin/tansu"),
    };
    if !path.is_file() {
        bail!("tansu not found at {} (run scripts/setup.sh or set TANSU_BIN)", path.display());
    }
    Ok(path)
}

/// A tansu broker with durable sqlite storage in a temp dir.
pub struct Broker {
    pub addr: String,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Broker {
    pub async fn start() -> anyhow::Result<Broker> {
        let port = node::free_port();
        let mut b = Broker { addr: format!("127.0.0.1:{port}"), port, child: None, dir: tempfile::tempdir()? };
        b.spawn().await?;
        Ok(b)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("broker.log"))?;
        let child = Command::new(tansu_bin()?)
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = async {
                let c = rskafka::client::ClientBuilder::new(vec![self.addr.clone()]).build().await.ok()?;
                c.list_topics().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), ready).await.ok().flatten().is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("broker on {} not ready in 30 s", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port and data (durability, outages).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
