//! The tier's membership in its Kafka consumer group (classic protocol, eager rebalancing).
//!
//! Input: the group coordinator (JoinGroup, SyncGroup, OffsetFetch, Heartbeat, LeaveGroup).
//! Output: [`Assigned`] (start these partitions from these commits) and [`Revoke`] (give these
//! back) to the tier's input side, which starts and drains the fetch loops. One rebalance:
//! revoke everything owned (fetch loops stop, in-flight records reach the producer and are
//! acknowledged, bounded by `revoke_within`, then a final commit), join, the leader assigns
//! with the `range` strategy, sync, read the new partitions' commits, hand them on. Heartbeats
//! run on a task and a connection of their own, so a long batch or a slow producer never
//! expires the session; the heartbeat that learns of a rebalance (or that this member was
//! dropped) sends [`Rejoin`]. Failure: a coordinator that cannot be reached is retried with
//! capped backoff and shown in health; partitions already owned keep being processed.

pub mod assignor;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::kafka::coordinator::consumer_protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription_with,
};
use crate::kafka::coordinator::{CoordinatorError, GroupClient};
use crate::messages::{Assigned, Committed, Generation, Revoke};
use crate::observe::stats::TierStats;
use crate::shutdown::Shutdown;

/// The protocol type of consumer groups: plain consumers join with the same.
const PROTOCOL_TYPE: &str = "consumer";
/// Health problem key.
const PROBLEM: &str = "group";
/// SyncGroup answered REBALANCE_IN_PROGRESS is asked again this often, this far apart, before
/// the member rejoins (see `Rebalance::attempt`).
const SYNC_RETRIES: u32 = 5;
const SYNC_RETRY_AFTER: Duration = Duration::from_millis(200);

/// Timing of the membership.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// Without a heartbeat for this long the coordinator drops the member and gives its
    /// partitions to the others (Kafka's `session.timeout.ms`; brokers accept 6 s and up).
    pub session_timeout: Duration,
    /// How often heartbeats go out; also how soon a running member hears of a rebalance.
    pub heartbeat_every: Duration,
    /// How long the coordinator waits for every member to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    /// How long a revocation waits for in-flight records to be acknowledged before it commits
    /// what was (the rest is replayed by the next owner).
    pub revoke_within: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            heartbeat_every: Duration::from_secs(1),
            rebalance_timeout: Duration::from_secs(30),
            revoke_within: Duration::from_secs(10),
        }
    }
}

pub struct MemberLinks {
    pub assigned: Recipient<Assigned>,
    pub revoke: Recipient<Revoke>,
}

pub struct GroupMember {
    pub tier: String,
    pub group: String,
    pub topic: String,
    /// Join, sync and offset fetches.
    pub client: Arc<Mutex<GroupClient>>,
    /// Heartbeats, on a connection of their own.
    pub heartbeats: Arc<Mutex<GroupClient>>,
    pub links: MemberLinks,
    pub stats: Arc<TierStats>,
    pub settings: GroupSettings,
    pub shutdown: Shutdown,
    member_id: String,
    generation: Option<Generation>,
    owned: Vec<i32>,
    busy: bool,
    /// A rebalance was signalled while one was in progress: run another right after it.
    again: Option<Rejoin>,
    /// User data of our subscription (see `Rebalance::nudge`).
    nudge: Option<u32>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl GroupMember {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tier: &str,
        group: &str,
        topic: &str,
        client: GroupClient,
        heartbeats: GroupClient,
        links: MemberLinks,
        stats: Arc<TierStats>,
        settings: GroupSettings,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            tier: tier.to_string(),
            group: group.to_string(),
            topic: topic.to_string(),
            client: Arc::new(Mutex::new(client)),
            heartbeats: Arc::new(Mutex::new(heartbeats)),
            links,
            stats,
            settings,
            shutdown,
            member_id: String::new(),
            generation: None,
            owned: Vec::new(),
            busy: false,
            again: None,
            nudge: None,
            heartbeat: None,
        }
    }
}

/// Heartbeats of one generation, on their own task and connection, from the moment the member
/// has its assignment (also while the input side waits for partitions to be released).
struct Heartbeats {
    client: Arc<Mutex<GroupClient>>,
    me: Addr<GroupMember>,
    every: Duration,
    session: Duration,
    stats: Arc<TierStats>,
    stop: Shutdown,
    tier: String,
}

