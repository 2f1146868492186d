//! The group leader's partition assignment (pure): Kafka's `range` strategy.
//!
//! Eager and deterministic, so that a plain Java or librdkafka consumer with default settings
//! (their defaults list `range` first or among their strategies) can join a tier's group and be
//! given a share, and so that every leader computes the same answer from the same members.
//! Per topic, the members subscribed to it are sorted by member id; each gets
//! `partitions / members` consecutive partitions, the first `partitions % members` one more.

use std::collections::BTreeMap;

/// The protocol name every member offers.
pub const RANGE: &str = "range";

/// Member id -> topic -> partitions. Every member appears, even with nothing assigned.
pub type Assignment = BTreeMap<String, BTreeMap<String, Vec<i32>>>;

/// `members`: (member id, subscribed topics); `partitions`: partition count per topic (a topic
/// missing here is not assigned: it does not exist yet).
pub fn range(members: &[(String, Vec<String>)], partitions: &BTreeMap<String, i32>) -> Assignment {
    let mut out: Assignment = members.iter().map(|(m, _)| (m.clone(), BTreeMap::new())).collect();
    let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (member, topics) in members {
        for topic in topics {
            by_topic.entry(topic.as_str()).or_default().push(member.as_str());
        }
    }
    for (topic, mut subscribers) in by_topic {
        let Some(&n) = partitions.get(topic) else { continue };
        subscribers.sort_unstable();
        subscribers.dedup();
        let (each, extra) = (n / subscribers.len() as i32, n % subscribers.len() as i32);
        let mut next = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let count = each + i32::from((i as i32) < extra);
            let share: Vec<i32> = (next..next + count).collect();
            next += count;
            if let Some(m) = out.get_mut(*member) {
                m.insert(topic.to_string(), share);
            }
        }
    }
    out
}

/// What changed for one member between two assignments of its topic: (gained, lost).
pub fn changes(before: &[i32], after: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let gained = after.iter().filter(|p| !before.contains(p)).copied().collect();
    let lost = before.iter().filter(|p| !after.contains(p)).copied().collect();
    (gained, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter().map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect())).collect()
    }

    fn counts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_splits_consecutive_blocks_the_first_members_taking_the_remainder() {
        let a = range(&members(&[("c", &["in"]), ("a", &["in"]), ("b", &["in"])]), &counts(&[("in", 8)]));
        assert_eq!(a["a"]["in"], vec![0, 1, 2]);
        assert_eq!(a["b"]["in"], vec![3, 4, 5]);
        assert_eq!(a["c"]["in"], vec![6, 7]);
    }

    #[test]
    fn every_partition_has_exactly_one_owner_for_any_member_count() {
        for n in 1..=12 {
            for m in 1..=6 {
                let ms: Vec<(String, Vec<String>)> = (0..m).map(|i| (format!("m{i}"), vec!["t".to_string()])).collect();
                let a = range(&ms, &counts(&[("t", n)]));
                let mut all: Vec<i32> = a.values().flat_map(|t| t.get("t").cloned().unwrap_or_default()).collect();
                all.sort_unstable();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "{n} partitions over {m} members");
                let sizes: Vec<usize> = a.values().map(|t| t.get("t").map_or(0, Vec::len)).collect();
                let (lo, hi) = (sizes.iter().min().copied(), sizes.iter().max().copied());
                assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 1, "balanced: {sizes:?}");
            }
        }
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle_and_each_topic_is_split_on_its_own() {
        let a = range(
            &members(&[("a", &["in", "other"]), ("b", &["in"]), ("c", &["in"])]),
            &counts(&[("in", 2), ("other", 3)]),
        );
        assert_eq!(a["a"]["in"], vec![0]);
        assert_eq!(a["b"]["in"], vec![1]);
        assert_eq!(a["c"]["in"], Vec::<i32>::new());
        assert_eq!(a["a"]["other"], vec![0, 1, 2], "only `a` reads `other`");
        assert!(!a["b"].contains_key("other"));
    }

    #[test]
    fn a_topic_without_a_partition_count_is_not_assigned() {
        let a = range(&members(&[("a", &["missing"])]), &BTreeMap::new());
        assert!(a["a"].is_empty());
    }

    #[test]
    fn changes_name_what_was_gained_and_lost() {
        assert_eq!(changes(&[0, 1, 2], &[2, 3]), (vec![3], vec![0, 1]));
        assert_eq!(changes(&[], &[0]), (vec![0], vec![]));
    }
}
