//! The replication side of the Mailbox actor: what a Channel asks of the mailbox it syncs
//! (a plan of changes, pages of the full state, the replication cache) and what a PeerSession
//! asks when a peer's changes arrive (apply a change request, list changes since a modseq).
//!
//! The three steps of DESIGN.md ("Syncing one mailbox"): (1) an optimistic change request that
//! carries the peer modseq the cache expects and is applied only if the peer is exactly there;
//! (2) otherwise the peer answers with its changes since that point, both sides merge, and the
//! request is retried; (3) with no usable point, both sides exchange their whole record sets.
//! Every incoming record is merged with the CRDT join; a uid held by two messages is settled here:
//! the mailbox's primary moves both to fresh uids, any other node hides the one it did not show
//! first until the primary's decision arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::prelude::*;
use mailmesh_protocol::ids::{AppendId, Guid, MailboxId, ModSeq, NodeId, Uid, UidValidity};
use mailmesh_protocol::merge::{Merge, MergeEffect};
use mailmesh_protocol::records::{
    settle_uid, Annotation, AtUid, MailboxDigest, MailboxEntry, MessageRecord, PrunedSet, RecordUpdate,
    Settlement, UidNext,
};
use mailmesh_protocol::wire::{Change, ChangePage, ChangeRequest, ErrorCode, Response};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::context::Writes;
use crate::error::{MailError, StoreError};
use crate::inflight::Inflight;
use crate::mailbox::{primary_of, Mailbox, MailboxCounters, StoredAnnotation, StoredRecord};
use crate::store::{decode, keys, Snapshot, Table};
use crate::sync_log::{Dated, Provenance, SyncItem};

/// What a node remembers about one mailbox on one peer after the last successful exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationCache {
    pub uidvalidity: UidValidity,
    /// This node's modseq up to which the peer has every change.
    pub acked: ModSeq,
    /// The peer's modseq right after that exchange.
    pub peer_modseq: ModSeq,
    /// This node's modseq at which the peer had every record (the end of a whole exchange, not a
    /// page of one): a record created at or before it travels as an update.
    #[serde(default)]
    pub complete: ModSeq,
    /// The date at which the peer last let its copy go (`Mailbox::let_go`, 0: never) when the
    /// exchange began. A cache whose date is not the peer's current one describes a copy the peer
    /// has since dropped, and is not used: an exchange that was under way while the peer let go
    /// and took the mailbox back would otherwise save "the peer has everything" after the
    /// Directory forgot that peer's cache (simulator, seed 100602: four messages never resent).
    #[serde(default)]
    pub peer_let_go: u64,
}

impl ReplicationCache {
    /// The cache after the peer took a page of changes up to `upto` and stood at `peer_modseq`.
    /// Only the last page (`more` false) makes the peer complete up to `upto`: the pages after
    /// it may hold records created earlier.
    pub fn after_page(&self, upto: ModSeq, more: bool, peer_modseq: ModSeq) -> ReplicationCache {
        ReplicationCache {
            uidvalidity: self.uidvalidity,
            acked: upto,
            peer_modseq,
            complete: if more { self.complete } else { upto },
            peer_let_go: self.peer_let_go,
        }
    }
}

/// Bodies that came with a change, by Guid.
pub type Bodies = BTreeMap<Guid, Arc<Vec<u8>>>;

/// Records changed after a point, each with the modseq at which it first appeared here.
type ChangedRecords = Vec<(Change<MessageRecord>, ModSeq)>;

/// How much one page of records may hold, whichever bound comes first: a count of records, the
/// stored bytes of those records (a page goes in one frame, so this keeps it far below the frame
/// limit), and the bytes of the bodies it names that the peer may lack (they travel just before
/// the page and wait in the receiver's memory, or the fetcher's, until the page is merged).
/// Every page holds at least one record, whatever the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageBudget {
    pub records: usize,
    pub record_bytes: usize,
    pub body_bytes: usize,
}

impl PageBudget {
    /// Stored bytes of records in one page: about 5,000 small records.
    pub const RECORD_BYTES: usize = 1024 * 1024;
    /// Bytes of bodies one page may bring along: a page in flight on each of a channel's
    /// parallel items stays well within what a receiving session stages. Small enough that the
    /// pipelined push overlaps the replica's write of page n with the transfer of page n+1: with
    /// 32 MiB, 1,000 bodies of 50 KB went in two pages, and the replica wrote and synced the
    /// last 17 MB (50 ms) after the transfer had ended; 8 MiB measured 10-20% faster.
    pub const BODY_BYTES: usize = 8 * 1024 * 1024;

    /// At most `records` records, weighed by the default byte bounds.
    pub fn records(records: usize) -> Self {
        PageBudget {
            records,
            record_bytes: Self::RECORD_BYTES,
            body_bytes: Self::BODY_BYTES,
        }
    }

    /// At most `records` records, whatever they weigh (a local scan that sends nothing).
    pub fn records_only(records: usize) -> Self {
        PageBudget {
            records,
            record_bytes: usize::MAX,
            body_bytes: usize::MAX,
        }
    }

    fn filled_by(&self, fill: &PageFill) -> bool {
        fill.record_bytes >= self.record_bytes || fill.body_bytes >= self.body_bytes
    }
}

/// What a page being read holds so far, in the units of its [`PageBudget`].
#[derive(Default)]
struct PageFill {
    record_bytes: usize,
    body_bytes: usize,
}

impl PageFill {
    fn add(&mut self, record: &MessageRecord, stored_len: usize, with_body: bool) {
        self.record_bytes = self.record_bytes.saturating_add(stored_len);
        if with_body && !record.is_expunged() {
            let size = usize::try_from(record.size).unwrap_or(usize::MAX);
            self.body_bytes = self.body_bytes.saturating_add(size);
        }
    }
}

/// Changes arriving from a peer, in any of the three steps.
struct Incoming {
    records: Vec<Change<MessageRecord>>,
    updates: Vec<Change<RecordUpdate>>,
    annotations: Vec<Change<(String, Annotation)>>,
    uidnext: UidNext,
    /// The sender's compacted expunged messages (with full syncs).
    pruned: Option<PrunedSet>,
}

/// Records as this batch changes them (read before its commit), indexed by uid too: settling
/// a page's uids looks up each uid's records here, once per uid rather than by a walk over
/// every record of the page (quadratic in the page size).
#[derive(Default)]
struct Overlay {
    records: BTreeMap<AppendId, StoredRecord>,
    by_uid: BTreeMap<Uid, BTreeSet<AppendId>>,
}

impl Overlay {
    fn get(&self, aid: &AppendId) -> Option<&StoredRecord> {
        self.records.get(aid)
    }

    /// `by_uid`: whether the overlay must index the record at its uid itself (it is not, or
    /// not at that uid, in the committed uid index).
    fn insert(&mut self, aid: AppendId, record: StoredRecord, by_uid: bool) {
        let uid = record.record.uid.value;
        if !by_uid {
            self.records.insert(aid, record);
            return;
        }
        if let Some(old) = self.records.insert(aid.clone(), record) {
            let old_uid = old.record.uid.value;
            if old_uid != uid {
                if let Some(at) = self.by_uid.get_mut(&old_uid) {
                    at.remove(&aid);
                    if at.is_empty() {
                        self.by_uid.remove(&old_uid);
                    }
                }
            }
        }
        self.by_uid.entry(uid).or_default().insert(aid);
    }

    /// The records of this batch now at `uid`.
    fn at(&self, uid: Uid) -> impl Iterator<Item = (&AppendId, &StoredRecord)> {
        self.by_uid
            .get(&uid)
            .into_iter()
            .flatten()
            .filter_map(|aid| self.records.get_key_value(aid))
    }
}

