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

/// How to run a tansu broker beyond its defaults (secured-cluster tests).
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// The address advertised in metadata instead of the listener's (a TLS terminator in
    /// front of the broker: tansu 0.6.0 itself serves plaintext only).
    pub advertised: Option<String>,
    /// SCRAM users `(mechanism, name, password)` created before the broker starts requiring
    /// SASL (`--authentication`); mechanism is tansu's `scram256` or `scram512`. Needs durable
    /// storage (the broker is restarted on its data once the users exist).
    pub scram_users: Vec<(String, String, String)>,
    /// Start with `--authentication` (clients must authenticate with SASL).
    pub authentication: bool,
}

/// A tansu broker on a free loopback port; its log is `broker.log` in its temp dir.
pub struct Broker {
    pub addr: String,
    port: u16,
    tansu: PathBuf,
    storage: String,
    options: BrokerOptions,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Broker {
    /// `tansu_bin()` with durable sqlite storage.
    pub async fn start() -> anyhow::Result<Broker> {
        Self::start_with(&tansu_bin()?, SQLITE).await
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `storage`: tansu's engine, e.g. `SQLITE` (durable) or `memory://tansu/`. Returns once a
    /// Kafka client can list topics.
    pub async fn start_with(tansu: &Path, storage: &str) -> anyhow::Result<Broker> {
        Self::start_opts(tansu, storage, BrokerOptions::default()).await
    }

    /// A broker with `options`: users are created on a plaintext start, then the broker is
    /// restarted on the same data with the options' authentication and advertised address.
    pub async fn start_opts(tansu: &Path, storage: &str, options: BrokerOptions) -> anyhow::Result<Broker> {
        let port = crate::free_port();
        let mut b = Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            tansu: tansu.to_path_buf(),
            storage: storage.to_string(),
            options: BrokerOptions::default(),
            child: None,
            dir: tempfile::tempdir()?,
        };
        b.spawn().await?;
        if options.scram_users.is_empty() && options.advertised.is_none() && !options.authentication {
            return Ok(b);
        }
        for (mechanism, name, password) in &options.scram_users {
            let out = Command::new(&b.tansu)
                .current_dir(b.dir.path())
                .args(["user", "create", "--broker", &format!("tcp://{}", b.addr), "--mechanism", mechanism])
                // SCRAM's minimum (RFC 7677): key derivation dominates a debug build's connect.
                .args(["--iterations", "4096"])
                .args([name, password])
                .output()
                .context("running tansu user create")?;
            if !out.status.success() {
                bail!("tansu user create {name}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        b.options = options;
        b.restart().await?;
        Ok(b)
    }

    /// A sqlite broker that requires SASL, with these SCRAM users: (mechanism as tansu names
    /// it, e.g. `scram256`, user, password).
    pub async fn start_scram(users: &[(&str, &str, &str)]) -> anyhow::Result<Broker> {
        let scram_users = users.iter().map(|(m, u, p)| (m.to_string(), u.to_string(), p.to_string())).collect();
        let options = BrokerOptions { scram_users, authentication: true, ..Default::default() };
        Self::start_opts(&tansu_bin()?, SQLITE, options).await
    }

    /// The broker's working dir (its data and `broker.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.options.advertised.as_ref().map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("broker.log"))?;
        let mut cmd = Command::new(&self.tansu);
        cmd.current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", &self.storage]);
        if self.options.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.tansu.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        if self.options.authentication || self.options.advertised.is_some() {
            // A plaintext client without credentials cannot list topics here (or is sent to
            // the advertised terminator): an accepting listener is the readiness signal.
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(&self.addr).is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bail!("broker on {} not listening in 30 s", self.addr);
        }
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
