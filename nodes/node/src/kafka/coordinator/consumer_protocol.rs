//! The "consumer" protocol's member metadata (subscription) and assignment bytes, as Kafka's
//! Java client and librdkafka write them: an i16 version, then the versioned struct. Written
//! this way, a plain Java or librdkafka consumer can share a group with ddnn nodes.
//!
//! We write subscription v1 (v0 plus owned partitions, always empty here: we assign eagerly)
//! and assignment v1 (identical to v0). We read any version: newer versions only append
//! fields, so a struct newer than kafka-protocol knows is read as its newest known prefix, as
//! the Java client does.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

const SUBSCRIPTION_VERSION: i16 = 1;
const ASSIGNMENT_VERSION: i16 = 1;

/// Member metadata or an assignment that is not the consumer protocol's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("consumer protocol {what}: {message}")]
pub struct DecodeError {
    pub what: &'static str,
    pub message: String,
}

/// A member's metadata: the topics it subscribes to.
pub fn encode_subscription(topics: &[String]) -> Vec<u8> {
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|t| StrBytes::from_string(t.clone())).collect());
    versioned(SUBSCRIPTION_VERSION, &subscription)
}

/// The topics of a member's metadata (a Java consumer's, a librdkafka consumer's, ours).
pub fn decode_subscription(bytes: &[u8]) -> Result<Vec<String>, DecodeError> {
    let s: ConsumerProtocolSubscription = unversioned("subscription", bytes)?;
    Ok(s.topics.iter().map(|t| t.as_str().to_string()).collect())
}

/// An assignment: partitions per topic.
pub fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Vec<u8> {
    let assigned = partitions
        .iter()
        .map(|(topic, ps)| {
            TopicPartition::default()
                .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(ps.clone())
        })
        .collect();
    versioned(ASSIGNMENT_VERSION, &ConsumerProtocolAssignment::default().with_assigned_partitions(assigned))
}

/// The partitions per topic of an assignment. An empty assignment (no bytes: a member the
/// leader gave nothing) is an empty map, as in the Java client.
pub fn decode_assignment(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>, DecodeError> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let a: ConsumerProtocolAssignment = unversioned("assignment", bytes)?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in a.assigned_partitions {
        out.entry(tp.topic.0.as_str().to_string()).or_default().extend(tp.partitions);
    }
    Ok(out)
}

fn versioned<M: Encodable>(version: i16, message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.put_i16(version);
    // Encoding only fails for fields set beyond `version`, which we never set, or strings and
    // arrays longer than the format can carry (i16/i32 lengths): none in a subscription.
    if let Err(e) = message.encode(&mut out, version) {
        tracing::error!("consumer protocol encoding failed: {e}");
    }
    out
}

fn unversioned<M: Decodable + Message>(what: &'static str, bytes: &[u8]) -> Result<M, DecodeError> {
    let err = |message: String| DecodeError { what, message };
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return Err(err(format!("{} bytes, too short for a version", bytes.len())));
    }
    let version = buf.get_i16();
    if version < M::VERSIONS.min {
        return Err(err(format!("version {version} unknown")));
    }
    M::decode(&mut buf, version.min(M::VERSIONS.max)).map_err(|e| err(format!("v{version}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subscription v0 to `["ddnn.in"]`, from the Kafka protocol guide: version INT16, topics
    /// ARRAY(STRING) (INT32 count; INT16 length + UTF-8), user_data nullable BYTES (-1 = null).
    const V0_SUBSCRIPTION: &[u8] = &[
        0, 0, // version 0
        0, 0, 0, 1, // one topic
        0, 7, b'd', b'd', b'n', b'n', b'.', b'i', b'n', // "ddnn.in"
        0xff, 0xff, 0xff, 0xff, // no user data
    ];

    #[test]
    fn subscription_is_the_standard_encoding() {
        assert_eq!(decode_subscription(V0_SUBSCRIPTION), Ok(vec!["ddnn.in".to_string()]));
        // v1 is v0 with version 1 and an (empty) owned-partitions array after the user data.
        let mut v1 = V0_SUBSCRIPTION.to_vec();
        v1[1] = 1;
        v1.extend([0, 0, 0, 0]);
        assert_eq!(encode_subscription(&["ddnn.in".to_string()]), v1);
    }

    #[test]
    fn assignment_is_the_standard_encoding() {
        let expected: &[u8] = &[
            0, 1, // version 1
            0, 0, 0, 1, // one topic
            0, 1, b't', // "t"
            0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, // partitions [0, 3]
            0xff, 0xff, 0xff, 0xff, // no user data
        ];
        let a = BTreeMap::from([("t".to_string(), vec![0, 3])]);
        assert_eq!(encode_assignment(&a), expected);
        // A v0 assignment differs only in its version.
        let mut v0 = expected.to_vec();
        v0[1] = 0;
        assert_eq!(decode_assignment(&v0), Ok(a));
    }

    #[test]
    fn round_trips() {
        let topics = vec!["a".to_string(), "ddnn.fog.input".to_string()];
        assert_eq!(decode_subscription(&encode_subscription(&topics)), Ok(topics));
        assert_eq!(decode_subscription(&encode_subscription(&[])), Ok(vec![]));
        let a = BTreeMap::from([("a".to_string(), vec![1, 2]), ("b".to_string(), vec![0])]);
        assert_eq!(decode_assignment(&encode_assignment(&a)), Ok(a));
        assert_eq!(decode_assignment(&[]), Ok(BTreeMap::new()));
    }

    #[test]
    fn newer_versions_are_read_as_their_known_prefix() {
        // A v3 subscription (owned partitions, generation, rack) from a newer client, with a
        // version number beyond what we know and a trailing field we do not.
        let mut bytes = V0_SUBSCRIPTION.to_vec();
        bytes[1] = 9;
        bytes.extend([0, 0, 0, 0]); // owned partitions
        bytes.extend([0, 0, 0, 5]); // generation 5
        bytes.extend([0, 2, b'r', b'1']); // rack "r1"
        bytes.extend([1, 2, 3]); // unknown
        assert_eq!(decode_subscription(&bytes), Ok(vec!["ddnn.in".to_string()]));
    }

    #[test]
    fn garbage_is_an_error_naming_what() {
        let e = decode_subscription(&[0]).unwrap_err();
        assert_eq!(e.what, "subscription");
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 9]).is_err());
        assert!(decode_subscription(&[0xff, 0xff, 0, 0]).is_err());
    }
}
