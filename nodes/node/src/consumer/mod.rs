//! The consumer stage: one fetch loop per owned input partition.
//!
//! Input: a Kafka partition, from the position the offsets owner resumed. Output: [`Consumed`]
//! into the pool's bounded channel; a full channel parks the loop, so a busy pool pauses
//! fetching instead of buffering without limit. Offsets with nothing to process (gaps left by
//! compaction or control records, records lost to retention) go straight to the offsets owner
//! as [`Delivered`]. Failure: a broker that cannot be reached is retried with capped backoff
//! and shown in health; a batch that cannot be decoded (out-of-range timestamp, corrupt or
//! unsupported batch) is retried twice, then dead-lettered as an offset range with the reason,
//! so no record stalls the partition; a position outside the log is moved to the log start.
//! The actor is message-driven (each fetch step is a `Poll` it sends itself) and supervised:
//! a step that fails is reported to the tier's supervisor (`StageExited`) and the actor
//! restarts after a capped backoff.

pub mod group;
pub mod placement;
pub mod probe;
pub mod wait;
pub mod wakeup;

use placement::Placement;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;

use crate::backoff::Backoff;
use crate::kafka::errors::FetchError;
use crate::kafka::Reopen;
use crate::messages::{Consumed, ConsumerStopped, Delivered, Fetched, Inferred, Rewound, Route, StageExited};
use crate::observe::stats::TierStats;
use crate::shutdown::Shutdown;
use crate::wire::mark_dead_letter;

/// A batch that fails to decode this many fetches in a row is dead-lettered.
pub const UNREADABLE_ATTEMPTS: u32 = 3;

/// Fetch tuning (see `wait`): a long poll where the broker answers when data arrives; where it
/// holds fetches whose records are there (tansu), short waits while records flow, backing off
/// to `idle_wait_ms` while a partition is idle.
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    pub mode: wait::FetchMode,
    /// The long-poll wait.
    pub long_poll_ms: i32,
    pub max_wait_ms: i32,
    /// The longest wait of a partition with nothing to read.
    pub idle_wait_ms: i32,
    pub max_bytes: i32,
    /// A fetch the broker does not answer within `max_wait_ms` plus this (rskafka 0.6 has no
    /// request timeout; a lost broker can leave a request hanging) counts as failed, so a lost
    /// broker shows in health within seconds.
    pub timeout: Duration,
    /// Byte budget for record values queued for or inside the pool (see `QUEUE_BYTES`).
    pub queue_bytes: usize,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            mode: wait::FetchMode::Auto,
            long_poll_ms: 500,
            max_wait_ms: 5,
            idle_wait_ms: 5,
            max_bytes: 4 << 20,
            timeout: Duration::from_secs(5),
            queue_bytes: QUEUE_BYTES,
        }
    }
}

/// Where a consumer's outputs go.
#[derive(Clone)]
pub struct ConsumerLinks {
    /// The pool's bounded input.
    pub out: flume::Sender<Consumed>,
    /// The producer's input, for dead letters of unreadable spans.
    pub dead_letters: flume::Sender<Inferred>,
    pub delivered: Recipient<Delivered>,
    pub rewound: Recipient<Rewound>,
    pub stopped: Recipient<ConsumerStopped>,
    pub fetched: Recipient<Fetched>,
    /// The tier's supervisor, told when this stage fails (it counts and shows restarts).
    pub exits: Recipient<StageExited>,
    /// Bumped when a tier of this node forwards to this input (see `wakeup`).
    pub wake: Option<tokio::sync::watch::Receiver<u64>>,
    /// Bytes of record values waiting in the pool's queue or being inferred (see
    /// `QUEUE_BYTES`): a full budget parks the fetch loop like a full channel does.
    pub budget: Arc<tokio::sync::Semaphore>,
}

/// Default in-memory budget for queued record values per tier: bounded channels count
/// records, this bounds their bytes too.
pub const QUEUE_BYTES: usize = 64 << 20;

