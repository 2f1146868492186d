//! How a partition resumes after the last run, and how a crash loop ends (pure).
//!
//! A drained stop marks its last commit clean. A start whose last commit is not clean (or
//! records records fetched beyond the commit) knows the last run ended with records possibly
//! in flight: at most `CAREFUL_WINDOW` past the commit (the pool's queues and the producer's
//! unacknowledged records), and none past the log's end at start. Each such start counts one
//! more crash at that position, durably in the commit; any progress resets the count. Most
//! abrupt ends are kills, not poison: the first replay runs at full speed. A run that died
//! *because* of a record (an ONNX Runtime abort, an out-of-memory kill) dies again without
//! progress; from the second crash in a row the window is replayed carefully: one record at
//! a time, each committed before the next is handed on, so a crash leaves the committed
//! position exactly on the record that caused it, alone in flight. At `CRASH_LIMIT` crashes
//! in a row at one position that record is dead-lettered without being processed again.

use super::commit::{Commit, Position};

/// From this many abrupt ends in a row, the window is replayed one record at a time.
pub const CAREFUL_AFTER: u32 = 2;
/// At this many abrupt ends in a row (the last one during a careful replay), the record at
/// the committed position is dead-lettered.
pub const CRASH_LIMIT: u32 = 3;

/// Records after the commit that an abrupt end may have left in flight (the producer's
/// 8,192 unacknowledged records plus the pool's queues, rounded up).
pub const CAREFUL_WINDOW: i64 = 10_000;

/// How long after its last commit a previous owner that ended abruptly may still have handed
/// records on: a record it delivered after that commit would have been in the next one, due a
/// commit interval later (`super::COMMIT_EVERY`), unless it died first; one second more covers
/// the commit's own round trip.
pub const REPLAY_SLACK_MS: i64 = 1_000;

/// Records appended up to this time (ms since the epoch) may have been processed by an owner
/// whose last commit was written at `last_commit_ms`: the new owner counts them as replayed.
pub fn replay_until_ms(last_commit_ms: i64) -> i64 {
    last_commit_ms + super::COMMIT_EVERY.as_millis() as i64 + REPLAY_SLACK_MS
}

/// The plan for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// What to commit at once, before processing anything (the crash count must be durable).
    pub position: Position,
    /// End of the window an abrupt end may have left in flight.
    pub window_end: Option<i64>,
    /// Replay `position.offset..careful_until` one record at a time.
    pub careful_until: Option<i64>,
    /// Dead-letter the record at `position.offset` without processing it.
    pub dead_letter_first: bool,
}

/// `last`: the partition's last commit; `start`: where to begin without one; `log_end`: the
/// partition's high watermark now (`None` if unknown).
pub fn resume(last: Option<&Commit>, start: i64, log_end: Option<i64>) -> Resume {
    let normal = |offset: i64| Resume {
        position: Position { offset, fetched: offset, crashes: 0, clean: false },
        window_end: None,
        careful_until: None,
        dead_letter_first: false,
    };
    let Some(c) = last else { return normal(start) };
    let window_end = c.fetched.max(c.offset.saturating_add(CAREFUL_WINDOW));
    let window_end = log_end.map_or(window_end, |end| window_end.min(end));
    let abrupt = !c.clean || c.fetched > c.offset;
    if !abrupt || window_end <= c.offset {
        return normal(c.offset);
    }
    let crashes = c.crashes.saturating_add(1);
    Resume {
        position: Position { offset: c.offset, fetched: c.fetched.max(c.offset), crashes, clean: false },
        window_end: Some(window_end),
        careful_until: (crashes >= CAREFUL_AFTER).then_some(window_end),
        dead_letter_first: crashes >= CRASH_LIMIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(offset: i64, fetched: i64, crashes: u32, clean: bool) -> Commit {
        Commit { offset, fetched, crashes, clean }
    }

    #[test]
    fn a_drained_stop_resumes_normally() {
        let r = resume(Some(&commit(10, 10, 2, true)), 0, Some(50));
        assert_eq!(r.position, Position { offset: 10, fetched: 10, crashes: 0, clean: false });
        assert_eq!((r.careful_until, r.dead_letter_first), (None, false));
        assert_eq!(resume(None, 7, Some(50)).position.offset, 7);
    }

    #[test]
    fn an_abrupt_end_replays_what_may_have_been_in_flight_carefully() {
        // Not clean: in flight up to the log's end at start (or the window).
        let r = resume(Some(&commit(10, 10, 0, false)), 0, Some(40));
        assert_eq!(r.position, Position { offset: 10, fetched: 10, crashes: 1, clean: false });
        assert_eq!(r.window_end, Some(40));
        assert_eq!((r.careful_until, r.dead_letter_first), (None, false), "the first replay runs at full speed");
        let r = resume(Some(&commit(10, 25, 1, false)), 0, None);
        assert_eq!(r.careful_until, Some(10 + CAREFUL_WINDOW), "the second one record at a time");
        // Nothing after the commit: nothing to be careful about, no crash counted.
        let r = resume(Some(&commit(40, 40, 1, false)), 0, Some(40));
        assert_eq!((r.careful_until, r.position.crashes), (None, 0));
    }

    #[test]
    fn records_appended_before_the_last_owner_stopped_committing_count_as_replayed() {
        let until = replay_until_ms(10_000);
        assert_eq!(until, 10_000 + 200 + REPLAY_SLACK_MS);
        let replay = crate::consumer::Replay { fetched: 20, until_ms: Some(until) };
        assert!(replay.covers(15, 99_999), "fetched by the last owner, whenever appended");
        assert!(replay.covers(25, until), "appended while the last owner still ran");
        assert!(!replay.covers(25, until + 1), "appended after it stopped");
        let unknown = crate::consumer::Replay { fetched: 20, until_ms: None };
        assert!(!unknown.covers(20, 0));
    }

    #[test]
    fn the_third_crash_on_the_same_record_dead_letters_it() {
        // Each start writes its count at once; a run that dies again leaves it for the next.
        let mut last = commit(10, 25, 0, false);
        let mut plans = Vec::new();
        for _ in 0..3 {
            let r = resume(Some(&last), 0, Some(30));
            plans.push(r.dead_letter_first);
            let p = r.position;
            last = commit(p.offset, p.fetched, p.crashes, p.clean);
        }
        assert_eq!(plans, [false, false, true]);
    }
}
