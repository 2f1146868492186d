//! `ddnn-bench`: replays the paper's workload (and a ramp and a burst) against ddnn tiers it
//! starts itself, in several modes on the same data, each on a fresh broker of the same kind,
//! and reports with plots.

mod cluster;
mod report;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use cluster::{Launch, Mode, System, Tuning};
use ddnn::client::{self, Digits};
use ddnn_testkit::NodeProc;
use report::{ModeSummary, Row, WorkerSample};
use workload::{Collector, Sent};

#[derive(Parser)]
#[command(name = "ddnn-bench", about = "Benchmark ddnn against a fixed pool and a null relay")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Modes to compare, in order: elastic, fixed (one worker, no batching), fixed-1 / fixed-max
    /// (one / the maximum workers, batching as configured), adaptive (elastic plus adaptive
    /// exits), relay.
    #[arg(long, global = true, value_delimiter = ',', default_value = "elastic,fixed,relay")]
    modes: Vec<String>,
    /// Base topology (topics, thresholds, worker bounds); the bench rewrites topics per mode.
    #[arg(long, global = true, default_value = "topology/local.toml")]
    topology: PathBuf,
    /// Model set under models/ (mnist, mnist-cnn or mnist-resnet).
    #[arg(long, global = true, default_value = "mnist")]
    models: String,
    #[arg(long, global = true, default_value = "models/heldout.bin")]
    digits: PathBuf,
    /// Output folder.
    #[arg(long, global = true, default_value = "bench/out")]
    out: PathBuf,
    /// The ddnn binary (default: next to this one).
    #[arg(long, global = true)]
    ddnn_bin: Option<PathBuf>,
    /// The tansu broker binary (default: $TANSU_BIN or ~/.cache/ddnn/tansu/bin/tansu).
    #[arg(long, global = true)]
    tansu_bin: Option<PathBuf>,
    /// tansu storage engine: durable `sqlite://tansu.db`, or `memory://tansu/` to take the
    /// broker's storage cost out of the measurement.
    #[arg(long, global = true, default_value = "sqlite://tansu.db")]
    broker_storage: String,
    /// Run every mode on one broker (each on the data of the modes before it) instead of a
    /// fresh broker per mode.
    #[arg(long, global = true)]
    shared_broker: bool,
    /// Base exit thresholds, e.g. `edge=0.99,fog=0.99` (default: the topology's).
    #[arg(long, global = true, value_delimiter = ',')]
    thresholds: Vec<String>,
    /// Extra `ddnn node` arguments for every tier process, e.g. `--node-arg=--fetch-mode=adaptive`.
    #[arg(long, global = true, allow_hyphen_values = true)]
    node_arg: Vec<String>,
    /// CPU limits per tier process in cores, e.g. `fog=0.1` (a cgroup; needs root).
    #[arg(long, global = true, value_delimiter = ',')]
    cpu_limit: Vec<String>,
    /// `adaptive` mode: the p99 target of every tier with a next tier.
    #[arg(long, global = true, default_value = "200ms")]
    p99_target: String,
    /// `adaptive` mode: the end-to-end accuracy floor.
    #[arg(long, global = true, default_value_t = 0.97)]
    accuracy_floor: f64,
}

impl Cli {
    fn tuning(&self) -> anyhow::Result<Tuning> {
        let pairs = |flag: &str, list: &[String]| -> anyhow::Result<BTreeMap<String, f64>> {
            let mut out = BTreeMap::new();
            for kv in list {
                let (k, v) = kv.split_once('=').with_context(|| format!("{flag}: {kv:?} is not TIER=VALUE"))?;
                let v: f64 = v.parse().with_context(|| format!("{flag}: {v:?} is not a number"))?;
                out.insert(k.to_string(), v);
            }
            Ok(out)
        };
        Ok(Tuning {
            thresholds: pairs("--thresholds", &self.thresholds)?,
            cpu_limits: pairs("--cpu-limit", &self.cpu_limit)?,
            node_args: self.node_arg.clone(),
            p99_target: self.p99_target.clone(),
            accuracy_floor: self.accuracy_floor,
        })
    }
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// The paper's clients: 4 stages of 100 messages at 1, 2, 3, 4 msg/s each, N in parallel.
    Paper {
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Run F times faster than the paper (1 = the real 208 s schedule).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
    },
    /// Open-loop rate rising step by step until the exits fall behind: saturation throughput.
    Ramp {
        #[arg(long, default_value_t = 500.0)]
        start: f64,
        #[arg(long, default_value_t = 500.0)]
        step: f64,
        #[arg(long, default_value_t = 5.0)]
        step_secs: f64,
        #[arg(long, default_value_t = 20000.0)]
        max: f64,
    },
    /// Open loop at a constant rate for a while (e.g. 1.5x one worker's capacity).
    Constant {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
    },
    /// Idle, a burst of K messages, idle: shows scale-up and scale-down.
    Burst {
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 3.0)]
        idle_secs: f64,
        /// Idle time after the burst was answered (to watch the scale-down).
        #[arg(long, default_value_t = 8.0)]
        after_secs: f64,
    },
}

