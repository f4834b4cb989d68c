//! The durable per-channel sync logs: for each peer, the set of items that changed here and that
//! peer has not acknowledged yet.
//!
//! A writer (Mailbox, Directory) that commits a change adds the log rows to the same batch as the
//! change, so a change and its log entries are durable together: a crash can lose neither one
//! without the other. After the commit the writer tells the [`SyncLog`], which wakes the peer's
//! Channel. The log is a set: an item changed 1,000 times before the Channel drains it is one row.
//! Each row carries a generation; a Channel removes a row only if its generation is still the one
//! it synced, so a change that lands during a sync is never dropped.
//!
//! Which peers a change is logged for (DESIGN.md, "Channels, sync log, echo suppression"): every
//! peer, except the one the change arrived from and the change's origin, when the merge left the
//! local state exactly as it arrived, and except peers that do not hold the mailbox (its
//! effective holders: the locations and the relays between them, `LinkGraph::holders`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use actix::Recipient;
use mailmesh_protocol::ids::{MailboxId, NodeId};
use mailmesh_protocol::merge::MergeEffect;

use crate::context::Faults;
use crate::counters::NodeCounters;
use crate::store::{keys, Batch, Table};

/// Something a Channel syncs as a unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncItem {
    /// The cluster's link graph (every node's configured peers): first, so a peer knows the
    /// relays of a mailbox before its entries and messages arrive.
    Links,
    /// The directory entries of one user (creates, renames, deletes, locations). Ordered first,
    /// so a peer learns of a mailbox before its messages arrive.
    MailboxList(String),
    Subscriptions(String),
    Sieve(String),
    Mailbox(MailboxId),
}

impl SyncItem {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body): (u8, Vec<u8>) = match self {
            SyncItem::MailboxList(u) => (1, u.as_bytes().to_vec()),
            SyncItem::Subscriptions(u) => (2, u.as_bytes().to_vec()),
            SyncItem::Sieve(u) => (3, u.as_bytes().to_vec()),
            SyncItem::Mailbox(id) => (4, id.to_bytes().to_vec()),
            SyncItem::Links => (5, Vec::new()),
        };
        let mut out = vec![tag];
        out.extend(body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (tag, body) = bytes.split_first()?;
        let user = || String::from_utf8(body.to_vec()).ok();
        match tag {
            1 => Some(SyncItem::MailboxList(user()?)),
            2 => Some(SyncItem::Subscriptions(user()?)),
            3 => Some(SyncItem::Sieve(user()?)),
            4 => Some(SyncItem::Mailbox(MailboxId::from_bytes(body.try_into().ok()?))),
            5 if body.is_empty() => Some(SyncItem::Links),
            _ => None,
        }
    }
}

/// Storage key of a log row: peer, zero byte, item.
pub fn row_key(peer: &NodeId, item: &SyncItem) -> Vec<u8> {
    let mut k = keys::user_names(peer.as_str());
    k.extend(item.encode());
    k
}

/// How a change came to be, which decides the peers it is logged for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// A client wrote it here.
    Local,
    /// A peer's change was merged in with `effect`; `origin` is the node that produced the
    /// incoming state.
    Remote {
        from: NodeId,
        origin: NodeId,
        effect: MergeEffect,
    },
}

impl Provenance {
    /// The peers that must not be sent this change because they already have it (`faults` may
    /// break the rule on purpose, to show the simulator catches it).
    fn skips(&self, peer: &NodeId, faults: &Faults) -> bool {
        match self {
            Provenance::Local => false,
            _ if faults.no_echo_suppression => false,
            Provenance::Remote {
                effect: MergeEffect::TookIncoming,
                from,
                origin,
            } => peer == from || (peer == origin && !faults.origin_not_skipped),
            // A combined result is new to everyone, sender included. Unchanged logs nothing.
            Provenance::Remote { .. } => false,
        }
    }
}

/// Who must be told when a log row is written, once the batch holding it is durable.
#[derive(Default, Debug)]
#[must_use = "call SyncLog::notify after the batch commits"]
pub struct Logged {
    rows: Vec<(NodeId, SyncItem, u64)>,
    /// Peers whose everything was queued again, with the generation mark below which rows go
    /// whole (without echo suppression). Announced before the rows.
    requeues: Vec<(NodeId, u64)>,
}

