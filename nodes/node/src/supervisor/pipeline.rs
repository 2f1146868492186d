//! Wires one tier's pipeline: the only place its graph is visible.
//!
//! Built downstream first (output topics and producer, offsets owner, pool, then consumers),
//! so nothing is ever sent into a stage that does not exist yet:
//! consumers -> `Consumed` -> pool -> `Inferred` -> producer -> `Delivered` -> offsets owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::tier::TierSupervisor;
use super::NodeOptions;
use crate::backoff::Backoff;
use crate::config::{TopicRef, Topology};
use crate::consumer::{Careful, ConsumerLinks, PartitionConsumer};
use crate::error::{KafkaError, NodeError};
use crate::inference::pool::InferencePool;
use crate::inference::TierSpec;
use crate::kafka::clusters::Clusters;
use crate::messages::{Consumed, Resize, Route};
use crate::observe::stats::TierStats;
use crate::offsets::recovery::resume;
use crate::offsets::store::{Position, Store};
use crate::offsets::{Drain, DrainReport, OffsetsOwner};
use crate::producer::{Producer, TopicWriter};
use crate::scaling::rates::Scaler;
use crate::shutdown::Shutdown;

/// A running tier.
pub struct TierHandle {
    pub name: String,
    pub spec: Arc<TierSpec>,
    pub stats: Arc<TierStats>,
    pub pool: Addr<InferencePool>,
    pub queue: flume::Receiver<Consumed>,
    pub owner: Addr<OffsetsOwner>,
    supervisor: Addr<TierSupervisor>,
    consumers_stop: Shutdown,
    stages_stop: Shutdown,
    /// Held so the supervisors restart a stage that fails; dropped to stop them for good.
    _consumers: Vec<Addr<PartitionConsumer>>,
    _producer: Addr<Producer>,
    /// The tier's current settings (replaced in place by a topology reload).
    pub tier: crate::config::Tier,
    pub scaler: Scaler,
}

impl TierHandle {
    /// Stops fetching, waits (until `deadline`) for everything fetched to be delivered,
    /// commits, then lets the stages go.
    pub async fn stop(self, deadline: Instant) -> DrainReport {
        self.consumers_stop.cancel();
        let report = match self.owner.send(Drain { deadline }).await {
            Ok(r) => r,
            Err(e) => DrainReport { commit_error: Some(format!("offsets owner gone: {e}")), ..Default::default() },
        };
        if report.undelivered > 0 {
            tracing::warn!(tier = %self.name, "{} records undelivered at stop; they stay uncommitted and will be replayed", report.undelivered);
        }
        match &report.commit_error {
            None => tracing::info!(tier = %self.name, "final offsets committed: {:?}", report.committed),
            Some(e) => tracing::warn!(tier = %self.name, "final commit failed: {e}; the last commits stand"),
        }
        self.stages_stop.cancel();
        self.pool.do_send(Resize(0));
        self.owner.do_send(StopOwner);
        self.supervisor.do_send(super::tier::Stop);
        report
        // Dropping the handle drops the last addresses: the stage actors stop for good.
    }
}

/// Ends the offsets owner (its commit interval would otherwise keep it alive).
#[derive(Message)]
#[rtype(result = "()")]
struct StopOwner;

impl Handler<StopOwner> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, _: StopOwner, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

fn kerr(tier: &str) -> impl Fn(KafkaError) -> NodeError + '_ {
    move |source| NodeError::Kafka { tier: tier.to_string(), source }
}

async fn writer(
    clusters: &Clusters,
    tier: &str,
    t: &TopicRef,
    stop: &Shutdown,
) -> Result<Option<Arc<TopicWriter>>, NodeError> {
    let Some((client, cluster)) = clusters.get(&t.cluster, stop).await else {
        return Ok(None);
    };
    let n = crate::kafka::ensure_topic(&client, &cluster, &t.topic, t.partitions).await.map_err(kerr(tier))?;
    let mut pcs = Vec::new();
    for p in 0..n {
        let pc = crate::kafka::partition_client(&client, &cluster, &t.topic, p).await.map_err(kerr(tier))?;
        pcs.push((pc, Some(crate::kafka::Reopen::new(&cluster, &t.topic, p))));
    }
    Ok(Some(Arc::new(TopicWriter::new(&t.topic, pcs))))
}

