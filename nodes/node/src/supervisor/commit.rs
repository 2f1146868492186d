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
}

impl Committer {
    pub fn new(tier: &str, topic: &str, client: Arc<PartitionClient>) -> Self {
        Self { tier: tier.to_string(), topic: topic.to_string(), client, last: BTreeMap::new() }
    }

    /// Committed positions of this tier's input partitions (absent: never committed).
    pub async fn load(&mut self) -> Result<BTreeMap<i32, Commit>, rskafka::client::error::Error> {
        let records = crate::kafka::read_to_end(&self.client, 0).await?;
        let all =
            latest_commits(records.iter().filter_map(|r| Some((r.record.key.as_deref()?, r.record.value.as_deref()?))));
        let prefix = format!("{}/{}/", self.tier, self.topic);
        let mut out = BTreeMap::new();
        for (key, commit) in all {
            if let Some(p) = key.strip_prefix(prefix.as_str()).and_then(|p| p.parse::<i32>().ok()) {
                self.last.insert(p, commit.offset);
                out.insert(p, commit);
            }
        }
        Ok(out)
    }

    /// Writes a commit for every partition whose committable offset moved.
    pub async fn commit(&mut self, tracker: &OffsetTracker) -> Result<usize, rskafka::client::error::Error> {
        let fetched = tracker.fetch_positions();
        let mut records = Vec::new();
        let mut moved = Vec::new();
        for (p, offset) in tracker.committable() {
            if self.last.get(&p) == Some(&offset) {
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
