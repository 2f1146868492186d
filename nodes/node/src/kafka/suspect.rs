//! Connections that may have died without a word. A network cut (a host moved, a proxy whose
//! upstream vanished) can leave every TCP connection to a cluster open while nothing comes back
//! on it, and rskafka 0.6 has no request timeout: each client would find out through its own
//! deadline, one after the other (a fetch's 5 s, then a produce's 30 s, then a coordinator
//! call's), and along a continuum's chain of tiers those waits add up. So the first request to
//! a cluster that goes unanswered past its deadline marks the cluster: every client whose
//! connection is older than the mark connects afresh before its next request. A false alarm
//! costs one reconnect per client.
//!
//! Process-wide (keyed by cluster name, as the topology names it): the fetch loops, producers,
//! the recovery journal and the coordinator clients of every tier share one view of a cluster.

use std::sync::LazyLock;
use std::time::Instant;

use dashmap::DashMap;

static MARKS: LazyLock<DashMap<String, Instant>> = LazyLock::new(DashMap::new);

/// A request to `cluster`, on a connection made at `opened`, went unanswered past its
/// deadline. A connection older than the last mark is part of the event that mark stands for:
/// the mark stays, so clients that already connected afresh are not sent round again.
pub fn mark(cluster: &str, opened: Instant) {
    let now = Instant::now();
    MARKS.entry(cluster.to_string()).and_modify(|at| *at = if opened > *at { now } else { *at }).or_insert(now);
}

/// Whether a connection to `cluster` made at `opened` predates the last mark.
pub fn stale(cluster: &str, opened: Instant) -> bool {
    MARKS.get(cluster).is_some_and(|at| *at > opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_older_than_the_mark_are_stale() {
        let before = Instant::now();
        assert!(!stale("suspect-test-a", before), "no mark yet");
        std::thread::sleep(std::time::Duration::from_millis(2));
        mark("suspect-test-a", before);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = Instant::now();
        assert!(stale("suspect-test-a", before));
        assert!(!stale("suspect-test-a", after), "a connection made after the mark is fresh");
        assert!(!stale("suspect-test-b", before), "another cluster is not marked");
        // Another old connection timing out is the same event: the fresh one stays fresh.
        std::thread::sleep(std::time::Duration::from_millis(2));
        mark("suspect-test-a", before);
        assert!(!stale("suspect-test-a", after));
        // A fresh connection timing out too is news: everything older is suspect again.
        std::thread::sleep(std::time::Duration::from_millis(2));
        mark("suspect-test-a", after);
        assert!(stale("suspect-test-a", after));
    }
}
