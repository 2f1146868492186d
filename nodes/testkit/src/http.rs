//! Loopback HTTP GET and Prometheus text parsing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

/// Minimal HTTP GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("bad HTTP response")?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The `/metrics` body on `port` (an error unless it answers 200).
pub fn scrape(port: u16) -> anyhow::Result<String> {
    let (code, body) = http_get(port, "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(body)
}

/// Value of a Prometheus sample `name{labels}` from a /metrics body (labels must match exactly
/// as rendered, e.g. `tier="edge"`; empty for none).
pub fn metric(body: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    body.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == want).then(|| v.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn parses_samples() {
        let body = "# HELP ddnn_workers workers\n# TYPE ddnn_workers gauge\nddnn_workers{tier=\"edge\"} 2\n\
                    ddnn_workers{tier=\"fog\"} 1\nddnn_up 1\n";
        assert_eq!(metric(body, "ddnn_workers", "tier=\"edge\""), Some(2.0));
        assert_eq!(metric(body, "ddnn_workers", "tier=\"fog\""), Some(1.0));
        assert_eq!(metric(body, "ddnn_up", ""), Some(1.0));
        assert_eq!(metric(body, "ddnn_workers", "tier=\"cloud\""), None);
        assert_eq!(metric(body, "ddnn_workers", ""), None);
    }
}
