//! Connections per cluster name, made on first use and shared by every tier of the node.
//!
//! Cheap to clone; a connection attempt holds no lock that another tier waits on except the
//! one for the same cluster, so an unreachable cluster only delays the tiers that use it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::client::Client;
use tokio::sync::OnceCell;

use crate::config::{Cluster, Topology};
use crate::shutdown::Shutdown;

/// A cluster's settings and its connection, made once.
type Entry = (Cluster, Arc<OnceCell<Arc<Client>>>);

#[derive(Clone, Default)]
pub struct Clusters {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// The last failed connection attempt per cluster still trying, and since when it fails.
    failing: Arc<Mutex<BTreeMap<String, (String, Instant)>>>,
}

impl Clusters {
    pub fn new(topology: &Topology) -> Self {
        let c = Self::default();
        c.update(topology);
        c
    }

    /// Takes a new topology's clusters; connections to clusters whose brokers changed are dropped.
    pub fn update(&self, topology: &Topology) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|name, (c, _)| topology.cluster(name) == Some(&*c));
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).retain(|name, _| map.contains_key(name));
        for (name, c) in &topology.clusters {
            map.entry(name.clone()).or_insert_with(|| (c.clone(), Arc::new(OnceCell::new())));
        }
    }

    /// The cluster's client, connecting (with capped backoff) on first use; `None` when the
    /// cluster is unknown or `stop` fired while waiting.
    pub async fn get(&self, name: &str, stop: &Shutdown) -> Option<(Arc<Client>, Cluster)> {
        let (cluster, cell) = {
            let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let (c, cell) = map.get(name)?;
            (c.clone(), Arc::clone(cell))
        };
        let client = cell
            .get_or_try_init(|| async {
                let failed = |why: String| {
                    let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
                    let since = failing.get(name).map_or_else(Instant::now, |(_, since)| *since);
                    failing.insert(name.to_string(), (why, since));
                };
                let client = super::connect(&cluster, stop, &failed).await;
                self.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                let client = client.ok_or(())?;
                tracing::info!(cluster = name, brokers = %cluster.brokers.join(","), "connected");
                Ok::<_, ()>(client)
            })
            .await
            .ok()?;
        Some((Arc::clone(client), cluster))
    }

    /// Clusters that have failed to connect for at least `grace`, each with its last error
    /// (for /healthz): a wrong password or an untrusted certificate says so there.
    pub fn failing(&self, grace: Duration) -> Vec<String> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing
            .values()
            .filter(|(_, since)| since.elapsed() >= grace)
            .map(|(why, since)| format!("{why} (for {:.0} s)", since.elapsed().as_secs_f64()))
            .collect()
    }
}