/// What the previous owner may already have processed: records from the start offset that it
/// had fetched (`fetched`, as its last commit says) or that were appended before it stopped
/// (`until_ms`, see `crate::offsets::recovery::replay_until_ms`). Each such record handed on
/// again counts in `ddnn_messages_replayed_total`; the first record past both ends the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    pub fetched: i64,
    pub until_ms: Option<i64>,
}

impl Replay {
    /// Whether the record at `offset`, appended at `ts_ms`, may be processed a second time.
    pub fn covers(&self, offset: i64, ts_ms: i64) -> bool {
        offset < self.fetched || self.until_ms.is_some_and(|until| ts_ms <= until)
    }
}

/// A crash window to replay one record at a time (see `crate::offsets::recovery`).
#[derive(Clone, Debug)]
pub struct Careful {
    /// First offset after the window.
    pub until: i64,
    /// Dead-letter this offset without processing it (it ended the node `crashes` times).
    pub dead_letter_first: Option<i64>,
    pub crashes: u32,
    /// The durably committed position: the next record waits until it passed the last one.
    pub committed: tokio::sync::watch::Receiver<i64>,
}

pub struct PartitionConsumer {
    pub tier: String,
    pub client: Arc<PartitionClient>,
    /// How to connect afresh after a fetch timed out (see [`Reopen`]).
    pub reopen: Option<Reopen>,
    pub start_offset: i64,
    pub stats: Arc<TierStats>,
    pub links: ConsumerLinks,
    pub settings: FetchSettings,
    pub shutdown: Shutdown,
    pub restart_backoff: Backoff,
    pub restarted: bool,
    pub careful: Option<Careful>,
    /// Records the previous owner may have processed, counted as replayed as they pass.
    pub replay: Option<Replay>,
    /// Between fetch steps (taken by the step in progress).
    pub state: Option<FetchLoop>,
}

impl Actor for PartitionConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A tier being stopped: stay idle until the supervisor lets go of us.
        if self.shutdown.is_cancelled() {
            return;
        }
        self.state = Some(FetchLoop {
            tier: self.tier.clone(),
            client: Arc::clone(&self.client),
            reopen: self.reopen.clone(),
            suspect: false,
            opened: std::time::Instant::now(),
            offset: self.start_offset,
            stats: Arc::clone(&self.stats),
            links: self.links.clone(),
            settings: self.settings,
            shutdown: self.shutdown.clone(),
            careful: self.careful.clone(),
            // Counted once: a restarted loop resumes past what it already counted.
            replay: self.replay.take(),
            wait: wait::FetchWait::new(
                self.settings.mode,
                self.settings.max_wait_ms,
                self.settings.idle_wait_ms,
                self.settings.long_poll_ms,
            ),
            last_records: std::time::Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            unreadable_attempts: 0,
        });
        if self.restarted {
            let delay = self.restart_backoff.next_delay();
            ctx.run_later(delay, |_, ctx| ctx.notify(Poll));
        } else {
            ctx.notify(Poll);
        }
    }
}

impl Handler<Poll> for PartitionConsumer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Poll, _ctx: &mut Self::Context) -> Self::Result {
        let Some(mut state) = self.state.take() else {
            return Box::pin(actix::fut::ready(()));
        };
        Box::pin(
            async move {
                let step = state.step().await;
                (state, step)
            }
            .into_actor(self)
            .map(|(state, step), act, ctx| {
                act.start_offset = state.offset;
                act.careful = state.careful.clone();
                match step {
                    Step::Continue => {
                        act.state = Some(state);
                        ctx.notify(Poll);
                    }
                    Step::Stopped => {
                        let (partition, next) = (act.client.partition(), state.offset);
                        act.links.stopped.do_send(ConsumerStopped { partition, next });
                    }
                    Step::Failed(reason) => {
                        act.links.exits.do_send(StageExited {
                            stage: format!("consumer {}/{}", act.client.topic(), act.client.partition()),
                            reason,
                        });
                        ctx.stop();
                    }
                }
            }),
        )
    }
}

impl Supervised for PartitionConsumer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarted = true;
    }
}

/// What a fetch step leaves the actor to do.
enum Step {
    Continue,
    /// Shutdown: report the position and idle.
    Stopped,
    /// A fault: report it and let the supervisor restart us (after a backoff).
    Failed(String),
}

