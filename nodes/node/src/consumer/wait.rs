//! How long each fetch may wait at the broker (pure).
//!
//! Apache Kafka answers a fetch as soon as data arrives (a long poll): one long wait costs
//! the broker almost nothing and delays nothing: `FetchMode::LongPoll`, or `FetchMode::Auto`
//! (the default), which starts there. Some brokers (the test brokers, tansu and nisshi) hold
//! every fetch for (much of) its wait even when data is there; a long wait would then delay
//! every record. A fetch whose records were written before it was sent and that still took
//! `HELD_MIN` or more proves it (Kafka answers such a fetch at once): after `HELD_PROOF` such
//! fetches in a row the partition switches to the adaptive wait. Records that arrive during
//! a long poll prove nothing either way.
//!
//! The adaptive wait is short while records flow (any record within `IDLE_AFTER`), then
//! doubles with every empty answer up to the idle cap, back to short as soon as records come.
//! A partition at a steady trickle keeps the short wait: only silence backs off. Each fetch
//! costs such a broker CPU, so an idle partition asks rarely, and then only for the end of the
//! log (the consumer spends a wait past the short one itself, then fetches only when the log
//! moved).

use std::time::Duration;

/// A partition without records for this long counts as idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Held fetches in a row that prove the broker holds fetches instead of answering when data
/// is there.
pub const HELD_PROOF: u32 = 3;

/// A fetch whose records were there before it was sent, answered after this long, was held
/// (tansu answers after 250-500 ms of a 500 ms wait; Kafka within milliseconds).
pub const HELD_MIN: Duration = Duration::from_millis(100);

/// How a node waits for records (`ddnn node --fetch-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FetchMode {
    /// Long poll until the broker shows it holds fetches, then adaptive.
    #[default]
    Auto,
    /// Always the long poll (Apache Kafka and other brokers that answer when data arrives).
    LongPoll,
    /// Always the adaptive short wait (brokers that hold fetches whose records are there).
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
    /// The broker held `HELD_PROOF` fetches whose records were there: from now on the
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

    /// A held fetch was abandoned because records are coming (a tier of this node forwarded
    /// here): the next wait is short. Says nothing about how the broker waits, so a long poll's
    /// proof is kept.
    pub fn woken(&mut self) {
        if self.long.is_none() {
            self.current = self.min;
        }
    }

    /// After a fetch that took `took`: records came (`waiting`: written before the fetch was
    /// sent), or none did and none for `quiet`.
    pub fn after(&mut self, got_records: bool, quiet: Duration, took: Duration, waiting: bool) -> Change {
        if self.long.is_some() {
            // Records that arrived during the wait prove nothing either way.
            if got_records && waiting {
                self.held = if took >= HELD_MIN { self.held + 1 } else { 0 };
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
        w.after(false, idle / 2, FAST, false);
        assert_eq!(w.current(), 5);
        let mut seen = vec![w.current()];
        for _ in 0..7 {
            w.after(false, idle, FAST, false);
            seen.push(w.current());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 100, 100, 100]);
        w.after(true, idle * 10, FAST, false);
        assert_eq!(w.current(), 5, "back at once");
        w.after(false, idle, FAST, false);
        w.after(false, idle, FAST, false);
        w.woken();
        assert_eq!(w.current(), 5, "woken: short at once");
        // A cap below the minimum means a fixed wait; nonsense minimums are clamped.
        let mut fixed = FetchWait::new(FetchMode::Adaptive, 50, 10, 500);
        fixed.after(false, idle, FAST, false);
        assert_eq!(fixed.current(), 50);
        assert_eq!(FetchWait::new(FetchMode::Adaptive, 0, 0, 500).current(), 1);
    }

    #[test]
    fn auto_leaves_the_long_poll_only_after_held_fetches_in_a_row() {
        let (held, soon) = (Duration::from_millis(260), Duration::from_millis(40));
        let mut w = FetchWait::new(FetchMode::Auto, 5, 100, 500);
        assert_eq!(w.current(), 500);
        // Empty answers after the whole wait say nothing: that is a long poll with no data.
        for _ in 0..10 {
            assert_eq!(w.after(false, IDLE_AFTER * 5, Duration::from_millis(500), false), Change::None);
        }
        // Records that arrived during the wait prove nothing, whenever the answer came.
        for _ in 0..5 {
            assert_eq!(w.after(true, Duration::ZERO, Duration::from_millis(480), false), Change::None);
        }
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, soon, false), Change::None, "nor break a proof");
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::LeftLongPoll);
        let mut w = FetchWait::new(FetchMode::Auto, 5, 100, 500);
        // Records that were there, answered at once (Kafka), reset the proof.
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, soon, true), Change::None);
        assert_eq!(w.current(), 500);
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::None);
        // An abandoned fetch (a local wake-up) neither proves nor disproves anything.
        w.woken();
        assert_eq!(w.current(), 500);
        assert_eq!(w.after(true, Duration::ZERO, held, true), Change::None);
        assert_eq!(w.after(true, Duration::ZERO, HELD_MIN, true), Change::LeftLongPoll);
        assert!(!w.long_polling());
        assert_eq!(w.current(), 5, "adaptive, starting short");
        w.after(false, IDLE_AFTER, FAST, false);
        assert_eq!(w.current(), 10);
    }

    #[test]
    fn forced_modes_never_switch() {
        let whole = Duration::from_millis(500);
        let mut long = FetchWait::new(FetchMode::LongPoll, 5, 100, 500);
        for _ in 0..10 {
            assert_eq!(long.after(true, Duration::ZERO, whole, true), Change::None);
        }
        assert_eq!(long.current(), 500);
        let mut adaptive = FetchWait::new(FetchMode::Adaptive, 5, 100, 500);
        for _ in 0..10 {
            assert_eq!(adaptive.after(true, Duration::ZERO, whole, true), Change::None);
        }
        assert_eq!(adaptive.current(), 5);
    }
}
