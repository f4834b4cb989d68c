//! The replication side of the Directory actor: a user's mailbox entries, subscriptions and sieve
//! scripts as a peer sends them (apply) and as a Channel sends them (what this peer lacks), and
//! the handshake that notices a peer which lost its data.

use std::collections::BTreeSet;

use actix::prelude::*;
use mailmesh_protocol::ids::{MailboxId, NodeId, UidValidity};
use mailmesh_protocol::merge::{Merge, MergeEffect};
use mailmesh_protocol::records::{LinkGraph, MailboxEntry, UserSieve, UserSubscriptions};
use mailmesh_protocol::wire::Change;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::context::Writes;
use crate::directory::{holds, Directory};
use crate::error::{MailError, StoreError};
use crate::mailbox_sync::forget_peer_caches;
use crate::store::{decode, keys, Table};
use crate::sync_log::{Dated, Provenance, SyncItem, Tagged};

/// What this node knows of a peer's store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub incarnation: u128,
    /// Log rows up to this generation were queued because the peer lost its data (or is new):
    /// they are sent whole, without echo suppression, since the peer may have lost what it sent.
    pub requeue_mark: u64,
    /// The lowest Version counter the peer's store incarnation mints: the peer is skipped as
    /// the origin of a change only if the change is at or above it (engine bug 20).
    #[serde(default)]
    pub floor: u64,
}

/// The floor of every peer's store incarnation this node has a record of, for the sync log at
/// start (so a change merged before the first Hello is judged by the floor last announced).
pub fn known_peer_floors(store: &crate::store::Store) -> Result<Vec<(NodeId, u64)>, StoreError> {
    let mut floors = Vec::new();
    store.scan_prefix(Table::Peers, &[], None, |k, v| {
        // The configured peer set sits under a key starting with a zero byte; no node id does.
        if k.first() == Some(&0) {
            return Ok(true);
        }
        let record: PeerRecord = decode(v, "peer record")?;
        if let Ok(peer) = NodeId::new(String::from_utf8_lossy(k)) {
            floors.push((peer, record.floor));
        }
        Ok(true)
    })?;
    Ok(floors)
}

impl Directory {
    pub(crate) fn peer_record(&self, peer: &NodeId) -> Result<Option<PeerRecord>, StoreError> {
        self.ctx.store.get(Table::Peers, peer.as_str().as_bytes())
    }

    /// Queues everything this node holds for `peer`: every user's entries, subscriptions and
    /// sieve scripts, and every mailbox the peer holds a replica of.
    fn requeue_all(&self, writes: &mut Writes, peer: &NodeId) -> Result<u64, StoreError> {
        let mut users = BTreeSet::new();
        let mut mailboxes = Vec::new();
        self.ctx.store.scan_prefix(Table::Mailboxes, &[], None, |_, v| {
            let t: Tagged<MailboxEntry> = decode(v, "mailbox entry")?;
            users.insert(t.item.path.value.user.clone());
            if !t.item.is_deleted() && holds(&self.holders_of(&t.item), peer) {
                mailboxes.push(t.item.id);
            }
            Ok(true)
        })?;
        let mut sub_users = Vec::new();
        self.ctx
            .store
            .scan_prefix(Table::Subscriptions, &[], None, |k, _| {
                sub_users.push(String::from_utf8_lossy(k).into_owned());
                Ok(true)
            })?;
        let mut sieve_users = Vec::new();
        self.ctx.store.scan_prefix(Table::Sieve, &[], None, |k, _| {
            sieve_users.push(String::from_utf8_lossy(k).into_owned());
            Ok(true)
        })?;
        let log = &self.ctx.sync_log;
        let links = (!self.links.peers.is_empty()).then_some(SyncItem::Links);
        let items = links
            .into_iter()
            .chain(users.into_iter().map(SyncItem::MailboxList))
            .chain(sub_users.into_iter().map(SyncItem::Subscriptions))
            .chain(sieve_users.into_iter().map(SyncItem::Sieve))
            .chain(mailboxes.into_iter().map(SyncItem::Mailbox));
        let items: Vec<SyncItem> = items.collect();
        for item in &items {
            let logged = log.log_for(&mut writes.batch, peer, item.clone());
            writes.logged.merge(logged);
        }
        forget_peer_caches(writes, &self.ctx.store, peer)?;
        let mark = self.ctx.counters.next_log_generation();
        // Each item goes whole until a sync of it succeeds, across restarts too: a newer change
        // lifts its row's generation above the mark, and the Channel's memory of the older one
        // does not survive a restart (engine bug 21's restart gap).
        for item in &items {
            writes.batch.put_raw(
                Table::SyncWhole,
                crate::sync_log::row_key(peer, item),
                mark.to_be_bytes().to_vec(),
            );
        }
        Ok(mark)
    }
}

