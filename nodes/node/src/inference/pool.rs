//! The elastic pool: an actor that owns N worker threads and resizes on [`Resize`].
//!
//! Workers pull from a shared bounded channel, so adding one adds throughput at once and
//! retiring one (it finishes its current batch first) loses nothing.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backoff::Backoff;
use crate::messages::Consumed;
pub use crate::messages::Resize;
use crate::observe::stats::TierStats;

use super::batch::{dead_letter, prepare, relay, route};
use super::{InferenceError, Inferred, TierSpec};
use crate::onnx::model::Model;

/// A message whose inference failed this many times is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Message, Debug)]
#[rtype(result = "()")]
struct WorkerExited {
    id: u64,
    error: Option<InferenceError>,
}

/// Test-only fault switch: the next `n` batches fail as if the model errored.
#[derive(Debug, Default)]
pub struct FaultSwitch(std::sync::atomic::AtomicU32);

impl FaultSwitch {
    pub fn fail_next(&self, n: u32) {
        self.0.store(n, Ordering::SeqCst);
    }
    fn take(&self) -> bool {
        self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

/// The channels every worker of a tier shares.
#[derive(Clone)]
struct Lanes {
    input: flume::Receiver<Consumed>,
    /// Batches whose inference failed, taken before new input (unbounded, owned by the pool).
    retry: (flume::Sender<Consumed>, flume::Receiver<Consumed>),
    output: flume::Sender<Inferred>,
}

pub struct InferencePool {
    spec: Arc<TierSpec>,
    stats: Arc<TierStats>,
    lanes: Lanes,
    faults: Arc<FaultSwitch>,
    workers: BTreeMap<u64, flume::Sender<()>>,
    target: usize,
    next_id: u64,
    backoff: Backoff,
    restart_pending: bool,
}

impl InferencePool {
    pub fn new(
        spec: Arc<TierSpec>,
        stats: Arc<TierStats>,
        input: flume::Receiver<Consumed>,
        output: flume::Sender<Inferred>,
        faults: Arc<FaultSwitch>,
    ) -> Self {
        Self {
            spec,
            stats,
            lanes: Lanes { input, retry: flume::unbounded(), output },
            faults,
            workers: BTreeMap::new(),
            target: 0,
            next_id: 0,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            restart_pending: false,
        }
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        while self.workers.len() < self.target {
            let id = self.next_id;
            self.next_id += 1;
            let (stop_tx, stop_rx) = flume::bounded(1);
            let worker = Worker {
                id,
                spec: Arc::clone(&self.spec),
                stats: Arc::clone(&self.stats),
                lanes: self.lanes.clone(),
                faults: Arc::clone(&self.faults),
                stop: stop_rx,
                pool: ctx.address(),
            };
            let spawned =
                std::thread::Builder::new().name(format!("{}-w{id}", self.spec.name)).spawn(move || worker.run());
            if let Err(e) = spawned {
                tracing::error!(tier = %self.spec.name, "cannot start a worker thread: {e}");
                break;
            }
            self.workers.insert(id, stop_tx);
        }
        while self.workers.len() > self.target {
            // Newest first; the worker finishes its current batch before it reads the stop.
            if let Some((_, stop)) = self.workers.pop_last() {
                let _ = stop.send(());
            }
        }
        self.stats.workers_current.store(self.workers.len(), Ordering::Relaxed);
    }
}

impl Actor for InferencePool {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (_, stop) in std::mem::take(&mut self.workers) {
            let _ = stop.send(());
        }
        self.stats.workers_current.store(0, Ordering::Relaxed);
    }
}

impl Handler<Resize> for InferencePool {
    type Result = ();
    fn handle(&mut self, msg: Resize, ctx: &mut Self::Context) {
        self.target = msg.0;
        self.stats.workers_desired.store(msg.0, Ordering::Relaxed);
        if !self.restart_pending {
            self.reconcile(ctx);
        }
    }
}

impl Handler<WorkerExited> for InferencePool {
    type Result = ();
    fn handle(&mut self, msg: WorkerExited, ctx: &mut Self::Context) {
        // A retired worker was already removed; only a failed one is still listed.
        if self.workers.remove(&msg.id).is_none() {
            return;
        }
        self.stats.workers_current.store(self.workers.len(), Ordering::Relaxed);
        let Some(error) = msg.error else { return };
        let wait = self.backoff.next_delay();
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tier = %self.spec.name, worker = msg.id, "worker failed: {error}; restarting in {wait:?}");
        self.restart_pending = true;
        ctx.run_later(wait, |act, ctx| {
            act.restart_pending = false;
            if act.stats.consecutive_failures.load(Ordering::Relaxed) == 0 {
                act.backoff.reset();
            }
            act.reconcile(ctx);
        });
    }
}

struct Worker {
    id: u64,
    spec: Arc<TierSpec>,
    stats: Arc<TierStats>,
    lanes: Lanes,
    faults: Arc<FaultSwitch>,
    stop: flume::Receiver<()>,
    pool: Addr<InferencePool>,
}