/// Starts one tier; `None` when `stop` fired while waiting for a broker.
pub async fn start_tier(
    topology: &Topology,
    name: &str,
    clusters: &Clusters,
    options: &NodeOptions,
    stop: &Shutdown,
) -> Result<Option<TierHandle>, NodeError> {
    let Some(tier) = topology.tier(name) else {
        return Err(NodeError::UnknownTier(name.to_string(), String::new()));
    };
    let kerr = kerr(name);
    let mut spec = TierSpec::new(tier, tier.next.is_none());
    spec.relay = options.relay;
    spec.crash_on_key = options.crash_on_key.clone();
    let spec = Arc::new(spec);
    let stats = Arc::new(TierStats::default());

    // Downstream first: the topics and writers the producer needs.
    let mut writers = HashMap::new();
    let Some(exits) = writer(clusters, name, &tier.exits, stop).await? else { return Ok(None) };
    writers.insert(Route::Exit, exits);
    let Some(dlq) = writer(clusters, name, &topology.dead_letter, stop).await? else { return Ok(None) };
    writers.insert(Route::DeadLetter, dlq);
    if let Some(next) = topology.next_input(tier) {
        let Some(fw) = writer(clusters, name, &next.topic, stop).await? else { return Ok(None) };
        writers.insert(Route::Forward, fw);
    }

    // The input side: topic, offsets store, resume positions.
    let Some((in_client, in_cluster)) = clusters.get(&tier.input.topic.cluster, stop).await else {
        return Ok(None);
    };
    let input = &tier.input.topic;
    let n_in =
        crate::kafka::ensure_topic(&in_client, &in_cluster, &input.topic, input.partitions).await.map_err(&kerr)?;
    crate::kafka::ensure_topic(&in_client, &in_cluster, &topology.offsets_topic, 1).await.map_err(&kerr)?;
    let offsets_pc =
        crate::kafka::partition_client(&in_client, &in_cluster, &topology.offsets_topic, 0).await.map_err(&kerr)?;
    let mut store = Store::new(name, &input.topic, offsets_pc);
    let owned_partitions: Vec<i32> = (0..n_in).filter(|&p| tier.instance.owns(p)).collect();
    let commits = store.load(&owned_partitions).await.map_err(|e| {
        kerr(KafkaError::Topic {
            cluster: in_cluster.name.clone(),
            topic: topology.offsets_topic.clone(),
            message: format!("cannot read committed offsets: {e}"),
        })
    })?;
    let mut clients = BTreeMap::new();
    let mut plans = BTreeMap::new();
    for &p in &owned_partitions {
        let client = crate::kafka::partition_client(&in_client, &in_cluster, &input.topic, p).await.map_err(&kerr)?;
        // A position outside the log (retention, a recreated topic) is corrected by the
        // consumer on its first fetch, with a log line saying what happened.
        let earliest = match commits.get(&p) {
            Some(_) => 0,
            None => client.get_offset(rskafka::client::partition::OffsetAt::Earliest).await.unwrap_or(0),
        };
        let log_end = crate::kafka::high_watermark(&client).await.ok();
        let plan = resume(commits.get(&p), earliest, log_end);
        stats.replayed.fetch_add((plan.position.fetched - plan.position.offset).max(0) as u64, Ordering::Relaxed);
        match (plan.window_end, plan.careful_until) {
            (_, Some(until)) => tracing::warn!(
                tier = name, partition = p, crashes = plan.position.crashes,
                "the last {} runs ended abruptly: replaying offsets {}..{until} one at a time (each committed before the next){}",
                plan.position.crashes,
                plan.position.offset,
                if plan.dead_letter_first { "; the first one was in flight at each crash and is dead-lettered" } else { "" }
            ),
            (Some(end), None) => tracing::warn!(
                tier = name, partition = p,
                "the last run ended abruptly (not drained): replaying from offset {} (up to {end} may have been in flight)",
                plan.position.offset
            ),
            _ => {}
        }
        plans.insert(p, plan);
        clients.insert(p, client);
    }
    // The crash counts must be durable before anything is processed again.
    let starts: BTreeMap<i32, Position> = plans.iter().map(|(&p, plan)| (p, plan.position)).collect();
    store.commit(&starts).await.map_err(|e| {
        kerr(KafkaError::Topic {
            cluster: in_cluster.name.clone(),
            topic: topology.offsets_topic.clone(),
            message: format!("cannot write the start positions: {e}"),
        })
    })?;

    let cap_in = (tier.batch.max * tier.workers.max * 2).max(64);
    let (in_tx, in_rx) = flume::bounded::<Consumed>(cap_in);
    let (out_tx, out_rx) = flume::bounded(cap_in * 2);
    let stages_stop = Shutdown::new();
    let consumers_stop = stop.child_token();

    let careful: BTreeMap<i32, i64> = plans.iter().filter_map(|(&p, plan)| Some((p, plan.careful_until?))).collect();
    let mut owner = OffsetsOwner::new(name, store, &starts, careful, Arc::clone(&stats));
    let mut committed: BTreeMap<i32, _> = plans.keys().map(|&p| (p, owner.watch_committed(p))).collect();
    let owner = owner.start();
    let supervisor = TierSupervisor::new(name, Arc::clone(&stats)).start();
    let producer = {
        let (tier_name, delivered, exits, stats, stop) = (
            name.to_string(),
            owner.clone().recipient(),
            supervisor.clone().recipient(),
            Arc::clone(&stats),
            stages_stop.clone(),
        );
        actix::Supervisor::start(move |_| Producer {
            tier: tier_name,
            input: out_rx,
            writers,
            delivered,
            exits,
            stats,
            in_flight: Arc::new(tokio::sync::Semaphore::new(crate::producer::MAX_IN_FLIGHT)),
            shutdown: stop,
            restart_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            restarted: false,
        })
    };

    let faults = options.faults.get(name).cloned().unwrap_or_default();
    let pool = InferencePool::new(Arc::clone(&spec), Arc::clone(&stats), in_rx.clone(), out_tx.clone(), faults).start();
    let initial = match tier.scaling {
        crate::config::Scaling::Fixed => tier.workers.max,
        crate::config::Scaling::Elastic => tier.workers.min,
    };
    stats.workers_desired.store(initial, Ordering::Relaxed);
    pool.do_send(Resize(initial));

    let links = ConsumerLinks {
        out: in_tx,
        dead_letters: out_tx,
        delivered: owner.clone().recipient(),
        rewound: owner.clone().recipient(),
        stopped: owner.clone().recipient(),
        fetched: owner.clone().recipient(),
        exits: supervisor.clone().recipient(),
        budget: Arc::new(tokio::sync::Semaphore::new(options.fetch.queue_bytes.clamp(1, u32::MAX as usize))),
    };
    let mut consumers = Vec::new();
    for (p, client) in clients {
        let (tier_name, stats, links, stop) =
            (name.to_string(), Arc::clone(&stats), links.clone(), consumers_stop.clone());
        let plan = plans[&p];
        let (settings, start_offset) = (options.fetch, plan.position.offset);
        let careful = match (plan.careful_until, committed.remove(&p)) {
            (Some(until), Some(committed)) => Some(Careful {
                until,
                dead_letter_first: plan.dead_letter_first.then_some(plan.position.offset),
                crashes: plan.position.crashes,
                committed,
            }),
            _ => None,
        };
        let reopen = Some(crate::kafka::Reopen::new(&in_cluster, &input.topic, p));
        consumers.push(actix::Supervisor::start(move |_| PartitionConsumer {
            tier: tier_name,
            client,
            reopen,
            start_offset,
            stats,
            links,
            settings,
            shutdown: stop,
            restart_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            restarted: false,
            careful,
            state: None,
        }));
    }
    tracing::info!(
        tier = name,
        input = %input.topic,
        partitions = ?starts.iter().map(|(p, s)| (*p, s.offset)).collect::<BTreeMap<_, _>>(),
        workers = initial,
        exit = %tier.exit,
        "tier started"
    );
    Ok(Some(TierHandle {
        name: name.to_string(),
        spec,
        stats,
        pool,
        queue: in_rx,
        owner,
        supervisor,
        consumers_stop,
        stages_stop,
        _consumers: consumers,
        _producer: producer,
        tier: tier.clone(),
        scaler: Scaler::default(),
    }))
}
