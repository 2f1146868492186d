//! The offsets owner of one tier: `Delivered` ranges in, commits to the group coordinator out.
//!
//! Input: [`Delivered`] from the producer (outputs the broker acknowledged) and the consumers
//! (gaps in the log, ranges lost to retention), [`ConsumerStopped`] when a fetch loop ends,
//! [`Adopt`] when the group gives this member partitions. Output: an OffsetCommit of each owned
//! partition's contiguous delivered prefix every `COMMIT_EVERY`, on this actor's own schedule,
//! so one tier's slow commit never holds up another tier. [`Drain`] waits until everything the
//! stopped consumers of some (or all) partitions handed on is delivered (or a deadline
//! passes), commits one last time and, on a revocation, forgets them: only what was
//! acknowledged downstream is ever committed. Failure: a failed commit is retried on the next
//! tick and shown in health after `STALL_AFTER`; the last good commit stands.

pub mod commit;
pub mod group_store;
pub mod journal;
pub mod recovery;
pub mod watermark;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::messages::Generation;
pub use crate::messages::{ConsumerStopped, Delivered, DrainReport, Fetched, Rewound};
use crate::observe::stats::TierStats;
use commit::Position;
use group_store::GroupStore;
use watermark::Watermark;

pub const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Wait until the stopped consumers of `partitions` (all owned ones when `None`) delivered
/// everything they handed on (or `deadline`), commit, report; `forget` them afterwards (a
/// revocation: another member owns them next).
#[derive(Message, Debug, Clone)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    pub deadline: Instant,
    pub partitions: Option<BTreeSet<i32>>,
    pub forget: bool,
}

/// The group gave this member `starts` (already planned by `recovery::resume`) in
/// `generation`: commit them at once (crash counts must be durable before anything is
/// processed) and track them. Answers with a watch of each partition's durable commit.
#[derive(Message)]
#[rtype(result = "Result<BTreeMap<i32, tokio::sync::watch::Receiver<i64>>, String>")]
pub struct Adopt {
    pub generation: Generation,
    pub starts: BTreeMap<i32, Position>,
    /// Crash windows (partition -> end) replayed one record at a time.
    pub careful: BTreeMap<i32, i64>,
}

struct Draining {
    deadline: Instant,
    partitions: BTreeSet<i32>,
    forget: bool,
    reply: tokio::sync::oneshot::Sender<DrainReport>,
}

pub struct OffsetsOwner {
    tier: String,
    store: Arc<tokio::sync::Mutex<GroupStore>>,
    generation: Generation,
    marks: BTreeMap<i32, Watermark>,
    stopped: BTreeMap<i32, i64>,
    fetched: BTreeMap<i32, i64>,
    /// Where each partition started and the crash count found there.
    starts: BTreeMap<i32, Position>,
    /// Crash windows being replayed one record at a time: commit after every delivery.
    careful: BTreeMap<i32, i64>,
    /// Durably committed position per partition, for consumers replaying a crash window.
    committed: BTreeMap<i32, tokio::sync::watch::Sender<i64>>,
    stats: Arc<TierStats>,
    committing: bool,
    /// A delivery in a crash window arrived while a commit was in flight: commit again.
    again: bool,
    draining: Option<Draining>,
    /// A final drain (the tier's stop) committed: nothing more is committed. The tier leaves
    /// its group before it ends this actor, and a commit interval firing meanwhile would write
    /// the same position again without `clean`: the next start would replay as after a crash.
    sealed: bool,
}

impl OffsetsOwner {
    pub fn new(tier: &str, store: GroupStore, stats: Arc<TierStats>) -> Self {
        Self {
            tier: tier.to_string(),
            store: Arc::new(tokio::sync::Mutex::new(store)),
            generation: Generation::default(),
            marks: BTreeMap::new(),
            stopped: BTreeMap::new(),
            fetched: BTreeMap::new(),
            committed: BTreeMap::new(),
            starts: BTreeMap::new(),
            careful: BTreeMap::new(),
            stats,
            committing: false,
            again: false,
            draining: None,
            sealed: false,
        }
    }