/// What taking in a peer's pruned set did here.
struct Learned {
    /// The set here changed.
    changed: bool,
    /// A record removed here sat at a uid the sender's set does not retire.
    retired_news: bool,
}

/// What merging a set of incoming changes did.
#[derive(Debug, Default)]
struct MergeSummary {
    changed: bool,
    /// Some record or annotation is now a combination of both sides: new to every peer.
    combined: bool,
    /// This node (the primary) moved conflicting records to fresh uids.
    promoted: bool,
    /// The pruned set changed beyond what the sender sent (uids retired here, or the sender
    /// offered a compacted message): news for the sender too.
    pruned_news: bool,
    /// Origins of the states taken whole.
    origins: BTreeSet<NodeId>,
    /// The lowest newest Version counter ([`Dated`]) of the states taken whole: the origin is
    /// skipped only if its current store made them all.
    oldest_whole: Option<u64>,
}

impl MergeSummary {
    fn took_whole(&mut self, origin: &NodeId, newest: u64) {
        self.origins.insert(origin.clone());
        self.oldest_whole = Some(self.oldest_whole.map_or(newest, |o| o.min(newest)));
    }
}

impl Mailbox {
    fn cache_key(&self, peer: &NodeId) -> Vec<u8> {
        cache_key(self.id, peer)
    }

