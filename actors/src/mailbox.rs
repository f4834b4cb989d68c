//! The Mailbox actor: owns one mailbox's records.
//!
//! Appends pipeline: each one takes its uid and modseq from the actor's counters at once and waits
//! for the group commit with many others. Every other write (flags, expunge, move, annotations)
//! is a read-modify-write: it first waits until this mailbox has nothing inflight, then runs
//! against committed state without letting another message in ([`AtomicResponse`]). Reads see
//! only committed state, so a client never sees a uid that a crash could take back.
//!
//! The counters (uidnext, modseq, digest, message counts) live in memory and are written with
//! every batch. Should a commit fail (a full disk), the counters are recomputed from the records
//! once nothing is inflight; uidnext and modseq only ever go up, so nothing is handed out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use mailmesh_protocol::ids::{AppendId, Guid, MailboxId, ModSeq, NodeId, Uid, UidValidity};
use mailmesh_protocol::merge::Lww;
use mailmesh_protocol::names::{validate_annotation_entry, Flag};
use mailmesh_protocol::records::{
    Annotation, MailboxDigest, MailboxEntry, MessageRecord, PrunedSet, UidNext,
};
use mailmesh_protocol::version::Version;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::context::{NodeContext, Writes};
use crate::counters::NodeCounters;
use crate::env::Env;
use crate::error::{MailError, StoreError};
use crate::flag_set::FlagSet;
use crate::inflight::Inflight;
use crate::moving::Moving;
use crate::shown_index::ShownIndex;
use crate::store::uid_row::{self, UidRow};
use crate::store::{decode, keys, Batch, Store, Table};
use crate::sync_log::{Provenance, SyncItem};
use crate::uid_set::UidSet;

/// Size limits a node enforces on what clients store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: u64,
    pub max_annotation_bytes: usize,
    pub max_script_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024 * 1024,
            max_annotation_bytes: 64 * 1024,
            max_script_bytes: 1024 * 1024,
        }
    }
}

/// The per-mailbox counters, persisted with every batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxCounters {
    pub uidnext: UidNext,
    /// Counter part of the highest modseq minted here.
    pub modseq: u64,
    pub digest: MailboxDigest,
    /// Messages not expunged.
    pub exists: u64,
    /// Messages not expunged and without \Seen.
    pub unseen: u64,
    /// Expunged records up to this modseq have been considered for compaction.
    #[serde(default)]
    pub compacted_upto: ModSeq,
    /// The modseq of the latest change to the pruned set (a compaction here, or new entries
    /// learned from a peer): the set travels to a peer acknowledged before it.
    #[serde(default)]
    pub pruned_modseq: ModSeq,
    /// The modseq of the latest UIDNEXT raise a merge brought (a peer's counter above this
    /// node's): it travels to a peer acknowledged before it, with or without records (engine
    /// bug 35). A client's append needs none: its record carries the uid.
    #[serde(default)]
    pub uidnext_modseq: ModSeq,
    /// Where this copy's history starts (a modseq counter; 0: from the beginning). A copy let go
    /// keeps its counters (engine bug 23) but not its records, so a peer whose replication
    /// cache points below this counter was told of records this copy no longer has: such a
    /// point is no point of its history, and the peer must send the mailbox whole (engine bug
    /// 26, simulator --locations seed 825: the kept modseq matched a peer's stale cache, the
    /// delta was applied, and the message the cache said was there never came back).
    #[serde(default)]
    pub history_from: u64,
}

/// A message record as this node stores it: the replicated record plus local facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub record: MessageRecord,
    /// This node's modseq of the record's latest change.
    pub modseq: ModSeq,
    /// The node that produced exactly this state of the record: this node for a client's change
    /// or a merge that combined two sides, else the origin of the change that arrived whole.
    pub origin: NodeId,
    /// The peer whose channel brought this state whole, if it came from one. A sync to that peer,
    /// or to the origin, skips the record (echo suppression).
    pub arrived_on: Option<NodeId>,
    /// Hidden while its uid conflicts with a record shown first (until the primary promotes it).
    pub hidden: bool,
    /// This node's modseq when the record first appeared here. A peer that acknowledged past it
    /// has the record, so later changes travel without the fixed parts (see `RecordUpdate`).
    #[serde(default)]
    pub created: ModSeq,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAnnotation {
    pub annotation: Annotation,
    pub modseq: ModSeq,
    /// As for [`StoredRecord`]: who produced this state, and the peer it came from whole.
    pub origin: NodeId,
    pub arrived_on: Option<NodeId>,
}

/// What a client sees of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageView {
    pub uid: Uid,
    pub append_id: AppendId,
    pub guid: Guid,
    pub size: u64,
    pub internaldate: i64,
    pub flags: Vec<Flag>,
    pub modseq: ModSeq,
}

impl MessageView {
    pub fn of(stored: &StoredRecord) -> Self {
        let r = &stored.record;
        MessageView {
            uid: r.uid.value,
            append_id: r.append_id.clone(),
            guid: r.guid,
            size: r.size,
            internaldate: r.internaldate,
            flags: r.set_flags().cloned().collect(),
            modseq: stored.modseq,
        }
    }
}

/// IMAP STATUS-like summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxState {
    pub id: MailboxId,
    pub uidvalidity: UidValidity,
    pub uidnext: Uid,
    pub highestmodseq: ModSeq,
    pub exists: u64,
    pub unseen: u64,
    pub digest: MailboxDigest,
    /// Records this actor could not read and left out.
    pub quarantined: u64,
}

pub struct Mailbox {
    pub(crate) id: MailboxId,
    pub(crate) uidvalidity: UidValidity,
    pub(crate) ctx: NodeContext,
    pub(crate) store: Arc<Store>,
    pub(crate) node_counters: NodeCounters,
    env: Env,
    limits: Limits,
    modseq_tag: u16,
    /// The nodes a client may write on (empty: all), from the mailbox entry.
    pub(crate) locations: BTreeSet<NodeId>,
    /// The nodes holding a replica (empty: all): the locations and the relays that connect them
    /// (`LinkGraph::holders`, computed by the Directory). Changes are logged for these peers.
    pub(crate) holders: BTreeSet<NodeId>,
    /// For each node that let its copy of this mailbox go (its leaving register written back to
    /// false), the date of that register: a state dated before it, even one that node made or
    /// sent us, may be gone from its copy (purged), so it is not skipped as already there
    /// (`peer_has`).
    pub(crate) let_go: BTreeMap<NodeId, u64>,
    /// The node that settles uid conflicts, from the mailbox entry.
    pub(crate) primary: NodeId,
    pub(crate) counters: MailboxCounters,
    pub(crate) inflight: Inflight,
    /// Records that could not be read and were left out of a sync or a listing.
    quarantined: std::cell::Cell<u64>,
    /// Expunged messages compacted out of their records.
    pub(crate) pruned: PrunedSet,
    /// Set by a failed commit; the counters are recomputed from the records before the next write.
    needs_reload: Arc<AtomicBool>,
    deleted: bool,
    /// Messages a move to another mailbox is taking (between its first and last step).
    moving: Moving,
    /// This copy was let go before and remembers what it showed at some uids
    /// (`Table::ShownBefore`): uid settling reads those rows (and only then).
    pub(crate) remembers_shown: bool,
    /// The highest modseq at which an expunged record may be stored: every expunge written since
    /// the state was loaded raises it, and a load sets it to the highest modseq (any record then
    /// may be expunged). Tombstone compaction has nothing to do while `compacted_upto` is at or
    /// above it, so saving a replication cache need not wait for the mailbox to be idle.
    pub(crate) last_expunge: ModSeq,
    /// Replication caches handed to the commit group by the fast path of `SaveCache` and not yet
    /// committed, by peer. While its batch is queued (its count above zero; the commit group
    /// lowers it once the group is done, committed or failed), a cache here is newer than the
    /// stored one, and `PlanSync` reads it: the channel's next sync does not wait for the write.
    pub(crate) saving_caches: BTreeMap<NodeId, (crate::mailbox_sync::ReplicationCache, Inflight)>,
    /// Raised after each durable commit of this mailbox (`commit_writes`): what front ends
    /// watching it ([`WatchChanges`]) wait on. Only its changing matters; many changes between
    /// two looks read as one, so a slow watcher costs nothing and holds nothing.
    changes: watch::Sender<u64>,
    /// The shown rows of the uid index as the last [`ListUids`] read them, with when
    /// ([`Listed`]): while no commit of this mailbox has come since, the index is what it was,
    /// and the next listing (every SELECT) and [`FetchFlags`] (FETCH FLAGS, SEARCH over flags)
    /// answer from it, not from a scan of a row per message (100,000 rows took most of each
    /// command's time). 16 bytes a message, held only once a session listed.
    shown: Option<(Listed, ShownIndex)>,
}

