//! Dead letters an operator can act on: `ddnn dlq list` groups the dead-letter topic by reason
//! and source, `ddnn dlq replay` puts a chosen set back into the input topics they came from.
//!
//! A dead letter names its source in `x-ddnn-source` (`tier=T topic=X partition=P offset=O`)
//! and its reason in `x-ddnn-error`; the record's timestamp is when it was dead-lettered. A
//! replayed record keeps key, value and headers (less the dead-letter headers) and carries
//! `x-ddnn-replayed-from: DLQTOPIC/PARTITION/OFFSET`: the replay is its own durable marker,
//! written in the same produce as the record, so a replay interrupted at any point never
//! replays a record twice when run again. Before replaying, the target input topics are read
//! for those markers. Pure logic here (parse, filter, group, plan); the broker I/O is at the
//! bottom, like `client`, whose connections it shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::Record;

use crate::config::Topology;
use crate::wire::{ERROR_HEADER, SOURCE_HEADER};

/// Header on a replayed record naming the dead letter it came from: `TOPIC/PARTITION/OFFSET`.
pub const REPLAYED_FROM_HEADER: &str = "x-ddnn-replayed-from";
/// Sample positions shown per group by `dlq list`.
const SAMPLES: usize = 5;

/// A bad filter argument, named with the flag it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{flag} {value:?}: {why}")]
pub struct FilterError {
    pub flag: &'static str,
    pub value: String,
    pub why: String,
}

/// Where a dead letter came from, as its `x-ddnn-source` says (fields absent in older or
/// partial headers are `None`; the text is kept for display).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    pub text: String,
    pub tier: Option<String>,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// Set for an unreadable span (`offsets=A..=B`), which has no record to replay.
    pub span: Option<(i64, i64)>,
}

/// Parses `tier=T topic=X partition=P offset=O` (or `offsets=A..=B`). Topic and tier names
/// hold neither spaces nor `=`, so splitting on them is unambiguous; unknown fields are
/// ignored so a later node may add some.
pub fn parse_source(text: &str) -> Source {
    let mut s = Source { text: text.to_string(), ..Default::default() };
    for (k, v) in text.split_whitespace().filter_map(|f| f.split_once('=')) {
        match k {
            "tier" => s.tier = Some(v.to_string()),
            "topic" => s.topic = Some(v.to_string()),
            "partition" => s.partition = v.parse().ok(),
            "offset" => s.offset = v.parse().ok(),
            "offsets" => s.span = v.split_once("..=").and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))),
            _ => {}
        }
    }
    s
}

impl Source {
    /// `topic/partition` when both are known, else the header as written.
    pub fn place(&self) -> String {
        match (&self.topic, self.partition) {
            (Some(t), Some(p)) => format!("{t}/{p}"),
            _ if self.text.is_empty() => "(no x-ddnn-source)".to_string(),
            _ => self.text.clone(),
        }
    }
}

/// One record of the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (the record's timestamp), ms since the Unix epoch.
    pub ts_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub reason: String,
    pub source: Source,
}

impl DeadLetter {
    pub fn from_record(partition: i32, offset: i64, record: Record) -> Self {
        let text = |k: &str| record.headers.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        let reason = text(ERROR_HEADER).unwrap_or_else(|| "(no x-ddnn-error)".to_string());
        let source = parse_source(&text(SOURCE_HEADER).unwrap_or_default());
        Self {
            partition,
            offset,
            ts_ms: record.timestamp.timestamp_millis(),
            key: record.key,
            value: record.value,
            headers: record.headers,
            reason,
            source,
        }
    }

    /// The marker a replay of this record carries: `dlq_topic/partition/offset`.
    pub fn marker(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}/{}/{}", self.partition, self.offset)
    }

    /// Where a replay goes (input topic, partition), or why this record cannot be replayed.
    pub fn target(&self) -> Result<(&str, i32), String> {
        if self.source.span.is_some() {
            return Err("an unreadable span of offsets, not a record".to_string());
        }
        let (Some(topic), Some(partition), Some(_)) = (&self.source.topic, self.source.partition, self.source.offset)
        else {
            return Err(format!("its source names no input topic, partition and offset ({:?})", self.source.text));
        };
        if self.value.as_deref().is_none_or(<[u8]>::is_empty) {
            return Err("it has no value (nothing to replay)".to_string());
        }
        Ok((topic, partition))
    }
}

