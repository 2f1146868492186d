//! A tansu broker child process with its data in a temp dir, killed (by PID) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Durable storage in the broker's temp dir.
pub const SQLITE: &str = "sqlite://tansu.db";

/// The tansu binary: `$TANSU_BIN`, else `~/.cache/ddnn/tansu/bin/tansu` (scripts/setup.sh).
pub fn tansu_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("TANSU_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var("HOME").context("HOME")?).join(".cache/ddnn/tansu/bin/tansu"),
    };
    if !path.is_file() {
        bail!("tansu not found at {} (run scripts/setup.sh or set TANSU_BIN)", path.display());
    }
    Ok(path)
}

/// A tansu broker on a free loopback port; its log is `broker.log` in its temp dir.
pub struct Broker {
    pub addr: String,
    port: u16,
    tansu: PathBuf,
    storage: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Broker {
    /// `tansu_bin()` with durable sqlite storage.
    pub async fn start() -> anyhow::Result<Broker> {
        Self::start_with(&tansu_bin()?, SQLITE).await
    }

    /// `storage`: tansu's engine, e.g. `SQLITE` (durable) or `memory://tansu/`. Returns once a
    /// Kafka client can list topics.
    pub async fn start_with(tansu: &Path, storage: &str) -> anyhow::Result<Broker> {
        let port = crate::free_port();
        let mut b = Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            tansu: tansu.to_path_buf(),
            storage: storage.to_string(),
            child: None,
            dir: tempfile::tempdir()?,
        };
        b.spawn().await?;
        Ok(b)
    }

    /// The broker's working dir (its data and `broker.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("broker.log"))?;
        let child = Command::new(&self.tansu)
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.tansu.display()))?;
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

    /// SIGKILL (an outage, not a drain).
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
