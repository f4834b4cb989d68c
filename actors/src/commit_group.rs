//! The CommitGroup actor: the only writer of a node's store.
//!
//! Actors hand it [`Batch`]es. It lets batches gather while other actors run (one scheduler
//! yield), then applies the whole group in one redb transaction: new bodies go to the current
//! segment, the segment is fdatasynced, then the transaction that names them commits. Every batch
//! of the group is acknowledged together, so 100 appends that arrive together cost one segment
//! sync and one commit instead of 100 of each. A batch is acknowledged only once both are durable.
//!
//! A batch that cannot apply (it references a body this node lacks) fails alone; an I/O error
//! (a full disk) fails the group, leaves the store as it was, and the node keeps running.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use mailmesh_protocol::ids::Guid;
use redb::{ReadableDatabase, ReadableTable, Table as RedbTable};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::counters::NodeCounters;
use crate::error::StoreError;
use crate::inflight::Inflight;
use crate::store::batch::Op;
use crate::store::bodies::{BodyLocation, SegmentWriter};
use crate::store::{encode, keys, Batch, Store, BODIES, META, META_COUNTERS, SEGMENT_BODIES};

/// Default size at which a new segment file starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

pub struct CommitGroup {
    store: Arc<Store>,
    segments: SegmentWriter,
    counters: NodeCounters,
    queue: Vec<Queued>,
    flush_scheduled: bool,
    stats: CommitStats,
}

struct Queued {
    batch: Batch,
    done: oneshot::Sender<Result<(), StoreError>>,
    inflight: Option<Inflight>,
}

/// What the commit group has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub groups: u64,
    pub batches: u64,
    pub failed_groups: u64,
    pub bodies_written: u64,
    pub body_bytes_written: u64,
}

impl CommitGroup {
    pub fn new(store: Arc<Store>, counters: NodeCounters, segment_bytes: u64) -> Result<Self, StoreError> {
        let segments = SegmentWriter::open(store.dir(), segment_bytes)?;
        Ok(CommitGroup {
            store,
            segments,
            counters,
            queue: Vec::new(),
            flush_scheduled: false,
            stats: Default::default(),
        })
    }

