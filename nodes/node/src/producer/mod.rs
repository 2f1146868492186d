//! The producer stage: exits to the exit topic, forwards to the next tier's input topic (maybe
//! on another cluster), dead letters to the dead-letter topic.
//!
//! Input: [`Inferred`] from the pool's bounded channel (and dead letters of unreadable spans
//! from the consumers). Output: records on the broker, then [`Delivered`] to the tier's
//! offsets owner once the broker acknowledged. The actor is message-driven (a `Poll` per
//! record taken) and supervised: a failure is reported to the tier's supervisor and the actor
//! restarts after a capped backoff. Keys are partitioned with Kafka's murmur2, as
//! every Kafka client does. Backpressure: at most `MAX_IN_FLIGHT` unacknowledged records;
//! beyond that the loop stops reading its channel and the workers block. Failure: an
//! unavailable broker or topic is retried with capped backoff for as long as it lasts (shown
//! in health, the offsets stay uncommitted); a record the broker rejects (too large, invalid)
//! is dead-lettered with the broker's reason, and a dead letter the broker rejects is sent
//! again without its value, so no record stalls the partition.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rskafka::record::Record;
use tokio::sync::Semaphore;

use crate::backoff::Backoff;
use crate::kafka::errors::ProduceError;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::Reopen;
use crate::messages::{Delivered, Inferred, Route, StageExited};
use crate::observe::stats::TierStats;
use crate::shutdown::Shutdown;

/// Upper bound of one produce batch. Kafka's own default is 16 KiB; much larger batches
/// (seen: 5,000 records, 1 MB) were accepted but never served back by the tansu broker.
pub const MAX_BATCH_BYTES: usize = 64 << 10;

/// A produce request not answered within this time counts as failed (and is retried).
pub const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

type Ack = tokio::sync::oneshot::Sender<Result<(), ProduceError>>;

/// Sends to one partition with at most one request in flight: a record arriving while the
/// broker is busy waits and goes with the next batch. Idle, a record leaves at once (no
/// linger); under load batches grow with the broker's latency, so the request rate stays
/// bounded instead of the broker drowning in one-record requests.
pub struct PartitionSender {
    tx: flume::Sender<(Record, Ack)>,
}