impl Logged {
    pub fn merge(&mut self, other: Logged) {
        self.rows.extend(other.rows);
        self.requeues.extend(other.requeues);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.requeues.is_empty()
    }

    /// Records that everything was queued again for `peer` up to generation `mark`.
    pub fn requeued(&mut self, peer: NodeId, mark: u64) {
        self.requeues.push((peer, mark));
    }
}

/// Tells a Channel that its peer lost its data: rows up to `mark` are to be sent whole.
#[derive(actix::Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Requeued {
    pub mark: u64,
}

/// Tells a Channel that an item of its log changed.
#[derive(actix::Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Dirty {
    pub item: SyncItem,
    pub generation: u64,
}

#[derive(Default)]
struct Inner {
    /// The configured peers, in order.
    peers: BTreeSet<NodeId>,
    /// The running Channel of each peer, to wake.
    channels: BTreeMap<NodeId, (Recipient<Dirty>, Recipient<Requeued>)>,
}

/// The node's handle on its sync logs, shared by every writer. Cheap to clone.
#[derive(Clone)]
pub struct SyncLog {
    inner: Arc<Mutex<Inner>>,
    /// Hands out row generations; persisted with every commit, so they only grow.
    counters: NodeCounters,
    /// Deliberate faults (all off in a real node).
    faults: Faults,
}

impl SyncLog {
    pub fn new(counters: NodeCounters) -> Self {
        Self::with_faults(counters, Faults::default())
    }