/// A peer introduced itself (on a new link, or after a failure) with its store incarnation and
/// that incarnation's floor. If the incarnation is new to this node, everything is queued for it
/// again. Answers with this node's incarnation and floor.
#[derive(Message)]
#[rtype(result = "Result<(u128, u64), MailError>")]
pub struct PeerHello {
    pub peer: NodeId,
    pub incarnation: u128,
    pub floor: u64,
}

impl Handler<PeerHello> for Directory {
    type Result = AtomicResponse<Self, Result<(u128, u64), MailError>>;

    fn handle(&mut self, msg: PeerHello, _: &mut Self::Context) -> Self::Result {
        let peer = msg.peer.clone();
        self.write_then(|act| {
            let ours = (act.ctx.counters.incarnation(), act.ctx.counters.incarnation_floor());
            let known = act.peer_record(&msg.peer)?;
            let mut writes = Writes::default();
            let record = if known.as_ref().map(|k| k.incarnation) != Some(msg.incarnation) {
                if known.is_some() {
                    info!(peer = %msg.peer, "peer's store is new (wiped or replaced): queueing everything for it");
                }
                let requeue_mark = act.requeue_all(&mut writes, &msg.peer)?;
                writes.logged.requeued(msg.peer.clone(), requeue_mark);
                PeerRecord {
                    incarnation: msg.incarnation,
                    requeue_mark,
                    floor: msg.floor,
                }
            } else {
                // The same store (a record kept from before floors were announced gets it now).
                PeerRecord {
                    floor: msg.floor,
                    ..known.clone().expect("known: same incarnation")
                }
            };
            if known.as_ref() != Some(&record) {
                writes.batch.put(Table::Peers, msg.peer.as_str().as_bytes().to_vec(), &record);
            }
            // From here on, a change this peer made with a store it no longer has is sent back
            // to it (what this node holds already is queued above).
            act.ctx.sync_log.set_peer_floor(&msg.peer, msg.floor);
            Ok((writes, ours))
        },
        // Greeted once the rows a new store needs are durable (see `Directory::greeted`).
        move |act| {
            act.greeted.insert(peer);
        })
    }
}

/// The mark below which a peer's log rows are sent whole.
#[derive(Message)]
#[rtype(result = "Result<u64, MailError>")]
pub struct RequeueMark {
    pub peer: NodeId,
}

impl Handler<RequeueMark> for Directory {
    type Result = Result<u64, MailError>;

    fn handle(&mut self, msg: RequeueMark, _: &mut Self::Context) -> Self::Result {
        Ok(self.peer_record(&msg.peer)?.map(|r| r.requeue_mark).unwrap_or(0))
    }
}

/// The entries of `user` to send to `peer`: all of them when `whole`, else those the peer does
/// not already have.
#[derive(Message)]
#[rtype(result = "Result<Vec<Change<MailboxEntry>>, MailError>")]
pub struct EntriesFor {
    pub peer: NodeId,
    pub user: String,
    pub whole: bool,
}

impl Handler<EntriesFor> for Directory {
    type Result = Result<Vec<Change<MailboxEntry>>, MailError>;

