//! One connection to one broker for the group APIs: TCP, TLS and SASL as the cluster says,
//! API versions negotiated once, then one request at a time, each with a deadline.
//!
//! Frames are Kafka's: a 4-byte big-endian length, then a request (response) header and body,
//! all encoded by kafka-protocol. Requests are not pipelined: the group APIs are a handful of
//! calls a second at most, and one request in flight keeps the correlation check trivial.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::CoordinatorError;
use crate::config::Cluster;
use crate::kafka::security;

/// Default deadline of one request (rskafka has none, and a silent peer stalled us forever).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP, TLS, ApiVersions and SASL together. SCRAM's key derivation is thousands of hash rounds,
/// slow in a debug build on a busy host: as for rskafka's connections, 30 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Larger answers are not group API answers (a leader's JoinGroup with every member's
/// subscription stays far below this): a plaintext client talking to a TLS listener reads a
/// TLS record header as a length of about 350 MB.
const MAX_FRAME: usize = 64 << 20;

// Sync too: a `GroupClient` is borrowed across awaits, and its futures must be `Send` to be
// spawned.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A request kafka-protocol can encode, with its response and the versions we send.
pub(crate) trait Api: Encodable + Message {
    const KEY: ApiKey;
    const NAME: &'static str;
    /// Lowest version our code fills in correctly (above kafka-protocol's lowest where a field
    /// we rely on came later).
    const MIN: i16;
    /// Highest version we send: the newest our code was written and tested against (kafka-protocol
    /// may know newer ones, with fields we would leave at their defaults).
    const MAX: i16;
    type Response: Decodable;
}

macro_rules! api {
    ($req:ty, $resp:ty, $key:ident, $min:literal ..= $max:literal) => {
        impl Api for $req {
            const KEY: ApiKey = ApiKey::$key;
            const NAME: &'static str = stringify!($key);
            const MIN: i16 = $min;
            const MAX: i16 = $max;
            type Response = $resp;
        }
    };
}

// v3 is the first flexible version; v0 is the fallback every broker answers.
api!(ApiVersionsRequest, ApiVersionsResponse, ApiVersions, 0..=3);
// SaslAuthenticate frames (v1) rather than raw tokens (v0).
api!(SaslHandshakeRequest, SaslHandshakeResponse, SaslHandshake, 1..=1);
api!(SaslAuthenticateRequest, SaslAuthenticateResponse, SaslAuthenticate, 0..=2);
// v4 batches keys (KIP-699): a different request shape for the same answer.
api!(FindCoordinatorRequest, FindCoordinatorResponse, FindCoordinator, 0..=3);
// v8 adds a reason, v9 skip_assignment (static members only).
api!(JoinGroupRequest, JoinGroupResponse, JoinGroup, 0..=7);
api!(SyncGroupRequest, SyncGroupResponse, SyncGroup, 0..=5);
api!(HeartbeatRequest, HeartbeatResponse, Heartbeat, 0..=4);
// v5 adds a reason per member.
api!(LeaveGroupRequest, LeaveGroupResponse, LeaveGroup, 0..=4);
// v9 is KIP-848's (member epochs).
api!(OffsetCommitRequest, OffsetCommitResponse, OffsetCommit, 2..=8);
// v8 asks for several groups at once, a different request shape.
api!(OffsetFetchRequest, OffsetFetchResponse, OffsetFetch, 1..=7);
// v1 takes named topics (v0's empty list means all); v10 adds topic ids.
api!(MetadataRequest, MetadataResponse, Metadata, 1..=9);

/// A connection to `broker`, authenticated, with the broker's API version ranges.
pub(crate) struct Conn {
    cluster: String,
    broker: String,
    stream: Box<dyn Stream>,
    client_id: StrBytes,
    correlation: i32,
    /// The broker's `(min, max)` per API key.
    ranges: BTreeMap<i16, (i16, i16)>,
    /// Set while a request is on the wire and after any failure: a request abandoned half way
    /// (its future dropped, a timeout) leaves bytes in the stream that would be read as the
    /// next answer.
    broken: bool,
    /// When it was made (see `crate::kafka::suspect`).
    opened: std::time::Instant,
}

