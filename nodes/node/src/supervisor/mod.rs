//! Wires and supervises the tiers of a node.
//!
//! `start_tier` is the one place a tier's graph is visible; it is built downstream first
//! (producer, pool, consumers) so nothing is ever sent into a stage that does not exist yet.
//! The node loop ticks every tier (metrics, scaling) and on shutdown drains in a fixed order:
//! consumers stop -> pool empties -> producer delivers -> final commit.

pub mod commit;
pub mod metrics;
pub mod reload;
pub mod scaler;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rskafka::client::Client;

use crate::config::{Cluster, TopicRef, Topology};
use crate::consumer::{Consumed, FetchSettings, PartitionConsumer};
use crate::error::{KafkaError, NodeError};
use crate::inference::pool::{FaultSwitch, InferencePool, Resize};
use crate::inference::{Route, TierSpec};
use crate::kafka;
use crate::offsets::OffsetTracker;
use crate::producer::{Producer, TopicWriter};
use crate::shutdown::Shutdown;
use commit::Committer;
use stats::TierStats;

/// Consecutive failed batches after which a tier reports unhealthy.
const UNHEALTHY_AFTER: u32 = 5;

/// Options that are not part of the topology (CLI / tests).
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub fetch: FetchSettings,
    /// Run every tier as a null relay (no model): the broker's floor for benchmarks.
    pub relay: bool,
    /// Test-only: fault switches per tier, to make inference fail on demand.
    pub faults: HashMap<String, Arc<FaultSwitch>>,
}

/// A running tier.
pub struct TierHandle {
    pub name: String,
    pub spec: Arc<TierSpec>,
    pub stats: Arc<TierStats>,
    pub tracker: Arc<OffsetTracker>,
    pub pool: Addr<InferencePool>,
    pub queue: flume::Receiver<Consumed>,
    consumers_stop: Shutdown,
    stages_stop: Shutdown,
    /// Held so the supervisors restart a stage that fails; dropped to stop them for good.
    _consumers: Vec<Addr<PartitionConsumer>>,
    _producer: Addr<Producer>,
    committer: Committer,
    /// The tier's current settings (replaced in place by a topology reload).
    pub tier: crate::config::Tier,
    scaling: ScalingRuntime,
}

/// Scaler memory and the counters of the previous tick, to turn totals into rates.
#[derive(Debug, Default)]
struct ScalingRuntime {
    state: scaler::State,
    arrival: scaler::Ewma,
    per_worker: scaler::Ewma,
    last_end: Option<i64>,
    last_rows: u64,
    last_busy_ns: u64,
    last_tick: Option<Instant>,
}

impl TierHandle {
    fn policy(&self) -> scaler::Policy {
        scaler::Policy {
            min: self.tier.workers.min,
            max: self.tier.workers.max,
            fixed: self.tier.scaling == crate::config::Scaling::Fixed,
            target_drain: self.tier.scaler.target_drain,
            stabilization: self.tier.scaler.stabilization,
        }
    }