impl Mailbox {
    /// Loads a mailbox's counters from the store (a new mailbox starts empty). `holders` are its
    /// effective holders (see the field).
    pub fn load(
        entry: &MailboxEntry,
        holders: BTreeSet<NodeId>,
        ctx: NodeContext,
    ) -> Result<Self, StoreError> {
        let mut counters = ctx
            .store
            .get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(entry.id))?
            .unwrap_or_else(|| MailboxCounters {
                // A replica new on this node (perhaps again, after a wipe): its modseqs start
                // above any the lost one handed out.
                modseq: crate::counters::modseq_floor(ctx.env.clock.unix_millis()),
                ..Default::default()
            });
        let forget_counters = ctx.faults.counters_from_records;
        if forget_counters {
            counters.uidnext = UidNext::default();
            counters.modseq = 0;
        }
        let modseq_tag = ctx.node.modseq_tag();
        let counters_modseq = counters.modseq;
        let pruned = ctx
            .store
            .get(Table::Pruned, &keys::mailbox(entry.id))?
            .unwrap_or_default();
        let mut remembers_shown = false;
        ctx.store
            .scan_prefix(Table::ShownBefore, &keys::mailbox(entry.id), None, |_, _| {
                remembers_shown = true;
                Ok(false)
            })?;
        Ok(Mailbox {
            id: entry.id,
            uidvalidity: entry.uidvalidity,
            store: ctx.store.clone(),
            node_counters: ctx.counters.clone(),
            env: ctx.env.clone(),
            limits: ctx.limits,
            locations: entry.locations.value.clone(),
            holders,
            let_go: let_go_dates(entry),
            primary: primary_of(entry),
            ctx,
            modseq_tag,
            counters,
            inflight: Inflight::default(),
            quarantined: Default::default(),
            pruned,
            needs_reload: Arc::new(AtomicBool::new(forget_counters)),
            deleted: false,
            moving: Moving::default(),
            remembers_shown,
            last_expunge: ModSeq::new(counters_modseq, modseq_tag),
            saving_caches: BTreeMap::new(),
            changes: watch::Sender::new(0),
            shown: None,
        })
    }

    /// Leaves a record that cannot be read out of what is served, with a clear log line.
    pub(crate) fn quarantine(&self, aid: &AppendId, error: &StoreError) {
        self.quarantine_key(Some(aid), error);
    }

    pub(crate) fn quarantine_key(&self, aid: Option<&AppendId>, error: &StoreError) {
        self.quarantined.set(self.quarantined.get() + 1);
        match aid {
            Some(aid) => {
                warn!(mailbox = %self.id, append_id = %aid, %error, "record quarantined: it cannot be read")
            }
            None => warn!(mailbox = %self.id, %error, "record with an unreadable key quarantined"),
        }
    }

    /// Turns a local client's batch into writes: the counters and the sync log rows go with it.
    pub(crate) fn local_writes(&self, mut batch: Batch) -> Writes {
        if batch.is_empty() {
            return Writes::default();
        }
        self.put_counters(&mut batch);
        let mut writes = Writes {
            batch,
            logged: Default::default(),
        };
        self.log_local(&mut writes);
        writes
    }

    /// Echo suppression for one stored state of this mailbox: whether `peer` has it already
    /// (`SyncLog::suppressed`), unless the state is older than `peer` letting its copy go.
    pub(crate) fn peer_has(
        &self,
        origin: &NodeId,
        arrived_on: Option<&NodeId>,
        newest: u64,
        peer: &NodeId,
    ) -> bool {
        !self.let_go_after(peer, newest) && self.ctx.sync_log.suppressed(origin, arrived_on, newest, peer)
    }

    /// The date at which `node` last let its copy go (0: never).
    pub(crate) fn peer_let_go(&self, node: &NodeId) -> u64 {
        self.let_go.get(node).copied().unwrap_or(0)
    }

    /// Whether `node` let its copy go after a state dated `newest` (so it may have lost it).
    pub(crate) fn let_go_after(&self, node: &NodeId, newest: u64) -> bool {
        self.let_go.get(node).is_some_and(|date| newest <= *date)
    }

    /// Adds the sync log rows for a change made here by a client.
    pub(crate) fn log_local(&self, writes: &mut Writes) {
        let logged = self.ctx.sync_log.log(
            &mut writes.batch,
            SyncItem::Mailbox(self.id),
            &Provenance::Local,
            Some(&self.holders),
        );
        writes.logged.merge(logged);
    }

    pub(crate) fn highestmodseq(&self) -> ModSeq {
        ModSeq::new(self.counters.modseq, self.modseq_tag)
    }

    pub(crate) fn next_modseq(&mut self) -> ModSeq {
        self.counters.modseq += 1;
        self.highestmodseq()
    }

    pub(crate) fn check_usable(&self) -> Result<(), MailError> {
        if self.deleted {
            Err(MailError::MailboxDeleted(self.id))
        } else {
            Ok(())
        }
    }

    /// A client may change a mailbox only on a node among its locations. A node the mailbox moved
    /// away from keeps its copy only until its changes have reached the new locations, then lets
    /// it go; a write taken meanwhile would rebuild a copy nobody lets go (and pull the whole
    /// mailbox back to it), so the client is told where the mailbox lives instead, as the seed's
    /// XFER refers clients to the new server. A relay (a holder outside the locations) refuses
    /// too: it keeps a copy only while the graph needs it. Replication is not a client: it does
    /// not ask.
    pub(crate) fn check_writable(&self) -> Result<(), MailError> {
        self.check_usable()?;
        if self.locations.is_empty() || self.locations.contains(&self.ctx.node) {
            return Ok(());
        }
        Err(self.not_held_here())
    }

    /// The error for a write or a merge this node must not take: the mailbox lives elsewhere.
    pub(crate) fn not_held_here(&self) -> MailError {
        MailError::NotHeldHere {
            id: self.id,
            node: self.ctx.node.to_string(),
            locations: self
                .locations
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Rebuilds the in-memory state (counters, digest, pruned set) from what is committed, after
    /// a failed commit or an operation that failed half way through. Runs only when nothing is
    /// inflight, so the store is the whole truth. The counters row is not trusted: a batch
    /// prepared while an earlier one was inflight carries that one's counts, and may have
    /// committed when the earlier one failed.
    pub(crate) fn reload_if_needed(&mut self) -> Result<(), StoreError> {
        if !self.needs_reload.load(Ordering::Relaxed) || self.inflight.count() > 0 {
            return Ok(());
        }
        let stored = self
            .store
            .get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(self.id))?
            .unwrap_or_default();
        let pruned: PrunedSet = self
            .store
            .get(Table::Pruned, &keys::mailbox(self.id))?
            .unwrap_or_default();
        let mut fresh = MailboxCounters {
            // Never back: a uid or modseq handed out in memory may have been seen by a client.
            uidnext: self.counters.uidnext.max(stored.uidnext),
            modseq: self.counters.modseq.max(stored.modseq),
            compacted_upto: stored.compacted_upto,
            history_from: self.counters.history_from.max(stored.history_from),
            ..Default::default()
        };
        if self.ctx.faults.counters_from_records {
            fresh.uidnext = UidNext::default();
            fresh.modseq = 0;
        }
        self.store
            .scan_prefix(Table::Messages, &keys::mailbox(self.id), None, |_, v| {
                let s: StoredRecord = decode(v, "message record")?;
                fresh.uidnext = fresh
                    .uidnext
                    .max(UidNext(Uid(s.record.uid.value.0.saturating_add(1))));
                fresh.modseq = fresh.modseq.max(s.modseq.counter());
                fresh.digest.add(&s.record);
                account(&mut fresh, &s, 1);
                Ok(true)
            })?;
        fresh.digest.add_pruned_set(&pruned);
        if let Some(&(_, hi)) = pruned
            .uids
            .last()
            .filter(|_| !self.ctx.faults.counters_from_records)
        {
            fresh.uidnext = fresh.uidnext.max(UidNext(Uid((hi as u32).saturating_add(1))));
        }
        // Whether the peers have the committed set is not known: it travels to each once more.
        fresh.pruned_modseq = ModSeq::new(fresh.modseq, self.modseq_tag);
        fresh.uidnext_modseq = fresh.pruned_modseq;
        self.counters = fresh;
        self.pruned = pruned;
        // Any record may be expunged: compaction looks again from `compacted_upto`.
        self.last_expunge = self.highestmodseq();
        self.needs_reload.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The in-memory state waits for a rebuild from the store (a commit failed).
    pub(crate) fn needs_reload(&self) -> bool {
        self.needs_reload.load(Ordering::Relaxed)
    }

    /// Marks the in-memory state for a rebuild from the store before the next operation: an
    /// operation failed after changing it, and its writes were never submitted.
    pub(crate) fn discard_unsubmitted(&self) {
        self.needs_reload.store(true, Ordering::Relaxed);
    }

    /// Adds the writes that store a local client's change to `record` (replacing `old`).
    fn write_record(
        &mut self,
        batch: &mut Batch,
        old: Option<&StoredRecord>,
        record: MessageRecord,
    ) -> ModSeq {
        let stored = StoredRecord {
            record,
            modseq: ModSeq::ZERO,
            origin: self.ctx.node.clone(),
            arrived_on: None,
            hidden: false,
            created: ModSeq::ZERO,
        };
        self.write_stored(batch, old, stored)
    }

    /// Adds the writes that store `new` (replacing `old`) at a fresh modseq, keeping the uid index,
    /// the modseq index, the digest and the counts in step.
    pub(crate) fn write_stored(
        &mut self,
        batch: &mut Batch,
        old: Option<&StoredRecord>,
        new: StoredRecord,
    ) -> ModSeq {
        self.write_stored_returning(batch, old, new).modseq
    }

    /// [`Mailbox::write_stored`], giving back the record as written (its modseq and creation
    /// point set), for a caller that keeps it: a merge of 1,000 flag changes copied each one.
    pub(crate) fn write_stored_returning(
        &mut self,
        batch: &mut Batch,
        old: Option<&StoredRecord>,
        mut new: StoredRecord,
    ) -> StoredRecord {
        let modseq = self.next_modseq();
        new.modseq = modseq;
        new.created = old
            .map(|o| o.created)
            .filter(|c| *c != ModSeq::ZERO)
            .unwrap_or(modseq);
        let aid = new.record.append_id.clone();
        match old {
            Some(old) => {
                batch.delete(Table::Modseqs, keys::modseq(self.id, old.modseq));
                if old.record.uid.value != new.record.uid.value {
                    batch.delete(Table::Uids, keys::uid(self.id, old.record.uid.value, &aid));
                }
                self.counters.digest.replace(&old.record, &new.record);
                account(&mut self.counters, old, -1);
            }
            None => self.counters.digest.add(&new.record),
        }
        // Every write rewrites the row: it carries the flags and the modseq (`uid_row`).
        let stale = self.ctx.faults.stale_uid_rows
            && old
                .is_some_and(|o| o.record.uid.value == new.record.uid.value && is_shown(o) == is_shown(&new));
        if !stale {
            batch.put_raw(
                Table::Uids,
                keys::uid(self.id, new.record.uid.value, &aid),
                uid_row(&new),
            );
        }
        account(&mut self.counters, &new, 1);
        if new.record.is_expunged() {
            self.last_expunge = self.last_expunge.max(modseq);
        }
        let after = UidNext(Uid(new.record.uid.value.0.saturating_add(1)));
        self.counters.uidnext = self.counters.uidnext.max(after);
        batch.put_raw(Table::Modseqs, keys::modseq(self.id, modseq), aid.to_key_bytes());
        batch.put(Table::Messages, keys::message(self.id, &aid), &new);
        new
    }

    pub(crate) fn put_counters(&self, batch: &mut Batch) {
        batch.put(Table::MailboxState, keys::mailbox(self.id), &self.counters);
    }

    /// The visible records with uids in `set`, in uid order.
    pub(crate) fn records_in(&self, set: &UidSet) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        self.visit_records_in(set, |s| out.push(s))?;
        Ok(out)
    }

    /// Each visible record in `set`, in uid order, handed to `visit` one at a time (a listing
    /// of a large mailbox holds one record at a time, not all of them).
    pub(crate) fn visit_records_in(
        &self,
        set: &UidSet,
        mut visit: impl FnMut(StoredRecord),
    ) -> Result<(), StoreError> {
        // One read transaction for the whole listing, not one per message.
        let snapshot = self.store.snapshot()?;
        for (lo, hi) in set.ranges() {
            let start = keys::uid_prefix(self.id, Uid(lo));
            let mut ids = Vec::new();
            snapshot.scan_from(
                Table::Uids,
                &keys::mailbox(self.id),
                &start,
                |k, _| match keys::parse_uid(k) {
                    Some((uid, aid)) if uid.0 <= hi => {
                        ids.push(aid);
                        Ok(true)
                    }
                    Some(_) => Ok(false),
                    None => Err(StoreError::Decode {
                        what: "uid index key".into(),
                        reason: "malformed".into(),
                    }),
                },
            )?;
            for aid in ids {
                let stored =
                    match snapshot.get::<StoredRecord>(Table::Messages, &keys::message(self.id, &aid)) {
                        Err(e @ StoreError::Decode { .. }) => {
                            self.quarantine(&aid, &e);
                            None
                        }
                        other => other?,
                    };
                if let Some(s) = stored {
                    if !s.record.is_expunged() && !s.hidden {
                        visit(s);
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `op` as an atomic read-modify-write: after everything inflight has committed, with no
    /// other message handled until its own writes are durable.
    pub(crate) fn atomic<R: 'static>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<(Writes, R), MailError> + 'static,
    ) -> AtomicResponse<Self, Result<R, MailError>> {
        let idle = self.inflight.idle();
        AtomicResponse::new(Box::pin(idle.into_actor(self).then(move |(), act, _| {
            let prepared = act.check_usable().and_then(|()| {
                act.reload_if_needed()?;
                op(act)
            });
            // Operations check their input before they change anything; a store error half way
            // through leaves the in-memory state ahead of the store.
            if let Err(MailError::Store(_)) = &prepared {
                act.discard_unsubmitted();
            }
            let pending = prepared.map(|(writes, result)| {
                let done = if writes.is_empty() {
                    None
                } else {
                    Some(act.commit_writes(writes))
                };
                (done, result)
            });
            async move {
                let (done, result) = pending?;
                if let Some(done) = done {
                    done.await?;
                }
                Ok(result)
            }
            .into_actor(act)
        })))
    }

    /// Submits writes; a failure marks the counters for recomputation. Every change of the
    /// mailbox's messages, a client's or replication's, is written here: once it is durable the
    /// watchers ([`WatchChanges`]) are told.
    pub(crate) fn commit_writes(
        &self,
        writes: Writes,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let done = self.ctx.commit(writes, Some(&self.inflight));
        let needs_reload = self.needs_reload.clone();
        let changes = self.changes.clone();
        let id = self.id;
        async move {
            let result = done.await;
            match &result {
                Err(e) => {
                    warn!(mailbox = %id, error = %e, "mailbox write failed");
                    needs_reload.store(true, Ordering::Relaxed);
                }
                // Raised even with no watcher (`send_modify` never fails): one who comes later
                // starts from the value then.
                Ok(()) => changes.send_modify(|count| *count = count.wrapping_add(1)),
            }
            result
        }
    }

    fn validate_flags(flags: &[String]) -> Result<Vec<Flag>, MailError> {
        flags
            .iter()
            .map(|f| Flag::new(f).map_err(MailError::from))
            .collect()
    }

    fn new_record(
        &self,
        aid: AppendId,
        uid: Uid,
        guid: Guid,
        size: u64,
        internaldate: i64,
        flags: &[Flag],
    ) -> MessageRecord {
        let version = self.node_counters.tick();
        let mut record = MessageRecord {
            append_id: aid,
            uid: Lww::new(uid, version.clone()),
            guid,
            size,
            internaldate,
            flags: BTreeMap::new(),
            expunged: None,
        };
        for f in flags {
            record.write_flag(f.clone(), true, version.clone());
        }
        record
    }
}

/// Adds (`sign` 1) or removes (-1) a record from the message counts. Expunged and hidden
/// records are not visible, so they do not count.
fn account(c: &mut MailboxCounters, stored: &StoredRecord, sign: i64) {
    let record = &stored.record;
    if record.is_expunged() || stored.hidden {
        return;
    }
    let seen = record.has_flag(&Flag::seen());
    let apply = |v: &mut u64| *v = (*v as i64 + sign).max(0) as u64;
    apply(&mut c.exists);
    if !seen {
        apply(&mut c.unseen);
    }
}

/// Takes a record out of the message counts (it is being compacted away).
pub(crate) fn unaccount(c: &mut MailboxCounters, stored: &StoredRecord) {
    account(c, stored, -1);
}

/// The node that resolves this mailbox's uid conflicts (see `MailboxEntry::effective_primary`:
/// always a holder).
pub(crate) fn primary_of(entry: &MailboxEntry) -> NodeId {
    entry.effective_primary()
}

impl Actor for Mailbox {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Many clients (or a whole delivery batch) may append at once; a deep queue lets them all
        // reach the same group commit instead of trickling in 16 at a time.
        ctx.set_mailbox_capacity(MAILBOX_QUEUE);
    }
}

/// Messages queued per Mailbox actor before senders wait.
const MAILBOX_QUEUE: usize = 1024;

/// Stores a new message. Answers once body and record are durable.
#[derive(Message)]
#[rtype(result = "Result<AppendOutcome, MailError>")]
pub struct Append {
    pub body: Vec<u8>,
    pub flags: Vec<String>,
    /// Seconds since the epoch; the node's clock when absent.
    pub internaldate: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub uidvalidity: UidValidity,
    pub uid: Uid,
    pub append_id: AppendId,
    pub modseq: ModSeq,
}

impl Handler<Append> for Mailbox {
    type Result = ResponseFuture<Result<AppendOutcome, MailError>>;

    fn handle(&mut self, msg: Append, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            self.check_writable()?;
            let size = msg.body.len() as u64;
            if size == 0 {
                return Err(MailError::EmptyMessage);
            }
            // A segment entry records the length in 32 bits, whatever the configured limit.
            let max = self.limits.max_message_bytes.min(u32::MAX as u64);
            if size > max {
                return Err(MailError::MessageTooLarge { size, max });
            }
            let flags = Self::validate_flags(&msg.flags)?;
            self.reload_if_needed()?;
            let guid = Guid::of(&msg.body);
            let aid = self.node_counters.next_append_id();
            let mut uid = self.counters.uidnext.0;
            if self.ctx.faults.reuse_uids && uid.0 > 1 && aid.counter.is_multiple_of(4) {
                uid = Uid(uid.0 - 1);
            } else {
                self.counters.uidnext = UidNext(Uid(uid.0 + 1));
            }
            let internaldate = msg.internaldate.unwrap_or_else(|| self.env.unix_seconds());
            let record = self.new_record(aid.clone(), uid, guid, size, internaldate, &flags);
            let mut batch = Batch::new();
            batch.add_body(guid, Some(Arc::new(msg.body)));
            let modseq = self.write_record(&mut batch, None, record);
            let outcome = AppendOutcome {
                uidvalidity: self.uidvalidity,
                uid,
                append_id: aid,
                modseq,
            };
            Ok((self.commit_writes(self.local_writes(batch)), outcome))
        })();
        Box::pin(async move {
            let (done, outcome) = prepared?;
            done.await?;
            Ok(outcome)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagAction {
    Add,
    Remove,
    Replace,
}

/// IMAP STORE: changes flags of the messages in `uids`. With `unchanged_since` (CONDSTORE),
/// messages modified after that modseq are left alone and reported.
#[derive(Message)]
#[rtype(result = "Result<StoreOutcome, MailError>")]
pub struct StoreFlags {
    pub uids: UidSet,
    pub action: FlagAction,
    pub flags: Vec<String>,
    pub unchanged_since: Option<ModSeq>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Every message the store matched, with its flags afterwards.
    pub updated: Vec<MessageView>,
    /// Messages skipped because they changed after `unchanged_since`.
    pub modified: Vec<Uid>,
    /// The flags this store wrote, per message, at `version`: a flag already in the asked state
    /// is not written (it keeps its older version, and a concurrent newer write may win over it).
    pub written: Vec<(AppendId, Vec<(Flag, bool)>)>,
    /// The version of every flag in `written`.
    pub version: Option<Version>,
}

impl Handler<StoreFlags> for Mailbox {
    type Result = AtomicResponse<Self, Result<StoreOutcome, MailError>>;

    fn handle(&mut self, msg: StoreFlags, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            act.check_writable()?;
            let flags = Self::validate_flags(&msg.flags)?;
            let records = act.records_in(&msg.uids)?;
            let mut batch = Batch::new();
            let mut outcome = StoreOutcome::default();
            let version = act.node_counters.tick();
            for stored in records {
                if msg.unchanged_since.is_some_and(|since| stored.modseq > since) {
                    outcome.modified.push(stored.record.uid.value);
                    continue;
                }
                let mut record = stored.record.clone();
                let before = record.flags.clone();
                let mut changed = false;
                match msg.action {
                    FlagAction::Add => {
                        for f in &flags {
                            changed |= record.write_flag(f.clone(), true, version.clone());
                        }
                    }
                    FlagAction::Remove => {
                        for f in &flags {
                            changed |= record.write_flag(f.clone(), false, version.clone());
                        }
                    }
                    FlagAction::Replace => {
                        let current: Vec<Flag> = record.set_flags().cloned().collect();
                        for f in current.iter().filter(|f| !flags.contains(f)) {
                            changed |= record.write_flag(f.clone(), false, version.clone());
                        }
                        for f in &flags {
                            changed |= record.write_flag(f.clone(), true, version.clone());
                        }
                    }
                }
                if changed {
                    let written = record
                        .flags
                        .iter()
                        .filter(|(f, state)| before.get(*f) != Some(*state))
                        .map(|(f, state)| (f.clone(), state.value))
                        .collect();
                    outcome.written.push((record.append_id.clone(), written));
                    outcome.version = Some(version.clone());
                    let mut view = MessageView::of(&stored);
                    view.flags = record.set_flags().cloned().collect();
                    if act.ctx.faults.lost_flag_writes {
                        record.flags = stored.record.flags.clone();
                    }
                    view.modseq = act.write_record(&mut batch, Some(&stored), record);
                    outcome.updated.push(view);
                } else {
                    outcome.updated.push(MessageView::of(&stored));
                }
            }
            Ok((act.local_writes(batch), outcome))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpungeMode {
    /// IMAP EXPUNGE: every message with \Deleted.
    Deleted,
    /// IMAP UID EXPUNGE: the messages in the set that have \Deleted.
    DeletedIn(UidSet),
    /// The messages in the set, flagged or not (MOVE, operator tools).
    Uids(UidSet),
}

/// Expunges messages; answers with the uids expunged.
#[derive(Message)]
#[rtype(result = "Result<Vec<Uid>, MailError>")]
pub struct Expunge {
    pub mode: ExpungeMode,
}

impl Mailbox {
    fn expunge_records(&mut self, batch: &mut Batch, records: Vec<StoredRecord>) -> Vec<Uid> {
        let version = self.node_counters.tick();
        let mut gone = Vec::new();
        for stored in records {
            let mut record = stored.record.clone();
            record.expunged = Some(version.clone());
            batch.release_body(record.guid);
            gone.push(record.uid.value);
            self.write_record(batch, Some(&stored), record);
        }
        gone
    }
}

impl Handler<Expunge> for Mailbox {
    type Result = AtomicResponse<Self, Result<Vec<Uid>, MailError>>;

    fn handle(&mut self, msg: Expunge, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            act.check_writable()?;
            let deleted = Flag::deleted();
            let records: Vec<StoredRecord> = match &msg.mode {
                ExpungeMode::Deleted => act.records_in(&UidSet::all())?,
                ExpungeMode::DeletedIn(set) | ExpungeMode::Uids(set) => act.records_in(set)?,
            }
            .into_iter()
            .filter(|s| matches!(msg.mode, ExpungeMode::Uids(_)) || s.record.has_flag(&deleted))
            .collect();
            let mut batch = Batch::new();
            let gone = act.expunge_records(&mut batch, records);
            let mut writes = act.local_writes(batch);
            // Earlier expunges every peer has acknowledged are compacted away now.
            let stable = act.stable_point(None)?;
            act.compact_tombstones(&mut writes, stable)?;
            Ok((writes, gone))
        })
    }
}

/// What a copy needs of a message: the body is referenced by Guid, never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyItem {
    pub guid: Guid,
    pub size: u64,
    pub internaldate: i64,
    pub flags: Vec<Flag>,
}

/// Adds copies of messages whose bodies this node already stores (target side of COPY/MOVE).
/// Each copy is a new message with its own AppendId. Answers with the new uids and AppendIds, in
/// order.
#[derive(Message)]
#[rtype(result = "Result<Vec<(Uid, AppendId)>, MailError>")]
pub struct InsertCopies {
    pub items: Vec<CopyItem>,
    /// For a move: the source mailbox and the messages it will expunge. The copies are written
    /// with a `moves` row naming them, so a crash before the source's expunge is finished at
    /// start instead of leaving the message in both mailboxes.
    pub moving_from: Option<(MailboxId, Vec<AppendId>)>,
}

impl Mailbox {
    fn insert_copies(&mut self, batch: &mut Batch, items: &[CopyItem]) -> Vec<(Uid, AppendId)> {
        let mut copies = Vec::with_capacity(items.len());
        for item in items {
            let aid = self.node_counters.next_append_id();
            let uid = self.counters.uidnext.0;
            self.counters.uidnext = UidNext(Uid(uid.0 + 1));
            let record = self.new_record(
                aid.clone(),
                uid,
                item.guid,
                item.size,
                item.internaldate,
                &item.flags,
            );
            batch.add_body(item.guid, None);
            self.write_record(batch, None, record);
            copies.push((uid, aid));
        }
        copies
    }
}

impl Handler<InsertCopies> for Mailbox {
    type Result = ResponseFuture<Result<Vec<(Uid, AppendId)>, MailError>>;

    fn handle(&mut self, msg: InsertCopies, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            self.check_writable()?;
            self.reload_if_needed()?;
            let mut batch = Batch::new();
            let uids = self.insert_copies(&mut batch, &msg.items);
            if let (Some((source, moved)), Some((_, first))) = (&msg.moving_from, uids.first()) {
                batch.put(Table::Moves, keys::message(*source, first), moved);
            }
            Ok::<_, MailError>((self.commit_writes(self.local_writes(batch)), uids))
        })();
        Box::pin(async move {
            let (done, uids) = prepared?;
            done.await?;
            Ok(uids)
        })
    }
}

/// One message a COPY or MOVE took: where it was and what it is now (COPYUID gives the two uids;
/// the AppendIds say which message the source was and which new one the copy is).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transferred {
    pub from: Uid,
    pub to: Uid,
    pub source: AppendId,
    pub copy: AppendId,
}

impl Transferred {
    fn pair(source: &StoredRecord, (to, copy): (Uid, AppendId)) -> Self {
        Transferred {
            from: source.record.uid.value,
            to,
            source: source.record.append_id.clone(),
            copy,
        }
    }
}

/// IMAP COPY (`remove_source` false) or MOVE (true) of the messages in `uids` to `target`.
/// Answers with each message copied, in the source's uid order.
///
/// Between two mailboxes this runs in three steps, each holding at most one mailbox, so two
/// transfers in opposite directions cannot wait on each other (DESIGN.md, "No deadlock by
/// construction"): (1) this mailbox reads the messages from committed state and, for a move,
/// claims them; (2) the target inserts the copies (durable before the next step); (3) for a move,
/// this mailbox expunges the claimed messages that are still here. A crash between (2) and (3)
/// never leaves the message in neither; it leaves a `moves` row, written with the copies, that the
/// node finishes at start ([`ResumeMoves`]), so not in both either. Within one mailbox, copies and
/// expunges share one atomic batch. ARCHITECTURE.md ("COPY and MOVE") gives the semantics.
#[derive(Message)]
#[rtype(result = "Result<Vec<Transferred>, MailError>")]
pub struct Transfer {
    pub uids: UidSet,
    pub target_id: MailboxId,
    pub target: Addr<Mailbox>,
    pub remove_source: bool,
}

impl Handler<Transfer> for Mailbox {
    // Not atomic: the steps that change this mailbox are messages of their own.
    type Result = ResponseFuture<Result<Vec<Transferred>, MailError>>;

    fn handle(&mut self, msg: Transfer, ctx: &mut Self::Context) -> Self::Result {
        if self.ctx.faults.transfer_never_answers {
            // Sabotage (simulator only): the client waits for ever.
            return Box::pin(std::future::pending());
        }
        let me = ctx.address();
        if msg.target_id == self.id {
            return Box::pin(async move {
                me.send(TransferWithin {
                    uids: msg.uids,
                    remove_source: msg.remove_source,
                })
                .await?
            });
        }
        // Step 1. Only committed records are read, so nothing a crash could take back is copied.
        let prepared = (|| {
            if msg.remove_source {
                self.check_writable()?;
            } else {
                self.check_usable()?;
            }
            let mut records = self.records_in(&msg.uids)?;
            let claim = if msg.remove_source {
                // A message another move from this mailbox is taking already is not taken twice
                // (two clients moving it to two mailboxes would leave two copies for good).
                let claim = self.moving.claim(records.iter().map(|s| &s.record.append_id));
                records.retain(|s| claim.holds(&s.record.append_id));
                Some(claim)
            } else {
                None
            };
            Ok::<_, MailError>((records, claim))
        })();
        let target = msg.target;
        let source = self.id;
        Box::pin(async move {
            let (records, claim) = prepared?;
            if records.is_empty() {
                return Ok(Vec::new());
            }
            let items = records.iter().map(CopyItem::of).collect();
            // The sources by AppendId: the target records where its copies came from, and step
            // 3 expunges those still here.
            let sources: Vec<AppendId> = records.iter().map(|s| s.record.append_id.clone()).collect();
            let moving_from = claim.as_ref().map(|_| (source, sources.clone()));
            // Step 2: the target takes the copies while this mailbox serves everyone else.
            let copies = target.send(InsertCopies { items, moving_from }).await??;
            let pairs: Vec<Transferred> = records
                .iter()
                .zip(copies)
                .map(|(s, c)| Transferred::pair(s, c))
                .collect();
            if let Some(claim) = claim {
                // Step 3: the sources go, those that are still here (by AppendId: a promotion
                // since step 1 moved the message, it did not make it another one).
                let intent = keys::message(source, &pairs[0].copy);
                match me
                    .send(ExpungeTransferred {
                        moved: sources,
                        intent,
                    })
                    .await
                {
                    Ok(Ok(())) | Ok(Err(MailError::MailboxDeleted(_))) => {}
                    // The copies are durable: the message is in the target either way, and the
                    // `moves` row left behind finishes the expunge when the node next starts.
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(e.into()),
                }
                drop(claim);
            }
            Ok(pairs)
        })
    }
}

impl CopyItem {
    pub fn of(stored: &StoredRecord) -> Self {
        CopyItem {
            guid: stored.record.guid,
            size: stored.record.size,
            internaldate: stored.record.internaldate,
            flags: stored.record.set_flags().cloned().collect(),
        }
    }
}

/// Step 3 of a move to another mailbox: expunges the messages copied, those still here and not
/// expunged meanwhile, and deletes the move's `moves` row (`intent`) in the same batch.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
struct ExpungeTransferred {
    moved: Vec<AppendId>,
    intent: Vec<u8>,
}

impl Mailbox {
    /// The records of `moved` still here and not expunged: what step 3 of a move expunges.
    fn still_to_move(&self, moved: &[AppendId]) -> Result<Vec<StoredRecord>, MailError> {
        let mut still = Vec::new();
        for aid in moved {
            if self.pruned.contains(aid) {
                continue;
            }
            let stored: Option<StoredRecord> =
                self.store.get(Table::Messages, &keys::message(self.id, aid))?;
            if let Some(s) = stored.filter(|s| !s.record.is_expunged()) {
                still.push(s);
            }
        }
        Ok(still)
    }
}

impl Handler<ExpungeTransferred> for Mailbox {
    type Result = AtomicResponse<Self, Result<(), MailError>>;

    fn handle(&mut self, msg: ExpungeTransferred, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            let still = act.still_to_move(&msg.moved)?;
            let mut batch = Batch::new();
            act.expunge_records(&mut batch, still);
            batch.delete(Table::Moves, msg.intent);
            Ok((act.local_writes(batch), ()))
        })
    }
}