    /// Whether this node has anything of the mailbox: a record or an annotation. The pruned set
    /// alone is no copy: a copy let go keeps it (engine bug 32, and its expunged AppendIds
    /// since seed 1209 with --steps 300), and counting it made every copy let go with an
    /// expunge behind it take records again (engine bug 38, simulator seed 21385: a node that
    /// had let its copy go was queued the mailbox again for a peer wiped meanwhile, pulled that
    /// peer's stale records into a copy nobody would purge again, and showed a message expunged
    /// everywhere else). A copy being let go whose messages are all compacted merges nothing
    /// more: what it knows still travels from it, and nothing it lacks is its to keep.
    fn has_copy(&self) -> Result<bool, StoreError> {
        let mut found = false;
        for table in [Table::Messages, Table::Annotations] {
            self.store
                .scan_prefix(table, &keys::mailbox(self.id), None, |_, _| {
                    found = true;
                    Ok(false)
                })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn committed_counters(&self) -> Result<MailboxCounters, StoreError> {
        Ok(self
            .store
            .get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(self.id))?
            .unwrap_or_default())
    }

    fn committed_highest(&self) -> Result<(ModSeq, MailboxCounters), StoreError> {
        let c = self.committed_counters()?;
        Ok((ModSeq::new(c.modseq, self.ctx.node.modseq_tag()), c))
    }

    fn stored(&self, aid: &AppendId) -> Result<Option<StoredRecord>, StoreError> {
        self.store.get(Table::Messages, &keys::message(self.id, aid))
    }

    fn stored_in(&self, snapshot: &Snapshot, aid: &AppendId) -> Result<Option<StoredRecord>, StoreError> {
        snapshot.get(Table::Messages, &keys::message(self.id, aid))
    }

    /// A stored record for sending, with the length of its stored encoding; one that cannot be
    /// decoded is quarantined (logged, counted, left out) so that the rest of the mailbox still
    /// replicates.
    fn readable_in(
        &self,
        snapshot: &Snapshot,
        aid: &AppendId,
    ) -> Result<Option<(StoredRecord, usize)>, StoreError> {
        match snapshot.get_sized(Table::Messages, &keys::message(self.id, aid)) {
            Err(e @ StoreError::Decode { .. }) => {
                self.quarantine(aid, &e);
                Ok(None)
            }
            other => other,
        }
    }

    /// Records changed after `since` with modseq at most `upto`, oldest first, within `budget`
    /// (bodies counted for live records created after `bodies_known`, which the peer may lack);
    /// `skip_for` leaves out what that peer already has. Returns the page and the modseq of the
    /// last record scanned when the page is full.
    fn changes_after(
        &self,
        since: ModSeq,
        upto: ModSeq,
        budget: PageBudget,
        bodies_known: ModSeq,
        skip_for: Option<&NodeId>,
    ) -> Result<(ChangedRecords, Option<ModSeq>), StoreError> {
        let limit = budget.records;
        let mut aids = Vec::new();
        let start = keys::modseq(self.id, ModSeq(since.0.saturating_add(1)));
        let snapshot = self.store.snapshot()?;
        snapshot.scan_from(Table::Modseqs, &keys::mailbox(self.id), &start, |k, v| {
            let modseq = keys::parse_modseq(k).ok_or_else(|| StoreError::Decode {
                what: "modseq index".into(),
                reason: "malformed key".into(),
            })?;
            if modseq > upto {
                return Ok(false);
            }
            let aid = AppendId::from_key_bytes(v).ok_or_else(|| StoreError::Decode {
                what: "modseq index".into(),
                reason: "malformed AppendId".into(),
            })?;
            aids.push((aid, modseq));
            Ok(aids.len() < limit)
        })?;
        let scanned = aids.len();
        let mut next = if scanned >= limit {
            aids.last().map(|(_, m)| *m)
        } else {
            None
        };
        let mut fill = PageFill::default();
        let mut out = Vec::with_capacity(aids.len());
        for (i, (aid, modseq)) in aids.into_iter().enumerate() {
            if let Some((s, len)) = self.readable_in(&snapshot, &aid)? {
                if !skip_for
                    .is_some_and(|p| self.peer_has(&s.origin, s.arrived_on.as_ref(), s.record.newest(), p))
                {
                    let body_known = s.created != ModSeq::ZERO && s.created <= bodies_known;
                    fill.add(&s.record, len, !body_known);
                    out.push((
                        Change {
                            origin: s.origin,
                            item: s.record,
                        },
                        s.created,
                    ));
                }
            }
            // Cut the page by bytes too: everything up to this modseq is in it or left out.
            if i + 1 < scanned && budget.filled_by(&fill) {
                next = Some(modseq);
                break;
            }
        }
        Ok((out, next))
    }

    fn annotations_after(
        &self,
        since: ModSeq,
        upto: ModSeq,
        skip_for: Option<&NodeId>,
    ) -> Result<Vec<Change<(String, Annotation)>>, StoreError> {
        let mut out = Vec::new();
        self.store
            .scan_prefix(Table::Annotations, &keys::mailbox(self.id), None, |k, v| {
                let a: StoredAnnotation = decode(v, "annotation")?;
                if a.modseq > since
                    && a.modseq <= upto
                    && !skip_for.is_some_and(|p| {
                        let newest = a.annotation.newest();
                        self.peer_has(&a.origin, a.arrived_on.as_ref(), newest, p)
                    })
                {
                    let entry = String::from_utf8_lossy(&k[16..]).into_owned();
                    out.push(Change {
                        origin: a.origin,
                        item: (entry, a.annotation),
                    });
                }
                Ok(true)
            })?;
        Ok(out)
    }

    /// One page of this node's changes after `since` (a modseq of this node), for a peer.
    fn change_page(
        &self,
        since: ModSeq,
        budget: PageBudget,
        peer: Option<&NodeId>,
    ) -> Result<ChangePage, StoreError> {
        let (highest, counters) = self.committed_highest()?;
        let (records, next) = self.changes_after(since, highest, budget, ModSeq::ZERO, peer)?;
        let records = records.into_iter().map(|(change, _)| change).collect();
        // Every page carries the annotations changed after its own starting point: a later
        // page starts later, so one changed between two pages' records is never skipped.
        let annotations = self.annotations_after(since, highest, peer)?;
        let pruned = (counters.pruned_modseq > since).then(|| self.pruned.clone());
        Ok(ChangePage {
            records,
            annotations,
            uidnext: counters.uidnext,
            next,
            pruned,
        })
    }

    /// Whether `since` is a point of this node's history the changes can be listed from.
    fn knows(&self, since: ModSeq, highest: ModSeq) -> bool {
        since.minted_by(self.ctx.node.modseq_tag())
            && since <= highest
            && since.counter() >= self.counters.history_from
    }

    /// Merges incoming changes into `writes`. Nothing is written unless every new live record's
    /// body is here or came along.
    fn merge_in(
        &mut self,
        writes: &mut Writes,
        from: &NodeId,
        incoming: Incoming,
        bodies: &Bodies,
    ) -> Result<MergeSummary, MailError> {
        let Incoming {
            mut records,
            updates,
            annotations,
            uidnext,
            pruned,
        } = incoming;
        let me = self.ctx.node.clone();
        let uidnext_before = self.counters.uidnext;
        // Nothing in memory or in `writes` changes until the input is known to be whole (every
        // update's record here, every new body here): a request refused half way would leave
        // this actor ahead of its store (simulator, seed 1312: a pruned set learned from a
        // refused request, so the record it named was never removed).
        //
        // A message this node compacted away as expunged stays expunged, whatever a stale peer
        // still holds: the pruned set is the tombstone watermark.
        let offered = records.len() + updates.len();
        records.retain(|c| !self.pruned.contains(&c.item.append_id));
        let mut updates: Vec<Change<RecordUpdate>> = updates
            .into_iter()
            .filter(|c| !self.pruned.contains(&c.item.append_id))
            .collect();
        // The sender still holds a message this node compacted away: it missed the set, so
        // the set is news again and goes to every peer, the sender included (simulator, seed
        // 229: a node that never saw the expunge kept showing the message).
        let mut pruned_changed = records.len() + updates.len() < offered;
        // What the sender compacted is gone here too (learn_pruned below removes it).
        if let Some(pruned) = &pruned {
            records.retain(|c| !pruned.contains(&c.item.append_id));
            updates.retain(|c| !pruned.contains(&c.item.append_id));
        }
        // Every read of the merge from one snapshot of committed state (nothing this mailbox
        // writes commits while it runs: the handler is atomic and waited for its inflight
        // batches).
        let store = self.store.clone();
        let snapshot = store.snapshot()?;
        // Each incoming record with its stored one, read once: full records first, then the
        // updates, as the sender listed them. A record named twice is read twice (rare); the
        // second merges into the overlay's result of the first, if that changed anything.
        let mut paired: Vec<(Change<MessageRecord>, Option<StoredRecord>)> =
            Vec::with_capacity(records.len() + updates.len());
        // Bodies first: a node never shows a record whose body it lacks.
        for change in records {
            let local = self.stored_in(&snapshot, &change.item.append_id)?;
            if local.is_none() && !change.item.is_expunged() {
                let guid = change.item.guid;
                if !bodies.contains_key(&guid)
                    && snapshot.body_location(&guid)?.is_none()
                    && self.store.spooled(&guid).is_none()
                {
                    return Err(MailError::BodyNotReceived(guid));
                }
            }
            paired.push((change, local));
        }
        // An update completes a record this node has; without it, the sender must send it whole.
        for Change { origin, item: update } in updates {
            match self.stored_in(&snapshot, &update.append_id)? {
                Some(base) => {
                    let item = base.record.updated_by_owned(update);
                    paired.push((Change { origin, item }, Some(base)));
                }
                None => return Err(MailError::UnknownRecord(update.append_id)),
            }
        }
        // The input is whole: from here on only store errors can stop the merge (and the
        // Mailbox reloads its state from the store after one).
        let mut learned_pruned = false;
        let mut touched: BTreeSet<Uid> = BTreeSet::new();
        if let Some(pruned) = pruned {
            let learned = self.learn_pruned(writes, &pruned, &mut touched)?;
            learned_pruned = learned.changed;
            // A compacted message sat at a uid only this node gave it (a promotion here the
            // sender never saw): that uid is retired here, and news for everyone, the sender
            // included (simulator, seed 16014: the end of a chain retired it and told nobody, so
            // the primary never moved another node's message off it).
            pruned_changed |= learned.retired_news;
        }
        let mut summary = MergeSummary::default();
        let mut overlay = Overlay::default();
        let mut moved: BTreeSet<AppendId> = BTreeSet::new();
        // The records held here before the merge, for the injected fault that drops the others.
        let held_before: BTreeSet<AppendId> = if self.ctx.faults.drop_incoming_records {
            paired
                .iter()
                .filter(|(_, l)| l.is_some())
                .map(|(c, _)| c.item.append_id.clone())
                .collect()
        } else {
            BTreeSet::new()
        };
        for (
            Change {
                origin,
                item: incoming,
            },
            stored,
        ) in paired
        {
            let aid = incoming.append_id.clone();
            // One of this node's own messages, minted before its store was lost: never mint
            // that AppendId again.
            self.node_counters.observe_append_id(&aid);
            if self.ctx.faults.drop_incoming_records && !held_before.contains(&aid) {
                continue;
            }
            // This request's earlier change to the same record, if it made one.
            let (local, from_overlay) = match overlay.get(&aid) {
                Some(o) => (Some(o.clone()), true),
                None => (stored, false),
            };
            let (merged, effect) = match &local {
                Some(l) => {
                    let (mut m, mut effect) = l.record.merged_with(&incoming);
                    if self.ctx.faults.expunge_not_sticky && l.record.is_expunged() && !incoming.is_expunged()
                    {
                        m = incoming.clone();
                        effect = MergeEffect::TookIncoming;
                    }
                    if self.ctx.faults.stale_flag_versions {
                        for (flag, mine) in &l.record.flags {
                            if m.flags.get(flag).is_some_and(|f| f.value == mine.value) {
                                m.flags.insert(flag.clone(), mine.clone());
                            }
                        }
                        if m == l.record {
                            effect = MergeEffect::Unchanged;
                        }
                    }
                    (m, effect)
                }
                None => (incoming.clone(), MergeEffect::TookIncoming),
            };
            if effect == MergeEffect::Unchanged {
                continue;
            }
            self.node_counters.observe(merged.max_version());
            summary.changed = true;
            match effect {
                MergeEffect::Combined => summary.combined = true,
                _ => summary.took_whole(&origin, merged.newest()),
            }
            let (origin, arrived_on) = if effect == MergeEffect::TookIncoming {
                (origin, Some(from.clone()))
            } else {
                (me.clone(), None)
            };
            match &local {
                None if !merged.is_expunged() => {
                    let guid = merged.guid;
                    match bodies.get(&guid) {
                        Some(bytes) => writes.batch.add_body(guid, Some(bytes.clone())),
                        // Here already (another message names it), or in the spool shared with
                        // the sender, which then never sent it.
                        None => match self.store.spooled(&guid) {
                            Some(len) if snapshot.body_location(&guid)?.is_none() => {
                                writes.batch.add_spooled_body(guid, len)
                            }
                            _ => writes.batch.add_body(guid, None),
                        },
                    }
                }
                Some(l) if !l.record.is_expunged() && merged.is_expunged() => {
                    writes.batch.release_body(merged.guid)
                }
                _ => {}
            }
            // A record that stays at its uid, shown, live or expunged as it was (a flag change)
            // leaves what its uid shows as it was: settling that uid again would read its rows
            // for nothing (1,000 flag changes were 1,000 index scans). Anything else may change
            // who shows there.
            let settled_as_before = local.as_ref().is_some_and(|l| {
                l.record.uid.value == merged.uid.value
                    && l.record.is_expunged() == merged.is_expunged()
                    && !l.hidden
            });
            if !settled_as_before {
                touched.insert(merged.uid.value);
            }
            match &local {
                Some(l) if l.record.uid.value == merged.uid.value => {}
                Some(l) => {
                    touched.insert(l.record.uid.value);
                    moved.insert(aid.clone());
                    // The message was promoted away from this uid. Clients may have seen it
                    // there, so no other message is ever shown at it (found by the simulator,
                    // seed 17).
                    if !self.pruned.retired(l.record.uid.value.0) {
                        self.pruned.retire(l.record.uid.value.0);
                        pruned_changed = true;
                    }
                }
                None => {
                    moved.insert(aid.clone());
                }
            }
            let hidden = local.as_ref().is_some_and(|l| l.hidden);
            let new = StoredRecord {
                record: merged,
                modseq: ModSeq::ZERO,
                origin,
                arrived_on,
                hidden,
                created: ModSeq::ZERO,
            };
            // The overlay keeps the record as written but with no creation point, as the
            // merge made it (settling reads it so).
            let mut written = self.write_stored_returning(&mut writes.batch, local.as_ref(), new);
            written.created = ModSeq::ZERO;
            // A committed record that stays where it was is found at its uid through the
            // committed uid index already: only a record that moved needs the overlay's own.
            let indexed = settled_as_before && !from_overlay;
            overlay.insert(aid, written, !indexed);
        }
        self.counters.uidnext = self.counters.uidnext.max(uidnext);
        summary.promoted = self.settle_uids(&snapshot, writes, &mut overlay, touched, &moved)?;
        if pruned_changed || summary.promoted {
            // Retired uids travel to the peers with the set: a node that never saw the message
            // that held one (the primary among them) learns not to show another there
            // (simulator, seed 26).
            self.save_pruned(&mut writes.batch);
        }
        for Change {
            origin,
            item: (entry, incoming),
        } in annotations
        {
            let key = keys::annotation(self.id, &entry);
            let local = self.store.get::<StoredAnnotation>(Table::Annotations, &key)?;
            let (merged, effect) = match &local {
                Some(l) => {
                    let mut m = l.annotation.clone();
                    let effect = m.merge_from(&incoming);
                    (m, effect)
                }
                None => (incoming, MergeEffect::TookIncoming),
            };
            if effect == MergeEffect::Unchanged {
                continue;
            }
            self.node_counters.observe(merged.version());
            summary.changed = true;
            let (origin, arrived_on) = match effect {
                MergeEffect::TookIncoming => {
                    summary.took_whole(&origin, merged.newest());
                    (origin, Some(from.clone()))
                }
                _ => {
                    summary.combined = true;
                    (me.clone(), None)
                }
            };
            let modseq = self.next_modseq();
            writes.batch.put(
                Table::Annotations,
                key,
                &StoredAnnotation {
                    annotation: merged,
                    modseq,
                    origin,
                    arrived_on,
                },
            );
        }
        // A raised UIDNEXT alone is a change too: stored with the counters and passed on, or a
        // restart here forgets it (engine bug 18).
        if learned_pruned || pruned_changed || self.counters.uidnext > uidnext_before {
            summary.changed = true;
        }
        // Dated by a modseq of its own, so a sync to a peer acknowledged before it carries it
        // even with no record to send: a raise with no record behind it here (a peer's kept
        // counter, engine bug 23) was logged for the other holders, and then dropped as an empty
        // plan (engine bug 35, seed 7931: a wiped holder learned UIDNEXT 2 from a node that had
        // let its copy go, and the other holder stayed at 1).
        if self.counters.uidnext > uidnext_before {
            self.counters.uidnext_modseq = self.next_modseq();
        }
        if summary.changed || summary.promoted {
            self.put_counters(&mut writes.batch);
            // Uids retired here are this node's own news: the node that moved the message away
            // (the origin) may never have shown it at the old uid (simulator, seed 26).
            summary.pruned_news = pruned_changed;
            let news = summary.combined || summary.promoted || pruned_changed;
            // A pruned set learned from the sender came from the sender, not from the origin of
            // the records that came with it: only the sender may be skipped (engine bug 16).
            let several_sources = summary.origins.len() != 1 || learned_pruned;
            // A sender or origin that let its copy go after the oldest state taken whole may
            // have lost it with the copy (purged, then held again): skip no one (a relay kept a
            // write its origin lost, --wipes --locations seed 276).
            let lost_by_a_source = summary.oldest_whole.is_some_and(|newest| {
                self.let_go_after(from, newest)
                    || summary.origins.iter().any(|o| self.let_go_after(o, newest))
            });
            let provenance = if news || lost_by_a_source {
                Provenance::Local
            } else if several_sources {
                // From several origins: only the sender can be skipped.
                Provenance::Remote {
                    from: from.clone(),
                    origin: from.clone(),
                    effect: MergeEffect::TookIncoming,
                    newest: summary.oldest_whole.unwrap_or(0),
                }
            } else {
                let origin = summary.origins.iter().next().expect("one origin").clone();
                Provenance::Remote {
                    from: from.clone(),
                    origin,
                    effect: MergeEffect::TookIncoming,
                    newest: summary.oldest_whole.expect("a state taken whole"),
                }
            };
            let logged = self.ctx.sync_log.log(
                &mut writes.batch,
                SyncItem::Mailbox(self.id),
                &provenance,
                Some(&self.holders),
            );
            writes.logged.merge(logged);
        }
        Ok(summary)
    }

    /// Takes in a peer's compacted expunged messages: a record of one of them held here is
    /// compacted too (its body released if it was live), and one never seen is counted in the
    /// digest. Returns whether anything changed.
    fn learn_pruned(
        &mut self,
        writes: &mut Writes,
        incoming: &PrunedSet,
        touched: &mut BTreeSet<Uid>,
    ) -> Result<Learned, StoreError> {
        let mut changed = false;
        let mut retired_news = false;
        if let Some(&(_, hi)) = incoming.ranges.get(&self.ctx.node).and_then(|r| r.last()) {
            self.node_counters.observe_append_id(&AppendId {
                origin: self.ctx.node.clone(),
                counter: hi,
            });
        }
        for aid in incoming.iter() {
            if self.pruned.contains(&aid) {
                continue;
            }
            match self.stored(&aid)? {
                Some(stored) => {
                    if !stored.record.is_expunged() {
                        writes.batch.release_body(stored.record.guid);
                    }
                    let at = stored.record.uid.value.0;
                    retired_news |= !incoming.retired(at) && !self.pruned.retired(at);
                    self.forget_record(&mut writes.batch, &stored);
                    self.counters.digest.remove(&stored.record);
                    self.counters.digest.add_pruned(&aid);
                    crate::mailbox::unaccount(&mut self.counters, &stored);
                }
                None => self.counters.digest.add_pruned(&aid),
            }
            self.pruned.insert(&aid);
            changed = true;
        }
        let merged = self.pruned.merge(incoming);
        if merged != self.pruned {
            // Newly retired uids: a message sitting at one must be settled (promoted or hidden).
            for &(lo, hi) in &merged.uids {
                for uid in lo..=hi {
                    if !self.pruned.retired(uid as u32) {
                        touched.insert(Uid(uid as u32));
                    }
                }
            }
            self.pruned = merged;
            changed = true;
        }
        // A retired uid was in use somewhere: UIDNEXT must pass it, so a promotion never moves a
        // message to it (simulator, seed 26).
        if let Some(&(_, hi)) = self.pruned.uids.last() {
            let after = UidNext(Uid((hi as u32).saturating_add(1)));
            self.counters.uidnext = self.counters.uidnext.max(after);
        }
        if changed {
            // The set changed: it travels on to the other peers like any change.
            self.save_pruned(&mut writes.batch);
        }
        Ok(Learned {
            changed,
            retired_news,
        })
    }

    /// Writes the pruned set, which changed: it travels to every peer acknowledged before now.
    fn save_pruned(&mut self, batch: &mut crate::store::Batch) {
        self.counters.pruned_modseq = self.next_modseq();
        batch.put(Table::Pruned, keys::mailbox(self.id), &self.pruned);
    }

    /// Removes a record's rows; its uid is retired (see `PrunedSet::uids`).
    fn forget_record(&mut self, batch: &mut crate::store::Batch, stored: &StoredRecord) {
        let aid = &stored.record.append_id;
        batch.delete(Table::Messages, keys::message(self.id, aid));
        batch.delete(Table::Uids, keys::uid(self.id, stored.record.uid.value, aid));
        batch.delete(Table::Modseqs, keys::modseq(self.id, stored.modseq));
        self.pruned.retire(stored.record.uid.value.0);
    }

    /// What this node knows of `peer`'s copy: a cache still queued by `SaveCache` (newer than
    /// the stored one), else the stored one, for this uidvalidity.
    pub(crate) fn cache_for(&self, peer: &NodeId) -> Result<Option<ReplicationCache>, StoreError> {
        let cache = match self.saving_caches.get(peer) {
            Some((cache, queued)) if queued.count() > 0 => Some(cache.clone()),
            _ => self
                .store
                .get::<ReplicationCache>(Table::ReplCache, &self.cache_key(peer))?,
        };
        Ok(cache.filter(|c| self.cache_is_current(peer, c)))
    }

    /// Whether a cache for `peer` still describes the peer's copy: same uidvalidity, and made
    /// since the peer last let its copy go.
    fn cache_is_current(&self, peer: &NodeId, cache: &ReplicationCache) -> bool {
        cache.uidvalidity == self.uidvalidity && cache.peer_let_go == self.peer_let_go(peer)
    }

    /// This node's modseq up to which every peer holding the mailbox has everything: expunged
    /// records at or below it are tombstones nobody needs any more. Reads stored caches only: one
    /// still queued is newer, and an older one only compacts less.
    pub(crate) fn stable_point(
        &self,
        saving: Option<(&NodeId, &ReplicationCache)>,
    ) -> Result<ModSeq, StoreError> {
        let mut stable = self.highestmodseq();
        for peer in self.ctx.sync_log.peers() {
            if !self.holders.is_empty() && !self.holders.contains(&peer) {
                continue;
            }
            let complete = match saving {
                Some((p, cache)) if *p == peer => cache.complete,
                _ => self
                    .store
                    .get::<ReplicationCache>(Table::ReplCache, &self.cache_key(&peer))?
                    .filter(|c| self.cache_is_current(&peer, c))
                    .map(|c| c.complete)
                    .unwrap_or(ModSeq::ZERO),
            };
            stable = stable.min(complete);
        }
        Ok(stable)
    }

    /// Compacts expunged records at or below the stable point into the pruned set, a bounded
    /// number per call, picking up where the last call stopped.
    pub(crate) fn compact_tombstones(
        &mut self,
        writes: &mut Writes,
        stable: ModSeq,
    ) -> Result<(), StoreError> {
        const PER_CALL: usize = 1000;
        // Only what is committed: records this very batch expunges are compacted next time.
        let stable = stable.min(self.committed_highest()?.0);
        let since = self.counters.compacted_upto;
        if stable <= since {
            return Ok(());
        }
        let (changed, next) = self.changes_after(
            since,
            stable,
            PageBudget::records_only(PER_CALL),
            ModSeq::ZERO,
            None,
        )?;
        let mut retired = BTreeSet::new();
        for (change, _) in changed {
            if !change.item.is_expunged() {
                continue;
            }
            if let Some(stored) = self.stored(&change.item.append_id)? {
                self.forget_record(&mut writes.batch, &stored);
                self.pruned.insert(&stored.record.append_id);
                retired.insert(stored.record.uid.value);
            }
        }
        self.counters.compacted_upto = next.unwrap_or(stable);
        if !retired.is_empty() {
            // A live message still at a uid just retired is settled: the primary promotes it,
            // another node hides it (simulator, seed 1718).
            let mut overlay = Overlay::default();
            let store = self.store.clone();
            self.settle_uids(
                &store.snapshot()?,
                writes,
                &mut overlay,
                retired,
                &BTreeSet::new(),
            )?;
            // The peers learn of the compaction through the set: nodes beyond them may never
            // have seen these messages, and no record of them is left to send (simulator, seed
            // 261).
            self.save_pruned(&mut writes.batch);
            self.log_local(writes);
        }
        self.put_counters(&mut writes.batch);
        Ok(())
    }

    /// The message this copy showed at `uid` before it was let go, if it remembers one.
    fn shown_before(&self, snapshot: &Snapshot, uid: Uid) -> Result<Option<AppendId>, StoreError> {
        let mut shown = None;
        snapshot.scan_prefix(Table::ShownBefore, &keys::uid_prefix(self.id, uid), |k, _| {
            shown = keys::parse_uid(k).map(|(_, aid)| aid);
            Ok(false)
        })?;
        Ok(shown)
    }

    /// The records at `uid`: committed ones, as changed by this batch (`overlay`).
    fn records_at(
        &self,
        snapshot: &Snapshot,
        uid: Uid,
        overlay: &Overlay,
    ) -> Result<BTreeMap<AppendId, StoredRecord>, StoreError> {
        let mut aids = Vec::new();
        snapshot.scan_prefix(Table::Uids, &keys::uid_prefix(self.id, uid), |k, _| {
            if let Some((_, aid)) = keys::parse_uid(k) {
                aids.push(aid);
            }
            Ok(true)
        })?;
        let mut at = BTreeMap::new();
        for aid in aids {
            // Compacted in this very batch (its rows go when the batch commits): it is gone, and
            // promoting it would bring it back live (simulator, seed 802).
            if self.pruned.contains(&aid) {
                continue;
            }
            let record = match overlay.get(&aid) {
                Some(r) => Some(r.clone()),
                None => self.stored_in(snapshot, &aid)?,
            };
            if let Some(r) = record.filter(|r| r.record.uid.value == uid) {
                at.insert(aid, r);
            }
        }
        for (aid, r) in overlay.at(uid) {
            at.insert(aid.clone(), r.clone());
        }
        Ok(at)
    }

    /// Makes every uid in `uids` show at most one message. The primary promotes conflicting
    /// records to fresh uids; another node keeps showing the message it showed first and hides
    /// the rest (never dropping them), and shows a hidden one again once its conflict is gone.
    /// Returns whether this node promoted or retired a uid (the pruned set changed).
    fn settle_uids(
        &mut self,
        snapshot: &Snapshot,
        writes: &mut Writes,
        overlay: &mut Overlay,
        uids: BTreeSet<Uid>,
        moved: &BTreeSet<AppendId>,
    ) -> Result<bool, StoreError> {
        let mut promoted = false;
        let primary = self.primary == self.ctx.node && !self.ctx.faults.no_uid_promotion;
        for uid in uids {
            let at = self.records_at(snapshot, uid, overlay)?;
            // A uid a compacted (expunged) message held is as taken as one with a record.
            let retired = self.pruned.retired(uid.0);
            let mut seen: Vec<AtUid> = at
                .iter()
                .map(|(aid, r)| AtUid {
                    append_id: aid.clone(),
                    expunged: r.record.is_expunged(),
                    hidden: r.hidden,
                    arrived: moved.contains(aid),
                })
                .collect();
            // Before this copy was let go it showed `shown` here: that message is the one shown
            // first, whether it is back yet or not (until it is, nothing shows at the uid), and
            // the memory goes once the message is back or the uid retired (engine bug 30).
            let shown = match self.remembers_shown {
                true => self.shown_before(snapshot, uid)?,
                false => None,
            };
            if let Some(shown) = &shown {
                for r in &mut seen {
                    r.hidden = r.append_id != *shown;
                    r.arrived &= r.append_id != *shown;
                }
                if !at.contains_key(shown) {
                    seen.push(AtUid {
                        append_id: shown.clone(),
                        expunged: false,
                        hidden: false,
                        arrived: false,
                    });
                }
            }
            // The remembered message is not here and another live one is, hidden for it: the
            // uid is retired, so the primary, which may never have known the remembered one
            // (simulator seed 14875: every disk that knew it was wiped), promotes the live one.
            // Hiding it until a settlement that never comes kept it hidden here for good.
            let mut retired_here = false;
            if let Some(shown) = &shown {
                let others_live = at.iter().any(|(aid, r)| aid != shown && !r.record.is_expunged());
                if !primary && !retired && !at.contains_key(shown) && others_live {
                    self.pruned.retire(uid.0);
                    retired_here = true;
                    promoted = true;
                }
            }
            let settlement = settle_uid(&seen, retired, primary);
            if let Some(shown) = &shown {
                if at.contains_key(shown)
                    || retired
                    || retired_here
                    || matches!(settlement, Settlement::Promote(_))
                {
                    writes
                        .batch
                        .delete(Table::ShownBefore, keys::uid(self.id, uid, shown));
                }
            }
            match settlement {
                Settlement::Promote(mut ids) => {
                    // Only records here move (not one remembered and not back yet).
                    ids.retain(|aid| at.contains_key(aid));
                    if self.ctx.faults.promotion_keeps_one {
                        // Sabotage (simulator only): the lowest record keeps the contested uid.
                        if !ids.is_empty() {
                            ids.remove(0);
                        }
                    } else {
                        self.pruned.retire(uid.0);
                    }
                    // Only live messages move: an expunged one is shown nowhere, and moving it
                    // would only spend a uid that some node then retires when it compacts the
                    // message (simulator, seed 16014).
                    for aid in ids {
                        let old = &at[&aid];
                        let mut record = old.record.clone();
                        self.node_counters.observe(&record.uid.version);
                        let version = self.node_counters.tick();
                        let to = self.counters.uidnext.0;
                        record.uid.set(to, version);
                        let new = StoredRecord {
                            record,
                            modseq: ModSeq::ZERO,
                            origin: self.ctx.node.clone(),
                            arrived_on: None,
                            hidden: false,
                            created: ModSeq::ZERO,
                        };
                        self.write_stored(&mut writes.batch, Some(old), new.clone());
                        overlay.insert(
                            aid,
                            StoredRecord {
                                modseq: self.highestmodseq(),
                                ..new
                            },
                            true,
                        );
                        promoted = true;
                    }
                }
                Settlement::Show { keeper } => {
                    for (aid, old) in at {
                        let hide = (!old.record.is_expunged() && keeper.as_ref() != Some(&aid))
                            || (old.hidden && self.ctx.faults.hidden_stays_hidden);
                        if old.hidden != hide {
                            let new = StoredRecord {
                                hidden: hide,
                                ..old.clone()
                            };
                            self.write_stored(&mut writes.batch, Some(&old), new.clone());
                            overlay.insert(
                                aid,
                                StoredRecord {
                                    modseq: self.highestmodseq(),
                                    ..new
                                },
                                true,
                            );
                        }
                    }
                }
            }
        }
        Ok(promoted)
    }
}

/// What a Channel sends in one step-1 round trip.
#[derive(Clone, Debug)]
pub struct SyncPlan {
    /// The cache for this peer, when it is usable (same uidvalidity).
    pub cache: Option<ReplicationCache>,
    pub uidvalidity: UidValidity,
    /// This node's modseq the plan covers changes up to.
    pub upto: ModSeq,
    /// Records the peer may lack, whole.
    pub records: Vec<Change<MessageRecord>>,
    /// Changes to records the peer acknowledged before: only what changes after an append.
    pub updates: Vec<Change<RecordUpdate>>,
    pub annotations: Vec<Change<(String, Annotation)>>,
    pub uidnext: UidNext,
    /// UIDNEXT was raised by a merge after the acknowledged point: the plan is news even with
    /// nothing else in it.
    pub uidnext_news: bool,
    /// The digest at `upto` (meaningful when `more` is false).
    pub digest: MailboxDigest,
    /// More changes follow after `upto`.
    pub more: bool,
    /// The pruned set, when it changed after the acknowledged point.
    pub pruned: Option<PrunedSet>,
    /// The date at which the peer last let its copy go, for the cache this exchange saves.
    pub peer_let_go: u64,
}

/// Plans the next step-1 page for `peer`: the changes since the cache's acknowledged point that
/// the peer does not already have.
#[derive(Message)]
#[rtype(result = "Result<SyncPlan, MailError>")]
pub struct PlanSync {
    pub peer: NodeId,
    pub page: PageBudget,
}

impl Handler<PlanSync> for Mailbox {
    type Result = Result<SyncPlan, MailError>;

