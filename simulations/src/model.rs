//! What clients were told: the acknowledged appends, and every client operation that may remove
//! something legitimately (expunge, move, delete). The checks judge the nodes against this.
//!
//! A client operation whose answer never came (its node crashed under it) may or may not have
//! happened, so operations that remove things are recorded before they are sent: the model
//! holds a superset of what clients may have removed, and never blames the engine for a removal
//! a client may have asked for.

use std::collections::{BTreeMap, BTreeSet};

use mailmesh_actors::mailbox::Transferred;
use mailmesh_protocol::ids::{AppendId, Guid, MailboxId, NodeId, Uid, UidValidity};
use mailmesh_protocol::names::Flag;
use mailmesh_protocol::version::Version;

use crate::network::short_id;

/// An append a client was told is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub mailbox: MailboxId,
    pub guid: Guid,
    pub node: NodeId,
}

/// Messages a client was shown at their uids by one answer of one node (a FETCH, an APPEND's or
/// a STORE's answer), for the observer's UID safety check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub node: NodeId,
    pub mailbox: MailboxId,
    pub uidvalidity: UidValidity,
    pub messages: Vec<(Uid, AppendId)>,
    /// How many times the node had been wiped when the client connected: an answer of a store
    /// since wiped promises nothing about the new one.
    pub incarnation: usize,
}

/// A last-writer-wins register of the replicated state that a client wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Register {
    Flag {
        mailbox: MailboxId,
        message: AppendId,
        flag: Flag,
    },
    Annotation {
        mailbox: MailboxId,
        entry: String,
    },
    Subscription {
        user: String,
        name: String,
    },
    Script {
        user: String,
        name: String,
    },
    ActiveScript {
        user: String,
    },
}

/// The value a client wrote into a [`Register`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Bool(bool),
    /// Annotation value or script content; `None` removes it (a tombstone).
    Bytes(Option<Vec<u8>>),
    /// The active script's name; `None`: none active.
    Name(Option<String>),
}

/// A write a client was told succeeded, with the version the node gave it. It must be in the
/// final state unless a write with a higher version replaced it (the merge rule of every
/// register), or its container is legitimately gone (message expunged, mailbox deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedWrite {
    pub register: Register,
    pub value: Written,
    pub version: Version,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// What clients were shown since the observer last looked (it takes them every step).
    pub shown: Vec<Shown>,
    pub appends: BTreeMap<AppendId, Acked>,
    /// Acknowledged flag, annotation, subscription and sieve writes.
    pub writes: Vec<AckedWrite>,
    /// Messages a client set \Deleted on at some point: an EXPUNGE may remove them.
    pub deleted_flagged: BTreeSet<AppendId>,
    /// STOREs that may have set \Deleted and whose answer never came (the node went down under
    /// them), as (mailbox, first uid, last uid): they may have flagged a message that reached the
    /// node between the client's FETCH and its STORE, which the client never saw.
    pub maybe_deleted: Vec<(MailboxId, Uid, Uid)>,
    /// (mailbox, node) where a client ran EXPUNGE.
    pub expunged_on: BTreeSet<(MailboxId, NodeId)>,
    /// Messages an answered MOVE took out of a mailbox: (source mailbox, source AppendId).
    pub moved: BTreeSet<(MailboxId, AppendId)>,
    /// MOVEs whose answer never came or was an error, as (mailbox, first uid, last uid): they may
    /// have taken any message of the range, including one that reached the node between the
    /// client's FETCH and its MOVE.
    pub maybe_moved: Vec<(MailboxId, Uid, Uid)>,
    /// Mailboxes a client delete may have removed.
    pub deleted: BTreeSet<MailboxId>,
    /// Deletes whose target could not be pinned down (the name meant another mailbox by the time
    /// the delete ran): with any of these, a mailbox gone for no known reason is not blamed.
    pub uncertain_deletes: u64,
    /// Acknowledged appends that lived only on a wiped node (no other node's disk held them
    /// durably, as a record or a tombstone, at the wipe): lost with it, so no node must show
    /// them. Nothing else is excused by a wipe.
    pub lost_in_wipes: BTreeSet<AppendId>,
    /// Mailboxes whose entry lived only on a wiped node's disk.
    pub mailboxes_lost_in_wipes: BTreeSet<MailboxId>,
    /// Acknowledged writes (indices into `writes`) whose register held that version or a later
    /// one on no other node's disk at a wipe: lost with the wiped node.
    pub writes_lost_in_wipes: BTreeSet<usize>,
    /// Every wipe: the node, and the virtual milliseconds since the run started.
    pub wipes: Vec<(NodeId, u128)>,
    /// An AppendId a client was told of twice for two different messages (a node minted it
    /// again): what was seen, for the run to report.
    pub reused_ids: Vec<String>,
    /// Client operations sent, and those acknowledged as having changed something.
    pub ops: u64,
    pub changes: u64,
}

