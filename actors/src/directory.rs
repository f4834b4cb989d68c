//! The Directory actor: the node's mailboxes.db, subscriptions and sieve scripts, and the keeper
//! of Mailbox actors.
//!
//! Names resolve to MailboxIds here; a rename changes the name register and keeps the id, a
//! delete leaves a tombstone with the uidvalidity, and re-creating the name mints a new id and a
//! higher uidvalidity. Mailbox actors are started on first use and kept in a bounded set of
//! recently used ones; the rest are let go (an actor stops once nobody holds its address), so
//! memory stays bounded however many mailboxes the node stores. A weak address of every actor
//! still running is kept, so one mailbox never has two actors.
//!
//! Every write here is atomic: the Directory handles no other message until its batch is
//! durable. Directory writes are rare next to message writes, and this keeps name checks exact.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use actix::WeakAddr;
use mailmesh_protocol::ids::{MailboxId, NodeId, UidValidity};
use mailmesh_protocol::names::{
    normalize_mailbox_name, validate_script_name, validate_user, HIERARCHY_SEPARATOR,
};
use mailmesh_protocol::records::{
    resolve_names, LinkGraph, MailboxDigest, MailboxEntry, MailboxPath, MailboxTombstone, PrunedSet,
    UserSieve, UserSubscriptions,
};
use mailmesh_protocol::version::Version;
use mailmesh_protocol::wire::{Request, Response};
use tracing::{debug, info, warn};

use crate::context::{NodeContext, Writes};
use crate::error::{MailError, StoreError};
use crate::mailbox::{Mailbox, MailboxCounters, MarkDeleted, ResumeMoves, StoredAnnotation, StoredRecord};
use crate::store::{decode, keys, Batch, Store, Table};
use crate::sync_log::{Provenance, SyncItem, Tagged};
use crate::transport::Transport;

/// How many Mailbox actors stay active, and for how long an unused one is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationPolicy {
    pub max_active: usize,
    pub idle_after: Duration,
}

impl Default for ActivationPolicy {
    fn default() -> Self {
        ActivationPolicy {
            max_active: 10_000,
            idle_after: Duration::from_secs(300),
        }
    }
}

/// A mailbox as listed to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    pub id: MailboxId,
    pub user: String,
    pub name: String,
    pub uidvalidity: UidValidity,
    /// This mailbox lost a name collision with a concurrently created one and shows a derived name.
    pub conflict_renamed: bool,
    /// Where clients may write it (its placement); empty means every node.
    pub locations: Vec<NodeId>,
    /// The nodes holding a replica: the locations and the relays between them; empty means all.
    pub holders: Vec<NodeId>,
    pub primary: Option<NodeId>,
}

pub struct Directory {
    pub(crate) ctx: NodeContext,
    policy: ActivationPolicy,
    active: BTreeMap<MailboxId, ActiveMailbox>,
    dormant: BTreeMap<MailboxId, WeakAddr<Mailbox>>,
    /// The cluster's link graph as this node knows it (stored in the peers table), from which
    /// every mailbox's effective holders follow.
    pub(crate) links: LinkGraph,
    /// Mailboxes whose copy this node is letting go, each with the peers its sync log still
    /// has changes of it for (empty: not looked yet, or the entry is being written).
    releasing: BTreeMap<MailboxId, BTreeSet<NodeId>>,
    /// Peers whose store this node has heard from (a Hello, its incarnation recorded and a new
    /// one's rows queued) since it started: only their replication caches are trusted to let a
    /// copy go (`handed_over`).
    pub(crate) greeted: BTreeSet<NodeId>,
    /// How this node asks a peer whether it keeps a mailbox before letting its own copy go
    /// (`None`: no peers, so nothing is ever handed over).
    transport: Option<Rc<dyn Transport>>,
    /// Per mailbox being let go: the peer that just answered it keeps the mailbox, and this
    /// node's leaving register when it asked. Only a yes to the current register, taken by the
    /// release attempt that follows the answer, lets the copy go.
    keeper_said_yes: BTreeMap<MailboxId, (NodeId, Version)>,
}

/// Whether `node` is among `holders` (empty: every node).
pub(crate) fn holds(holders: &BTreeSet<NodeId>, node: &NodeId) -> bool {
    holders.is_empty() || holders.contains(node)
}

struct ActiveMailbox {
    addr: Addr<Mailbox>,
    last_used_ms: i64,
}

