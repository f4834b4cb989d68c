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
use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;
use mailmesh_protocol::ids::Guid;
use redb::{ReadableDatabase, ReadableTable, Table as RedbTable};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::counters::NodeCounters;
use crate::disk::CrashPoint;
use crate::env::Clock;
use crate::error::StoreError;
use crate::inflight::Inflight;
use crate::store::batch::Op;
use crate::store::bodies::{BodyLocation, SegmentSync, SegmentWriter, SPOOL};
use crate::store::journal::{self, JournalMark};
use crate::store::{encode, Batch, CounterState, Store, BODIES, META, META_COUNTERS, META_JOURNAL};

/// Default size at which a new segment file starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

pub struct CommitGroup {
    /// The store and the segment being appended to; away on a blocking thread while a background
    /// flush runs.
    writer: Option<Writer>,
    counters: NodeCounters,
    mode: FlushMode,
    /// The batches waiting for the next group, and the stats: shared with a background flush,
    /// which takes the next group itself (see [`flush_while_queued`]).
    shared: Arc<Mutex<Shared>>,
    flush_scheduled: bool,
    /// A stop came while a background flush ran: stop once everything queued is written.
    stop_requested: bool,
    /// For the flush durations in [`CommitStats`]; none, none measured.
    clock: Option<Arc<dyn Clock>>,
}

/// A group to flush: its batches and the compactions asked for with them.
type NextGroup = (Vec<Queued>, Vec<(f64, CompactionReply)>);

/// What the actor and a running background flush share.
#[derive(Default)]
struct Shared {
    queue: Vec<Queued>,
    compactions: Vec<(f64, CompactionReply)>,
    stats: CommitStats,
}

impl Shared {
    fn has_work(&self) -> bool {
        !self.queue.is_empty() || !self.compactions.is_empty()
    }

    /// Everything waiting, as the next group.
    fn take(&mut self) -> NextGroup {
        (
            std::mem::take(&mut self.queue),
            std::mem::take(&mut self.compactions),
        )
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A flush never panics while holding it (nothing in it can); were one to, the queue is
    // still a list of batches to commit.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the fdatasync and the commit run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// On tokio's blocking pool, while the actors go on: batches that arrive during one flush
    /// form the next group, so group size adapts to load with no timer (the classic group
    /// commit). What a node uses. Each flush starts after one scheduler yield, as in `Inline`.
    Background,
    /// On the actor thread, after one scheduler yield. Deterministic, so the simulator uses it.
    Inline,
}

struct Queued {
    batch: Batch,
    done: oneshot::Sender<Result<(), StoreError>>,
    inflight: Option<Inflight>,
}

/// Upper bounds, in microseconds, of the buckets of [`CommitStats::flush_micros`].
pub const FLUSH_BUCKETS_MICROS: [u64; 13] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// What the commit group has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub groups: u64,
    pub batches: u64,
    pub failed_groups: u64,
    pub bodies_written: u64,
    pub body_bytes_written: u64,
    /// How long flushes took (body writes, fdatasync, store commit): the count of flushes per
    /// bucket of [`FLUSH_BUCKETS_MICROS`], the last one for longer ones. Measured only with a
    /// clock (see [`CommitGroup::with_clock`]).
    pub flush_micros: [u64; FLUSH_BUCKETS_MICROS.len() + 1],
    pub flush_micros_sum: u64,
}

impl CommitStats {
    fn record_flush(&mut self, micros: u64) {
        let bucket = FLUSH_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(FLUSH_BUCKETS_MICROS.len());
        self.flush_micros[bucket] += 1;
        self.flush_micros_sum += micros;
    }
}

/// Where a compaction's report goes.
type CompactionReply = oneshot::Sender<Result<CompactionReport, StoreError>>;

/// A flushed group's results: the whole group failed, or each batch's own result.
type GroupResult = Result<Vec<Result<(), StoreError>>, StoreError>;

struct Writer {
    store: Arc<Store>,
    segments: SegmentWriter,
    /// Whether the segment's fdatasync runs on a thread of its own while the transaction is
    /// built: with a real disk only ([`FlushMode::Background`]); the simulator has one thread.
    parallel_sync: bool,
    /// A simulated crash hit this writer: the node is gone, and nobody is answered again.
    crashed: bool,
    journal: JournalState,
}

