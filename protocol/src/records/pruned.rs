//! Expunged messages compacted away: per origin node, the ranges of append counters known to be
//! expunged and no longer stored as records.
//!
//! An expunged record is only a tombstone (expunge is sticky), so once every peer that shares the
//! mailbox has it, a node keeps just its AppendId, folded into ranges. That costs about one range
//! per run of expunged messages between live ones, so tombstones no longer grow with the number
//! of messages ever deleted. The set is itself a CRDT (union), travels with full syncs, and is the
//! watermark that keeps a stale node from bringing a deleted message back: an incoming record whose
//! AppendId is in the set is known expunged. AppendIds are never reused, so nothing new is ever
//! refused by it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AppendId, NodeId};
use crate::merge::Merge;

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PrunedSet {
    /// origin -> sorted, disjoint, non-adjacent inclusive counter ranges.
    pub ranges: BTreeMap<NodeId, Vec<(u64, u64)>>,
    /// The uids the compacted messages held. A client may have seen one of them expunged, so a
    /// message that turns up later at one of them (a UID conflict from a partition) is never shown
    /// there: the primary promotes it, other nodes hide it until then.
    pub uids: Vec<(u64, u64)>,
}

impl PrunedSet {
    pub fn contains(&self, aid: &AppendId) -> bool {
        self.ranges.get(&aid.origin).is_some_and(|r| {
            let i = r.partition_point(|&(_, hi)| hi < aid.counter);
            r.get(i).is_some_and(|&(lo, _)| lo <= aid.counter)
        })
    }

    /// Whether a compacted message held `uid`.
    pub fn retired(&self, uid: u32) -> bool {
        let uid = uid as u64;
        let i = self.uids.partition_point(|&(_, hi)| hi < uid);
        self.uids.get(i).is_some_and(|&(lo, _)| lo <= uid)
    }

    /// Records that a compacted message held `uid`.
    pub fn retire(&mut self, uid: u32) {
        if !self.retired(uid) {
            self.uids.push((uid as u64, uid as u64));
            self.uids = normalize(std::mem::take(&mut self.uids));
        }
    }

    /// Adds one AppendId; returns whether it was new.
    pub fn insert(&mut self, aid: &AppendId) -> bool {
        if self.contains(aid) {
            return false;
        }
        let r = self.ranges.entry(aid.origin.clone()).or_default();
        r.push((aid.counter, aid.counter));
        *r = normalize(std::mem::take(r));
        true
    }

    /// Every AppendId in the set, for a node learning them.
    pub fn iter(&self) -> impl Iterator<Item = AppendId> + '_ {
        self.ranges.iter().flat_map(|(origin, r)| {
            r.iter().flat_map(move |&(lo, hi)| {
                (lo..=hi).map(move |counter| AppendId {
                    origin: origin.clone(),
                    counter,
                })
            })
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.uids.is_empty()
    }

    /// Number of ranges held (what the set costs).
    pub fn range_count(&self) -> usize {
        self.ranges.values().map(Vec::len).sum::<usize>() + self.uids.len()
    }
}

fn normalize(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some((_, prev)) if lo <= prev.saturating_add(1) => *prev = (*prev).max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl Merge for PrunedSet {
    fn merge(&self, other: &Self) -> Self {
        let mut ranges = self.ranges.clone();
        for (origin, theirs) in &other.ranges {
            let r = ranges.entry(origin.clone()).or_default();
            r.extend(theirs.iter().copied());
            *r = normalize(std::mem::take(r));
        }
        let mut uids = self.uids.clone();
        uids.extend(other.uids.iter().copied());
        PrunedSet {
            ranges,
            uids: normalize(uids),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aid(o: &str, c: u64) -> AppendId {
        AppendId {
            origin: NodeId::new(o).unwrap(),
            counter: c,
        }
    }

    #[test]
    fn empty_until_an_id_or_a_uid_is_added() {
        let mut s = PrunedSet::default();
        assert!(s.is_empty());
        s.insert(&aid("n1", 3));
        assert!(!s.is_empty());
        let mut u = PrunedSet::default();
        u.retire(7);
        assert!(!u.is_empty(), "a retired uid alone");
    }

    #[test]
    fn ranges_fold_and_merge() {
        let mut a = PrunedSet::default();
        for c in [1, 2, 3, 7, 5, 6] {
            assert!(a.insert(&aid("x", c)));
        }
        assert!(!a.insert(&aid("x", 2)));
        assert_eq!(a.ranges[&NodeId::new("x").unwrap()], vec![(1, 3), (5, 7)]);
        assert!(a.contains(&aid("x", 6)) && !a.contains(&aid("x", 4)) && !a.contains(&aid("y", 1)));
        let mut b = PrunedSet::default();
        b.insert(&aid("x", 4));
        b.insert(&aid("y", 9));
        let m = a.merge(&b);
        assert_eq!(m, b.merge(&a));
        assert_eq!(m.merge(&m), m);
        assert_eq!(m.ranges[&NodeId::new("x").unwrap()], vec![(1, 7)]);
        assert_eq!(m.iter().count(), 8);
        assert_eq!(m.range_count(), 2);
        let mut u = PrunedSet::default();
        u.retire(5);
        u.retire(6);
        u.retire(9);
        assert!(u.retired(6) && !u.retired(7));
        assert_eq!(u.uids, vec![(5, 6), (9, 9)]);
    }
}
