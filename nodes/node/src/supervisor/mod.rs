//! Runs the tiers of a node: starts them (`pipeline`), ticks them (metrics, scaling), applies
//! topology edits (`reload`) and drains them on shutdown.
//!
//! Tier starts run as their own tasks, reporting back over a channel: a tier waiting for an
//! unreachable cluster never holds up the ticks, commits or reloads of the others. On shutdown
//! every tier drains at once, within `DRAIN_BUDGET` in all (under Docker's 10 s stop grace):
//! consumers stop -> the pool empties -> the producer delivers -> the final commit.

mod adapt;
pub mod input;
pub mod pipeline;
pub mod reload;
pub mod tier;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Topology;
use crate::consumer::FetchSettings;
use crate::error::NodeError;
use crate::inference::pool::FaultSwitch;
use crate::kafka::clusters::Clusters;
use crate::messages::Resize;
use crate::observe::stats::TierStats;
use crate::observe::{http, metrics};
use crate::shutdown::Shutdown;
use adapt::{adapt_exits, ADAPT_EVERY};
use pipeline::TierHandle;

/// Consecutive failed batches after which a tier reports unhealthy.
pub const UNHEALTHY_AFTER: u32 = 5;
/// A stall (fetch, produce or commit failing) shows in /healthz once it lasted this long.
pub const STALL_GRACE: Duration = Duration::from_secs(2);
/// A tier still waiting for its clusters after this long shows in /healthz.
pub const START_GRACE: Duration = Duration::from_secs(10);
/// All tiers together finish draining within this time of SIGTERM.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(7);

/// Options that are not part of the topology (CLI / tests).
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub fetch: FetchSettings,
    /// Run every tier as a null relay (no model): the broker's floor for benchmarks.
    pub relay: bool,
    /// Test-only: fault switches per tier, to make inference fail on demand.
    pub faults: HashMap<String, Arc<FaultSwitch>>,
    /// Test-only: abort the process when a worker is about to infer the record with this key.
    pub crash_on_key: Option<Vec<u8>>,
    /// Consumer group timing (session, heartbeats, rebalance, revocation).
    pub group: crate::consumer::group::GroupSettings,
    /// Between this node's tiers: a forward wakes the next tier's idle fetch loops.
    pub wakeups: crate::consumer::wakeup::Wakeups,
}

#[derive(Default)]
struct NodeHealth {
    running: std::sync::Mutex<Vec<(String, Arc<TierStats>)>>,
    /// Tiers not running yet, why (waiting for a cluster, failed to start), and since when.
    waiting: std::sync::Mutex<BTreeMap<String, (String, Instant)>>,
    /// The node's connections, for clusters failing to connect (and why).
    clusters: Clusters,
    stopping: AtomicBool,
}

impl http::Health for NodeHealth {
    fn unhealthy(&self) -> Vec<String> {
        let tiers = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (name, s) in tiers.iter() {
            let fails = s.consecutive_failures.load(Ordering::Relaxed);
            if fails >= UNHEALTHY_AFTER {
                out.push(format!("tier {name}: {fails} consecutive inference failures"));
            }
            out.extend(s.problems(STALL_GRACE).into_iter().map(|p| format!("tier {name}: {p}")));
        }
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // A failed start at once; a tier still waiting for its clusters once that lasts longer
        // than a start normally takes (a broker unreachable at start is a stall too).
        out.extend(
            waiting
                .iter()
                .filter(|(_, (why, since))| why.starts_with("failed") || since.elapsed() >= START_GRACE)
                .map(|(t, (why, since))| format!("tier {t}: {why} (for {:.0} s)", since.elapsed().as_secs_f64())),
        );
        // Why a cluster cannot be reached (refused, untrusted certificate, wrong password).
        out.extend(self.clusters.failing(STALL_GRACE));
        out
    }

    fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.is_empty() {
            return Err(waiting.iter().map(|(t, (why, _))| format!("tier {t}: {why}")).collect::<Vec<_>>().join("\n"));
        }
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_empty() {
            return Err("starting".into());
        }
        // Not in its consumer group yet: the group has not given it its partitions.
        let joining: Vec<String> = running
            .iter()
            .filter(|(_, s)| s.rebalances.load(Ordering::Relaxed) == 0)
            .map(|(t, _)| format!("tier {t}: joining its consumer group"))
            .collect();
        if !joining.is_empty() {
            return Err(joining.join("\n"));
        }
        // Running, but unable to fetch from its input: not ready to serve.
        let stalled: Vec<String> = running
            .iter()
            .flat_map(|(t, s)| {
                s.problems(STALL_GRACE)
                    .into_iter()
                    .filter(|p| p.starts_with("cannot fetch"))
                    .map(move |p| format!("tier {t}: {p}"))
            })
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join("\n"))
        }
    }
}

/// Which tiers a node runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Every tier of the topology (tiers added by a reload start, removed ones stop).
    All,
    Named(Vec<String>),
}

