//! Capped exponential backoff for our own retry loops (fetch, produce, connect, restarts).

use std::time::Duration;

/// Capped exponential backoff for our own retry loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, next: first }
    }
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.cap);
        now
    }
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}
