//! The consumer stage: one fetch loop per owned input partition.
//!
//! Input: a Kafka partition, from the committed offset. Output: [`Consumed`] into the pool's
//! bounded channel; a full channel parks the loop, so a busy pool pauses fetching instead of
//! buffering without limit. Each offset handed on is registered with the [`OffsetTracker`].
//! Failure: fetch errors are logged and retried with capped backoff; the actor is supervised
//! and restarted if its loop ever ends early.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rskafka::client::partition::PartitionClient;

use crate::kafka::Backoff;
use crate::offsets::OffsetTracker;
use crate::shutdown::Shutdown;
use crate::supervisor::stats::TierStats;

/// One input record on its way to the pool.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// In record order; a key may repeat (Kafka allows it).
    pub headers: Vec<(String, Vec<u8>)>,
    /// `None` for a record without a value (it will be dead-lettered).
    pub value: Option<Vec<u8>>,
    pub ts_ms: i64,
    pub received_ms: i64,
    /// Inference attempts that failed so far (retried up to a limit, then dead-lettered).
    pub attempts: u32,
}

/// Fetch tuning. Tansu waits the full max-wait on every fetch, so keep it small.
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    pub max_wait_ms: i32,
    pub max_bytes: i32,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self { max_wait_ms: 5, max_bytes: 4 << 20 }
    }
}

pub struct PartitionConsumer {
    pub tier: String,
    pub client: Arc<PartitionClient>,
    pub start_offset: i64,
    pub tracker: Arc<OffsetTracker>,
    pub stats: Arc<TierStats>,
    pub out: flume::Sender<Consumed>,
    pub settings: FetchSettings,
    pub shutdown: Shutdown,
}

impl Actor for PartitionConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A tier being stopped: stay idle until the supervisor lets go of us.
        if self.shutdown.is_cancelled() {
            return;
        }
        let job = fetch_loop(
            self.tier.clone(),
            Arc::clone(&self.client),
            self.start_offset,
            Arc::clone(&self.tracker),
            Arc::clone(&self.stats),
            self.out.clone(),
            self.settings,
            self.shutdown.clone(),
        );
        ctx.spawn(job.into_actor(self).map(|next, act, ctx| {
            act.start_offset = next;
            // The loop only ends by itself on shutdown; anything else is a fault: restart.
            if !act.shutdown.is_cancelled() {
                ctx.stop();
            }
        }));
    }
}

impl Supervised for PartitionConsumer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        if !self.shutdown.is_cancelled() {
            self.stats.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(tier = %self.tier, partition = self.client.partition(), "consumer restarting");
        }
    }
}

/// Runs until shutdown; returns the next offset to fetch.
#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    tier: String,
    client: Arc<PartitionClient>,
    mut offset: i64,
    tracker: Arc<OffsetTracker>,
    stats: Arc<TierStats>,
    out: flume::Sender<Consumed>,
    settings: FetchSettings,
    shutdown: Shutdown,
) -> i64 {
    let partition = client.partition();
    tracker.start(partition, offset);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => return offset,
            r = client.fetch_records(offset, 1..settings.max_bytes, settings.max_wait_ms) => r,
        };
        let (records, high_watermark) = match fetched {
            Ok(r) => r,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(%tier, topic = client.topic(), partition, offset, "fetch failed: {e}; retrying in {wait:?}");
                stats.set_fetch_error(true);
                tokio::select! {
                    _ = shutdown.cancelled() => return offset,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        backoff.reset();
        stats.set_fetch_error(false);
        stats.set_high_watermark(partition, high_watermark);
        let received_ms = crate::now_ms();
        for r in records {
            // A fetch returns whole batches; skip what precedes our position.
            if r.offset < offset {
                continue;
            }
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
            };
            tracker.fetched(partition, r.offset);
            stats.consumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            offset = r.offset + 1;
            if out.send_async(msg).await.is_err() {
                return offset;
            }
        }
    }
}
