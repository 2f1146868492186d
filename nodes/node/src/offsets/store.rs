//! Durable commits of one tier's input positions in the `__ddnn_offsets` topic.
//!
//! Kept only until tiers become consumer groups (issue 15), which store offsets with the group
//! coordinator: the owner (`super::OffsetsOwner`) talks to this store through `load`/`commit`
//! alone so the swap is local. Not polished beyond that: the topic is not compacted (rskafka
//! cannot pass topic configs at creation), so loading starts at the topic's log start
//! (retention may have removed the head) and reads backwards from the end.

use std::collections::BTreeMap;
use std::sync::Arc;

use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::Record;
use serde::{Deserialize, Serialize};

/// Value of a commit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// Next offset to process.
    pub offset: i64,
    /// Next offset the consumer would have fetched (or one past the highest delivered, if
    /// higher) when this was written: a restart processes `offset..fetched` again, so those
    /// records may produce duplicates downstream.
    pub fetched: i64,
    /// Consecutive starts that found records in flight at this same position: the last runs
    /// died while processing them (a record that crashes the process). Counted durably so a
    /// crash loop ends (see `crate::offsets::CRASH_LIMIT`).
    #[serde(default)]
    pub crashes: u32,
    /// Written by a drained stop: nothing was in flight. Any other last commit means the run
    /// ended abruptly (kill, crash) with records possibly in flight beyond `fetched`.
    #[serde(default)]
    pub clean: bool,
}

/// What a commit writes for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: i64,
    pub fetched: i64,
    pub crashes: u32,
    pub clean: bool,
}

pub fn commit_key(tier: &str, topic: &str, partition: i32) -> String {
    format!("{tier}/{topic}/{partition}")
}

/// Latest commit per key from the records of the offsets topic, in log order.
pub fn latest_commits<'a>(records: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> BTreeMap<String, Commit> {
    let mut out = BTreeMap::new();
    for (key, value) in records {
        let (Ok(key), Ok(commit)) = (std::str::from_utf8(key), serde_json::from_slice::<Commit>(value)) else {
            continue;
        };
        out.insert(key.to_string(), commit);
    }
    out
}

pub struct Store {
    pub tier: String,
    pub topic: String,
    pub client: Arc<PartitionClient>,
    /// Last written position per partition.
    last: BTreeMap<i32, Position>,
    refreshed: std::time::Instant,
}

/// Every partition's position is rewritten at least this often (see [`Store::load`]).
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
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
        let start = self.client.get_offset(OffsetAt::Earliest).await?.max(0);
        let end = crate::kafka::high_watermark(&self.client).await?;
        let prefix = format!("{}/{}/", self.tier, self.topic);
        let mut out: BTreeMap<i32, Commit> = BTreeMap::new();
        let mut upto = end;
        let mut window = 1024;
        while upto > start && !partitions.iter().all(|p| out.contains_key(p)) {
            let from = (upto - window).max(start);
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
            self.last.insert(*p, Position { offset: c.offset, fetched: c.fetched, crashes: c.crashes, clean: c.clean });
        }
        Ok(out)
    }

    /// Writes a commit for every partition whose position changed (and all of them every
    /// `REFRESH`).
    pub async fn commit(
        &mut self,
        positions: &BTreeMap<i32, Position>,
    ) -> Result<usize, rskafka::client::error::Error> {
        let refresh = self.refreshed.elapsed() >= REFRESH;
        let mut records = Vec::new();
        let mut moved = Vec::new();
        for (&p, &pos) in positions {
            let pos = Position { fetched: pos.fetched.max(pos.offset), ..pos };
            if self.last.get(&p) == Some(&pos) && !refresh {
                continue;
            }
            let commit = Commit { offset: pos.offset, fetched: pos.fetched, crashes: pos.crashes, clean: pos.clean };
            records.push(Record {
                key: Some(commit_key(&self.tier, &self.topic, p).into_bytes()),
                value: Some(serde_json::to_vec(&commit).unwrap_or_default()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            });
            moved.push((p, pos));
        }
        if records.is_empty() {
            return Ok(0);
        }
        self.client.produce(records, Default::default()).await?;
        if refresh {
            self.refreshed = std::time::Instant::now();
        }
        let n = moved.len();
        self.last.extend(moved);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_commit_wins_and_junk_is_skipped() {
        let a = serde_json::to_vec(&Commit { offset: 3, fetched: 5, crashes: 0, clean: false }).unwrap_or_default();
        let b = serde_json::to_vec(&Commit { offset: 7, fetched: 7, crashes: 1, clean: true }).unwrap_or_default();
        let recs: Vec<(&[u8], &[u8])> = vec![(b"t/x/0", &a), (b"t/x/0", b"junk"), (b"t/x/0", &b), (b"t/x/1", &a)];
        let m = latest_commits(recs.into_iter());
        assert_eq!(m["t/x/0"].offset, 7);
        assert_eq!(m["t/x/1"].offset, 3);
        assert_eq!(m["t/x/0"].crashes, 1);
        // Commits written before the crash counter existed still read.
        let old: Commit = serde_json::from_slice(br#"{"offset":4,"fetched":9}"#).unwrap_or(Commit {
            offset: 0,
            fetched: 0,
            crashes: 9,
            clean: true,
        });
        assert_eq!(old, Commit { offset: 4, fetched: 9, crashes: 0, clean: false });
    }
}
