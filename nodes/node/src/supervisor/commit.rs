//! Durable offset commits for one tier's input (see `crate::offsets`).

use std::collections::BTreeMap;
use std::sync::Arc;

use rskafka::client::partition::PartitionClient;
use rskafka::record::Record;

use crate::offsets::{commit_key, latest_commits, Commit, OffsetTracker};

pub struct Committer {
    pub tier: String,
    pub topic: String,
    pub client: Arc<PartitionClient>,
    last: BTreeMap<i32, i64>,
    refreshed: std::time::Instant,
}

/// Every partition's position is rewritten at least this often (see [`Committer::load`]).
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Committer {
    pub fn new(tier: &str, topic: &str, client: Arc<PartitionClient>) -> Self {
        Self {
            tier: tier.to_string(),
            topic: topic.to_string(),
            client,
            last: BTreeMap::new(),
            refreshed: std::time::Instant::now(),
        }
    }

    /// Committed positions of `partitions` of this tier's input (absent: never committed).
    ///
    /// The offsets topic is read backwards from its end in growing windows, stopping once
    /// every partition asked for was found: `commit` rewrites every partition's position at
    /// least every `REFRESH`, so the latest commits are always near the end and start-up does
    /// not slow down as the topic grows.
    pub async fn load(&mut self, partitions: &[i32]) -> Result<BTreeMap<i32, Commit>, rskafka::client::error::Error> {
        let (_, end) = self.client.fetch_records(0, 1..2, 1).await?;
        let prefix = format!("{}/{}/", self.tier, self.topic);
        let mut out: BTreeMap<i32, Commit> = BTreeMap::new();
        let mut upto = end;
        let mut window = 1024;
        while upto > 0 && !partitions.iter().all(|p| out.contains_key(p)) {
            let from = (upto - window).max(0);
            let records = crate::kafka::read_range(&self.client, from, upto).await?;
            let chunk = latest_commits(
                records.iter().filter_map(|r| Some((r.record.key.as_deref()?, r.record.value.as_deref()?))),
            );
            for (key, commit) in chunk {
                if let Some(p) = key.strip_prefix(prefix.as_str()).and_then(|p| p.parse::<i32>().ok()) {
                    // Later windows were read first: what is already there is newer.
                    out.entry(p).or_insert(commit);
                }
            }
            upto = from;
            window *= 4;
        }
        for (p, c) in &out {
            self.last.insert(*p, c.offset);
        }
        Ok(out)
    }

    /// Writes a commit for every partition whose committable offset moved.
    pub async fn commit(&mut self, tracker: &OffsetTracker) -> Result<usize, rskafka::client::error::Error> {
        let fetched = tracker.fetch_positions();
        let mut records = Vec::new();
        let mut moved = Vec::new();
        let refresh = self.refreshed.elapsed() >= REFRESH;
        if refresh {
            self.refreshed = std::time::Instant::now();
        }
        for (p, offset) in tracker.committable() {
            if self.last.get(&p) == Some(&offset) && !refresh {
                continue;
            }
            let commit = Commit { offset, fetched: fetched.get(&p).copied().unwrap_or(offset) };
            records.push(Record {
                key: Some(commit_key(&self.tier, &self.topic, p).into_bytes()),
                value: Some(serde_json::to_vec(&commit).unwrap_or_default()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            });
            moved.push((p, offset));
        }
        if records.is_empty() {
            return Ok(0);
        }
        self.client.produce(records, Default::default()).await?;
        let n = moved.len();
        self.last.extend(moved);
        Ok(n)
    }
}