/// Finishes the moves out of this mailbox that a stop interrupted after their copies were
/// durable (the `moves` rows with this mailbox's prefix): their sources are expunged now, so a
/// moved message ends in the target only. The Directory sends it at start. Answers how many
/// messages it expunged.
#[derive(Message)]
#[rtype(result = "Result<usize, MailError>")]
pub struct ResumeMoves;

impl Handler<ResumeMoves> for Mailbox {
    type Result = AtomicResponse<Self, Result<usize, MailError>>;

    fn handle(&mut self, _: ResumeMoves, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            let mut rows: Vec<(Vec<u8>, Vec<AppendId>)> = Vec::new();
            act.store
                .scan_prefix(Table::Moves, &keys::mailbox(act.id), None, |k, v| {
                    rows.push((k.to_vec(), decode(v, "move")?));
                    Ok(true)
                })?;
            let mut batch = Batch::new();
            let mut still = Vec::new();
            for (key, moved) in rows {
                still.extend(act.still_to_move(&moved)?);
                batch.delete(Table::Moves, key);
            }
            still.sort_by(|a, b| a.record.append_id.cmp(&b.record.append_id));
            still.dedup_by(|a, b| a.record.append_id == b.record.append_id);
            let expunged = still.len();
            if expunged > 0 {
                info!(mailbox = %act.id, expunged, "finished moves a stop interrupted: their copies were durable, the sources are expunged now");
            }
            act.expunge_records(&mut batch, still);
            Ok((act.local_writes(batch), expunged))
        })
    }
}

