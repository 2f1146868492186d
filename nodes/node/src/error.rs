//! Errors at the node's boundaries.

/// Failures talking to a Kafka cluster.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cluster `{cluster}` ({brokers}): {source}")]
    Client {
        cluster: String,
        brokers: String,
        #[source]
        source: rskafka::client::error::Error,
    },
    #[error("cluster `{cluster}`: topic `{topic}`: {message}")]
    Topic { cluster: String, topic: String, message: String },
}

impl KafkaError {
    /// Connection-level problems heal when the broker comes back; topic problems need a human.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KafkaError::Client { .. })
    }
}

/// A tier that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("tier `{tier}`: {source}")]
    Kafka {
        tier: String,
        #[source]
        source: KafkaError,
    },
    #[error("tier `{tier}`: model {path}: {message}")]
    Model { tier: String, path: String, message: String },
    #[error("no tier named `{0}` in the topology (known: {1})")]
    UnknownTier(String, String),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}
