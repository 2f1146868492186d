//! `ddnn`: run tiers of a distributed DNN, check a topology, inspect a model, run the demo,
//! list and replay dead letters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "ddnn", version, about = "Distributed DNN early-exit inference over Kafka")]
struct Cli {
    /// Log format (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one tier of the topology, or all of them in one process.
    Node {
        #[arg(long)]
        topology: PathBuf,
        /// Tier name, or `all`.
        #[arg(long, default_value = "all")]
        tier: String,
        /// How to wait for records: `auto` (default: long-poll until the broker proves it
        /// holds fetches: 3 in a row whose records were there and took >= 100 ms, then
        /// adaptive), `long-poll` (Apache Kafka answers a long poll as soon as data arrives),
        /// or `adaptive` (short waits while records flow, backing off when idle; for brokers
        /// that hold every fetch, like tansu).
        #[arg(long, env = "DDNN_FETCH_MODE", value_enum, default_value_t = ddnn::consumer::wait::FetchMode::Auto)]
        fetch_mode: ddnn::consumer::wait::FetchMode,
        /// The long-poll wait in ms (the broker answers sooner when data arrives).
        #[arg(long, default_value_t = 500)]
        long_poll_ms: i32,
        /// Adaptive wait: fetch max-wait in ms while records flow (small: some brokers always
        /// wait the full time).
        #[arg(long, default_value_t = 5)]
        fetch_wait_ms: i32,
        /// Adaptive wait: the longest wait of an idle partition, in ms: each empty answer doubles the
        /// wait up to this, the first record brings it back to --fetch-wait-ms. A wait past
        /// --fetch-wait-ms is spent in the node, then only the end of the log is asked for.
        /// Bounds the latency of the first record after a pause (75: under 100 ms through
        /// three tiers on tansu); each look costs the broker CPU.
        #[arg(long, default_value_t = 75)]
        idle_fetch_wait_ms: i32,
        /// Null relay (benchmark baseline): no model; every tier passes records on unchanged
        /// and the last one writes them to its exit topic.
        #[arg(long)]
        relay: bool,
        /// Test only: make the first N inference batches of a tier fail (`TIER=N`), to exercise
        /// worker restarts.
        #[arg(long, hide = true, value_name = "TIER=N")]
        fail_batches: Vec<String>,
        /// Test only: abort the process (as an ONNX Runtime crash would) when a worker is about
        /// to infer the record with this key, to exercise crash-loop protection.
        #[arg(long, hide = true, value_name = "KEY")]
        crash_on_key: Option<String>,
        /// Bytes of record values a tier may hold queued for or inside its pool.
        #[arg(long, hide = true, default_value_t = ddnn::consumer::QUEUE_BYTES)]
        queue_bytes: usize,
        /// Consumer group session timeout in ms: a node silent this long (killed, cut off)
        /// loses its partitions to the other nodes of its tier (brokers accept 6000 and up).
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
    },
    /// Validate a topology and print every error (exit status 1 if any).
    Check {
        #[arg(long)]
        topology: PathBuf,
    },
    /// Print a model's contract as the node sees it (input, `probs`, `features`) and every
    /// violation with a hint (exit status 1 if any).
    Inspect {
        /// The ONNX file.
        model: PathBuf,
    },
    /// Send held-out digits (paper-json) through a running continuum and report accuracy,
    /// exits per tier and latency.
    Demo {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long, default_value = "models/heldout.bin")]
        digits: PathBuf,
        /// How many digits to send (the file's digits again, under new keys, past its end).
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Send rate, messages per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Give up waiting for exits after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Dead letters: list them grouped by reason and source, replay them after a fix.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters grouped by reason and source: count, first and last time, sample offsets.
    List {
        #[command(flatten)]
        select: DlqSelect,
    },
    /// Put the chosen dead letters back into the input partitions they came from, key and
    /// headers kept. A dry run unless `--execute`; a dead letter already replayed is skipped
    /// unless `--again`.
    Replay {
        #[command(flatten)]
        select: DlqSelect,
        /// Replay for real (without it: print what would be replayed, write nothing).
        #[arg(long)]
        execute: bool,
        /// Also replay dead letters that were replayed before.
        #[arg(long)]
        again: bool,
    },
}

