//! Commits of one tier's input positions to its consumer group's coordinator (OffsetCommit),
//! so `kafka-consumer-groups --describe`, AdminClients, Burrow or KEDA see the tier's progress
//! and an operator can move it with the tools they know; the recovery state goes into each
//! commit's metadata and into the journal (`super::journal`), for brokers that drop metadata.

use std::collections::BTreeMap;

use super::commit::{encode_metadata, Position};
use super::journal;
use crate::kafka::coordinator::GroupClient;
use crate::messages::Generation;

pub struct GroupStore {
    pub topic: String,
    client: GroupClient,
    journal: journal::Store,
    /// Last position committed per partition (unchanged ones are not sent again).
    last: BTreeMap<i32, Position>,
}

impl GroupStore {
    pub fn new(topic: &str, client: GroupClient, journal: journal::Store) -> Self {
        Self { topic: topic.to_string(), client, journal, last: BTreeMap::new() }
    }

    /// Commits every position that changed since the last commit (all of them with `force`),
    /// as a member of `generation`; returns how many were sent.
    pub async fn commit(
        &mut self,
        generation: &Generation,
        positions: &BTreeMap<i32, Position>,
        force: bool,
    ) -> Result<usize, String> {
        let moved: Vec<(i32, Position)> = positions
            .iter()
            .map(|(&p, &pos)| (p, Position { fetched: pos.fetched.max(pos.offset), ..pos }))
            .filter(|(p, pos)| force || self.last.get(p) != Some(pos))
            .collect();
        if moved.is_empty() {
            return Ok(0);
        }
        // Journal first: a group commit never lands without the recovery state of its offset.
        self.journal.commit(positions).await.map_err(|e| format!("recovery journal: {e}"))?;
        let offsets: Vec<(i32, i64, String)> =
            moved.iter().map(|(p, pos)| (*p, pos.offset, encode_metadata(pos))).collect();
        self.client
            .commit(generation.id, &generation.member_id, &self.topic, &offsets)
            .await
            .map_err(|e| e.to_string())?;
        let n = moved.len();
        self.last.extend(moved);
        Ok(n)
    }

    /// Another member owns these now: a later commit of ours must not be skipped as unchanged.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.last.remove(p);
        }
        self.journal.forget(partitions);
    }
}