impl Directory {
    /// The mailboxes with a row in `table`, a durable "work left to do" list that `started`
    /// resumes (`what` names it in the warning if the store cannot be read).
    fn mailboxes_left_in(&self, table: Table, what: &str) -> Vec<MailboxId> {
        // Keys start with the MailboxId (some tables add more after it): each id once.
        let mut ids = BTreeSet::new();
        if let Err(e) = self.ctx.store.scan_prefix(table, &[], None, |k, _| {
            if let Some(bytes) = k.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                ids.insert(MailboxId::from_bytes(bytes));
            }
            Ok(true)
        }) {
            warn!(error = %e, "cannot read the {what}");
        }
        ids.into_iter().collect()
    }

    pub fn new(ctx: NodeContext, policy: ActivationPolicy, transport: Option<Rc<dyn Transport>>) -> Self {
        let links = match ctx
            .store
            .get::<Tagged<LinkGraph>>(Table::Peers, crate::directory_sync::LINKS_KEY)
        {
            Ok(links) => links.map(|t| t.item).unwrap_or_default(),
            Err(e) => {
                // Learned again from the peers; until then mailboxes get no relays.
                warn!(error = %e, "cannot read the stored link graph");
                LinkGraph::default()
            }
        };
        Directory {
            ctx,
            policy,
            active: BTreeMap::new(),
            dormant: BTreeMap::new(),
            links,
            releasing: BTreeMap::new(),
            greeted: BTreeSet::new(),
            transport,
            keeper_said_yes: BTreeMap::new(),
        }
    }

    /// The nodes that keep a copy of `entry`'s mailbox (empty: every node): its locations and
    /// the relays that connect them in the link graph.
    pub(crate) fn holders_of(&self, entry: &MailboxEntry) -> BTreeSet<NodeId> {
        self.links.holders_of(entry)
    }

    /// Marks this node in `new` as letting its copy go when it held one under `old` and is not
    /// needed any more (see `MailboxEntry::leaving`), and unmarks it when it is needed again.
    /// Returns whether `new` changed.
    pub(crate) fn mark_leaving(&self, old: Option<&MailboxEntry>, new: &mut MailboxEntry) -> bool {
        let me = &self.ctx.node;
        if new.is_deleted() {
            return false;
        }
        let needed = self.links.needs(new, me);
        if new.is_leaving(me) {
            return needed && new.set_leaving(me, false, self.ctx.counters.tick());
        }
        let held = old.is_some_and(|o| !o.is_deleted() && holds(&self.holders_of(o), me));
        held && !needed && new.set_leaving(me, true, self.ctx.counters.tick())
    }

    pub(crate) fn stored_entry(&self, id: MailboxId) -> Result<Option<Tagged<MailboxEntry>>, StoreError> {
        self.ctx.store.get(Table::Mailboxes, &keys::mailbox(id))
    }

    pub(crate) fn entry(&self, id: MailboxId) -> Result<Option<MailboxEntry>, StoreError> {
        Ok(self.stored_entry(id)?.map(|t| t.item))
    }

    /// Adds the writes that store `new` in place of `old`: the entry, its name row (live
    /// mailboxes only), its row under its user, and the sync log rows of the user lists involved.
    pub(crate) fn write_entry(
        &self,
        writes: &mut Writes,
        old: Option<&MailboxEntry>,
        new: &Tagged<MailboxEntry>,
        provenance: &Provenance,
    ) {
        let entry = &new.item;
        let batch = &mut writes.batch;
        batch.put(Table::Mailboxes, keys::mailbox(entry.id), new);
        if becomes_primary_here(old, entry, &self.ctx.node) {
            // Settled after the commit (`after_entry_commit`); the row makes a restart settle
            // them should the node stop first (simulator, seed 21623).
            batch.put_raw(Table::Settles, keys::mailbox(entry.id), Vec::new());
        }
        let path = &entry.path.value;
        if let Some(old) = old {
            let old_path = &old.path.value;
            if !old.is_deleted() {
                batch.delete(Table::Names, keys::name(&old_path.user, &old_path.name, entry.id));
            }
            if old_path.user != path.user {
                batch.delete(Table::UserEntries, keys::user_entry(&old_path.user, entry.id));
                let logged = self.ctx.sync_log.log(
                    batch,
                    SyncItem::MailboxList(old_path.user.clone()),
                    provenance,
                    None,
                );
                writes.logged.merge(logged);
            }
        }
        if !entry.is_deleted() {
            batch.put_raw(
                Table::Names,
                keys::name(&path.user, &path.name, entry.id),
                Vec::new(),
            );
        }
        batch.put_raw(
            Table::UserEntries,
            keys::user_entry(&path.user, entry.id),
            Vec::new(),
        );
        // A node newly among the locations needs the messages: every holder with a channel to it
        // queues the mailbox for it. A holder is also a node leaving the locations by this very
        // change: it keeps its copy until that queue is drained, and when it was the only holder
        // nobody else can send the messages (a move off a sole holder lost them all before).
        // What this node knew of the peer's copy is forgotten: a node dropped from the locations
        // let its copy go, and added back it holds nothing, whatever the cache says (engine bug
        // 17); the next sync is a whole one.
        // Holders are the effective ones: a relay the new locations need is queued like a location.
        if let Some(old) = old {
            let me = &self.ctx.node;
            let (now, before) = (self.holders_of(entry), self.holders_of(old));
            let held = holds(&now, me) || (!old.is_deleted() && holds(&before, me));
            if !entry.is_deleted() && held {
                for peer in self.ctx.sync_log.peers() {
                    // A peer that wrote its leaving register back to false let its copy go (or
                    // is needed again and kept it: a whole sync then costs only time). Counted
                    // as a holder all along here (leaving, then a relay again by the graph), it
                    // was never queued, and its empty copy stayed empty (--locations seed 2).
                    let held_before =
                        !old.is_deleted() && holds(&before, &peer) && !entry.let_go_since(old, &peer);
                    if holds(&now, &peer) && !held_before {
                        batch.delete(Table::ReplCache, crate::mailbox_sync::cache_key(entry.id, &peer));
                        let logged = self
                            .ctx
                            .sync_log
                            .log_for(batch, &peer, SyncItem::Mailbox(entry.id));
                        writes.logged.merge(logged);
                    }
                }
            }
        }
        let logged = self
            .ctx
            .sync_log
            .log(batch, SyncItem::MailboxList(path.user.clone()), provenance, None);
        writes.logged.merge(logged);
    }

    /// Live mailboxes of `user`, with the names they are shown under.
    fn user_mailboxes(&self, user: &str) -> Result<Vec<(MailboxEntry, String, bool)>, StoreError> {
        let mut ids = Vec::new();
        self.ctx
            .store
            .scan_prefix(Table::Names, &keys::user_names(user), None, |k, _| {
                if let Some(id) = keys::parse_name_id(k) {
                    ids.push(id);
                }
                Ok(true)
            })?;
        let mut entries = BTreeMap::new();
        for id in ids {
            if let Some(e) = self.entry(id)? {
                entries.insert(id, e);
            }
        }
        let resolved = resolve_names(entries.values());
        Ok(resolved
            .into_iter()
            .filter_map(|r| entries.get(&r.id).map(|e| (e.clone(), r.path.name, r.renamed)))
            .collect())
    }

    /// The live mailbox shown as `name` to `user`.
    fn lookup(&self, user: &str, name: &str) -> Result<Option<MailboxEntry>, MailError> {
        validate_user(user)?;
        let name = normalize_mailbox_name(name)?;
        let mut ids = Vec::new();
        self.ctx
            .store
            .scan_prefix(Table::Names, &keys::name_prefix(user, &name), None, |k, _| {
                ids.extend(keys::parse_name_id(k));
                Ok(true)
            })?;
        if ids.len() == 1 {
            return Ok(self.entry(ids[0])?);
        }
        // A name collision, or a derived conflict name: resolve the user's whole list.
        Ok(self
            .user_mailboxes(user)?
            .into_iter()
            .find(|(_, shown, _)| *shown == name)
            .map(|(e, _, _)| e))
    }

    fn require(&self, user: &str, name: &str) -> Result<MailboxEntry, MailError> {
        self.lookup(user, name)?.ok_or_else(|| MailError::UnknownMailbox {
            user: user.to_string(),
            name: name.to_string(),
        })
    }

    fn info(&self, entry: &MailboxEntry, shown: Option<(&str, bool)>) -> MailboxInfo {
        let (name, renamed) = shown.unwrap_or((&entry.path.value.name, false));
        MailboxInfo {
            id: entry.id,
            user: entry.path.value.user.clone(),
            name: name.to_string(),
            uidvalidity: entry.uidvalidity,
            conflict_renamed: renamed,
            locations: entry.locations.value.iter().cloned().collect(),
            holders: self.holders_of(entry).into_iter().collect(),
            primary: entry.primary.value.clone(),
        }
    }

    /// Adds a new mailbox to `batch`.
    fn create_into(&mut self, writes: &mut Writes, user: &str, name: &str) -> MailboxEntry {
        let mut id = MailboxId(self.ctx.env.entropy.next_u128());
        while id.0 == 0 || matches!(self.entry(id), Ok(Some(_))) {
            id = MailboxId(self.ctx.env.entropy.next_u128());
        }
        let uidvalidity = self.ctx.counters.next_uidvalidity(self.ctx.env.unix_seconds(), 0);
        let version = self.ctx.counters.tick();
        let path = MailboxPath {
            user: user.to_string(),
            name: name.to_string(),
        };
        let entry = MailboxEntry::new(id, uidvalidity, path, version);
        self.write_entry(
            writes,
            None,
            &Tagged::local(entry.clone(), &self.ctx.node),
            &Provenance::Local,
        );
        entry
    }

    /// The Mailbox actor of a live mailbox, started if needed.
    fn activate(&mut self, entry: &MailboxEntry) -> Result<Addr<Mailbox>, StoreError> {
        let now = self.ctx.env.clock.unix_millis();
        if let Some(active) = self.active.get_mut(&entry.id) {
            active.last_used_ms = now;
            return Ok(active.addr.clone());
        }
        let addr = match self.dormant.remove(&entry.id).and_then(|w| w.upgrade()) {
            Some(addr) => addr,
            None => Mailbox::load(entry, self.holders_of(entry), self.ctx.clone())?.start(),
        };
        self.active.insert(
            entry.id,
            ActiveMailbox {
                addr: addr.clone(),
                last_used_ms: now,
            },
        );
        if self.active.len() > self.policy.max_active {
            self.let_go(self.active.len() - self.policy.max_active * 9 / 10, i64::MAX);
        }
        Ok(addr)
    }

    /// Moves up to `count` least recently used actors last used before `before_ms` to the
    /// dormant set, where only a weak address keeps track of them until they stop.
    fn let_go(&mut self, count: usize, before_ms: i64) {
        let mut by_age: Vec<(i64, MailboxId)> = self
            .active
            .iter()
            .filter(|(_, a)| a.last_used_ms < before_ms)
            .map(|(id, a)| (a.last_used_ms, *id))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(count) {
            if let Some(a) = self.active.remove(&id) {
                self.dormant.insert(id, a.addr.downgrade());
            }
        }
        self.dormant.retain(|_, w| w.upgrade().is_some());
    }

    /// What follows, once durable, from an entry changing from `old` to `new`: a deleted mailbox
    /// is purged, a running Mailbox actor learns its new locations and primary, and a node no
    /// longer among the locations lets its copy go once its peers have everything.
    pub(crate) fn after_entry_commit(
        &mut self,
        old: Option<&MailboxEntry>,
        new: &MailboxEntry,
        ctx: &mut Context<Self>,
    ) {
        let was_live = old.is_some_and(|o| !o.is_deleted());
        if new.is_deleted() {
            if was_live || old.is_none() {
                self.purge(new.id, ctx);
            }
            return;
        }
        if let Some(addr) = self.running(new.id) {
            addr.do_send(crate::mailbox_sync::EntryUpdated {
                entry: new.clone(),
                holders: self.holders_of(new),
            });
        }
        // A node that just became the primary settles the uid conflicts it holds, whether or not
        // its Mailbox actor was running (found by the simulator, seed 250).
        if becomes_primary_here(old, new, &self.ctx.node) {
            self.settle_held_conflicts(new);
        }
        if new.is_leaving(&self.ctx.node) && !self.links.needs(new, &self.ctx.node) {
            self.release_when_drained(new.id, ctx);
        }
    }

    /// Has the mailbox's actor promote the uid conflicts this node holds (it became the primary).
    fn settle_held_conflicts(&mut self, entry: &MailboxEntry) {
        match self.activate(entry) {
            Ok(addr) => addr.do_send(crate::mailbox_sync::SettleHeldConflicts),
            Err(e) => {
                warn!(mailbox = %entry.id, error = %e, "cannot open a mailbox to settle its uid conflicts")
            }
        }
    }

    /// Finishes the moves out of mailbox `id` that a stop interrupted ([`ResumeMoves`]); of a
    /// mailbox deleted since, only the rows go (its messages went with it).
    fn resume_moves(&mut self, id: MailboxId, ctx: &mut Context<Self>) {
        let addr = match self.entry(id) {
            Ok(Some(entry)) if !entry.is_deleted() => self.activate(&entry).map(Some),
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        };
        let node = self.ctx.clone();
        ctx.spawn(
            async move {
                let done = match addr {
                    Ok(Some(addr)) => addr.send(ResumeMoves).await.map_err(MailError::from).and_then(|r| r.map(|_| ())),
                    Ok(None) => forget_moves(&node, id).await.map_err(MailError::from),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = done {
                    warn!(mailbox = %id, error = %e, "cannot finish the moves a stop interrupted; the next start tries again");
                }
            }
            .into_actor(self),
        );
    }

    /// Drops this node's copy of a mailbox it no longer holds (no longer among its locations, or
    /// no longer a relay between them), once no sync log row for it is left (every change made
    /// here has reached a peer). The entry stays.
    pub(crate) fn release_when_drained(&mut self, id: MailboxId, ctx: &mut Context<Self>) {
        if self.releasing.insert(id, BTreeSet::new()).is_none() {
            self.try_release(id, ctx);
        }
    }

    /// The mailboxes this node is letting go of, each with the peers it still has changes of it
    /// for.
    pub(crate) fn releasing(&self) -> BTreeMap<MailboxId, BTreeSet<NodeId>> {
        self.releasing.clone()
    }

    fn try_release(&mut self, id: MailboxId, ctx: &mut Context<Self>) {
        // Only rows for configured peers count: the rows of a peer removed from the
        // configuration stay in the log but no channel drains them (the peer gets everything
        // again if it comes back), and waiting for them kept a copy from going for good.
        let item = SyncItem::Mailbox(id);
        // A keeper's yes counts for this very attempt only (it comes straight from the answer):
        // kept for a later one, after rows to drain, it could outlive the keeper's store (wiped
        // meanwhile), and the copy went on the word of a disk that no longer held the mailbox.
        let keeper_said_yes = self.keeper_said_yes.remove(&id);
        let configured = self.ctx.sync_log.peers();
        let mut waiting = BTreeSet::new();
        let scanned = self.ctx.store.scan_prefix(Table::SyncLog, &[], None, |k, _| {
            if let Some((peer, logged)) = crate::sync_log::split_row_key(k) {
                if logged == item && configured.contains(&peer) {
                    waiting.insert(peer);
                }
            }
            Ok(true)
        });
        let pending = !waiting.is_empty();
        let me = self.ctx.node.clone();
        let entry = match self.entry(id) {
            Ok(Some(e)) if !e.is_deleted() && e.is_leaving(&me) && !self.links.needs(&e, &me) => e,
            _ => {
                self.releasing.remove(&id);
                return;
            }
        };
        if let Some(w) = self.releasing.get_mut(&id) {
            *w = waiting;
        }
        if pending || scanned.is_err() {
            ctx.run_later(Duration::from_secs(5), move |act, ctx| act.try_release(id, ctx));
            return;
        }
        // Drained is not enough: the rows may have gone to peers that are letting their copies
        // go too, and each let go on the strength of the other (--wipes --locations seed 267:
        // the locations moved to a node no one had a link to yet, both old holders drained to
        // each other and purged, and a message was lost). The copy goes only once a peer that
        // keeps the mailbox has acknowledged everything this copy holds; until then it is sent
        // to every such peer, and where there is none yet the copy stays.
        match self.handed_over(&entry) {
            Ok(HandOver::Nothing) => {}
            Ok(HandOver::AckedBy(keepers)) => {
                // The caches say what the keepers stored, not that they still hold it: each may
                // be letting its own copy go on the strength of this one (simulator seed 8921:
                // two nodes cut off from each other placed the mailbox on each other, and both
                // let go). The copy goes only on a keeper's own yes, asked after this node
                // started leaving; a node that is leaving answers no, so two copies can never
                // go on each other's word.
                let leaving = entry.leaving.get(&me).map(|l| l.version.clone());
                let confirmed = keeper_said_yes
                    .as_ref()
                    .is_some_and(|(peer, asked)| keepers.contains(peer) && Some(asked) == leaving.as_ref());
                if !confirmed {
                    self.ask_keepers(id, entry.uidvalidity, keepers, leaving, ctx);
                    return;
                }
            }
            Ok(HandOver::SendTo(peers)) => {
                let mut writes = Writes::default();
                for peer in &peers {
                    let logged = self.ctx.sync_log.log_for(&mut writes.batch, peer, item.clone());
                    writes.logged.merge(logged);
                }
                if let Some(w) = self.releasing.get_mut(&id) {
                    w.extend(peers);
                }
                let done = self.ctx.commit(writes, None);
                ctx.spawn(done.into_actor(self).map(move |result, _, _| {
                    if let Err(e) = result {
                        warn!(mailbox = %id, error = %e, "cannot queue a copy being let go for a peer that keeps it; retrying");
                    }
                }));
                ctx.run_later(Duration::from_secs(5), move |act, ctx| act.try_release(id, ctx));
                return;
            }
            Err(e) => {
                warn!(mailbox = %id, error = %e, "cannot read what the peers that keep a mailbox have; retrying");
                ctx.run_later(Duration::from_secs(5), move |act, ctx| act.try_release(id, ctx));
                return;
            }
        }
        // Drained: this node says it is gone (so the relays it needed can go too) before its
        // copy goes, so no peer sends it anything for a copy it no longer has.
        let mut gone = entry.clone();
        gone.set_leaving(&me, false, self.ctx.counters.tick());
        let mut writes = Writes::default();
        self.write_entry(
            &mut writes,
            Some(&entry),
            &Tagged::local(gone.clone(), &me),
            &Provenance::Local,
        );
        // A crash part way through the purge leaves this row, and the next start finishes it.
        writes.batch.put_raw(Table::Purges, keys::mailbox(id), Vec::new());
        let done = self.ctx.commit(writes, None);
        ctx.wait(done.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(()) => {
                    act.releasing.remove(&id);
                    info!(mailbox = %id, "this node no longer holds the mailbox (not among its locations, not a relay): releasing its copy");
                    act.purge_as(id, Purge::Released, ctx);
                    act.after_entry_commit(Some(&entry), &gone, ctx);
                }
                Err(e) => {
                    // Later, not at once: a store that keeps failing (a crashed disk) made an
                    // immediate retry spin without end (simulator --locations, seed 244).
                    warn!(mailbox = %id, error = %e, "cannot record that this node let its copy go; retrying");
                    ctx.run_later(Duration::from_secs(5), move |act, ctx| act.try_release(id, ctx));
                }
            }
        }));
    }

    /// Whether a configured peer that keeps `entry`'s mailbox (a holder not letting its copy go)
    /// has acknowledged everything this node's copy holds, by its replication cache; if not,
    /// the peers to send the copy to (empty: no such peer is configured yet).
    fn handed_over(&self, entry: &MailboxEntry) -> Result<HandOver, StoreError> {
        let me = &self.ctx.node;
        let highest = self
            .ctx
            .store
            .get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(entry.id))?;
        // A copy that never stored anything has nothing to hand over.
        let Some(highest) = highest.map(|c| c.modseq) else {
            return Ok(HandOver::Nothing);
        };
        let keepers = self.holders_of(entry);
        let mut send_to = Vec::new();
        let mut acked_by = Vec::new();
        for peer in self.ctx.sync_log.peers() {
            if peer == *me || !keepers.contains(&peer) || entry.is_leaving(&peer) {
                continue;
            }
            // A cache from before this node last started may describe a store the peer has lost
            // since (wiped while this node was down): it counts only once the peer's Hello has
            // shown the same store, or queued everything again for a new one (--seed 1651: a
            // node restarted, let its copy go on the cache of a peer wiped meanwhile, and the
            // mailbox was lost).
            if !self.greeted.contains(&peer) {
                send_to.push(peer);
                continue;
            }
            let cache: Option<crate::mailbox_sync::ReplicationCache> = self
                .ctx
                .store
                .get(Table::ReplCache, &crate::mailbox_sync::cache_key(entry.id, &peer))?;
            if cache.is_some_and(|c| c.uidvalidity == entry.uidvalidity && c.acked.counter() >= highest) {
                acked_by.push(peer);
            } else {
                send_to.push(peer);
            }
        }
        if acked_by.is_empty() {
            Ok(HandOver::SendTo(send_to))
        } else {
            Ok(HandOver::AckedBy(acked_by))
        }
    }

    /// Asks `keepers` in turn whether each still keeps mailbox `id` (and is not letting it go);
    /// on the first yes from the store this node greeted, remembers it for this node's leaving
    /// register `leaving` and tries the release again at once, else in 5 s.
    fn ask_keepers(
        &mut self,
        id: MailboxId,
        uidvalidity: UidValidity,
        keepers: Vec<NodeId>,
        leaving: Option<Version>,
        ctx: &mut Context<Self>,
    ) {
        let Some(transport) = self.transport.clone() else {
            return;
        };
        let mut known = Vec::new();
        for peer in keepers {
            match self.peer_record(&peer) {
                Ok(Some(record)) => known.push((peer, record.incarnation)),
                Ok(None) => {}
                Err(e) => warn!(peer = %peer, error = %e, "cannot read what this node knows of a peer"),
            }
        }
        let ask = async move {
            for (peer, incarnation) in known {
                let answer = transport
                    .request(
                        &peer,
                        Request::Keeps {
                            mailbox: id,
                            uidvalidity,
                        },
                    )
                    .await;
                match answer {
                    Ok(Response::Keeps {
                        keeps: true,
                        incarnation: theirs,
                    }) if theirs == incarnation => {
                        return Some(peer);
                    }
                    Ok(_) => {}
                    Err(e) => debug!(peer = %peer, mailbox = %id, error = %e, "cannot ask a keeper"),
                }
            }
            None
        };
        ctx.spawn(
            ask.into_actor(self)
                .map(move |yes, act, ctx| match (yes, leaving) {
                    (Some(peer), Some(leaving)) => {
                        act.keeper_said_yes.insert(id, (peer, leaving));
                        act.try_release(id, ctx);
                    }
                    _ => {
                        ctx.run_later(Duration::from_secs(5), move |act, ctx| act.try_release(id, ctx));
                    }
                }),
        );
    }

    /// Whether this node keeps mailbox `id` of `uidvalidity`: it holds a copy by its entry and is
    /// not letting it go (the answer to a peer's `Keeps`).
    pub(crate) fn keeps(&self, id: MailboxId, uidvalidity: UidValidity) -> Result<bool, StoreError> {
        let me = &self.ctx.node;
        Ok(self.entry(id)?.is_some_and(|e| {
            !e.is_deleted()
                && e.uidvalidity == uidvalidity
                && !e.is_leaving(me)
                && !self.releasing.contains_key(&id)
                && holds(&self.holders_of(&e), me)
        }))
    }

    /// The running actor of a mailbox, if any.
    pub(crate) fn running(&self, id: MailboxId) -> Option<Addr<Mailbox>> {
        self.active
            .get(&id)
            .map(|a| a.addr.clone())
            .or_else(|| self.dormant.get(&id).and_then(|w| w.upgrade()))
    }

    /// Stops the actor of a deleted mailbox, then removes its records in chunks. A crash part way
    /// leaves the purge row, and the next start finishes the job.
    pub(crate) fn purge(&mut self, id: MailboxId, ctx: &mut Context<Self>) {
        self.purge_as(id, Purge::Deleted, ctx)
    }

    /// Stops the actor of a mailbox and removes its records in chunks, keeping what `purge` says.
    fn purge_as(&mut self, id: MailboxId, purge: Purge, ctx: &mut Context<Self>) {
        let addr = self
            .active
            .remove(&id)
            .map(|a| a.addr)
            .or_else(|| self.dormant.remove(&id).and_then(|w| w.upgrade()));
        let node = self.ctx.clone();
        // The Directory handles nothing else until the rows are gone: a message meanwhile could
        // start a new Mailbox actor on the half-purged rows (this node a holder again), whose
        // counters still counted the records the purge then deleted under it; the same records
        // coming back were counted twice and its digest never matched (simulator --locations,
        // seed 175). A purge is 1,000 records per commit, so the pause is short.
        ctx.wait(
            async move {
                if let Some(addr) = addr {
                    let _ = addr.send(MarkDeleted).await;
                }
                if let Err(e) = purge_mailbox(node, id, purge).await {
                    warn!(mailbox = %id, error = %e, "purging a deleted mailbox failed; it will be retried at the next start");
                }
            }
            .into_actor(self),
        );
    }

    /// Runs a directory write: `op` prepares writes against committed state, and no other message
    /// is handled until they are durable.
    pub(crate) fn write<R: 'static>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<(Writes, R), MailError>,
    ) -> AtomicResponse<Self, Result<R, MailError>> {
        self.write_then(op, |_| {})
    }

    /// Like [`Directory::write`], and runs `then` once the writes are durable (not if they fail).
    pub(crate) fn write_then<R: 'static>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<(Writes, R), MailError>,
        then: impl FnOnce(&mut Self) + 'static,
    ) -> AtomicResponse<Self, Result<R, MailError>> {
        let pending = op(self).map(|(writes, r)| {
            let done = if writes.is_empty() {
                None
            } else {
                Some(self.ctx.commit(writes, None))
            };
            (done, r)
        });
        AtomicResponse::new(Box::pin(
            async move {
                let (done, r) = pending?;
                if let Some(done) = done {
                    done.await?;
                }
                Ok(r)
            }
            .into_actor(self)
            .map(move |result, act, _| {
                if result.is_ok() {
                    then(act);
                }
                result
            }),
        ))
    }

    pub(crate) fn subscriptions(&self, user: &str) -> Result<Option<Tagged<UserSubscriptions>>, StoreError> {
        self.ctx.store.get(Table::Subscriptions, &keys::user(user))
    }

    pub(crate) fn sieve(&self, user: &str) -> Result<Option<Tagged<UserSieve>>, StoreError> {
        self.ctx.store.get(Table::Sieve, &keys::user(user))
    }

    /// Stores an entry a client changed here, and tells its running Mailbox actor.
    /// Returns the entry as written (this node marked as leaving, if the change lets it go).
    pub(crate) fn write_local_entry(
        &self,
        writes: &mut Writes,
        old: &MailboxEntry,
        mut new: MailboxEntry,
    ) -> MailboxEntry {
        self.mark_leaving(Some(old), &mut new);
        let tagged = Tagged::local(new, &self.ctx.node);
        self.write_entry(writes, Some(old), &tagged, &Provenance::Local);
        tagged.item
    }

    /// One client change to `user`'s sieve scripts: `edit` checks the stored state and changes
    /// it at a Version it ticks (none when it refuses); the result is stored and logged, and
    /// the Version answered.
    fn edit_sieve(
        &mut self,
        user: String,
        edit: impl FnOnce(&mut UserSieve, &crate::counters::NodeCounters) -> Result<Version, MailError>,
    ) -> AtomicResponse<Self, Result<Version, MailError>> {
        self.write(move |act| {
            validate_user(&user)?;
            let mut sieve = act.sieve(&user)?.map(|t| t.item).unwrap_or_default();
            let version = edit(&mut sieve, &act.ctx.counters)?;
            let mut writes = Writes::default();
            act.save_local_sieve(&mut writes, &user, sieve);
            Ok((writes, version))
        })
    }

    fn save_local_sieve(&self, writes: &mut Writes, user: &str, sieve: UserSieve) {
        let tagged = Tagged::local(sieve, &self.ctx.node);
        let item = SyncItem::Sieve(user.to_string());
        self.write_user_item(writes, Table::Sieve, user, &tagged, item, &Provenance::Local);
    }

    /// Stores a user's subscriptions or sieve scripts (`table`) and logs `item` for the peers.
    pub(crate) fn write_user_item<T: serde::Serialize + 'static>(
        &self,
        writes: &mut Writes,
        table: Table,
        user: &str,
        value: &Tagged<T>,
        item: SyncItem,
        provenance: &Provenance,
    ) {
        writes.batch.put(table, keys::user(user), value);
        let logged = self.ctx.sync_log.log(&mut writes.batch, item, provenance, None);
        writes.logged.merge(logged);
    }
}