/// Where the group journal stands (`store/journal.rs`).
struct JournalState {
    /// Off with a shared spool: every commit is durable.
    enabled: bool,
    /// The last group committed.
    seq: u64,
    /// Where a replay would start: the segment position at the last durable commit.
    from: (u32, u64),
    /// Groups committed without a sync since the last durable commit.
    groups_since: u32,
    /// A failed group's record could not be cut back: a restart would replay it, so no group
    /// is committed after it (each gets this error) until the node restarts.
    broken: Option<String>,
}

/// Everything one flush did, carried back from wherever it ran.
struct Flushed {
    writer: Writer,
    group: Vec<Queued>,
    result: GroupResult,
    bodies: (u64, u64),
    compactions: Vec<(CompactionReply, Result<CompactionReport, StoreError>)>,
}

impl CommitGroup {
    pub fn new(
        store: Arc<Store>,
        counters: NodeCounters,
        segment_bytes: u64,
        mode: FlushMode,
    ) -> Result<Self, StoreError> {
        let segments = SegmentWriter::open(store.disk().clone(), store.dir(), segment_bytes)?
            .with_zero_ahead(mode == FlushMode::Background);
        let mark = store.journal_mark()?;
        let journal = JournalState {
            enabled: store.spool().is_none(),
            seq: mark.seq,
            from: (mark.segment, mark.offset),
            groups_since: 0,
            broken: None,
        };
        Ok(CommitGroup {
            writer: Some(Writer {
                store,
                segments,
                parallel_sync: mode == FlushMode::Background,
                crashed: false,
                journal,
            }),
            counters,
            mode,
            shared: Arc::new(Mutex::new(Shared::default())),
            flush_scheduled: false,
            stop_requested: false,
            clock: None,
        })
    }

    /// Measures how long each flush takes with `clock` (the node's injected clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    fn has_work(&self) -> bool {
        lock(&self.shared).has_work()
    }

    /// Starts a flush if there is work and the writer is free.
    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        if !self.has_work() {
            return;
        }
        let Some(writer) = self.writer.take() else {
            // A background flush is running; it takes what is queued when it is done.
            return;
        };
        let next = lock(&self.shared).take();
        let counters = self.counters.snapshot();
        match self.mode {
            FlushMode::Inline => {
                let clock = self.clock.as_deref();
                self.writer = Some(flush_group(writer, next, counters, &self.shared, clock));
            }
            FlushMode::Background => {
                let shared = self.shared.clone();
                let node_counters = self.counters.clone();
                let clock = self.clock.clone();
                let task = tokio::task::spawn_blocking(move || {
                    flush_while_queued(writer, next, counters, &shared, &node_counters, clock)
                });
                ctx.spawn(task.into_actor(self).map(|joined, act, ctx| {
                    act.writer = Some(joined.expect("a flush never panics"));
                    // A batch that came after the flush found nothing more to take.
                    act.start_flush(ctx);
                    if act.stop_requested && act.writer.is_some() && !act.has_work() {
                        ctx.stop();
                    }
                }));
            }
        }
    }

    /// Flushes everything queued on this thread, whatever the mode (used when stopping).
    fn flush_now(&mut self) {
        if let Some(writer) = self.writer.take() {
            let next = lock(&self.shared).take();
            let counters = self.counters.snapshot();
            self.writer = Some(flush_group(
                writer,
                next,
                counters,
                &self.shared,
                self.clock.as_deref(),
            ));
        }
    }
}

/// A background flush: the group it was given, then, as long as batches came while it ran, the
/// next group, taken here. Each group is answered from this thread as it becomes durable.
///
/// Handing the writer back to the actor between groups cost each group a wait for the actor's
/// thread, busy with the sessions whose batches these are, and a new start on the blocking pool:
/// in the LMTP bench, 170 µs on average from one group's end to the next one's start, against
/// flushes of about 1 ms. The next group's counters are read once it is taken: every batch in it
/// advanced them before it was queued.
fn flush_while_queued(
    mut writer: Writer,
    mut next: NextGroup,
    mut counters: CounterState,
    shared: &Mutex<Shared>,
    node_counters: &NodeCounters,
    clock: Option<Arc<dyn Clock>>,
) -> Writer {
    loop {
        writer = flush_group(writer, next, counters, shared, clock.as_deref());
        if writer.crashed {
            return writer;
        }
        let mut waiting = lock(shared);
        if !waiting.has_work() {
            return writer;
        }
        next = waiting.take();
        drop(waiting);
        counters = node_counters.snapshot();
    }
}

