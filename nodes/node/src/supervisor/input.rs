//! The input side of one tier: starts and stops the fetch loops as the group assigns and
//! revokes partitions.
//!
//! [`Assigned`] (from the group member): each partition's resume plan (its group commit with
//! the recovery state from the commit's metadata or the journal, else a record of an older
//! release in the journal's topic (a migration), else `auto_offset_reset`; then
//! `offsets::recovery` for crash windows), made durable by the offsets owner (`Adopt`) before
//! its fetch loop starts. A partition whose last commit is not a release (the previous owner
//! had not drained it: it may still be revoking, or it died) is started only once that owner's
//! final, clean commit arrives, or once its commits have stood still for a session timeout:
//! brokers whose JoinGroup does not wait for every member to rejoin (tansu 0.6.0) could
//! otherwise let two members process one partition at once. [`Revoke`]: the partitions'
//! fetch loops stop, the owner drains and commits them (`Drain`, bounded by the deadline) and
//! forgets them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rskafka::client::partition::{OffsetAt, PartitionClient};

use crate::backoff::Backoff;
use crate::config::{Cluster, OffsetReset};
use crate::consumer::{Careful, ConsumerLinks, FetchSettings, PartitionConsumer, Replay};
use crate::messages::{Assigned, DrainReport, Revoke};
use crate::observe::stats::TierStats;
use crate::offsets::commit::{decode_metadata, resolve, Commit, Position};
use crate::offsets::journal;
use crate::offsets::recovery::{replay_until_ms, resume, Resume};
use crate::offsets::{Adopt, Drain, OffsetsOwner};
use crate::shutdown::Shutdown;

pub struct TierInput {
    pub tier: String,
    pub topic: String,
    pub cluster: Cluster,
    pub client: Arc<rskafka::client::Client>,
    pub owner: Addr<OffsetsOwner>,
    pub links: ConsumerLinks,
    pub settings: FetchSettings,
    pub stats: Arc<TierStats>,
    /// Parent of every fetch loop's own stop token.
    pub stop: Shutdown,
    pub reset: OffsetReset,
    /// This group's recovery journal, read where the group's commit has no metadata.
    pub journal: Arc<journal::Store>,
    /// The same topic's records of an older release, read where the group has no commit.
    pub legacy: Arc<journal::Store>,
    /// For re-reading commits while a partition's previous owner releases it.
    pub group: Arc<tokio::sync::Mutex<crate::kafka::coordinator::GroupClient>>,
    /// How long a previous owner's commits must stand still before it counts as gone.
    pub silence: Duration,
    pub consumers: BTreeMap<i32, (Addr<PartitionConsumer>, Shutdown)>,
}

/// Where one assigned partition starts.
struct Start {
    client: Arc<PartitionClient>,
    plan: Resume,
    replay: Option<Replay>,
}

impl Actor for TierInput {
    type Context = Context<Self>;
}

impl TierInput {
    fn log_plan(tier: &str, p: i32, plan: &Resume) {
        match (plan.window_end, plan.careful_until) {
            (_, Some(until)) => tracing::warn!(
                tier, partition = p, crashes = plan.position.crashes,
                "the last {} runs ended abruptly: replaying offsets {}..{until} one at a time (each committed before the next){}",
                plan.position.crashes,
                plan.position.offset,
                if plan.dead_letter_first { "; the first one was in flight at each crash and is dead-lettered" } else { "" }
            ),
            (Some(end), None) => tracing::warn!(
                tier, partition = p,
                "the last owner ended abruptly (not drained): replaying from offset {} (up to {end} may have been in flight)",
                plan.position.offset
            ),
            _ => {}
        }
    }
}

