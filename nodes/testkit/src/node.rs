//! `ddnn node` child processes: spawn, readiness on `/readyz`, metrics, SIGTERM/SIGKILL, peak RSS.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::http::{http_get, metric, scrape};

/// How to start one `ddnn node --topology T --tier N` process; stderr is appended to `log`,
/// `RUST_LOG` is `info,rskafka=warn`, or `$DDNN_TEST_RUST_LOG` (to see a test's nodes in detail).
pub struct NodeCmd {
    cmd: Command,
    bin: PathBuf,
    tier: String,
    metrics_port: u16,
    log: PathBuf,
}

impl NodeCmd {
    /// `bin`: the `ddnn` binary; `metrics_port`: the topology's `[metrics] listen` port.
    pub fn new(bin: impl AsRef<Path>, topology: &Path, tier: &str, metrics_port: u16, log: &Path) -> Self {
        let bin = bin.as_ref().to_path_buf();
        let mut cmd = Command::new(&bin);
        let filter = std::env::var("DDNN_TEST_RUST_LOG").unwrap_or_else(|_| "info,rskafka=warn".to_string());
        cmd.args(["node", "--topology"]).arg(topology).args(["--tier", tier]).env("RUST_LOG", filter);
        // The test broker (tansu) holds every fetch: its adaptive wait, as the README advises
        // there. A test that passes `--fetch-mode` gets that instead (the flag beats the
        // variable), as tests/blackhole.rs and tests/fetching.rs do for the default, `auto`.
        cmd.env("DDNN_FETCH_MODE", "adaptive");
        Self { cmd, bin, tier: tier.to_string(), metrics_port, log: log.to_path_buf() }
    }

    /// Extra command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(mut self) -> anyhow::Result<NodeProc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = self
            .cmd
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {} node", self.bin.display()))?;
        Ok(NodeProc { child, tier: self.tier, log: self.log, metrics_port: self.metrics_port })
    }

    /// Starts the process and waits until `/readyz` answers 200.
    pub fn start(self, timeout: Duration) -> anyhow::Result<NodeProc> {
        let mut node = self.spawn()?;
        node.wait_ready(timeout)?;
        Ok(node)
    }
}

/// A `ddnn node` child process, killed (by PID) on drop.
pub struct NodeProc {
    pub child: Child,
    pub tier: String,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl NodeProc {
    /// Polls `/readyz` until 200; fails early (with the log) if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("node {} exited early ({status}); log {}:\n{}", self.tier, self.log.display(), self.log_text());
            }
            if http_get(self.metrics_port, "/readyz").map(|(code, _)| code == 200).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("node {} not ready in {timeout:?}; log {}:\n{}", self.tier, self.log.display(), self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` body.
    pub fn metrics(&self) -> anyhow::Result<String> {
        scrape(self.metrics_port)
    }

    /// Polls /metrics until `pred` holds for the value of `name{labels}` or `timeout` passes;
    /// returns the last value seen.
    pub fn wait_metric(&self, name: &str, labels: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.metrics().ok().and_then(|b| metric(&b, name, labels));
            if last.is_some_and(&pred) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last
    }

    /// Peak resident memory so far (VmHWM), in KiB; `None` once the process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far (user + system), in seconds; `None` once the process is gone.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::cpu::process_seconds(self.child.id())
    }

    /// SIGKILL: no drain, no final commit.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to 30 s for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.terminate_within(Duration::from_secs(30))
    }

    /// SIGTERM, then wait up to `timeout` for the exit.
    pub fn terminate_within(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("node {} did not stop within {timeout:?} of SIGTERM", self.tier)
    }

    /// SIGTERM with a `timeout` deadline, SIGKILL after it: always leaves the process gone.
    pub fn stop(&mut self, timeout: Duration) {
        if self.terminate_within(timeout).is_err() {
            self.kill9();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::NodeCmd;

    /// `sh` stands in for ddnn: it ignores the node arguments' meaning but runs and takes SIGTERM.
    #[test]
    fn spawn_rss_and_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("n.log");
        let script = dir.path().join("fake");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write");
        let ok = std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
        assert!(ok.success());
        let mut node = NodeCmd::new(&script, dir.path(), "edge", crate::free_port(), &log).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(100));
        assert!(node.peak_rss_kib().is_some_and(|k| k > 0));
        assert!(node.wait_ready(Duration::from_millis(200)).is_err(), "nothing answers /readyz");
        let status = node.terminate_within(Duration::from_secs(5)).expect("stops on SIGTERM");
        assert!(!status.success());
    }
}
