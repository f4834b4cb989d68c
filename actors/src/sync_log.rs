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
//! effective holders: the locations and the relays between them, `LinkGraph::holders`). The origin
//! is skipped only for a state its current store made: one whose newest Version is at or above
//! the floor of the origin's store incarnation, as the origin announced it in its last Hello. An
//! older state was made by a store the origin may have lost (wiped), and goes back to it like to
//! any other peer (engine bug 20).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use actix::Recipient;
use mailmesh_protocol::ids::{MailboxId, NodeId};
use mailmesh_protocol::merge::MergeEffect;
use mailmesh_protocol::records::{
    Annotation, LinkGraph, MailboxEntry, MessageRecord, UserSieve, UserSubscriptions,
};

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

/// The peer and item of a log row's storage key (`None` for a key not made by [`row_key`]).
pub fn split_row_key(key: &[u8]) -> Option<(NodeId, SyncItem)> {
    let zero = key.iter().position(|b| *b == 0)?;
    let peer = NodeId::new(std::str::from_utf8(&key[..zero]).ok()?).ok()?;
    Some((peer, SyncItem::decode(&key[zero + 1..])?))
}

/// How a change came to be, which decides the peers it is logged for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// A client wrote it here.
    Local,
    /// A peer's change was merged in with `effect`; `origin` is the node that produced the
    /// incoming state, and `newest` the newest Version counter in it ([`Dated`]; of several
    /// states taken whole, the lowest such): the origin holds the state only if its current
    /// store made it, that is if `newest` is at or above that store's floor.
    Remote {
        from: NodeId,
        origin: NodeId,
        effect: MergeEffect,
        newest: u64,
    },
}

/// The newest Version counter anywhere in a replicated state. A node's Version counters only
/// grow, and a store incarnation mints nothing below its floor, so a state whose newest Version
/// is below the floor of its origin's current store was made by an earlier store of that node.
pub trait Dated {
    fn newest(&self) -> u64;
}

impl Dated for MessageRecord {
    fn newest(&self) -> u64 {
        self.max_version().counter
    }
}

impl Dated for Annotation {
    fn newest(&self) -> u64 {
        self.version().counter
    }
}

impl<T: Dated> Dated for (String, T) {
    fn newest(&self) -> u64 {
        self.1.newest()
    }
}

impl Dated for MailboxEntry {
    fn newest(&self) -> u64 {
        self.max_version().counter
    }
}

impl Dated for UserSubscriptions {
    fn newest(&self) -> u64 {
        self.names.values().map(|s| s.version.counter).max().unwrap_or(0)
    }
}

impl Dated for LinkGraph {
    fn newest(&self) -> u64 {
        self.max_version().map(|v| v.counter).unwrap_or(0)
    }
}

impl Dated for UserSieve {
    fn newest(&self) -> u64 {
        let scripts = self.scripts.values().map(|s| s.version.counter);
        scripts
            .chain(self.active.as_ref().map(|a| a.version.counter))
            .max()
            .unwrap_or(0)
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
    /// The floor of each peer's store incarnation, as its last Hello announced it (kept with
    /// the peer's record in the store; a peer not in here has floor 0).
    floors: BTreeMap<NodeId, u64>,
}

impl Inner {
    /// Echo suppression for one change: whether `peer` already has a state that arrived here
    /// from `from` (if it arrived whole from a peer), was produced by `origin` and is dated
    /// `newest`.
    fn skips(
        &self,
        from: Option<&NodeId>,
        origin: &NodeId,
        newest: u64,
        peer: &NodeId,
        faults: &Faults,
    ) -> bool {
        if faults.no_echo_suppression {
            return false;
        }
        let Some(from) = from else { return false };
        from == peer
            || (origin == peer && !faults.origin_not_skipped && self.made_by_current_store(peer, newest))
    }

    /// Whether a state `peer` produced, dated `newest`, was made by the peer's current store.
    fn made_by_current_store(&self, peer: &NodeId, newest: u64) -> bool {
        newest >= self.floors.get(peer).copied().unwrap_or(0)
    }
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
        // A peer no longer configured is forgotten (its record too): it is new when it returns.
        inner.floors.retain(|p, _| peers.contains(p));
        inner.peers = peers;
    }