impl Conn {
    /// Connects to `broker` (`host:port`) of `cluster`: TLS and SASL if configured, versions
    /// negotiated.
    pub async fn connect(cluster: &Cluster, broker: &str, client_id: &str) -> Result<Conn, CoordinatorError> {
        let attempt = Self::connect_unbounded(cluster, broker, client_id);
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(CoordinatorError::Timeout {
                cluster: cluster.name.clone(),
                broker: broker.to_string(),
                api: "connect",
                after: CONNECT_TIMEOUT,
            }),
        }
    }

    async fn connect_unbounded(cluster: &Cluster, broker: &str, client_id: &str) -> Result<Conn, CoordinatorError> {
        let io = |source| CoordinatorError::Io {
            cluster: cluster.name.clone(),
            broker: broker.to_string(),
            api: "connect",
            source,
        };
        let security = |message: String| CoordinatorError::Security {
            cluster: cluster.name.clone(),
            broker: broker.to_string(),
            message,
        };
        let tcp = TcpStream::connect(broker).await.map_err(io)?;
        // Small request/response exchanges: do not wait to fill a segment.
        tcp.set_nodelay(true).map_err(io)?;
        let stream: Box<dyn Stream> = match &cluster.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let config =
                    security::tls_config(tls).map_err(|e| security(format!("clusters.{}.{e}", cluster.name)))?;
                let host = host_of(broker);
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| security(format!("{host:?} is not a valid TLS server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| security(format!("TLS handshake: {e}{}", tls_hint(&e.to_string()))))?;
                Box::new(tls)
            }
        };
        let mut conn = Conn {
            cluster: cluster.name.clone(),
            broker: broker.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            correlation: 0,
            ranges: BTreeMap::new(),
            broken: false,
            opened: std::time::Instant::now(),
        };
        conn.negotiate().await?;
        if let Some(sasl) = &cluster.sasl {
            super::sasl::authenticate(&mut conn, sasl).await?;
        }
        Ok(conn)
    }

    /// ApiVersions: v3 (flexible, with our name and version, as KIP-511 asks), else v0, which a
    /// broker too old for v3 answers (it answers v3 with UNSUPPORTED_VERSION in a v0 body).
    async fn negotiate(&mut self) -> Result<(), CoordinatorError> {
        let v3 = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ddnn"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response = match self.request_at(&v3, 3, REQUEST_TIMEOUT).await {
            Ok(r) if r.error_code == 0 => r,
            Ok(_) | Err(CoordinatorError::Protocol { .. }) => {
                self.broken = false;
                self.request_at(&ApiVersionsRequest::default(), 0, REQUEST_TIMEOUT).await?
            }
            Err(e) => return Err(e),
        };
        if response.error_code != 0 {
            return Err(CoordinatorError::from_code(&self.cluster, "ApiVersions", response.error_code, None));
        }
        self.ranges = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        tracing::debug!(cluster = %self.cluster, broker = %self.broker, versions = ?self.versions(), "group coordinator connection");
        Ok(())
    }

    /// The version of `R` to send: the highest both sides speak, within our `MIN..=MAX`.
    pub fn version<R: Api>(&self) -> Result<i16, CoordinatorError> {
        let ours = R::VERSIONS;
        let (lo, hi) = (ours.min.max(R::MIN), ours.max.min(R::MAX));
        let found = self.ranges.get(&(R::KEY as i16)).and_then(|&(min, max)| {
            let v = hi.min(max);
            (v >= lo.max(min)).then_some(v)
        });
        found.ok_or_else(|| {
            let theirs = self.ranges.get(&(R::KEY as i16)).map_or("none".to_string(), |(a, b)| format!("{a}..={b}"));
            self.protocol(R::NAME, format!("no common version (ours {lo}..={hi}, the broker's {theirs})"))
        })
    }

    /// The negotiated version of each API this module uses (those the broker lacks are left out).
    pub fn versions(&self) -> Vec<(&'static str, i16)> {
        fn one<R: Api>(c: &Conn, out: &mut Vec<(&'static str, i16)>) {
            if let Ok(v) = c.version::<R>() {
                out.push((R::NAME, v));
            }
        }
        let mut out = Vec::new();
        one::<ApiVersionsRequest>(self, &mut out);
        one::<SaslHandshakeRequest>(self, &mut out);
        one::<SaslAuthenticateRequest>(self, &mut out);
        one::<FindCoordinatorRequest>(self, &mut out);
        one::<JoinGroupRequest>(self, &mut out);
        one::<SyncGroupRequest>(self, &mut out);
        one::<HeartbeatRequest>(self, &mut out);
        one::<LeaveGroupRequest>(self, &mut out);
        one::<OffsetCommitRequest>(self, &mut out);
        one::<OffsetFetchRequest>(self, &mut out);
        out
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn broker(&self) -> &str {
        &self.broker
    }

    pub fn opened(&self) -> std::time::Instant {
        self.opened
    }

    /// A request failed half way or was abandoned (the stream is out of step), or another
    /// request to the cluster timed out since this connection was made (it may be as dead).
    pub fn is_broken(&self) -> bool {
        self.broken || crate::kafka::suspect::stale(&self.cluster, self.opened)
    }

    pub fn protocol(&self, api: &'static str, message: impl Into<String>) -> CoordinatorError {
        CoordinatorError::Protocol {
            cluster: self.cluster.clone(),
            broker: self.broker.clone(),
            api,
            message: message.into(),
        }
    }

    /// Sends `request` at version `version` and waits up to `timeout` for its answer.
    pub async fn request_at<R: Api>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, CoordinatorError> {
        if self.broken {
            return Err(self.protocol(R::NAME, "connection out of step after an abandoned request"));
        }
        let frame = self.frame(request, version)?;
        self.broken = true;
        let correlation = self.correlation;
        let exchange = async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await?;
            let len = self.stream.read_u32().await? as usize;
            if len > MAX_FRAME {
                return Ok(Err(format!("answer of {len} bytes (not a Kafka broker, or TLS expected?)")));
            }
            let mut body = vec![0; len];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Ok(Bytes::from(body)))
        };
        let body = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(CoordinatorError::Timeout {
                    cluster: self.cluster.clone(),
                    broker: self.broker.clone(),
                    api: R::NAME,
                    after: timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(CoordinatorError::Io {
                    cluster: self.cluster.clone(),
                    broker: self.broker.clone(),
                    api: R::NAME,
                    source,
                })
            }
            Ok(Ok(Err(message))) => return Err(self.protocol(R::NAME, message)),
            Ok(Ok(Ok(body))) => body,
        };
        let mut body = body;
        let header = ResponseHeader::decode(&mut body, R::KEY.response_header_version(version))
            .map_err(|e| self.protocol(R::NAME, format!("response header: {e}")))?;
        if header.correlation_id != correlation {
            return Err(self.protocol(
                R::NAME,
                format!("answer to request {} while waiting for {correlation}", header.correlation_id),
            ));
        }
        let response = R::Response::decode(&mut body, version)
            .map_err(|e| self.protocol(R::NAME, format!("v{version} response: {e}")))?;
        self.broken = false;
        Ok(response)
    }

    /// Sends `request` at the negotiated version with the default deadline.
    pub async fn request<R: Api>(&mut self, request: &R) -> Result<R::Response, CoordinatorError> {
        let version = self.version::<R>()?;
        self.request_at(request, version, REQUEST_TIMEOUT).await
    }

    fn frame<R: Api>(&mut self, request: &R, version: i16) -> Result<Vec<u8>, CoordinatorError> {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = vec![0; 4];
        header
            .encode(&mut frame, R::KEY.request_header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| self.protocol(R::NAME, format!("cannot encode v{version} request: {e}")))?;
        let len = u32::try_from(frame.len() - 4).map_err(|_| self.protocol(R::NAME, "request too large"))?;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        Ok(frame)
    }
}

/// The usual mistakes behind a failed handshake, in the words of the topology.
fn tls_hint(error: &str) -> &'static str {
    if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        " (the broker's certificate is not signed by the CA in tls.ca)"
    } else if error.contains("NotValidForName") {
        " (the broker's certificate does not name the host in brokers)"
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        " (the broker wants a client certificate: set tls.cert and tls.key)"
    } else {
        ""
    }
}

/// The host of `host:port` (`[::1]:9092` -> `::1`): the name the broker's certificate must carry.
fn host_of(broker: &str) -> &str {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_name_before_the_port() {
        assert_eq!(host_of("kafka-1.example.com:9093"), "kafka-1.example.com");
        assert_eq!(host_of("[::1]:9092"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
