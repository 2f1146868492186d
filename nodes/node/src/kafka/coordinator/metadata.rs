//! Partition counts for the leader's assignment, asked over the coordinator's own connection
//! (any broker answers Metadata): that connection is made afresh when it fails, so a plan can
//! be made as soon as the coordinator is reachable again, whatever state other connections of
//! the node are in.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::ResponseError;

use super::{check, str_bytes, CoordinatorError, GroupClient};

impl GroupClient {
    /// The partition count of each of `topics` that exists (absent: unknown to the broker).
    pub async fn partition_counts(&mut self, topics: &[String]) -> Result<BTreeMap<String, i32>, CoordinatorError> {
        let wanted = topics.iter().map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(t)))));
        let request =
            MetadataRequest::default().with_topics(Some(wanted.collect())).with_allow_auto_topic_creation(false);
        let conn = self.coordinator().await?;
        let result = conn.request(&request).await.and_then(|answer| {
            let mut counts = BTreeMap::new();
            for t in answer.topics {
                let Some(name) = t.name else { continue };
                // A topic the broker does not know is left out (the assignor gives it nothing).
                if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
                    continue;
                }
                check(conn, "Metadata", t.error_code, Some(format!("topic {}", name.0.as_str())))?;
                counts.insert(name.0.as_str().to_string(), t.partitions.len() as i32);
            }
            Ok(counts)
        });
        self.settle(result)
    }
}
