//! What a group coordinator call can fail with, sorted by what the caller does next: rejoin,
//! rediscover the coordinator, reconnect, or give up and report.

use std::time::Duration;

use kafka_protocol::ResponseError;

/// A failed group coordinator call. Every message names the cluster and the API; broker errors
/// also the Kafka error code by its protocol name, e.g. `REBALANCE_IN_PROGRESS (27)`.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The group is rebalancing: rejoin (JoinGroup, then SyncGroup).
    #[error("cluster `{cluster}`: {api}: REBALANCE_IN_PROGRESS (27): the group is rebalancing, rejoin")]
    RebalanceInProgress { cluster: String, api: &'static str },
    /// The coordinator does not know this member (expired, or it left): rejoin with no member id.
    #[error("cluster `{cluster}`: {api}: UNKNOWN_MEMBER_ID (25): the coordinator does not know this member (expired or left)")]
    UnknownMemberId { cluster: String, api: &'static str },
    /// The member's generation is not the group's: rejoin.
    #[error("cluster `{cluster}`: {api}: ILLEGAL_GENERATION (22): the group has moved to another generation, rejoin")]
    IllegalGeneration { cluster: String, api: &'static str },
    /// The broker asked is not (or no longer) the group's coordinator: rediscover it.
    #[error("cluster `{cluster}`: {api}: NOT_COORDINATOR (16): the group's coordinator moved")]
    NotCoordinator { cluster: String, api: &'static str },
    /// No coordinator is up for the group right now: rediscover it.
    #[error("cluster `{cluster}`: {api}: COORDINATOR_NOT_AVAILABLE (15)")]
    CoordinatorNotAvailable { cluster: String, api: &'static str },
    /// The coordinator is still loading the group's state: retry shortly.
    #[error("cluster `{cluster}`: {api}: COORDINATOR_LOAD_IN_PROGRESS (14): the coordinator is loading the group")]
    CoordinatorLoadInProgress { cluster: String, api: &'static str },
    /// The connection failed (refused, reset, closed): reconnect.
    #[error("cluster `{cluster}` ({broker}): {api}: {source}")]
    Io {
        cluster: String,
        broker: String,
        api: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// No answer in time; the connection is dropped (a late answer would be taken for the next
    /// request's): reconnect.
    #[error("cluster `{cluster}` ({broker}): {api}: no answer within {after:?}")]
    Timeout { cluster: String, broker: String, api: &'static str, after: Duration },
    /// Any other error code from the broker.
    #[error("cluster `{cluster}`: {api}: {}{}", code_name(*code), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker { cluster: String, api: &'static str, code: i16, message: Option<String> },
    /// A frame we cannot decode, an answer to another request, or no API version both sides
    /// speak.
    #[error("cluster `{cluster}` ({broker}): {api}: protocol error: {message}")]
    Protocol { cluster: String, broker: String, api: &'static str, message: String },
    /// TLS or SASL setup or authentication failed (a wrong password, an untrusted certificate).
    #[error("cluster `{cluster}` ({broker}): {message}")]
    Security { cluster: String, broker: String, message: String },
}

impl CoordinatorError {
    /// Worth trying again after rejoining, rediscovering or reconnecting (the client does the
    /// last two by itself on the next call).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Broker { code, .. } => ResponseError::try_from_code(*code).is_some_and(|e| e.is_retriable()),
            Self::Protocol { .. } | Self::Security { .. } => false,
            _ => true,
        }
    }

    /// The member must join again (JoinGroup, SyncGroup) before it may heartbeat or commit.
    pub fn needs_rejoin(&self) -> bool {
        matches!(self, Self::RebalanceInProgress { .. } | Self::UnknownMemberId { .. } | Self::IllegalGeneration { .. })
    }

    /// The connection to the coordinator is of no further use: the next call finds the
    /// coordinator again and connects afresh.
    pub(crate) fn drops_connection(&self) -> bool {
        matches!(
            self,
            Self::NotCoordinator { .. }
                | Self::CoordinatorNotAvailable { .. }
                | Self::Io { .. }
                | Self::Timeout { .. }
                | Self::Protocol { .. }
        )
    }

    /// The error for a non-zero `code` in `api`'s response, `message` being the broker's own
    /// words or what the code was about (a topic and partition).
    pub(crate) fn from_code(cluster: &str, api: &'static str, code: i16, message: Option<String>) -> Self {
        let cluster = cluster.to_string();
        match ResponseError::try_from_code(code) {
            Some(ResponseError::RebalanceInProgress) => Self::RebalanceInProgress { cluster, api },
            Some(ResponseError::UnknownMemberId) => Self::UnknownMemberId { cluster, api },
            Some(ResponseError::IllegalGeneration) => Self::IllegalGeneration { cluster, api },
            Some(ResponseError::NotCoordinator) => Self::NotCoordinator { cluster, api },
            Some(ResponseError::CoordinatorNotAvailable) => Self::CoordinatorNotAvailable { cluster, api },
            Some(ResponseError::CoordinatorLoadInProgress) => Self::CoordinatorLoadInProgress { cluster, api },
            _ => Self::Broker { cluster, api, code, message },
        }
    }
}

/// `REBALANCE_IN_PROGRESS (27)`: the name Kafka's docs and tools use, and the number.
pub fn code_name(code: i16) -> String {
    let name = match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN".to_string(),
        Some(e) => screaming_snake(&format!("{e:?}")),
    };
    format!("{name} ({code})")
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_kafkas() {
        assert_eq!(code_name(27), "REBALANCE_IN_PROGRESS (27)");
        assert_eq!(code_name(79), "MEMBER_ID_REQUIRED (79)");
        assert_eq!(code_name(-1), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(code_name(30), "GROUP_AUTHORIZATION_FAILED (30)");
        assert_eq!(code_name(9999), "UNKNOWN (9999)");
    }

    #[test]
    fn codes_map_to_what_callers_tell_apart() {
        let e = |code| CoordinatorError::from_code("c", "Heartbeat", code, None);
        assert!(matches!(e(27), CoordinatorError::RebalanceInProgress { .. }));
        assert!(matches!(e(25), CoordinatorError::UnknownMemberId { .. }));
        assert!(matches!(e(22), CoordinatorError::IllegalGeneration { .. }));
        assert!(matches!(e(16), CoordinatorError::NotCoordinator { .. }));
        assert!(e(16).drops_connection() && e(15).drops_connection() && !e(14).drops_connection());
        assert!(e(27).needs_rejoin() && !e(16).needs_rejoin());
        let other = CoordinatorError::from_code("local", "OffsetCommit", 30, Some("topic t".into()));
        assert_eq!(other.to_string(), "cluster `local`: OffsetCommit: GROUP_AUTHORIZATION_FAILED (30): topic t");
        assert!(!other.is_retryable());
        assert_eq!(
            e(27).to_string(),
            "cluster `c`: Heartbeat: REBALANCE_IN_PROGRESS (27): the group is rebalancing, rejoin"
        );
    }
}