/// Which dead letters; every given filter must match.
#[derive(Args)]
struct DlqSelect {
    #[arg(long)]
    topology: PathBuf,
    /// `x-ddnn-error` contains TEXT.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// `x-ddnn-error` matches the regular expression RE.
    #[arg(long, value_name = "RE")]
    reason_regex: Option<String>,
    /// From this input topic, or one partition of it.
    #[arg(long, value_name = "TOPIC[/PARTITION]")]
    source: Option<String>,
    /// Dead-lettered at or after TIME (RFC 3339, or a duration ago: 15m, 2h).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Dead-lettered before TIME (RFC 3339, or a duration ago).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl DlqSelect {
    fn filter(&self) -> anyhow::Result<ddnn::dlq::Filter> {
        use ddnn::dlq::{parse_regex, parse_source_filter, parse_time};
        let now = ddnn::now_ms();
        Ok(ddnn::dlq::Filter {
            reason: self.reason.clone(),
            reason_regex: self.reason_regex.as_deref().map(parse_regex).transpose()?,
            source: self.source.as_deref().map(parse_source_filter).transpose()?,
            since_ms: self.since.as_deref().map(|t| parse_time("--since", t, now)).transpose()?,
            until_ms: self.until.as_deref().map(|t| parse_time("--until", t, now)).transpose()?,
        })
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rskafka=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // Before any thread (and ONNX Runtime) starts allocating.
    let pinned = ddnn::heap::pin_mmap_threshold();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    tracing::debug!(pinned, bytes = ddnn::heap::MMAP_THRESHOLD, "glibc mmap threshold");
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { topology } => match ddnn::config::load(&topology) {
            Ok(t) => {
                println!("{}", t.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Inspect { model } => {
            let contract = ddnn::onnx::contract::inspect(&model)?;
            println!("{}", contract.report(&model));
            Ok(if contract.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Node {
            topology,
            tier,
            fetch_mode,
            long_poll_ms,
            fetch_wait_ms,
            idle_fetch_wait_ms,
            relay,
            fail_batches,
            crash_on_key,
            queue_bytes,
            session_timeout_ms,
        } => {
            let topo = ddnn::config::load(&topology).map_err(|e| anyhow::anyhow!("invalid topology:\n{e}"))?;
            let selection = if tier == "all" {
                ddnn::supervisor::Selection::All
            } else {
                ddnn::supervisor::Selection::Named(vec![tier])
            };
            let mut faults = std::collections::HashMap::new();
            for spec in fail_batches {
                let (tier, n) = spec
                    .split_once('=')
                    .and_then(|(t, n)| Some((t.to_string(), n.parse::<u32>().ok()?)))
                    .with_context(|| format!("--fail-batches {spec:?}: expected TIER=N"))?;
                let switch = std::sync::Arc::new(ddnn::inference::pool::FaultSwitch::default());
                switch.fail_next(n);
                faults.insert(tier, switch);
            }
            let options = ddnn::supervisor::NodeOptions {
                fetch: ddnn::consumer::FetchSettings {
                    mode: fetch_mode,
                    long_poll_ms: long_poll_ms.max(1),
                    max_wait_ms: fetch_wait_ms.max(1),
                    idle_wait_ms: idle_fetch_wait_ms.max(fetch_wait_ms).max(1),
                    queue_bytes,
                    ..Default::default()
                },
                relay,
                faults,
                crash_on_key: crash_on_key.map(String::into_bytes),
                group: ddnn::consumer::group::GroupSettings {
                    session_timeout: std::time::Duration::from_millis(session_timeout_ms),
                    ..Default::default()
                },
                wakeups: Default::default(),
            };
            // Fail fast on a missing ONNX Runtime rather than in every worker.
            let lib = ddnn::inference::runtime::library_path().map_err(anyhow::Error::msg)?;
            tracing::info!("ONNX Runtime: {}", lib.display());
            let system = actix::System::new();
            system.block_on(async move {
                let shutdown = ddnn::shutdown::Shutdown::new();
                ddnn::shutdown::on_signals(shutdown.clone());
                ddnn::supervisor::run(topo, selection, options, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { topology, digits, count, rate, timeout_s } => {
            let topo = ddnn::config::load(&topology).map_err(|e| anyhow::anyhow!("invalid topology:\n{e}"))?;
            let digits = ddnn::client::Digits::load(&digits)?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let report =
                rt.block_on(ddnn::client::run_demo(&topo, &digits, count, rate, Duration::from_secs(timeout_s)))?;
            println!("{report}");
            Ok(if report.answered == report.sent { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Dlq { command } => {
            let select = match &command {
                DlqCommand::List { select } | DlqCommand::Replay { select, .. } => select,
            };
            let filter = select.filter()?;
            let topo = ddnn::config::load(&select.topology).map_err(|e| anyhow::anyhow!("invalid topology:\n{e}"))?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            match command {
                DlqCommand::List { .. } => {
                    let letters = rt.block_on(ddnn::dlq::read_dead_letters(&topo))?;
                    let groups = ddnn::dlq::group(letters.iter().filter(|d| filter.matches(d)));
                    print!("{}", ddnn::dlq::render_list(&topo.dead_letter.topic, letters.len(), &groups));
                }
                DlqCommand::Replay { execute, again, .. } => {
                    let report = rt.block_on(ddnn::dlq::replay(&topo, &filter, again, execute))?;
                    println!("{report}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
