//! Live topology edits: what changed for a running tier, and whether it can apply in place.
//!
//! Exit rules and thresholds, the adaptive exit's target and floor, worker bounds, scaling mode,
//! batch and scaler settings apply in place (atomics
//! read by the workers and the scaler). Anything that changes where records come from or go to,
//! or the model, restarts the tier's actors (drain, commit, rebuild).

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
    push(&mut d.live, "adaptive", &target(old), &target(new));

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