impl Model {
    /// Records a write a client was told succeeded, with the version its answer carried.
    pub fn acknowledged(&mut self, register: Register, value: Written, version: &Version) {
        self.writes.push(AckedWrite {
            register,
            value,
            version: version.clone(),
        });
    }

    /// Records a message a client was told is stored (an append or a copy); an AppendId told
    /// before for another message is kept for the run to report as `identity-reused`.
    pub fn acknowledged_message(&mut self, aid: &AppendId, acked: Acked) {
        if let Some(before) = self.appends.insert(aid.clone(), acked.clone()) {
            if before != acked {
                self.reused_ids.push(format!(
                    "{aid} was acknowledged for {} in {} on {} and again for {} in {} on {}",
                    before.guid,
                    short_id(before.mailbox.0),
                    before.node,
                    acked.guid,
                    short_id(acked.mailbox.0),
                    acked.node
                ));
            }
        }
    }

    /// Records what a COPY or MOVE from `source` to `target` on `node` answered: each copy is a
    /// new acknowledged message, as an append is (same body, and a \Deleted the source may have
    /// carried), and a move took exactly the sources it names. `None`: no answer, or an error
    /// (a move may then have taken anything of `lo..=hi`).
    pub fn transferred(
        &mut self,
        (source, target): (MailboxId, MailboxId),
        node: &NodeId,
        remove: bool,
        (lo, hi): (Uid, Uid),
        answer: Option<&[Transferred]>,
    ) {
        let Some(taken) = answer else {
            if remove {
                self.maybe_moved.push((source, lo, hi));
            }
            return;
        };
        for t in taken {
            if remove {
                self.moved.insert((source, t.source.clone()));
            }
            // A source this model does not know (lost in a wipe) gives nothing to check.
            let Some(guid) = self.appends.get(&t.source).map(|a| a.guid) else {
                continue;
            };
            if self.may_carry_deleted(source, &t.source, Some(t.from)) {
                self.deleted_flagged.insert(t.copy.clone());
            }
            let acked = Acked {
                mailbox: target,
                guid,
                node: node.clone(),
            };
            self.acknowledged_message(&t.copy, acked);
        }
    }

    /// Whether a client may have expunged `aid` from `mailbox` on `node` (the node whose clock
    /// stamped the expunge).
    pub fn expunge_justified(&self, mailbox: MailboxId, aid: &AppendId, uid: Uid, node: &NodeId) -> bool {
        self.may_have_moved(mailbox, aid, Some(uid))
            || (self.expunged_on.contains(&(mailbox, node.clone()))
                && self.may_carry_deleted(mailbox, aid, Some(uid)))
    }

    /// Whether a MOVE may have taken `aid` out of `mailbox` (at `uid`, when the caller knows it).
    fn may_have_moved(&self, mailbox: MailboxId, aid: &AppendId, uid: Option<Uid>) -> bool {
        self.moved.contains(&(mailbox, aid.clone()))
            || self
                .maybe_moved
                .iter()
                .any(|(m, lo, hi)| *m == mailbox && uid.is_none_or(|u| *lo <= u && u <= *hi))
    }

    /// Whether a client may have set \Deleted on `aid` (at `uid`, when the caller knows it).
    fn may_carry_deleted(&self, mailbox: MailboxId, aid: &AppendId, uid: Option<Uid>) -> bool {
        self.deleted_flagged.contains(aid)
            || self
                .maybe_deleted
                .iter()
                .any(|(m, lo, hi)| *m == mailbox && uid.is_none_or(|u| *lo <= u && u <= *hi))
    }

    /// Whether a client may have expunged `aid` from `mailbox` on any node (for a message
    /// compacted away, whose expunge no longer says where it was made).
    pub fn expunge_possible(&self, mailbox: MailboxId, aid: &AppendId) -> bool {
        self.may_have_moved(mailbox, aid, None)
            || (self.may_carry_deleted(mailbox, aid, None)
                && self.expunged_on.iter().any(|(m, _)| *m == mailbox))
    }
}
