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