/// One fetch step, sent by the actor to itself: the fetch loop is a stream of messages.
#[derive(Message)]
#[rtype(result = "()")]
struct Poll;

/// The consumer's state between fetch steps.
pub struct FetchLoop {
    tier: String,
    client: Arc<PartitionClient>,
    reopen: Option<Reopen>,
    /// The last fetch timed out: its connection is suspect and is replaced before the next.
    suspect: bool,
    /// When the client's connection was made (see `crate::kafka::suspect`).
    opened: std::time::Instant,
    offset: i64,
    stats: Arc<TierStats>,
    links: ConsumerLinks,
    settings: FetchSettings,
    shutdown: Shutdown,
    careful: Option<Careful>,
    replay: Option<Replay>,
    wait: wait::FetchWait,
    /// When the last records came (the fetch wait backs off only after a silence).
    last_records: std::time::Instant,
    backoff: Backoff,
    unreadable_attempts: u32,
}

impl FetchLoop {
    fn problem_key(&self) -> String {
        format!("fetch {}/{}", self.client.topic(), self.client.partition())
    }

    /// One fetch waiting up to `wait_ms` at the broker; `None` when no answer came within the
    /// timeout.
    async fn fetch(&self, offset: i64, wait_ms: i32) -> Option<Result<(Vec<RecordAndOffset>, i64), FetchError>> {
        let limit = self.fetch_limit(wait_ms);
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        let answer =
            tokio::time::timeout(limit, self.client.fetch_records(offset, 1..self.settings.max_bytes, wait_ms)).await;
        answer.ok().map(|r| r.map_err(FetchError::from))
    }

    /// A quiet partition on a broker that holds fetches (`probe`, see `wait`): the wait is
    /// spent here, then only the log's end is asked for (ListOffsets), and the fetch, a short
    /// one, follows only when the log moved. A held fetch costs such a broker its whole read
    /// path per partition; the end offset a fraction of it (tansu: 4 partitions every 100 ms,
    /// 0.8-1.6 % of a core against 4.5-10 %, `bench/RESULTS.md`), so an idle node is cheap.
    /// Otherwise one fetch with the current wait.
    async fn fetch_or_probe(
        &self,
        offset: i64,
        probe: bool,
    ) -> Option<Result<(Vec<RecordAndOffset>, i64), FetchError>> {
        if !probe {
            return self.fetch(offset, self.wait.current()).await;
        }
        tokio::time::sleep(Duration::from_millis(self.wait.current().max(0) as u64)).await;
        self.stats.end_offset_requests.fetch_add(1, Ordering::Relaxed);
        let end = tokio::time::timeout(self.settings.timeout, self.client.get_offset(OffsetAt::Latest)).await.ok()?;
        match end {
            // Nothing new: an empty answer, as a fetch would have given.
            Ok(high_watermark) if high_watermark == offset => Some(Ok((Vec::new(), high_watermark))),
            // Records came (or the log moved away from the position: the fetch says how).
            Ok(_) => self.fetch(offset, self.settings.max_wait_ms).await,
            Err(e) => Some(Err(FetchError::from(e))),
        }
    }

    /// How long a fetch that may wait `wait_ms` at the broker gets before it counts as lost.
    fn fetch_limit(&self, wait_ms: i32) -> Duration {
        self.settings.timeout + Duration::from_millis(wait_ms.max(0) as u64)
    }