/// Flushes one group, answers everyone in it and counts it (its duration by `clock`, if any);
/// gives the writer back. Whichever thread the flush runs on.
fn flush_group(
    writer: Writer,
    (group, compactions): NextGroup,
    counters: CounterState,
    shared: &Mutex<Shared>,
    clock: Option<&dyn Clock>,
) -> Writer {
    let started = clock.map(|c| c.unix_micros());
    let flushed = writer.flush(group, compactions, counters);
    finish(flushed, started, clock, shared)
}

/// Answers everyone in a flushed group and counts it; gives the writer back. `started`: when
/// the flush started, by `clock` (its Unix microseconds), for the stats.
fn finish(
    flushed: Flushed,
    started: Option<i64>,
    clock: Option<&dyn Clock>,
    shared: &Mutex<Shared>,
) -> Writer {
    let Flushed {
        writer,
        group,
        result,
        bodies,
        compactions,
    } = flushed;
    if writer.crashed {
        // A crashed process answers nobody: whoever waits learns only that the node went
        // away (the batches may or may not be durable). The inflight counts still go down,
        // so no actor of the dying node waits forever.
        for queued in &group {
            if let Some(inflight) = &queued.inflight {
                inflight.end();
            }
        }
        return writer;
    }
    for (reply, report) in compactions {
        let _ = reply.send(report);
    }
    if group.is_empty() {
        return writer;
    }
    {
        let stats = &mut lock(shared).stats;
        stats.groups += 1;
        stats.batches += group.len() as u64;
        stats.bodies_written += bodies.0;
        stats.body_bytes_written += bodies.1;
        if let (Some(started), Some(clock)) = (started, clock) {
            let took = clock.unix_micros().saturating_sub(started).max(0);
            stats.record_flush(took as u64);
        }
        if result.is_err() {
            stats.failed_groups += 1;
        }
    }
    match result {
        Ok(results) => {
            for (queued, result) in group.into_iter().zip(results) {
                if let Some(inflight) = &queued.inflight {
                    inflight.end();
                }
                let _ = queued.done.send(result);
            }
        }
        Err(e) => {
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
    writer
}

impl Writer {
    fn flush(
        mut self,
        group: Vec<Queued>,
        compactions: Vec<(f64, CompactionReply)>,
        counters: CounterState,
    ) -> Flushed {
        let mut bodies = (0, 0);
        let result = if group.is_empty() {
            Ok(Vec::new())
        } else {
            let batches: Vec<&Batch> = group.iter().map(|q| &q.batch).collect();
            let result = self.write_group(&batches, counters, &mut bodies);
            if result.is_err() {
                // Bodies the failed group queued are named by nothing: the next group must not
                // write them as dead bytes in front of its own.
                self.segments.discard_pending();
            }
            result
        };
        if let Err(e) = self.segments.rotate_if_full() {
            warn!(error = %e, "cannot start a new body segment; appending to the current one");
        }
        let compactions = compactions
            .into_iter()
            .map(|(ratio, reply)| {
                let report = self.compact(ratio);
                if report.is_err() {
                    self.segments.discard_pending();
                }
                (reply, report)
            })
            .collect();
        Flushed {
            writer: self,
            group,
            result,
            bodies,
            compactions,
        }
    }

    /// Applies a group in one transaction. The outer error fails the whole group; the inner
    /// results are per batch.
    ///
    /// The group's new bodies are queued on the segment first and its write and fdatasync start
    /// before the transaction is built: with a real disk ([`FlushMode::Background`]) the sync
    /// runs on a thread of its own while this one builds the transaction, so the disk's
    /// latency for the bodies overlaps the CPU work of the index instead of adding to it. The
    /// commit still starts only once the bodies are durable.
    fn write_group(
        &mut self,
        batches: &[&Batch],
        counters: CounterState,
        bodies_written: &mut (u64, u64),
    ) -> GroupResult {
        if let Some(reason) = &self.journal.broken {
            return Err(StoreError::Commit(reason.clone()));
        }
        let mut txn = self.store.db().begin_write()?;
        let group_start = self.segments.end();
        let mut prewritten = BTreeMap::new();
        // Bodies the group brings bytes for that are stored already (for the record).
        let mut indexed = std::collections::BTreeSet::new();
        if self.store.spool().is_none() {
            let bodies = txn.open_table(BODIES)?;
            for batch in batches {
                for op in &batch.ops {
                    if let Op::AddBody(guid, Some(bytes)) = op {
                        if prewritten.contains_key(guid) || indexed.contains(guid) {
                            continue;
                        }
                        match bodies.get(guid.0.as_slice())?.is_none() {
                            true => {
                                prewritten.insert(*guid, self.segments.append_shared(guid, bytes));
                            }
                            false => {
                                indexed.insert(*guid);
                            }
                        }
                    }
                }
            }
        }
        let seq = self.journal.seq + 1;
        if self.journal.enabled {
            // The group's record goes behind its bodies, durable with them in one sync.
            let ahead: Vec<(Guid, BodyLocation)> = prewritten.iter().map(|(g, l)| (*g, *l)).collect();
            self.segments.append_record_with(|out| {
                journal::encode_record_into(out, seq, &counters, &ahead, &indexed, batches)
            });
        }
        if let Err(e) = self.crash_point(CrashPoint::BeforeSegmentSync) {
            txn.abort()?;
            return Err(e);
        }
        let (built, synced) = match self.segments.take_pending() {
            Some(job) => {
                let start = job.start();
                let (built, synced, job) = if self.parallel_sync {
                    alongside_sync(job, || {
                        self.apply(&txn, batches, counters, bodies_written, &mut prewritten)
                    })
                } else {
                    // The simulator's disk: one thread, and the sync before anything else.
                    let synced = job.run();
                    (
                        self.apply(&txn, batches, counters, bodies_written, &mut prewritten),
                        synced,
                        Some(job),
                    )
                };
                if let Some(job) = job {
                    self.segments.recycle(job);
                }
                let synced = self.segments.finish(start, synced);
                (built, synced)
            }
            None => (
                self.apply(&txn, batches, counters, bodies_written, &mut prewritten),
                Ok(()),
            ),
        };
        let (results, spooled) = match (built, synced) {
            (Ok(built), Ok(())) => built,
            (Err(e), _) | (_, Err(e)) => {
                self.cut_back(group_start);
                txn.abort()?;
                return Err(e);
            }
        };
        // Bodies the transaction queued itself (see `apply`): synced now, one after the other.
        if let Err(e) = self.segments.sync() {
            self.cut_back(group_start);
            txn.abort()?;
            return Err(e);
        }
        // The bodies must be durable before the commit that names them: spool files are synced
        // one by one as written, their directory once here.
        if spooled {
            let store = self.store.clone();
            if let Some(spool) = store.spool() {
                if let Err(e) = self.store.disk().sync_dir(spool) {
                    self.cut_back(group_start);
                    txn.abort()?;
                    return Err(StoreError::io(spool.display(), e));
                }
            }
        }
        if let Err(e) = self.crash_point(CrashPoint::AfterSegmentSync) {
            txn.abort()?;
            return Err(e);
        }
        // The group is durable in its record: the commit needs no sync of its own, except every
        // so often, when it moves the point replay starts from up to here.
        let durable = !self.journal.enabled
            || self.journal.groups_since + 1 >= journal::CHECKPOINT_GROUPS
            || self.segments.segment() != self.journal.from.0
            || self.segments.end().saturating_sub(self.journal.from.1) >= journal::CHECKPOINT_BYTES;
        let from = match durable {
            true => (self.segments.segment(), self.segments.end()),
            false => self.journal.from,
        };
        if let Err(e) = put_journal_mark(&txn, JournalMark::at(seq, from)) {
            self.cut_back(group_start);
            txn.abort()?;
            return Err(e);
        }
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| StoreError::Commit(e.to_string()))?;
        }
        if let Err(e) = txn.commit() {
            self.cut_back(group_start);
            return Err(e.into());
        }
        self.journal.seq = seq;
        match durable {
            true => {
                self.journal.from = from;
                self.journal.groups_since = 0;
            }
            false => self.journal.groups_since += 1,
        }
        self.crash_point(CrashPoint::AfterCommit)?;
        Ok(results)
    }

    /// Cuts the segment back to where a failed group began, so that neither its bodies nor its
    /// record stay. If the cut cannot be made durable, the record could come back at the next
    /// start: the journal refuses every later group until then.
    fn cut_back(&mut self, group_start: u64) {
        if let Err(e) = self.segments.rewind(group_start) {
            let reason = format!(
                "a failed group's journal record could not be removed ({e}); restart the node \
                 (the failed group may then be replayed)"
            );
            tracing::error!("{reason}");
            if self.journal.enabled {
                self.journal.broken = Some(reason);
            }
        }
    }

    /// Puts every batch of a group into `txn` (see [`apply_batches`]).
    fn apply(
        &mut self,
        txn: &redb::WriteTransaction,
        batches: &[&Batch],
        counters: CounterState,
        bodies_written: &mut (u64, u64),
        prewritten: &mut BTreeMap<Guid, BodyLocation>,
    ) -> Result<(Vec<Result<(), StoreError>>, bool), StoreError> {
        let store = self.store.clone();
        apply_batches(
            txn,
            store.spool(),
            store.disk().as_ref(),
            &mut self.segments,
            batches,
            counters,
            bodies_written,
            prewritten,
        )
    }

    /// A point where a simulated disk may crash the node (never a real one). Once crashed, the
    /// writer is dead: it answers nobody again, as a process that is gone.
    fn crash_point(&mut self, point: CrashPoint) -> Result<(), StoreError> {
        self.store.disk().crash_point(point).map_err(|e| {
            self.crashed = true;
            StoreError::io(format!("{point:?}"), e)
        })
    }

    /// Rewrites sealed segments whose live bytes are at most `max_live_ratio` of the file, then
    /// deletes them.
    fn compact(&mut self, max_live_ratio: f64) -> Result<CompactionReport, StoreError> {
        let mut report = CompactionReport::default();
        let sealed = self.segments.sealed_segments()?;
        if sealed.is_empty() {
            return Ok(report);
        }
        // A segment's live bodies are those the body index points into it: an entry is live
        // exactly when the index names it, so nothing else is asked (the reverse index that
        // once answered this cost every new body an insert, see STORE_FORMAT). A first scan
        // counts each sealed segment's live bytes; a second lists the entries of the segments
        // worth compacting, so only bodies about to move are held, not the whole index.
        let mut live_bytes: BTreeMap<u32, u64> = sealed.iter().map(|s| (*s, 0)).collect();
        self.scan_body_index(|_, loc| {
            if let Some(bytes) = live_bytes.get_mut(&loc.segment) {
                *bytes += loc.entry_len();
            }
        })?;
        let mut chosen: BTreeMap<u32, SegmentToCompact> = BTreeMap::new();
        for (segment, live_bytes) in live_bytes {
            let file_len = self.segments.file_len(segment)?;
            if file_len == 0 || live_bytes as f64 <= max_live_ratio * file_len as f64 {
                let live = Vec::new();
                chosen.insert(
                    segment,
                    SegmentToCompact {
                        file_len,
                        live_bytes,
                        live,
                    },
                );
            }
        }
        if chosen.is_empty() {
            return Ok(report);
        }
        self.scan_body_index(|guid, loc| {
            if let Some(chosen) = chosen.get_mut(&loc.segment) {
                chosen.live.push((*guid, loc));
            }
        })?;
        for (
            segment,
            SegmentToCompact {
                file_len,
                live_bytes,
                mut live,
            },
        ) in chosen
        {
            // Copied forward in the order they lie in the old segment: sequential reads.
            live.sort_by_key(|(_, loc)| loc.offset);
            let txn = self.store.db().begin_write()?;
            {
                let mut idx = txn.open_table(BODIES)?;
                for (guid, old) in &live {
                    let body = crate::store::bodies::read_body(
                        self.store.disk().as_ref(),
                        self.store.dir(),
                        None,
                        guid,
                        old,
                    )?;
                    let mut new = self.segments.append(guid, &body);
                    new.refs = old.refs;
                    idx.insert(guid.0.as_slice(), new.encode().as_slice())?;
                    report.bodies_moved += 1;
                }
            }
            if let Err(e) = self.segments.sync() {
                txn.abort()?;
                return Err(e);
            }
            // A durable commit: replay starts after everything written so far.
            let from = (self.segments.segment(), self.segments.end());
            put_journal_mark(&txn, JournalMark::at(self.journal.seq, from))?;
            txn.commit()?;
            self.journal.from = from;
            self.journal.groups_since = 0;
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

    /// Every body the index holds, with where it is, in Guid order (one read transaction).
    fn scan_body_index(&self, mut visit: impl FnMut(&Guid, BodyLocation)) -> Result<(), StoreError> {
        let txn = self.store.db().begin_read()?;
        let idx = txn.open_table(BODIES)?;
        for row in idx.iter()? {
            let (guid, loc) = row?;
            let guid = Guid(guid.value().try_into().map_err(|_| StoreError::Decode {
                what: "body index key".into(),
                reason: "guid is not 32 bytes".into(),
            })?);
            visit(&guid, BodyLocation::decode(loc.value())?);
        }
        Ok(())
    }
}

/// A sealed segment mostly dead: its size, its live bytes, and the live bodies to copy forward.
struct SegmentToCompact {
    file_len: u64,
    live_bytes: u64,
    live: Vec<(Guid, BodyLocation)>,
}

/// Runs a segment's write and fdatasync on another thread while `meanwhile` runs on this one,
/// and returns both results, and the job back to recycle its buffer (none if its thread died).
///
/// The other thread is one of tokio's blocking pool, which keeps its idle threads: a thread
/// spawned per group took longer to start (over 200 µs on a busy 2-core machine) than the sync
/// itself, and sat on the group's critical path.
fn alongside_sync<T>(
    job: SegmentSync,
    meanwhile: impl FnOnce() -> T,
) -> (T, Result<(), StoreError>, Option<SegmentSync>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let (done, synced) = std::sync::mpsc::sync_channel(1);
            let handed = HandedSync { job: Some(job), done };
            runtime.spawn_blocking(move || {
                let mut handed = handed;
                if let Some(job) = handed.job.take() {
                    let result = job.run();
                    let _ = handed.done.send((Some(result), job));
                }
            });
            let built = meanwhile();
            match synced.recv() {
                Ok((Some(synced), job)) => (built, synced, Some(job)),
                // The pool dropped the job unrun (the runtime is shutting down while the stop
                // flushes the last groups): it runs here, after the transaction is built.
                Ok((None, job)) => {
                    let synced = job.run();
                    (built, synced, Some(job))
                }
                Err(_) => (
                    built,
                    Err(StoreError::Commit("the segment sync's thread panicked".into())),
                    None,
                ),
            }
        }
        // A node's flushes all run inside actix's runtime; without one, one after the other.
        Err(_) => {
            let synced = job.run();
            (meanwhile(), synced, Some(job))
        }
    }
}