impl PartitionSender {
    /// `reopen`: how to connect afresh after a request timed out (see [`Reopen`]).
    pub fn spawn(client: Arc<rskafka::client::partition::PartitionClient>, reopen: Option<Reopen>) -> Self {
        let (tx, rx) = flume::unbounded::<(Record, Ack)>();
        tokio::spawn(async move {
            let mut client = client;
            // When `client`'s connection was made (see `crate::kafka::suspect`).
            let mut opened = std::time::Instant::now();
            while let Ok(first) = rx.recv_async().await {
                let mut bytes = first.0.approximate_size();
                let mut batch = vec![first];
                while bytes < MAX_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(next) => {
                            bytes += next.0.approximate_size();
                            batch.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let (records, acks): (Vec<Record>, Vec<Ack>) = batch.into_iter().unzip();
                if let Some(reopen) = reopen.as_ref().filter(|r| crate::kafka::suspect::stale(r.cluster(), opened)) {
                    client = reconnect(
                        reopen,
                        client,
                        "produce: a request to this cluster timed out since this connection was made",
                    )
                    .await;
                    opened = std::time::Instant::now();
                }
                // rskafka 0.6 has no request timeout: a broker that never answers would hold
                // this partition (and every record queued behind it) without an error to show.
                let answer = tokio::time::timeout(PRODUCE_TIMEOUT, client.produce(records, Default::default())).await;
                let timed_out = answer.is_err();
                let result = match answer {
                    Ok(r) => r.map(|_| ()).map_err(ProduceError::from),
                    Err(_) => Err(ProduceError::Unavailable(format!("no produce response within {PRODUCE_TIMEOUT:?}"))),
                };
                // The failure is reported first (health shows the stall at once), then the
                // suspect connection is replaced, which may itself take a while.
                for ack in acks {
                    let _ = ack.send(result.clone());
                }
                if let (true, Some(reopen)) = (timed_out, &reopen) {
                    crate::kafka::suspect::mark(reopen.cluster(), opened);
                    client = reconnect(reopen, client, "produce timed out").await;
                    opened = std::time::Instant::now();
                }
            }
        });
        Self { tx }
    }

    async fn send(&self, record: Record) -> Result<(), ProduceError> {
        let stopped = || ProduceError::Unavailable("partition sender stopped".to_string());
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx.send((record, ack)).map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

/// A fresh client for a partition whose connection is suspect (`why`), or the old one when
/// connecting fails too (the next timeout tries again).
async fn reconnect(
    reopen: &Reopen,
    old: Arc<rskafka::client::partition::PartitionClient>,
    why: &str,
) -> Arc<rskafka::client::partition::PartitionClient> {
    match reopen.open().await {
        Ok(fresh) => {
            tracing::info!(topic = reopen.topic(), partition = old.partition(), "{why}: reconnected");
            fresh
        }
        Err(e) => {
            tracing::warn!(topic = reopen.topic(), partition = old.partition(), "{why}; reconnecting failed: {e}");
            old
        }
    }
}

/// All partitions of one output topic.
pub struct TopicWriter {
    pub topic: String,
    pub partitions: Vec<PartitionSender>,
}

impl TopicWriter {
    pub fn new(topic: &str, clients: Vec<(Arc<rskafka::client::partition::PartitionClient>, Option<Reopen>)>) -> Self {
        Self {
            topic: topic.to_string(),
            partitions: clients.into_iter().map(|(c, reopen)| PartitionSender::spawn(c, reopen)).collect(),
        }
    }

    /// Same key, same partition as any Kafka client would pick (murmur2), so a key's records stay
    /// in order; keyless records spread by input offset.
    fn pick(&self, key: Option<&[u8]>, offset: i64) -> &PartitionSender {
        let n = self.partitions.len().max(1);
        let idx = match key {
            Some(k) => partition_for_key(k, n),
            None => offset.rem_euclid(n as i64) as usize,
        };
        &self.partitions[idx]
    }
}

pub struct Producer {
    pub tier: String,
    pub input: flume::Receiver<Inferred>,
    pub writers: HashMap<Route, Arc<TopicWriter>>,
    pub delivered: Recipient<Delivered>,
    /// The tier's supervisor, told when this stage fails.
    pub exits: Recipient<StageExited>,
    pub stats: Arc<TierStats>,
    /// Unacknowledged deliveries allowed at once (backpressure on the pool beyond that).
    pub in_flight: Arc<Semaphore>,
    pub shutdown: Shutdown,
    pub restart_backoff: Backoff,
    pub restarted: bool,
    /// Wakes the next tier's fetch loops when it runs in this node (`consumer::wakeup`).
    pub wake: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

/// Unacknowledged records a producer allows at once.
pub const MAX_IN_FLIGHT: usize = 8192;

/// Take the next record, sent by the actor to itself: the produce loop is a stream of messages.
#[derive(Message)]
#[rtype(result = "()")]
struct Poll;

impl Actor for Producer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.restarted {
            let delay = self.restart_backoff.next_delay();
            ctx.run_later(delay, |_, ctx| ctx.notify(Poll));
        } else {
            ctx.notify(Poll);
        }
    }
}

impl Handler<Poll> for Producer {
    type Result = ResponseActFuture<Self, ()>;

    /// Takes one record (keeps reading after shutdown: the pool's last results must still be
    /// delivered; the channel closes when the pool and consumers are gone) and starts its
    /// delivery; at most `MAX_IN_FLIGHT` deliveries run at once.
    fn handle(&mut self, _: Poll, _ctx: &mut Self::Context) -> Self::Result {
        let (input, in_flight) = (self.input.clone(), Arc::clone(&self.in_flight));
        let out = Outputs {
            tier: self.tier.clone(),
            writers: self.writers.clone(),
            delivered: self.delivered.clone(),
            stats: Arc::clone(&self.stats),
            shutdown: self.shutdown.clone(),
            wake: self.wake.clone(),
        };
        Box::pin(
            async move {
                let item = input.recv_async().await.ok()?;
                let permit = in_flight.acquire_owned().await.ok()?;
                actix::spawn(async move {
                    deliver(&out, item).await;
                    drop(permit);
                });
                Some(())
            }
            .into_actor(self)
            .map(|taken, act, ctx| match taken {
                Some(()) => ctx.notify(Poll),
                // The channel closed: the tier is going away (or a fault if it is not).
                None if act.shutdown.is_cancelled() || act.input.is_disconnected() => {}
                None => {
                    act.exits.do_send(StageExited { stage: "producer".into(), reason: "its input stopped".into() });
                    ctx.stop();
                }
            }),
        )
    }
}

impl Supervised for Producer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarted = true;
    }
}