/// Deletes the `moves` rows of mailbox `id` (a mailbox deleted or let go: nothing to expunge).
async fn forget_moves(node: &NodeContext, id: MailboxId) -> Result<(), StoreError> {
    let mut batch = Batch::new();
    forget_moves_into(&node.store, &mut batch, id)?;
    node.commit(
        Writes {
            batch,
            logged: Default::default(),
        },
        None,
    )
    .await
}

fn forget_moves_into(store: &Store, batch: &mut Batch, id: MailboxId) -> Result<(), StoreError> {
    delete_mailbox_rows(store, batch, Table::Moves, id)
}

/// Adds to `batch` the deletion of every row of `table` keyed under mailbox `id`.
fn delete_mailbox_rows(
    store: &Store,
    batch: &mut Batch,
    table: Table,
    id: MailboxId,
) -> Result<(), StoreError> {
    store.scan_prefix(table, &keys::mailbox(id), None, |k, _| {
        batch.delete(table, k.to_vec());
        Ok(true)
    })
}

/// Why a mailbox's rows go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purge {
    /// The mailbox is deleted: nothing of it is kept.
    Deleted,
    /// This node no longer holds it: the copy goes, its UIDNEXT and modseq counter stay.
    Released,
}

/// Whether a copy being let go has reached a node that keeps the mailbox (`handed_over`).
enum HandOver {
    /// The copy never stored anything.
    Nothing,
    /// These keepers have acknowledged all of it (by their replication caches); one of them must
    /// still say it keeps the mailbox.
    AckedBy(Vec<NodeId>),
    /// No keeper has all of it: queue it for these.
    SendTo(Vec<NodeId>),
}