    fn handle(&mut self, msg: PlanSync, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        let cache = self.cache_for(&msg.peer)?;
        let (highest, counters) = self.committed_highest()?;
        let since = cache.as_ref().map(|c| c.acked).unwrap_or(ModSeq::ZERO);
        // Appended before the acknowledged point: the peer has the record's fixed parts (and
        // its body), so it goes as an update and weighs no body in the page.
        let complete = cache.as_ref().map(|c| c.complete).unwrap_or(ModSeq::ZERO);
        let (changed, next) = self.changes_after(since, highest, msg.page, complete, Some(&msg.peer))?;
        let mut records = Vec::new();
        let mut updates = Vec::new();
        for (change, created) in changed {
            if created != ModSeq::ZERO && created <= complete {
                updates.push(Change {
                    origin: change.origin,
                    item: change.item.into_update(),
                });
            } else {
                records.push(change);
            }
        }
        let (upto, more) = match next {
            Some(last) => (last, true),
            None => (highest, false),
        };
        // On every page, so none changed between the records of two pages is skipped (the
        // merge is idempotent: one sent twice costs only its bytes).
        let annotations = self.annotations_after(since, highest, Some(&msg.peer))?;
        let pruned = (counters.pruned_modseq > since).then(|| self.pruned.clone());
        Ok(SyncPlan {
            uidnext_news: counters.uidnext_modseq > since,
            cache,
            uidvalidity: self.uidvalidity,
            upto,
            records,
            updates,
            annotations,
            uidnext: counters.uidnext,
            digest: counters.digest,
            more,
            pruned,
            peer_let_go: self.peer_let_go(&msg.peer),
        })
    }
}

/// One page of this node's whole record set, by AppendId, for the push half of a full sync
/// (nothing is left out: the peer may have lost what it once sent).
#[derive(Message)]
#[rtype(result = "Result<FullPushPage, MailError>")]
pub struct PlanFullPush {
    pub after: Option<AppendId>,
    pub page: PageBudget,
}

#[derive(Clone, Debug)]
pub struct FullPushPage {
    pub records: Vec<Change<MessageRecord>>,
    pub annotations: Vec<Change<(String, Annotation)>>,
    pub uidnext: UidNext,
    /// This node's modseq when the page was read.
    pub highest: ModSeq,
    pub digest: MailboxDigest,
    pub next: Option<AppendId>,
    /// On the first page: the messages compacted away as expunged.
    pub pruned: Option<PrunedSet>,
}

impl Mailbox {
    fn full_page(&self, after: Option<&AppendId>, budget: PageBudget) -> Result<FullPushPage, StoreError> {
        let (highest, counters) = self.committed_highest()?;
        let after_key = after.map(|a| keys::message(self.id, a));
        let mut records = Vec::new();
        let mut last = None;
        let mut fill = PageFill::default();
        self.store.scan_prefix(
            Table::Messages,
            &keys::mailbox(self.id),
            after_key.as_deref(),
            |k, v| {
                let s: StoredRecord = match decode(v, "message record") {
                    Ok(s) => s,
                    Err(e) => {
                        self.quarantine_key(AppendId::from_key_bytes(&k[16..]).as_ref(), &e);
                        return Ok(true);
                    }
                };
                last = Some(s.record.append_id.clone());
                fill.add(&s.record, v.len(), true);
                records.push(Change {
                    origin: s.origin,
                    item: s.record,
                });
                Ok(records.len() < budget.records && !budget.filled_by(&fill))
            },
        )?;
        let full = records.len() >= budget.records || budget.filled_by(&fill);
        let next = if full { last } else { None };
        let annotations = if after.is_none() {
            self.annotations_after(ModSeq::ZERO, highest, None)?
        } else {
            Vec::new()
        };
        let pruned = (after.is_none() && !self.pruned.is_empty()).then(|| self.pruned.clone());
        Ok(FullPushPage {
            records,
            annotations,
            uidnext: counters.uidnext,
            highest,
            digest: counters.digest,
            next,
            pruned,
        })
    }
}

impl Handler<PlanFullPush> for Mailbox {
    type Result = Result<FullPushPage, MailError>;