impl Selection {
    fn names(&self, topology: &Topology) -> Vec<String> {
        match self {
            Selection::All => topology.tiers.iter().map(|t| t.name.clone()).collect(),
            Selection::Named(v) => v.clone(),
        }
    }
}

type Started = (String, u64, Result<Option<TierHandle>, Box<NodeError>>);

struct Node {
    topology: Topology,
    selection: Selection,
    options: NodeOptions,
    shutdown: Shutdown,
    clusters: Clusters,
    watch: reload::FileWatch,
    running: Vec<TierHandle>,
    /// Tier starts in flight: name -> (generation, cancel token).
    starting: HashMap<String, (u64, Shutdown)>,
    generation: u64,
    started_tx: tokio::sync::mpsc::UnboundedSender<Started>,
    health: Arc<NodeHealth>,
    /// True until every tier of the first start came up: a start error then ends the node.
    first_start: bool,
}

/// Runs the selected tiers until `shutdown` fires, then drains. Edits of the topology file (or
/// SIGHUP) are applied while running; an invalid edit is logged and the node keeps going.
pub async fn run(
    topology: Topology,
    selection: Selection,
    options: NodeOptions,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    for t in selection.names(&topology) {
        if topology.tier(&t).is_none() {
            let known: Vec<&str> = topology.tiers.iter().map(|t| t.name.as_str()).collect();
            return Err(NodeError::UnknownTier(t, known.join(", ")));
        }
    }
    metrics::install();
    let clusters = Clusters::new(&topology);
    let health = Arc::new(NodeHealth { clusters: clusters.clone(), ..Default::default() });
    if let Some(addr) = topology.metrics_listen {
        let h: Arc<dyn http::Health> = health.clone();
        http::start(addr, h).await.map_err(|source| NodeError::Metrics { addr: addr.to_string(), source })?;
    }
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut node = Node {
        clusters,
        watch: reload::FileWatch::new(&topology.source),
        topology,
        selection,
        options,
        shutdown: shutdown.clone(),
        running: Vec::new(),
        starting: HashMap::new(),
        generation: 0,
        started_tx,
        health: Arc::clone(&health),
        first_start: true,
    };
    for name in node.selection.names(&node.topology) {
        node.start(&name);
    }

    let started = Instant::now();
    let mut last_adapt = Instant::now();
    let mut tick_every = node.tick();
    let mut ticker = tokio::time::interval(tick_every);
    let mut watch_ticker = tokio::time::interval(Duration::from_secs(1));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut failure = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((name, generation, result)) = started_rx.recv() => {
                if let Err(e) = node.on_started(name, generation, result) {
                    failure = Some(*e);
                    break;
                }
            }
            _ = ticker.tick() => {
                for t in &mut node.running {
                    let policy = crate::scaling::rates::policy_of(&t.tier);
                    if let Some(c) = t.scaler.tick(&t.stats, &policy, started.elapsed()) {
                        tracing::info!(
                            tier = %t.name,
                            from = c.from,
                            to = c.to,
                            backlog = c.obs.backlog,
                            arrival_per_s = format_args!("{:.1}", c.obs.arrival_rate),
                            per_worker_per_s = format_args!("{:.1}", c.obs.per_worker_rate.unwrap_or(f64::NAN)),
                            demand_workers = format_args!("{:.2}", c.demand),
                            "scaling"
                        );
                        metrics::scale_event(&t.name, c.to > c.from);
                        t.pool.do_send(Resize(c.to));
                        t.stats.workers_desired.store(c.to, Ordering::Relaxed);
                    }
                    metrics::publish(&t.name, &t.stats, &t.stats.lag(), t.queue.len());
                    if t.tier.next.is_some() {
                        metrics::threshold(&t.name, t.spec.exit().threshold);
                    }
                }
                if last_adapt.elapsed() >= ADAPT_EVERY {
                    last_adapt = Instant::now();
                    adapt_exits(&node.topology, &mut node.running);
                }
            }
            _ = watch_ticker.tick() => {
                if node.watch.changed() {
                    tracing::info!(file = %node.topology.source.display(), "topology file changed");
                    node.reload().await;
                }
            }
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the topology");
                node.reload().await;
            }
        }
        if node.tick() != tick_every {
            tick_every = node.tick();
            tracing::info!("scaler tick now {tick_every:?}");
            ticker = tokio::time::interval(tick_every);
        }
    }
    health.stopping.store(true, Ordering::Relaxed);
    shutdown.cancel();
    let deadline = Instant::now() + DRAIN_BUDGET;
    let running = std::mem::take(&mut node.running);
    // Every tier's consumers stopped with the node's token above, so all tiers drain at
    // once; awaiting them in turn only collects the reports against one shared deadline.
    for t in running {
        t.stop(deadline).await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Node {
    fn tick(&self) -> Duration {
        self.topology.tiers.iter().map(|t| t.scaler.tick).min().unwrap_or(Duration::from_millis(250))
    }

    /// Starts a tier of the current topology in the background.
    fn start(&mut self, name: &str) {
        self.generation += 1;
        let generation = self.generation;
        let stop = self.shutdown.child_token();
        if let Some((_, old)) = self.starting.insert(name.to_string(), (generation, stop.clone())) {
            old.cancel();
        }
        self.health
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), ("starting (waiting for its clusters)".into(), Instant::now()));
        let (topology, clusters, options, tx, name) = (
            self.topology.clone(),
            self.clusters.clone(),
            self.options.clone(),
            self.started_tx.clone(),
            name.to_string(),
        );
        actix::spawn(async move {
            let result = pipeline::start_tier(&topology, &name, &clusters, &options, &stop).await.map_err(Box::new);
            let _ = tx.send((name, generation, result));
        });
    }

    fn on_started(
        &mut self,
        name: String,
        generation: u64,
        result: Result<Option<TierHandle>, Box<NodeError>>,
    ) -> Result<(), Box<NodeError>> {
        match self.starting.get(&name) {
            Some((g, _)) if *g == generation => {
                self.starting.remove(&name);
            }
            // A start superseded by a later reload (or cancelled): let it go.
            _ => {
                if let Ok(Some(handle)) = result {
                    actix::spawn(handle.stop(Instant::now() + DRAIN_BUDGET));
                }
                return Ok(());
            }
        }
        let mut waiting = self.health.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(Some(handle)) => {
                waiting.remove(&name);
                drop(waiting);
                let mut tiers = self.health.running.lock().unwrap_or_else(|p| p.into_inner());
                tiers.retain(|(n, _)| n != &name);
                tiers.push((name.clone(), Arc::clone(&handle.stats)));
                drop(tiers);
                self.running.push(handle);
                if self.starting.is_empty() && self.first_start {
                    self.first_start = false;
                    let names: Vec<&str> = self.running.iter().map(|t| t.name.as_str()).collect();
                    tracing::info!(tiers = %names.join(","), "node running");
                }
            }
            Ok(None) => {
                waiting.remove(&name);
            }
            Err(e) if self.first_start => return Err(e),
            Err(e) => {
                tracing::error!("{e}; the tier stays stopped until the topology is edited");
                waiting.insert(name, (format!("failed to start: {e}"), Instant::now()));
            }
        }
        Ok(())
    }

    async fn stop(&mut self, name: &str) {
        if let Some((_, stop)) = self.starting.remove(name) {
            stop.cancel();
        }
        self.health.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(i) = self.running.iter().position(|t| t.name == name) {
            let t = self.running.remove(i);
            self.health.running.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _)| n != name);
            t.stop(Instant::now() + DRAIN_BUDGET).await;
        }
    }

    /// Applies the topology file as it is now: live settings in place, structural changes by
    /// restarting the tiers concerned; an invalid file changes nothing.
    async fn reload(&mut self) {
        let new = match crate::config::load(&self.topology.source) {
            Ok(t) => t,
            Err(errors) => {
                tracing::error!("topology edit rejected; still running the last good topology:\n{errors}");
                return;
            }
        };
        let wanted = self.selection.names(&new);
        let mut restart = Vec::new();
        let known: Vec<String> =
            self.running.iter().map(|t| t.name.clone()).chain(self.starting.keys().cloned()).collect();
        for name in &known {
            let Some(new_tier) = new.tier(name) else {
                tracing::warn!(tier = %name, "tier removed from the topology: stopping it");
                self.stop(name).await;
                continue;
            };
            let Some(handle) = self.running.iter_mut().find(|t| &t.name == name) else {
                // Still starting: start again on the new file.
                restart.push(name.clone());
                continue;
            };
            let d = reload::diff(&self.topology, &handle.tier, &new, new_tier);
            if d.is_empty() {
                continue;
            }
            if !d.structural.is_empty() {
                tracing::info!(tier = %name, changes = %d.structural.iter().chain(&d.live).cloned().collect::<Vec<_>>().join("; "), "structural change: restarting the tier");
                restart.push(name.clone());
            } else {
                handle.spec.apply(new_tier);
                handle.tier = new_tier.clone();
                // A live edit moves the base: the adaptive rule starts over from it.
                handle.exits = pipeline::exit_controller(new_tier);
                tracing::info!(tier = %name, changes = %d.live.join("; "), "applied in place");
            }
        }
        self.topology = new;
        self.clusters.update(&self.topology);
        for name in &restart {
            self.stop(name).await;
            self.start(name);
        }
        let failed: Vec<String> =
            self.health.waiting.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for name in wanted {
            let present = self.running.iter().any(|t| t.name == name) || self.starting.contains_key(&name);
            if !present {
                if failed.contains(&name) {
                    tracing::info!(tier = %name, "retrying a tier that failed to start");
                } else {
                    tracing::info!(tier = %name, "tier added to the topology: starting it");
                }
                self.start(&name);
            }
        }
    }
}
