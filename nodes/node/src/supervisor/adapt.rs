//! Runs the adaptive exit rules of this node's tiers every `ADAPT_EVERY`: each tier's p99
//! end-to-end latency since the last decision (what it delivered, exits and forwards), and the
//! worst of it, of the later tiers running in this node and of the age of the oldest record
//! waiting for the next tier (`observe::backlog`, wherever that tier runs), goes to its controller
//! (`scaling::exits`); a change moves the threshold the workers read.

use std::collections::BTreeMap;
use std::time::Duration;

use super::pipeline::TierHandle;
use crate::config::Topology;

/// How often the rules are decided. An overloaded tier queues work for as long as the ladder
/// takes to walk: at one step a second the relaxation took 7 s from 0.99 to 0.65 and its queue
/// set the run's p99 (1.3 s against a 200 ms target, bench/RESULTS.md); hence four decisions a
/// second, each halving the work sent on (`scaling::exits`). Tightening still waits for
/// `CALM_DECISIONS` of these, three seconds of calm.
pub const ADAPT_EVERY: Duration = Duration::from_millis(250);

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
        // The next tier's backlog counts too: records waiting there are late already. It is
        // read once per `backlog::EVERY`, slower than decisions: a reading already decided on
        // holds the rule (one reading moves it once, and does not count as calm).
        let mut stale = false;
        if let Some(b) = t.next_backlog.as_mut() {
            let fresh = b.has_changed().unwrap_or(false);
            if let Some(waited) = *b.borrow_and_update() {
                if estimate.is_some_and(|e| waited > e) || (estimate.is_none() && !waited.is_zero()) {
                    estimate = Some(waited);
                    worst = format!("{}'s backlog", t.tier.next.as_deref().unwrap_or("next"));
                    stale = !fresh;
                }
            }
        }
        if stale {
            continue;
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
