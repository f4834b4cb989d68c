//! UID conflicts and their resolution by promotion.
//!
//! Two AppendIds holding one uid in one uidvalidity means two nodes appended concurrently.
//! Clients may have seen either message at that uid, so neither may keep it: the mailbox's
//! preferred primary moves all of them to fresh uids above every UIDNEXT it knows, in AppendId
//! order, with new versions, and the change replicates like any other write. [`settle_uid`] is
//! the decision for one uid; the mailbox actor applies it (property-tested in settle_laws.rs).

use crate::ids::AppendId;

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