    fn handle(&mut self, msg: EntriesFor, _: &mut Self::Context) -> Self::Result {
        let mut ids = Vec::new();
        self.ctx
            .store
            .scan_prefix(Table::UserEntries, &keys::user_names(&msg.user), None, |k, _| {
                if let Some(id) = keys::parse_name_id(k) {
                    ids.push(id);
                }
                Ok(true)
            })?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(t) = self.stored_entry(id)? {
                if t.item.path.value.user == msg.user
                    && (msg.whole || !t.suppressed_for(&msg.peer, &self.ctx.sync_log))
                {
                    out.push(Change {
                        origin: t.origin,
                        item: t.item,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Merges a peer's entries of one user.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct ApplyEntries {
    pub from: NodeId,
    pub entries: Vec<Change<MailboxEntry>>,
}

impl Handler<ApplyEntries> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let mut writes = Writes::default();
            let mut changed: Vec<(Option<MailboxEntry>, MailboxEntry)> = Vec::new();
            for Change {
                origin,
                item: incoming,
            } in msg.entries
            {
                let local = self.stored_entry(incoming.id)?;
                let (mut merged, mut effect) = match &local {
                    Some(l)
                        if self.ctx.faults.mailbox_tombstone_not_sticky
                            && l.item.is_deleted()
                            && !incoming.is_deleted() =>
                    {
                        // Sabotage (simulator only): the live entry wins over the tombstone.
                        (incoming, MergeEffect::TookIncoming)
                    }
                    Some(l) => {
                        let mut m = l.item.clone();
                        let effect = m.merge_from(&incoming);
                        (m, effect)
                    }
                    None => (incoming, MergeEffect::TookIncoming),
                };
                if effect == MergeEffect::Unchanged {
                    continue;
                }
                self.ctx.counters.observe(merged.max_version());
                // This node's own leaving mark is news to everyone, the sender included.
                if self.mark_leaving(local.as_ref().map(|l| &l.item), &mut merged) {
                    effect = MergeEffect::Combined;
                }
                self.ctx.counters.observe_uidvalidity(merged.uidvalidity);
                let was_live = local.as_ref().is_some_and(|l| !l.item.is_deleted());
                if merged.is_deleted() && (was_live || local.is_none()) {
                    writes
                        .batch
                        .put_raw(Table::Purges, keys::mailbox(merged.id), Vec::new());
                }
                let (tagged, provenance) =
                    Tagged::merged_remote(merged.clone(), effect, &msg.from, &origin, &self.ctx.node);
                self.write_entry(&mut writes, local.as_ref().map(|l| &l.item), &tagged, &provenance);
                changed.push((local.map(|l| l.item), merged));
            }
            Ok::<_, MailError>((writes, changed))
        })();
        let pending = prepared.map(|(writes, changed)| (self.ctx.commit(writes, None), changed));
        AtomicResponse::new(Box::pin(
            async move {
                let (done, changed) = pending?;
                done.await?;
                Ok::<_, MailError>(changed)
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                for (old, new) in result? {
                    act.after_entry_commit(old.as_ref(), &new, ctx);
                }
                Ok(())
            }),
        ))
    }
}

/// A user's subscriptions or sieve scripts, to send to a peer (`None`: nothing it lacks).
#[derive(Message)]
#[rtype(result = "Result<Option<UserItemChange>, MailError>")]
pub struct UserItemFor {
    pub peer: NodeId,
    pub item: SyncItem,
    pub whole: bool,
}

#[derive(Clone, Debug)]
pub enum UserItemChange {
    Subscriptions(Change<UserSubscriptions>),
    Sieve(Change<UserSieve>),
}

impl Handler<UserItemFor> for Directory {
    type Result = Result<Option<UserItemChange>, MailError>;

    fn handle(&mut self, msg: UserItemFor, _: &mut Self::Context) -> Self::Result {
        let log = &self.ctx.sync_log;
        Ok(match &msg.item {
            SyncItem::Subscriptions(user) => self
                .subscriptions(user)?
                .filter(|t| msg.whole || !t.suppressed_for(&msg.peer, log))
                .map(|t| {
                    UserItemChange::Subscriptions(Change {
                        origin: t.origin,
                        item: t.item,
                    })
                }),
            SyncItem::Sieve(user) => self
                .sieve(user)?
                .filter(|t| msg.whole || !t.suppressed_for(&msg.peer, log))
                .map(|t| {
                    UserItemChange::Sieve(Change {
                        origin: t.origin,
                        item: t.item,
                    })
                }),
            _ => None,
        })
    }
}

