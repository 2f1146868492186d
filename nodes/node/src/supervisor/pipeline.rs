//! Wires one tier's pipeline: the only place its graph is visible.
//!
//! Built downstream first (output topics and producer, offsets owner, pool, the input side,
//! then the group member), so nothing is ever sent into a stage that does not exist yet:
//! group member -> `Assigned`/`Revoke` -> input side -> consumers -> `Consumed` -> pool ->
//! `Inferred` -> producer -> `Delivered` -> offsets owner -> OffsetCommit.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::input::TierInput;
use super::tier::TierSupervisor;
use super::NodeOptions;
use crate::backoff::Backoff;
use crate::config::{TopicRef, Topology};
use crate::consumer::group::{GroupMember, Leave, MemberLinks};
use crate::consumer::ConsumerLinks;
use crate::error::{KafkaError, NodeError};
use crate::inference::pool::InferencePool;
use crate::inference::TierSpec;
use crate::kafka::clusters::Clusters;
use crate::kafka::coordinator::GroupClient;
use crate::kafka::Reopen;
use crate::messages::{Consumed, Resize, Route};
use crate::observe::stats::TierStats;
use crate::offsets::group_store::GroupStore;
use crate::offsets::journal;
use crate::offsets::{Drain, DrainReport, OffsetsOwner};
use crate::producer::{Producer, TopicWriter};
use crate::scaling::exits::ExitController;
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
    /// The tier's membership in its consumer group.
    member: Addr<GroupMember>,
    /// Held so the supervisors restart a stage that fails; dropped to stop them for good.
    _input: Addr<TierInput>,
    _producer: Addr<Producer>,
    /// The tier's current settings (replaced in place by a topology reload).
    pub tier: crate::config::Tier,
    pub scaler: Scaler,
    /// The adaptive exit rule, where the tier has a latency target.
    pub exits: Option<ExitController>,
    /// With an adaptive exit rule: the age of the oldest record waiting for the next tier.
    pub next_backlog: Option<tokio::sync::watch::Receiver<Option<Duration>>>,
}

impl TierHandle {
    /// Stops fetching, waits (until `deadline`) for everything fetched to be delivered,
    /// commits, leaves the group (the others take over at once), then lets the stages go.
    pub async fn stop(self, deadline: Instant) -> DrainReport {
        self.consumers_stop.cancel();
        let report = match self.owner.send(Drain { deadline, partitions: None, forget: false }).await {
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
        let _ = self.member.send(Leave).await;
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

/// The adaptive exit controller of `tier` (at its base threshold), if it has a target.
pub fn exit_controller(tier: &crate::config::Tier) -> Option<ExitController> {
    let a = tier.adaptive.as_ref()?;
    Some(ExitController::new(tier.exit, a.p99_target, a.accuracy_floor, &a.calibration))
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
    let mut wake = None;
    let mut next_backlog = None;
    if let Some(next) = topology.next_input(tier) {
        let Some(fw) = writer(clusters, name, &next.topic, stop).await? else { return Ok(None) };
        writers.insert(Route::Forward, fw);
        wake = Some(options.wakeups.sender(&next.topic.cluster, &next.topic.topic));
        let next_group = tier.next.as_deref().and_then(|n| topology.tier(n)).map(|t| t.group.clone());
        if let (Some(_), Some(group)) = (&tier.adaptive, next_group) {
            let Some((client, cluster)) = clusters.get(&next.topic.cluster, stop).await else { return Ok(None) };
            let next_input = crate::observe::backlog::NextInput {
                cluster,
                client,
                topic: next.topic.topic.clone(),
                partitions: next.topic.partitions,
                group,
            };
            next_backlog = Some(next_input);
        }
    }

    // The input side: the topic, and the consumer group that spreads its partitions.
    let Some((in_client, in_cluster)) = clusters.get(&tier.input.topic.cluster, stop).await else {
        return Ok(None);
    };
    let input = &tier.input.topic;
    crate::kafka::ensure_topic(&in_client, &in_cluster, &input.topic, input.partitions).await.map_err(&kerr)?;
    let client_id = format!("ddnn-{name}");
    let group_client = || GroupClient::new(&in_cluster, &tier.group, &client_id);
    // The recovery journal, on the input's cluster (see `offsets::journal`).
    crate::kafka::ensure_topic(&in_client, &in_cluster, &topology.offsets_topic, 1).await.map_err(&kerr)?;
    let journal_pc =
        crate::kafka::partition_client(&in_client, &in_cluster, &topology.offsets_topic, 0).await.map_err(&kerr)?;
    let journal_of = || {
        journal::Store::new(journal::group_prefix(&tier.group, &input.topic), Arc::clone(&journal_pc))
            .reconnecting(Reopen::new(&in_cluster, &topology.offsets_topic, 0))
    };
    let store = GroupStore::new(&input.topic, group_client(), journal_of());

    let cap_in = (tier.batch.max * tier.workers.max * 2).max(64);
    let (in_tx, in_rx) = flume::bounded::<Consumed>(cap_in);
    let (out_tx, out_rx) = flume::bounded(cap_in * 2);
    let stages_stop = Shutdown::new();
    let consumers_stop = stop.child_token();
    // Stops with the tier's fetching (a reload that removes the tier, or the node's drain).
    let next_backlog = next_backlog.map(|n| crate::observe::backlog::watch_backlog(n, name, consumers_stop.clone()));

    let owner = OffsetsOwner::new(name, store, Arc::clone(&stats));
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
            wake,
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
        wake: Some(options.wakeups.receiver(&input.cluster, &input.topic)),
        budget: Arc::new(tokio::sync::Semaphore::new(options.fetch.queue_bytes.clamp(1, u32::MAX as usize))),
    };
    let tier_input = TierInput {
        tier: name.to_string(),
        topic: input.topic.clone(),
        cluster: in_cluster.clone(),
        client: Arc::clone(&in_client),
        owner: owner.clone(),
        links,
        settings: options.fetch,
        stats: Arc::clone(&stats),
        stop: consumers_stop.clone(),
        reset: tier.auto_offset_reset,
        journal: Arc::new(journal_of()),
        legacy: Arc::new(
            journal::Store::new(journal::legacy_prefix(name, &input.topic), Arc::clone(&journal_pc))
                .reconnecting(Reopen::new(&in_cluster, &topology.offsets_topic, 0)),
        ),
        group: Arc::new(tokio::sync::Mutex::new(group_client())),
        silence: options.group.session_timeout,
        consumers: BTreeMap::new(),
    }
    .start();
    let member = GroupMember::new(
        name,
        &tier.group,
        &input.topic,
        group_client(),
        group_client(),
        MemberLinks { assigned: tier_input.clone().recipient(), revoke: tier_input.clone().recipient() },
        Arc::clone(&stats),
        options.group,
        consumers_stop.clone(),
    )
    .start();
    tracing::info!(
        tier = name,
        input = %input.topic,
        group = %tier.group,
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
        member,
        _input: tier_input,
        _producer: producer,
        tier: tier.clone(),
        scaler: Scaler::default(),
        exits: exit_controller(tier),
        next_backlog,
    }))
}