    /// One scaler tick: observe, decide, resize, log why.
    fn scale(&mut self, started: Instant) {
        let now = Instant::now();
        let dt = self.scaling.last_tick.map(|t| now.duration_since(t).as_secs_f64()).unwrap_or(0.0);
        self.scaling.last_tick = Some(now);
        let lag = self.lag();
        let backlog: i64 = lag.iter().map(|(_, l)| l).sum();
        let end: i64 = self.stats.high_watermarks().values().sum();
        let rows = self.stats.inferred_rows.load(Ordering::Relaxed);
        let busy = self.stats.busy_ns.load(Ordering::Relaxed);
        if dt > 0.0 {
            if let Some(last) = self.scaling.last_end {
                self.scaling.arrival.update((end - last).max(0) as f64 / dt, 0.3);
            }
            let (d_rows, d_busy) = (rows - self.scaling.last_rows, busy - self.scaling.last_busy_ns);
            if d_rows > 0 && d_busy > 0 {
                self.scaling.per_worker.update(d_rows as f64 / (d_busy as f64 / 1e9), 0.3);
            }
        }
        self.scaling.last_end = Some(end);
        self.scaling.last_rows = rows;
        self.scaling.last_busy_ns = busy;
        let current = self.stats.workers_desired.load(Ordering::Relaxed);
        let obs = scaler::Observation {
            backlog: backlog.max(0) as u64,
            arrival_rate: self.scaling.arrival.get().unwrap_or(0.0),
            per_worker_rate: self.scaling.per_worker.get(),
            current,
        };
        let decision = scaler::decide(&obs, &self.policy(), &mut self.scaling.state, now.duration_since(started));
        if decision.desired != current {
            tracing::info!(
                tier = %self.name,
                from = current,
                to = decision.desired,
                backlog = obs.backlog,
                arrival_per_s = format_args!("{:.1}", obs.arrival_rate),
                per_worker_per_s = format_args!("{:.1}", obs.per_worker_rate.unwrap_or(f64::NAN)),
                demand_workers = format_args!("{:.2}", decision.demand),
                "scaling"
            );
            metrics::scale_event(&self.name, decision.desired > current);
            self.pool.do_send(Resize(decision.desired));
            self.stats.workers_desired.store(decision.desired, Ordering::Relaxed);
        }
    }

    /// Lag per owned partition: high watermark (from fetch responses) minus committed position.
    pub fn lag(&self) -> Vec<(i32, i64)> {
        let hw = self.stats.high_watermarks();
        self.tracker.committable().into_iter().map(|(p, c)| (p, hw.get(&p).map_or(0, |h| (h - c).max(0)))).collect()
    }
}

#[derive(Default)]
struct NodeHealth {
    ready: AtomicBool,
    tiers: std::sync::Mutex<Vec<(String, Arc<TierStats>)>>,
}

