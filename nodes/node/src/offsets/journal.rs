//! The recovery journal: each tier's crash-recovery state per input partition, in the
//! `__ddnn_offsets` topic (the topic that held all progress before consumer groups).
//!
//! Progress lives in the group coordinator now. What recovery needs besides the offset (how
//! far the last owner had fetched, crashes in a row, whether it stopped drained; see
//! `commit::Commit`) travels in the commit's metadata string too, but brokers are not bound to
//! keep it (tansu 0.6.0 answers every metadata as empty), so it is also written here, next to
//! the offset it belongs to, and read back when the group's metadata is missing. A record whose
//! offset is not the group's offset describes another position (an operator moved the group)
//! and is ignored. A partition with no group commit at all but a record here (a tier that ran
//! an older release) resumes from it once, as a migration. Not polished beyond that: the topic
//! is not compacted (rskafka cannot pass topic configs at creation), so loading reads
//! backwards from the end, and every position is rewritten every `REFRESH` to stay near it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::Record;

use crate::kafka::Reopen;

pub use super::commit::{Commit, Position};

/// Key prefix of a group's journal records (`group:<group>/<topic>/<partition>`).
pub fn group_prefix(group: &str, topic: &str) -> String {
    format!("group:{group}/{topic}/")
}

/// Key prefix of the records older releases wrote (`<tier>/<topic>/<partition>`), read for
/// migration only.
pub fn legacy_prefix(tier: &str, topic: &str) -> String {
    format!("{tier}/{topic}/")
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

/// A journal write or read not done within this long fails. rskafka 0.6 has no request
/// timeout, and a connection that died without a reset would otherwise hold the commit, the
/// lock on the tier's offset store and with it a rebalance's final commit, for ever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Reading the journal back (several requests) fails after this long.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Store {
    /// Keys are this prefix and the partition number.
    pub prefix: String,
    /// Replaced by a fresh connection after a request timed out (see `reconnect`), with when
    /// it was made (see `crate::kafka::suspect`).
    client: std::sync::Mutex<(Arc<PartitionClient>, std::time::Instant)>,
    /// How to connect afresh after a request timed out.
    reopen: Option<Reopen>,
    /// Last written position per partition.
    last: BTreeMap<i32, Position>,
    refreshed: std::time::Instant,
}

/// Every partition's position is rewritten at least this often (see [`Store::load`]).
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
    pub fn new(prefix: String, client: Arc<PartitionClient>) -> Self {
        Self {
            prefix,
            client: std::sync::Mutex::new((client, std::time::Instant::now())),
            reopen: None,
            last: BTreeMap::new(),
            refreshed: std::time::Instant::now(),
        }
    }

    /// The client; a fresh one first when a request to the cluster timed out since its
    /// connection was made.
    async fn client(&self) -> Arc<PartitionClient> {
        let (client, opened) = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if self.reopen.as_ref().is_some_and(|r| crate::kafka::suspect::stale(r.cluster(), opened)) {
            self.reconnect().await;
            return self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone();
        }
        client
    }

    /// A request timed out: the cluster is suspect (see `crate::kafka::suspect`).
    fn mark(&self) {
        if let Some(reopen) = &self.reopen {
            let opened = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1;
            crate::kafka::suspect::mark(reopen.cluster(), opened);
        }
    }

    /// After a request that timed out (its connection may have died without a reset): the next
    /// request goes over a fresh connection. Says how that went, for the error message.
    async fn reconnect(&self) -> String {
        let Some(reopen) = &self.reopen else { return String::new() };
        match reopen.open().await {
            Ok(fresh) => {
                *self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    (fresh, std::time::Instant::now());
                "; connected afresh for the next request".to_string()
            }
            Err(e) => format!("; connecting afresh failed too: {e}"),
        }
    }

    /// After a request that timed out, the next one goes over a fresh connection made by
    /// `reopen`.
    pub fn reconnecting(mut self, reopen: Reopen) -> Self {
        self.reopen = Some(reopen);
        self
    }

    /// Another member owns these partitions now.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.last.remove(p);
        }
    }

    /// Committed positions of `partitions` of this tier's input (absent: never committed).
    ///
    /// The offsets topic is read backwards from its end in growing windows, stopping once
    /// every partition asked for was found (`commit` rewrites every position every `REFRESH`,
    /// so the latest records are near the end).
    pub async fn load(&self, partitions: &[i32]) -> Result<BTreeMap<i32, Commit>, String> {
        Ok(self.load_stamped(partitions).await?.into_iter().map(|(p, (c, _))| (p, c)).collect())
    }

    /// As [`Store::load`], with each record's timestamp (ms since the epoch); within
    /// `LOAD_TIMEOUT` (the latest records are near the end, see `commit`).
    pub async fn load_stamped(&self, partitions: &[i32]) -> Result<BTreeMap<i32, (Commit, i64)>, String> {
        match tokio::time::timeout(LOAD_TIMEOUT, self.read(partitions)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => {
                self.mark();
                Err(format!("not read within {LOAD_TIMEOUT:?}{}", self.reconnect().await))
            }
        }
    }

    async fn read(&self, partitions: &[i32]) -> Result<BTreeMap<i32, (Commit, i64)>, rskafka::client::error::Error> {
        let client = self.client().await;
        let start = client.get_offset(OffsetAt::Earliest).await?.max(0);
        let end = crate::kafka::high_watermark(&client).await?;
        let prefix = &self.prefix;
        let mut out: BTreeMap<i32, (Commit, i64)> = BTreeMap::new();
        let mut upto = end;
        let mut window = 1024;
        while upto > start && !partitions.iter().all(|p| out.contains_key(p)) {
            let from = (upto - window).max(start);
            let records = crate::kafka::read_range(&client, from, upto).await?;
            let stamps: BTreeMap<&[u8], i64> = records
                .iter()
                .filter_map(|r| Some((r.record.key.as_deref()?, r.record.timestamp.timestamp_millis())))
                .collect();
            let chunk = latest_commits(
                records.iter().filter_map(|r| Some((r.record.key.as_deref()?, r.record.value.as_deref()?))),
            );
            for (key, commit) in chunk {
                if let Some(p) = key.strip_prefix(prefix.as_str()).and_then(|p| p.parse::<i32>().ok()) {
                    let at = stamps.get(key.as_bytes()).copied().unwrap_or(0);
                    // Later windows were read first: what is already there is newer.
                    out.entry(p).or_insert((commit, at));
                }
            }
            upto = from;
            window *= 4;
        }
        Ok(out)
    }

    /// Writes a commit for every partition whose position changed (and all of them every
    /// `REFRESH`).
    pub async fn commit(&mut self, positions: &BTreeMap<i32, Position>) -> Result<usize, String> {
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
                key: Some(format!("{}{p}", self.prefix).into_bytes()),
                value: Some(serde_json::to_vec(&commit).unwrap_or_default()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            });
            moved.push((p, pos));
        }
        if records.is_empty() {
            return Ok(0);
        }
        let client = self.client().await;
        match tokio::time::timeout(REQUEST_TIMEOUT, client.produce(records, Default::default())).await {
            Ok(written) => {
                written.map_err(|e| e.to_string())?;
            }
            Err(_) => {
                self.mark();
                return Err(format!("no answer within {REQUEST_TIMEOUT:?}{}", self.reconnect().await));
            }
        }
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
