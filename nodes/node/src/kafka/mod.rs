//! Cluster connections and topic administration, with capped-backoff retries.
//!
//! Nothing here is broker-specific: end offsets come from the high watermark in fetch
//! responses (exact on every broker we met), never from ListOffsets(Latest).

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::RecordAndOffset;
use rskafka::BackoffConfig;

use crate::config::Cluster;
use crate::error::KafkaError;
use crate::shutdown::Shutdown;

pub mod clusters;
pub mod coordinator;
pub mod errors;
pub mod partitioner;
pub mod security;
pub mod suspect;

pub use crate::backoff::Backoff;

fn client_error(cluster: &Cluster, source: rskafka::client::error::Error) -> KafkaError {
    KafkaError::Client { cluster: cluster.name.clone(), brokers: cluster.brokers.join(","), source }
}

/// rskafka retries forever by default; a deadline lets errors reach our loops, which log them.
fn backoff_config() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(Duration::from_secs(10)),
    }
}

/// Connects, retrying with capped backoff until it succeeds or `shutdown` fires (then `None`).
/// Each failure is passed to `failed` (one line naming the cluster, never a secret): a wrong
/// password or certificate is a stall like an unreachable broker, reported and retried, and a
/// fixed password file or certificate is read again by the next attempt.
pub async fn connect(cluster: &Cluster, shutdown: &Shutdown, failed: &dyn Fn(String)) -> Option<Arc<Client>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let builder = ClientBuilder::new(cluster.brokers.clone()).client_id("ddnn").backoff_config(backoff_config());
        let why = match security::apply(builder, cluster) {
            Err(e) => format!("cluster `{}`: clusters.{}.{e}", cluster.name, cluster.name),
            Ok(builder) => {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    r = tokio::time::timeout(CONNECT_TIMEOUT, builder.build()) => r,
                };
                match result {
                    Ok(Ok(client)) => return Some(Arc::new(client)),
                    Ok(Err(e)) => connect_error(cluster, e),
                    Err(_) => timed_out(cluster),
                }
            }
        };
        let wait = backoff.next_delay();
        tracing::warn!("{why}; retrying in {wait:?}");
        failed(why);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long one connection attempt (TCP, TLS handshake, SASL, metadata) may take: longer than
/// rskafka's own retry deadline (10 s) plus one slow attempt (SCRAM's key derivation is
/// thousands of hash rounds, slow in a debug build on a busy host), so that its error, which
/// says what went wrong, usually arrives before this timeout, which cannot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed connection attempt in one line: the cluster, the error with its causes, and a hint
/// for the mistakes that are easy to make with secured clusters.
fn connect_error(cluster: &Cluster, e: rskafka::client::error::Error) -> String {
    let mut text = client_error(cluster, e).to_string();
    let hint = hint(cluster, &text);
    if let Some(h) = hint {
        text.push_str(" (");
        text.push_str(h);
        text.push(')');
    }
    text
}

fn hint(cluster: &Cluster, text: &str) -> Option<&'static str> {
    let has = |s: &str| text.contains(s);
    if has("UnknownIssuer") || has("BadSignature") {
        Some("the broker's certificate is not signed by the CA in tls.ca")
    } else if has("NotValidForName") {
        Some("the broker's certificate does not name the host in brokers")
    } else if has("SaslAuthenticationFailed") || has("Sasl") {
        Some("check sasl.mechanism, sasl.username and the password")
    } else if has("CertificateRequired") || has("certificate required") {
        Some("the broker wants a client certificate: set tls.cert and tls.key")
    } else if cluster.tls.is_none() && (has("eof") || has("EOF") || has("reset") || has("Eof")) {
        Some("the listener closed the connection: does it expect TLS? then set tls")
    } else if cluster.tls.is_some() && (has("InvalidContentType") || has("CorruptMessage") || has("eof")) {
        Some("no TLS answer: is the listener plaintext?")
    } else {
        None
    }
}

fn timed_out(cluster: &Cluster) -> String {
    let note =
        if cluster.tls.is_some() { " (is the listener plaintext? it never answers a TLS handshake)" } else { "" };
    format!("cluster `{}` ({}): no answer within {CONNECT_TIMEOUT:?}{note}", cluster.name, cluster.brokers.join(","))
}

