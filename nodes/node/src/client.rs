//! A client of the continuum like any other: sends digits to the first tier and collects exit
//! records. Used by `ddnn demo`, the integration tests and the benchmark.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use crate::config::{Cluster, InputFormat, Topology};
use crate::wire::{encode_paper_json, ExitRecord, PAPER_TS_HEADER};

pub const PIXELS: usize = 784;

/// Held-out digits (`models/heldout.bin`: records of 1 label byte + 784 pixel bytes).
#[derive(Debug, Clone)]
pub struct Digits {
    pub labels: Vec<u8>,
    pub pixels: Vec<Vec<u8>>,
}

impl Digits {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading digits from {}", path.display()))?;
        if bytes.is_empty() || bytes.len() % (PIXELS + 1) != 0 {
            bail!("{}: size {} is not a multiple of {} (label + 784 pixels)", path.display(), bytes.len(), PIXELS + 1);
        }
        let (mut labels, mut pixels) = (Vec::new(), Vec::new());
        for rec in bytes.chunks_exact(PIXELS + 1) {
            if rec[0] > 9 {
                bail!("{}: label {} is not a digit", path.display(), rec[0]);
            }
            labels.push(rec[0]);
            pixels.push(rec[1..].to_vec());
        }
        Ok(Self { labels, pixels })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Encodes one digit's input record value in `format` (`envelope` is built by tests themselves).
pub fn encode_input(format: InputFormat, pixels: &[u8]) -> anyhow::Result<Vec<u8>> {
    match format {
        InputFormat::PaperJson => Ok(encode_paper_json(pixels)),
        InputFormat::RawU8 => Ok(pixels.to_vec()),
        other => bail!("the client sends paper-json or raw-u8, not {}", other.name()),
    }
}

/// The paper's input record: UUID key, `X-INFERENCE-TS` = send time in float seconds.
pub fn paper_record(key: &str, value: Vec<u8>) -> Record {
    let now = chrono::Utc::now();
    let ts = now.timestamp_micros() as f64 / 1e6;
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: BTreeMap::from([(PAPER_TS_HEADER.to_string(), format!("{ts:.6}").into_bytes())]),
        timestamp: now,
    }
}

/// How long the demo, tests and bench wait for a broker to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A plaintext connection without authentication (tests, bench).
pub async fn connect(brokers: &[String]) -> anyhow::Result<Arc<Client>> {
    connect_cluster(&Cluster::plain("brokers", brokers.to_vec())).await
}

/// A connection to `cluster` with its TLS and SASL settings.
pub async fn connect_cluster(cluster: &Cluster) -> anyhow::Result<Arc<Client>> {
    let brokers = cluster.brokers.join(",");
    let builder = ClientBuilder::new(cluster.brokers.clone()).client_id("ddnn-client");
    let builder = crate::kafka::security::apply(builder, cluster)
        .map_err(|e| anyhow::anyhow!("cluster `{}`: clusters.{}.{e}", cluster.name, cluster.name))?;
    // rskafka retries a refused connection forever: give up with a clear error instead.
    let client = tokio::time::timeout(CONNECT_TIMEOUT, builder.build())
        .await
        .map_err(|_| {
            anyhow::anyhow!("cluster `{}`: no broker answered at {brokers} within {CONNECT_TIMEOUT:?}", cluster.name)
        })?
        .with_context(|| format!("cluster `{}`: connecting to {brokers}", cluster.name))?;
    Ok(Arc::new(client))
}