/// Copies the mode's node logs (`MODE-TIER.log` in the scratch folder) to `OUT/logs/`.
fn keep_logs(scratch: &std::path::Path, out: &std::path::Path, mode: &str) -> std::io::Result<Vec<String>> {
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(scratch)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if name.starts_with(&format!("{mode}-")) && name.ends_with(".log") {
            std::fs::copy(&path, logs.join(&name))?;
            kept.push(logs.join(&name).display().to_string());
        }
    }
    kept.sort();
    Ok(kept)
}

/// A mode whose digits were not all answered: keeps what says where they are (the scratch
/// folder, with the nodes' logs, goes at exit): the logs, each tier's metrics as they stand
/// (lag, queue, counters), and the first unanswered keys.
fn keep_evidence(
    out: &std::path::Path,
    scratch: &std::path::Path,
    mode: &str,
    tiers: &[NodeProc],
    missing: &[&Sent],
    start_ms: f64,
) {
    match keep_logs(scratch, out, mode) {
        Ok(kept) => eprintln!("{mode}: node logs kept: {}", kept.join(", ")),
        Err(e) => eprintln!("{mode}: could not keep the node logs: {e}"),
    }
    for t in tiers {
        let path = out.join("logs").join(format!("{mode}-{}.metrics", t.tier));
        match ddnn_testkit::scrape(t.metrics_port).map(|body| std::fs::write(&path, body)) {
            Ok(Ok(())) => eprintln!("{mode}: {}'s metrics kept: {}", t.tier, path.display()),
            Ok(Err(e)) => eprintln!("{mode}: could not write {}: {e}", path.display()),
            Err(e) => eprintln!("{mode}: could not scrape {}'s metrics: {e}", t.tier),
        }
    }
    for s in missing.iter().take(10) {
        eprintln!("{mode}: unanswered: key {} sent at {:.1} s", s.key, (s.send_ms - start_ms) / 1000.0);
    }
}

/// CPU seconds used outside the tiers: the broker, this bench, and the machine as a whole.
#[derive(Debug, Clone, Copy)]
struct OutsideCpu {
    broker: Option<f64>,
    bench: Option<f64>,
    machine: ddnn_testkit::cpu::MachineCpu,
}

impl OutsideCpu {
    fn read(broker_pid: Option<u32>) -> Option<OutsideCpu> {
        Some(OutsideCpu {
            broker: broker_pid.and_then(ddnn_testkit::cpu::process_seconds),
            bench: ddnn_testkit::cpu::process_seconds(std::process::id()),
            machine: ddnn_testkit::cpu::MachineCpu::read()?,
        })
    }

    /// The summary's extra figures for the time between `earlier` and `self`.
    fn since(&self, earlier: &OutsideCpu) -> Vec<(String, f64)> {
        let m = self.machine.since(&earlier.machine);
        let mut out = vec![
            ("cpu_s_machine_busy".to_string(), m.busy),
            ("cpu_s_machine_idle".to_string(), m.idle),
            ("cpu_s_machine_steal".to_string(), m.steal),
        ];
        if let (Some(a), Some(b)) = (self.broker, earlier.broker) {
            out.push(("cpu_s_broker".to_string(), a - b));
        }
        if let (Some(a), Some(b)) = (self.bench, earlier.bench) {
            out.push(("cpu_s_bench".to_string(), a - b));
        }
        out
    }
}

fn ddnn_bin(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.ddnn_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    Ok(me.parent().context("no exe dir")?.join("ddnn"))
}

fn tansu_bin(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.tansu_bin {
        return Ok(p.clone());
    }
    ddnn_testkit::tansu_bin()
}