impl metrics::Health for NodeHealth {
    fn unhealthy(&self) -> Vec<String> {
        let tiers = self.tiers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (name, s) in tiers.iter() {
            let fails = s.consecutive_failures.load(Ordering::Relaxed);
            if fails >= UNHEALTHY_AFTER {
                out.push(format!("tier {name}: {fails} consecutive inference failures"));
            }
            if s.fetch_failing() {
                out.push(format!("tier {name}: cannot fetch from its input"));
            }
        }
        out
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Connections per cluster name, made on first use.
struct Clusters {
    known: BTreeMap<String, Cluster>,
    clients: BTreeMap<String, Arc<Client>>,
    shutdown: Shutdown,
}

impl Clusters {
    /// Takes a new topology's clusters; connections to clusters whose brokers changed are dropped.
    fn update(&mut self, topology: &Topology) {
        self.clients.retain(|name, _| topology.cluster(name) == self.known.get(name));
        self.known = topology.clusters.clone();
    }

    async fn get(&mut self, name: &str) -> Option<(Arc<Client>, Cluster)> {
        let cluster = self.known.get(name)?.clone();
        if let Some(c) = self.clients.get(name) {
            return Some((Arc::clone(c), cluster));
        }
        let client = kafka::connect(&cluster, &self.shutdown).await?;
        tracing::info!(cluster = name, brokers = %cluster.brokers.join(","), "connected");
        self.clients.insert(name.to_string(), Arc::clone(&client));
        Some((client, cluster))
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
    let health = Arc::new(NodeHealth::default());
    if let Some(addr) = topology.metrics_listen {
        // Bind now so a taken port is a clear start-up error, then serve in the background.
        let probe = std::net::TcpListener::bind(addr)
            .map_err(|source| NodeError::Metrics { addr: addr.to_string(), source })?;
        drop(probe);
        let h: Arc<dyn metrics::Health> = health.clone();
        actix::spawn(async move {
            if let Err(e) = metrics::serve(addr, h).await {
                tracing::error!("metrics endpoint {addr} stopped: {e}");
            }
        });
    }
    let mut node = Node {
        clusters: Clusters { known: topology.clusters.clone(), clients: BTreeMap::new(), shutdown: shutdown.clone() },
        watch: reload::FileWatch::new(&topology.source),
        topology,
        selection,
        options,
        shutdown: shutdown.clone(),
        running: Vec::new(),
        health: Arc::clone(&health),
    };
    for name in node.selection.names(&node.topology) {
        if !node.start(&name).await? {
            break; // shutdown while waiting for a broker
        }
    }
    health.ready.store(!shutdown.is_cancelled(), Ordering::Relaxed);
    if !node.running.is_empty() {
        let names: Vec<&str> = node.running.iter().map(|t| t.name.as_str()).collect();
        tracing::info!(tiers = %names.join(","), "node running");
    }

    let tick = node.topology.tiers.iter().map(|t| t.scaler.tick).min().unwrap_or(Duration::from_millis(250));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let mut commit_ticker = tokio::time::interval(Duration::from_millis(200));
    let mut watch_ticker = tokio::time::interval(Duration::from_secs(1));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                for t in &mut node.running {
                    t.scale(started);
                    metrics::publish(&t.name, &t.stats, &t.lag(), t.queue.len());
                }
            }
            _ = commit_ticker.tick() => {
                for t in &mut node.running {
                    if let Err(e) = t.committer.commit(&t.tracker).await {
                        tracing::warn!(tier = %t.name, "offset commit failed (will retry): {e}");
                    }
                }
            }
            _ = watch_ticker.tick() => {
                if node.watch.changed() {
                    tracing::info!(file = %node.topology.source.display(), "topology file changed");
                    node.reload().await?;
                }
            }
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the topology");
                node.reload().await?;
            }
        }
    }
    health.ready.store(false, Ordering::Relaxed);
    let running = std::mem::take(&mut node.running);
    for t in &running {
        t.consumers_stop.cancel();
    }
    for t in running {
        stop_tier(t).await;
    }
    Ok(())
}

struct Node {
    topology: Topology,
    selection: Selection,
    options: NodeOptions,
    shutdown: Shutdown,
    clusters: Clusters,
    watch: reload::FileWatch,
    running: Vec<TierHandle>,
    health: Arc<NodeHealth>,
}

impl Node {
    /// Starts a tier of the current topology; false when shutdown fired meanwhile.
    async fn start(&mut self, name: &str) -> Result<bool, NodeError> {
        let Some(handle) = start_tier(&self.topology, name, &mut self.clusters, &self.options, &self.shutdown).await?
        else {
            return Ok(false);
        };
        let mut tiers = self.health.tiers.lock().unwrap_or_else(|p| p.into_inner());
        tiers.retain(|(n, _)| n != name);
        tiers.push((name.to_string(), Arc::clone(&handle.stats)));
        drop(tiers);
        self.running.push(handle);
        Ok(true)
    }