/// Deletes every row of a deleted mailbox, 1,000 records per batch, releasing its bodies; a
/// released copy keeps its counters' floor.
async fn purge_mailbox(node: NodeContext, id: MailboxId, purge: Purge) -> Result<(), StoreError> {
    let store = &node.store;
    // A copy let go keeps what it knows was expunged: the compacted messages, and the expunged
    // records it drops now, folded in batch by batch with their deletion (so a crash half way
    // loses none). Held again, it would otherwise take a stale peer's record of a message it had
    // seen expunged for a live one at a retired uid and promote it back into view (simulator
    // seed 1209 with --steps 300: a move's sources came back on the only holder, the node that
    // had let its copy go and been given the mailbox again). AppendIds are never reused, so the
    // set refuses nothing new.
    let mut kept = match purge {
        Purge::Released => store
            .get::<PrunedSet>(Table::Pruned, &keys::mailbox(id))?
            .unwrap_or_default(),
        Purge::Deleted => PrunedSet::default(),
    };
    loop {
        let mut batch = Batch::new();
        let mut n = 0;
        let mut kept_more = false;
        store.scan_prefix(Table::Messages, &keys::mailbox(id), None, |k, v| {
            let s: StoredRecord = decode(v, "message record")?;
            let aid = &s.record.append_id;
            if purge == Purge::Released && s.record.is_expunged() {
                kept_more |= kept.insert(aid);
                kept.retire(s.record.uid.value.0);
            }
            batch.delete(Table::Messages, k.to_vec());
            batch.delete(Table::Uids, keys::uid(id, s.record.uid.value, aid));
            if purge == Purge::Released && !s.record.is_expunged() && !s.hidden {
                // Held again, this copy shows no other message at this uid first (engine bug
                // 30, --locations seed 150: a contested uid showed the other message).
                batch.put_raw(
                    Table::ShownBefore,
                    keys::uid(id, s.record.uid.value, aid),
                    Vec::new(),
                );
            }
            batch.delete(Table::Modseqs, keys::modseq(id, s.modseq));
            if !s.record.is_expunged() {
                batch.release_body(s.record.guid);
            }
            n += 1;
            Ok(n < 1000)
        })?;
        if n == 0 {
            break;
        }
        if kept_more {
            batch.put(Table::Pruned, keys::mailbox(id), &kept);
        }
        node.commit(
            Writes {
                batch,
                logged: Default::default(),
            },
            None,
        )
        .await?;
    }
    let mut batch = Batch::new();
    store.scan_prefix(Table::Annotations, &keys::mailbox(id), None, |k, v| {
        let _: StoredAnnotation = decode(v, "annotation")?;
        batch.delete(Table::Annotations, k.to_vec());
        Ok(true)
    })?;
    delete_mailbox_rows(store, &mut batch, Table::ReplCache, id)?;
    if purge == Purge::Deleted {
        delete_mailbox_rows(store, &mut batch, Table::ShownBefore, id)?;
    }
    forget_moves_into(store, &mut batch, id)?;
    let counters = match purge {
        Purge::Deleted => None,
        Purge::Released => store.get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(id))?,
    };
    match counters {
        // A copy let go may be held again (the mailbox placed back here) and take client writes
        // before it hears from another holder: with counters from nothing it showed UIDNEXT 1
        // and handed out uids this node's clients had seen name other messages (engine bug 23,
        // simulator seed 82 with --locations). So the floor stays: UIDNEXT and the modseq
        // counter, with the counts of the empty copy and the digest of the expunges it keeps.
        Some(counters) => {
            // A kept expunge counts in the digest as a peer's compacted one does; a set not
            // counted would keep what a peer sends from being counted (simulator
            // --locations, seed 43, when the set went whole with the records).
            let mut digest = MailboxDigest::default();
            digest.add_pruned_set(&kept);
            batch.put(
                Table::MailboxState,
                keys::mailbox(id),
                // The new history starts one above the old one's last point, so that a peer's
                // cache at that last point is recognised as stale (engine bug 26).
                &MailboxCounters {
                    uidnext: counters.uidnext,
                    modseq: counters.modseq + 1,
                    history_from: counters.modseq + 1,
                    digest,
                    ..Default::default()
                },
            )
        }
        None => batch.delete(Table::MailboxState, keys::mailbox(id)),
    }
    // The uids the expunged messages held stay retired in a released copy, as its counters'
    // floor does: held again, it shows nothing at a uid it once showed expunged (or a promoted
    // message left), and tells the others so (engine bug 32, seed 4062: the only holder, wiped,
    // gave uid 1 to a new message, which a copy held again showed where its clients had seen
    // another). With them stays the set of expunged AppendIds, kept above.
    if purge == Purge::Released && !kept.is_empty() {
        batch.put(Table::Pruned, keys::mailbox(id), &kept);
    } else {
        batch.delete(Table::Pruned, keys::mailbox(id));
    }
    batch.delete(Table::Purges, keys::mailbox(id));
    batch.delete(Table::Settles, keys::mailbox(id));
    node.commit(
        Writes {
            batch,
            logged: Default::default(),
        },
        None,
    )
    .await?;
    match purge {
        Purge::Deleted => info!(mailbox = %id, "deleted mailbox purged"),
        Purge::Released => info!(mailbox = %id, "released copy purged"),
    }
    Ok(())
}

