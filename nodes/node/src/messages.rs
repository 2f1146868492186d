//! The data path's vocabulary: one message type per channel, named after what it carries.
//!
//! `Consumed` (consumer -> pool), `Inferred` (pool -> producer), `Delivered` (producer and
//! consumer -> the tier's offsets owner), `Resize` (scaler -> pool), `Assigned` and `Revoke`
//! (the group member -> the tier's input side). Stages import this module, never each other's
//! internals or the supervisor.

use actix::prelude::*;

/// One input record on its way to the pool.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// In record order; a key may repeat (Kafka allows it).
    pub headers: Vec<(String, Vec<u8>)>,
    /// `None` for a record without a value (it will be dead-lettered).
    pub value: Option<Vec<u8>>,
    pub ts_ms: i64,
    pub received_ms: i64,
    /// Inference attempts that failed so far (retried up to a limit, then dead-lettered).
    pub attempts: u32,
    /// Share of the tier's in-memory byte budget this record holds until it is dropped (after
    /// inference), so a flood of large records cannot queue without limit.
    pub budget: Option<std::sync::Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Exit,
    Forward,
    DeadLetter,
}

/// One output record, ready to produce; `partition`/`offset` name the input it answers.
#[derive(Debug, Clone)]
pub struct Inferred {
    pub partition: i32,
    pub offset: i64,
    pub route: Route,
    pub key: Option<Vec<u8>>,
    /// In order, repeated keys kept.
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
    /// Client send time (ms) for end-to-end latency; `None` for dead letters.
    pub origin_ts_ms: Option<i64>,
}

/// Set the number of workers.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Resize(pub usize);

/// Input offsets whose outcome is settled: the output the broker acknowledged (exit, forward
/// or dead letter), or a span of the log with nothing to process (compacted offsets, control
/// records, records lost to retention, the tail of an unreadable batch already dead-lettered
/// by its first offset). Every input offset is covered exactly once; the offsets owner commits
/// the contiguous prefix.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct Delivered {
    pub partition: i32,
    pub offsets: std::ops::Range<i64>,
}

/// A fetch loop ended; `next` is the first offset it did not hand on (the offsets owner's
/// drain waits until everything below it is delivered).
#[derive(Message, Debug, Clone, Copy, PartialEq)]
#[rtype(result = "()")]
pub struct ConsumerStopped {
    pub partition: i32,
    pub next: i64,
}

/// The consumer moved its position somewhere it had not reached by delivery (the log was
/// truncated or the topic recreated): the partition's delivered prefix restarts at `offset`.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
#[rtype(result = "()")]
pub struct Rewound {
    pub partition: i32,
    pub offset: i64,
}

/// A fetch loop handed on everything below `next` (once per fetched batch): commits record it,
/// so a restart knows how many records it replays.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
#[rtype(result = "()")]
pub struct Fetched {
    pub partition: i32,
    pub next: i64,
}

/// A stage failed and is being restarted (sent to the tier's supervisor, which counts and
/// shows restarts).
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct StageExited {
    pub stage: String,
    pub reason: String,
}

/// One generation of a tier's consumer group, as this member knows it: commits are made as
/// this member of this generation (the coordinator refuses those of an older one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generation {
    pub id: i32,
    pub member_id: String,
}

/// A partition's commit as the group coordinator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
}

/// The group gave this member these input partitions (group member -> the tier's input side):
/// start fetching them from their commits. `partitions` maps each to its commit, if any.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct Assigned {
    pub generation: Generation,
    pub partitions: std::collections::BTreeMap<i32, Option<Committed>>,
}

/// Give these partitions back (group member -> the tier's input side): stop fetching them, let
/// what is in flight be delivered (until `deadline`), commit, forget them.
#[derive(Message, Debug, Clone)]
#[rtype(result = "DrainReport")]
pub struct Revoke {
    pub partitions: Vec<i32>,
    pub deadline: std::time::Instant,
}

/// What a drain left behind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    /// Committed position per partition.
    pub committed: std::collections::BTreeMap<i32, i64>,
    /// Records handed on but not delivered by the deadline (replayed by the next owner).
    pub undelivered: i64,
    pub commit_error: Option<String>,
}
