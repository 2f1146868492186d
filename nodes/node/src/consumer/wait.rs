//! How long each fetch may wait at the broker (pure).
//!
//! Apache Kafka answers a fetch as soon as data arrives (a long poll): one long wait costs
//! the broker almost nothing and delays nothing, so that is where every partition starts
//! (`FetchMode::Auto`, the default). Some brokers (the test brokers, tansu and nisshi) hold
//! every fetch for its whole wait even when data is there; a long wait would then delay every
//! record. A fetch that brought records and still took the whole wait proves it: after
//! `HELD_PROOF` such fetches in a row the partition switches to the adaptive wait. Records
//! that arrive on a real long poll end the wait early, so there a fetch with records takes
//! the whole wait only when they came at its last instant.
//!
//! The adaptive wait is short while records flow (any record within `IDLE_AFTER`), then
//! doubles with every empty answer up to the idle cap, back to short as soon as records come.
//! A partition at a steady trickle keeps the short wait: only silence backs off. Each fetch
//! costs such a broker CPU, so an idle partition asks rarely.

use std::time::Duration;

/// A partition without records for this long counts as idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Fetches with records that took their whole long-poll wait, in a row, that prove the
/// broker holds fetches instead of answering when data arrives.
pub const HELD_PROOF: u32 = 3;

/// How a node waits for records (`ddnn node --fetch-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FetchMode {
    /// Long poll until the broker shows it holds fetches, then adaptive.
    #[default]
    Auto,
    /// Always the long poll (Apache Kafka and other brokers that answer when data arrives).
    LongPoll,
    /// Always the adaptive short wait (brokers that hold every fetch for its whole wait).
    Adaptive,
}

/// The wait for the next fetch of one partition, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchWait {
    min: i32,
    max: i32,
    current: i32,
    /// `Some(ms)` while long polling.
    long: Option<i32>,
    mode: FetchMode,
    held: u32,
}

/// What one fetch's outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The broker held `HELD_PROOF` fetches with records for their whole wait: from now on the
    /// adaptive wait.
    LeftLongPoll,
}

impl FetchWait {
    /// Adaptive waits between `min` and `max` ms; `long_ms` is the long-poll wait.
    pub fn new(mode: FetchMode, min: i32, max: i32, long_ms: i32) -> Self {
        let min = min.max(1);
        let long = (mode != FetchMode::Adaptive).then_some(long_ms.max(1));
        Self { min, max: max.max(min), current: min, long, mode, held: 0 }
    }

    pub fn current(&self) -> i32 {
        self.long.unwrap_or(self.current)
    }

    pub fn long_polling(&self) -> bool {
        self.long.is_some()
    }

    /// After a fetch that took `took`: records came, or none did and none for `quiet`.
    pub fn after(&mut self, got_records: bool, quiet: Duration, took: Duration) -> Change {
        if let Some(long) = self.long {
            if got_records {
                let whole = took >= Duration::from_millis(long as u64);
                self.held = if whole { self.held + 1 } else { 0 };
                if self.held >= HELD_PROOF && self.mode == FetchMode::Auto {
                    self.long = None;
                    self.current = self.min;
                    return Change::LeftLongPoll;
                }
            }
            return Change::None;
        }
        self.current =
            if got_records || quiet < IDLE_AFTER { self.min } else { self.current.saturating_mul(2).min(self.max) };
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(3);

    #[test]
    fn silence_doubles_the_wait_up_to_the_cap_and_records_reset_it() {
        let idle = IDLE_AFTER;
        let mut w = FetchWait::new(FetchMode::Adaptive, 5, 100, 500);
        assert!(!w.long_polling());
        // A trickle (empty answers, but records within IDLE_AFTER) keeps the short wait.
        w.after(false, idle / 2, FAST);
        assert_eq!(w.current(), 5);
        let mut seen = vec![w.current()];
        for _ in 0..7 {
            w.after(false, idle, FAST);
            seen.push(w.current());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 100, 100, 100]);
        w.after(true, idle * 10, FAST);
        assert_eq!(w.current(), 5, "back at once");
        // A cap below the minimum means a fixed wait; nonsense minimums are clamped.
        let mut fixed = FetchWait::new(FetchMode::Adaptive, 50, 10, 500);
        fixed.after(false, idle, FAST);
        assert_eq!(fixed.current(), 50);
        assert_eq!(FetchWait::new(FetchMode::Adaptive, 0, 0, 500).current(), 1);
    }

    #[test]
    fn auto_leaves_the_long_poll_only_after_held_fetches_with_records_in_a_row() {
        let whole = Duration::from_millis(500);
        let mut w = FetchWait::new(FetchMode::Auto, 5, 100, 500);
        assert_eq!(w.current(), 500);
        // Empty answers after the whole wait say nothing: that is a long poll with no data.
        for _ in 0..10 {
            assert_eq!(w.after(false, IDLE_AFTER * 5, whole), Change::None);
        }
        // Records that ended the wait early (a real long poll) reset the proof.
        assert_eq!(w.after(true, Duration::ZERO, whole), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, whole), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, Duration::from_millis(120)), Change::None);
        assert_eq!(w.current(), 500);
        assert_eq!(w.after(true, Duration::ZERO, whole), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, Duration::from_millis(499)), Change::None, "just under the wait");
        assert_eq!(w.after(true, Duration::ZERO, whole), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, whole), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, whole + FAST), Change::LeftLongPoll);
        assert!(!w.long_polling());
        assert_eq!(w.current(), 5, "adaptive, starting short");
        w.after(false, IDLE_AFTER, FAST);
        assert_eq!(w.current(), 10);
    }

    #[test]
    fn forced_modes_never_switch() {
        let whole = Duration::from_millis(500);
        let mut long = FetchWait::new(FetchMode::LongPoll, 5, 100, 500);
        for _ in 0..10 {
            assert_eq!(long.after(true, Duration::ZERO, whole), Change::None);
        }
        assert_eq!(long.current(), 500);
        let mut adaptive = FetchWait::new(FetchMode::Adaptive, 5, 100, 500);
        for _ in 0..10 {
            assert_eq!(adaptive.after(true, Duration::ZERO, whole), Change::None);
        }
        assert_eq!(adaptive.current(), 5);
    }
}