impl Actor for Directory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A purge row is written with a tombstone, or with the entry in which this node let
        // its copy go: a live entry means a released copy, whose counters' floor stays.
        for id in self.mailboxes_left_in(Table::Purges, "unfinished purges") {
            let purge = match self.entry(id) {
                Ok(Some(entry)) if !entry.is_deleted() => Purge::Released,
                _ => Purge::Deleted,
            };
            self.purge_as(id, purge, ctx);
        }
        // Primaries this node became whose uid conflicts were not settled before it stopped.
        for id in self.mailboxes_left_in(Table::Settles, "mailboxes left to settle") {
            match self.entry(id) {
                Ok(Some(entry)) if !entry.is_deleted() => self.settle_held_conflicts(&entry),
                Ok(_) => {}
                Err(e) => warn!(mailbox = %id, error = %e, "cannot read a mailbox left to settle"),
            }
        }
        // Copies this node was letting go when it stopped.
        let me = self.ctx.node.clone();
        let mut leaving = Vec::new();
        if let Err(e) = self.ctx.store.scan_prefix(Table::Mailboxes, &[], None, |_, v| {
            let t: Tagged<MailboxEntry> = decode(v, "mailbox entry")?;
            if !t.item.is_deleted() && t.item.is_leaving(&me) {
                leaving.push(t.item.id);
            }
            Ok(true)
        }) {
            warn!(error = %e, "cannot read the mailboxes this node was letting go");
        }
        for id in leaving {
            self.release_when_drained(id, ctx);
        }
        // Moves whose copies were durable when the node stopped, their sources not yet expunged.
        for id in self.mailboxes_left_in(Table::Moves, "interrupted moves") {
            self.resume_moves(id, ctx);
        }
        let sweep = (self.policy.idle_after / 2).max(Duration::from_millis(10));
        ctx.run_interval(sweep, |act, _| {
            let before = act.ctx.env.clock.unix_millis() - act.policy.idle_after.as_millis() as i64;
            act.let_go(usize::MAX, before);
        });
    }
}

