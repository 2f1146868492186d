//! Throwaway certificates (openssl CLI) and a TLS terminator (stunnel) in front of a broker:
//! tansu 0.6.0 accepts `--cert`/`--key` but serves plaintext (see README "Secured clusters").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate it signed, and
/// a second, unrelated CA (for "unknown CA" tests). PEM files in `dir`.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Pki {
    /// Generates everything in `dir` (P-256 keys, valid for two days).
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for (name, cn) in [("ca", "ddnn test CA"), ("other-ca", "unrelated CA")] {
            let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            openssl(dir, &args)?;
        }
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, cn) in [("server", "localhost"), ("client", "ddnn-node")] {
            let (key, csr, pem, ext, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &args)?;
            openssl(
                dir,
                &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem]
                    .into_iter()
                    .chain(["-days", "2", "-extfile", &ext])
                    .collect::<Vec<_>>(),
            )?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
        })
    }
}

/// The stunnel binary: `$STUNNEL_BIN`, else `stunnel4` or `stunnel` on PATH (Debian's
/// `stunnel4` package).
pub fn stunnel_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("STUNNEL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["stunnel4", "stunnel"] {
            if dir.join(name).is_file() {
                return Ok(dir.join(name));
            }
        }
    }
    bail!("stunnel not found (apt-get install stunnel4, or set STUNNEL_BIN)")
}

/// stunnel accepting TLS on a free loopback port and forwarding plaintext to `backend`; killed
/// (by PID) on drop. Its log is `stunnel.log` in its temp dir.
pub struct TlsTerminator {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsTerminator {
    /// `port`: where to accept (the broker must advertise it); `client_certs`: require a client
    /// certificate signed by the PKI's CA (mutual TLS).
    pub fn start(pki: &Pki, port: u16, backend: &str, client_certs: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let verify = if client_certs {
            format!("CAfile = {}\nverifyChain = yes\nrequireCert = yes\n", pki.ca.display())
        } else {
            String::new()
        };
        let conf = format!(
            "foreground = yes\npid =\ndebug = 5\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = {backend}\n\
             cert = {}\nkey = {}\n{verify}",
            pki.server_cert.display(),
            pki.server_key.display()
        );
        let conf_path = dir.path().join("stunnel.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.path().join("stunnel.log"))?;
        let child = Command::new(stunnel_bin()?)
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting stunnel")?;
        let t = TlsTerminator { addr: format!("127.0.0.1:{port}"), child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&t.addr).is_ok() {
                return Ok(t);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("stunnel not listening on {} in 10 s: {}", t.addr, t.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
