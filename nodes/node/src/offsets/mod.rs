//! The offsets owner of one tier: `Delivered` ranges in, durable commits out.
//!
//! Input: [`Delivered`] from the producer (outputs the broker acknowledged) and the consumers
//! (gaps in the log, ranges lost to retention), [`ConsumerStopped`] when a fetch loop ends.
//! Output: a commit of each partition's contiguous delivered prefix every `COMMIT_EVERY`, on
//! this actor's own schedule, so one tier's slow commit never holds up another tier. [`Drain`]
//! waits until everything the stopped consumers handed on is delivered (or a deadline passes),
//! then commits one last time. Failure: a failed commit is retried on the next tick and shown
//! in health after `STALL_AFTER`; the last good commit stands.

pub mod recovery;
pub mod store;
pub mod watermark;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

pub use crate::messages::{ConsumerStopped, Delivered, Fetched, Rewound};
use crate::observe::stats::TierStats;
use store::{Position, Store};
use watermark::Watermark;

pub const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Wait until every stopped consumer's records are delivered (or `deadline`), commit, report.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    pub deadline: Instant,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    /// Committed position per partition.
    pub committed: BTreeMap<i32, i64>,
    /// Records handed on but not delivered by the deadline (replayed on the next start).
    pub undelivered: i64,
    pub commit_error: Option<String>,
}

pub struct OffsetsOwner {
    tier: String,
    store: Arc<tokio::sync::Mutex<Store>>,
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
    draining: Option<(Instant, tokio::sync::oneshot::Sender<DrainReport>)>,
}

impl OffsetsOwner {
    /// `starts`: the position each owned partition resumes from (already committed);
    /// `careful`: crash windows (partition -> end) replayed one record at a time.
    pub fn new(
        tier: &str,
        store: Store,
        starts: &BTreeMap<i32, Position>,
        careful: BTreeMap<i32, i64>,
        stats: Arc<TierStats>,
    ) -> Self {
        for (&p, pos) in starts {
            stats.set_position(p, pos.offset);
        }
        Self {
            tier: tier.to_string(),
            store: Arc::new(tokio::sync::Mutex::new(store)),
            marks: starts.iter().map(|(&p, pos)| (p, Watermark::starting_at(pos.offset))).collect(),
            stopped: BTreeMap::new(),
            fetched: starts.iter().map(|(&p, pos)| (p, pos.fetched)).collect(),
            committed: starts.iter().map(|(&p, pos)| (p, tokio::sync::watch::channel(pos.offset).0)).collect(),
            starts: starts.clone(),
            careful,
            stats,
            committing: false,
            again: false,
            draining: None,
        }
    }

    /// The durably committed position of `partition`, as it moves.
    pub fn watch_committed(&mut self, partition: i32) -> tokio::sync::watch::Receiver<i64> {
        self.committed.entry(partition).or_insert_with(|| tokio::sync::watch::channel(0).0).subscribe()
    }

    fn positions(&self) -> BTreeMap<i32, Position> {
        self.marks
            .iter()
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

    fn undelivered(&self) -> i64 {
        self.marks
            .iter()
            .map(|(p, w)| self.stopped.get(p).map_or(0, |&next| (next - w.committable()).max(0)))
            .sum::<i64>()
    }

    fn drained(&self) -> bool {
        self.marks.keys().all(|p| self.stopped.contains_key(p)) && self.undelivered() == 0
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        self.committing = true;
        self.again = false;
        let (store, positions) = (Arc::clone(&self.store), self.positions());
        let job =
            async move { store.lock().await.commit(&positions).await.map(|_| positions).map_err(|e| e.to_string()) };
        ctx.spawn(job.into_actor(self).map(|result, act, ctx| {
            act.committing = false;
            match result {
                Ok(positions) => {
                    for (p, pos) in positions {
                        if let Some(tx) = act.committed.get(&p) {
                            tx.send_if_modified(|v| std::mem::replace(v, pos.offset) != pos.offset);
                        }
                    }
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
        let Some((deadline, _)) = &self.draining else { return };
        if !self.drained() && Instant::now() < *deadline {
            return;
        }
        let Some((_, reply)) = self.draining.take() else { return };
        let undelivered = self.undelivered();
        // A drain that delivered everything leaves nothing in flight: mark it clean so the
        // next start does not replay carefully.
        let clean = undelivered == 0 && self.drained();
        let positions: BTreeMap<i32, Position> =
            self.positions().into_iter().map(|(p, pos)| (p, Position { clean, ..pos })).collect();
        let store = Arc::clone(&self.store);
        let job = async move {
            let result = store.lock().await.commit(&positions).await;
            DrainReport {
                committed: positions.iter().map(|(&p, pos)| (p, pos.offset)).collect(),
                undelivered,
                commit_error: result.err().map(|e| e.to_string()),
            }
        };
        ctx.spawn(job.into_actor(self).map(|report, _, _| {
            let _ = reply.send(report);
        }));
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

impl Handler<Delivered> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: Delivered, ctx: &mut Self::Context) {
        let mark = self.marks.entry(msg.partition).or_insert_with(|| Watermark::starting_at(msg.offsets.start));
        mark.deliver(msg.offsets);
        let at = mark.committable();
        self.stats.set_position(msg.partition, at);
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
        self.stopped.insert(msg.partition, msg.next);
        self.check_drain(ctx);
    }
}

impl Handler<Fetched> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: Fetched, _ctx: &mut Self::Context) {
        let f = self.fetched.entry(msg.partition).or_insert(msg.next);
        *f = (*f).max(msg.next);
    }
}

impl Handler<Rewound> for OffsetsOwner {
    type Result = ();
    fn handle(&mut self, msg: Rewound, _ctx: &mut Self::Context) {
        self.marks.insert(msg.partition, Watermark::starting_at(msg.offset));
        self.fetched.insert(msg.partition, msg.offset);
        self.stats.set_position(msg.partition, msg.offset);
    }
}

impl Handler<Drain> for OffsetsOwner {
    type Result = ResponseFuture<DrainReport>;
    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.draining = Some((msg.deadline, tx));
        self.check_drain(ctx);
        // The interval above re-checks at least every COMMIT_EVERY, so the deadline holds.
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}