/// A segment sync handed to the blocking pool. If the pool drops it without running it (a
/// runtime shutting down refuses new blocking tasks), dropping it hands the job back unrun, so
/// the group is still written: a node stopping must flush every group it accepted.
struct HandedSync {
    job: Option<SegmentSync>,
    done: std::sync::mpsc::SyncSender<(Option<Result<(), StoreError>>, SegmentSync)>,
}

impl Drop for HandedSync {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            let _ = self.done.send((None, job));
        }
    }
}

/// Puts every batch of a group into `txn`: the per-batch results, and whether a body went to
/// the shared spool. A new body takes its place in `prewritten` (queued on the segment by
/// `write_group`), else it is queued now.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_batches(
    txn: &redb::WriteTransaction,
    spool: Option<&std::path::Path>,
    disk: &dyn crate::disk::Disk,
    segments: &mut SegmentWriter,
    batches: &[&Batch],
    counters: CounterState,
    bodies_written: &mut (u64, u64),
    prewritten: &mut BTreeMap<Guid, BodyLocation>,
) -> Result<(Vec<Result<(), StoreError>>, bool), StoreError> {
    let mut results = Vec::with_capacity(batches.len());
    let mut spooled = false;
    let mut bodies = txn.open_table(BODIES)?;
    // Tables are opened lazily, one handle per table for the whole group.
    let mut tables: BTreeMap<&'static str, RedbTable<&'static [u8], &'static [u8]>> = BTreeMap::new();
    for batch in batches {
        if let Err(e) = check_bodies(batch, &bodies) {
            results.push(Err(e));
            continue;
        }
        // Releases go last: a batch may release a body's last reference and add another
        // record naming the same body (an expunge and a copy merged together); adding
        // first keeps the body (found by the simulator, seed 28).
        let (releases, others): (Vec<&Op>, Vec<&Op>) =
            batch.ops.iter().partition(|op| matches!(op, Op::ReleaseBody(_)));
        for op in others.into_iter().chain(releases) {
            match op {
                Op::Put(table, key, value) => {
                    let t = open_once(&mut tables, txn, *table)?;
                    t.insert(key.as_slice(), value.as_slice())?;
                }
                Op::Delete(table, key) => {
                    let t = open_once(&mut tables, txn, *table)?;
                    t.remove(key.as_slice())?;
                }
                Op::DeleteIfEquals(table, key, expected) => {
                    let t = open_once(&mut tables, txn, *table)?;
                    let matches = t
                        .get(key.as_slice())?
                        .is_some_and(|v| v.value() == expected.as_slice());
                    if matches {
                        t.remove(key.as_slice())?;
                    }
                }
                Op::AddBody(guid, bytes) => {
                    // A body written ahead is known absent from the index: write_group found it
                    // so, and the first op of this group to index it takes it out of
                    // `prewritten`. No second look.
                    let indexed = match prewritten.contains_key(guid) {
                        true => None,
                        false => indexed_body(&bodies, guid)?,
                    };
                    let location = match indexed {
                        Some(mut loc) => {
                            loc.refs += 1;
                            loc
                        }
                        None => {
                            // check_bodies let the batch in only if a body it adds
                            // without bytes exists, and releases come last.
                            let Some(bytes) = bytes.as_ref() else {
                                return Err(StoreError::BodyMissing { guid: *guid });
                            };
                            bodies_written.0 += 1;
                            bodies_written.1 += bytes.len() as u64;
                            match spool {
                                Some(spool) => {
                                    // The shared spool is the exception to segments: peers
                                    // mounting it find each body by name.
                                    crate::store::bodies::write_spool(disk, spool, guid, bytes)?;
                                    spooled = true;
                                    BodyLocation {
                                        segment: SPOOL,
                                        offset: 0,
                                        len: bytes.len() as u32,
                                        refs: 1,
                                    }
                                }
                                None => {
                                    // Written ahead by write_group unless the body was
                                    // indexed when the group began (released to zero by
                                    // an earlier batch, then added again).
                                    match prewritten.remove(guid) {
                                        Some(loc) => loc,
                                        None => segments.append_shared(guid, bytes),
                                    }
                                }
                            }
                        }
                    };
                    bodies.insert(guid.0.as_slice(), location.encode().as_slice())?;
                }
                Op::AddSpooledBody(guid, len) => {
                    let location = match indexed_body(&bodies, guid)? {
                        Some(mut loc) => {
                            loc.refs += 1;
                            loc
                        }
                        None => BodyLocation {
                            segment: SPOOL,
                            offset: 0,
                            len: *len as u32,
                            refs: 1,
                        },
                    };
                    bodies.insert(guid.0.as_slice(), location.encode().as_slice())?;
                }
                Op::ReleaseBody(guid) => match indexed_body(&bodies, guid)? {
                    Some(mut loc) => {
                        loc.refs = loc.refs.saturating_sub(1);
                        if loc.refs == 0 {
                            bodies.remove(guid.0.as_slice())?;
                        } else {
                            bodies.insert(guid.0.as_slice(), loc.encode().as_slice())?;
                        }
                    }
                    None => warn!(%guid, "released a body that has no index entry"),
                },
            }
        }
        results.push(Ok(()));
    }
    let mut meta = txn.open_table(META)?;
    meta.insert(META_COUNTERS, encode(&counters).as_slice())?;
    Ok((results, spooled))
}