impl Heartbeats {
    fn spawn(self, generation: Generation) -> tokio::task::JoinHandle<()> {
        let Heartbeats { client, me, every, session, stats, stop, tier } = self;
        actix::spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let answer = client.lock().await.heartbeat(generation.id, &generation.member_id).await;
                let rejoin = |reason: &str, reset: bool, signalled: bool| {
                    me.do_send(Rejoin { reason: reason.to_string(), reset, signalled })
                };
                match answer {
                    Ok(()) => {
                        last_ok = Instant::now();
                        if stats.clear_problem(PROBLEM) {
                            tracing::info!(tier = %tier, "group coordinator answers heartbeats again");
                        }
                    }
                    Err(CoordinatorError::RebalanceInProgress { .. }) => {
                        return rejoin("the group is rebalancing", false, true)
                    }
                    Err(CoordinatorError::IllegalGeneration { .. }) => {
                        return rejoin("this generation of the group is over", false, false)
                    }
                    Err(CoordinatorError::UnknownMemberId { .. }) => {
                        return rejoin(
                            "the coordinator dropped this member (no heartbeat within the session timeout)",
                            true,
                            false,
                        )
                    }
                    Err(e) => {
                        // Keep processing what we own: the coordinator tells us on its return
                        // whether the group moved on without us.
                        let why = format!("heartbeat failing for {:.0} s: {e}", last_ok.elapsed().as_secs_f64());
                        if stats.set_problem(PROBLEM, why) {
                            tracing::warn!(tier = %tier, "heartbeat failed: {e}; retrying");
                        }
                        if last_ok.elapsed() > session * 3 {
                            // A heartbeat that timed out marked the cluster (`kafka::suspect`):
                            // the member's older connection is replaced before the JoinGroup.
                            return rejoin("no heartbeat answered for three session timeouts", false, false);
                        }
                    }
                }
            }
        })
    }
}

impl Actor for GroupMember {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Rejoin { reason: "starting".into(), reset: false, signalled: false });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// Leave the current generation (if any) and join the group again.
#[derive(Message)]
#[rtype(result = "()")]
struct Rejoin {
    reason: String,
    /// The coordinator forgot our member id: join as a new member.
    reset: bool,
    /// A heartbeat was answered REBALANCE_IN_PROGRESS.
    signalled: bool,
}

/// What one rebalance ended with.
enum Outcome {
    Joined {
        generation: Generation,
        partitions: Vec<i32>,
        leader: bool,
        heartbeat: tokio::task::JoinHandle<()>,
        nudge: Option<u32>,
        /// JoinGroup calls this rebalance made, and the longest time the coordinator held one.
        joins: u32,
        longest_join: Duration,
    },
    Stopped,
}

impl Handler<Rejoin> for GroupMember {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Rejoin, ctx: &mut Self::Context) -> Self::Result {
        if self.shutdown.is_cancelled() {
            return Box::pin(actix::fut::ready(()));
        }
        if self.busy {
            // Heard by the heartbeats of the generation being set up (e.g. while the input side
            // waits for a partition's release): not to be lost.
            self.again = Some(msg);
            return Box::pin(actix::fut::ready(()));
        }
        self.busy = true;
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if msg.reset {
            self.member_id.clear();
        }
        if self.generation.is_some() {
            tracing::info!(tier = %self.tier, group = %self.group, "rejoining the group: {}", msg.reason);
        }
        let before = self.owned.clone();
        let job = Rebalance {
            tier: self.tier.clone(),
            group: self.group.clone(),
            topic: self.topic.clone(),
            member_id: self.member_id.clone(),
            owned: std::mem::take(&mut self.owned),
            client: Arc::clone(&self.client),
            assigned: self.links.assigned.clone(),
            revoke: self.links.revoke.clone(),
            stats: Arc::clone(&self.stats),
            settings: self.settings,
            shutdown: self.shutdown.clone(),
            heartbeats: Heartbeats {
                client: Arc::clone(&self.heartbeats),
                me: ctx.address(),
                every: self.settings.heartbeat_every,
                session: self.settings.session_timeout,
                stats: Arc::clone(&self.stats),
                stop: self.shutdown.clone(),
                tier: self.tier.clone(),
            },
            heartbeat: None,
            unnamed_since: None,
            joins: 0,
            longest_join: Duration::ZERO,
            previous: self.generation.as_ref().map(|g| g.id),
            signalled: msg.signalled,
            nudge: self.nudge,
        };
        self.stats.assigned_partitions.store(0, Ordering::Relaxed);
        let began = Instant::now();
        Box::pin(job.run().into_actor(self).map(move |outcome, act, ctx| {
            act.busy = false;
            let Outcome::Joined { generation, partitions, leader, heartbeat, nudge, joins, longest_join } = outcome
            else {
                return;
            };
            act.nudge = nudge;
            let (gained, lost) = assignor::changes(&before, &partitions);
            tracing::info!(
                tier = %act.tier, group = %act.group, member = %generation.member_id,
                "generation {}: assigned partitions {partitions:?} of {} (gained {gained:?}, lost {lost:?}){}; rebalance took {} ms, {joins} JoinGroup calls, the longest held {} ms",
                generation.id, act.topic, if leader { "; this member is the leader" } else { "" },
                began.elapsed().as_millis(), longest_join.as_millis()
            );
            act.stats.assigned_partitions.store(partitions.len(), Ordering::Relaxed);
            act.stats.rebalances.fetch_add(1, Ordering::Relaxed);
            act.member_id = generation.member_id.clone();
            act.owned = partitions;
            act.generation = Some(generation);
            act.heartbeat = Some(heartbeat);
            if let Some(again) = act.again.take() {
                ctx.notify(again);
            }
        }))
    }
}