    fn handle(&mut self, msg: PlanFullPush, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        Ok(self.full_page(msg.after.as_ref(), msg.page)?)
    }
}

/// Records what a peer has after a successful exchange.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct SaveCache {
    pub peer: NodeId,
    pub cache: ReplicationCache,
}

impl Handler<SaveCache> for Mailbox {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: SaveCache, ctx: &mut Self::Context) -> Self::Result {
        self.saving_caches.retain(|_, (_, queued)| queued.count() > 0);
        if msg.cache.peer_let_go != self.peer_let_go(&msg.peer) {
            // The peer let its copy go while the exchange ran: what it acknowledged is gone
            // with it, and the whole sync the Directory queued must not find a cache.
            debug!(mailbox = %self.id, peer = %msg.peer, "replication cache not saved: the peer let its copy go meanwhile");
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(()))));
        }
        let compaction_due = self.last_expunge > self.counters.compacted_upto;
        if !compaction_due && self.check_usable().is_ok() && !self.needs_reload() {
            // Nothing to compact: the row is queued and the channel goes on at once, not after
            // this mailbox's inflight appends and this write are durable (two commits on the
            // path of every sync). `PlanSync` reads the queued cache until it is committed; a
            // crash or a failed commit loses it, and the stored, older cache only costs the
            // next sync some records the peer already has.
            let mut writes = Writes::default();
            writes
                .batch
                .put(Table::ReplCache, self.cache_key(&msg.peer), &msg.cache);
            let queued = Inflight::default();
            let done = self.ctx.commit(writes, Some(&queued));
            let (peer, mailbox) = (msg.peer.clone(), self.id);
            ctx.spawn(
                async move {
                    if let Err(e) = done.await {
                        warn!(%mailbox, %peer, error = %e, "cannot save a replication cache; the next sync repeats some records");
                    }
                }
                .into_actor(self),
            );
            self.saving_caches.insert(msg.peer, (msg.cache, queued));
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(()))));
        }
        self.atomic(move |act| {
            // Queued before this write, so committed before it: the stored cache is the newest.
            act.saving_caches.remove(&msg.peer);
            let mut writes = Writes::default();
            writes
                .batch
                .put(Table::ReplCache, act.cache_key(&msg.peer), &msg.cache);
            let stable = act.stable_point(Some((&msg.peer, &msg.cache)))?;
            act.compact_tombstones(&mut writes, stable)?;
            Ok((writes, ()))
        })
    }
}