/// Creates a mailbox, and any missing superiors of a hierarchical name.
#[derive(Message)]
#[rtype(result = "Result<MailboxInfo, MailError>")]
pub struct CreateMailbox {
    pub user: String,
    pub name: String,
}

impl Handler<CreateMailbox> for Directory {
    type Result = AtomicResponse<Self, Result<MailboxInfo, MailError>>;

    fn handle(&mut self, msg: CreateMailbox, _: &mut Self::Context) -> Self::Result {
        self.write(|act| {
            validate_user(&msg.user)?;
            let name = normalize_mailbox_name(&msg.name)?;
            if act.lookup(&msg.user, &name)?.is_some() {
                return Err(MailError::MailboxExists { user: msg.user, name });
            }
            let mut writes = Writes::default();
            let levels: Vec<&str> = name.split(HIERARCHY_SEPARATOR).collect();
            for depth in 1..levels.len() {
                let superior = levels[..depth].join("/");
                if act.lookup(&msg.user, &superior)?.is_none() {
                    act.create_into(&mut writes, &msg.user, &superior);
                }
            }
            let entry = act.create_into(&mut writes, &msg.user, &name);
            Ok((writes, act.info(&entry, None)))
        })
    }
}

/// Renames a mailbox (and its inferiors), possibly to another user. The id stays.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct RenameMailbox {
    pub user: String,
    pub from: String,
    pub to_user: Option<String>,
    pub to: String,
}

impl Handler<RenameMailbox> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: RenameMailbox, _: &mut Self::Context) -> Self::Result {
        self.write(|act| {
            let to_user = msg.to_user.clone().unwrap_or_else(|| msg.user.clone());
            validate_user(&to_user)?;
            let from = normalize_mailbox_name(&msg.from)?;
            let to = normalize_mailbox_name(&msg.to)?;
            if from == "INBOX" {
                return Err(MailError::NotAllowed("rename INBOX; move its messages instead"));
            }
            if to == "INBOX" && to_user == msg.user {
                return Err(MailError::MailboxExists {
                    user: to_user,
                    name: to,
                });
            }
            if to_user == msg.user && (to == from || to.starts_with(&format!("{from}/"))) {
                return Err(MailError::NotAllowed("rename a mailbox into itself"));
            }
            let entry = act.require(&msg.user, &from)?;
            // The mailbox and its inferiors, each with its new name.
            let mut moves = vec![(entry, to.clone())];
            let inferior_prefix = format!("{from}/");
            for (e, shown, _) in act.user_mailboxes(&msg.user)? {
                if let Some(rest) = shown.strip_prefix(&inferior_prefix) {
                    moves.push((e, format!("{to}/{rest}")));
                }
            }
            for (_, new_name) in &moves {
                if act.lookup(&to_user, new_name)?.is_some() {
                    return Err(MailError::MailboxExists {
                        user: to_user.clone(),
                        name: new_name.clone(),
                    });
                }
            }
            let mut writes = Writes::default();
            for (e, new_name) in moves {
                let mut renamed = e.clone();
                let version = act.ctx.counters.tick();
                renamed.path.set(
                    MailboxPath {
                        user: to_user.clone(),
                        name: new_name,
                    },
                    version,
                );
                act.write_local_entry(&mut writes, &e, renamed);
            }
            Ok((writes, ()))
        })
    }
}

/// Deletes a mailbox: a tombstone with its uidvalidity stays, its messages are purged.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct DeleteMailbox {
    pub user: String,
    pub name: String,
}

