//! The contiguous delivered prefix of each input partition (pure; no I/O, no clock).
//!
//! Every input offset is accounted for by exactly one `Delivered` range: a record's output was
//! acknowledged, an unreadable range was dead-lettered, a gap in the log (compaction, control
//! records, retention) was skipped. Ranges arrive in any order; the watermark is the first
//! offset not yet covered, which is what a restart must resume from (at-least-once).

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watermark {
    /// Everything below is delivered.
    next: i64,
    /// Delivered ranges above `next` (start -> end), not yet contiguous with it.
    ahead: BTreeMap<i64, i64>,
    /// One past the highest delivered offset (for the replay estimate of a commit).
    delivered_end: i64,
}

impl Watermark {
    pub fn starting_at(offset: i64) -> Self {
        Self { next: offset, ahead: BTreeMap::new(), delivered_end: offset }
    }

    /// First offset not yet delivered: the position to commit.
    pub fn committable(&self) -> i64 {
        self.next
    }

    /// One past the highest delivered offset: records in `committable()..delivered_end()` were
    /// delivered but are not covered by a commit yet, so a crash now replays them as duplicates.
    pub fn delivered_end(&self) -> i64 {
        self.delivered_end
    }

    /// Ranges delivered out of order, waiting for a gap below them to fill.
    pub fn pending_ranges(&self) -> usize {
        self.ahead.len()
    }

    pub fn deliver(&mut self, r: Range<i64>) {
        if r.is_empty() {
            return;
        }
        self.delivered_end = self.delivered_end.max(r.end);
        if r.start > self.next {
            let end = self.ahead.entry(r.start).or_insert(r.end);
            *end = (*end).max(r.end);
            return;
        }
        self.next = self.next.max(r.end);
        while let Some((&start, &end)) = self.ahead.first_key_value() {
            if start > self.next {
                break;
            }
            self.ahead.pop_first();
            self.next = self.next.max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut w = Watermark::starting_at(10);
        w.deliver(11..12);
        w.deliver(12..13);
        assert_eq!(w.committable(), 10, "10 is still in flight");
        assert_eq!(w.delivered_end(), 13);
        w.deliver(10..11);
        assert_eq!(w.committable(), 13);
        assert_eq!(w.pending_ranges(), 0);
    }

    #[test]
    fn ranges_cover_gaps_and_dead_lettered_spans() {
        let mut w = Watermark::starting_at(0);
        w.deliver(5..9); // an unreadable batch, dead-lettered as one range
        w.deliver(0..3);
        assert_eq!(w.committable(), 3);
        w.deliver(3..5); // a record whose fetch skipped a compacted offset covers 3..5
        assert_eq!(w.committable(), 9);
    }

    #[test]
    fn duplicates_and_overlaps_are_harmless() {
        let mut w = Watermark::starting_at(0);
        w.deliver(2..4);
        w.deliver(2..3);
        w.deliver(0..2);
        w.deliver(0..1);
        assert_eq!(w.committable(), 4);
        w.deliver(3..3);
        assert_eq!(w.committable(), 4);
    }

    #[test]
    fn out_of_order_deliveries_in_any_permutation_reach_the_end() {
        let ranges = [0..1, 1..2, 2..5, 5..6, 6..10];
        let orders = [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 3, 0, 4, 2]];
        for order in orders {
            let mut w = Watermark::starting_at(0);
            for i in order {
                w.deliver(ranges[i].clone());
            }
            assert_eq!(w.committable(), 10, "order {order:?}");
            assert_eq!(w.pending_ranges(), 0);
        }
    }
}
