//! Live topology edits: what changed for a running tier, and whether it can apply in place.
//!
//! Exit rules and thresholds, the adaptive exit's target and floor, worker bounds, scaling mode,
//! batch and scaler settings apply in place (atomics
//! read by the workers and the scaler). Anything that changes where records come from or go to,
//! the model, or whether the tier has an adaptive exit rule, restarts the tier's actors (drain,
//! commit, rebuild).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{Tier, Topology};

/// Changes of one tier, as `field: old -> new` lines.
#[derive(Debug, Default, PartialEq)]
pub struct TierDiff {
    pub live: Vec<String>,
    pub structural: Vec<String>,
}

impl TierDiff {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.structural.is_empty()
    }
}

fn push<T: PartialEq + std::fmt::Debug>(out: &mut Vec<String>, field: &str, old: &T, new: &T) {
    if old != new {
        out.push(format!("{field}: {old:?} -> {new:?}"));
    }
}

/// Compares a running tier with its new definition (in their whole topologies).
pub fn diff(old_topo: &Topology, old: &Tier, new_topo: &Topology, new: &Tier) -> TierDiff {
    let mut d = TierDiff::default();
    if old.exit.rule != new.exit.rule {
        d.live.push(format!("exit.rule: {} -> {}", old.exit.rule, new.exit.rule));
    }
    push(&mut d.live, "threshold", &old.exit.threshold, &new.exit.threshold);
    push(&mut d.live, "workers", &(old.workers.min, old.workers.max), &(new.workers.min, new.workers.max));
    push(&mut d.live, "scaling", &old.scaling, &new.scaling);
    push(&mut d.live, "batch", &old.batch, &new.batch);
    push(&mut d.live, "scaler", &old.scaler, &new.scaler);
    let target = |t: &Tier| t.adaptive.as_ref().map(|a| (a.p99_target, a.accuracy_floor));
    // Adding or removing the rule restarts the tier: the watch on the next tier's backlog that
    // the rule reads is built with the tier. Moving its target or floor applies in place.
    let adaptive = if old.adaptive.is_some() == new.adaptive.is_some() { &mut d.live } else { &mut d.structural };
    push(adaptive, "adaptive", &target(old), &target(new));

    let s = &mut d.structural;
    push(s, "model", &old.model, &new.model);
    if old.model == new.model && old.model_info != new.model_info {
        s.push(format!("model: {} changed on disk", new.model.display()));
    }
    push(s, "input", &old.input, &new.input);
    push(s, "exits", &old.exits, &new.exits);
    push(s, "next", &old.next, &new.next);
    push(s, "group", &old.group, &new.group);
    push(s, "auto_offset_reset", &old.auto_offset_reset, &new.auto_offset_reset);
    push(s, "exit_format", &old.exit_format, &new.exit_format);
    push(s, "device", &old.device, &new.device);
    push(s, "model_id", &old.model_id, &new.model_id);
    push(s, "dead_letter", &old_topo.dead_letter, &new_topo.dead_letter);
    push(s, "offsets_topic", &old_topo.offsets_topic, &new_topo.offsets_topic);
    push(
        s,
        "next tier input",
        &old_topo.next_input(old).map(|i| &i.topic),
        &new_topo.next_input(new).map(|i| &i.topic),
    );
    let mut clusters = vec![&new.input.topic.cluster, &new.exits.cluster, &new_topo.dead_letter.cluster];
    if let Some(next) = new_topo.next_input(new) {
        clusters.push(&next.topic.cluster);
    }
    clusters.dedup();
    for c in clusters {
        let (o, n) = (old_topo.cluster(c).map(|c| &c.brokers), new_topo.cluster(c).map(|c| &c.brokers));
        push(s, &format!("clusters.{c}.brokers"), &o, &n);
    }
    d
}

/// Notices edits of the topology file by its modification time and size (polling works on
/// bind mounts and network file systems where change notifications do not).
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl FileWatch {
    pub fn new(path: &Path) -> Self {
        let mut w = Self { path: path.to_path_buf(), seen: None };
        w.seen = w.stamp();
        w
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// True once per change.
    pub fn changed(&mut self) -> bool {
        let now = self.stamp();
        if now.is_some() && now != self.seen {
            self.seen = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// topology/local.toml with the repository's models, the edge's `adaptive` line (if any).
    fn topology(dir: &Path, name: &str, adaptive: Option<&str>) -> Topology {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let text = std::fs::read_to_string(root.join("topology/local.toml")).expect("topology/local.toml");
        let models = format!("\"{}/models/", root.display());
        let mut text = text.replace("\"../models/", &models);
        if let Some(a) = adaptive {
            text = text.replacen("threshold = 0.8\n", &format!("threshold = 0.8\nadaptive = {a}\n"), 1);
        }
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write topology");
        crate::config::load(&path).expect("valid topology")
    }

    #[test]
    fn adding_an_adaptive_rule_restarts_the_tier_and_moving_its_target_applies_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = topology(dir.path(), "none.toml", None);
        let rule = topology(dir.path(), "rule.toml", Some(r#"{ p99_target = "200ms", accuracy_floor = 0.9 }"#));
        let moved = topology(dir.path(), "moved.toml", Some(r#"{ p99_target = "500ms", accuracy_floor = 0.9 }"#));
        let edge = |t: &Topology| t.tier("edge").expect("edge").clone();
        let (a, b, c) = (edge(&none), edge(&rule), edge(&moved));

        let added = diff(&none, &a, &rule, &b);
        assert!(added.live.is_empty(), "{added:?}");
        assert_eq!(added.structural.len(), 1, "{added:?}");
        assert!(added.structural[0].starts_with("adaptive: None -> Some("), "{added:?}");
        let removed = diff(&rule, &b, &none, &a);
        assert!(removed.live.is_empty() && removed.structural.len() == 1, "{removed:?}");

        let target = diff(&rule, &b, &moved, &c);
        assert!(target.structural.is_empty(), "{target:?}");
        assert_eq!(target.live.len(), 1, "{target:?}");
        assert!(target.live[0].starts_with("adaptive: Some("), "{target:?}");
    }
}
