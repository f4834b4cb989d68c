//! UID conflicts and their resolution by promotion.
//!
//! Two AppendIds holding one uid in one uidvalidity means two nodes appended concurrently.
//! Clients may have seen either message at that uid, so neither may keep it: the mailbox's
//! preferred primary moves all of them to fresh uids above every UIDNEXT it knows, in AppendId
//! order, with new versions. The change then replicates like any other write.

use std::collections::BTreeMap;

use crate::ids::{AppendId, Uid};
use crate::records::{MessageRecord, UidNext};
use crate::version::LamportClock;

/// Every uid held by two or more records, with the AppendIds holding it (sorted). Expunged
/// records count: a client that saw a uid expunged must never see it again as another message.
pub fn uid_conflicts<'a>(
    records: impl IntoIterator<Item = &'a MessageRecord>,
) -> BTreeMap<Uid, Vec<AppendId>> {
    let mut by_uid: BTreeMap<Uid, Vec<AppendId>> = BTreeMap::new();
    for r in records {
        by_uid.entry(r.uid.value).or_default().push(r.append_id.clone());
    }
    by_uid.retain(|_, ids| {
        ids.sort();
        ids.dedup();
        ids.len() > 1
    });
    by_uid
}

/// One record moved to a fresh uid.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Promotion {
    pub append_id: AppendId,
    pub from: Uid,
    pub to: Uid,
}

/// Moves every record of every conflicting uid to a fresh uid at or above `uidnext`, conflicts in
/// uid order and within one uid in AppendId order, each with a fresh version from `clock`.
/// Advances `uidnext` past the new uids. Only the mailbox's preferred primary calls this. Should
/// the uids of this uidvalidity run out (`u32::MAX`), the remaining conflicts stay unresolved.
pub fn promote_uid_conflicts(
    records: &mut BTreeMap<AppendId, MessageRecord>,
    uidnext: &mut UidNext,
    clock: &mut LamportClock,
) -> Vec<Promotion> {
    // UIDNEXT must exceed every uid in use, whatever the counter says.
    if let Some(max) = records.values().map(|r| r.uid.value).max() {
        uidnext.0 = uidnext.0.max(Uid(max.0.saturating_add(1)));
    }
    let conflicts = uid_conflicts(records.values());
    let mut moved = Vec::new();
    for (uid, ids) in conflicts {
        for id in ids {
            let record = records.get_mut(&id).expect("conflict names a present record");
            // The uid space of this uidvalidity is exhausted: leave the rest for an operator
            // (a new uidvalidity) rather than wrap to a uid clients have seen.
            let Some(after) = uidnext.0 .0.checked_add(1) else {
                return moved;
            };
            let to = uidnext.0;
            uidnext.0 = Uid(after);
            // The new assignment must win over the record's current one, whatever this clock saw.
            clock.observe(&record.uid.version);
            let version = clock.tick();
            record.uid.set(to, version);
            moved.push(Promotion {
                append_id: id,
                from: uid,
                to,
            });
        }
    }
    moved
}

/// One record at a uid, as [`settle_uid`] sees it on one node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AtUid {
    pub append_id: AppendId,
    pub expunged: bool,
    /// This node hides it now (a conflict it has not seen settled).
    pub hidden: bool,
    /// It has just moved to this uid here (a promotion arriving): it was never shown at it.
    pub arrived: bool,
}

/// What one node does with one uid after a merge or an append touched it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Settlement {
    /// The mailbox's primary retires the uid and moves these live records to fresh uids, in
    /// AppendId order.
    Promote(Vec<AppendId>),
    /// Show `keeper` at the uid (if any) and hide every other live record; hide nothing else.
    Show { keeper: Option<AppendId> },
}

/// Decides how a uid holding `at` (records of one mailbox, any order) shows on a node: what the
/// actors run after every merge and append (DESIGN.md, "UID conflicts"). The primary promotes
/// every live record of a uid that two records hold, or that a compacted message held
/// (`retired`). Any other node keeps showing the message it showed there first and hides the
/// rest (never dropping them); it shows a hidden one again once it is alone at the uid; a uid
/// once seen expunged here (an expunged record, or `retired`) never shows another message.
pub fn settle_uid(at: &[AtUid], retired: bool, primary: bool) -> Settlement {
    let mut at: Vec<&AtUid> = at.iter().collect();
    at.sort_by(|a, b| a.append_id.cmp(&b.append_id));
    at.dedup_by(|a, b| a.append_id == b.append_id);
    let mut live = at.iter().filter(|r| !r.expunged).peekable();
    if primary && live.peek().is_some() && (at.len() > 1 || retired) {
        return Settlement::Promote(live.map(|r| r.append_id.clone()).collect());
    }
    let shown_before = at
        .iter()
        .find(|r| !r.hidden && !r.expunged && !r.arrived)
        .map(|r| r.append_id.clone());
    let keeper = match shown_before {
        Some(aid) => Some(aid),
        None if retired || at.iter().any(|r| r.expunged) => None,
        None => at.iter().find(|r| !r.expunged).map(|r| r.append_id.clone()),
    };
    Settlement::Show { keeper }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Guid, NodeId};
    use crate::merge::Lww;
    use crate::version::Version;

    fn rec(origin: &str, counter: u64, uid: u32) -> MessageRecord {
        let node = NodeId::new(origin).unwrap();
        MessageRecord {
            append_id: AppendId {
                origin: node.clone(),
                counter,
            },
            uid: Lww::new(Uid(uid), Version { counter, node }),
            guid: Guid::of(origin.as_bytes()),
            size: 1,
            internaldate: 0,
            flags: Default::default(),
            expunged: None,
        }
    }

    #[test]
    fn conflicting_records_both_move_above_uidnext() {
        let mut records = BTreeMap::new();
        for r in [rec("a", 1, 1), rec("a", 2, 2), rec("b", 1, 2)] {
            records.insert(r.append_id.clone(), r);
        }
        assert_eq!(uid_conflicts(records.values()).len(), 1);
        let mut uidnext = UidNext(Uid(3));
        let mut clock = LamportClock::new(NodeId::new("a").unwrap(), 10);
        let moved = promote_uid_conflicts(&mut records, &mut uidnext, &mut clock);
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[0].to, Uid(3));
        assert_eq!(moved[1].to, Uid(4));
        assert_eq!(uidnext, UidNext(Uid(5)));
        assert!(uid_conflicts(records.values()).is_empty());
        // The uid 1 record is untouched.
        assert_eq!(records.values().next().unwrap().uid.value, Uid(1));
    }
}