/// Leave the group (a drained stop: the others take over at once instead of after the session
/// timeout).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

impl Handler<Leave> for GroupMember {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Leave, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.stats.assigned_partitions.store(0, Ordering::Relaxed);
        let (client, member, tier, group) =
            (Arc::clone(&self.client), std::mem::take(&mut self.member_id), self.tier.clone(), self.group.clone());
        self.generation = None;
        Box::pin(async move {
            if member.is_empty() {
                return;
            }
            let left = tokio::time::timeout(Duration::from_secs(5), async { client.lock().await.leave(&member).await });
            match left.await {
                Ok(Ok(())) => tracing::info!(tier = %tier, group = %group, "left the group"),
                Ok(Err(e)) => {
                    tracing::warn!(tier = %tier, group = %group, "leaving the group failed: {e}; the coordinator drops this member after the session timeout")
                }
                Err(_) => {
                    tracing::warn!(tier = %tier, group = %group, "leaving the group timed out; the coordinator drops this member after the session timeout")
                }
            }
        })
    }
}

/// One rebalance, from revocation to the new assignment handed on.
struct Rebalance {
    tier: String,
    group: String,
    topic: String,
    member_id: String,
    owned: Vec<i32>,
    client: Arc<Mutex<GroupClient>>,
    assigned: Recipient<Assigned>,
    revoke: Recipient<Revoke>,
    stats: Arc<TierStats>,
    settings: GroupSettings,
    shutdown: Shutdown,
    heartbeats: Heartbeats,
    /// Heartbeats of the generation being set up (stopped if that fails).
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Since when the group's plans have not named this member (see `attempt`).
    unnamed_since: Option<Instant>,
    /// The generation this member had before the rebalance, and whether a heartbeat's
    /// REBALANCE_IN_PROGRESS started it (see `attempt`).
    previous: Option<i32>,
    signalled: bool,
    /// User data of our subscription: changed to make the coordinator start a new generation.
    nudge: Option<u32>,
    /// JoinGroup calls made and the longest one (how much of the time the broker took).
    joins: u32,
    longest_join: Duration,
}

/// What went wrong in one attempt; `reset` drops the member id first.
struct Retry {
    why: String,
    reset: bool,
    at_once: bool,
    /// Try again after a short fixed pause, not the growing backoff (waiting on the group,
    /// not on a failure).
    short: bool,
}