/// COPY or MOVE within one mailbox: copies and expunges in one atomic batch.
#[derive(Message)]
#[rtype(result = "Result<Vec<Transferred>, MailError>")]
struct TransferWithin {
    uids: UidSet,
    remove_source: bool,
}

impl Handler<TransferWithin> for Mailbox {
    type Result = AtomicResponse<Self, Result<Vec<Transferred>, MailError>>;

    fn handle(&mut self, msg: TransferWithin, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            act.check_writable()?;
            let records = act.records_in(&msg.uids)?;
            let records: Vec<StoredRecord> = if msg.remove_source {
                // Not while a move to another mailbox is taking them.
                records
                    .into_iter()
                    .filter(|s| !act.moving.is_claimed(&s.record.append_id))
                    .collect()
            } else {
                records
            };
            let items: Vec<CopyItem> = records.iter().map(CopyItem::of).collect();
            let mut batch = Batch::new();
            let copies = act.insert_copies(&mut batch, &items);
            let pairs: Vec<Transferred> = records
                .iter()
                .zip(copies)
                .map(|(s, c)| Transferred::pair(s, c))
                .collect();
            if msg.remove_source {
                act.expunge_records(&mut batch, records);
            }
            Ok((act.local_writes(batch), pairs))
        })
    }
}

