//! A client of Kafka's group coordinator (the classic group protocol): join, sync, heartbeat,
//! leave, and the group's committed offsets. rskafka, which we use for produce and fetch, has
//! no group APIs; this module speaks them itself, with kafka-protocol's generated codecs.
//!
//! Input: calls from one group member (a tier instance). Output: the broker's answers, or a
//! `CoordinatorError` that says what to do next (rejoin, retry, give up). Failure behaviour:
//! the coordinator is found lazily (FindCoordinator through the bootstrap brokers) and its
//! connection dropped when it fails or moves, so the next call finds it again; calls
//! themselves are not retried, except finding and connecting, a few times with capped backoff.
//! Every request has a deadline. A call dropped half way (a `select!` that chose another
//! branch) leaves its connection out of step; the next call notices and reconnects.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::{FindCoordinatorRequest, GroupId};
use kafka_protocol::protocol::StrBytes;

use crate::backoff::Backoff;
use crate::config::Cluster;
use conn::Conn;

mod conn;
pub mod consumer_protocol;
mod error;
mod membership;
mod metadata;
mod offsets;
mod sasl;

pub use error::{code_name, CoordinatorError};

/// Rounds over the bootstrap brokers to find the coordinator and connect to it.
const DISCOVERY_ATTEMPTS: u32 = 4;

/// One member's view of one group on one cluster.
pub struct GroupClient {
    cluster: Cluster,
    group: String,
    client_id: String,
    /// The coordinator's connection; `None` until first needed and after it failed.
    conn: Option<Conn>,
    /// A follower's SyncGroup waits for the leader's, up to the rebalance timeout: the last
    /// join's, kept for the sync that follows.
    rebalance_timeout: Duration,
}

/// A successful JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation_id: i32,
    pub member_id: String,
    pub leader: String,
    pub protocol_name: String,
    /// `(member id, subscription metadata)` of every member: for the leader only, empty for
    /// the others.
    pub members: Vec<(String, Vec<u8>)>,
}

impl Joined {
    pub fn is_leader(&self) -> bool {
        self.leader == self.member_id
    }
}

impl std::fmt::Debug for GroupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupClient")
            .field("cluster", &self.cluster.name)
            .field("group", &self.group)
            .field("coordinator", &self.conn.as_ref().map(|c| c.broker()))
            .finish()
    }
}

impl GroupClient {
    /// No I/O: the coordinator is found by the first call.
    pub fn new(cluster: &Cluster, group: &str, client_id: &str) -> Self {
        Self {
            cluster: cluster.clone(),
            group: group.to_string(),
            client_id: client_id.to_string(),
            conn: None,
            rebalance_timeout: conn::REQUEST_TIMEOUT,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The API versions in use with the coordinator, `(API, version)`; empty while not
    /// connected. For logs and diagnostics.
    pub fn versions(&self) -> Vec<(&'static str, i16)> {
        self.conn.as_ref().map(Conn::versions).unwrap_or_default()
    }

    fn group_id(&self) -> GroupId {
        GroupId(str_bytes(&self.group))
    }

    /// The coordinator's connection, found and made if there is none (or it is out of step).
    async fn coordinator(&mut self) -> Result<&mut Conn, CoordinatorError> {
        let conn = match self.conn.take() {
            Some(c) if !c.is_broken() => c,
            _ => self.discover().await?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Drops the connection when `result` says it is of no further use.
    fn settle<T>(&mut self, result: Result<T, CoordinatorError>) -> Result<T, CoordinatorError> {
        if let Err(e) = &result {
            if let (CoordinatorError::Timeout { .. }, Some(conn)) = (e, &self.conn) {
                crate::kafka::suspect::mark(&self.cluster.name, conn.opened());
            }
            if e.drops_connection() {
                self.conn = None;
            }
        }
        result
    }

    /// FindCoordinator through each bootstrap broker in turn, then a connection to the
    /// coordinator; a few rounds with capped backoff while the failures are retryable (a
    /// coordinator still being elected or loading, a broker restarting).
    async fn discover(&self) -> Result<Conn, CoordinatorError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut last = None;
        for round in 0..DISCOVERY_ATTEMPTS {
            if round > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            for broker in &self.cluster.brokers {
                match self.find_via(broker).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(group = %self.group, "finding the group coordinator: {e}");
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| CoordinatorError::Broker {
            cluster: self.cluster.name.clone(),
            api: "FindCoordinator",
            code: 15,
            message: Some("the cluster lists no brokers".to_string()),
        }))
    }

    async fn find_via(&self, broker: &str) -> Result<Conn, CoordinatorError> {
        let mut conn = Conn::connect(&self.cluster, broker, &self.client_id).await?;
        // key_type 0: a consumer group (v0 has no key type and means the same).
        let request = FindCoordinatorRequest::default().with_key(str_bytes(&self.group)).with_key_type(0);
        let answer = conn.request(&request).await?;
        if answer.error_code != 0 {
            let message = answer.error_message.map(|m| m.as_str().to_string());
            return Err(CoordinatorError::from_code(&self.cluster.name, "FindCoordinator", answer.error_code, message));
        }
        let host = answer.host.as_str();
        let address =
            if host.contains(':') { format!("[{host}]:{}", answer.port) } else { format!("{host}:{}", answer.port) };
        if address == broker {
            return Ok(conn);
        }
        tracing::debug!(group = %self.group, coordinator = %address, "group coordinator found");
        Conn::connect(&self.cluster, &address, &self.client_id).await
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Milliseconds as Kafka's i32 fields carry them (saturating: a timeout of weeks is "forever").
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// `Ok` for error code 0, else the error for `code`.
fn check(conn: &Conn, api: &'static str, code: i16, message: Option<String>) -> Result<(), CoordinatorError> {
    if code == 0 {
        Ok(())
    } else {
        Err(CoordinatorError::from_code(conn.cluster(), api, code, message))
    }
}

/// The committed `(offset, metadata)` per partition.
pub type Committed = BTreeMap<i32, (i64, String)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}

    /// Members run on their own tasks: every call's future must be `Send`.
    #[test]
    fn calls_can_be_spawned() {
        let cluster = Cluster::plain("c", vec!["127.0.0.1:1".to_string()]);
        let mut c = GroupClient::new(&cluster, "g", "t");
        spawnable(async move {
            let _ = c.join("", "consumer", &[], Duration::ZERO, Duration::ZERO).await;
            let _ = c.sync(0, "", "consumer", "range", Vec::new()).await;
            let _ = c.heartbeat(0, "").await;
            let _ = c.commit(0, "", "t", &[]).await;
            let _ = c.fetch_offsets("t", &[]).await;
            let _ = c.leave("").await;
        });
    }
}
