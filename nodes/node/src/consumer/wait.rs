//! How long each fetch may wait at the broker (pure): short while records flow (any record
//! within `IDLE_AFTER`), then doubling with every empty answer up to the idle cap, back to
//! short as soon as records come. A partition at a steady trickle keeps the short wait: only
//! silence backs off. Some brokers
//! (the test brokers) hold every fetch for its whole wait even when data is there, so a short
//! wait keeps latency low under load; each fetch costs the broker CPU, so an idle partition
//! asks rarely.

use std::time::Duration;

/// A partition without records for this long counts as idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The wait for the next fetch of one partition, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchWait {
    min: i32,
    max: i32,
    current: i32,
}

impl FetchWait {
    pub fn new(min: i32, max: i32) -> Self {
        let min = min.max(1);
        Self { min, max: max.max(min), current: min }
    }

    pub fn current(&self) -> i32 {
        self.current
    }

    /// After a fetch: records came, or none did and none for `quiet` (wait longer once idle).
    pub fn after(&mut self, got_records: bool, quiet: Duration) {
        self.current =
            if got_records || quiet < IDLE_AFTER { self.min } else { self.current.saturating_mul(2).min(self.max) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_doubles_the_wait_up_to_the_cap_and_records_reset_it() {
        let idle = IDLE_AFTER;
        let mut w = FetchWait::new(5, 100);
        // A trickle (empty answers, but records within IDLE_AFTER) keeps the short wait.
        w.after(false, idle / 2);
        assert_eq!(w.current(), 5);
        let mut seen = vec![w.current()];
        for _ in 0..7 {
            w.after(false, idle);
            seen.push(w.current());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 100, 100, 100]);
        w.after(true, idle * 10);
        assert_eq!(w.current(), 5, "back at once");
        // A cap below the minimum means a fixed wait; nonsense minimums are clamped.
        let mut fixed = FetchWait::new(50, 10);
        fixed.after(false, idle);
        assert_eq!(fixed.current(), 50);
        assert_eq!(FetchWait::new(0, 0).current(), 1);
    }
}