/// Sets (or, with `None`, removes) one annotation of the mailbox. Answers with the version the
/// write carries (`None`: removing an annotation that never existed writes nothing); a client's
/// write is in the replicated state for good unless a write with a higher version replaces it.
#[derive(Message)]
#[rtype(result = "Result<Option<Version>, MailError>")]
pub struct SetAnnotation {
    pub entry: String,
    pub value: Option<Vec<u8>>,
}

impl Handler<SetAnnotation> for Mailbox {
    type Result = AtomicResponse<Self, Result<Option<Version>, MailError>>;

    fn handle(&mut self, msg: SetAnnotation, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            act.check_writable()?;
            act.check_annotation(&msg.entry, msg.value.as_deref())?;
            let mut batch = Batch::new();
            let version = act.write_annotation(&mut batch, &msg.entry, msg.value)?;
            Ok((act.local_writes(batch), version))
        })
    }
}

/// Sets and removes several annotations of the mailbox in one commit: all of them, or none
/// when one is refused (RFC 5464 4.3 asks this of SETMETADATA). An entry named twice takes its
/// last value. `max_entries` bounds how many annotations with a value the mailbox holds: a
/// write that would leave more than that, and more than before it, is refused whole
/// (`TooManyAnnotations`); one that replaces or removes values never is, so a mailbox over a
/// lowered limit can still be tidied. Answers with each entry's version, as [`SetAnnotation`].
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, Option<Version>)>, MailError>")]
pub struct SetAnnotations {
    pub entries: Vec<(String, Option<Vec<u8>>)>,
    pub max_entries: usize,
}

