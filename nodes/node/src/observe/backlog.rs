//! The next tier's backlog as a latency: how long the oldest record waiting in its input (past
//! its consumer group's commit) has waited. Adaptive exits compare it with their target beside
//! this node's own latency, so a tier relaxes its exit rule when the tier it forwards to falls
//! behind, also when that tier runs in another process or on another machine (whose latency
//! is not in this node's stats). Read from the broker once per `EVERY`: an OffsetFetch for the
//! group, and per partition with a backlog its end offset and the first waiting record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::client::Client;
use tokio::sync::watch;

use crate::config::Cluster;
use crate::kafka::coordinator::GroupClient;
use crate::shutdown::Shutdown;

/// How often the backlog is read (each reading is one adaptive-exit decision at most).
pub const EVERY: Duration = Duration::from_secs(1);

/// Where the next tier reads from.
pub struct NextInput {
    pub cluster: Cluster,
    pub client: Arc<Client>,
    pub topic: String,
    pub partitions: i32,
    pub group: String,
}

/// Starts the watch: the receiver holds the latest age of the oldest waiting record (zero with
/// no backlog), or `None` while it cannot be read.
pub fn watch_backlog(next: NextInput, tier: &str, stop: Shutdown) -> watch::Receiver<Option<Duration>> {
    let (tx, rx) = watch::channel(None);
    let tier = tier.to_string();
    tokio::spawn(async move {
        let mut group = GroupClient::new(&next.cluster, &next.group, &format!("ddnn-{tier}-backlog"));
        let mut pcs: BTreeMap<i32, Arc<PartitionClient>> = BTreeMap::new();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            match oldest_wait(&next, &mut group, &mut pcs).await {
                Ok(age) => {
                    failing = false;
                    tx.send_replace(Some(age));
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(%tier, topic = %next.topic, group = %next.group, "cannot read the next tier's backlog (adaptive exits go by this node's latency alone meanwhile): {e}");
                    }
                    failing = true;
                    tx.send_replace(None);
                }
            }
        }
    });
    rx
}

async fn oldest_wait(
    next: &NextInput,
    group: &mut GroupClient,
    pcs: &mut BTreeMap<i32, Arc<PartitionClient>>,
) -> Result<Duration, String> {
    let partitions: Vec<i32> = (0..next.partitions).collect();
    let committed = group.fetch_offsets(&next.topic, &partitions).await.map_err(|e| e.to_string())?;
    let mut worst = Duration::ZERO;
    // A partition the group never committed is not counted: where its reader starts is its own
    // setting (auto_offset_reset), so its backlog is unknown here.
    for (p, (offset, _)) in committed {
        let pc = match pcs.get(&p) {
            Some(pc) => Arc::clone(pc),
            None => {
                let pc = crate::kafka::partition_client(&next.client, &next.cluster, &next.topic, p)
                    .await
                    .map_err(|e| e.to_string())?;
                pcs.insert(p, Arc::clone(&pc));
                pc
            }
        };
        let end = pc.get_offset(OffsetAt::Latest).await.map_err(|e| e.to_string())?;
        if offset >= end {
            continue;
        }
        let (records, _) = pc.fetch_records(offset, 1..(64 << 10), 1).await.map_err(|e| e.to_string())?;
        if let Some(r) = records.iter().find(|r| r.offset >= offset) {
            let waited = crate::now_ms() - r.record.timestamp.timestamp_millis();
            worst = worst.max(Duration::from_millis(waited.max(0) as u64));
        }
    }
    Ok(worst)
}
