//! Prometheus metrics (recorded through the `metrics` facade) and the HTTP endpoint serving
//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stats::TierStats;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (idempotent).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let latency = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
        let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("ddnn_batch_size".into()), &sizes));
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(e) => {
                tracing::warn!("metrics buckets rejected ({e}); using summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        handle
    })
}

pub fn batch_done(tier: &str, size: usize, took: Duration) {
    histogram!("ddnn_batch_size", "tier" => tier.to_string()).record(size as f64);
    histogram!("ddnn_inference_seconds", "tier" => tier.to_string()).record(took.as_secs_f64());
}

pub fn exit_latency(exit_tier: &str, ms: i64) {
    histogram!("ddnn_end_to_end_seconds", "exit_tier" => exit_tier.to_string()).record(ms.max(0) as f64 / 1000.0);
}

pub fn scale_event(tier: &str, up: bool) {
    let dir = if up { "up" } else { "down" };
    counter!("ddnn_scale_events_total", "tier" => tier.to_string(), "direction" => dir).increment(1);
}

/// Copies a tier's live counters into the recorder (called every scaler tick).
pub fn publish(tier: &str, stats: &TierStats, lag: &[(i32, i64)], queue_depth: usize) {
    let t = tier.to_string();
    let c = |name: &'static str, v: u64| counter!(name, "tier" => t.clone()).absolute(v);
    c("ddnn_messages_in_total", stats.consumed.load(Ordering::Relaxed));
    c("ddnn_messages_exited_total", stats.exited.load(Ordering::Relaxed));
    c("ddnn_messages_forwarded_total", stats.forwarded.load(Ordering::Relaxed));
    c("ddnn_messages_dead_lettered_total", stats.dead_lettered.load(Ordering::Relaxed));
    c("ddnn_messages_replayed_total", stats.replayed.load(Ordering::Relaxed));
    c("ddnn_restarts_total", stats.restarts.load(Ordering::Relaxed));
    c("ddnn_cold_starts_total", stats.cold_starts.load(Ordering::Relaxed));
    gauge!("ddnn_cold_start_seconds", "tier" => t.clone())
        .set(stats.last_cold_start_us.load(Ordering::Relaxed) as f64 / 1e6);
    gauge!("ddnn_workers", "tier" => t.clone()).set(stats.workers_current.load(Ordering::Relaxed) as f64);
    gauge!("ddnn_workers_desired", "tier" => t.clone()).set(stats.workers_desired.load(Ordering::Relaxed) as f64);
    gauge!("ddnn_queue_depth", "tier" => t.clone()).set(queue_depth as f64);
    for (partition, lag) in lag {
        gauge!("ddnn_lag", "tier" => t.clone(), "partition" => partition.to_string()).set(*lag as f64);
    }
}

/// Health of the node: unhealthy tiers (with the reason) and whether every tier is running.
pub trait Health: Send + Sync + 'static {
    fn unhealthy(&self) -> Vec<String>;
    fn ready(&self) -> bool;
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(addr: SocketAddr, health: Arc<dyn Health>) -> std::io::Result<()> {
    let handle = install();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("metrics on http://{addr}/metrics");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", handle.render()),
                "/healthz" => match health.unhealthy() {
                    v if v.is_empty() => ("200 OK", "ok\n".to_string()),
                    v => ("503 Service Unavailable", v.join("\n") + "\n"),
                },
                "/readyz" if health.ready() => ("200 OK", "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "starting\n".to_string()),
                _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