    fn flush(&mut self) {
        self.flush_scheduled = false;
        if self.queue.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.queue);
        let batches: Vec<&Batch> = group.iter().map(|q| &q.batch).collect();
        let outcome = self.write_group(&batches);
        self.stats.groups += 1;
        self.stats.batches += group.len() as u64;
        match outcome {
            Ok(results) => {
                for (queued, result) in group.into_iter().zip(results) {
                    if let Some(inflight) = &queued.inflight {
                        inflight.end();
                    }
                    let _ = queued.done.send(result);
                }
            }
            Err(e) => {
                self.stats.failed_groups += 1;
                warn!(error = %e, batches = group.len(), "commit failed; nothing of this group was stored");
                let message = e.to_string();
                for queued in group {
                    if let Some(inflight) = &queued.inflight {
                        inflight.end();
                    }
                    let _ = queued.done.send(Err(StoreError::Commit(message.clone())));
                }
            }
        }
        if let Err(e) = self.segments.rotate_if_full() {
            warn!(error = %e, "cannot start a new body segment; appending to the current one");
        }
    }

    /// Applies a group in one transaction. The outer error fails the whole group; the inner
    /// results are per batch.
    fn write_group(&mut self, batches: &[&Batch]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = self.store.db().begin_write()?;
        let mut results = Vec::with_capacity(batches.len());
        {
            let mut bodies = txn.open_table(BODIES)?;
            let mut segment_bodies = txn.open_table(SEGMENT_BODIES)?;
            // Tables are opened lazily, one handle per table for the whole group.
            let mut tables: BTreeMap<&'static str, RedbTable<&'static [u8], &'static [u8]>> = BTreeMap::new();
            for batch in batches {
                if let Err(e) = check_bodies(batch, &bodies) {
                    results.push(Err(e));
                    continue;
                }
                for op in &batch.ops {
                    match op {
                        Op::Put(table, key, value) => {
                            let t = match tables.entry(table.name()) {
                                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                                std::collections::btree_map::Entry::Vacant(v) => {
                                    v.insert(txn.open_table(table.definition())?)
                                }
                            };
                            t.insert(key.as_slice(), value.as_slice())?;
                        }
                        Op::Delete(table, key) => {
                            let t = match tables.entry(table.name()) {
                                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                                std::collections::btree_map::Entry::Vacant(v) => {
                                    v.insert(txn.open_table(table.definition())?)
                                }
                            };
                            t.remove(key.as_slice())?;
                        }
                        Op::AddBody(guid, bytes) => {
                            let existing = bodies
                                .get(guid.0.as_slice())?
                                .map(|v| BodyLocation::decode(v.value()));
                            let location = match existing {
                                Some(loc) => {
                                    let mut loc = loc?;
                                    loc.refs += 1;
                                    loc
                                }
                                None => {
                                    let bytes =
                                        bytes.as_ref().expect("check_bodies ensured bytes for a new body");
                                    self.stats.bodies_written += 1;
                                    self.stats.body_bytes_written += bytes.len() as u64;
                                    let loc = self.segments.append(guid, bytes);
                                    segment_bodies.insert(
                                        keys::segment_body(loc.segment, loc.offset).as_slice(),
                                        guid.0.as_slice(),
                                    )?;
                                    loc
                                }
                            };
                            bodies.insert(guid.0.as_slice(), location.encode().as_slice())?;
                        }
                        Op::ReleaseBody(guid) => {
                            let existing = bodies
                                .get(guid.0.as_slice())?
                                .map(|v| BodyLocation::decode(v.value()));
                            match existing {
                                Some(loc) => {
                                    let mut loc = loc?;
                                    loc.refs = loc.refs.saturating_sub(1);
                                    if loc.refs == 0 {
                                        bodies.remove(guid.0.as_slice())?;
                                        segment_bodies
                                            .remove(keys::segment_body(loc.segment, loc.offset).as_slice())?;
                                    } else {
                                        bodies.insert(guid.0.as_slice(), loc.encode().as_slice())?;
                                    }
                                }
                                None => warn!(%guid, "released a body that has no index entry"),
                            }
                        }
                    }
                }
                results.push(Ok(()));
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_COUNTERS, encode(&self.counters.snapshot()).as_slice())?;
        }
        // The bodies must be durable before the commit that names them.
        if let Err(e) = self.segments.sync() {
            txn.abort()?;
            return Err(e);
        }
        txn.commit()?;
        Ok(results)
    }

    /// Rewrites sealed segments whose live bytes are at most `max_live_ratio` of the file, then
    /// deletes them.
    fn compact(&mut self, max_live_ratio: f64) -> Result<CompactionReport, StoreError> {
        self.flush();
        let mut report = CompactionReport::default();
        for segment in self.segments.sealed_segments()? {
            let file_len = self.segments.file_len(segment)?;
            let mut live: Vec<(Guid, BodyLocation)> = Vec::new();
            {
                let txn = self.store.db().begin_read()?;
                let sb = txn.open_table(SEGMENT_BODIES)?;
                let idx = txn.open_table(BODIES)?;
                let start = keys::segment_body(segment, 0);
                let end = keys::segment_body(segment + 1, 0);
                for row in sb.range::<&[u8]>(start.as_slice()..end.as_slice())? {
                    let (_, guid) = row?;
                    let guid = Guid(guid.value().try_into().map_err(|_| StoreError::Decode {
                        what: "segment body row".into(),
                        reason: "guid is not 32 bytes".into(),
                    })?);
                    if let Some(loc) = idx.get(guid.0.as_slice())? {
                        live.push((guid, BodyLocation::decode(loc.value())?));
                    }
                }
            }
            let live_bytes: u64 = live.iter().map(|(_, l)| l.entry_len()).sum();
            if file_len > 0 && live_bytes as f64 > max_live_ratio * file_len as f64 {
                continue;
            }
            let txn = self.store.db().begin_write()?;
            {
                let mut idx = txn.open_table(BODIES)?;
                let mut sb = txn.open_table(SEGMENT_BODIES)?;
                for (guid, old) in &live {
                    let body = crate::store::bodies::read_body(self.store.dir(), guid, old)?;
                    let mut new = self.segments.append(guid, &body);
                    new.refs = old.refs;
                    idx.insert(guid.0.as_slice(), new.encode().as_slice())?;
                    sb.remove(keys::segment_body(old.segment, old.offset).as_slice())?;
                    sb.insert(
                        keys::segment_body(new.segment, new.offset).as_slice(),
                        guid.0.as_slice(),
                    )?;
                    report.bodies_moved += 1;
                }
            }
            if let Err(e) = self.segments.sync() {
                txn.abort()?;
                return Err(e);
            }
            txn.commit()?;
            self.segments.remove_segment(segment)?;
            report.segments_removed += 1;
            report.bytes_reclaimed += file_len - live_bytes;
            self.segments.rotate_if_full()?;
        }
        if report.segments_removed > 0 {
            info!(?report, "compacted body segments");
        }
        Ok(report)
    }
}