/// Replays the group records a crash left past the store's last durable commit
/// (`store/journal.rs`), in one durable transaction, and moves the replay point to the end of
/// the newest segment. Returns how many groups it applied. Run by [`Store::open_on`] before
/// anyone reads the store.
pub(crate) fn replay_journal(
    db: &redb::Database,
    disk: &Arc<dyn crate::disk::Disk>,
    dir: &std::path::Path,
) -> Result<u64, StoreError> {
    let mark = crate::store::read_journal_mark(db)?;
    let mut segments = SegmentWriter::open(disk.clone(), dir, u64::MAX)?;
    let txn = db.begin_write()?;
    let mut seq = mark.seq;
    let mut replayed = 0;
    journal::read_records(disk.as_ref(), dir, (mark.segment, mark.offset), |record| {
        if record.seq <= seq {
            // Held already: a commit of it survived (redb persists commits on a clean close).
            return Ok(());
        }
        if record.seq != seq + 1 {
            // Groups are numbered one by one and a failed group's record is cut away, so a gap
            // means the records past it do not follow this state.
            warn!(
                expected = seq + 1,
                found = record.seq,
                "journal records skip a group; not replaying past it"
            );
            return Err(StoreError::Corrupt {
                path: dir.display().to_string(),
                reason: format!("journal record {} follows {}", record.seq, seq),
            });
        }
        let batches: Vec<&Batch> = record.batches.iter().collect();
        let mut prewritten: BTreeMap<Guid, BodyLocation> = record.prewritten.iter().copied().collect();
        apply_batches(
            &txn,
            None,
            disk.as_ref(),
            &mut segments,
            &batches,
            record.counters,
            &mut (0, 0),
            &mut prewritten,
        )?;
        seq = record.seq;
        replayed += 1;
        Ok(())
    })?;
    segments.sync()?;
    put_journal_mark(&txn, JournalMark::at(seq, (segments.segment(), segments.end())))?;
    txn.commit()?;
    if replayed > 0 {
        info!(groups = replayed, last = seq, "replayed the commit journal");
    }
    Ok(replayed)
}

