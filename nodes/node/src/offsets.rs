//! At-least-once bookkeeping: which input offsets are fully delivered, and their durable commit.
//!
//! Every consumed record yields exactly one output record (exit, forward or dead letter). The
//! consumer registers each offset it hands on; the producer reports each one once the broker
//! acknowledged its output. The committable offset of a partition is the lowest offset still
//! pending (or the next one to fetch when none is): everything below it is delivered.
//! Commits go to a topic (`__ddnn_offsets` by default) on the input's cluster, keyed
//! `tier/topic/partition`, so a node on any host resumes where the last one stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
struct PartitionState {
    pending: BTreeSet<i64>,
    /// Next offset the consumer will fetch.
    next_fetch: i64,
}

/// Pending offsets per partition of one tier's input.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: DashMap<i32, Mutex<PartitionState>>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The consumer starts (or restarts) a partition at `offset`.
    pub fn start(&self, partition: i32, offset: i64) {
        let entry = self.parts.entry(partition).or_default();
        let mut st = entry.lock().unwrap_or_else(|p| p.into_inner());
        st.next_fetch = st.next_fetch.max(offset);
    }

    /// The consumer hands `offset` on; it stays pending until [`Self::delivered`].
    pub fn fetched(&self, partition: i32, offset: i64) {
        let entry = self.parts.entry(partition).or_default();
        let mut st = entry.lock().unwrap_or_else(|p| p.into_inner());
        st.pending.insert(offset);
        st.next_fetch = st.next_fetch.max(offset + 1);
    }

    pub fn delivered(&self, partition: i32, offset: i64) {
        if let Some(entry) = self.parts.get(&partition) {
            entry.lock().unwrap_or_else(|p| p.into_inner()).pending.remove(&offset);
        }
    }

    /// Offset to commit per partition (the next one to process after a restart).
    pub fn committable(&self) -> BTreeMap<i32, i64> {
        self.parts
            .iter()
            .map(|e| {
                let st = e.value().lock().unwrap_or_else(|p| p.into_inner());
                (*e.key(), st.pending.first().copied().unwrap_or(st.next_fetch))
            })
            .collect()
    }

    /// Offsets handed on but not yet delivered, over all partitions.
    pub fn pending(&self) -> usize {
        self.parts.iter().map(|e| e.value().lock().unwrap_or_else(|p| p.into_inner()).pending.len()).sum()
    }

    /// Next offset to fetch per partition.
    pub fn fetch_positions(&self) -> BTreeMap<i32, i64> {
        self.parts.iter().map(|e| (*e.key(), e.value().lock().unwrap_or_else(|p| p.into_inner()).next_fetch)).collect()
    }
}

/// Value of a commit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// Next offset to process.
    pub offset: i64,
    /// Next offset the consumer would have fetched when this was written: records in
    /// `offset..fetched` may already have outputs, so a restart replays them (possible duplicates).
    pub fetched: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_delivered_prefix() {
        let t = OffsetTracker::new();
        t.start(0, 10);
        assert_eq!(t.committable()[&0], 10);
        for o in 10..15 {
            t.fetched(0, o);
        }
        assert_eq!(t.committable()[&0], 10);
        t.delivered(0, 11);
        t.delivered(0, 12);
        assert_eq!(t.committable()[&0], 10, "10 is still in flight");
        t.delivered(0, 10);
        assert_eq!(t.committable()[&0], 13);
        t.delivered(0, 13);
        t.delivered(0, 14);
        assert_eq!(t.committable()[&0], 15);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let t = OffsetTracker::new();
        t.fetched(0, 0);
        t.fetched(1, 5);
        t.delivered(1, 5);
        assert_eq!(t.committable(), BTreeMap::from([(0, 0), (1, 6)]));
    }

    #[test]
    fn last_commit_wins_and_junk_is_skipped() {
        let a = serde_json::to_vec(&Commit { offset: 3, fetched: 5 }).unwrap();
        let b = serde_json::to_vec(&Commit { offset: 7, fetched: 7 }).unwrap();
        let recs: Vec<(&[u8], &[u8])> = vec![(b"t/x/0", &a), (b"t/x/0", b"junk"), (b"t/x/0", &b), (b"t/x/1", &a)];
        let m = latest_commits(recs.into_iter());
        assert_eq!(m["t/x/0"].offset, 7);
        assert_eq!(m["t/x/1"].offset, 3);
    }
}
