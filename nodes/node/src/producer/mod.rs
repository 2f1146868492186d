//! The producer stage: exits to the exit topic, forwards to the next tier's input topic (maybe
//! on another cluster), dead letters to the dead-letter topic.
//!
//! Input: [`Inferred`] from the pool's bounded channel. Output: records on the broker, then a
//! delivery report to the [`OffsetTracker`] once the broker acknowledged. Backpressure: at most
//! `max_in_flight` unacknowledged records; beyond that the loop stops reading its channel and
//! the workers block. Failure: a failed produce is retried with capped backoff until it
//! succeeds or the node shuts down (then the input offset stays uncommitted and is replayed).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rskafka::record::Record;
use tokio::sync::Semaphore;

use crate::inference::{Inferred, Route};
use crate::kafka::Backoff;
use crate::offsets::OffsetTracker;
use crate::shutdown::Shutdown;
use crate::supervisor::stats::TierStats;

/// Upper bound of one produce batch. Kafka's own default is 16 KiB; much larger batches
/// (seen: 5,000 records, 1 MB) were accepted but never served back by the tansu broker.
pub const MAX_BATCH_BYTES: usize = 64 << 10;

type Ack = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Sends to one partition with at most one request in flight: a record arriving while the
/// broker is busy waits and goes with the next batch. Idle, a record leaves at once (no
/// linger); under load batches grow with the broker's latency, so the request rate stays
/// bounded instead of the broker drowning in one-record requests.
pub struct PartitionSender {
    tx: flume::Sender<(Record, Ack)>,
}

impl PartitionSender {
    pub fn spawn(client: Arc<rskafka::client::partition::PartitionClient>) -> Self {
        let (tx, rx) = flume::unbounded::<(Record, Ack)>();
        tokio::spawn(async move {
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
                let result = client.produce(records, Default::default()).await.map(|_| ()).map_err(|e| e.to_string());
                for ack in acks {
                    let _ = ack.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    async fn send(&self, record: Record) -> Result<(), String> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx.send((record, ack)).map_err(|_| "partition sender stopped".to_string())?;
        done.await.map_err(|_| "partition sender stopped".to_string())?
    }
}

/// All partitions of one output topic.
pub struct TopicWriter {
    pub topic: String,
    pub partitions: Vec<PartitionSender>,
}

impl TopicWriter {
    pub fn new(topic: &str, clients: Vec<Arc<rskafka::client::partition::PartitionClient>>) -> Self {
        Self { topic: topic.to_string(), partitions: clients.into_iter().map(PartitionSender::spawn).collect() }
    }

    /// Same key, same partition (so a key's records stay in order); keyless records spread by offset.
    fn pick(&self, key: Option<&[u8]>, offset: i64) -> &PartitionSender {
        let n = self.partitions.len().max(1);
        let idx = match key {
            Some(k) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % n as u64) as usize
            }
            None => offset.rem_euclid(n as i64) as usize,
        };
        &self.partitions[idx]
    }
}

pub struct Producer {
    pub tier: String,
    pub input: flume::Receiver<Inferred>,
    pub writers: HashMap<Route, Arc<TopicWriter>>,
    pub tracker: Arc<OffsetTracker>,
    pub stats: Arc<TierStats>,
    pub max_in_flight: usize,
    pub shutdown: Shutdown,
}

impl Actor for Producer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let job = produce_loop(
            self.tier.clone(),
            self.input.clone(),
            self.writers.clone(),
            Arc::clone(&self.tracker),
            Arc::clone(&self.stats),
            Arc::new(Semaphore::new(self.max_in_flight)),
            self.shutdown.clone(),
        );
        ctx.spawn(job.into_actor(self).map(|_, act, ctx| {
            // Ends by itself only when the tier stops; anything else is a fault: restart.
            if !act.shutdown.is_cancelled() {
                ctx.stop();
            }
        }));
    }
}

impl Supervised for Producer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        if !self.shutdown.is_cancelled() {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tier = %self.tier, "producer restarting");
        }
    }
}

async fn produce_loop(
    tier: String,
    input: flume::Receiver<Inferred>,
    writers: HashMap<Route, Arc<TopicWriter>>,
    tracker: Arc<OffsetTracker>,
    stats: Arc<TierStats>,
    in_flight: Arc<Semaphore>,
    shutdown: Shutdown,
) {
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = input.recv_async() => match item {
                Ok(item) => item,
                Err(_) => return,
            },
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let Some(writer) = writers.get(&item.route).cloned() else {
            tracing::error!(%tier, route = ?item.route, "no output topic for route; record stays uncommitted");
            continue;
        };
        let tracker = Arc::clone(&tracker);
        let stats = Arc::clone(&stats);
        let shutdown = shutdown.clone();
        let tier = tier.clone();
        actix::spawn(async move {
            deliver(&tier, &writer, item, &tracker, &stats, &shutdown).await;
            drop(permit);
        });
    }
}

async fn deliver(
    tier: &str,
    writer: &TopicWriter,
    item: Inferred,
    tracker: &OffsetTracker,
    stats: &TierStats,
    shutdown: &Shutdown,
) {
    let producer = writer.pick(item.key.as_deref(), item.offset);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let record = Record {
            key: item.key.clone(),
            value: Some(item.value.clone()),
            // rskafka's `Record.headers` is a BTreeMap, so a repeated header key keeps only its
            // last value here (and keys go out sorted): a limit of the client crate at the
            // Kafka boundary. Up to this point the headers travel as an ordered list.
            headers: item.headers.iter().cloned().collect(),
            timestamp: chrono::Utc::now(),
        };
        match producer.send(record).await {
            Ok(_) => break,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(tier, topic = %writer.topic, "produce failed: {e}; retrying in {wait:?}");
                tokio::select! {
                    // Give up only on shutdown; the input offset stays uncommitted and is replayed.
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    let counter = match item.route {
        Route::Exit => &stats.exited,
        Route::Forward => &stats.forwarded,
        Route::DeadLetter => &stats.dead_lettered,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let (Route::Exit, Some(origin)) = (item.route, item.origin_ts_ms) {
        crate::supervisor::metrics::exit_latency(tier, crate::now_ms().saturating_sub(origin));
    }
    tracker.delivered(item.partition, item.offset);
}