/// A peer's change request (PeerSession side). Answers with the wire response.
#[derive(Message)]
#[rtype(result = "Result<Response, MailError>")]
pub struct ApplyChanges {
    pub from: NodeId,
    pub request: ChangeRequest,
    pub bodies: Bodies,
    /// How much of its own changes this node answers a mismatch with.
    pub page: PageBudget,
}

impl Handler<ApplyChanges> for Mailbox {
    type Result = AtomicResponse<Self, Result<Response, MailError>>;

    fn handle(&mut self, msg: ApplyChanges, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            let req = msg.request;
            if req.uidvalidity != act.uidvalidity {
                return Ok((
                    Writes::default(),
                    wire_error(ErrorCode::UidValidityMismatch, "uidvalidity differs"),
                ));
            }
            let highest = act.highestmodseq();
            // A point from before this copy was let go names records it no longer has, even
            // when it equals where the counters stayed: the sender sends it whole.
            if !req.full && req.expected_peer_modseq.counter() < act.counters.history_from {
                let message = "the expected modseq is from before this copy was let go";
                return Ok((Writes::default(), wire_error(ErrorCode::NoHistory, message)));
            }
            // Step 2 in one round trip: when this node is not where the sender's cache expected,
            // it still merges the sender's changes (the merge is safe whatever the order) and
            // answers with its own changes since the expected point, leaving out what the sender
            // is sending in the same state.
            let mismatch = !req.full && req.expected_peer_modseq != highest;
            let mut page = None;
            if mismatch {
                if !act.knows(req.expected_peer_modseq, highest) {
                    let message = "the expected modseq is not a point of this node's history";
                    return Ok((Writes::default(), wire_error(ErrorCode::NoHistory, message)));
                }
                let mut changes = act.change_page(req.expected_peer_modseq, msg.page, Some(&msg.from))?;
                let sent: BTreeMap<&AppendId, &MessageRecord> =
                    req.records.iter().map(|c| (&c.item.append_id, &c.item)).collect();
                let updated: BTreeMap<&AppendId, &RecordUpdate> =
                    req.updates.iter().map(|c| (&c.item.append_id, &c.item)).collect();
                changes.records.retain(|c| {
                    let aid = &c.item.append_id;
                    sent.get(aid).is_none_or(|r| **r != c.item)
                        && updated.get(aid).is_none_or(|u| **u != c.item.update())
                });
                page = Some(changes);
            }
            let mut writes = Writes::default();
            let incoming = Incoming {
                records: req.records,
                updates: req.updates,
                annotations: req.annotations,
                uidnext: req.uidnext,
                pruned: req.pruned,
            };
            let summary = match act.merge_in(&mut writes, &msg.from, incoming, &msg.bodies) {
                Ok(s) => s,
                Err(MailError::BodyNotReceived(guid)) => {
                    return Ok((
                        Writes::default(),
                        wire_error(ErrorCode::MissingBody, &format!("body {guid} was not sent")),
                    ))
                }
                Err(MailError::UnknownRecord(aid)) => {
                    let message = format!("update of message {aid}, which this node does not have");
                    return Ok((Writes::default(), wire_error(ErrorCode::UnknownRecord, &message)));
                }
                Err(e) => return Err(e),
            };
            if let Some(changes) = page {
                // The sender ends up with everything here up to the new modseq, unless the merge
                // combined both sides: then it only knows the point before the merge, and the
                // combination reaches it through this node's own channel.
                let modseq = if summary.combined || summary.promoted || summary.pruned_news {
                    highest
                } else {
                    act.highestmodseq()
                };
                return Ok((writes, Response::Mismatch { modseq, changes }));
            }
            // After a merge that combined both sides or promoted uids, the sender lacks what
            // this node just made: it may only count on the point before the merge, so its next
            // request reconciles and takes the news (simulator, seed 488).
            // Retired uids count too (simulator, seed 26: the primary never learned one).
            let news = summary.combined || summary.promoted || summary.pruned_news;
            let modseq = if news { highest } else { act.highestmodseq() };
            if !req.full && !news {
                // This node now has exactly the sender's state up to its modseq: the cache for the
                // way back is known without another round trip.
                let cache = ReplicationCache {
                    uidvalidity: act.uidvalidity,
                    acked: modseq,
                    peer_modseq: req.sender_modseq,
                    complete: modseq,
                    peer_let_go: act.peer_let_go(&msg.from),
                };
                writes
                    .batch
                    .put(Table::ReplCache, act.cache_key(&msg.from), &cache);
                // A cache still queued for that peer commits before this one.
                act.saving_caches.remove(&msg.from);
            }
            Ok((
                writes,
                Response::Applied {
                    modseq,
                    digest: act.counters.digest,
                },
            ))
        })
    }
}