    fn positions(&self, only: Option<&BTreeSet<i32>>) -> BTreeMap<i32, Position> {
        self.marks
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o.contains(p)))
            .map(|(&p, w)| {
                let fetched = self.fetched.get(&p).copied().unwrap_or(0).max(w.delivered_end());
                // The crash count stands only while the position has not moved: a run that made
                // progress was not stuck on the record at its start, so an innocent record is
                // never dead-lettered for kills that merely interrupted a replay.
                let crashes = match self.starts.get(&p) {
                    Some(s) if w.committable() <= s.offset => s.crashes,
                    _ => 0,
                };
                (p, Position { offset: w.committable(), fetched, crashes, clean: false })
            })
            .collect()
    }

    fn undelivered(&self, only: &BTreeSet<i32>) -> i64 {
        self.marks
            .iter()
            .filter(|(p, _)| only.contains(p))
            .map(|(p, w)| self.stopped.get(p).map_or(0, |&next| (next - w.committable()).max(0)))
            .sum::<i64>()
    }

    fn drained(&self, only: &BTreeSet<i32>) -> bool {
        only.iter().all(|p| self.stopped.contains_key(p) || !self.marks.contains_key(p)) && self.undelivered(only) == 0
    }

    /// Records a successful commit: the durable position, for crash replays and for lag.
    fn committed_ok(&mut self, positions: &BTreeMap<i32, Position>) {
        for (p, pos) in positions {
            if !self.marks.contains_key(p) {
                continue; // revoked meanwhile
            }
            self.stats.set_position(*p, pos.offset);
            if let Some(tx) = self.committed.get(p) {
                tx.send_if_modified(|v| std::mem::replace(v, pos.offset) != pos.offset);
            }
        }
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.sealed || self.marks.is_empty() {
            return;
        }
        self.committing = true;
        self.again = false;
        let (store, positions, generation) = (Arc::clone(&self.store), self.positions(None), self.generation.clone());
        let job = async move {
            store
                .lock()
                .await
                .commit(&generation, &positions, false)
                .await
                .map(|_| positions)
                .map_err(|e| e.to_string())
        };
        ctx.spawn(job.into_actor(self).map(|result, act, ctx| {
            act.committing = false;
            match result {
                Ok(positions) => {
                    act.committed_ok(&positions);
                    if act.again {
                        act.commit(ctx);
                    }
                    if act.stats.clear_problem("commit") {
                        tracing::info!(tier = %act.tier, "offset commits succeed again");
                    }
                }
                Err(e) => {
                    if act.stats.set_problem("commit", format!("offset commit failing: {e}")) {
                        tracing::warn!(tier = %act.tier, "offset commit failed (retrying every {COMMIT_EVERY:?}): {e}");
                    }
                }
            }
        }));
    }

    fn check_drain(&mut self, ctx: &mut Context<Self>) {
        let Some(d) = &self.draining else { return };
        if !self.drained(&d.partitions) && Instant::now() < d.deadline {
            return;
        }
        let Some(d) = self.draining.take() else { return };
        let undelivered = self.undelivered(&d.partitions);
        // A drain that delivered everything leaves nothing in flight: mark it clean so the
        // next owner does not replay carefully.
        let clean = undelivered == 0 && self.drained(&d.partitions);
        let positions: BTreeMap<i32, Position> =
            self.positions(Some(&d.partitions)).into_iter().map(|(p, pos)| (p, Position { clean, ..pos })).collect();
        if d.forget {
            self.forget(&d.partitions);
        } else {
            self.sealed = true;
        }
        let (store, generation, forget) = (Arc::clone(&self.store), self.generation.clone(), d.forget);
        let job = async move {
            let mut store = store.lock().await;
            let result = store.commit(&generation, &positions, true).await;
            if forget {
                store.forget(&positions.keys().copied().collect::<Vec<_>>());
            }
            DrainReport {
                committed: positions.iter().map(|(&p, pos)| (p, pos.offset)).collect(),
                undelivered,
                commit_error: result.err().map(|e| e.to_string()),
            }
        };
        ctx.spawn(job.into_actor(self).map(|report, _, _| {
            let _ = d.reply.send(report);
        }));
    }

    fn forget(&mut self, partitions: &BTreeSet<i32>) {
        for p in partitions {
            self.marks.remove(p);
            self.stopped.remove(p);
            self.fetched.remove(p);
            self.starts.remove(p);
            self.careful.remove(p);
            self.committed.remove(p);
            self.stats.forget_partition(*p);
        }
    }
}