    /// Records the floor of `peer`'s store incarnation (from its Hello, or from the store at
    /// start). Called before the Hello's requeue is committed, so that every change merged from
    /// then on is judged by the new floor.
    pub fn set_peer_floor(&self, peer: &NodeId, floor: u64) {
        self.inner().floors.insert(peer.clone(), floor);
    }

    /// Echo suppression for one stored state (see the module documentation): whether `peer`
    /// has it already, because it sent it to us whole (`arrived_on`), or because it produced it
    /// (`origin`) with its current store (the state is dated `newest`).
    pub fn suppressed(
        &self,
        origin: &NodeId,
        arrived_on: Option<&NodeId>,
        newest: u64,
        peer: &NodeId,
    ) -> bool {
        self.inner().skips(arrived_on, origin, newest, peer, &self.faults)
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
        let skips = |peer: &NodeId| match provenance {
            Provenance::Local => false,
            Provenance::Remote {
                effect: MergeEffect::TookIncoming,
                from,
                origin,
                newest,
            } => inner.skips(Some(from), origin, *newest, peer, &self.faults),
            // A combined result is new to everyone, sender included. Unchanged logs nothing.
            Provenance::Remote { .. } => false,
        };
        let targets: Vec<NodeId> = inner
            .peers
            .iter()
            .filter(|p| !skips(p))
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
            newest: 10,
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
            newest: 10,
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
            newest: 10,
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

    /// Engine bug 20: the origin is skipped only for what its current store made.
    #[test]
    fn the_origin_is_skipped_only_for_what_its_current_store_made() {
        let log = SyncLog::new(NodeCounters::new(n("x"), crate::store::CounterState::default()));
        log.set_peers([n("a"), n("b"), n("c")].into());
        // b's store was wiped; its new incarnation mints Versions from 100 up.
        log.set_peer_floor(&n("b"), 100);
        let took = |newest| Provenance::Remote {
            from: n("a"),
            origin: n("b"),
            effect: MergeEffect::TookIncoming,
            newest,
        };
        let targets = |newest| {
            let logged = log.log(
                &mut Batch::new(),
                SyncItem::Mailbox(MailboxId(1)),
                &took(newest),
                None,
            );
            logged
                .rows
                .into_iter()
                .map(|(p, _, _)| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(targets(100), vec!["c"], "made by b's current store");
        assert_eq!(
            targets(99),
            vec!["b", "c"],
            "made by b's lost store: b gets it back"
        );
        // The same at sync time, for a stored state.
        assert!(log.suppressed(&n("b"), Some(&n("a")), 100, &n("b")));
        assert!(!log.suppressed(&n("b"), Some(&n("a")), 99, &n("b")));
        assert!(
            log.suppressed(&n("b"), Some(&n("a")), 99, &n("a")),
            "the sender has it"
        );
        assert!(
            !log.suppressed(&n("b"), None, 100, &n("b")),
            "made here: new to everyone"
        );
        // A peer never heard of has floor 0; a peer no longer configured is forgotten.
        assert!(log.suppressed(&n("c"), Some(&n("a")), 0, &n("c")));
        log.set_peers([n("a"), n("c")].into());
        assert!(log.suppressed(&n("b"), Some(&n("a")), 99, &n("b")));
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

    /// [`Tagged::merged`] together with the [`Provenance`] its log rows are written under: the
    /// pair every handler that stores a peer's change needs.
    pub fn merged_remote(
        item: T,
        effect: MergeEffect,
        from: &NodeId,
        origin: &NodeId,
        me: &NodeId,
    ) -> (Self, Provenance)
    where
        T: Dated,
    {
        let provenance = Provenance::Remote {
            from: from.clone(),
            origin: origin.clone(),
            effect,
            newest: item.newest(),
        };
        (Tagged::merged(item, effect, from, origin, me), provenance)
    }

    /// Whether `peer` already has this state.
    pub fn suppressed_for(&self, peer: &NodeId, log: &SyncLog) -> bool
    where
        T: Dated,
    {
        log.suppressed(&self.origin, self.arrived_on.as_ref(), self.item.newest(), peer)
    }
}