    async fn stop(&mut self, name: &str) {
        if let Some(i) = self.running.iter().position(|t| t.name == name) {
            let t = self.running.remove(i);
            t.consumers_stop.cancel();
            stop_tier(t).await;
            self.health.tiers.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _)| n != name);
        }
    }

    /// Applies the topology file as it is now: live settings in place, structural changes by
    /// restarting the tiers concerned; an invalid file changes nothing.
    async fn reload(&mut self) -> Result<(), NodeError> {
        let new = match crate::config::load(&self.topology.source) {
            Ok(t) => t,
            Err(errors) => {
                tracing::error!("topology edit rejected; still running the last good topology:\n{errors}");
                return Ok(());
            }
        };
        let wanted = self.selection.names(&new);
        let mut restart = Vec::new();
        let running: Vec<String> = self.running.iter().map(|t| t.name.clone()).collect();
        for name in &running {
            let Some(new_tier) = new.tier(name) else {
                tracing::warn!(tier = %name, "tier removed from the topology: stopping it");
                self.stop(name).await;
                continue;
            };
            let Some(handle) = self.running.iter_mut().find(|t| &t.name == name) else { continue };
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
                tracing::info!(tier = %name, changes = %d.live.join("; "), "applied in place");
            }
        }
        let old = std::mem::replace(&mut self.topology, new);
        self.clusters.update(&self.topology);
        for name in &restart {
            self.stop(name).await;
            if !self.start(name).await? {
                return Ok(());
            }
        }
        for name in wanted {
            if !self.running.iter().any(|t| t.name == name) && old.tier(&name).is_none() {
                tracing::info!(tier = %name, "tier added to the topology: starting it");
                if !self.start(&name).await? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Drains a tier whose consumers were told to stop: waits until everything fetched is
/// delivered (bounded), commits, then lets the stages go.
async fn stop_tier(mut t: TierHandle) {
    t.consumers_stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(15);
    while t.tracker.pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = t.tracker.pending();
    if left > 0 {
        tracing::warn!(tier = %t.name, "{left} records undelivered at stop; they stay uncommitted and will be replayed");
    }
    match t.committer.commit(&t.tracker).await {
        Ok(_) => tracing::info!(tier = %t.name, "final offsets committed: {:?}", t.tracker.committable()),
        Err(e) => tracing::warn!(tier = %t.name, "final commit failed: {e}; the last commits stand"),
    }
    t.stages_stop.cancel();
    t.pool.do_send(Resize(0));
    // Dropping the handle drops the last addresses: the stage actors stop for good.
}

async fn writer(clusters: &mut Clusters, tier: &str, t: &TopicRef) -> Result<Option<Arc<TopicWriter>>, NodeError> {
    let Some((client, cluster)) = clusters.get(&t.cluster).await else {
        return Ok(None);
    };
    let kerr = |source: KafkaError| NodeError::Kafka { tier: tier.to_string(), source };
    let n = kafka::ensure_topic(&client, &cluster, &t.topic, t.partitions).await.map_err(kerr)?;
    let mut pcs = Vec::new();
    for p in 0..n {
        pcs.push(kafka::partition_client(&client, &cluster, &t.topic, p).await.map_err(kerr)?);
    }
    Ok(Some(Arc::new(TopicWriter::new(&t.topic, pcs))))
}

/// Starts one tier; `None` when shutdown fired while waiting for a broker.
async fn start_tier(
    topology: &Topology,
    name: &str,
    clusters: &mut Clusters,
    options: &NodeOptions,
    shutdown: &Shutdown,
) -> Result<Option<TierHandle>, NodeError> {
    let Some(tier) = topology.tier(name) else {
        return Err(NodeError::UnknownTier(name.to_string(), String::new()));
    };
    let kerr = |source: KafkaError| NodeError::Kafka { tier: name.to_string(), source };
    let is_last = tier.next.is_none();
    let mut spec = TierSpec::new(tier, is_last);
    spec.relay = options.relay;
    let spec = Arc::new(spec);
    let stats = Arc::new(TierStats::default());
    let tracker = Arc::new(OffsetTracker::new());

    // Downstream first: the topics and writers the producer needs.
    let mut writers = HashMap::new();
    let Some(exits) = writer(clusters, name, &tier.exits).await? else {
        return Ok(None);
    };
    writers.insert(Route::Exit, exits);
    let Some(dlq) = writer(clusters, name, &topology.dead_letter).await? else {
        return Ok(None);
    };
    writers.insert(Route::DeadLetter, dlq);
    if let Some(next) = topology.next_input(tier) {
        let Some(fw) = writer(clusters, name, &next.topic).await? else {
            return Ok(None);
        };
        writers.insert(Route::Forward, fw);
    }

    // The input side: topic, offsets topic, committed positions.
    let Some((in_client, in_cluster)) = clusters.get(&tier.input.topic.cluster).await else {
        return Ok(None);
    };
    let input = &tier.input.topic;
    let n_in = kafka::ensure_topic(&in_client, &in_cluster, &input.topic, input.partitions).await.map_err(kerr)?;
    kafka::ensure_topic(&in_client, &in_cluster, &topology.offsets_topic, 1).await.map_err(kerr)?;
    let offsets_pc =
        kafka::partition_client(&in_client, &in_cluster, &topology.offsets_topic, 0).await.map_err(kerr)?;
    let mut committer = Committer::new(name, &input.topic, offsets_pc);
    let owned_partitions: Vec<i32> = (0..n_in).filter(|&p| tier.instance.owns(p)).collect();
    let commits = committer.load(&owned_partitions).await.map_err(|e| {
        kerr(KafkaError::Topic {
            cluster: in_cluster.name.clone(),
            topic: topology.offsets_topic.clone(),
            message: format!("cannot read committed offsets: {e}"),
        })
    })?;

    let cap_in = (tier.batch.max * tier.workers.max * 2).max(64);
    let (in_tx, in_rx) = flume::bounded::<Consumed>(cap_in);
    let (out_tx, out_rx) = flume::bounded(cap_in * 2);
    let stages_stop = Shutdown::new();
    let consumers_stop = Shutdown::new();

    let producer = {
        let (tier_name, tracker, stats, stop) =
            (name.to_string(), Arc::clone(&tracker), Arc::clone(&stats), stages_stop.clone());
        actix::Supervisor::start(move |_| Producer {
            tier: tier_name,
            input: out_rx,
            writers,
            tracker,
            stats,
            max_in_flight: 8192,
            shutdown: stop,
        })
    };

    let faults = options.faults.get(name).cloned().unwrap_or_default();
    let pool = InferencePool::new(Arc::clone(&spec), Arc::clone(&stats), in_rx.clone(), out_tx, faults).start();
    let initial = match tier.scaling {
        crate::config::Scaling::Fixed => tier.workers.max,
        crate::config::Scaling::Elastic => tier.workers.min,
    };
    stats.workers_desired.store(initial, Ordering::Relaxed);
    pool.do_send(Resize(initial));

    let mut owned = Vec::new();
    let mut consumers = Vec::new();
    for p in owned_partitions {
        let client = kafka::partition_client(&in_client, &in_cluster, &input.topic, p).await.map_err(kerr)?;
        let start = match commits.get(&p) {
            Some(c) => {
                stats.replayed.fetch_add((c.fetched - c.offset).max(0) as u64, Ordering::Relaxed);
                c.offset
            }
            None => client.get_offset(rskafka::client::partition::OffsetAt::Earliest).await.unwrap_or(0),
        };
        owned.push((p, start));
        let (tier_name, tracker, stats, out, stop) =
            (name.to_string(), Arc::clone(&tracker), Arc::clone(&stats), in_tx.clone(), consumers_stop.clone());
        let settings = options.fetch;
        consumers.push(actix::Supervisor::start(move |_| PartitionConsumer {
            tier: tier_name,
            client,
            start_offset: start,
            tracker,
            stats,
            out,
            settings,
            shutdown: stop,
        }));
    }
    // Consumers also stop when the whole node does.
    {
        let (node, consumers) = (shutdown.clone(), consumers_stop.clone());
        actix::spawn(async move {
            node.cancelled().await;
            consumers.cancel();
        });
    }
    tracing::info!(
        tier = name,
        input = %input.topic,
        partitions = ?owned,
        workers = initial,
        threshold = tier.threshold,
        "tier started"
    );
    Ok(Some(TierHandle {
        name: name.to_string(),
        spec,
        stats,
        tracker,
        pool,
        queue: in_rx,
        consumers_stop,
        stages_stop,
        committer,
        _consumers: consumers,
        _producer: producer,
        tier: tier.clone(),
        scaling: ScalingRuntime::default(),
    }))
}
