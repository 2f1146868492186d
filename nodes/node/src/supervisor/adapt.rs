//! Runs the adaptive exit rules of this node's tiers once per `ADAPT_EVERY`: each tier's p99
//! end-to-end latency since the last decision (what it delivered, exits and forwards), and the
//! worst of it, of the later tiers running in this node and of the age of the oldest record
//! waiting for the next tier (`observe::backlog`, wherever that tier runs), goes to its controller
//! (`scaling::exits`); a change moves the threshold the workers read.

use std::collections::BTreeMap;
use std::time::Duration;

use super::pipeline::TierHandle;
use crate::config::Topology;

/// How often the rules are decided: long enough for a p99 over a few hundred records at the
/// rates a tier that needs relaxing sees.
pub const ADAPT_EVERY: Duration = Duration::from_secs(1);

/// The tiers after `name` in the pipeline.
fn downstream<'a>(topology: &'a Topology, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut next = topology.tier(name).and_then(|t| t.next.as_deref());
    while let Some(n) = next {
        if out.contains(&n) {
            break;
        }
        out.push(n);
        next = topology.tier(n).and_then(|t| t.next.as_deref());
    }
    out
}

pub fn adapt_exits(topology: &Topology, running: &mut [TierHandle]) {
    let p99: BTreeMap<String, Option<Duration>> =
        running.iter().map(|t| (t.name.clone(), t.stats.latency.take_quantile(0.99).map(|(d, _)| d))).collect();
    for t in running.iter_mut() {
        let Some(controller) = t.exits.as_mut() else { continue };
        let mut estimate = p99.get(&t.name).copied().flatten();
        let mut worst = t.name.clone();
        for n in downstream(topology, &t.name) {
            if let Some(Some(d)) = p99.get(n) {
                if estimate.is_none_or(|e| *d > e) {
                    estimate = Some(*d);
                    worst = n.to_string();
                }
            }
        }
        // The next tier's backlog counts too: records waiting there are late already.
        if let Some(waited) = t.next_backlog.as_ref().and_then(|b| *b.borrow()) {
            if estimate.is_some_and(|e| waited > e) || (estimate.is_none() && !waited.is_zero()) {
                estimate = Some(waited);
                worst = format!("{}'s backlog", t.tier.next.as_deref().unwrap_or("next"));
            }
        }
        let Some(change) = controller.decide(estimate) else { continue };
        t.spec.set_threshold(change.to);
        let pct = |v: Option<f64>| v.map_or("unknown".to_string(), |v| format!("{:.2} %", v * 100.0));
        let p99 = change.p99.map_or("none (idle)".to_string(), |d| format!("{} ms (tier {worst})", d.as_millis()));
        tracing::info!(
            tier = %t.name,
            "adaptive exit: p99 {p99} against the {} ms target: {} {} {} -> {} (held-out accuracy {}, {} exit here)",
            controller.target.as_millis(),
            if change.relaxed { "relaxed" } else { "tightened" },
            controller.rule,
            change.from,
            change.to,
            pct(change.accuracy),
            pct(change.exit_fraction),
        );
        crate::observe::metrics::exit_change(&t.name, change.relaxed);
    }
}