/// Which dead letters a `list` or `replay` is about; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `x-ddnn-error` contains this text.
    pub reason: Option<String>,
    /// `x-ddnn-error` matches this regular expression.
    pub reason_regex: Option<regex::Regex>,
    /// Source input topic, and partition when given.
    pub source: Option<(String, Option<i32>)>,
    /// Dead-lettered at or after (ms).
    pub since_ms: Option<i64>,
    /// Dead-lettered before (ms).
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.reason.as_deref().is_none_or(|r| d.reason.contains(r))
            && self.reason_regex.as_ref().is_none_or(|re| re.is_match(&d.reason))
            && self.source.as_ref().is_none_or(|(topic, partition)| {
                d.source.topic.as_deref() == Some(topic.as_str())
                    && partition.is_none_or(|p| d.source.partition == Some(p))
            })
            && self.since_ms.is_none_or(|t| d.ts_ms >= t)
            && self.until_ms.is_none_or(|t| d.ts_ms < t)
    }
}

/// `--reason-regex`.
pub fn parse_regex(value: &str) -> Result<regex::Regex, FilterError> {
    regex::Regex::new(value).map_err(|e| FilterError {
        flag: "--reason-regex",
        value: value.into(),
        why: e.to_string(),
    })
}

/// `--source TOPIC` or `--source TOPIC/PARTITION`.
pub fn parse_source_filter(value: &str) -> Result<(String, Option<i32>), FilterError> {
    let err = |why: &str| FilterError { flag: "--source", value: value.into(), why: why.into() };
    match value.rsplit_once('/') {
        Some((topic, p)) if !topic.is_empty() => {
            let p = p.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| err("partition must be a number >= 0"))?;
            Ok((topic.to_string(), Some(p)))
        }
        Some(_) => Err(err("expected TOPIC or TOPIC/PARTITION")),
        None if value.is_empty() => Err(err("expected TOPIC or TOPIC/PARTITION")),
        None => Ok((value.to_string(), None)),
    }
}

/// `--since`/`--until`: an RFC 3339 time (`2025-01-31T12:00:00Z`) or a duration before `now_ms`
/// (`90s`, `15m`, `2h`, `1day`).
pub fn parse_time(flag: &'static str, value: &str, now_ms: i64) -> Result<i64, FilterError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        let ms = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        return Ok(ms);
    }
    match humantime::parse_duration(value) {
        Ok(d) => Ok(now_ms.saturating_sub(d.as_millis() as i64)),
        Err(_) => Err(FilterError {
            flag,
            value: value.into(),
            why: "expected an RFC 3339 time (2025-01-31T12:00:00Z) or a duration ago (15m, 2h)".into(),
        }),
    }
}

/// Dead letters of one reason from one source.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub reason: String,
    pub source: String,
    pub count: usize,
    pub first_ms: i64,
    pub last_ms: i64,
    /// (dead-letter partition, offset) of the first few.
    pub samples: Vec<(i32, i64)>,
}

/// Groups by (reason, source place), largest group first, then by first time.
pub fn group<'a>(letters: impl IntoIterator<Item = &'a DeadLetter>) -> Vec<Group> {
    let mut groups: HashMap<(String, String), Group> = HashMap::new();
    for d in letters {
        let place = d.source.place();
        let g = groups.entry((d.reason.clone(), place.clone())).or_insert_with(|| Group {
            reason: d.reason.clone(),
            source: place,
            count: 0,
            first_ms: d.ts_ms,
            last_ms: d.ts_ms,
            samples: Vec::new(),
        });
        g.count += 1;
        g.first_ms = g.first_ms.min(d.ts_ms);
        g.last_ms = g.last_ms.max(d.ts_ms);
        if g.samples.len() < SAMPLES {
            g.samples.push((d.partition, d.offset));
        }
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_ms.cmp(&b.first_ms)).then(a.reason.cmp(&b.reason)));
    out
}

/// What a replay would do with the dead letters that match its filter.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub replay: Vec<&'a DeadLetter>,
    /// Replayed before (a record carrying its marker is in the target topic).
    pub already: Vec<&'a DeadLetter>,
    /// Cannot be replayed, and why.
    pub unreplayable: Vec<(&'a DeadLetter, String)>,
}

