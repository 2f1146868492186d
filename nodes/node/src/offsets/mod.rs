//! The offsets owner of one tier: `Delivered` ranges in, durable commits out.
//!
//! Input: [`Delivered`] from the producer (outputs the broker acknowledged) and the consumers
//! (gaps in the log, ranges lost to retention), [`ConsumerStopped`] when a fetch loop ends.
//! Output: a commit of each partition's contiguous delivered prefix every `COMMIT_EVERY`, on
//! this actor's own schedule, so one tier's slow commit never holds up another tier. [`Drain`]
//! waits until everything the stopped consumers handed on is delivered (or a deadline passes),
//! then commits one last time. Failure: a failed commit is retried on the next tick and shown
//! in health after `STALL_AFTER`; the last good commit stands.

pub mod store;
pub mod watermark;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

pub use crate::messages::{ConsumerStopped, Delivered, Fetched, Rewound};
use crate::observe::stats::TierStats;
use store::Store;
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
    stats: Arc<TierStats>,
    committing: bool,
    draining: Option<(Instant, tokio::sync::oneshot::Sender<DrainReport>)>,
}

impl OffsetsOwner {
    /// `starts`: the position each owned partition resumes from.
    pub fn new(tier: &str, store: Store, starts: &BTreeMap<i32, i64>, stats: Arc<TierStats>) -> Self {
        for (&p, &o) in starts {
            stats.set_position(p, o);
        }
        Self {
            tier: tier.to_string(),
            store: Arc::new(tokio::sync::Mutex::new(store)),
            marks: starts.iter().map(|(&p, &o)| (p, Watermark::starting_at(o))).collect(),
            stopped: BTreeMap::new(),
            fetched: BTreeMap::new(),
            stats,
            committing: false,
            draining: None,
        }
    }

    fn positions(&self) -> BTreeMap<i32, (i64, i64)> {
        self.marks
            .iter()
            .map(|(&p, w)| {
                let fetched = self.fetched.get(&p).copied().unwrap_or(0).max(w.delivered_end());
                (p, (w.committable(), fetched))
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
        let (store, positions) = (Arc::clone(&self.store), self.positions());
        let job = async move { store.lock().await.commit(&positions).await.map_err(|e| e.to_string()) };
        ctx.spawn(job.into_actor(self).map(|result, act, _| {
            act.committing = false;
            match result {
                Ok(_) => {
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
        let (store, positions) = (Arc::clone(&self.store), self.positions());
        let job = async move {
            let result = store.lock().await.commit(&positions).await;
            DrainReport {
                committed: positions.iter().map(|(&p, &(o, _))| (p, o)).collect(),
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
        self.stats.set_position(msg.partition, mark.committable());
        if self.draining.is_some() {
            self.check_drain(ctx);
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