/// What every delivery needs.
#[derive(Clone)]
struct Outputs {
    tier: String,
    writers: HashMap<Route, Arc<TopicWriter>>,
    delivered: Recipient<Delivered>,
    stats: Arc<TierStats>,
    shutdown: Shutdown,
    wake: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

/// Produces one record until the broker acknowledges it (or the tier stops), turning a
/// rejected record into a dead letter; reports the input offset delivered.
async fn deliver(out: &Outputs, mut item: Inferred) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let Some(writer) = out.writers.get(&item.route).cloned() else {
            tracing::error!(tier = %out.tier, route = ?item.route, "no output topic for route; record stays uncommitted");
            return;
        };
        let problem = format!("produce {}", writer.topic);
        let record = Record {
            key: item.key.clone(),
            value: Some(item.value.clone()),
            // rskafka's record keeps headers in a map: repeated keys collapse at this boundary.
            headers: item.headers.iter().cloned().collect(),
            timestamp: chrono::Utc::now(),
        };
        match writer.pick(item.key.as_deref(), item.offset).send(record).await {
            Ok(()) => {
                if out.stats.clear_problem(&problem) {
                    tracing::info!(tier = %out.tier, topic = %writer.topic, "producing again");
                }
                break;
            }
            Err(ProduceError::Rejected(why)) => {
                out.stats.produce_failures.fetch_add(1, Ordering::Relaxed);
                let (partition, offset) = (item.partition, item.offset);
                match rejected(&out.tier, &writer.topic, item, &why) {
                    Some(next) => {
                        item = next;
                        continue;
                    }
                    None => {
                        // Announced above; the partition must not stall on it.
                        out.delivered.do_send(Delivered { partition, offsets: offset..offset + 1 });
                        return;
                    }
                }
            }
            Err(e @ ProduceError::Unavailable(_)) => {
                out.stats.produce_failures.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.next_delay();
                if out.stats.set_problem(&problem, format!("cannot produce to {}: {e}", writer.topic)) {
                    tracing::warn!(tier = %out.tier, topic = %writer.topic, "produce failed: {e}; retrying with backoff (up to 10 s) until it works");
                }
                tokio::select! {
                    // Give up only when the tier stops; the input offset stays uncommitted and
                    // is replayed.
                    _ = out.shutdown.cancelled() => {
                        if out.stats.clear_problem(&problem) {
                            tracing::warn!(tier = %out.tier, topic = %writer.topic, "stopping with records undelivered; they will be replayed");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    let counter = match item.route {
        Route::Exit => &out.stats.exited,
        Route::Forward => &out.stats.forwarded,
        Route::DeadLetter => &out.stats.dead_lettered,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let (Route::Forward, Some(wake)) = (item.route, &out.wake) {
        crate::consumer::wakeup::wake(wake);
    }
    if let Some(origin) = item.origin_ts_ms {
        let ms = crate::now_ms().saturating_sub(origin);
        // Exits and forwards alike: how long inputs have taken so far is what the adaptive
        // exit rule steers.
        out.stats.latency.record(ms);
        if item.route == Route::Exit {
            crate::observe::metrics::exit_latency(&out.tier, ms);
        }
    }
    out.delivered.do_send(Delivered { partition: item.partition, offsets: item.offset..item.offset + 1 });
}

/// What to send instead of a record the broker refused: the record as a dead letter; a dead
/// letter without its value; `None` (logged) when even that is refused.
fn rejected(tier: &str, topic: &str, mut item: Inferred, why: &str) -> Option<Inferred> {
    use crate::wire::{mark_dead_letter, ERROR_HEADER, SOURCE_HEADER};
    let headers = &mut item.headers;
    match item.route {
        Route::Exit | Route::Forward => {
            tracing::warn!(
                tier,
                topic,
                offset = item.offset,
                partition = item.partition,
                "the broker rejected an output record ({why}): dead-lettering its input"
            );
            // A forward keeps the source an earlier tier may have set; otherwise name ours.
            let source = (!headers.iter().any(|(k, _)| k == SOURCE_HEADER))
                .then(|| format!("tier={tier} partition={} offset={}", item.partition, item.offset));
            mark_dead_letter(headers, &format!("output to {topic} rejected by the broker: {why}"), source);
            item.route = Route::DeadLetter;
            item.origin_ts_ms = None;
        }
        Route::DeadLetter if !item.value.is_empty() => {
            tracing::warn!(
                tier,
                topic,
                offset = item.offset,
                partition = item.partition,
                "the broker rejected a dead letter ({why}): sending it without its value"
            );
            let previous =
                headers.iter().find(|(k, _)| k == ERROR_HEADER).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            let reason = format!(
                "{}; value ({} bytes) dropped: the dead-letter topic rejected it: {why}",
                previous.unwrap_or_default(),
                item.value.len()
            );
            mark_dead_letter(headers, &reason, None);
            item.value = Vec::new();
        }
        Route::DeadLetter => {
            tracing::error!(
                tier,
                topic,
                offset = item.offset,
                partition = item.partition,
                "the broker rejected even a value-less dead letter ({why}): the record is dropped"
            );
            return None;
        }
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ERROR_HEADER, SOURCE_HEADER};

    fn item(route: Route, value: &[u8], headers: Vec<(String, Vec<u8>)>) -> Inferred {
        Inferred {
            partition: 1,
            offset: 7,
            route,
            key: Some(b"k".to_vec()),
            headers,
            value: value.to_vec(),
            origin_ts_ms: Some(5),
        }
    }

    fn header<'a>(i: &'a Inferred, k: &str) -> Vec<&'a str> {
        i.headers.iter().filter(|(h, _)| h == k).map(|(_, v)| std::str::from_utf8(v).unwrap_or("?")).collect()
    }

    #[test]
    fn a_rejected_output_becomes_a_dead_letter_with_the_brokers_reason() {
        let out =
            rejected("edge", "t.exits", item(Route::Exit, b"{}", vec![("a".into(), b"1".to_vec())]), "MessageTooLarge")
                .expect("dead letter");
        assert_eq!(out.route, Route::DeadLetter);
        assert_eq!(out.value, b"{}");
        assert_eq!(header(&out, "a"), ["1"], "input headers kept");
        assert_eq!(header(&out, ERROR_HEADER), ["output to t.exits rejected by the broker: MessageTooLarge"]);
        assert_eq!(header(&out, SOURCE_HEADER), ["tier=edge partition=1 offset=7"]);
        assert_eq!(out.origin_ts_ms, None);
    }

    #[test]
    fn a_rejected_dead_letter_goes_again_without_its_value_then_is_dropped() {
        let dl = item(Route::DeadLetter, &[0u8; 100], vec![(ERROR_HEADER.into(), b"bad JSON".to_vec())]);
        let again = rejected("edge", "t.dlq", dl, "RecordListTooLarge").expect("value-less dead letter");
        assert!(again.value.is_empty());
        assert_eq!(
            header(&again, ERROR_HEADER),
            ["bad JSON; value (100 bytes) dropped: the dead-letter topic rejected it: RecordListTooLarge"]
        );
        assert!(rejected("edge", "t.dlq", again, "still no").is_none(), "nothing left to drop: announced and skipped");
    }
}