impl Handler<SetAnnotations> for Mailbox {
    type Result = AtomicResponse<Self, Result<Vec<(String, Option<Version>)>, MailError>>;

    fn handle(&mut self, msg: SetAnnotations, _: &mut Self::Context) -> Self::Result {
        self.atomic(move |act| {
            act.check_writable()?;
            // Last value per entry, in entry order (a BTreeMap: deterministic).
            let mut entries = std::collections::BTreeMap::new();
            for (entry, value) in msg.entries {
                act.check_annotation(&entry, value.as_deref())?;
                entries.insert(entry, value);
            }
            let before = act.annotation_count()?;
            let mut after = before;
            for (entry, value) in &entries {
                let key = keys::annotation(act.id, entry);
                let had = act
                    .store
                    .get::<StoredAnnotation>(Table::Annotations, &key)?
                    .is_some_and(|a| a.annotation.value().is_some());
                match (had, value.is_some()) {
                    (false, true) => after += 1,
                    (true, false) => after -= 1,
                    _ => {}
                }
            }
            if after > msg.max_entries && after > before {
                return Err(MailError::TooManyAnnotations { max: msg.max_entries });
            }
            let mut batch = Batch::new();
            let mut versions = Vec::with_capacity(entries.len());
            for (entry, value) in entries {
                let version = act.write_annotation(&mut batch, &entry, value)?;
                versions.push((entry, version));
            }
            Ok((act.local_writes(batch), versions))
        })
    }
}

impl Mailbox {
    /// An annotation write's entry name and value size, checked before anything is written.
    fn check_annotation(&self, entry: &str, value: Option<&[u8]>) -> Result<(), MailError> {
        validate_annotation_entry(entry)?;
        match value {
            Some(v) if v.len() > self.limits.max_annotation_bytes => Err(MailError::AnnotationTooLarge {
                size: v.len(),
                max: self.limits.max_annotation_bytes,
            }),
            _ => Ok(()),
        }
    }

    /// How many annotations of this mailbox have a value (tombstones are not counted).
    fn annotation_count(&self) -> Result<usize, MailError> {
        let mut count = 0;
        self.store
            .scan_prefix(Table::Annotations, &keys::mailbox(self.id), None, |_, v| {
                let a: StoredAnnotation = decode(v, "annotation")?;
                if a.annotation.value().is_some() {
                    count += 1;
                }
                Ok(true)
            })?;
        Ok(count)
    }