    /// After a timeout (`why`): a fresh connection (the old one may be dead without knowing
    /// it), or the old one when connecting fails too (the next timeout tries again).
    async fn reconnect(&mut self, why: &str) {
        let Some(reopen) = &self.reopen else { return };
        self.opened = std::time::Instant::now();
        let partition = self.client.partition();
        let opened = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            r = reopen.open() => r,
        };
        match opened {
            Ok(fresh) => {
                tracing::info!(tier = %self.tier, topic = self.client.topic(), partition, "{why}: reconnected");
                self.client = fresh;
            }
            Err(e) => {
                tracing::warn!(tier = %self.tier, topic = self.client.topic(), partition, "{why}; reconnecting failed: {e}")
            }
        }
    }

    /// One fetch and what follows from it (hand on, back off, dead-letter a span).
    async fn step(&mut self) -> Step {
        let partition = self.client.partition();
        if std::mem::take(&mut self.suspect) {
            self.reconnect("fetch timed out").await;
        } else if self.reopen.as_ref().is_some_and(|r| crate::kafka::suspect::stale(r.cluster(), self.opened)) {
            self.reconnect("a request to this cluster timed out since this connection was made").await;
        }
        let (shutdown, offset) = (self.shutdown.clone(), self.offset);
        // A quiet partition's long wait is cut short when a tier of this node forwards here:
        // fetch again at once, with the short wait.
        let mut wake = self.links.wake.take();
        // A long poll answers when records come; only an adaptive wait past the short one is
        // worth dropping, and it is spent here, not at the broker (`fetch_or_probe`).
        let waiting_long = !self.wait.long_polling() && self.wait.current() > self.settings.max_wait_ms;
        let woken = async {
            match wake.as_mut() {
                Some(rx) if waiting_long => rx.changed().await.is_ok(),
                _ => std::future::pending().await,
            }
        };
        let (started, sent_ms) = (std::time::Instant::now(), crate::now_ms());
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => Err(false),
            r = self.fetch_or_probe(offset, waiting_long) => Ok(r),
            true = woken => Err(true),
        };
        if let Some(rx) = wake.as_mut() {
            // What arrived during this fetch is in its answer (or the next short one).
            rx.borrow_and_update();
        }
        self.links.wake = wake;
        let fetched = match fetched {
            Ok(r) => r,
            Err(true) => {
                self.wait.woken();
                return Step::Continue;
            }
            Err(false) => return Step::Stopped,
        };
        let fetched = match fetched {
            Some(r) => r,
            None => {
                // Reported now (health shows the stall at once); the next step connects afresh,
                // and so does every older connection to the cluster before its next request.
                self.suspect = true;
                if let Some(reopen) = &self.reopen {
                    crate::kafka::suspect::mark(reopen.cluster(), self.opened);
                }
                Err(FetchError::Unavailable(format!(
                    "no answer to a fetch within {:?}",
                    self.fetch_limit(self.wait.current())
                )))
            }
        };
        let error = match fetched {
            Ok((records, high_watermark)) => {
                self.backoff.reset();
                self.unreadable_attempts = 0;
                if self.stats.clear_problem(&self.problem_key()) {
                    tracing::info!(tier = %self.tier, topic = self.client.topic(), partition, "fetching again");
                }
                self.stats.set_high_watermark(partition, high_watermark);
                if !records.is_empty() {
                    self.last_records = std::time::Instant::now();
                }
                let took = started.elapsed();
                // Written before this fetch was sent (20 ms for clocks a little apart).
                let waiting = records.first().is_some_and(|r| r.record.timestamp.timestamp_millis() + 20 < sent_ms);
                let change = self.wait.after(!records.is_empty(), self.last_records.elapsed(), took, waiting);
                if change == wait::Change::LeftLongPoll {
                    tracing::info!(
                        tier = %self.tier, topic = self.client.topic(), partition,
                        "the broker held {} fetches in a row whose records were already there ({} ms or more of a {} ms long poll; Kafka answers those at once): adaptive fetch waits from now on ({}..{} ms; --fetch-mode)",
                        wait::HELD_PROOF, wait::HELD_MIN.as_millis(), self.settings.long_poll_ms, self.settings.max_wait_ms, self.settings.idle_wait_ms
                    );
                }
                if records.is_empty() && self.offset > high_watermark {
                    // Past the end of the log: some brokers say so with an error, others
                    // with an empty answer.
                    FetchError::OutOfRange { high_watermark: Some(high_watermark) }
                } else {
                    return if self.hand_on(records).await { Step::Continue } else { self.ended() };
                }
            }
            Err(e) => e,
        };
        match error {
            FetchError::Unavailable(msg) => {
                let wait = self.backoff.next_delay();
                if self.stats.set_problem(
                    &self.problem_key(),
                    format!("cannot fetch from {}/{partition}: {msg}", self.client.topic()),
                ) {
                    tracing::warn!(tier = %self.tier, topic = self.client.topic(), partition, offset = self.offset, "fetch failed: {msg}; retrying with backoff (up to 10 s) until it works");
                }
                self.sleep(wait).await;
            }
            FetchError::OutOfRange { high_watermark } => self.out_of_range(high_watermark).await,
            FetchError::Unreadable(msg) => {
                self.unreadable_attempts += 1;
                if self.unreadable_attempts < UNREADABLE_ATTEMPTS {
                    self.sleep(Duration::from_millis(50)).await;
                } else {
                    self.unreadable_attempts = 0;
                    if !self.dead_letter_span(&msg).await {
                        return self.ended();
                    }
                }
            }
        }
        if self.shutdown.is_cancelled() {
            Step::Stopped
        } else {
            Step::Continue
        }
    }

    /// A downstream channel closed: normal while the tier stops, a fault otherwise.
    fn ended(&self) -> Step {
        if self.shutdown.is_cancelled() {
            Step::Stopped
        } else {
            Step::Failed("the pool's or the producer's channel closed".into())
        }
    }

    async fn sleep(&self, wait: Duration) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// Hands records on (and gaps to the offsets owner); false when the pool is gone.
    async fn hand_on(&mut self, records: Vec<RecordAndOffset>) -> bool {
        let partition = self.client.partition();
        let received_ms = crate::now_ms();
        for r in records {
            // A fetch returns whole batches; skip what precedes our position.
            if r.offset < self.offset {
                continue;
            }
            if r.offset > self.offset {
                // Nothing lives there (compaction, transaction markers): settled as it is.
                self.links.delivered.do_send(Delivered { partition, offsets: self.offset..r.offset });
            }
            let cap = self.settings.queue_bytes.clamp(1, u32::MAX as usize);
            let size = r.record.value.as_ref().map_or(0, Vec::len).clamp(1, cap) as u32;
            let Ok(permit) = Arc::clone(&self.links.budget).acquire_many_owned(size).await else {
                return false;
            };
            let msg = Consumed {
                partition,
                offset: r.offset,
                key: r.record.key,
                // rskafka's `Record.headers` is a BTreeMap: a key repeated in the Kafka record is
                // already collapsed (last value wins) and the keys come sorted. Our own data path
                // keeps an ordered list, so nothing further is lost past this point.
                headers: r.record.headers.into_iter().collect(),
                value: r.record.value,
                ts_ms: r.record.timestamp.timestamp_millis(),
                received_ms,
                attempts: 0,
                budget: Some(Arc::new(permit)),
            };
            self.stats.consumed.fetch_add(1, Ordering::Relaxed);
            if let Some(replay) = self.replay {
                if replay.covers(r.offset, msg.ts_ms) {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.replay = None;
                }
            }
            self.offset = r.offset + 1;
            if self.careful.as_ref().is_some_and(|c| r.offset >= c.until) {
                tracing::info!(tier = %self.tier, partition, "crash window replayed; back to normal processing");
                self.careful = None;
            }
            let Some(careful) = self.careful.as_mut() else {
                if self.links.out.send_async(msg).await.is_err() {
                    return false;
                }
                continue;
            };
            let sent = if careful.dead_letter_first == Some(r.offset) {
                careful.dead_letter_first = None;
                let reason = format!(
                    "processing this record ended the node {} times in a row (it was in flight at each crash); dead-lettered without processing it again",
                    careful.crashes
                );
                tracing::error!(tier = %self.tier, partition, offset = r.offset, "{reason}");
                let dead = crash_dead_letter(&self.tier, self.client.topic(), msg, &reason);
                self.links.dead_letters.send_async(dead).await.is_ok()
            } else {
                self.links.out.send_async(msg).await.is_ok()
            };
            if !sent {
                return false;
            }
            // One at a time: the next record waits until this one is durably committed, so a
            // crash leaves the committed position on the record that caused it.
            let mut committed = careful.committed.clone();
            let done = tokio::select! {
                _ = self.shutdown.cancelled() => false,
                r = committed.wait_for(|&c| c > r.offset) => r.is_ok(),
            };
            if !done {
                return false;
            }
        }
        self.links.fetched.do_send(Fetched { partition, next: self.offset });
        true
    }

    /// The position is outside the log: below its start (retention removed records before we
    /// processed them) or past its end (the topic was recreated or truncated).
    async fn out_of_range(&mut self, high_watermark: Option<i64>) {
        let partition = self.client.partition();
        let start = match self.client.get_offset(OffsetAt::Earliest).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.stats.set_problem(&self.problem_key(), format!("cannot find the log start: {e}"));
                self.sleep(Duration::from_secs(1)).await;
                return;
            }
        };
        let end = match high_watermark {
            Some(h) => h,
            None => crate::kafka::high_watermark(&self.client).await.unwrap_or(start),
        };
        match placement::place(self.offset, start, end) {
            Placement::Skip { to, lost } => {
                tracing::error!(
                    tier = %self.tier, topic = self.client.topic(), partition,
                    "offsets {}..{to} were removed from the log (retention) before they were processed: {lost} records skipped",
                    self.offset
                );
                self.stats.skipped.fetch_add(lost as u64, Ordering::Relaxed);
                self.links.delivered.do_send(Delivered { partition, offsets: self.offset..to });
                self.offset = to;
            }
            Placement::Restart { to } => {
                tracing::warn!(
                    tier = %self.tier, topic = self.client.topic(), partition,
                    "position {} is past the end of the log ({end}): the topic was recreated or truncated; resuming from its start ({to})",
                    self.offset
                );
                self.offset = to;
                self.links.rewound.do_send(Rewound { partition, offset: to });
            }
            Placement::Keep => {
                let wait = self.backoff.next_delay();
                self.sleep(wait).await;
            }
        }
    }

    /// Dead-letters the unreadable span starting at our position and moves past it; false
    /// when the producer is gone.
    async fn dead_letter_span(&mut self, reason: &str) -> bool {
        let partition = self.client.partition();
        let topic = self.client.topic().to_string();
        let first = self.offset;
        let end = match crate::kafka::high_watermark(&self.client).await {
            Ok(h) => h.max(first + 1),
            Err(e) => {
                let _ = self.stats.set_problem(&self.problem_key(), format!("cannot read the log end: {e}"));
                return true; // retried by the loop
            }
        };
        let this = &*self;
        let end = probe::unreadable_end(first, end, |o| async move {
            !matches!(this.fetch(o, this.settings.max_wait_ms).await, Some(Err(FetchError::Unreadable(_))))
        })
        .await;
        let last = end - 1;
        tracing::warn!(
            tier = %self.tier, topic, partition,
            "offsets {first}..={last} cannot be decoded ({reason}): dead-lettered as a range, moving on"
        );
        let why = format!("unreadable record batch: {reason}");
        let source = format!("tier={} topic={topic} partition={partition} offsets={first}..={last}", self.tier);
        let mut headers = Vec::new();
        mark_dead_letter(&mut headers, &why, Some(source));
        let dead = Inferred {
            partition,
            offset: first,
            route: Route::DeadLetter,
            key: None,
            headers,
            value: Vec::new(),
            origin_ts_ms: None,
        };
        self.stats.unreadable_batches.fetch_add(1, Ordering::Relaxed);
        if first + 1 < end {
            self.links.delivered.do_send(Delivered { partition, offsets: first + 1..end });
        }
        self.offset = end;
        self.links.dead_letters.send_async(dead).await.is_ok()
    }
}

/// A dead letter for a record that crashed the node: original bytes, key and headers kept.
fn crash_dead_letter(tier: &str, topic: &str, msg: Consumed, reason: &str) -> Inferred {
    let mut headers = msg.headers;
    let source = format!("tier={tier} topic={topic} partition={} offset={}", msg.partition, msg.offset);
    mark_dead_letter(&mut headers, reason, Some(source));
    Inferred {
        partition: msg.partition,
        offset: msg.offset,
        route: Route::DeadLetter,
        key: msg.key,
        headers,
        value: msg.value.unwrap_or_default(),
        origin_ts_ms: None,
    }
}