/// Stores the journal mark of the commit `txn` will make (`store/journal.rs`).
fn put_journal_mark(txn: &redb::WriteTransaction, mark: JournalMark) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_JOURNAL, encode(&mark).as_slice())?;
    Ok(())
}

/// The table handle of `table`, opened on first use within a group.
fn open_once<'t, 'txn>(
    tables: &'t mut BTreeMap<&'static str, RedbTable<'txn, &'static [u8], &'static [u8]>>,
    txn: &'txn redb::WriteTransaction,
    table: crate::store::Table,
) -> Result<&'t mut RedbTable<'txn, &'static [u8], &'static [u8]>, StoreError> {
    Ok(match tables.entry(table.name()) {
        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert(txn.open_table(table.definition())?),
    })
}

/// Where `guid`'s body is stored and how many records hold it, if it is indexed.
fn indexed_body(
    bodies: &RedbTable<&'static [u8], &'static [u8]>,
    guid: &Guid,
) -> Result<Option<BodyLocation>, StoreError> {
    bodies
        .get(guid.0.as_slice())?
        .map(|v| BodyLocation::decode(v.value()))
        .transpose()
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
        // Whatever was submitted is committed (or failed) before the actor goes. While a
        // background flush runs, the actor stays until it and everything queued behind it are
        // written, so no caller is told "failed" about a write that is durable.
        if self.writer.is_none() {
            self.stop_requested = true;
            return Running::Continue;
        }
        self.flush_now();
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

impl CommitGroup {
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled {
            return;
        }
        // Flushing right away would send the first of 100 appends that arrive together to disk
        // alone. One yield lets every actor with work queued run first and add its batch; in
        // Background mode, batches that arrive during the flush form the next group.
        self.flush_scheduled = true;
        ctx.spawn(
            tokio::task::yield_now()
                .into_actor(self)
                .map(|(), act, ctx| act.start_flush(ctx)),
        );
    }
}

