//! Load generators (the paper's clients, an open-loop ramp, a burst) and the exit collector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ddnn::client::{self, Digits};
use rskafka::client::partition::PartitionClient;

/// One message sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub key: String,
    pub client: usize,
    pub stage: usize,
    /// Send time (the `X-INFERENCE-TS` header), ms since the epoch.
    pub send_ms: f64,
    pub label: u8,
}

/// One exit seen (first per key).
#[derive(Debug, Clone)]
pub struct Seen {
    pub exit_tier: String,
    /// Exit record timestamp, ms since the epoch.
    pub ts_ms: f64,
    pub predicted: Option<u32>,
}

#[derive(Default)]
pub struct Collected {
    pub first: HashMap<String, Seen>,
    pub duplicates: usize,
}

/// Reads the exit topic in the background until stopped.
pub struct Collector {
    pub seen: Arc<Mutex<Collected>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Collector {
    pub async fn start(parts: Vec<Arc<PartitionClient>>, last_tier: String) -> anyhow::Result<Self> {
        let mut pos = client::end_offsets(&parts).await?;
        let seen = Arc::new(Mutex::new(Collected::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                for (i, pc) in parts.iter().enumerate() {
                    let (records, _) = pc.fetch_records(pos[i], 1..(4 << 20), 5).await?;
                    let mut c = s.lock().unwrap_or_else(|p| p.into_inner());
                    for r in records {
                        if r.offset < pos[i] {
                            continue;
                        }
                        pos[i] = r.offset + 1;
                        let key = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default()).into_owned();
                        let value = r.record.value.unwrap_or_default();
                        // Relay mode writes the unchanged input: it left at the last tier, unlabelled.
                        let seen = match ddnn::wire::ExitRecord::from_json(&value) {
                            Ok(e) => Seen { exit_tier: e.exit_tier, ts_ms: 0.0, predicted: Some(e.label) },
                            Err(_) => Seen { exit_tier: last_tier.clone(), ts_ms: 0.0, predicted: None },
                        };
                        let seen = Seen { ts_ms: r.record.timestamp.timestamp_micros() as f64 / 1000.0, ..seen };
                        match c.first.entry(key) {
                            std::collections::hash_map::Entry::Occupied(_) => c.duplicates += 1,
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(seen);
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        Ok(Self { seen, stop, task })
    }

    pub fn count_of(&self, keys: &[Sent]) -> usize {
        let c = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().filter(|s| c.first.contains_key(&s.key)).count()
    }

    /// The sent keys not answered yet.
    pub fn missing<'a>(&self, keys: &'a [Sent]) -> Vec<&'a Sent> {
        let c = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().filter(|s| !c.first.contains_key(&s.key)).collect()
    }

    /// Waits until every sent key was answered or `timeout` passed.
    pub async fn wait_for(&self, sent: &[Sent], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count_of(sent) == sent.len() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub async fn stop(self) -> anyhow::Result<Collected> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        let c = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(c)
    }
}

fn record(d: &Digits, i: usize) -> (String, rskafka::record::Record, u8) {
    let key = uuid::Uuid::new_v4().to_string();
    let idx = i % d.len();
    let rec = client::paper_record(&key, ddnn::wire::encode_paper_json(&d.pixels[idx]));
    (key, rec, d.labels[idx])
}

fn header_ms(r: &rskafka::record::Record) -> f64 {
    r.headers
        .get(ddnn::wire::PAPER_TS_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0.0, |s| s * 1000.0)
}

/// The paper's client: 4 stages of 100 messages; between sends it sleeps 1/stage seconds
/// (divided by `time_scale`); each send waits for the broker's acknowledgement; every stage
/// sends the same first 100 digits.
pub async fn paper_client(
    id: usize,
    parts: Vec<Arc<PartitionClient>>,
    digits: Arc<Digits>,
    time_scale: f64,
    progress: indicatif::ProgressBar,
) -> anyhow::Result<Vec<Sent>> {
    let mut out = Vec::with_capacity(400);
    let mut n = id;
    for stage in 1..=4usize {
        for i in 0..100 {
            let (key, rec, label) = record(&digits, i);
            let send_ms = header_ms(&rec);
            parts[n % parts.len()].produce(vec![rec], Default::default()).await?;
            n += 1;
            out.push(Sent { key, client: id, stage, send_ms, label });
            progress.inc(1);
            tokio::time::sleep(Duration::from_secs_f64(1.0 / stage as f64 / time_scale)).await;
        }
    }
    Ok(out)
}

/// Open loop at `rate` msg/s for `secs`; records go out in 10 ms slices without waiting for acks.
pub async fn open_loop(
    parts: &[Arc<PartitionClient>],
    digits: &Digits,
    rate: f64,
    secs: f64,
    stage: usize,
    offset: usize,
) -> anyhow::Result<Vec<Sent>> {
    let start = Instant::now();
    let mut sent = Vec::new();
    let mut due = 0.0f64;
    let mut tasks = Vec::new();
    let mut n = offset;
    while start.elapsed().as_secs_f64() < secs {
        due += rate * 0.01;
        let k = due.floor() as usize;
        due -= k as f64;
        if k > 0 {
            let mut batch = Vec::with_capacity(k);
            for _ in 0..k {
                let (key, rec, label) = record(digits, n);
                sent.push(Sent { key, client: 0, stage, send_ms: header_ms(&rec), label });
                batch.push(rec);
                n += 1;
            }
            let pc = Arc::clone(&parts[n % parts.len()]);
            tasks.push(tokio::spawn(async move { pc.produce(batch, Default::default()).await }));
        }
        let next = start + Duration::from_secs_f64(0.01 * (1.0 + (start.elapsed().as_secs_f64() / 0.01).floor()));
        tokio::time::sleep_until(next.into()).await;
    }
    for t in tasks {
        t.await??;
    }
    Ok(sent)
}

/// `count` records at once (in chunks of 100 per produce).
pub async fn burst(parts: &[Arc<PartitionClient>], digits: &Digits, count: usize) -> anyhow::Result<Vec<Sent>> {
    let mut sent = Vec::with_capacity(count);
    for (c, chunk_start) in (0..count).step_by(100).enumerate() {
        let mut batch = Vec::new();
        for i in chunk_start..(chunk_start + 100).min(count) {
            let (key, rec, label) = record(digits, i);
            sent.push(Sent { key, client: 0, stage: 1, send_ms: header_ms(&rec), label });
            batch.push(rec);
        }
        parts[c % parts.len()].produce(batch, Default::default()).await?;
    }
    Ok(sent)
}