    /// Puts one checked annotation write into `batch`, at a fresh version and modseq; `None`
    /// when it removes an annotation that never existed (nothing to write).
    fn write_annotation(
        &mut self,
        batch: &mut Batch,
        entry: &str,
        value: Option<Vec<u8>>,
    ) -> Result<Option<Version>, MailError> {
        let key = keys::annotation(self.id, entry);
        let existing = self.store.get::<StoredAnnotation>(Table::Annotations, &key)?;
        if existing.is_none() && value.is_none() {
            return Ok(None);
        }
        let version = self.node_counters.tick();
        let annotation = Annotation::new(value, version.clone());
        let modseq = self.next_modseq();
        let stored = StoredAnnotation {
            annotation,
            modseq,
            origin: self.ctx.node.clone(),
            arrived_on: None,
        };
        batch.put(Table::Annotations, key, &stored);
        Ok(Some(version))
    }
}

/// The annotations that have a value (tombstones left out), by entry.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, Vec<u8>)>, MailError>")]
pub struct GetAnnotations;

impl Handler<GetAnnotations> for Mailbox {
    type Result = Result<Vec<(String, Vec<u8>)>, MailError>;

    fn handle(&mut self, _: GetAnnotations, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        let mut out = Vec::new();
        self.store
            .scan_prefix(Table::Annotations, &keys::mailbox(self.id), None, |k, v| {
                let a: StoredAnnotation = decode(v, "annotation")?;
                if let Some(value) = a.annotation.value() {
                    out.push((String::from_utf8_lossy(&k[16..]).into_owned(), value.to_vec()));
                }
                Ok(true)
            })?;
        Ok(out)
    }
}

/// A receiver that changes after each durable commit of this mailbox: appends, flag changes and
/// expunges, made by a client here or brought by replication. It says only that something
/// changed (the watcher reads what with `GetState`, `ChangedSince` and `ListUids`), so changes
/// coalesce and the channel holds one number whatever the watcher's pace; a watcher that goes
/// away just drops its receiver. It closes when the actor stops (the mailbox was deleted).
#[derive(Message)]
#[rtype(result = "Result<watch::Receiver<u64>, MailError>")]
pub struct WatchChanges;

impl Handler<WatchChanges> for Mailbox {
    type Result = Result<watch::Receiver<u64>, MailError>;

    fn handle(&mut self, _: WatchChanges, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        Ok(self.changes.subscribe())
    }
}

#[derive(Message)]
#[rtype(result = "Result<MailboxState, MailError>")]
pub struct GetState;

impl Handler<GetState> for Mailbox {
    type Result = Result<MailboxState, MailError>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        // Committed counters: in-memory ones may include appends not yet durable.
        let c = self
            .store
            .get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(self.id))?
            .unwrap_or_default();
        Ok(MailboxState {
            id: self.id,
            uidvalidity: self.uidvalidity,
            uidnext: c.uidnext.0,
            highestmodseq: ModSeq::new(c.modseq, self.modseq_tag),
            exists: c.exists,
            unseen: c.unseen,
            digest: c.digest,
            quarantined: self.quarantined.get(),
        })
    }
}

/// Whether a client may write this mailbox on this node now (the check every client write
/// makes first): a front end that writes one message to several mailboxes checks them all
/// before writing any, so that a refusal leaves nothing half-written.
#[derive(Message)]
#[rtype(result = "Result<(), MailError>")]
pub struct CheckWritable;

impl Handler<CheckWritable> for Mailbox {
    type Result = Result<(), MailError>;

    fn handle(&mut self, _: CheckWritable, _: &mut Self::Context) -> Self::Result {
        self.check_writable()
    }
}

/// The expunged messages compacted away (no longer held as records) and the uids they retired,
/// as committed.
#[derive(Message)]
#[rtype(result = "Result<PrunedSet, MailError>")]
pub struct GetPruned;

impl Handler<GetPruned> for Mailbox {
    type Result = Result<PrunedSet, MailError>;

    fn handle(&mut self, _: GetPruned, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        // Committed: the in-memory set may include a compaction whose batch is not durable yet.
        Ok(self
            .store
            .get::<PrunedSet>(Table::Pruned, &keys::mailbox(self.id))?
            .unwrap_or_default())
    }
}

/// The records changed after `since` (this node's modseq), oldest change first, at most `limit`;
/// expunged records included, so a client or peer learns of expunges too.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredRecord>, MailError>")]
pub struct ChangedSince {
    pub since: ModSeq,
    pub limit: usize,
}

impl Handler<ChangedSince> for Mailbox {
    type Result = Result<Vec<StoredRecord>, MailError>;

