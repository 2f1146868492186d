//! What a commit records for one input partition, and how it travels in the group
//! coordinator's per-partition metadata string.
//!
//! Kafka stores an offset and a free-form `metadata` string per partition (up to
//! `offset.metadata.max.bytes`, 4 KiB by default). The offset is the standard one every tool
//! reads and writes; the metadata carries what crash recovery needs (`offsets::recovery`) as a
//! small JSON object. A commit written by another tool (an operator's reset,
//! `alter_consumer_group_offsets`) has other or no metadata: it reads as a clean position, so
//! the tier resumes exactly there.

use serde::{Deserialize, Serialize};

/// A partition's last commit.
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
    /// crash loop ends (see `crate::offsets::recovery::CRASH_LIMIT`).
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

impl From<&Commit> for Position {
    fn from(c: &Commit) -> Self {
        Position { offset: c.offset, fetched: c.fetched, crashes: c.crashes, clean: c.clean }
    }
}

/// The metadata part, without the offset (the coordinator keeps that in its own field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    fetched: i64,
    #[serde(default)]
    crashes: u32,
    #[serde(default)]
    clean: bool,
    /// When it was written (ms since the epoch): how long a previous owner has been silent.
    #[serde(default)]
    at: i64,
}

/// The metadata string of a commit at `pos` (tens of bytes, well under Kafka's limit).
pub fn encode_metadata(pos: &Position) -> String {
    let meta =
        Meta { fetched: pos.fetched.max(pos.offset), crashes: pos.crashes, clean: pos.clean, at: crate::now_ms() };
    serde_json::to_string(&meta).unwrap_or_default()
}

/// When our metadata was written (ms since the epoch), if it says.
pub fn metadata_written_ms(metadata: &str) -> Option<i64> {
    serde_json::from_str::<Meta>(metadata).ok().map(|m| m.at).filter(|&at| at > 0)
}

/// The commit at `offset` when `metadata` is ours and belongs to it; `None` when the broker
/// kept no metadata or another tool wrote it.
pub fn decode_metadata(offset: i64, metadata: &str) -> Option<Commit> {
    match serde_json::from_str::<Meta>(metadata) {
        Ok(m) if m.fetched >= offset => Some(Commit { offset, fetched: m.fetched, crashes: m.crashes, clean: m.clean }),
        _ => None,
    }
}

/// A group commit as the tier resumes from it: its recovery state from the metadata, else from
/// the journal's record of the same offset, else (another tool moved the offset) a clean
/// position: nothing was in flight there as far as anyone can know.
///
/// The journal is written just before the group commit, so a journal record ahead of the
/// group's offset is a commit still on its way: its owner has not released the partition (not
/// clean, whatever the record says; the next read sees the two agree). An operator who moved
/// the offset back looks the same until the wait for a release times out.
pub fn resolve(offset: i64, metadata: &str, journal: Option<&Commit>) -> Commit {
    if let Some(c) = decode_metadata(offset, metadata) {
        return c;
    }
    match journal {
        Some(j) if j.offset == offset => j.clone(),
        Some(j) if j.offset > offset => Commit { offset, fetched: j.fetched.max(offset), crashes: 0, clean: false },
        _ => Commit { offset, fetched: offset, crashes: 0, clean: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_foreign_commits_read_as_clean() {
        let pos = Position { offset: 7, fetched: 19, crashes: 2, clean: false };
        let text = encode_metadata(&pos);
        assert!(text.len() < 100, "{text}");
        assert!(metadata_written_ms(&text).is_some_and(|at| (crate::now_ms() - at).abs() < 60_000));
        assert_eq!(metadata_written_ms(""), None);
        let ours = Commit { offset: 7, fetched: 19, crashes: 2, clean: false };
        assert_eq!(resolve(7, &text, None), ours);
        // An operator's reset (kafka-consumer-groups --reset-offsets, alter_consumer_group_offsets).
        let clean = |offset| Commit { offset, fetched: offset, crashes: 0, clean: true };
        assert_eq!(resolve(42, "", None), clean(42));
        assert_eq!(resolve(42, "reset by ops", None), clean(42));
        // Our metadata left behind by a commit whose offset someone moved forward since.
        assert_eq!(resolve(50, &text, None), clean(50));
    }

    #[test]
    fn a_broker_that_drops_metadata_is_covered_by_the_journal_of_the_same_offset() {
        let journal = Commit { offset: 7, fetched: 19, crashes: 2, clean: false };
        assert_eq!(resolve(7, "", Some(&journal)), journal);
        // The metadata wins where the broker kept it.
        let text = encode_metadata(&Position { offset: 7, fetched: 9, crashes: 0, clean: true });
        assert_eq!(resolve(7, &text, Some(&journal)).fetched, 9);
        // A journal record behind the group's offset: the group was moved forward by another
        // tool; the record describes another position.
        assert_eq!(resolve(9, "", Some(&journal)), Commit { offset: 9, fetched: 9, crashes: 0, clean: true });
        // Ahead of it: a commit on its way (even a release): not released yet.
        let on_its_way = Commit { offset: 5, fetched: 19, crashes: 0, clean: false };
        assert_eq!(resolve(5, "", Some(&journal)), on_its_way);
        assert_eq!(resolve(5, "", Some(&Commit { clean: true, ..journal.clone() })), on_its_way);
    }
}