/// Merges a peer's subscriptions or sieve scripts of one user.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct ApplyUserItem {
    pub from: NodeId,
    pub user: String,
    pub change: UserItemChange,
}

impl Directory {
    /// Merges a user's subscriptions or sieve scripts (`item` says which) from a peer.
    fn apply_user_item<T>(
        &self,
        writes: &mut Writes,
        from: &NodeId,
        item: SyncItem,
        local: Option<Tagged<T>>,
        incoming: Change<T>,
    ) where
        T: Merge + Dated + Serialize + 'static,
    {
        let (table, user) = match &item {
            SyncItem::Subscriptions(user) => (Table::Subscriptions, user.clone()),
            SyncItem::Sieve(user) => (Table::Sieve, user.clone()),
            _ => return,
        };
        let (merged, effect) = match local {
            Some(l) => {
                let mut m = l.item;
                let effect = m.merge_from(&incoming.item);
                (m, effect)
            }
            None => (incoming.item, MergeEffect::TookIncoming),
        };
        if effect == MergeEffect::Unchanged {
            return;
        }
        let (tagged, provenance) =
            Tagged::merged_remote(merged, effect, from, &incoming.origin, &self.ctx.node);
        self.write_user_item(writes, table, &user, &tagged, item, &provenance);
    }
}

impl Handler<ApplyUserItem> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: ApplyUserItem, _: &mut Self::Context) -> Self::Result {
        self.write(|act| {
            mailmesh_protocol::names::validate_user(&msg.user)?;
            let mut writes = Writes::default();
            match msg.change {
                UserItemChange::Subscriptions(change) => {
                    for state in change.item.names.values() {
                        act.ctx.counters.observe(&state.version);
                    }
                    let local = act.subscriptions(&msg.user)?;
                    let item = SyncItem::Subscriptions(msg.user.clone());
                    act.apply_user_item(&mut writes, &msg.from, item, local, change);
                }
                UserItemChange::Sieve(change) => {
                    for state in change.item.scripts.values() {
                        act.ctx.counters.observe(&state.version);
                    }
                    if let Some(active) = &change.item.active {
                        act.ctx.counters.observe(&active.version);
                    }
                    let local = act.sieve(&msg.user)?;
                    let item = SyncItem::Sieve(msg.user.clone());
                    act.apply_user_item(&mut writes, &msg.from, item, local, change);
                }
            }
            Ok((writes, ()))
        })
    }
}

/// The configured peers changed (at start or on a reload). A peer no longer configured is
/// forgotten, so if it is configured again it is treated as new and gets everything: changes
/// made while it was not configured were not logged for it.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct ConfiguredPeers {
    pub peers: BTreeSet<NodeId>,
}

/// Key of the configured peer set in the peers table (no node id starts with a zero byte).
const CONFIGURED_KEY: &[u8] = b"\0configured";

impl Handler<ConfiguredPeers> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: ConfiguredPeers, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let act = &*self;
            let before: BTreeSet<NodeId> = act
                .ctx
                .store
                .get(Table::Peers, CONFIGURED_KEY)?
                .unwrap_or_default();
            let mut writes = Writes::default();
            // This node's own links, published for the whole cluster to compute relays from.
            let mut links = act.links.clone();
            let me = act.ctx.node.clone();
            let mut relinked = Vec::new();
            if links.published(&me) != Some(&msg.peers) {
                links.publish(&me, msg.peers.clone(), act.ctx.counters.tick());
                let tagged = Tagged::local(links.clone(), &me);
                relinked = act.store_links(&mut writes, &tagged, &Provenance::Local)?;
            }
            if before != msg.peers {
                for gone in before.difference(&msg.peers) {
                    info!(peer = %gone, "peer no longer configured; it gets everything if it comes back");
                    writes
                        .batch
                        .delete(Table::Peers, gone.as_str().as_bytes().to_vec());
                }
                writes
                    .batch
                    .put(Table::Peers, CONFIGURED_KEY.to_vec(), &msg.peers);
            }
            Ok::<_, MailError>((writes, links, relinked))
        })();
        self.commit_links(prepared)
    }
}

