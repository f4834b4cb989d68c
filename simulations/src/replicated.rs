//! The whole replicated state of one node, read through its actors as a peer's full sync would
//! read it, and the comparison of two nodes' states once the cluster is quiet.
//!
//! Convergence on what clients see ([`crate::checks`]) is not enough: two replicas can show the
//! same messages while one holds an older flag version, a record hidden by a conflict the other
//! settled, a tombstone the other lacks, or a lower UIDNEXT, and the next partition turns that
//! hidden difference into a visible loss. So the judge also compares, holder by holder, what the
//! merge rules work on: every live record with all its versions (and whether it is hidden), the
//! messages known expunged (as records or compacted ranges), UIDNEXT, annotations with their
//! tombstones, the per-mailbox digest; on every node, the mailbox entries (locations, primary,
//! tombstones), the link graph, subscriptions and sieve state with their versions; and every
//! visible message's body by content. A mailbox's holders are its locations plus the relays the
//! link graph needs between them (`LinkGraph::holders`); the checks compare the graph itself with
//! the simulated topology.

use std::collections::BTreeMap;

use mailmesh_actors::directory_sync::{EntriesFor, LinksFor, UserItemChange, UserItemFor};
use mailmesh_actors::mailbox::{
    uid_index_disagreements, ChangedSince, Fetch, FetchBody, GetPruned, GetState,
};
use mailmesh_actors::mailbox_sync::{ListFull, PageBudget};
use mailmesh_actors::node::LocalNode;
use mailmesh_actors::sync_log::SyncItem;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::{AppendId, Guid, MailboxId, ModSeq, NodeId};
use mailmesh_protocol::records::{
    Annotation, LinkGraph, MailboxDigest, MailboxEntry, MessageRecord, PrunedSet, UidNext, UserSieve,
    UserSubscriptions,
};
use mailmesh_protocol::version::Version;
use mailmesh_protocol::wire::Response;

use crate::model::{AckedWrite, Register, Written};
use crate::network::short_id;
use crate::snapshot::open_by_id;
use crate::workload::USERS;

/// One mailbox as one holder stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedMailbox {
    /// Live records with every version they carry, and whether the node hides them.
    pub live: BTreeMap<AppendId, (MessageRecord, bool)>,
    /// Messages known expunged: expunged records and compacted ranges together (when a node
    /// compacts is its own business; what it knows is not).
    pub gone: PrunedSet,
    pub uidnext: UidNext,
    /// Annotations with their versions; a removed one is a tombstone (`None` value).
    pub annotations: BTreeMap<String, Annotation>,
    pub digest: MailboxDigest,
}

/// Everything one node replicates.
#[derive(Clone, Debug, Default)]
pub struct ReplicatedState {
    /// Every mailbox entry of every user, deleted ones (tombstones) included.
    pub entries: BTreeMap<MailboxId, MailboxEntry>,
    pub subscriptions: BTreeMap<String, UserSubscriptions>,
    pub sieve: BTreeMap<String, UserSieve>,
    /// The cluster's link graph as this node knows it.
    pub links: LinkGraph,
    /// The live mailboxes this node holds a replica of (its locations and relays).
    pub mailboxes: BTreeMap<MailboxId, ReplicatedMailbox>,
    /// Holders that could not read a mailbox they hold, with why.
    pub unreadable: BTreeMap<MailboxId, String>,
    /// Visible messages whose body is missing or not the one the record names.
    pub bad_bodies: Vec<String>,
    /// Where a held mailbox's uid index disagrees with its records (each a line).
    pub index_disagreements: Vec<String>,
}

/// Reads `local`'s whole replicated state. The peer named in the requests is only a label: every
/// read asks for the whole state, so nothing is left out as already known to that peer.
pub async fn read_replicated(local: &LocalNode) -> ReplicatedState {
    let mut state = ReplicatedState::default();
    let label = local.node.clone();
    for user in USERS {
        if let Ok(Ok(entries)) = local
            .directory
            .send(EntriesFor {
                peer: label.clone(),
                user: user.into(),
                whole: true,
            })
            .await
        {
            for change in entries {
                state.entries.insert(change.item.id, change.item);
            }
        }
        for item in [SyncItem::Subscriptions(user.into()), SyncItem::Sieve(user.into())] {
            let read = local
                .directory
                .send(UserItemFor {
                    peer: label.clone(),
                    item,
                    whole: true,
                })
                .await;
            match read {
                Ok(Ok(Some(UserItemChange::Subscriptions(c)))) => {
                    state.subscriptions.insert(user.to_string(), c.item);
                }
                Ok(Ok(Some(UserItemChange::Sieve(c)))) => {
                    state.sieve.insert(user.to_string(), c.item);
                }
                _ => {}
            }
        }
    }
    if let Ok(Ok(Some(links))) = local
        .directory
        .send(LinksFor {
            peer: label.clone(),
            whole: true,
        })
        .await
    {
        state.links = links.item;
    }
    let held: Vec<MailboxEntry> = state
        .entries
        .values()
        .filter(|e| !e.is_deleted() && holds(&state.links, e, &local.node))
        .cloned()
        .collect();
    for entry in held {
        match uid_index_disagreements(&local.store, entry.id) {
            Ok(lines) => state.index_disagreements.extend(
                lines
                    .into_iter()
                    .map(|line| format!("{} mailbox {}: {line}", local.node, short_id(entry.id.0))),
            ),
            Err(e) => state.index_disagreements.push(format!(
                "{} mailbox {}: {e}",
                local.node,
                short_id(entry.id.0)
            )),
        }
        match read_mailbox(local, &entry, &mut state.bad_bodies).await {
            Ok(mb) => {
                state.mailboxes.insert(entry.id, mb);
            }
            Err(why) => {
                state.unreadable.insert(entry.id, why);
            }
        }
    }
    state
}