impl Actor for OffsetsOwner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(COMMIT_EVERY, |act, ctx| {
            if act.draining.is_some() {
                act.check_drain(ctx);
            } else {
                act.commit(ctx);
            }
        });
    }
}

impl Handler<Adopt> for OffsetsOwner {
    type Result = ResponseActFuture<Self, Result<BTreeMap<i32, tokio::sync::watch::Receiver<i64>>, String>>;

    fn handle(&mut self, msg: Adopt, _ctx: &mut Self::Context) -> Self::Result {
        self.generation = msg.generation.clone();
        for (&p, pos) in &msg.starts {
            self.stats.set_position(p, pos.offset);
            self.marks.insert(p, Watermark::starting_at(pos.offset));
            self.fetched.insert(p, pos.fetched);
            self.stopped.remove(&p);
            self.committed.insert(p, tokio::sync::watch::channel(pos.offset).0);
            self.starts.insert(p, *pos);
        }
        self.careful.extend(msg.careful);
        let watches: BTreeMap<i32, _> =
            msg.starts.keys().filter_map(|p| Some((*p, self.committed.get(p)?.subscribe()))).collect();
        let (store, starts, generation) = (Arc::clone(&self.store), msg.starts, msg.generation);
        Box::pin(
            async move { store.lock().await.commit(&generation, &starts, true).await.map_err(|e| e.to_string()) }
                .into_actor(self)
                .map(move |r, _, _| r.map(|_| watches)),
        )
    }
}

impl Handler<Delivered> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: Delivered, ctx: &mut Self::Context) {
        // A partition revoked meanwhile: its records may still arrive from the pool; the new
        // owner replays them from the last commit.
        let Some(mark) = self.marks.get_mut(&msg.partition) else { return };
        mark.deliver(msg.offsets);
        let at = mark.committable();
        if self.draining.is_some() {
            self.check_drain(ctx);
        } else if let Some(&end) = self.careful.get(&msg.partition) {
            // Replaying a crash window: the consumer waits for this commit.
            if self.committing {
                self.again = true;
            } else {
                self.commit(ctx);
            }
            if at >= end {
                self.careful.remove(&msg.partition);
            }
        }
    }
}

impl Handler<ConsumerStopped> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: ConsumerStopped, ctx: &mut Self::Context) {
        if self.marks.contains_key(&msg.partition) {
            self.stopped.insert(msg.partition, msg.next);
        }
        self.check_drain(ctx);
    }
}

impl Handler<Fetched> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: Fetched, _ctx: &mut Self::Context) {
        if let Some(f) = self.fetched.get_mut(&msg.partition) {
            *f = (*f).max(msg.next);
        }
    }
}

impl Handler<Rewound> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: Rewound, _ctx: &mut Self::Context) {
        if !self.marks.contains_key(&msg.partition) {
            return;
        }
        self.marks.insert(msg.partition, Watermark::starting_at(msg.offset));
        self.fetched.insert(msg.partition, msg.offset);
    }
}

impl Handler<Drain> for OffsetsOwner {
    type Result = ResponseFuture<DrainReport>;
    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let partitions = msg.partitions.unwrap_or_else(|| self.marks.keys().copied().collect());
        if let Some(old) = self.draining.take() {
            // One drain at a time: the older caller gets an empty report (it is superseded).
            let _ = old.reply.send(DrainReport::default());
        }
        self.draining = Some(Draining { deadline: msg.deadline, partitions, forget: msg.forget, reply: tx });
        self.check_drain(ctx);
        // The interval above re-checks at least every COMMIT_EVERY, so the deadline holds.
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}