impl Handler<DeleteMailbox> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: DeleteMailbox, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let name = normalize_mailbox_name(&msg.name)?;
            if name == "INBOX" {
                return Err(MailError::NotAllowed("delete INBOX"));
            }
            let mut entry = self.require(&msg.user, &name)?;
            let version = self.ctx.counters.tick();
            entry.deleted = Some(MailboxTombstone {
                version,
                uidvalidity: entry.uidvalidity,
            });
            let old = self.require(&msg.user, &name)?;
            let mut writes = Writes::default();
            self.write_local_entry(&mut writes, &old, entry.clone());
            writes
                .batch
                .put_raw(Table::Purges, keys::mailbox(entry.id), Vec::new());
            Ok((entry.id, writes))
        })();
        let done = prepared.map(|(id, writes)| (id, self.ctx.commit(writes, None)));
        AtomicResponse::new(Box::pin(
            async move {
                let (id, done) = done?;
                done.await?;
                Ok::<_, MailError>(id)
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                let id = result?;
                act.purge(id, ctx);
                Ok(())
            }),
        ))
    }
}

/// The live mailboxes of a user, sorted by name.
#[derive(Message)]
#[rtype(result = "Result<Vec<MailboxInfo>, MailError>")]
pub struct ListMailboxes {
    pub user: String,
}

impl Handler<ListMailboxes> for Directory {
    type Result = Result<Vec<MailboxInfo>, MailError>;