/// Splits the matching dead letters; `replayed` holds the markers found in the target topics,
/// `again` replays those too.
pub fn plan<'a>(
    letters: &'a [DeadLetter],
    filter: &Filter,
    dlq_topic: &str,
    replayed: &HashSet<String>,
    again: bool,
) -> Plan<'a> {
    let mut p = Plan::default();
    for d in letters.iter().filter(|d| filter.matches(d)) {
        match d.target() {
            Err(why) => p.unreplayable.push((d, why)),
            Ok(_) if !again && replayed.contains(&d.marker(dlq_topic)) => p.already.push(d),
            Ok(_) => p.replay.push(d),
        }
    }
    p
}

/// The replayed record: key and value as dead-lettered, headers without the dead-letter ones
/// (and without an older replay marker), plus this replay's marker.
pub fn replay_record(d: &DeadLetter, dlq_topic: &str, now: chrono::DateTime<chrono::Utc>) -> Record {
    let mut headers = d.headers.clone();
    for h in [ERROR_HEADER, SOURCE_HEADER, REPLAYED_FROM_HEADER] {
        headers.remove(h);
    }
    headers.insert(REPLAYED_FROM_HEADER.to_string(), d.marker(dlq_topic).into_bytes());
    Record { key: d.key.clone(), value: d.value.clone(), headers, timestamp: now }
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `dlq list`'s report.
pub fn render_list(dlq_topic: &str, total: usize, groups: &[Group]) -> String {
    let matching: usize = groups.iter().map(|g| g.count).sum();
    let mut out = format!("{dlq_topic}: {total} dead letter(s), {matching} matching, {} group(s)\n", groups.len());
    for g in groups {
        let samples: Vec<String> = g.samples.iter().map(|(p, o)| format!("{p}/{o}")).collect();
        out.push_str(&format!(
            "\n{count} x {reason}\n  source  {source}\n  first   {first}\n  last    {last}\n  at      {dlq_topic} {samples}{more}\n",
            count = g.count,
            reason = g.reason,
            source = g.source,
            first = fmt_ms(g.first_ms),
            last = fmt_ms(g.last_ms),
            samples = samples.join(" "),
            more = if g.count > g.samples.len() { " ..." } else { "" },
        ));
    }
    out
}

// --- broker I/O -------------------------------------------------------------------------------

/// Calls `f` for every record of the partition from its log start to its end at call time.
async fn scan(pc: &PartitionClient, mut f: impl FnMut(i64, Record)) -> anyhow::Result<()> {
    let what = || format!("reading {}/{}", pc.topic(), pc.partition());
    let end = crate::kafka::high_watermark(pc).await.with_context(what)?;
    let mut offset = pc.get_offset(OffsetAt::Earliest).await.with_context(what)?;
    while offset < end {
        let (records, _) = pc.fetch_records(offset, 1..(8 << 20), 100).await.with_context(what)?;
        if records.is_empty() {
            anyhow::bail!("{}: no record at offset {offset} below the end {end}", what());
        }
        let from = offset;
        for r in records.into_iter().filter(|r| r.offset >= from && r.offset < end) {
            offset = r.offset + 1;
            f(r.offset, r.record);
        }
        // Stopping short would miss replay markers: fail loudly instead.
        anyhow::ensure!(offset > from, "{}: no progress at offset {from} below the end {end}", what());
    }
    Ok(())
}

async fn topic_clients(topo: &Topology, cluster: &str, topic: &str) -> anyhow::Result<Vec<Arc<PartitionClient>>> {
    let c = topo.cluster(cluster).with_context(|| format!("unknown cluster `{cluster}`"))?;
    let client = crate::client::connect(&c.brokers).await?;
    let n = client
        .list_topics()
        .await
        .with_context(|| format!("listing topics on cluster `{cluster}`"))?
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.len() as i32)
        .with_context(|| format!("topic {topic} does not exist on cluster `{cluster}`"))?;
    let mut out = Vec::new();
    for p in 0..n {
        let pc = client
            .partition_client(topic, p, rskafka::client::partition::UnknownTopicHandling::Error)
            .await
            .with_context(|| format!("{topic}/{p} on cluster `{cluster}`"))?;
        out.push(Arc::new(pc));
    }
    Ok(out)
}

/// Every record of the topology's dead-letter topic, in partition and offset order.
pub async fn read_dead_letters(topo: &Topology) -> anyhow::Result<Vec<DeadLetter>> {
    let dl = &topo.dead_letter;
    let mut out = Vec::new();
    for pc in topic_clients(topo, &dl.cluster, &dl.topic).await? {
        let partition = pc.partition();
        scan(&pc, |offset, r| out.push(DeadLetter::from_record(partition, offset, r))).await?;
    }
    Ok(out)
}