/// Merges changes pulled from a peer (Channel side, steps 2 and 3).
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct MergeRemote {
    pub from: NodeId,
    /// The peer's compacted expunged messages (first page of a full state).
    pub pruned: Option<PrunedSet>,
    pub records: Vec<Change<MessageRecord>>,
    pub annotations: Vec<Change<(String, Annotation)>>,
    pub uidnext: UidNext,
    pub bodies: Bodies,
}

impl Handler<MergeRemote> for Mailbox {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: MergeRemote, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            let mut writes = Writes::default();
            // A node outside the holders builds no copy: what it pulled into one it has not (let
            // go, or never had) would stay, as a copy is let go once, when the entry or the graph
            // changes, and that stale copy could show a uid as another message than the one the
            // node showed there before letting go (engine bug 25, simulator seed 83 with
            // --locations: a new link made a node that had let its copy go queue the mailbox for
            // its new peer, and its channel pulled the peer's records back). A copy still being
            // let go keeps merging: it drains what it has, and stays in step until it goes.
            // The refusal is an error, not a quiet success: a channel that took it for a merge
            // saved a cache saying it had the peer's state, the peer believed it on the next
            // request, and a change never reached this node once it was a relay again
            // (simulator seed 2886 with --steps 300: an annotation stopped short of a holder).
            if !act.holders.is_empty() && !act.holders.contains(&act.ctx.node) && !act.has_copy()? {
                return Err(act.not_held_here());
            }
            let incoming = Incoming {
                records: msg.records,
                updates: Vec::new(),
                annotations: msg.annotations,
                uidnext: msg.uidnext,
                pruned: msg.pruned,
            };
            act.merge_in(&mut writes, &msg.from, incoming, &msg.bodies)?;
            Ok((writes, ()))
        })
    }
}