type Sample = (f64, String, f64, Option<f64>);

/// Samples each tier's worker count and exit threshold every 250 ms.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(sys: &System, t0: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let targets: Vec<(String, u16)> = sys.tiers.iter().map(|t| (t.tier.clone(), t.metrics_port)).collect();
        let (st, sa) = (Arc::clone(&stop), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                for (tier, port) in &targets {
                    if let Some((w, th)) = cluster::workers_and_threshold(*port, tier) {
                        sa.lock().unwrap_or_else(|p| p.into_inner()).push((
                            ddnn::now_ms() as f64 / 1000.0 - t0,
                            tier.clone(),
                            w,
                            th,
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self { stop, samples, thread }
    }
    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct ModeRun {
    summary: ModeSummary,
    rows: Vec<Row>,
    workers: Vec<WorkerSample>,
}

async fn run_mode(
    cli: &Cli,
    broker: &str,
    broker_pid: Option<u32>,
    mode: Mode,
    digits: &Arc<Digits>,
    dir: &std::path::Path,
) -> anyhow::Result<ModeRun> {
    let ddnn = ddnn_bin(cli)?;
    let models = std::fs::canonicalize(PathBuf::from("models").join(&cli.models))?;
    let tuning = cli.tuning()?;
    let launch = Launch { tuning: &tuning, ddnn: &ddnn, base_topology: &cli.topology, models: &models, broker, dir };
    let mut sys = launch.start(mode)?;
    let kafka = client::connect(&[broker.to_string()]).await?;
    let inputs = client::partitions(&kafka, &sys.input_topic).await?;
    let exits = client::partitions(&kafka, &sys.exit_topic).await?;
    let last_tier = sys.tier_names.last().cloned().unwrap_or_default();
    let collector = Collector::start(exits, last_tier).await?;
    let t0 = ddnn::now_ms() as f64 / 1000.0;
    let sampler = Sampler::start(&sys, t0);
    let cpu0: Vec<Option<f64>> = sys.tiers.iter().map(|t| t.cpu_seconds()).collect();
    // Where the rest of the machine's CPU went: the broker, this bench, the others and the VM's
    // host (steal), so that one mode getting less CPU than another is explained.
    let outside0 = OutsideCpu::read(broker_pid);
    let started = Instant::now();
    let mut extra = BTreeMap::new();
    let sent: Vec<Sent> = match cli.scenario.clone() {
        Scenario::Paper { clients, time_scale } => {
            let bar = indicatif::ProgressBar::new(400 * clients as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} sent")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(mode.name());
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    tokio::spawn(workload::paper_client(c, inputs.clone(), Arc::clone(digits), time_scale, bar.clone()))
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await??);
            }
            bar.finish();
            all
        }
        Scenario::Constant { rate, secs } => workload::open_loop(&inputs, digits, rate, secs, 1, 0).await?,
        Scenario::Burst { count, idle_secs, .. } => {
            tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
            workload::burst(&inputs, digits, count).await?
        }
        Scenario::Ramp { start, step, step_secs, max } => {
            let mut all = Vec::new();
            let mut rate = start;
            let mut best: f64 = 0.0;
            let mut stage = 1;
            while rate <= max {
                let t_step = ddnn::now_ms() as f64;
                let before = collector.count_of(&all);
                let batch = workload::open_loop(&inputs, digits, rate, step_secs, stage, all.len()).await?;
                all.extend(batch);
                // Exits during the step (plus a short grace for the last slice).
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = collector.count_of(&all) - before;
                let achieved = done as f64 / ((ddnn::now_ms() as f64 - t_step) / 1000.0);
                best = best.max(achieved);
                println!("{:>8} ramp {rate:>7.0} msg/s offered -> {achieved:>7.0} msg/s answered", mode.name());
                if achieved < 0.9 * rate {
                    break;
                }
                rate += step;
                stage += 1;
            }
            extra.insert("saturation_msg_s".to_string(), best);
            all
        }
    };
    let answered_all = collector.wait_for(&sent, Duration::from_secs(300)).await;
    if !answered_all {
        eprintln!("{}: {} of {} answered before the timeout", mode.name(), collector.count_of(&sent), sent.len());
        let start_ms = sent.first().map_or(0.0, |s| s.send_ms);
        keep_evidence(&cli.out, dir, mode.name(), &sys.tiers, &collector.missing(&sent), start_ms);
    }
    if let Scenario::Burst { after_secs, .. } = cli.scenario {
        tokio::time::sleep(Duration::from_secs_f64(after_secs)).await;
    }
    let elapsed_wall = started.elapsed().as_secs_f64();
    let samples = sampler.finish();
    let collected = collector.stop().await?;
    let mut peak_rss = BTreeMap::new();
    let mut cpu_s = BTreeMap::new();
    if let (Some(before), Some(after)) = (outside0, OutsideCpu::read(broker_pid)) {
        extra.extend(after.since(&before));
    }
    // Which broker process served the mode (a fresh one per mode unless --shared-broker).
    if let Some(pid) = broker_pid {
        extra.insert("broker_pid".to_string(), f64::from(pid));
    }
    for (t, c0) in sys.tiers.iter().zip(&cpu0) {
        if let (Some(c1), Some(c0)) = (t.cpu_seconds(), c0) {
            cpu_s.insert(t.tier.clone(), c1 - c0);
        }
    }
    for t in &sys.tiers {
        if let Some(k) = t.peak_rss_kib() {
            peak_rss.insert(t.tier.clone(), k as f64 / 1024.0);
        }
    }
    for t in &mut sys.tiers {
        t.stop(Duration::from_secs(20));
    }

    let first_send = sent.iter().map(|s| s.send_ms).fold(f64::INFINITY, f64::min);
    let rows: Vec<Row> = sent
        .iter()
        .filter_map(|s| {
            let seen = collected.first.get(&s.key)?;
            Some(Row {
                mode: mode.name().to_string(),
                key: s.key.clone(),
                client: s.client,
                stage: s.stage,
                send_s: (s.send_ms - first_send) / 1000.0,
                exit_tier: seen.exit_tier.clone(),
                rtt_ms: seen.ts_ms - s.send_ms,
                label: s.label,
                predicted: seen.predicted,
                correct: seen.predicted.map(|p| p == u32::from(s.label)),
            })
        })
        .collect();
    let last_exit = collected.first.values().map(|s| s.ts_ms).fold(0.0, f64::max);
    let elapsed_s = if rows.is_empty() { elapsed_wall } else { (last_exit - first_send) / 1000.0 };
    let mut groups = Vec::new();
    let mut tiers: Vec<&str> = rows.iter().map(|r| r.exit_tier.as_str()).collect();
    tiers.sort();
    tiers.dedup();
    for t in &tiers {
        let g: Vec<&Row> = rows.iter().filter(|r| r.exit_tier == *t).collect();
        groups.push(report::group(mode.name(), t, &g));
    }
    groups.push(report::group(mode.name(), "all", &rows.iter().collect::<Vec<_>>()));
    let workers: Vec<WorkerSample> = samples
        .iter()
        .map(|(t, tier, w, th)| WorkerSample {
            mode: mode.name().to_string(),
            tier: tier.clone(),
            t_s: t + t0 - first_send / 1000.0,
            workers: *w,
            threshold: *th,
        })
        .collect();
    for (tier, cpu) in &cpu_s {
        extra.insert(format!("cpu_s_{tier}"), *cpu);
    }
    report::load_figures(&rows, &workers, elapsed_s, &mut extra);
    let mut peak_workers = BTreeMap::new();
    for w in &workers {
        let e = peak_workers.entry(w.tier.clone()).or_insert(0.0f64);
        *e = e.max(w.workers);
    }
    if let Scenario::Burst { .. } = cli.scenario {
        burst_timeline(&workers, &mut extra);
    }
    Ok(ModeRun {
        summary: ModeSummary {
            mode: mode.name().to_string(),
            sent: sent.len(),
            answered: rows.len(),
            duplicates: collected.duplicates,
            elapsed_s,
            throughput_msg_s: rows.len() as f64 / elapsed_s.max(1e-9),
            peak_workers,
            peak_rss_mib: peak_rss,
            groups,
            extra,
        },
        rows,
        workers,
    })
}

/// First tier's worker timeline around a burst: when it first grew, its peak, when it was back.
fn burst_timeline(workers: &[WorkerSample], extra: &mut BTreeMap<String, f64>) {
    let Some(first) = workers.first().map(|w| w.tier.clone()) else { return };
    let series: Vec<&WorkerSample> = workers.iter().filter(|w| w.tier == first).collect();
    let base = series.iter().rev().find(|w| w.t_s < 0.0).map_or(1.0, |w| w.workers);
    if let Some(up) = series.iter().find(|w| w.t_s >= 0.0 && w.workers > base) {
        extra.insert(format!("{first}_first_scale_up_s"), up.t_s);
        let peak = series.iter().map(|w| w.workers).fold(0.0, f64::max);
        extra.insert(format!("{first}_peak_workers"), peak);
        if let Some(down) = series.iter().find(|w| w.t_s > up.t_s && w.workers <= base) {
            extra.insert(format!("{first}_back_to_base_s"), down.t_s);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let modes: Vec<Mode> = cli.modes.iter().map(|m| Mode::parse(m)).collect::<anyhow::Result<_>>()?;
    let digits = Arc::new(Digits::load(&cli.digits)?);
    std::fs::create_dir_all(&cli.out)?;
    let scratch = tempfile::tempdir()?;
    let mut runs = Vec::new();
    let mut shared = None;
    for mode in modes {
        // A fresh broker (same binary and storage engine) per mode. On one broker each mode ran
        // on the data, topics and groups of the modes before it, and tansu's CPU per message
        // grew with them: the last mode ran slowest whichever it was (bench/RESULTS.md).
        let broker = match shared.take() {
            Some(b) => b,
            None => ddnn_testkit::Broker::start_with(&tansu_bin(&cli)?, &cli.broker_storage).await?,
        };
        runs.push(
            run_mode(&cli, &broker.addr, broker.pid(), mode, &digits, scratch.path())
                .await
                .with_context(|| format!("mode {}", mode.name()))?,
        );
        if cli.shared_broker {
            shared = Some(broker);
        }
    }
    drop(shared);

    let title = match &cli.scenario {
        Scenario::Paper { clients, time_scale } => {
            format!("paper, {clients} client(s), time scale {time_scale}, {} models", cli.models)
        }
        Scenario::Ramp { .. } => format!("ramp, {} models, broker storage {}", cli.models, cli.broker_storage),
        Scenario::Burst { count, .. } => format!("burst of {count}, {} models", cli.models),
        Scenario::Constant { rate, secs } => {
            format!(
                "constant {rate} msg/s for {secs} s, {} models, thresholds {:?}, CPU limits {:?}",
                cli.models, cli.thresholds, cli.cpu_limit
            )
        }
    };
    let rows: Vec<Row> = runs.iter().flat_map(|r| r.rows.clone()).collect();
    let workers: Vec<WorkerSample> = runs.iter().flat_map(|r| r.workers.clone()).collect();
    let summaries: Vec<ModeSummary> = runs.iter().map(|r| r.summary.clone()).collect();
    report::write_csv(&cli.out.join("messages.csv"), &rows)?;
    std::fs::write(
        cli.out.join("summary.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "scenario": title, "modes": summaries, "workers": workers }),
        )?,
    )?;
    let md = report::markdown(&title, &summaries);
    std::fs::write(cli.out.join("summary.md"), &md)?;
    report::register_font()?;
    report::boxplot(&cli.out.join("rtt-boxplot.png"), &format!("RTT per exit tier: {title}"), &rows)?;
    for r in &runs {
        report::timeline(
            &cli.out.join(format!("timeline-{}.png", r.summary.mode)),
            &format!("{}: {title}", r.summary.mode),
            &r.rows,
            &r.workers,
        )?;
    }
    println!("{md}");
    println!("wrote {}", cli.out.display());
    Ok(())
}

#[cfg(test)]
mod keep_logs_tests {
    #[test]
    fn only_the_modes_node_logs_are_kept() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let out = tempfile::tempdir().expect("tempdir");
        for name in ["fixed-max-edge.log", "fixed-max-fog.log", "fixed-1-edge.log", "fixed-max-edge.toml"] {
            std::fs::write(scratch.path().join(name), name).expect("write");
        }
        let kept = super::keep_logs(scratch.path(), out.path(), "fixed-max").expect("keep");
        assert_eq!(kept.len(), 2, "{kept:?}");
        let edge = std::fs::read_to_string(out.path().join("logs/fixed-max-edge.log")).expect("kept edge log");
        assert_eq!(edge, "fixed-max-edge.log");
        assert!(!out.path().join("logs/fixed-1-edge.log").exists());
    }
}