/// The cluster of the tier whose input is `topic` (the tier the source names first).
fn input_cluster<'a>(topo: &'a Topology, d: &DeadLetter, topic: &str) -> anyhow::Result<&'a str> {
    let named = topo.tiers.iter().find(|t| Some(&t.name) == d.source.tier.as_ref() && t.input.topic.topic == topic);
    named
        .or_else(|| topo.tiers.iter().find(|t| t.input.topic.topic == topic))
        .map(|t| t.input.topic.cluster.as_str())
        .with_context(|| {
            format!(
                "dead letter {}: its source topic {topic} is no tier's input in {}",
                d.marker(&topo.dead_letter.topic),
                topo.source.display()
            )
        })
}

/// What `dlq replay` did (or, on a dry run, would do).
#[derive(Debug)]
pub struct ReplayReport {
    pub executed: bool,
    pub matching: usize,
    /// (target `topic/partition`, dead-letter markers) per target.
    pub replayed: BTreeMap<String, Vec<String>>,
    pub already: Vec<String>,
    pub unreplayable: Vec<(String, String)>,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self.replayed.values().map(Vec::len).sum();
        writeln!(f, "{} matching dead letter(s)", self.matching)?;
        let verb = if self.executed { "replayed" } else { "would replay" };
        for (target, markers) in &self.replayed {
            writeln!(f, "{verb} {} into {target}: {}", markers.len(), markers.join(" "))?;
        }
        if !self.already.is_empty() {
            writeln!(
                f,
                "{} replayed before, not again (--again replays them anyway): {}",
                self.already.len(),
                self.already.join(" ")
            )?;
        }
        for (marker, why) in &self.unreplayable {
            writeln!(f, "cannot replay {marker}: {why}")?;
        }
        match (self.executed, n) {
            (_, 0) => write!(f, "nothing to replay"),
            (true, n) => write!(f, "replayed {n} record(s)"),
            (false, n) => {
                write!(f, "dry run: {n} record(s) would be replayed; nothing was written (--execute replays)")
            }
        }
    }
}