/// Key of the link graph in the peers table.
pub const LINKS_KEY: &[u8] = b"\0links";

/// A mailbox whose effective holders a link graph change altered: its entry as stored after the
/// change, and its holders after.
pub(crate) struct Relinked {
    entry: MailboxEntry,
    after: BTreeSet<NodeId>,
}

impl Directory {
    /// Adds the writes that store `links` (the graph after a change) and log it for the peers,
    /// and, for every mailbox whose effective holders change with it, queues the mailbox for each
    /// peer that newly holds it (as a new location is: by every node that holds it before or
    /// after, with that peer's replication cache forgotten, since a former relay let its copy go).
    fn store_links(
        &self,
        writes: &mut Writes,
        links: &Tagged<LinkGraph>,
        provenance: &Provenance,
    ) -> Result<Vec<Relinked>, StoreError> {
        writes.batch.put(Table::Peers, LINKS_KEY.to_vec(), links);
        let logged = self
            .ctx
            .sync_log
            .log(&mut writes.batch, SyncItem::Links, provenance, None);
        writes.logged.merge(logged);
        let mut entries = Vec::new();
        self.ctx.store.scan_prefix(Table::Mailboxes, &[], None, |_, v| {
            let t: Tagged<MailboxEntry> = decode(v, "mailbox entry")?;
            if !t.item.is_deleted() && !t.item.locations.value.is_empty() {
                entries.push(t.item);
            }
            Ok(true)
        })?;
        let me = &self.ctx.node;
        let peers = self.ctx.sync_log.peers();
        let mut relinked = Vec::new();
        for old in entries {
            let before = self.links.holders_of(&old);
            let mut entry = old.clone();
            // A node the new graph does not need any more lets its copy go (and is marked so);
            // one needed again stops.
            let needed = links.item.needs(&entry, me);
            let marked = if entry.is_leaving(me) {
                needed && entry.set_leaving(me, false, self.ctx.counters.tick())
            } else {
                before.contains(me) && !needed && entry.set_leaving(me, true, self.ctx.counters.tick())
            };
            if marked {
                let tagged = Tagged::local(entry.clone(), me);
                self.write_entry(writes, Some(&old), &tagged, &Provenance::Local);
            }
            let after = links.item.holders_of(&entry);
            if before == after && !marked {
                continue;
            }
            if before.contains(me) || after.contains(me) {
                for peer in peers
                    .iter()
                    .filter(|p| after.contains(*p) && !before.contains(*p))
                {
                    writes
                        .batch
                        .delete(Table::ReplCache, crate::mailbox_sync::cache_key(entry.id, peer));
                    let logged =
                        self.ctx
                            .sync_log
                            .log_for(&mut writes.batch, peer, SyncItem::Mailbox(entry.id));
                    writes.logged.merge(logged);
                }
            }
            relinked.push(Relinked { entry, after });
        }
        Ok(relinked)
    }