/// Partition clients for every partition of `topic` (it must exist).
pub async fn partitions(client: &Client, topic: &str) -> anyhow::Result<Vec<Arc<PartitionClient>>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let n = loop {
        let topics = client.list_topics().await?;
        if let Some(t) = topics.iter().find(|t| t.name == topic) {
            break t.partitions.len() as i32;
        }
        if Instant::now() > deadline {
            bail!("topic {topic} does not exist (is the node running?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut out = Vec::new();
    for p in 0..n {
        out.push(Arc::new(client.partition_client(topic, p, UnknownTopicHandling::Retry).await?));
    }
    Ok(out)
}

/// The current end of every partition (from the fetch high watermark).
pub async fn end_offsets(parts: &[Arc<PartitionClient>]) -> anyhow::Result<Vec<i64>> {
    let mut out = Vec::new();
    for pc in parts {
        let (_, hw) = pc.fetch_records(0, 1..2, 1).await?;
        out.push(hw);
    }
    Ok(out)
}

/// One exit record as read back.
#[derive(Debug, Clone)]
pub struct SeenExit {
    pub key: String,
    pub exit: ExitRecord,
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Record timestamp (time of production), ms.
    pub ts_ms: i64,
}

impl SeenExit {
    /// Round trip: exit record timestamp minus the client's `X-INFERENCE-TS`.
    pub fn rtt_ms(&self) -> Option<f64> {
        let sent = crate::wire::paper_json_ts(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        Some(self.ts_ms.saturating_sub(sent) as f64)
    }
}

/// Reads exit records from `from` (per partition) until every key in `expected` was seen or
/// `timeout` passed. Returns every record seen (duplicates included).
pub async fn collect_exits(
    parts: &[Arc<PartitionClient>],
    from: &[i64],
    expected: &HashSet<String>,
    timeout: Duration,
) -> anyhow::Result<Vec<SeenExit>> {
    let deadline = Instant::now() + timeout;
    let mut pos = from.to_vec();
    let mut seen = Vec::new();
    let mut keys = HashSet::new();
    while keys.len() < expected.len() && Instant::now() < deadline {
        for (i, pc) in parts.iter().enumerate() {
            let (records, _) = pc.fetch_records(pos[i], 1..(4 << 20), 20).await?;
            for r in records {
                if r.offset < pos[i] {
                    continue;
                }
                pos[i] = r.offset + 1;
                let Some(value) = r.record.value.as_deref() else {
                    continue;
                };
                let exit = ExitRecord::from_json(value)
                    .with_context(|| format!("exit record at {}:{} is not valid JSON", pc.partition(), r.offset))?;
                let key = r.record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                if expected.contains(&key) {
                    keys.insert(key.clone());
                }
                seen.push(SeenExit {
                    key,
                    exit,
                    headers: r.record.headers,
                    ts_ms: r.record.timestamp.timestamp_millis(),
                });
            }
        }
    }
    Ok(seen)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// What a demo run shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub sent: usize,
    pub answered: usize,
    pub duplicates: usize,
    pub correct: usize,
    pub per_tier: Vec<(String, usize)>,
    /// Round trips of the first answer per key, sorted.
    pub rtt_ms: Vec<f64>,
    /// The same, per exit tier (topology order), sorted.
    pub rtt_by_tier: Vec<(String, Vec<f64>)>,
    pub elapsed: Duration,
}

fn p50_95_99(sorted: &[f64]) -> String {
    format!("{:.1}/{:.1}/{:.1} ms", percentile(sorted, 50.0), percentile(sorted, 95.0), percentile(sorted, 99.0))
}

impl Report {
    /// Keys sent and never answered.
    pub fn lost(&self) -> usize {
        self.sent.saturating_sub(self.answered)
    }

    /// One line for scripts: counts, then round-trip p50/p95/p99 overall and per exit tier.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "sent {}, answered {}, lost {}, duplicates {}, accuracy {:.2}%, p50/p95/p99 {}",
            self.sent,
            self.answered,
            self.lost(),
            self.duplicates,
            100.0 * self.correct as f64 / self.answered.max(1) as f64,
            p50_95_99(&self.rtt_ms)
        );
        for (tier, rtt) in self.rtt_by_tier.iter().filter(|(_, r)| !r.is_empty()) {
            line.push_str(&format!("; {tier} ({}) {}", rtt.len(), p50_95_99(rtt)));
        }
        line
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "digits sent:      {}", self.sent)?;
        writeln!(f, "answered:         {} ({} duplicates)", self.answered, self.duplicates)?;
        writeln!(
            f,
            "accuracy:         {:.2}% ({}/{})",
            100.0 * self.correct as f64 / self.answered.max(1) as f64,
            self.correct,
            self.answered
        )?;
        for (tier, n) in &self.per_tier {
            writeln!(f, "exits at {tier:<8} {n:>6} ({:.1}%)", 100.0 * *n as f64 / self.answered.max(1) as f64)?;
        }
        writeln!(
            f,
            "latency ms:       p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&self.rtt_ms, 50.0),
            percentile(&self.rtt_ms, 95.0),
            percentile(&self.rtt_ms, 99.0),
            self.rtt_ms.last().copied().unwrap_or(f64::NAN)
        )?;
        for (tier, rtt) in self.rtt_by_tier.iter().filter(|(_, r)| !r.is_empty()) {
            writeln!(
                f,
                "  exits at {tier:<8} p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
                percentile(rtt, 50.0),
                percentile(rtt, 95.0),
                percentile(rtt, 99.0),
                rtt.last().copied().unwrap_or(f64::NAN)
            )?;
        }
        writeln!(f, "elapsed:          {:.2} s", self.elapsed.as_secs_f64())?;
        write!(f, "summary: {}", self.summary())
    }
}