    fn handle(&mut self, msg: ChangedSince, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        let prefix = keys::mailbox(self.id);
        let start = keys::modseq(self.id, ModSeq(msg.since.0.saturating_add(1)));
        let mut ids = Vec::new();
        self.store.scan_from(Table::Modseqs, &prefix, &start, |_, v| {
            ids.push(AppendId::from_key_bytes(v).ok_or_else(|| StoreError::Decode {
                what: "modseq index".into(),
                reason: "malformed AppendId".into(),
            })?);
            Ok(ids.len() < msg.limit)
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for aid in ids {
            if let Some(s) = self
                .store
                .get::<StoredRecord>(Table::Messages, &keys::message(self.id, &aid))?
            {
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// The visible messages in `uids`, in uid order.
#[derive(Message)]
#[rtype(result = "Result<Vec<MessageView>, MailError>")]
pub struct Fetch {
    pub uids: UidSet,
}

impl Handler<Fetch> for Mailbox {
    type Result = Result<Vec<MessageView>, MailError>;

    fn handle(&mut self, msg: Fetch, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        Ok(self.records_in(&msg.uids)?.iter().map(MessageView::of).collect())
    }
}

/// The uids of the visible messages, ascending: what an IMAP session numbers its messages by
/// (4 bytes a message, not the records).
#[derive(Message)]
#[rtype(result = "Result<Vec<Uid>, MailError>")]
pub struct ListUids;

impl Handler<ListUids> for Mailbox {
    type Result = Result<Vec<Uid>, MailError>;

    fn handle(&mut self, _: ListUids, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        let (at, snapshot) = self.listed_now()?;
        if let Some(shown) = self.shown_at(at) {
            return Ok(shown.uids());
        }
        let shown = self.scan_shown(&snapshot)?;
        drop(snapshot);
        let uids = shown.uids();
        self.shown = Some((at, shown));
        Ok(uids)
    }
}

impl Mailbox {
    /// Where the committed store stands now for the copy of the shown rows, and a snapshot of
    /// it. The commit count is read before the snapshot: a commit that lands meanwhile raises it
    /// after, so a copy is kept under a point already stale, never the other way round.
    fn listed_now(&self) -> Result<(Listed, crate::store::Snapshot<'_>), StoreError> {
        let commits = *self.changes.borrow();
        let snapshot = self.store.snapshot()?;
        let modseq = snapshot
            .get::<MailboxCounters>(Table::MailboxState, &keys::mailbox(self.id))?
            .map(|c| c.modseq);
        Ok((Listed { commits, modseq }, snapshot))
    }

    /// The copy of the shown rows, if it was read at `at`.
    fn shown_at(&self, at: Listed) -> Option<&ShownIndex> {
        self.shown
            .as_ref()
            .filter(|(when, _)| *when == at)
            .map(|(_, shown)| shown)
    }
}

/// When a listing of the uids was read: the mailbox's commit count (`Mailbox::changes`, raised
/// by every commit of its messages) and its committed modseq counter (raised by every write of
/// a record, and by a purge of a copy let go). Either moving makes the listing stale; both are
/// kept, so that a write which reached the store some other way is not missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listed {
    commits: u64,
    modseq: Option<u64>,
}

impl Mailbox {
    /// The shown rows of the uid index as `snapshot` has it, in uid order.
    fn scan_shown(&self, snapshot: &crate::store::Snapshot) -> Result<ShownIndex, StoreError> {
        // The uid index alone says which records are shown and their flags (`uid_row`):
        // reading 100,000 records to learn 100,000 uids cost most of a SELECT's time. A row
        // written before the index said so has its record read.
        let mut shown = ShownIndex::default();
        let mut legacy = Vec::new();
        snapshot.scan_prefix(Table::Uids, &keys::mailbox(self.id), |k, v| {
            let uid = uid_of(k)?;
            match UidRow::parse(v) {
                UidRow::Full(row) if row.shown => shown.push_row(uid, &row),
                UidRow::Full(_) | UidRow::Visibility(false) => {}
                UidRow::Unknown | UidRow::Visibility(true) => legacy.push((shown.len(), k.to_vec())),
            }
            Ok(true)
        })?;
        // Their records, put in their places (from the last, so each place is still where it
        // was counted).
        for (at, key) in legacy.into_iter().rev() {
            let (_, aid) = keys::parse_uid(&key).ok_or_else(malformed_uid_key)?;
            if let Some(stored) = self.read_legacy(snapshot, &aid)? {
                shown.insert_message(at, MessageFlags::of(&stored));
            }
        }
        Ok(shown)
    }
}

/// A visible message's flags and modseq: what FETCH FLAGS and a SEARCH over flags need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFlags {
    pub uid: Uid,
    pub modseq: ModSeq,
    /// The flags set: system flags as bits, keywords apart (`FlagSet::to_vec` lists them as
    /// `MessageRecord::set_flags` does).
    pub flags: FlagSet,
}

impl MessageFlags {
    pub fn of(stored: &StoredRecord) -> Self {
        MessageFlags {
            uid: stored.record.uid.value,
            modseq: stored.modseq,
            flags: stored.record.set_flags().cloned().collect(),
        }
    }
}

/// The flags and modseqs of the visible messages in `uids`, in uid order, read from the uid index
/// alone (`uid_row`); a row from a store written before the index held flags has its record read.
#[derive(Message)]
#[rtype(result = "Result<Vec<MessageFlags>, MailError>")]
pub struct FetchFlags {
    pub uids: UidSet,
}

impl Handler<FetchFlags> for Mailbox {
    type Result = Result<Vec<MessageFlags>, MailError>;

    fn handle(&mut self, msg: FetchFlags, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        let (at, snapshot) = self.listed_now()?;
        let mut out = Vec::new();
        if let Some(shown) = self.shown_at(at) {
            for (lo, hi) in msg.uids.ranges() {
                out.extend(shown.flags_in(lo, hi));
            }
            return Ok(out);
        }
        // No copy as the store stands (a commit came since the last listing): the asked ranges
        // of the index, which for the new messages a session looks for is a few rows.
        for (lo, hi) in msg.uids.ranges() {
            let mut legacy = Vec::new();
            snapshot.scan_from(
                Table::Uids,
                &keys::mailbox(self.id),
                &keys::uid_prefix(self.id, Uid(lo)),
                |k, v| {
                    let uid = uid_of(k)?;
                    if uid.0 > hi {
                        return Ok(false);
                    }
                    match UidRow::parse(v) {
                        UidRow::Full(row) if row.shown => out.push(MessageFlags {
                            uid,
                            modseq: row.modseq,
                            flags: row.flag_set(),
                        }),
                        UidRow::Full(_) | UidRow::Visibility(false) => {}
                        UidRow::Unknown | UidRow::Visibility(true) => {
                            legacy.push((out.len(), k.to_vec()));
                        }
                    }
                    Ok(true)
                },
            )?;
            // Rows from before: their records, put in their places (from the last, so each
            // place is still where it was counted).
            for (at, key) in legacy.into_iter().rev() {
                let (_, aid) = keys::parse_uid(&key).ok_or_else(malformed_uid_key)?;
                if let Some(stored) = self.read_legacy(&snapshot, &aid)? {
                    out.insert(at, MessageFlags::of(&stored));
                }
            }
        }
        Ok(out)
    }
}

impl Mailbox {
    /// The record of a uid index row that does not say enough, if it is shown (one that cannot
    /// be read is quarantined).
    fn read_legacy(
        &self,
        snapshot: &crate::store::Snapshot,
        aid: &AppendId,
    ) -> Result<Option<StoredRecord>, StoreError> {
        match snapshot.get::<StoredRecord>(Table::Messages, &keys::message(self.id, aid)) {
            Ok(Some(stored)) if is_shown(&stored) => Ok(Some(stored)),
            Ok(_) => Ok(None),
            Err(e @ StoreError::Decode { .. }) => {
                self.quarantine(aid, &e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The uid of a uid index key, without decoding its AppendId (a listing of a large mailbox
/// needs only the uids).
fn uid_of(key: &[u8]) -> Result<Uid, StoreError> {
    key.get(16..20)
        .and_then(|b| b.try_into().ok())
        .map(|b| Uid(u32::from_be_bytes(b)))
        .ok_or_else(malformed_uid_key)
}

fn malformed_uid_key() -> StoreError {
    StoreError::Decode {
        what: "uid index key".into(),
        reason: "malformed".into(),
    }
}

/// The value of a record's uid index row ([`crate::store::uid_row`]): whether a client sees the
/// record (live and not hidden by an unsettled uid conflict), its modseq and its flags, so that
/// listing the uids clients see and reading their flags read the index alone. Written with every
/// write of the record.
fn uid_row(stored: &StoredRecord) -> Vec<u8> {
    uid_row::encode(&stored.record, stored.modseq, is_shown(stored))
}

/// Where the uid index disagrees with the records of mailbox `id` in `store`, each as one line
/// (none: it agrees): every record has its row at its uid saying what the record says, and no
/// row is without its record. Rows from a store written before they held flags are checked for
/// what they say. For tests and the simulator.
pub fn uid_index_disagreements(store: &Store, id: MailboxId) -> Result<Vec<String>, StoreError> {
    let snapshot = store.snapshot()?;
    let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    snapshot.scan_prefix(Table::Uids, &keys::mailbox(id), |k, v| {
        rows.insert(k.to_vec(), v.to_vec());
        Ok(true)
    })?;
    let mut out = Vec::new();
    snapshot.scan_prefix(Table::Messages, &keys::mailbox(id), |_, v| {
        let stored: StoredRecord = decode(v, "message record")?;
        let key = keys::uid(id, stored.record.uid.value, &stored.record.append_id);
        let what = format!("uid {} ({})", stored.record.uid.value.0, stored.record.append_id);
        match rows.remove(&key) {
            None => out.push(format!("{what}: no uid index row")),
            Some(value) => match UidRow::parse(&value) {
                UidRow::Full(row) => {
                    let said = (row.shown, row.modseq, row.flags());
                    let is = (
                        is_shown(&stored),
                        stored.modseq,
                        MessageFlags::of(&stored).flags.to_vec(),
                    );
                    if said != is {
                        out.push(format!("{what}: the row says {said:?}, the record {is:?}"));
                    }
                }
                UidRow::Visibility(shown) if shown != is_shown(&stored) => {
                    out.push(format!("{what}: the row says shown {shown}, the record not"));
                }
                UidRow::Visibility(_) | UidRow::Unknown => {}
            },
        }
        Ok(true)
    })?;
    for key in rows.keys() {
        out.push(format!("uid index row {key:?} without its record"));
    }
    Ok(out)
}

fn is_shown(stored: &StoredRecord) -> bool {
    !stored.record.is_expunged() && !stored.hidden
}

/// The raw message with uid `uid`.
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, MailError>")]
pub struct FetchBody {
    pub uid: Uid,
}

impl Handler<FetchBody> for Mailbox {
    type Result = Result<Vec<u8>, MailError>;

    fn handle(&mut self, msg: FetchBody, _: &mut Self::Context) -> Self::Result {
        self.check_usable()?;
        let found = self.records_in(&UidSet::single(msg.uid))?;
        let stored = found.first().ok_or(MailError::NoSuchMessage(msg.uid))?;
        Ok(self.store.read_body(&stored.record.guid)?)
    }
}

/// Sent by the Directory when the mailbox is deleted: waits for inflight writes, then refuses
/// everything after.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkDeleted;

impl Handler<MarkDeleted> for Mailbox {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: MarkDeleted, _: &mut Self::Context) -> Self::Result {
        let idle = self.inflight.idle();
        AtomicResponse::new(Box::pin(idle.into_actor(self).map(|(), act, ctx| {
            act.deleted = true;
            ctx.stop();
        })))
    }
}

/// The dates at which nodes let their copies of `entry`'s mailbox go (see `Mailbox::let_go`).
pub(crate) fn let_go_dates(entry: &MailboxEntry) -> BTreeMap<NodeId, u64> {
    (entry.leaving.iter())
        .filter(|(_, register)| !register.value)
        .map(|(node, register)| (node.clone(), register.version.counter))
        .collect()
}
