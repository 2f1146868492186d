//! Prometheus metrics, recorded through the `metrics` facade (served by `super::http`).

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::stats::TierStats;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const GAUGE_IDLE: Duration = Duration::from_secs(10);

/// Installs the process-wide recorder (idempotent).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let latency = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
        let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        // Every gauge is set on each scaler tick; one not set for `GAUGE_IDLE` belongs to a
        // partition another instance owns now (or a tier that was removed): drop it.
        let builder = PrometheusBuilder::new()
            .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
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

/// The exit threshold in force (moved by the adaptive exit rule).
pub fn threshold(tier: &str, value: f32) {
    gauge!("ddnn_threshold", "tier" => tier.to_string()).set(f64::from(value));
}

/// One adaptive exit change.
pub fn exit_change(tier: &str, relaxed: bool) {
    let direction = if relaxed { "relax" } else { "tighten" };
    counter!("ddnn_exit_changes_total", "tier" => tier.to_string(), "direction" => direction).increment(1);
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
    c("ddnn_messages_skipped_total", stats.skipped.load(Ordering::Relaxed));
    c("ddnn_unreadable_batches_total", stats.unreadable_batches.load(Ordering::Relaxed));
    c("ddnn_produce_failures_total", stats.produce_failures.load(Ordering::Relaxed));
    c("ddnn_fetch_requests_total", stats.fetch_requests.load(Ordering::Relaxed));
    c("ddnn_end_offset_requests_total", stats.end_offset_requests.load(Ordering::Relaxed));
    c("ddnn_restarts_total", stats.restarts.load(Ordering::Relaxed));
    c("ddnn_cold_starts_total", stats.cold_starts.load(Ordering::Relaxed));
    gauge!("ddnn_cold_start_seconds", "tier" => t.clone())
        .set(stats.last_cold_start_us.load(Ordering::Relaxed) as f64 / 1e6);
    gauge!("ddnn_workers", "tier" => t.clone()).set(stats.workers_current.load(Ordering::Relaxed) as f64);
    gauge!("ddnn_workers_desired", "tier" => t.clone()).set(stats.workers_desired.load(Ordering::Relaxed) as f64);
    gauge!("ddnn_queue_depth", "tier" => t.clone()).set(queue_depth as f64);
    gauge!("ddnn_stalled", "tier" => t.clone()).set(stats.problems(std::time::Duration::ZERO).len() as f64);
    gauge!("ddnn_assigned_partitions", "tier" => t.clone())
        .set(stats.assigned_partitions.load(Ordering::Relaxed) as f64);
    c("ddnn_rebalances_total", stats.rebalances.load(Ordering::Relaxed));
    for (partition, lag) in lag {
        gauge!("ddnn_lag", "tier" => t.clone(), "partition" => partition.to_string()).set(*lag as f64);
    }
}