/// Creates `topic` with `partitions` if missing; returns the partition count it has.
pub async fn ensure_topic(client: &Client, cluster: &Cluster, topic: &str, partitions: i32) -> Result<i32, KafkaError> {
    let existing = |topics: Vec<rskafka::topic::Topic>| {
        topics.into_iter().find(|t| t.name == topic).map(|t| t.partitions.len() as i32)
    };
    let topics = client.list_topics().await.map_err(|e| client_error(cluster, e))?;
    if let Some(n) = existing(topics) {
        return Ok(n);
    }
    let controller = client.controller_client().map_err(|e| client_error(cluster, e))?;
    if let Err(e) = controller.create_topic(topic, partitions, 1, 5_000).await {
        // Another node may have created it in between; only fail if it is still missing.
        let topics = client.list_topics().await.map_err(|e| client_error(cluster, e))?;
        return existing(topics).ok_or_else(|| KafkaError::Topic {
            cluster: cluster.name.clone(),
            topic: topic.to_string(),
            message: format!("cannot create: {e}"),
        });
    }
    tracing::info!(cluster = %cluster.name, topic, partitions, "created topic");
    Ok(partitions)
}

/// Opens a partition's client afresh, on a connection of its own.
///
/// rskafka 0.6 has neither request timeouts nor TCP keepalive: a connection whose peer vanished
/// without a reset (a host cut off its network and given a new address on its return, a WAN
/// proxy whose upstream died) stays open, and every later request on it waits forever. Our
/// loops time their requests; after such a timeout the connection is suspect, so (as the Java
/// client does after `request.timeout.ms`) it is dropped and a new one made, through a new
/// client: the shared one's metadata connection may be just as dead.
#[derive(Clone, Debug)]
pub struct Reopen {
    cluster: Cluster,
    topic: String,
    partition: i32,
}

impl Reopen {
    pub fn new(cluster: &Cluster, topic: &str, partition: i32) -> Self {
        Self { cluster: cluster.clone(), topic: topic.to_string(), partition }
    }

    /// One attempt, bounded by the connect timeout; the error is one line naming the cluster.
    pub async fn open(&self) -> Result<Arc<PartitionClient>, String> {
        let cluster = &self.cluster;
        let attempt = async {
            let builder =
                ClientBuilder::new(cluster.brokers.clone()).client_id("ddnn").backoff_config(backoff_config());
            let builder = security::apply(builder, cluster)
                .map_err(|e| format!("cluster `{}`: clusters.{}.{e}", cluster.name, cluster.name))?;
            let client = builder.build().await.map_err(|e| connect_error(cluster, e))?;
            partition_client(&client, cluster, &self.topic, self.partition).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt).await.unwrap_or_else(|_| Err(timed_out(cluster)))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The cluster's name, as the topology gives it (see [`suspect`]).
    pub fn cluster(&self) -> &str {
        &self.cluster.name
    }
}

pub async fn partition_client(
    client: &Client,
    cluster: &Cluster,
    topic: &str,
    partition: i32,
) -> Result<Arc<PartitionClient>, KafkaError> {
    client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .map(Arc::new)
        .map_err(|e| client_error(cluster, e))
}

/// End of the partition's log (high watermark), without reading any record: a fetch far past
/// the end answers with the high watermark (empty, or OffsetOutOfRange carrying it), so an
/// unreadable record at the head cannot get in the way. ListOffsets is the last resort (some
/// brokers answer it with the last batch's base offset + 1).
pub async fn high_watermark(pc: &PartitionClient) -> Result<i64, rskafka::client::error::Error> {
    use rskafka::client::error::{Error, ProtocolError, ServerErrorResponse};
    match pc.fetch_records(i64::MAX / 4, 1..2, 1).await {
        Ok((_, hw)) => Ok(hw),
        Err(Error::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            response: Some(ServerErrorResponse::PartitionFetchState { high_watermark, .. }),
            ..
        }) => Ok(high_watermark),
        Err(_) => pc.get_offset(rskafka::client::partition::OffsetAt::Latest).await,
    }
}

/// Reads `from..high watermark` (the end at the time of the call).
pub async fn read_to_end(
    pc: &PartitionClient,
    from: i64,
) -> Result<Vec<RecordAndOffset>, rskafka::client::error::Error> {
    let end = high_watermark(pc).await?;
    read_range(pc, from, end).await
}

/// Reads the records with offsets in `from..to`.
pub async fn read_range(
    pc: &PartitionClient,
    from: i64,
    to: i64,
) -> Result<Vec<RecordAndOffset>, rskafka::client::error::Error> {
    let mut out = Vec::new();
    let mut offset = from;
    let mut empty_fetches = 0;
    while offset < to {
        let (records, _) = pc.fetch_records(offset, 1..(8 << 20), 10).await?;
        if records.is_empty() {
            empty_fetches += 1;
            if empty_fetches > 20 {
                break;
            }
        }
        for r in records {
            if r.offset >= offset && r.offset < to {
                offset = r.offset + 1;
                out.push(r);
            } else if r.offset >= to {
                return Ok(out);
            }
        }
    }
    Ok(out)
}
