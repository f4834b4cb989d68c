//! Property tests for `PrunedSet::merge`, the set of compacted expunged messages that production
//! merges on every full sync and change page: a join (commutative, associative, idempotent), and
//! what it promises: the merge holds exactly the AppendIds and retired uids of both sides, its
//! ranges stay sorted, disjoint and non-adjacent (so equal sets compare equal), and `merge_from`
//! reports what it did.

use mailmesh_protocol::merge::{Merge, MergeEffect};
use mailmesh_protocol::records::PrunedSet;
use mailmesh_protocol::{AppendId, NodeId};
use proptest::collection::vec;
use proptest::prelude::*;

const NODES: [&str; 3] = ["a", "b", "c"];
/// Counters and uids from a small pool, so ranges touch, overlap and merge often.
const POOL: u64 = 24;

fn aid(origin: usize, counter: u64) -> AppendId {
    AppendId {
        origin: NodeId::new(NODES[origin]).expect("a node name"),
        counter,
    }
}

/// A set built the way a node builds one: AppendIds compacted one by one, uids retired.
fn pruned() -> impl Strategy<Value = PrunedSet> + Clone {
    (vec((0..NODES.len(), 0..POOL), 0..16), vec(1..POOL as u32, 0..8)).prop_map(|(aids, uids)| {
        let mut set = PrunedSet::default();
        for (origin, counter) in aids {
            set.insert(&aid(origin, counter));
        }
        for uid in uids {
            set.retire(uid);
        }
        set
    })
}

fn normalized(ranges: &[(u64, u64)]) -> bool {
    ranges.iter().all(|(lo, hi)| lo <= hi) && ranges.windows(2).all(|w| w[0].1.saturating_add(1) < w[1].0)
}

proptest! {
    #[test]
    fn merge_is_a_join(a in pruned(), b in pruned(), c in pruned()) {
        let ab = a.merge(&b);
        prop_assert_eq!(&ab, &b.merge(&a), "not commutative");
        prop_assert_eq!(a.merge(&b.merge(&c)), ab.merge(&c), "not associative");
        prop_assert_eq!(&a.merge(&a), &a, "not idempotent");
        prop_assert_eq!(&ab.merge(&a), &ab, "does not absorb its left input");
        prop_assert_eq!(&ab.merge(&b), &ab, "does not absorb its right input");
    }

    #[test]
    fn merge_holds_exactly_both_sides(a in pruned(), b in pruned()) {
        let m = a.merge(&b);
        for origin in 0..NODES.len() {
            for counter in 0..POOL + 2 {
                let id = aid(origin, counter);
                prop_assert_eq!(m.contains(&id), a.contains(&id) || b.contains(&id), "{}", id);
            }
        }
        for uid in 0..POOL as u32 + 2 {
            prop_assert_eq!(m.retired(uid), a.retired(uid) || b.retired(uid), "uid {}", uid);
        }
        let listed: Vec<AppendId> = m.iter().collect();
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&listed, &sorted, "iter lists each AppendId once, in order");
        prop_assert!(listed.iter().all(|id| a.contains(id) || b.contains(id)));
        for ranges in m.ranges.values() {
            prop_assert!(normalized(ranges), "ranges not normalized: {:?}", ranges);
        }
        prop_assert!(normalized(&m.uids), "uids not normalized: {:?}", m.uids);
        prop_assert!(m.ranges.values().all(|r| !r.is_empty()));
        prop_assert!(m.range_count() <= a.range_count() + b.range_count());
    }

    #[test]
    fn merge_from_reports_what_it_did(a in pruned(), b in pruned()) {
        let merged = a.merge(&b);
        let mut state = a.clone();
        let effect = state.merge_from(&b);
        prop_assert_eq!(&state, &merged);
        let expected = if merged == a {
            MergeEffect::Unchanged
        } else if merged == b {
            MergeEffect::TookIncoming
        } else {
            MergeEffect::Combined
        };
        prop_assert_eq!(effect, expected);
        prop_assert_eq!(state.merge_from(&b), MergeEffect::Unchanged);
    }

    #[test]
    fn insert_says_whether_it_was_new(a in pruned(), origin in 0..NODES.len(), counter in 0..POOL) {
        let id = aid(origin, counter);
        let mut set = a.clone();
        prop_assert_eq!(set.insert(&id), !a.contains(&id));
        prop_assert!(set.contains(&id));
        let mut single = PrunedSet::default();
        single.insert(&id);
        prop_assert_eq!(&set, &a.merge(&single), "insert is a merge with a one-element set");
    }
}