/// Plans a replay of the dead letters matching `filter` and, with `execute`, produces them into
/// their source partitions. Markers are read from every target topic first.
pub async fn replay(topo: &Topology, filter: &Filter, again: bool, execute: bool) -> anyhow::Result<ReplayReport> {
    let dlq_topic = topo.dead_letter.topic.clone();
    let letters = read_dead_letters(topo).await?;
    // Every (cluster, topic) a matching record would go to, and the markers already there.
    let mut targets: BTreeMap<(String, String), Vec<Arc<PartitionClient>>> = BTreeMap::new();
    for d in letters.iter().filter(|d| filter.matches(d)) {
        if let Ok((topic, _)) = d.target() {
            let cluster = input_cluster(topo, d, topic)?.to_string();
            if !targets.contains_key(&(cluster.clone(), topic.to_string())) {
                let clients = topic_clients(topo, &cluster, topic).await?;
                targets.insert((cluster, topic.to_string()), clients);
            }
        }
    }
    let mut replayed = HashSet::new();
    for clients in targets.values() {
        for pc in clients {
            scan(pc, |_, r| {
                if let Some(m) = r.headers.get(REPLAYED_FROM_HEADER) {
                    replayed.insert(String::from_utf8_lossy(m).into_owned());
                }
            })
            .await?;
        }
    }
    let p = plan(&letters, filter, &dlq_topic, &replayed, again);
    let mut report = ReplayReport {
        executed: execute,
        matching: p.replay.len() + p.already.len() + p.unreplayable.len(),
        replayed: BTreeMap::new(),
        already: p.already.iter().map(|d| d.marker(&dlq_topic)).collect(),
        unreplayable: p.unreplayable.iter().map(|(d, why)| (d.marker(&dlq_topic), why.clone())).collect(),
    };
    // Grouped per target partition, in dead-letter order, so each partition gets one ordered batch.
    let mut batches: BTreeMap<(String, String, i32), Vec<&DeadLetter>> = BTreeMap::new();
    for d in &p.replay {
        let (topic, partition) = d.target().map_err(anyhow::Error::msg)?;
        let cluster = input_cluster(topo, d, topic)?.to_string();
        batches.entry((cluster, topic.to_string(), partition)).or_default().push(d);
    }
    for ((cluster, topic, partition), ds) in batches {
        let place = format!("{topic}/{partition}");
        if execute {
            let pc = targets
                .get(&(cluster.clone(), topic.clone()))
                .and_then(|c| c.get(partition as usize))
                .with_context(|| format!("{place}: the partition no longer exists on cluster `{cluster}`"))?;
            for chunk in ds.chunks(100) {
                let records = chunk.iter().map(|d| replay_record(d, &dlq_topic, chrono::Utc::now())).collect();
                pc.produce(records, Default::default()).await.with_context(|| format!("replaying into {place}"))?;
            }
        }
        report.replayed.insert(place, ds.iter().map(|d| d.marker(&dlq_topic)).collect());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64, ts_ms: i64, reason: &str, source: &str) -> DeadLetter {
        let mut headers = BTreeMap::from([
            ("X-INFERENCE-TS".to_string(), b"1.5".to_vec()),
            (ERROR_HEADER.to_string(), reason.as_bytes().to_vec()),
        ]);
        if !source.is_empty() {
            headers.insert(SOURCE_HEADER.to_string(), source.as_bytes().to_vec());
        }
        DeadLetter {
            partition,
            offset,
            ts_ms,
            key: Some(format!("k{offset}").into_bytes()),
            value: Some(b"[[1]]".to_vec()),
            headers,
            reason: reason.to_string(),
            source: parse_source(source),
        }
    }

    #[test]
    fn sources_parse_every_form_the_node_writes() {
        let s = parse_source("tier=edge topic=t.edge.input partition=0 offset=6");
        assert_eq!(
            (s.tier.as_deref(), s.topic.as_deref(), s.partition, s.offset),
            (Some("edge"), Some("t.edge.input"), Some(0), Some(6))
        );
        assert_eq!(s.place(), "t.edge.input/0");
        let span = parse_source("tier=edge topic=t.edge.input partition=1 offsets=3..=9");
        assert_eq!((span.span, span.offset), (Some((3, 9)), None));
        // The producer's "output rejected" dead letters name no topic: shown as written.
        let rejected = parse_source("tier=edge partition=1 offset=7");
        assert_eq!((rejected.topic.as_deref(), rejected.place().as_str()), (None, "tier=edge partition=1 offset=7"));
        assert_eq!(parse_source("").place(), "(no x-ddnn-source)");
    }

    #[test]
    fn only_whole_records_with_a_source_topic_and_a_value_are_replayable() {
        let ok = letter(0, 1, 0, "bad JSON", "tier=edge topic=in partition=2 offset=5");
        assert_eq!(ok.target(), Ok(("in", 2)));
        let span = letter(0, 2, 0, "unreadable", "tier=edge topic=in partition=2 offsets=5..=6");
        assert_eq!(span.target().unwrap_err(), "an unreadable span of offsets, not a record");
        let rejected = letter(0, 3, 0, "output rejected", "tier=edge partition=1 offset=7");
        assert!(rejected.target().unwrap_err().starts_with("its source names no input topic"));
        let mut empty = letter(0, 4, 0, "no value", "tier=edge topic=in partition=0 offset=1");
        empty.value = Some(Vec::new());
        assert_eq!(empty.target().unwrap_err(), "it has no value (nothing to replay)");
    }

    #[test]
    fn filters_combine_reason_source_and_time() {
        let a =
            letter(0, 0, 1_000, "inference failed 3 times: injected fault", "tier=edge topic=in partition=0 offset=1");
        let b = letter(
            0,
            1,
            2_000,
            "Envelope input: envelope version 2 is newer",
            "tier=fog topic=fog partition=1 offset=1",
        );
        let pick = |f: &Filter| [&a, &b].iter().filter(|d| f.matches(d)).map(|d| d.offset).collect::<Vec<_>>();
        assert_eq!(pick(&Filter::default()), [0, 1]);
        assert_eq!(pick(&Filter { reason: Some("injected".into()), ..Default::default() }), [0]);
        let re = parse_regex(r"version \d+ is newer").unwrap();
        assert_eq!(pick(&Filter { reason_regex: Some(re), ..Default::default() }), [1]);
        assert_eq!(pick(&Filter { source: Some(parse_source_filter("fog").unwrap()), ..Default::default() }), [1]);
        assert_eq!(
            pick(&Filter { source: Some(parse_source_filter("fog/0").unwrap()), ..Default::default() }),
            Vec::<i64>::new()
        );
        assert_eq!(pick(&Filter { since_ms: Some(2_000), ..Default::default() }), [1]);
        assert_eq!(pick(&Filter { until_ms: Some(2_000), ..Default::default() }), [0]);
    }

    #[test]
    fn bad_filter_arguments_name_the_flag_and_value() {
        assert_eq!(
            parse_source_filter("in/x").unwrap_err().to_string(),
            "--source \"in/x\": partition must be a number >= 0"
        );
        assert_eq!(
            parse_source_filter("/3").unwrap_err().to_string(),
            "--source \"/3\": expected TOPIC or TOPIC/PARTITION"
        );
        assert!(parse_regex("(").unwrap_err().to_string().starts_with("--reason-regex \"(\": "));
        let e = parse_time("--since", "yesterday-ish", 0).unwrap_err();
        assert!(e.to_string().starts_with("--since \"yesterday-ish\": expected an RFC 3339 time"), "{e}");
        assert_eq!(parse_time("--since", "2025-01-31T12:00:00Z", 0), Ok(1_738_324_800_000));
        assert_eq!(parse_time("--until", "15m", 1_000_000), Ok(100_000));
    }

    #[test]
    fn groups_count_and_span_time_per_reason_and_source() {
        let src = "tier=edge topic=in partition=0 offset=1";
        let mut letters: Vec<DeadLetter> = (0..7).map(|i| letter(0, i, 100 + i, "bad JSON", src)).collect();
        letters.push(letter(1, 0, 50, "bad JSON", "tier=edge topic=in partition=1 offset=4"));
        letters.push(letter(1, 1, 60, "no value", src));
        let g = group(&letters);
        assert_eq!(g.len(), 3);
        assert_eq!((g[0].count, g[0].source.as_str(), g[0].first_ms, g[0].last_ms), (7, "in/0", 100, 106));
        assert_eq!(g[0].samples, [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]);
        assert_eq!((g[1].reason.as_str(), g[1].source.as_str(), g[1].first_ms), ("bad JSON", "in/1", 50));
        assert_eq!(g[2].reason, "no value");
        let text = render_list("dlq", 9, &g);
        assert!(text.starts_with("dlq: 9 dead letter(s), 9 matching, 3 group(s)\n"), "{text}");
        assert!(text.contains("\n7 x bad JSON\n  source  in/0\n  first   1970-01-01T00:00:00.100Z\n"), "{text}");
        assert!(text.contains("  at      dlq 0/0 0/1 0/2 0/3 0/4 ...\n"), "{text}");
    }

    #[test]
    fn a_plan_skips_what_was_replayed_unless_again() {
        let src = |o: i64| format!("tier=edge topic=in partition=0 offset={o}");
        let letters = vec![
            letter(0, 0, 0, "bad", &src(1)),
            letter(0, 1, 0, "bad", &src(2)),
            letter(0, 2, 0, "bad", "tier=edge topic=in partition=0 offsets=3..=4"),
            letter(0, 3, 0, "other", &src(5)),
        ];
        let filter = Filter { reason: Some("bad".into()), ..Default::default() };
        let done: HashSet<String> = ["dlq/0/1".to_string()].into();
        let p = plan(&letters, &filter, "dlq", &done, false);
        let offs = |v: &[&DeadLetter]| v.iter().map(|d| d.offset).collect::<Vec<_>>();
        assert_eq!((offs(&p.replay), offs(&p.already), p.unreplayable.len()), (vec![0], vec![1], 1));
        let p = plan(&letters, &filter, "dlq", &done, true);
        assert_eq!((offs(&p.replay), offs(&p.already)), (vec![0, 1], vec![]));
    }

    #[test]
    fn a_replayed_record_keeps_key_value_and_headers_less_the_dead_letter_ones() {
        let mut d = letter(3, 9, 0, "bad", "tier=edge topic=in partition=0 offset=1");
        d.headers.insert(REPLAYED_FROM_HEADER.into(), b"dlq/0/0".to_vec());
        let now = chrono::DateTime::from_timestamp_millis(5).unwrap();
        let r = replay_record(&d, "dlq", now);
        assert_eq!((r.key, r.value, r.timestamp), (d.key.clone(), d.value.clone(), now));
        assert_eq!(
            r.headers,
            BTreeMap::from([
                ("X-INFERENCE-TS".to_string(), b"1.5".to_vec()),
                (REPLAYED_FROM_HEADER.to_string(), b"dlq/3/9".to_vec()),
            ])
        );
    }
}