impl Rebalance {
    async fn run(mut self) -> Outcome {
        if !self.owned.is_empty() {
            let partitions = std::mem::take(&mut self.owned);
            let deadline = Instant::now() + self.settings.revoke_within;
            let started = Instant::now();
            match self.revoke.send(Revoke { partitions: partitions.clone(), deadline }).await {
                Ok(report) => tracing::info!(
                    tier = %self.tier, group = %self.group,
                    "revoked partitions {partitions:?} in {} ms: committed {:?}, {} undelivered{}",
                    started.elapsed().as_millis(), report.committed, report.undelivered,
                    report.commit_error.map(|e| format!(", final commit failed: {e}")).unwrap_or_default()
                ),
                Err(e) => tracing::warn!(tier = %self.tier, "revoking {partitions:?} failed: {e}"),
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if self.shutdown.is_cancelled() {
                self.stop_heartbeats();
                return Outcome::Stopped;
            }
            let shutdown = self.shutdown.clone();
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Stopped,
                r = self.attempt() => r,
            };
            match attempt {
                Ok(outcome) => {
                    if self.stats.clear_problem(PROBLEM) {
                        tracing::info!(tier = %self.tier, group = %self.group, "joined the group again");
                    }
                    return outcome;
                }
                Err(retry) => {
                    if retry.reset {
                        self.member_id.clear();
                    }
                    if retry.at_once {
                        continue;
                    }
                    if retry.short {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return Outcome::Stopped,
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                        continue;
                    }
                    let why = format!("cannot join consumer group `{}`: {}", self.group, retry.why);
                    if self.stats.set_problem(PROBLEM, why.clone()) {
                        tracing::warn!(tier = %self.tier, "{why}; retrying with backoff");
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Outcome::Stopped,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    fn stop_heartbeats(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    fn retry(e: CoordinatorError) -> Retry {
        match e {
            CoordinatorError::UnknownMemberId { .. } => {
                Retry { why: e.to_string(), reset: true, at_once: true, short: false }
            }
            CoordinatorError::RebalanceInProgress { .. } | CoordinatorError::IllegalGeneration { .. } => {
                Retry { why: e.to_string(), reset: false, at_once: true, short: false }
            }
            other => Retry { why: other.to_string(), reset: false, at_once: false, short: false },
        }
    }

    /// JoinGroup, the leader's assignment, SyncGroup, OffsetFetch, `Assigned`.
    async fn attempt(&mut self) -> Result<Outcome, Retry> {
        if let Some(old) = self.heartbeat.take() {
            old.abort();
        }
        let s = self.settings;
        let nudge = self.nudge.map(u32::to_be_bytes);
        let subscription = encode_subscription_with(std::slice::from_ref(&self.topic), nudge.as_ref().map(|n| &n[..]));
        let protocols = [(assignor::RANGE.to_string(), subscription)];
        let mut client = self.client.lock().await;
        // Join and sync times at debug level: how long a coordinator holds each call is most
        // of a rebalance's time (tansu 0.6.0 holds a follower's JoinGroup for 3 s).
        let started = Instant::now();
        let joined =
            client.join(&self.member_id, PROTOCOL_TYPE, &protocols, s.session_timeout, s.rebalance_timeout).await;
        self.joins += 1;
        self.longest_join = self.longest_join.max(started.elapsed());
        let joined = joined.map_err(|e| {
            tracing::debug!(tier = %self.tier, "JoinGroup failed after {} ms: {e}", started.elapsed().as_millis());
            Self::retry(e)
        })?;
        tracing::debug!(
            tier = %self.tier, "JoinGroup answered in {} ms: generation {}, leader {}, {} members listed",
            started.elapsed().as_millis(), joined.generation_id, joined.leader, joined.members.len()
        );
        self.member_id = joined.member_id.clone();
        let leader = joined.leader == joined.member_id;
        let assignments = if leader { Self::assign(&mut client, &joined.members).await? } else { Vec::new() };
        let started = Instant::now();
        let mut tries = 0;
        let mine = loop {
            let answer = client
                .sync(
                    joined.generation_id,
                    &joined.member_id,
                    PROTOCOL_TYPE,
                    &joined.protocol_name,
                    assignments.clone(),
                )
                .await;
            match answer {
                Ok(mine) => break mine,
                // Kafka holds a follower's SyncGroup until the leader's arrives; tansu answers
                // REBALANCE_IN_PROGRESS instead, and a rejoin would cost its 3 s follower pause.
                // Asking again shortly settles that; on Kafka the answer is the same each time
                // (a new rebalance began) and the member rejoins after ~1 s.
                Err(CoordinatorError::RebalanceInProgress { .. }) if tries < SYNC_RETRIES => {
                    tries += 1;
                    drop(client);
                    tokio::time::sleep(SYNC_RETRY_AFTER).await;
                    client = self.client.lock().await;
                }
                Err(e) => {
                    tracing::debug!(tier = %self.tier, "SyncGroup failed after {} ms: {e}", started.elapsed().as_millis());
                    return Err(Self::retry(e));
                }
            }
        };
        tracing::debug!(tier = %self.tier, "SyncGroup answered in {} ms ({tries} retries)", started.elapsed().as_millis());
        let plan = decode_assignment(&mine).map_err(|e| Retry {
            why: format!("undecodable assignment from the leader: {e}"),
            reset: false,
            at_once: false,
            short: false,
        })?;
        // A leader's plan names every member's subscribed topics (ours does, with an empty list
        // for a member left without partitions). No entry at all means no plan was made for
        // this member: tansu 0.6.0 answers a new member's SyncGroup from the previous
        // generation's plan while a dead leader is still in the group. Join again (with
        // backoff) until a live leader assigns, for at most a session timeout: a foreign leader
        // (a Java client) leaves a member without partitions out of its plan, and that must
        // settle as an empty share, not a rejoin loop.
        let unnamed = !plan.contains_key(&self.topic);
        let first = *self.unnamed_since.get_or_insert_with(Instant::now);
        if unnamed && first.elapsed() < s.session_timeout + s.heartbeat_every {
            return Err(Retry {
                why: format!("generation {}: the group's plan does not name this member", joined.generation_id),
                reset: false,
                at_once: false,
                short: true,
            });
        }
        self.unnamed_since = None;
        // On Kafka every rebalance starts a new generation. tansu 0.6.0 keeps the generation
        // when it drops a member whose session expired: only the member whose heartbeat
        // noticed is told, the others keep their old shares and the dead member's partitions
        // stay unowned. Changed metadata makes it start a new generation, which every other
        // member's next heartbeat hears of.
        if std::mem::take(&mut self.signalled) && self.previous == Some(joined.generation_id) {
            self.nudge = Some(self.nudge.unwrap_or(0).wrapping_add(1));
            tracing::info!(
                tier = %self.tier, group = %self.group,
                "the coordinator kept generation {} through a rebalance (a member's session expired): joining again with new metadata so that every member hears of it",
                joined.generation_id
            );
            return Err(Retry {
                why: "generation unchanged by a rebalance".into(),
                reset: false,
                at_once: true,
                short: false,
            });
        }
        let mut partitions = plan.get(&self.topic).cloned().unwrap_or_default();
        partitions.sort_unstable();
        let commits = if partitions.is_empty() {
            BTreeMap::new()
        } else {
            client.fetch_offsets(&self.topic, &partitions).await.map_err(Self::retry)?
        };
        drop(client);
        let generation = Generation { id: joined.generation_id, member_id: joined.member_id };
        if let Some(old) = self.heartbeat.take() {
            old.abort();
        }
        let heartbeats = Heartbeats {
            client: Arc::clone(&self.heartbeats.client),
            me: self.heartbeats.me.clone(),
            stats: Arc::clone(&self.heartbeats.stats),
            stop: self.heartbeats.stop.clone(),
            tier: self.heartbeats.tier.clone(),
            ..self.heartbeats
        };
        self.heartbeat = Some(heartbeats.spawn(generation.clone()));
        let committed: BTreeMap<i32, Option<Committed>> = partitions
            .iter()
            .map(|p| {
                let c =
                    commits.get(p).filter(|(o, _)| *o >= 0).map(|(o, m)| Committed { offset: *o, metadata: m.clone() });
                (*p, c)
            })
            .collect();
        match self.assigned.send(Assigned { generation: generation.clone(), partitions: committed }).await {
            Ok(Ok(())) => match self.heartbeat.take() {
                Some(heartbeat) => Ok(Outcome::Joined {
                    generation,
                    partitions,
                    leader,
                    heartbeat,
                    nudge: self.nudge,
                    joins: self.joins,
                    longest_join: self.longest_join,
                }),
                None => Err(Retry { why: "heartbeats not running".into(), reset: false, at_once: true, short: false }),
            },
            Ok(Err(why)) => {
                // Whatever did start is given back before trying again.
                let deadline = Instant::now() + s.revoke_within;
                let _ = self.revoke.send(Revoke { partitions, deadline }).await;
                Err(Retry {
                    why: format!("cannot start the assigned partitions: {why}"),
                    reset: false,
                    at_once: false,
                    short: false,
                })
            }
            Err(e) => Err(Retry {
                why: format!("the tier's input side is gone: {e}"),
                reset: false,
                at_once: false,
                short: false,
            }),
        }
    }

    /// The leader's job: every member's share, with the `range` strategy.
    /// The leader's plan; partition counts over the coordinator's connection (see
    /// `GroupClient::partition_counts`).
    async fn assign(client: &mut GroupClient, members: &[(String, Vec<u8>)]) -> Result<Vec<(String, Vec<u8>)>, Retry> {
        let mut subscriptions = Vec::new();
        for (member, metadata) in members {
            let topics = decode_subscription(metadata).map_err(|e| Retry {
                why: format!("member {member} sent an undecodable subscription: {e}"),
                reset: false,
                at_once: false,
                short: false,
            })?;
            subscriptions.push((member.clone(), topics));
        }
        let mut wanted: Vec<String> = subscriptions.iter().flat_map(|(_, topics)| topics.iter().cloned()).collect();
        wanted.sort();
        wanted.dedup();
        let counts = client.partition_counts(&wanted).await.map_err(|e| Retry {
            why: format!("cannot read topic metadata: {e}"),
            reset: false,
            at_once: false,
            short: false,
        })?;
        let plan = assignor::range(&subscriptions, &counts);
        Ok(plan.into_iter().map(|(member, topics)| (member, encode_assignment(&topics))).collect())
    }
}