impl Handler<Submit> for CommitGroup {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        lock(&self.shared).queue.push(Queued {
            batch: msg.batch,
            done: msg.done,
            inflight: msg.inflight,
        });
        self.schedule(ctx);
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
                "the commit group stopped before answering; the batch may or may not be durable".into(),
            )),
        }
    }
}

/// Stops the commit group once everything queued is written (a node shutting down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCommitGroup;

impl Handler<StopCommitGroup> for CommitGroup {
    type Result = ();

    fn handle(&mut self, _: StopCommitGroup, ctx: &mut Self::Context) {
        ctx.stop();
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
    type Result = ResponseFuture<Result<CompactionReport, StoreError>>;

    fn handle(&mut self, msg: Compact, ctx: &mut Self::Context) -> Self::Result {
        let (reply, rx) = oneshot::channel();
        lock(&self.shared).compactions.push((msg.max_live_ratio, reply));
        self.schedule(ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Commit("the commit group stopped".into())))
        })
    }
}

#[derive(Message)]
#[rtype(result = "CommitStats")]
pub struct GetCommitStats;

impl Handler<GetCommitStats> for CommitGroup {
    type Result = MessageResult<GetCommitStats>;

    fn handle(&mut self, _: GetCommitStats, _: &mut Self::Context) -> Self::Result {
        let stats = lock(&self.shared).stats;
        debug!(?stats, "commit stats");
        MessageResult(stats)
    }
}