async fn read_mailbox(
    local: &LocalNode,
    entry: &MailboxEntry,
    bad_bodies: &mut Vec<String>,
) -> Result<ReplicatedMailbox, String> {
    let mb = open_by_id(local, entry.id).await.map_err(|e| match e {
        Some(e) => e.to_string(),
        None => "its actor stopped".into(),
    })?;
    let fail = |what: &str| format!("{what} could not be read");
    let records = mb
        .send(ChangedSince {
            since: ModSeq::ZERO,
            limit: usize::MAX,
        })
        .await
        .map_err(|_| fail("records"))?
        .map_err(|e| e.to_string())?;
    let pruned = mb
        .send(GetPruned)
        .await
        .map_err(|_| fail("compacted set"))?
        .map_err(|e| e.to_string())?;
    let full = mb
        .send(ListFull {
            uidvalidity: entry.uidvalidity,
            after: None,
            page: PageBudget::records_only(usize::MAX),
        })
        .await
        .map_err(|_| fail("full state"))?
        .map_err(|e| e.to_string())?;
    let state = mb
        .send(GetState)
        .await
        .map_err(|_| fail("state"))?
        .map_err(|e| e.to_string())?;
    let Response::Full {
        annotations, uidnext, ..
    } = full
    else {
        return Err(format!("full state answered {full:?}"));
    };
    let mut out = ReplicatedMailbox {
        live: BTreeMap::new(),
        gone: pruned,
        uidnext,
        annotations: annotations.into_iter().map(|c| (c.item.0, c.item.1)).collect(),
        digest: state.digest,
    };
    for stored in records {
        if stored.record.is_expunged() {
            out.gone.insert(&stored.record.append_id);
            out.gone.retire(stored.record.uid.value.0);
        } else {
            out.live
                .insert(stored.record.append_id.clone(), (stored.record, stored.hidden));
        }
    }
    // Every message a client can read must have its own body.
    let visible = match mb.send(Fetch { uids: UidSet::all() }).await {
        Ok(Ok(v)) => v,
        _ => return Err(fail("visible messages")),
    };
    for view in visible {
        let problem = match mb.send(FetchBody { uid: view.uid }).await {
            Ok(Ok(body)) if Guid::of(&body) == view.guid => continue,
            Ok(Ok(_)) => "a body with other content".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        bad_bodies.push(format!(
            "{} uid {} ({}) in {}: {problem}",
            local.node,
            view.uid,
            view.append_id,
            short_id(entry.id.0)
        ));
    }
    Ok(out)
}

/// Whether `node` holds `entry`'s mailbox: among its locations, a relay between them, or
/// letting a copy go (none should be left once the cluster is quiet: see the checks).
pub fn holds(links: &LinkGraph, entry: &MailboxEntry, node: &NodeId) -> bool {
    let holders = links.holders_of(entry);
    holders.is_empty() || holders.contains(node)
}

/// The first difference between two nodes' replicated states, if any. Mailbox contents are
/// compared only where both nodes hold the mailbox (by `a`'s entry and graph, which must equal
/// `b`'s).
pub fn first_difference(
    a: &NodeId,
    sa: &ReplicatedState,
    b: &NodeId,
    sb: &ReplicatedState,
) -> Option<String> {
    if sa.entries != sb.entries {
        let id = sa
            .entries
            .keys()
            .chain(sb.entries.keys())
            .find(|id| sa.entries.get(id) != sb.entries.get(id))
            .expect("differing maps differ at some key");
        return Some(format!(
            "mailbox entry {}: {:?} on {a}, {:?} on {b}",
            short_id(id.0),
            sa.entries.get(id),
            sb.entries.get(id)
        ));
    }
    if sa.links != sb.links {
        return Some(format!("link graph {:?} on {a}, {:?} on {b}", sa.links, sb.links));
    }
    if sa.subscriptions != sb.subscriptions {
        return Some(format!(
            "subscription state {:?} on {a}, {:?} on {b}",
            sa.subscriptions, sb.subscriptions
        ));
    }
    if sa.sieve != sb.sieve {
        return Some(format!(
            "sieve state {:?} on {a}, {:?} on {b}",
            sa.sieve, sb.sieve
        ));
    }
    for (id, entry) in &sa.entries {
        if entry.is_deleted() || !holds(&sa.links, entry, a) || !holds(&sa.links, entry, b) {
            continue;
        }
        let mailbox = short_id(id.0);
        let (x, y) = match (sa.mailboxes.get(id), sb.mailboxes.get(id)) {
            (Some(x), Some(y)) => (x, y),
            // Unreadable holders are reported on their own.
            _ => continue,
        };
        if x == y {
            continue;
        }
        return Some(mailbox_difference(&mailbox, a, x, b, y));
    }
    None
}

fn mailbox_difference(
    mailbox: &str,
    a: &NodeId,
    x: &ReplicatedMailbox,
    b: &NodeId,
    y: &ReplicatedMailbox,
) -> String {
    if let Some(aid) = x
        .live
        .keys()
        .chain(y.live.keys())
        .find(|aid| x.live.get(aid) != y.live.get(aid))
    {
        let show = |r: Option<&(MessageRecord, bool)>| match r {
            Some((r, hidden)) => format!("{r:?} hidden {hidden}"),
            None if x.gone.contains(aid) || y.gone.contains(aid) => "expunged".to_string(),
            None => "absent".to_string(),
        };
        return format!(
            "mailbox {mailbox}: message {aid} is {} on {a} and {} on {b}",
            show(x.live.get(aid)),
            show(y.live.get(aid))
        );
    }
    if x.gone != y.gone {
        return format!(
            "mailbox {mailbox}: messages known expunged {:?} on {a}, {:?} on {b}",
            x.gone, y.gone
        );
    }
    if x.uidnext != y.uidnext {
        return format!(
            "mailbox {mailbox}: UIDNEXT {} on {a}, {} on {b}",
            x.uidnext.0, y.uidnext.0
        );
    }
    if x.annotations != y.annotations {
        return format!(
            "mailbox {mailbox}: annotation state {:?} on {a}, {:?} on {b}",
            x.annotations, y.annotations
        );
    }
    format!(
        "mailbox {mailbox}: same records but digest {:?} on {a}, {:?} on {b}",
        x.digest, y.digest
    )
}

/// Acknowledged writes missing from `state` (`node`'s): each must still be in its register,
/// with its own version, or replaced by a write with a higher one (every register here is last
/// writer wins on versions). A write whose container is legitimately gone (message expunged,
/// mailbox deleted or not held by this node) has nothing left to check. Returns (index of the
/// write in the model, what is wrong).
pub fn lost_writes(writes: &[AckedWrite], node: &NodeId, state: &ReplicatedState) -> Vec<(usize, String)> {
    let mut lost = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let found: Option<(Written, &Version)> = match &w.register {
            Register::Flag {
                mailbox,
                message,
                flag,
            } => {
                let Some(mb) = state.mailboxes.get(mailbox) else {
                    continue;
                };
                let Some((record, _)) = mb.live.get(message) else {
                    // Expunged, or missing altogether (which the append checks report).
                    continue;
                };
                record
                    .flags
                    .get(flag)
                    .map(|f| (Written::Bool(f.value), &f.version))
            }
            Register::Annotation { mailbox, entry } => {
                let Some(mb) = state.mailboxes.get(mailbox) else {
                    continue;
                };
                mb.annotations
                    .get(entry)
                    .map(|a| (Written::Bytes(a.value().map(<[u8]>::to_vec)), &a.0.version))
            }
            Register::Subscription { user, name } => state
                .subscriptions
                .get(user)
                .and_then(|s| s.names.get(name))
                .map(|s| (Written::Bool(s.value), &s.version)),
            Register::Script { user, name } => state
                .sieve
                .get(user)
                .and_then(|s| s.scripts.get(name))
                .map(|s| (Written::Bytes(s.value.as_ref().map(|b| b.to_vec())), &s.version)),
            Register::ActiveScript { user } => state
                .sieve
                .get(user)
                .and_then(|s| s.active.as_ref())
                .map(|a| (Written::Name(a.value.clone()), &a.version)),
        };
        let problem = match found {
            None => "is gone".to_string(),
            Some((_, version)) if *version < w.version => {
                format!("was replaced by an older write ({version})")
            }
            Some((value, version)) if *version == w.version && value != w.value => {
                format!("holds {value:?} under the write's own version")
            }
            Some(_) => continue,
        };
        lost.push((
            i,
            format!(
                "{node}: the acknowledged write {:?} = {:?} ({}) {problem}",
                w.register, w.value, w.version
            ),
        ));
    }
    lost
}