    /// Commits a link graph change prepared by [`Directory::store_links`]; once durable, the
    /// graph is the one this node computes holders from, running Mailbox actors learn their new
    /// holders, and a node no longer needed as a relay lets its copy go once drained.
    fn commit_links(
        &mut self,
        prepared: Result<(Writes, LinkGraph, Vec<Relinked>), MailError>,
    ) -> AtomicResponse<Self, Result<(), MailError>> {
        let pending = prepared.map(|(writes, links, relinked)| {
            let done = (!writes.is_empty()).then(|| self.ctx.commit(writes, None));
            (done, links, relinked)
        });
        AtomicResponse::new(Box::pin(
            async move {
                let (done, links, relinked) = pending?;
                if let Some(done) = done {
                    done.await?;
                }
                Ok::<_, MailError>((links, relinked))
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                let (links, relinked) = result?;
                act.links = links;
                let me = act.ctx.node.clone();
                for Relinked { entry, after, .. } in relinked {
                    if let Some(addr) = act.running(entry.id) {
                        addr.do_send(crate::mailbox_sync::EntryUpdated {
                            entry: entry.clone(),
                            holders: after,
                        });
                    }
                    if entry.is_leaving(&me) && !act.links.needs(&entry, &me) {
                        info!(mailbox = %entry.id, "the link graph changed: this node is no longer needed as a relay of the mailbox");
                        act.release_when_drained(entry.id, ctx);
                    }
                }
                Ok(())
            }),
        ))
    }
}

/// The link graph to send to a peer (`None`: nothing it lacks).
#[derive(Message)]
#[rtype(result = "Result<Option<Change<LinkGraph>>, MailError>")]
pub struct LinksFor {
    pub peer: NodeId,
    pub whole: bool,
}

impl Handler<LinksFor> for Directory {
    type Result = Result<Option<Change<LinkGraph>>, MailError>;

    fn handle(&mut self, msg: LinksFor, _: &mut Self::Context) -> Self::Result {
        let stored: Option<Tagged<LinkGraph>> = self.ctx.store.get(Table::Peers, LINKS_KEY)?;
        Ok(stored
            .filter(|t| msg.whole || !t.suppressed_for(&msg.peer, &self.ctx.sync_log))
            .map(|t| Change {
                origin: t.origin,
                item: t.item,
            }))
    }
}

/// Merges a peer's link graph.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct ApplyLinks {
    pub from: NodeId,
    pub links: Change<LinkGraph>,
}

impl Handler<ApplyLinks> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: ApplyLinks, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let Change {
                origin,
                item: incoming,
            } = msg.links;
            if let Some(v) = incoming.max_version() {
                self.ctx.counters.observe(v);
            }
            let mut merged = self.links.clone();
            let effect = merged.merge_from(&incoming);
            let mut writes = Writes::default();
            let mut relinked = Vec::new();
            // This node's own register says what it has configured, whatever a peer sends: a
            // list of its own that wins by version (one its store published before a wipe, say)
            // is written over at once, as news for every peer (engine bug 33, seed 8990: every
            // node lost a link the configuration had, for good).
            let me = self.ctx.node.clone();
            let configured: Option<BTreeSet<NodeId>> = self.ctx.store.get(Table::Peers, CONFIGURED_KEY)?;
            let restored = match configured {
                Some(peers) if merged.published(&me) != Some(&peers) => {
                    merged.publish(&me, peers, self.ctx.counters.tick())
                }
                _ => false,
            };
            if restored {
                let tagged = Tagged::local(merged.clone(), &me);
                relinked = self.store_links(&mut writes, &tagged, &Provenance::Local)?;
            } else if effect.changed() {
                let (tagged, provenance) =
                    Tagged::merged_remote(merged.clone(), effect, &msg.from, &origin, &self.ctx.node);
                relinked = self.store_links(&mut writes, &tagged, &provenance)?;
            }
            Ok::<_, MailError>((writes, merged, relinked))
        })();
        self.commit_links(prepared)
    }
}

/// A peer letting its copy of a mailbox go asks whether this node keeps it (see
/// `Request::Keeps`). Answers with this store's incarnation.
#[derive(Message)]
#[rtype(result = "Result<(bool, u128), MailError>")]
pub struct KeepsMailbox {
    pub mailbox: MailboxId,
    pub uidvalidity: UidValidity,
}

impl Handler<KeepsMailbox> for Directory {
    type Result = Result<(bool, u128), MailError>;

    fn handle(&mut self, msg: KeepsMailbox, _: &mut Self::Context) -> Self::Result {
        let keeps = self.keeps(msg.mailbox, msg.uidvalidity)?;
        Ok((keeps, self.ctx.counters.incarnation()))
    }
}