    fn handle(&mut self, msg: ListMailboxes, _: &mut Self::Context) -> Self::Result {
        validate_user(&msg.user)?;
        let mut out: Vec<MailboxInfo> = self
            .user_mailboxes(&msg.user)?
            .iter()
            .map(|(e, shown, renamed)| self.info(e, Some((shown, *renamed))))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// One annotation entry of each of a user's live mailboxes that has a value, as (mailbox name,
/// value) in name order. Read from the store, without starting the mailboxes' actors, so that a
/// front end can show it beside a listing cheaply (IMAP's LIST shows RFC 6154's
/// `/private/specialuse` so); what a Mailbox has not committed yet is not seen.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, Vec<u8>)>, MailError>")]
pub struct ListAnnotation {
    pub user: String,
    pub entry: String,
}

impl Handler<ListAnnotation> for Directory {
    type Result = Result<Vec<(String, Vec<u8>)>, MailError>;

    fn handle(&mut self, msg: ListAnnotation, _: &mut Self::Context) -> Self::Result {
        validate_user(&msg.user)?;
        let mut out = Vec::new();
        for (entry, shown, _) in self.user_mailboxes(&msg.user)? {
            let key = keys::annotation(entry.id, &msg.entry);
            let stored = self.ctx.store.get::<StoredAnnotation>(Table::Annotations, &key)?;
            if let Some(value) = stored.as_ref().and_then(|a| a.annotation.value()) {
                out.push((shown, value.to_vec()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A mailbox's actor, started if needed.
#[derive(Message)]
#[rtype(result = "Result<OpenedMailbox, MailError>")]
pub struct OpenMailbox {
    pub user: String,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct OpenedMailbox {
    pub info: MailboxInfo,
    pub addr: Addr<Mailbox>,
}

impl Handler<OpenMailbox> for Directory {
    type Result = Result<OpenedMailbox, MailError>;

    fn handle(&mut self, msg: OpenMailbox, _: &mut Self::Context) -> Self::Result {
        let entry = self.require(&msg.user, &msg.name)?;
        let addr = self.activate(&entry)?;
        Ok(OpenedMailbox {
            info: self.info(&entry, None),
            addr,
        })
    }
}

/// A mailbox's actor by id (replication and tools address mailboxes by id).
#[derive(Message)]
#[rtype(result = "Result<OpenedMailbox, MailError>")]
pub struct OpenMailboxById {
    pub id: MailboxId,
}

impl Handler<OpenMailboxById> for Directory {
    type Result = Result<OpenedMailbox, MailError>;

    fn handle(&mut self, msg: OpenMailboxById, _: &mut Self::Context) -> Self::Result {
        let entry = self.entry(msg.id)?.ok_or(MailError::UnknownMailboxId(msg.id))?;
        if entry.is_deleted() {
            return Err(MailError::MailboxDeleted(msg.id));
        }
        let addr = self.activate(&entry)?;
        Ok(OpenedMailbox {
            info: self.info(&entry, None),
            addr,
        })
    }
}

/// The node that is a mailbox's primary (`effective_primary`: the named primary if it holds
/// the mailbox, else its creator if it does, else the lowest-named location); `None` when the
/// user has no live mailbox of that name. Front ends use it to send a client to the primary.
#[derive(Message)]
#[rtype(result = "Result<Option<NodeId>, MailError>")]
pub struct PrimaryOf {
    pub user: String,
    pub name: String,
}

impl Handler<PrimaryOf> for Directory {
    type Result = Result<Option<NodeId>, MailError>;

    fn handle(&mut self, msg: PrimaryOf, _: &mut Self::Context) -> Self::Result {
        Ok(self
            .lookup(&msg.user, &msg.name)?
            .map(|entry| crate::mailbox::primary_of(&entry)))
    }
}

/// Sets where a mailbox is replicated and which node is its preferred primary.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct SetLocations {
    pub user: String,
    pub name: String,
    /// Empty: every node.
    pub locations: Vec<NodeId>,
    pub primary: Option<NodeId>,
}

impl Handler<SetLocations> for Directory {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: SetLocations, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let mut entry = self.require(&msg.user, &msg.name)?;
            if let Some(p) = &msg.primary {
                if !msg.locations.is_empty() && !msg.locations.contains(p) {
                    return Err(MailError::NotAllowed(
                        "name a primary that is not among the locations",
                    ));
                }
            }
            let old = entry.clone();
            let version = self.ctx.counters.tick();
            entry
                .locations
                .set(msg.locations.into_iter().collect(), version.clone());
            entry.primary.set(msg.primary, version);
            let mut writes = Writes::default();
            let entry = self.write_local_entry(&mut writes, &old, entry);
            Ok((self.ctx.commit(writes, None), old, entry))
        })();
        AtomicResponse::new(Box::pin(
            async move {
                let (done, old, new) = prepared?;
                done.await?;
                Ok::<_, MailError>((old, new))
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                let (old, new) = result?;
                act.after_entry_commit(Some(&old), &new, ctx);
                Ok(())
            }),
        ))
    }
}

/// Subscribes (`true`) or unsubscribes a user to a mailbox name (which need not exist).
/// Subscribes or unsubscribes a name. Answers with the version written (`None`: the name was
/// already in that state, nothing written).
#[derive(Message)]
#[rtype(result = "Result<Option<Version>, MailError>")]
pub struct Subscribe {
    pub user: String,
    pub name: String,
    pub subscribed: bool,
}

impl Handler<Subscribe> for Directory {
    type Result = AtomicResponse<Self, Result<Option<Version>, MailError>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.write(|act| {
            validate_user(&msg.user)?;
            let name = normalize_mailbox_name(&msg.name)?;
            let mut subs = act.subscriptions(&msg.user)?.map(|t| t.item).unwrap_or_default();
            let mut writes = Writes::default();
            let currently = subs.names.get(&name).is_some_and(|s| s.value);
            let mut written = None;
            if currently != msg.subscribed {
                let version = act.ctx.counters.tick();
                written = Some(version.clone());
                subs.set(&name, msg.subscribed, version);
                let tagged = Tagged::local(subs, &act.ctx.node);
                let item = SyncItem::Subscriptions(msg.user.clone());
                act.write_user_item(
                    &mut writes,
                    Table::Subscriptions,
                    &msg.user,
                    &tagged,
                    item,
                    &Provenance::Local,
                );
            }
            Ok((writes, written))
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<String>, MailError>")]
pub struct ListSubscriptions {
    pub user: String,
}

impl Handler<ListSubscriptions> for Directory {
    type Result = Result<Vec<String>, MailError>;

    fn handle(&mut self, msg: ListSubscriptions, _: &mut Self::Context) -> Self::Result {
        validate_user(&msg.user)?;
        Ok(self
            .subscriptions(&msg.user)?
            .map(|t| t.item)
            .unwrap_or_default()
            .subscribed()
            .map(str::to_string)
            .collect())
    }
}

/// Stores (creates or replaces) a sieve script; answers with the version written.
#[derive(Message)]
#[rtype(result = "Result<Version, MailError>")]
pub struct PutScript {
    pub user: String,
    pub name: String,
    pub content: Vec<u8>,
}

impl Handler<PutScript> for Directory {
    type Result = AtomicResponse<Self, Result<Version, MailError>>;

    fn handle(&mut self, msg: PutScript, _: &mut Self::Context) -> Self::Result {
        let max = self.ctx.limits.max_script_bytes;
        self.edit_sieve(msg.user, move |sieve, counters| {
            validate_script_name(&msg.name)?;
            if msg.content.len() > max {
                return Err(MailError::ScriptTooLarge {
                    size: msg.content.len(),
                    max,
                });
            }
            let version = counters.tick();
            sieve.put(&msg.name, msg.content, version.clone());
            Ok(version)
        })
    }
}

/// Deletes a sieve script, leaving a deleted marker; answers with the marker's version.
#[derive(Message)]
#[rtype(result = "Result<Version, MailError>")]
pub struct DeleteScript {
    pub user: String,
    pub name: String,
}

impl Handler<DeleteScript> for Directory {
    type Result = AtomicResponse<Self, Result<Version, MailError>>;

    fn handle(&mut self, msg: DeleteScript, _: &mut Self::Context) -> Self::Result {
        let user = msg.user.clone();
        self.edit_sieve(msg.user, move |sieve, counters| {
            if sieve.script(&msg.name).is_none() {
                return Err(MailError::UnknownScript { user, name: msg.name });
            }
            if sieve.active_script() == Some(msg.name.as_str()) {
                // RFC 5804: the active script cannot be deleted.
                return Err(MailError::NotAllowed(
                    "delete the active sieve script; deactivate it first",
                ));
            }
            let version = counters.tick();
            sieve.delete(&msg.name, version.clone());
            Ok(version)
        })
    }
}

/// Makes a script the active one (`None`: no script active); answers with the version written.
#[derive(Message)]
#[rtype(result = "Result<Version, MailError>")]
pub struct SetActiveScript {
    pub user: String,
    pub name: Option<String>,
}

impl Handler<SetActiveScript> for Directory {
    type Result = AtomicResponse<Self, Result<Version, MailError>>;

    fn handle(&mut self, msg: SetActiveScript, _: &mut Self::Context) -> Self::Result {
        let user = msg.user.clone();
        self.edit_sieve(msg.user, move |sieve, counters| {
            if let Some(name) = &msg.name {
                if sieve.script(name).is_none() {
                    return Err(MailError::UnknownScript {
                        user,
                        name: name.clone(),
                    });
                }
            }
            let version = counters.tick();
            sieve.set_active(msg.name, version.clone());
            Ok(version)
        })
    }
}

/// Renames a sieve script in one write: the content under the new name, a deleted marker under
/// the old one, and the active register moved along if the old name was active (ManageSieve's
/// RENAMESCRIPT; done as separate writes, a delivery between them could find no active script).
/// Answers with the version written.
#[derive(Message)]
#[rtype(result = "Result<Version, MailError>")]
pub struct RenameScript {
    pub user: String,
    pub from: String,
    pub to: String,
}

impl Handler<RenameScript> for Directory {
    type Result = AtomicResponse<Self, Result<Version, MailError>>;

    fn handle(&mut self, msg: RenameScript, _: &mut Self::Context) -> Self::Result {
        let user = msg.user.clone();
        self.edit_sieve(msg.user, move |sieve, counters| {
            validate_script_name(&msg.to)?;
            let Some(content) = sieve.script(&msg.from).map(<[u8]>::to_vec) else {
                return Err(MailError::UnknownScript { user, name: msg.from });
            };
            if sieve.script(&msg.to).is_some() {
                return Err(MailError::ScriptExists { user, name: msg.to });
            }
            let was_active = sieve.active_script() == Some(msg.from.as_str());
            // One tick for the three registers: each is its own register, so they need no order
            // among themselves, and a peer merging them sees one change.
            let version = counters.tick();
            sieve.put(&msg.to, content, version.clone());
            sieve.delete(&msg.from, version.clone());
            if was_active {
                sieve.set_active(Some(msg.to), version.clone());
            }
            Ok(version)
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, MailError>")]
pub struct GetScript {
    pub user: String,
    pub name: String,
}

impl Handler<GetScript> for Directory {
    type Result = Result<Vec<u8>, MailError>;

    fn handle(&mut self, msg: GetScript, _: &mut Self::Context) -> Self::Result {
        validate_user(&msg.user)?;
        let sieve = self.sieve(&msg.user)?.map(|t| t.item).unwrap_or_default();
        sieve
            .script(&msg.name)
            .map(<[u8]>::to_vec)
            .ok_or(MailError::UnknownScript {
                user: msg.user,
                name: msg.name,
            })
    }
}

/// A user's scripts as (name, active), sorted by name.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, bool)>, MailError>")]
pub struct ListScripts {
    pub user: String,
}

impl Handler<ListScripts> for Directory {
    type Result = Result<Vec<(String, bool)>, MailError>;

    fn handle(&mut self, msg: ListScripts, _: &mut Self::Context) -> Self::Result {
        validate_user(&msg.user)?;
        let sieve = self.sieve(&msg.user)?.map(|t| t.item).unwrap_or_default();
        let active = sieve.active_script();
        Ok(sieve
            .names()
            .map(|n| (n.to_string(), Some(n) == active))
            .collect())
    }
}

/// A user's whole sieve state (every script and which one is active), as delivery needs it:
/// the active script to run and the personal scripts it may include.
#[derive(Message)]
#[rtype(result = "Result<UserSieve, MailError>")]
pub struct GetUserSieve {
    pub user: String,
}

impl Handler<GetUserSieve> for Directory {
    type Result = Result<UserSieve, MailError>;

    fn handle(&mut self, msg: GetUserSieve, _: &mut Self::Context) -> Self::Result {
        validate_user(&msg.user)?;
        Ok(self.sieve(&msg.user)?.map(|t| t.item).unwrap_or_default())
    }
}

/// How many Mailbox actors are active and how many let-go ones are still running.
#[derive(Message)]
#[rtype(result = "DirectoryStats")]
pub struct GetDirectoryStats;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryStats {
    pub active: usize,
    pub dormant_running: usize,
    /// Mailboxes whose copy this node is letting go (waiting for its sync log to drain).
    pub releasing: usize,
    /// The mailboxes this node is letting go of, each with the peers it still has changes of it
    /// for (shown when a cluster does not go quiet).
    pub releasing_waits: BTreeMap<MailboxId, BTreeSet<NodeId>>,
}

impl Handler<GetDirectoryStats> for Directory {
    type Result = MessageResult<GetDirectoryStats>;

    fn handle(&mut self, _: GetDirectoryStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(DirectoryStats {
            active: self.active.len(),
            dormant_running: self.dormant.values().filter(|w| w.upgrade().is_some()).count(),
            releasing: self.releasing.len(),
            releasing_waits: self.releasing(),
        })
    }
}

/// Whether `new` makes this node (`me`) the primary of a mailbox it holds, which it was not by
/// `old`: it must then settle the uid conflicts it holds. A mailbox new here has none.
fn becomes_primary_here(old: Option<&MailboxEntry>, new: &MailboxEntry, me: &NodeId) -> bool {
    let Some(old) = old else { return false };
    crate::mailbox::primary_of(new) == *me && crate::mailbox::primary_of(old) != *me && new.located_on(me)
}