enum Next {
    Batch(Vec<Consumed>),
    Stop,
}

impl Worker {
    fn run(mut self) {
        let error = self.serve().err();
        self.pool.do_send(WorkerExited { id: self.id, error });
    }

    fn serve(&mut self) -> Result<(), InferenceError> {
        let started = Instant::now();
        let mut model = if self.spec.relay {
            None
        } else {
            Some(Model::load_on(&self.spec.model, self.spec.device).map_err(|e| {
                self.stats.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                InferenceError::Load { path: self.spec.model.display().to_string(), message: e }
            })?)
        };
        let load = started.elapsed();
        self.stats.cold_starts.fetch_add(1, Ordering::Relaxed);
        self.stats.last_cold_start_us.store(load.as_micros() as u64, Ordering::Relaxed);
        tracing::debug!(tier = %self.spec.name, worker = self.id, "session ready in {load:?}");
        loop {
            let batch = match self.next_batch() {
                Next::Batch(b) => b,
                Next::Stop => return Ok(()),
            };
            if let Some(key) = &self.spec.crash_on_key {
                if batch.iter().any(|m| m.key.as_deref() == Some(key.as_slice())) {
                    tracing::error!(tier = %self.spec.name, "test fault: aborting the process on the crash key");
                    std::process::abort();
                }
            }
            let t0 = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if self.faults.take() {
                    return Err(InferenceError::Injected);
                }
                let Some(model) = model.as_mut() else {
                    return Ok(batch.iter().map(|m| relay(&self.spec, m)).collect());
                };
                let prepared = prepare(&self.spec, &batch);
                let rows = prepared.rows.len();
                if rows == 0 {
                    return Ok(prepared.rejected);
                }
                let output = model.run_batch(&prepared.input, rows).map_err(InferenceError::Run)?;
                Ok(route(&self.spec, prepared, &output, crate::now_ms()))
            }))
            .unwrap_or_else(|panic| Err(InferenceError::Panicked(panic_text(&panic))));
            match outcome {
                Ok(results) => {
                    self.stats.consecutive_failures.store(0, Ordering::Relaxed);
                    self.stats.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    self.stats.inferred_rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    crate::observe::metrics::batch_done(&self.spec.name, batch.len(), t0.elapsed());
                    for r in results {
                        if self.lanes.output.send(r).is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(error) => {
                    self.stats.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                    self.requeue(batch, &error);
                    return Err(error);
                }
            }
        }
    }

    /// Puts a failed batch back (nothing is lost). A batch of several is retried one record at
    /// a time without counting an attempt, so one bad record cannot take healthy neighbours to
    /// the dead-letter topic; a record failing alone MAX_ATTEMPTS times is dead-lettered.
    fn requeue(&self, batch: Vec<Consumed>, error: &InferenceError) {
        let alone = batch.len() == 1 && error.counts_against_records();
        for mut msg in batch {
            if alone {
                msg.attempts += 1;
            }
            if msg.attempts >= MAX_ATTEMPTS {
                let reason = format!("inference failed {} times: {error}", msg.attempts);
                let _ = self.lanes.output.send(dead_letter(&self.spec, &msg, &reason));
            } else if let Err(e) = self.lanes.retry.0.send(msg) {
                // Unbounded and owned by the pool: only closed at shutdown, when the offset
                // simply stays uncommitted and the record is replayed.
                tracing::debug!("retry queue closed: {e}");
            }
        }
    }

    fn stop_requested(&self) -> bool {
        !matches!(self.stop.try_recv(), Err(flume::TryRecvError::Empty))
    }

    fn next_batch(&mut self) -> Next {
        if self.stop_requested() {
            return Next::Stop;
        }
        let max = self.spec.batch_max();
        let mut batch = Vec::with_capacity(max);
        if let Ok(m) = self.lanes.retry.1.try_recv() {
            // Retried records run alone (see `requeue`).
            batch.push(m);
            return Next::Batch(batch);
        } else {
            let first = flume::Selector::new()
                .recv(&self.lanes.input, |m| m.ok().map(|m| (m, false)))
                .recv(&self.lanes.retry.1, |m| m.ok().map(|m| (m, true)))
                .recv(&self.stop, |_| None)
                .wait();
            match first {
                Some((m, true)) => {
                    batch.push(m);
                    return Next::Batch(batch);
                }
                Some((m, false)) => batch.push(m),
                None => return Next::Stop,
            }
        }
        self.fill(&mut batch, max);
        // Only wait for more when there is a backlog: a lone message runs at once.
        let delay = self.spec.batch_delay();
        if batch.len() > 1 && batch.len() < max && !delay.is_zero() {
            let deadline = Instant::now() + delay;
            while batch.len() < max && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100).min(delay));
                self.fill(&mut batch, max);
            }
        }
        Next::Batch(batch)
    }

    fn fill(&self, batch: &mut Vec<Consumed>, max: usize) {
        while batch.len() < max {
            match self.lanes.input.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
