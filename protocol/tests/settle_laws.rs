//! Laws of `settle_uid`, the uid settling the Mailbox actors run after every merge and append:
//! what a client may see at one uid on one node.

use mailmesh_protocol::records::{settle_uid, AtUid, Settlement};
use mailmesh_protocol::{AppendId, NodeId};
use proptest::collection::vec;
use proptest::prelude::*;

fn at_uid() -> impl Strategy<Value = AtUid> {
    (
        prop::sample::select(vec!["n1", "n2", "n3"]),
        1u64..6,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(origin, counter, expunged, hidden, arrived)| AtUid {
            append_id: AppendId {
                origin: NodeId::new(origin).unwrap(),
                counter,
            },
            expunged,
            // An expunged record is never hidden: nothing shows it anyway.
            hidden: hidden && !expunged,
            arrived,
        })
}

/// Records at one uid, one entry per AppendId.
fn records() -> impl Strategy<Value = Vec<AtUid>> {
    vec(at_uid(), 0..5).prop_map(|mut v| {
        v.sort_by(|a, b| a.append_id.cmp(&b.append_id));
        v.dedup_by(|a, b| a.append_id == b.append_id);
        v
    })
}

fn live(at: &[AtUid]) -> Vec<&AtUid> {
    at.iter().filter(|r| !r.expunged).collect()
}

/// What the node holds after it applied a `Show`: the keeper shown, every other live record
/// hidden, nothing arriving any more.
fn applied(at: &[AtUid], keeper: &Option<AppendId>) -> Vec<AtUid> {
    at.iter()
        .map(|r| AtUid {
            hidden: !r.expunged && Some(&r.append_id) != keeper.as_ref(),
            arrived: false,
            ..r.clone()
        })
        .collect()
}

proptest! {
    /// The primary promotes exactly the live records of a contested uid (two records, or a uid a
    /// compacted message held), in AppendId order; no one else ever promotes.
    #[test]
    fn only_the_primary_promotes_and_only_contested_uids(at in records(), retired: bool, primary: bool) {
        let contested = !live(&at).is_empty() && (at.len() > 1 || retired);
        match settle_uid(&at, retired, primary) {
            Settlement::Promote(ids) => {
                prop_assert!(primary && contested);
                let expected: Vec<AppendId> = live(&at).iter().map(|r| r.append_id.clone()).collect();
                prop_assert_eq!(ids, expected);
            }
            Settlement::Show { .. } => prop_assert!(!(primary && contested)),
        }
    }

    /// A node shows at most one message at a uid, a live one, and hides every other live record
    /// (never drops one: the caller only flips hidden bits).
    #[test]
    fn at_most_one_live_message_shows(at in records(), retired: bool) {
        if let Settlement::Show { keeper } = settle_uid(&at, retired, false) {
            if let Some(k) = &keeper {
                prop_assert!(live(&at).iter().any(|r| &r.append_id == k), "keeper {k:?} is not a live record");
            }
            let shown = applied(&at, &keeper).iter().filter(|r| !r.expunged && !r.hidden).count();
            prop_assert!(shown <= 1);
        }
    }

    /// A message a client was shown at a uid stays shown there until the primary moves it: the
    /// first record shown before (not hidden, not just arrived) is the keeper.
    #[test]
    fn a_shown_message_stays_shown(at in records(), retired: bool) {
        let shown_before = at.iter().find(|r| !r.expunged && !r.hidden && !r.arrived);
        if let (Some(before), Settlement::Show { keeper }) = (shown_before, settle_uid(&at, retired, false)) {
            prop_assert_eq!(keeper, Some(before.append_id.clone()));
        }
    }

    /// A uid seen expunged on this node (an expunged record there, or retired by compaction)
    /// never shows a message that was not already shown at it.
    #[test]
    fn a_uid_seen_expunged_shows_nothing_new(at in records(), retired: bool) {
        let seen_expunged = retired || at.iter().any(|r| r.expunged);
        if let (true, Settlement::Show { keeper: Some(k) }) = (seen_expunged, settle_uid(&at, retired, false)) {
            let r = at.iter().find(|r| r.append_id == k).unwrap();
            prop_assert!(!r.hidden && !r.arrived, "{k:?} newly shown at a uid seen expunged");
        }
    }

    /// Once a message is alone at its uid (the primary moved the others off) every node shows
    /// it, hidden or not before: nothing stays hidden for good after a conflict is settled.
    #[test]
    fn a_message_alone_at_its_uid_shows(r in at_uid()) {
        let alone = AtUid { expunged: false, ..r };
        let settled = settle_uid(std::slice::from_ref(&alone), false, false);
        prop_assert_eq!(settled, Settlement::Show { keeper: Some(alone.append_id.clone()) });
        // The primary has nothing to promote there either.
        prop_assert_eq!(settle_uid(std::slice::from_ref(&alone), false, true), Settlement::Show { keeper: Some(alone.append_id) });
    }

    /// Settling is a function of the set of records: order and duplicates do not matter, and
    /// settling again what it left changes nothing.
    #[test]
    fn settling_is_order_free_and_idempotent(at in records(), retired: bool, primary: bool, rotate in 0usize..5) {
        let first = settle_uid(&at, retired, primary);
        let mut shuffled = at.clone();
        if !shuffled.is_empty() {
            let n = rotate % shuffled.len();
            shuffled.rotate_left(n);
            shuffled.reverse();
            shuffled.push(shuffled[0].clone());
        }
        prop_assert_eq!(&settle_uid(&shuffled, retired, primary), &first);
        if let Settlement::Show { keeper } = &first {
            let again = applied(&at, keeper);
            prop_assert_eq!(settle_uid(&again, retired, false), Settlement::Show { keeper: keeper.clone() });
        }
    }
}
