//! Wake-ups between the tiers of one node: a tier that forwards a record to a topic that a
//! later tier of the same node consumes bumps that topic's counter, and that tier's fetch loops
//! stop waiting at the broker (an idle loop may be holding a fetch for its whole idle wait) and
//! fetch again at once. Without it every hop of a record through idle tiers could wait up to
//! the idle fetch wait. A tier on another host is not woken: it sees the record on its next
//! fetch.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

/// A topic's counter: one sender, any number of receivers.
type Counter = Arc<watch::Sender<u64>>;

/// Per (cluster, topic).
#[derive(Clone, Debug, Default)]
pub struct Wakeups(Arc<DashMap<(String, String), Counter>>);

impl Wakeups {
    fn entry(&self, cluster: &str, topic: &str) -> Counter {
        let key = (cluster.to_string(), topic.to_string());
        Arc::clone(self.0.entry(key).or_insert_with(|| Arc::new(watch::channel(0).0)).value())
    }

    /// For the producer that forwards to `topic`.
    pub fn sender(&self, cluster: &str, topic: &str) -> Counter {
        self.entry(cluster, topic)
    }

    /// For the fetch loops of `topic`.
    pub fn receiver(&self, cluster: &str, topic: &str) -> watch::Receiver<u64> {
        self.entry(cluster, topic).subscribe()
    }
}

/// Records were forwarded to the topic.
pub fn wake(sender: &watch::Sender<u64>) {
    sender.send_modify(|n| *n = n.wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_forward_wakes_the_loops_of_that_topic_only() {
        let w = Wakeups::default();
        let mut fog = w.receiver("local", "fog.in");
        let mut other = w.receiver("local", "cloud.in");
        wake(&w.sender("local", "fog.in"));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), fog.changed()).await.is_ok());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), other.changed()).await.is_err());
    }
}
