//! Finding where an unreadable span of a partition ends (pure search; the fetch is a closure).
//!
//! A broker serves whole batches: asking for any offset inside a bad batch returns the same bad
//! batch. The first offset whose fetch decodes is therefore the end of the span. Offsets are
//! tried one by one at first (a bad batch is usually small, and brokers that rebuild batches
//! per record, like tansu, isolate a single record), then in doubling steps, and a step that
//! jumped over the boundary is narrowed by bisection.

use std::future::Future;

/// One past the last unreadable offset, searching `(first_bad, end]` where `end` is the log's
/// high watermark; `readable(o)` fetches at `o` and says whether it decoded (an error other
/// than an unreadable batch should count as readable, so the caller's loop deals with it).
pub async fn unreadable_end<F, Fut>(first_bad: i64, end: i64, mut readable: F) -> i64
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = bool>,
{
    const LINEAR: i64 = 16;
    let mut bad = first_bad; // known unreadable
    let mut step = 1;
    loop {
        let probe = bad.saturating_add(step);
        if probe >= end {
            // Nothing readable before the end of the log: narrow down within (bad, end).
            return narrow(bad, end, &mut readable).await;
        }
        if readable(probe).await {
            return narrow(bad, probe, &mut readable).await;
        }
        bad = probe;
        if probe - first_bad >= LINEAR {
            step = step.saturating_mul(2);
        }
    }
}

/// Bisection between a known unreadable offset and a readable (or end) one.
async fn narrow<F, Fut>(mut bad: i64, mut good: i64, readable: &mut F) -> i64
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = bool>,
{
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if readable(mid).await {
            good = mid;
        } else {
            bad = mid;
        }
    }
    good
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A log of batches (start offsets); `bad` batches fail to decode.
    fn search(batches: &[i64], bad: &[i64], end: i64, first_bad: i64) -> (i64, usize) {
        let calls = Cell::new(0);
        let batch_of = |o: i64| batches.iter().rev().find(|&&b| b <= o).copied().unwrap_or(0);
        let fut = unreadable_end(first_bad, end, |o| {
            calls.set(calls.get() + 1);
            let ok = !bad.contains(&batch_of(o));
            async move { ok }
        });
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        (rt.block_on(fut), calls.get())
    }

    #[test]
    fn a_single_bad_record_is_isolated() {
        assert_eq!(search(&[0, 1, 2, 3], &[1], 10, 1).0, 2);
    }

    #[test]
    fn a_bad_batch_is_skipped_whole() {
        // Batches start at 0, 5, 105; the one at 5 (100 records) is bad.
        let (end, calls) = search(&[0, 5, 105], &[5], 200, 5);
        assert_eq!(end, 105);
        assert!(calls < 40, "doubling keeps a 100-record batch cheap: {calls} fetches");
    }

    #[test]
    fn a_bad_tail_ends_at_the_high_watermark() {
        assert_eq!(search(&[0, 7], &[7], 30, 7).0, 30);
        assert_eq!(search(&[0, 7], &[7], 8, 7).0, 8);
    }

    #[test]
    fn huge_offsets_do_not_overflow() {
        let (end, _) = search(&[0, i64::MAX - 10], &[0], i64::MAX - 10, 0);
        assert_eq!(end, i64::MAX - 10);
    }
}