/// Sends `count` held-out digits (paper-json, at `rate` msg/s; the file over again when `count`
/// is larger) to the topology's first tier and waits for their exits.
pub async fn run_demo(
    topology: &Topology,
    digits: &Digits,
    count: usize,
    rate: f64,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let first = topology.tiers.first().context("topology has no tiers")?;
    let in_cluster = topology.cluster(&first.input.topic.cluster).context("unknown input cluster")?;
    let in_client = connect_cluster(in_cluster).await?;
    let inputs = partitions(&in_client, &first.input.topic.topic).await?;

    // Every distinct exit topic of the continuum.
    let mut exit_parts = Vec::new();
    let mut from = Vec::new();
    let mut done = HashSet::new();
    for t in &topology.tiers {
        // Clusters with different names may be the same brokers: read each topic once.
        let cluster = topology.cluster(&t.exits.cluster).context("unknown exit cluster")?;
        let mut brokers = cluster.brokers.clone();
        brokers.sort();
        if !done.insert((brokers, t.exits.topic.clone())) {
            continue;
        }
        let parts = partitions(&*connect_cluster(cluster).await?, &t.exits.topic).await?;
        from.extend(end_offsets(&parts).await?);
        exit_parts.extend(parts);
    }

    anyhow::ensure!(!digits.is_empty(), "no digits to send");
    let mut labels = HashMap::new();
    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut sends = Vec::new();
    for i in 0..count {
        let key = uuid::Uuid::new_v4().to_string();
        // Past the end of the file the digits come round again, under new keys.
        let d = i % digits.len();
        labels.insert(key.clone(), digits.labels[d]);
        let record = paper_record(&key, encode_input(first.input.format, &digits.pixels[d])?);
        let pc = Arc::clone(&inputs[i % inputs.len()]);
        sends.push(tokio::spawn(async move { pc.produce(vec![record], Default::default()).await }));
        let due = started + gap * (i as u32 + 1);
        tokio::time::sleep_until(due.into()).await;
    }
    for s in sends {
        s.await.context("send task")?.context("sending a digit")?;
    }
    // Progress for whoever watches a long run (scripts/continuum.sh's drain measurement waits
    // for it): every digit is in the first tier's broker now.
    eprintln!("sent {count} digits in {:.2} s; waiting for their exits", started.elapsed().as_secs_f64());
    let expected: HashSet<String> = labels.keys().cloned().collect();
    let seen = collect_exits(&exit_parts, &from, &expected, timeout).await?;
    let elapsed = started.elapsed();

    let mut first_seen: HashMap<&str, &SeenExit> = HashMap::new();
    let mut duplicates = 0;
    for s in seen.iter().filter(|s| expected.contains(&s.key)) {
        if first_seen.insert(&s.key, s).is_some() {
            duplicates += 1;
        }
    }
    let mut per_tier: Vec<(String, usize)> = topology.tiers.iter().map(|t| (t.name.clone(), 0)).collect();
    let mut correct = 0;
    let mut rtt = Vec::new();
    let mut rtt_by_tier: Vec<(String, Vec<f64>)> =
        topology.tiers.iter().map(|t| (t.name.clone(), Vec::new())).collect();
    for (key, s) in &first_seen {
        if let Some(slot) = per_tier.iter_mut().find(|(n, _)| *n == s.exit.exit_tier) {
            slot.1 += 1;
        }
        if labels.get(*key).map(|&l| u32::from(l)) == Some(s.exit.label) {
            correct += 1;
        }
        if let Some(ms) = s.rtt_ms() {
            rtt.push(ms);
            if let Some(slot) = rtt_by_tier.iter_mut().find(|(n, _)| *n == s.exit.exit_tier) {
                slot.1.push(ms);
            }
        }
    }
    rtt.sort_by(f64::total_cmp);
    for (_, r) in &mut rtt_by_tier {
        r.sort_by(f64::total_cmp);
    }
    Ok(Report {
        sent: count,
        answered: first_seen.len(),
        duplicates,
        correct,
        per_tier,
        rtt_ms: rtt,
        rtt_by_tier,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_at(ts_ms: i64, header: &str) -> SeenExit {
        SeenExit {
            key: "k".into(),
            exit: ExitRecord {
                key: "k".into(),
                label: 1,
                confidence: 0.9,
                exit_tier: "edge".into(),
                exit_rule: "max-prob >= 0.8".into(),
                model: "edge".into(),
                model_version: None,
                probabilities: vec![0.1, 0.9],
                trace: Vec::new(),
            },
            headers: BTreeMap::from([(PAPER_TS_HEADER.to_string(), header.as_bytes().to_vec())]),
            ts_ms,
        }
    }

    #[test]
    fn summary_counts_lost_keys_and_gives_percentiles_per_exit_tier() {
        let r = Report {
            sent: 5,
            answered: 4,
            duplicates: 1,
            correct: 3,
            per_tier: vec![("edge".into(), 3), ("fog".into(), 1), ("cloud".into(), 0)],
            rtt_ms: vec![1.0, 2.0, 3.0, 40.0],
            rtt_by_tier: vec![
                ("edge".into(), vec![1.0, 2.0, 3.0]),
                ("fog".into(), vec![40.0]),
                ("cloud".into(), vec![]),
            ],
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(
            r.summary(),
            "sent 5, answered 4, lost 1, duplicates 1, accuracy 75.00%, p50/p95/p99 2.0/40.0/40.0 ms; \
             edge (3) 2.0/3.0/3.0 ms; fog (1) 40.0/40.0/40.0 ms"
        );
    }

    #[test]
    fn round_trip_time_saturates_instead_of_overflowing() {
        assert_eq!(exit_at(1_700_000_000_500, "1700000000.25").rtt_ms(), Some(250.0));
        // A send time near i64::MIN ms is in range, but the difference is not.
        assert_eq!(exit_at(1_700_000_000_500, "-9.22337203e15").rtt_ms(), Some(i64::MAX as f64));
        assert_eq!(exit_at(i64::MIN, "9.2e15").rtt_ms(), Some(i64::MIN as f64));
        // Out-of-range or non-finite headers count as absent.
        for h in ["1e300", "-1e300", "inf", "nan"] {
            assert_eq!(exit_at(1_700_000_000_500, h).rtt_ms(), None, "{h}");
        }
    }
}