/// Waits until each partition's previous owner released it (a clean commit) or its commits
/// stood still for `silence` (it is gone: what it had in flight is replayed); returns the
/// commit to resume each from.
async fn wait_release(
    tier: &str,
    topic: &str,
    group: &tokio::sync::Mutex<crate::kafka::coordinator::GroupClient>,
    journal: &journal::Store,
    mut pending: BTreeMap<i32, Commit>,
    silence: Duration,
) -> BTreeMap<i32, Commit> {
    let mut out = BTreeMap::new();
    if pending.is_empty() {
        return out;
    }
    let started = Instant::now();
    tracing::info!(
        tier, partitions = ?pending.keys().collect::<Vec<_>>(),
        "the previous owner has not released these partitions yet: waiting for its final commit (or {silence:?} without one)"
    );
    // Silence counts from the last commit's write, where it says when (a previous owner killed
    // well before this assignment has been silent that long already).
    let parts: Vec<i32> = pending.keys().copied().collect();
    let written = written_ms(topic, group, journal, &parts).await;
    let now_ms = crate::now_ms();
    let mut moved: BTreeMap<i32, Instant> = parts
        .iter()
        .map(|&p| {
            let age = written.get(&p).map_or(0, |&at| (now_ms - at).clamp(0, silence.as_millis() as i64));
            (p, Instant::now().checked_sub(Duration::from_millis(age as u64)).unwrap_or_else(Instant::now))
        })
        .collect();
    while !pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let parts: Vec<i32> = pending.keys().copied().collect();
        let fetched = group.lock().await.fetch_offsets(topic, &parts).await;
        let found = match fetched {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(tier, "re-reading commits failed: {e}");
                BTreeMap::new()
            }
        };
        let bare: Vec<i32> =
            found.iter().filter(|(_, (o, m))| decode_metadata(*o, m).is_none()).map(|(p, _)| *p).collect();
        let recorded = if bare.is_empty() { BTreeMap::new() } else { journal.load(&bare).await.unwrap_or_default() };
        for p in parts {
            let now = found.get(&p).map(|(o, m)| resolve(*o, m, recorded.get(&p)));
            let Some(last) = pending.get(&p) else { continue };
            match now {
                Some(c) if c.clean => {
                    tracing::info!(
                        tier,
                        partition = p,
                        "released by its previous owner after {} ms",
                        started.elapsed().as_millis()
                    );
                    pending.remove(&p);
                    out.insert(p, c);
                }
                Some(c) if c != *last => {
                    moved.insert(p, Instant::now());
                    pending.insert(p, c);
                }
                _ if moved.get(&p).is_some_and(|t| t.elapsed() >= silence) => {
                    tracing::warn!(
                        tier, partition = p,
                        "no release from the previous owner and no commit for {silence:?}: it is gone; taking over (what it had not committed is replayed)"
                    );
                    if let Some(c) = pending.remove(&p) {
                        out.insert(p, c);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// When each partition's last commit was written (its metadata's time, else its journal
/// record's), where known.
async fn written_ms(
    topic: &str,
    group: &tokio::sync::Mutex<crate::kafka::coordinator::GroupClient>,
    journal: &journal::Store,
    parts: &[i32],
) -> BTreeMap<i32, i64> {
    let found = group.lock().await.fetch_offsets(topic, parts).await.unwrap_or_default();
    let mut out: BTreeMap<i32, i64> =
        found.iter().filter_map(|(&p, (_, m))| Some((p, crate::offsets::commit::metadata_written_ms(m)?))).collect();
    let rest: Vec<i32> = parts.iter().copied().filter(|p| !out.contains_key(p)).collect();
    if !rest.is_empty() {
        if let Ok(stamped) = journal.load_stamped(&rest).await {
            for (p, (c, at)) in stamped {
                // Only the record of the group's offset says when that offset was written.
                if found.get(&p).is_some_and(|(o, _)| *o == c.offset) && at > 0 {
                    out.insert(p, at);
                }
            }
        }
    }
    out
}

impl Handler<Assigned> for TierInput {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, msg: Assigned, _ctx: &mut Self::Context) -> Self::Result {
        let (client, cluster, tier, topic, reset, owner) = (
            Arc::clone(&self.client),
            self.cluster.clone(),
            self.tier.clone(),
            self.topic.clone(),
            self.reset,
            self.owner.clone(),
        );
        let (journal, legacy) = (Arc::clone(&self.journal), Arc::clone(&self.legacy));
        let (group, silence) = (Arc::clone(&self.group), self.silence);
        let job = async move {
            // The journal is read only for what the group's commits do not say themselves.
            let bare: Vec<i32> = msg
                .partitions
                .iter()
                .filter(|(_, c)| c.as_ref().is_some_and(|c| decode_metadata(c.offset, &c.metadata).is_none()))
                .map(|(p, _)| *p)
                .collect();
            let never: Vec<i32> = msg.partitions.iter().filter(|(_, c)| c.is_none()).map(|(p, _)| *p).collect();
            let read = |store: Arc<journal::Store>, parts: Vec<i32>| async move {
                if parts.is_empty() {
                    return Ok(BTreeMap::new());
                }
                store.load(&parts).await.map_err(|e| format!("cannot read the recovery journal {}: {e}", store.prefix))
            };
            let recorded = read(Arc::clone(&journal), bare).await?;
            let older = read(legacy, never).await?;
            let pending: BTreeMap<i32, Commit> = msg
                .partitions
                .iter()
                .filter_map(|(&p, c)| Some((p, resolve(c.as_ref()?.offset, &c.as_ref()?.metadata, recorded.get(&p)))))
                .filter(|(_, c)| !c.clean)
                .collect();
            let released = wait_release(&tier, &topic, &group, &journal, pending, silence).await;
            let mut starts = BTreeMap::new();
            for (&p, committed) in &msg.partitions {
                let pc =
                    crate::kafka::partition_client(&client, &cluster, &topic, p).await.map_err(|e| e.to_string())?;
                let commit: Option<Commit> = match committed {
                    Some(_) if released.contains_key(&p) => released.get(&p).cloned(),
                    Some(c) => Some(resolve(c.offset, &c.metadata, recorded.get(&p))),
                    None => older.get(&p).cloned().inspect(|c| {
                        tracing::info!(
                            tier = %tier, partition = p,
                            "no commit in the group yet: resuming from offset {} that an older release recorded (migration from an older release; commits go to the group from now on)",
                            c.offset
                        )
                    }),
                };
                let log_end = crate::kafka::high_watermark(&pc).await.map_err(|e| format!("partition {p}: {e}"))?;
                let start = match (&commit, reset) {
                    (Some(_), _) => 0,
                    (None, OffsetReset::Earliest) => {
                        pc.get_offset(OffsetAt::Earliest).await.map_err(|e| format!("partition {p}: {e}"))?
                    }
                    (None, OffsetReset::Latest) => log_end,
                };
                if commit.is_none() {
                    tracing::info!(tier = %tier, partition = p, "no committed offset: starting at the {} offset {start} (auto_offset_reset)", reset.name());
                }
                let plan = resume(commit.as_ref(), start, Some(log_end));
                Self::log_plan(&tier, p, &plan);
                starts.insert(p, Start { client: pc, plan, replay: None });
            }
            // After an abrupt end, what the last owner may have processed is counted as it is
            // replayed: what its last commit knew it had fetched, and what was appended before
            // it stopped committing.
            let abrupt: Vec<i32> =
                starts.iter().filter(|(_, s)| s.plan.window_end.is_some()).map(|(&p, _)| p).collect();
            if !abrupt.is_empty() {
                let written = written_ms(&topic, &group, &journal, &abrupt).await;
                for p in abrupt {
                    if let Some(s) = starts.get_mut(&p) {
                        let until_ms = written.get(&p).map(|&at| replay_until_ms(at));
                        s.replay = Some(Replay { fetched: s.plan.position.fetched, until_ms });
                    }
                }
            }
            let positions: BTreeMap<i32, Position> = starts.iter().map(|(&p, s)| (p, s.plan.position)).collect();
            let careful = starts.iter().filter_map(|(&p, s)| Some((p, s.plan.careful_until?))).collect();
            let adopt = Adopt { generation: msg.generation, starts: positions, careful };
            let watches = owner.send(adopt).await.map_err(|e| format!("offsets owner gone: {e}"))??;
            Ok::<_, String>((starts, watches))
        };
        Box::pin(job.into_actor(self).map(|result, act, _ctx| {
            let (starts, mut watches) = result?;
            for (p, start) in starts {
                act.start_consumer(p, start, watches.remove(&p));
            }
            Ok(())
        }))
    }
}

impl TierInput {
    fn start_consumer(&mut self, p: i32, start: Start, committed: Option<tokio::sync::watch::Receiver<i64>>) {
        let plan = start.plan;
        let careful = match (plan.careful_until, committed) {
            (Some(until), Some(committed)) => Some(Careful {
                until,
                dead_letter_first: plan.dead_letter_first.then_some(plan.position.offset),
                crashes: plan.position.crashes,
                committed,
            }),
            _ => None,
        };
        let stop = self.stop.child_token();
        let (tier, stats, links, settings, client) =
            (self.tier.clone(), Arc::clone(&self.stats), self.links.clone(), self.settings, start.client);
        let reopen = Some(crate::kafka::Reopen::new(&self.cluster, &self.topic, p));
        let start_offset = plan.position.offset;
        let replay = start.replay;
        let consumer_stop = stop.clone();
        let addr = actix::Supervisor::start(move |_| PartitionConsumer {
            tier,
            client,
            reopen,
            start_offset,
            stats,
            links,
            settings,
            shutdown: consumer_stop,
            restart_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            restarted: false,
            careful,
            replay,
            state: None,
        });
        if let Some((_, old)) = self.consumers.insert(p, (addr, stop)) {
            old.cancel();
        }
    }
}

impl Handler<Revoke> for TierInput {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Revoke, _ctx: &mut Self::Context) -> Self::Result {
        let mut stopping = Vec::new();
        for p in &msg.partitions {
            if let Some((addr, stop)) = self.consumers.remove(p) {
                stop.cancel();
                stopping.push(addr);
            }
        }
        let partitions: BTreeSet<i32> = msg.partitions.iter().copied().collect();
        let drain = self.owner.send(Drain { deadline: msg.deadline, partitions: Some(partitions), forget: true });
        Box::pin(async move {
            let report = drain.await.unwrap_or_else(|e| DrainReport {
                commit_error: Some(format!("offsets owner gone: {e}")),
                ..Default::default()
            });
            // The fetch loops idle once stopped; dropping their last address ends them.
            drop(stopping);
            report
        })
    }
}
