//! Typed errors of the data path's Kafka calls, and what each means for the record at hand.
//!
//! rskafka reports everything as one `Error`; the stages need to know whether waiting can help
//! (the broker is down, a leader moves) or whether the same request will fail forever (a record
//! the client cannot decode, a record the broker refuses). `is_retryable()` decides which:
//! retryable errors are retried with capped backoff (and reported in health while they last),
//! the others turn the records concerned into dead letters so the partition moves on.

use rskafka::client::error::{Error as RsError, ProtocolError, RequestError, ServerErrorResponse};

/// Why a fetch returned no records.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The broker answered, but what it sent cannot be turned into records (an out-of-range
    /// timestamp, a corrupt or unsupported batch): the same fetch fails the same way forever.
    #[error("unreadable record batch: {0}")]
    Unreadable(String),
    /// The position is outside the log (deleted by retention, or the topic was recreated).
    #[error("offset out of range (high watermark {high_watermark:?})")]
    OutOfRange { high_watermark: Option<i64> },
    /// Broker unreachable, leader moving, timeouts: waiting helps.
    #[error("{0}")]
    Unavailable(String),
}

impl FetchError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, FetchError::Unavailable(_))
    }
}

impl From<RsError> for FetchError {
    fn from(e: RsError) -> Self {
        match &e {
            RsError::InvalidResponse(msg) => FetchError::Unreadable(msg.clone()),
            RsError::Request(r) if request_is_undecodable(r) => FetchError::Unreadable(e.to_string()),
            RsError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, response, .. } => {
                let high_watermark = match response {
                    Some(ServerErrorResponse::PartitionFetchState { high_watermark, .. }) => Some(*high_watermark),
                    _ => None,
                };
                FetchError::OutOfRange { high_watermark }
            }
            RsError::ServerError { protocol_error: ProtocolError::CorruptMessage, .. } => {
                FetchError::Unreadable(e.to_string())
            }
            _ => FetchError::Unavailable(e.to_string()),
        }
    }
}

/// A response that arrived whole but does not decode (as opposed to a broken connection).
fn request_is_undecodable(e: &RequestError) -> bool {
    match e {
        RequestError::ReadError(_) | RequestError::ReadVersionedError(_) | RequestError::TooMuchData { .. } => true,
        RequestError::Poisoned(inner) => request_is_undecodable(inner),
        _ => false,
    }
}

/// Why a produce request was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The broker refuses these records as they are (too large, invalid, not allowed): retrying
    /// the same records cannot succeed.
    #[error("rejected by the broker: {0}")]
    Rejected(String),
    /// Broker unreachable, topic missing, not enough replicas, timeouts: may clear by itself.
    #[error("{0}")]
    Unavailable(String),
}

impl ProduceError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProduceError::Unavailable(_))
    }
}

impl From<RsError> for ProduceError {
    fn from(e: RsError) -> Self {
        let rejected = matches!(
            &e,
            RsError::ServerError {
                protocol_error: ProtocolError::MessageTooLarge
                    | ProtocolError::RecordListTooLarge
                    | ProtocolError::InvalidRecord
                    | ProtocolError::CorruptMessage
                    | ProtocolError::InvalidTopicException
                    | ProtocolError::PolicyViolation
                    | ProtocolError::TopicAuthorizationFailed
                    | ProtocolError::UnsupportedForMessageFormat
                    | ProtocolError::InvalidTimestamp,
                ..
            }
        );
        if rejected {
            ProduceError::Rejected(e.to_string())
        } else {
            ProduceError::Unavailable(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(protocol_error: ProtocolError, response: Option<ServerErrorResponse>) -> RsError {
        RsError::ServerError {
            protocol_error,
            error_message: None,
            request: rskafka::client::error::RequestContext::Topic("t".into()),
            response,
            is_virtual: false,
        }
    }

    #[test]
    fn fetch_errors_split_into_unreadable_out_of_range_and_retryable() {
        let bad_ts = FetchError::from(RsError::InvalidResponse("Not a valid timestamp (4611686018427387904)".into()));
        assert!(matches!(bad_ts, FetchError::Unreadable(_)) && !bad_ts.is_retryable());
        let oor = FetchError::from(server(
            ProtocolError::OffsetOutOfRange,
            Some(ServerErrorResponse::PartitionFetchState { high_watermark: 42, last_stable_offset: None }),
        ));
        assert!(matches!(oor, FetchError::OutOfRange { high_watermark: Some(42) }));
        let leader = FetchError::from(server(ProtocolError::NotLeaderOrFollower, None));
        assert!(leader.is_retryable());
        let io = FetchError::from(RsError::Request(RequestError::IO(std::io::ErrorKind::ConnectionReset.into())));
        assert!(io.is_retryable(), "a broken connection heals: {io}");
    }

    #[test]
    fn produce_errors_split_into_rejected_and_retryable() {
        assert!(!ProduceError::from(server(ProtocolError::MessageTooLarge, None)).is_retryable());
        assert!(!ProduceError::from(server(ProtocolError::RecordListTooLarge, None)).is_retryable());
        assert!(ProduceError::from(server(ProtocolError::UnknownTopicOrPartition, None)).is_retryable());
        assert!(ProduceError::from(server(ProtocolError::NotEnoughReplicas, None)).is_retryable());
    }
}