/// A page of changes since one of this node's modseqs (PeerSession side of ChangesSince).
#[derive(Message)]
#[rtype(result = "Result<Response, MailError>")]
pub struct ListChanges {
    pub peer: NodeId,
    pub uidvalidity: UidValidity,
    pub since: ModSeq,
    pub page: PageBudget,
}

impl Handler<ListChanges> for Mailbox {
    type Result = Result<Response, MailError>;

    fn handle(&mut self, msg: ListChanges, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        if msg.uidvalidity != self.uidvalidity {
            return Ok(wire_error(ErrorCode::UidValidityMismatch, "uidvalidity differs"));
        }
        let (highest, _) = self.committed_highest()?;
        if !self.knows(msg.since, highest) {
            return Ok(wire_error(
                ErrorCode::NoHistory,
                "the modseq is not a point of this node's history",
            ));
        }
        Ok(Response::Changes(self.change_page(
            msg.since,
            msg.page,
            Some(&msg.peer),
        )?))
    }
}

/// A page of the full record set (PeerSession side of FullState).
#[derive(Message)]
#[rtype(result = "Result<Response, MailError>")]
pub struct ListFull {
    pub uidvalidity: UidValidity,
    pub after: Option<AppendId>,
    pub page: PageBudget,
}

impl Handler<ListFull> for Mailbox {
    type Result = Result<Response, MailError>;

    fn handle(&mut self, msg: ListFull, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        if msg.uidvalidity != self.uidvalidity {
            return Ok(wire_error(ErrorCode::UidValidityMismatch, "uidvalidity differs"));
        }
        let page = self.full_page(msg.after.as_ref(), msg.page)?;
        Ok(Response::Full {
            pruned: page.pruned,
            records: page.records,
            annotations: page.annotations,
            uidnext: page.uidnext,
            modseq: page.highest,
            next: page.next,
        })
    }
}

/// The Directory tells a running Mailbox that its entry (locations, primary) or its effective
/// holders (the link graph changed) changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EntryUpdated {
    pub entry: MailboxEntry,
    pub holders: BTreeSet<NodeId>,
}

impl Handler<EntryUpdated> for Mailbox {
    type Result = ();

    fn handle(&mut self, msg: EntryUpdated, _: &mut Self::Context) {
        self.locations = msg.entry.locations.value.clone();
        self.holders = msg.holders;
        self.let_go = crate::mailbox::let_go_dates(&msg.entry);
        // Becoming the primary is handled by the Directory, which sends SettleHeldConflicts
        // whether or not this actor was running.
        self.primary = primary_of(&msg.entry);
    }
}

/// Promotes every uid conflict this node holds (it has just become the mailbox's primary).
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct SettleHeldConflicts;

impl Handler<SettleHeldConflicts> for Mailbox {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, _: SettleHeldConflicts, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            // A uid with two records, with a hidden one, or retired with a live one, is a conflict
            // waiting.
            let mut seen: BTreeMap<Uid, usize> = BTreeMap::new();
            let mut uids = BTreeSet::new();
            act.store
                .scan_prefix(Table::Uids, &keys::mailbox(act.id), None, |k, _| {
                    if let Some((uid, _)) = keys::parse_uid(k) {
                        let n = seen.entry(uid).or_insert(0);
                        *n += 1;
                        if *n > 1 {
                            uids.insert(uid);
                        }
                    }
                    Ok(true)
                })?;
            act.store
                .scan_prefix(Table::Messages, &keys::mailbox(act.id), None, |_, v| {
                    if let Ok(s) = decode::<StoredRecord>(v, "message record") {
                        // A live message at a retired uid waits for the primary too: another
                        // message was shown there somewhere (simulator, seed 1718).
                        let at_retired = !s.record.is_expunged() && act.pruned.retired(s.record.uid.value.0);
                        if s.hidden || at_retired {
                            uids.insert(s.record.uid.value);
                        }
                    }
                    Ok(true)
                })?;
            let mut writes = Writes::default();
            // Done with, whatever follows: the row only says a settle is owed.
            writes.batch.delete(Table::Settles, keys::mailbox(act.id));
            if uids.is_empty() {
                return Ok((writes, ()));
            }
            let mut overlay = Overlay::default();
            let store = act.store.clone();
            if act.settle_uids(
                &store.snapshot()?,
                &mut writes,
                &mut overlay,
                uids,
                &BTreeSet::new(),
            )? {
                act.save_pruned(&mut writes.batch);
                act.put_counters(&mut writes.batch);
                act.log_local(&mut writes);
            }
            Ok((writes, ()))
        })
    }
}

/// The key of the replication cache of mailbox `id` for `peer`.
pub(crate) fn cache_key(id: MailboxId, peer: &NodeId) -> Vec<u8> {
    let mut k = keys::mailbox(id);
    k.extend_from_slice(peer.as_str().as_bytes());
    k
}

/// Forgets every replication cache of this mailbox for `peer` (the peer lost its data).
pub fn forget_peer_caches(
    writes: &mut Writes,
    store: &crate::store::Store,
    peer: &NodeId,
) -> Result<(), StoreError> {
    store.scan_prefix(Table::ReplCache, &[], None, |k, _| {
        if k.len() > 16 && &k[16..] == peer.as_str().as_bytes() {
            writes.batch.delete(Table::ReplCache, k.to_vec());
        }
        Ok(true)
    })
}

pub(crate) fn wire_error(code: ErrorCode, message: &str) -> Response {
    Response::Error {
        code,
        message: message.to_string(),
        retry: false,
    }
}