/// A batch may reference an existing body without its bytes (a copy); the body must exist.
fn check_bodies(batch: &Batch, bodies: &RedbTable<&'static [u8], &'static [u8]>) -> Result<(), StoreError> {
    for op in &batch.ops {
        if let Op::AddBody(guid, None) = op {
            if bodies.get(guid.0.as_slice())?.is_none()
                && !batch
                    .ops
                    .iter()
                    .any(|o| matches!(o, Op::AddBody(g, Some(_)) if g == guid))
            {
                return Err(StoreError::BodyMissing { guid: *guid });
            }
        }
    }
    Ok(())
}

impl Actor for CommitGroup {
    type Context = Context<Self>;

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // Whatever was submitted is still committed (or failed) before the actor goes.
        self.flush();
        Running::Stop
    }
}

/// Hands a batch to the commit group. The reply arrives on `done` once the batch is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    pub batch: Batch,
    pub done: oneshot::Sender<Result<(), StoreError>>,
    pub inflight: Option<Inflight>,
}

impl Handler<Submit> for CommitGroup {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        self.queue.push(Queued {
            batch: msg.batch,
            done: msg.done,
            inflight: msg.inflight,
        });
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            // One yield lets every actor with work queued run first and add its batch.
            ctx.spawn(
                tokio::task::yield_now()
                    .into_actor(self)
                    .map(|(), act, _| act.flush()),
            );
        }
    }
}

/// Submits `batch` and returns a future that resolves once it is durable. `inflight` is raised now
/// and lowered by the commit group when the batch is done.
pub fn commit(
    group: &Addr<CommitGroup>,
    batch: Batch,
    inflight: Option<&Inflight>,
) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
    let (done, rx) = oneshot::channel();
    if let Some(i) = inflight {
        i.begin();
    }
    group.do_send(Submit {
        batch,
        done,
        inflight: inflight.cloned(),
    });
    async move {
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Commit(
                "the commit group stopped before the batch was written".into(),
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_removed: u64,
    pub bodies_moved: u64,
    pub bytes_reclaimed: u64,
}

/// Reclaims dead body bytes.
#[derive(Message)]
#[rtype(result = "Result<CompactionReport, StoreError>")]
pub struct Compact {
    /// Rewrite a sealed segment when at most this fraction of it is live (0.5 is a good default).
    pub max_live_ratio: f64,
}

impl Handler<Compact> for CommitGroup {
    type Result = Result<CompactionReport, StoreError>;

    fn handle(&mut self, msg: Compact, _: &mut Self::Context) -> Self::Result {
        self.compact(msg.max_live_ratio)
    }
}

#[derive(Message)]
#[rtype(result = "CommitStats")]
pub struct GetCommitStats;

impl Handler<GetCommitStats> for CommitGroup {
    type Result = MessageResult<GetCommitStats>;

    fn handle(&mut self, _: GetCommitStats, _: &mut Self::Context) -> Self::Result {
        debug!(stats = ?self.stats, "commit stats");
        MessageResult(self.stats)
    }
}