    /// A sync log whose skip rule `faults` may break on purpose (the simulator's sabotage).
    pub fn with_faults(counters: NodeCounters, faults: Faults) -> Self {
        SyncLog {
            inner: Arc::new(Mutex::new(Inner::default())),
            counters,
            faults,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("sync log lock")
    }

    pub fn peers(&self) -> BTreeSet<NodeId> {
        self.inner().peers.clone()
    }

    pub fn set_peers(&self, peers: BTreeSet<NodeId>) {
        let mut inner = self.inner();
        inner.channels.retain(|p, _| peers.contains(p));
        inner.peers = peers;
    }

    pub fn attach_channel(&self, peer: NodeId, dirty: Recipient<Dirty>, requeued: Recipient<Requeued>) {
        self.inner().channels.insert(peer, (dirty, requeued));
    }

    pub fn detach_channel(&self, peer: &NodeId) {
        self.inner().channels.remove(peer);
    }

    /// Adds to `batch` the log rows for a change to `item`. `holders` limits mailbox items to the
    /// nodes holding a replica (`None` or an empty set: every node).
    pub fn log(
        &self,
        batch: &mut Batch,
        item: SyncItem,
        provenance: &Provenance,
        holders: Option<&BTreeSet<NodeId>>,
    ) -> Logged {
        if matches!(
            provenance,
            Provenance::Remote {
                effect: MergeEffect::Unchanged,
                ..
            }
        ) {
            return Logged::default();
        }
        let inner = self.inner();
        let targets: Vec<NodeId> = inner
            .peers
            .iter()
            .filter(|p| !provenance.skips(p, &self.faults))
            .filter(|p| holders.is_none_or(|h| h.is_empty() || h.contains(*p)))
            .cloned()
            .collect();
        let mut logged = Logged::default();
        drop(inner);
        for peer in targets {
            let generation = self.counters.next_log_generation();
            batch.put_raw(
                Table::SyncLog,
                row_key(&peer, &item),
                generation.to_be_bytes().to_vec(),
            );
            logged.rows.push((peer, item.clone(), generation));
        }
        logged
    }

    /// Logs `item` for one peer regardless of provenance (a peer that needs everything again).
    pub fn log_for(&self, batch: &mut Batch, peer: &NodeId, item: SyncItem) -> Logged {
        let generation = self.counters.next_log_generation();
        batch.put_raw(
            Table::SyncLog,
            row_key(peer, &item),
            generation.to_be_bytes().to_vec(),
        );
        Logged {
            rows: vec![(peer.clone(), item, generation)],
            requeues: Vec::new(),
        }
    }

    /// Wakes the Channels of the rows in `logged`, once their batch is durable.
    pub fn notify(&self, logged: Logged) {
        let inner = self.inner();
        for (peer, mark) in logged.requeues {
            if let Some((_, channel)) = inner.channels.get(&peer) {
                channel.do_send(Requeued { mark });
            }
        }
        for (peer, item, generation) in logged.rows {
            if let Some((channel, _)) = inner.channels.get(&peer) {
                channel.do_send(Dirty { item, generation });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn items_round_trip_and_lists_sort_first() {
        for item in [
            SyncItem::MailboxList("alice".into()),
            SyncItem::Subscriptions("bob".into()),
            SyncItem::Sieve("c".into()),
            SyncItem::Mailbox(MailboxId(42)),
        ] {
            assert_eq!(SyncItem::decode(&item.encode()), Some(item));
        }
        assert!(SyncItem::MailboxList("z".into()) < SyncItem::Mailbox(MailboxId(0)));
    }

    #[test]
    fn skip_rules() {
        let log = SyncLog::new(NodeCounters::new(n("x"), crate::store::CounterState::default()));
        log.set_peers([n("a"), n("b"), n("c")].into());
        let mut batch = Batch::new();
        let took = Provenance::Remote {
            from: n("a"),
            origin: n("b"),
            effect: MergeEffect::TookIncoming,
        };
        let logged = log.log(&mut batch, SyncItem::Mailbox(MailboxId(1)), &took, None);
        assert_eq!(
            logged.rows.iter().map(|(p, _, _)| p.as_str()).collect::<Vec<_>>(),
            vec!["c"]
        );
        let combined = Provenance::Remote {
            from: n("a"),
            origin: n("b"),
            effect: MergeEffect::Combined,
        };
        assert_eq!(
            log.log(&mut batch, SyncItem::Mailbox(MailboxId(1)), &combined, None)
                .rows
                .len(),
            3
        );
        let unchanged = Provenance::Remote {
            from: n("a"),
            origin: n("b"),
            effect: MergeEffect::Unchanged,
        };
        assert!(log
            .log(&mut batch, SyncItem::Mailbox(MailboxId(1)), &unchanged, None)
            .is_empty());
        let holders: BTreeSet<NodeId> = [n("b")].into();
        let local = log.log(
            &mut batch,
            SyncItem::Mailbox(MailboxId(1)),
            &Provenance::Local,
            Some(&holders),
        );
        assert_eq!(local.rows.len(), 1);
        assert_eq!(local.rows[0].0, n("b"));
    }
}

/// A replicated item as a node stores it: the item, the node that produced exactly this state,
/// and the peer it arrived from whole (if it did). Together they decide which peers it is sent to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tagged<T> {
    pub item: T,
    pub origin: NodeId,
    pub arrived_on: Option<NodeId>,
}

impl<T> Tagged<T> {
    /// A state made here by a client.
    pub fn local(item: T, node: &NodeId) -> Self {
        Tagged {
            item,
            origin: node.clone(),
            arrived_on: None,
        }
    }

    /// The state after merging a change from `from` whose state was produced by `origin`: the
    /// incoming state kept whole keeps its origin; a combined one is this node's own.
    pub fn merged(item: T, effect: MergeEffect, from: &NodeId, origin: &NodeId, me: &NodeId) -> Self {
        match effect {
            MergeEffect::TookIncoming => Tagged {
                item,
                origin: origin.clone(),
                arrived_on: Some(from.clone()),
            },
            _ => Tagged::local(item, me),
        }
    }

    /// Whether `peer` already has this state.
    pub fn suppressed_for(&self, peer: &NodeId, faults: &Faults) -> bool {
        suppressed(&self.origin, self.arrived_on.as_ref(), peer, faults)
    }
}

/// Echo suppression for one stored state: a peer that sent it to us whole, or that produced it,
/// has it already (`faults` may break the rule on purpose, to show the simulator catches it).
pub fn suppressed(origin: &NodeId, arrived_on: Option<&NodeId>, peer: &NodeId, faults: &Faults) -> bool {
    !faults.no_echo_suppression
        && arrived_on.is_some_and(|from| from == peer || (origin == peer && !faults.origin_not_skipped))
}
