//! The group's committed offsets: OffsetCommit and OffsetFetch, one topic at a time (a tier
//! reads one input topic).

use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{OffsetCommitRequest, OffsetFetchRequest, TopicName};

use super::conn::Conn;
use super::{check, str_bytes, Committed, CoordinatorError, GroupClient};

impl GroupClient {
    /// OffsetCommit of `(partition, offset, metadata)` for `topic`, as the member of
    /// `generation_id`: a member of an older generation is refused (`IllegalGeneration`,
    /// `RebalanceInProgress`), so a partition moved to another member is not committed over.
    /// `offset` is the next one to read, as Kafka's tools expect.
    pub async fn commit(
        &mut self,
        generation_id: i32,
        member_id: &str,
        topic: &str,
        offsets: &[(i32, i64, String)],
    ) -> Result<(), CoordinatorError> {
        let partitions = offsets
            .iter()
            .map(|(partition, offset, metadata)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset)
                    .with_committed_metadata(Some(str_bytes(metadata)))
            })
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id_or_member_epoch(generation_id)
            .with_member_id(str_bytes(member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(partitions)]);
        let conn = self.coordinator().await?;
        let result = conn.request(&request).await.and_then(|answer| {
            let per_partition = answer.topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t, p)));
            for (t, p) in per_partition {
                let what = format!("topic {} partition {}", t.name.0.as_str(), p.partition_index);
                check(conn, "OffsetCommit", p.error_code, Some(what))?;
            }
            Ok(())
        });
        self.settle(result)
    }

    /// OffsetFetch for `partitions` of `topic`: `(offset, metadata)` of those with a committed
    /// offset; those without (never committed, or expired) are absent.
    pub async fn fetch_offsets(&mut self, topic: &str, partitions: &[i32]) -> Result<Committed, CoordinatorError> {
        let request = OffsetFetchRequest::default().with_group_id(self.group_id()).with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partition_indexes(partitions.to_vec()),
        ]));
        let conn = self.coordinator().await?;
        let result = conn.request(&request).await.and_then(|answer| committed(conn, topic, answer));
        self.settle(result)
    }
}

fn committed(
    conn: &Conn,
    topic: &str,
    answer: kafka_protocol::messages::OffsetFetchResponse,
) -> Result<Committed, CoordinatorError> {
    // The group-wide error code came with v2; v1 puts it on every partition.
    check(conn, "OffsetFetch", answer.error_code, None)?;
    let mut out = Committed::new();
    for t in answer.topics.into_iter().filter(|t| t.name.0.as_str() == topic) {
        for p in t.partitions {
            let what = format!("topic {topic} partition {}", p.partition_index);
            check(conn, "OffsetFetch", p.error_code, Some(what))?;
            // -1: nothing committed.
            if p.committed_offset >= 0 {
                let metadata = p.metadata.map(|m| m.as_str().to_string()).unwrap_or_default();
                out.insert(p.partition_index, (p.committed_offset, metadata));
            }
        }
    }
    Ok(out)
}
