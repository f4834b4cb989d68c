//! Message bodies in append-only segment files.
//!
//! One fsync per body file caps a node at a few thousand messages per second; appending many
//! bodies to one segment and syncing it once lets 10,000 bodies land in tens of milliseconds
//! (DESIGN.md, "Actors", Storage). Each entry is a 40-byte header (magic, Guid, length) followed
//! by the body. The redb index maps a Guid to its entry; bytes no index entry points at (a body
//! whose last reference went, or one written by a group whose commit failed) are dead and are
//! reclaimed by compaction, which copies the live bodies of a mostly dead segment forward and
//! deletes the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailmesh_protocol::ids::Guid;

use crate::disk::{Disk, DiskFile};
use crate::error::StoreError;

pub const SEGMENT_DIR: &str = "bodies";
/// The segment number that means "a file named by its Guid in the shared spool".
pub const SPOOL: u32 = u32::MAX;
pub(crate) const MAGIC: &[u8; 4] = b"MMB1";
/// The magic of a group record (see `journal.rs`): magic, blake3 of the payload, length, payload.
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"MMJ1";
pub const HEADER_LEN: u64 = 40;

/// Where one body is, and how many message records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLocation {
    pub segment: u32,
    /// Offset of the entry header in the segment.
    pub offset: u64,
    pub len: u32,
    pub refs: u32,
}

impl BodyLocation {
    pub fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[0..4].copy_from_slice(&self.segment.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out[16..20].copy_from_slice(&self.refs.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let bytes: &[u8; 20] = bytes.try_into().map_err(|_| StoreError::Decode {
            what: "body location".into(),
            reason: format!("{} bytes instead of 20", bytes.len()),
        })?;
        Ok(BodyLocation {
            segment: u32::from_be_bytes(bytes[0..4].try_into().expect("4")),
            offset: u64::from_be_bytes(bytes[4..12].try_into().expect("8")),
            len: u32::from_be_bytes(bytes[12..16].try_into().expect("4")),
            refs: u32::from_be_bytes(bytes[16..20].try_into().expect("4")),
        })
    }

    /// Bytes the entry occupies in its segment, header included.
    pub fn entry_len(&self) -> u64 {
        HEADER_LEN + self.len as u64
    }
}

pub fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(SEGMENT_DIR).join(format!("{segment:08}.seg"))
}

/// A body's file in a shared spool: its Guid in hex.
pub fn spool_path(spool: &Path, guid: &Guid) -> PathBuf {
    spool.join(guid.to_string())
}

/// Where a body's bytes are: the file, the offset of the body in it, and whether a segment
/// header precedes it.
fn locate(
    dir: &Path,
    spool: Option<&Path>,
    guid: &Guid,
    loc: &BodyLocation,
) -> Result<(PathBuf, u64, bool), StoreError> {
    if loc.segment == SPOOL {
        let spool = spool.ok_or_else(|| StoreError::BodyCorrupt {
            guid: *guid,
            segment: loc.segment,
            offset: 0,
            reason: "indexed in a shared spool, but no shared spool is configured".into(),
        })?;
        Ok((spool_path(spool, guid), 0, false))
    } else {
        Ok((segment_path(dir, loc.segment), loc.offset, true))
    }
}

/// Stores a body in the shared spool (once: a file already there is the same body, by its
/// name). Written to a temporary name, synced, then renamed, so a reader never sees half a body.
/// The rename is durable once the caller syncs the spool directory, before it commits.
pub fn write_spool(disk: &dyn Disk, spool: &Path, guid: &Guid, body: &[u8]) -> Result<(), StoreError> {
    let path = spool_path(spool, guid);
    if disk.file_len(&path).is_ok() {
        return Ok(());
    }
    let tmp = spool.join(format!(".{guid}.tmp"));
    let write = || -> std::io::Result<()> {
        let file = disk.open(&tmp, true)?;
        file.set_len(0)?;
        file.write_all_at(body, 0)?;
        file.sync_data()?;
        disk.rename(&tmp, &path)
    };
    write().map_err(|e| StoreError::io(path.display(), e))
}

/// Length of a body in the shared spool, if it is there.
pub fn spool_len(disk: &dyn Disk, spool: &Path, guid: &Guid) -> Option<u64> {
    disk.file_len(&spool_path(spool, guid)).ok()
}

/// Reads one body and checks it against its Guid, so a flipped bit on disk is reported, never
/// served.
pub fn read_body(
    disk: &dyn Disk,
    dir: &Path,
    spool: Option<&Path>,
    guid: &Guid,
    loc: &BodyLocation,
) -> Result<Vec<u8>, StoreError> {
    let (path, _, _) = locate(dir, spool, guid, loc)?;
    let file = disk
        .open(&path, false)
        .map_err(|e| StoreError::io(path.display(), e))?;
    read_body_in(file.as_ref(), dir, spool, guid, loc)
}

/// The path of the file holding a body.
pub fn body_path(
    dir: &Path,
    spool: Option<&Path>,
    guid: &Guid,
    loc: &BodyLocation,
) -> Result<PathBuf, StoreError> {
    Ok(locate(dir, spool, guid, loc)?.0)
}

/// Reads and verifies a body from `file`, already open: the one [`body_path`] names.
pub fn read_body_in(
    file: &dyn DiskFile,
    dir: &Path,
    spool: Option<&Path>,
    guid: &Guid,
    loc: &BodyLocation,
) -> Result<Vec<u8>, StoreError> {
    // Where in the file, without building the file's path again (a path per body read was a
    // good part of streaming many small bodies).
    let (offset, header) = if loc.segment == SPOOL {
        locate(dir, spool, guid, loc).map(|(_, offset, header)| (offset, header))?
    } else {
        (loc.offset, true)
    };
    let body = if header {
        let mut buf = vec![0u8; loc.entry_len() as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| corrupt(guid, loc, format!("cannot read entry: {e}")))?;
        check_entry_header(&buf, guid, loc)?;
        // In place: no second allocation and copy of the body.
        buf.drain(..HEADER_LEN as usize);
        buf
    } else {
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| corrupt(guid, loc, format!("cannot read spool file: {e}")))?;
        buf
    };
    check_content(&body, guid, loc)?;
    Ok(body)
}

/// Reads and verifies the bodies at `locations`, all in segment `file` (none in the spool), in
/// their order. Entries written one after the other (a batch's appends, a page a peer sent) are
/// read together, a few hundred kilobytes a system call instead of one call each: streaming a
/// page of 1,000 small bodies to a peer made 1,000 `pread`s. One entry's fault fails that entry
/// only.
pub fn read_entries_in(
    file: &dyn DiskFile,
    locations: &[(Guid, BodyLocation)],
) -> Vec<Result<Vec<u8>, StoreError>> {
    /// Bytes between two entries still read across rather than skipped by a second call.
    const GAP: u64 = 16 * 1024;
    /// The most one call reads (a single larger entry is read whole).
    const RUN: u64 = 1024 * 1024;
    /// Entries larger than this are read alone, straight into their own buffer: for them the
    /// call costs little beside the bytes, and a shared read would copy each out again.
    const SMALL: u64 = SHARED_BODY as u64;
    let mut order: Vec<usize> = (0..locations.len()).collect();
    order.sort_by_key(|&i| locations[i].1.offset);
    let mut out: Vec<Option<Result<Vec<u8>, StoreError>>> = locations.iter().map(|_| None).collect();
    let mut next = 0;
    while next < order.len() {
        // A run: small entries from `next` on that start within GAP of the run's end, up to RUN
        // bytes.
        let start = locations[order[next]].1.offset;
        let mut end = start + locations[order[next]].1.entry_len();
        let mut last = next + 1;
        let small = |loc: &BodyLocation| loc.entry_len() <= SMALL;
        if small(&locations[order[next]].1) {
            while let Some(&i) = order.get(last) {
                let loc = &locations[i].1;
                let entry_end = loc.offset + loc.entry_len();
                if !small(loc) || loc.offset > end + GAP || entry_end - start > RUN {
                    break;
                }
                end = end.max(entry_end);
                last += 1;
            }
        }
        let mut buf = vec![0u8; (end - start) as usize];
        let read = file.read_exact_at(&mut buf, start);
        if last == next + 1 {
            // One entry (a large body among them): its header is cut off in place, with no
            // second allocation and copy of the body.
            let (guid, loc) = &locations[order[next]];
            out[order[next]] = Some(match read {
                Ok(()) => check_entry_header(&buf, guid, loc).and_then(|()| {
                    buf.drain(..HEADER_LEN as usize);
                    check_content(&buf, guid, loc).map(|()| buf)
                }),
                Err(e) => Err(corrupt(guid, loc, format!("cannot read entry: {e}"))),
            });
            next = last;
            continue;
        }
        for &i in &order[next..last] {
            let (guid, loc) = &locations[i];
            out[i] = Some(match &read {
                Ok(()) => {
                    let at = (loc.offset - start) as usize;
                    let entry = &buf[at..at + loc.entry_len() as usize];
                    check_entry_header(entry, guid, loc).and_then(|()| {
                        let body = entry[HEADER_LEN as usize..].to_vec();
                        check_content(&body, guid, loc).map(|()| body)
                    })
                }
                Err(e) => Err(corrupt(guid, loc, format!("cannot read entry: {e}"))),
            });
        }
        next = last;
    }
    out.into_iter()
        .map(|r| r.expect("every entry is in one run"))
        .collect()
}

fn corrupt(guid: &Guid, loc: &BodyLocation, reason: String) -> StoreError {
    StoreError::BodyCorrupt {
        guid: *guid,
        segment: loc.segment,
        offset: loc.offset,
        reason,
    }
}

/// A segment entry's header names the body the index says is there.
fn check_entry_header(entry: &[u8], guid: &Guid, loc: &BodyLocation) -> Result<(), StoreError> {
    if &entry[0..4] != MAGIC || entry[4..36] != guid.0 {
        return Err(corrupt(guid, loc, "entry header does not match the index".into()));
    }
    let len = u32::from_be_bytes(entry[36..40].try_into().expect("4"));
    if len != loc.len {
        return Err(corrupt(
            guid,
            loc,
            format!("entry length {len} differs from indexed length {}", loc.len),
        ));
    }
    Ok(())
}

/// A body is what its Guid says: a flipped bit on disk is reported, never served.
fn check_content(body: &[u8], guid: &Guid, loc: &BodyLocation) -> Result<(), StoreError> {
    match Guid::of(body) == *guid {
        true => Ok(()),
        false => Err(corrupt(guid, loc, "content does not hash to its Guid".into())),
    }
}

/// Up to `limit` bytes of a body from `offset`, and its whole length.
pub fn read_range(
    disk: &dyn Disk,
    dir: &Path,
    spool: Option<&Path>,
    guid: &Guid,
    loc: &BodyLocation,
    offset: u64,
    limit: usize,
) -> Result<(Vec<u8>, u64), StoreError> {
    let (path, base, header) = locate(dir, spool, guid, loc)?;
    let total = loc.len as u64;
    let start = offset.min(total);
    let len = (limit as u64).min(total - start) as usize;
    let file = disk
        .open(&path, false)
        .map_err(|e| StoreError::io(path.display(), e))?;
    let mut buf = vec![0u8; len];
    let at = base + if header { HEADER_LEN } else { 0 } + start;
    file.read_exact_at(&mut buf, at)
        .map_err(|e| StoreError::BodyCorrupt {
            guid: *guid,
            segment: loc.segment,
            offset: loc.offset,
            reason: format!("cannot read: {e}"),
        })?;
    Ok((buf, total))
}

/// The segment the commit group appends to. Entries are buffered and written with one write and
/// one fdatasync per group.
pub struct SegmentWriter {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    segment: u32,
    /// Shared with a [`SegmentSync`] running on another thread.
    file: Arc<dyn DiskFile>,
    /// Bytes durably part of the file (or at least written before this group, or being written
    /// by a [`SegmentSync`] under way).
    len: u64,
    pending: Queued,
    /// The buffers of the last [`SegmentSync`], emptied, to queue the next group's entries in
    /// ([`SegmentWriter::recycle`]).
    spare: Queued,
    max_segment: u64,
    /// Whether the file is written with zeros ahead of the entries ([`ZERO_AHEAD`]).
    zero_ahead: bool,
    /// The file holds written bytes (entries or zeros) up to here.
    written_to: u64,
}

/// How far ahead of its entries a segment's file is written with zeros, with a real disk. An
/// fdatasync of bytes that extend a file must also commit the file's new size and blocks (an
/// ext4 journal commit); bytes written over already written blocks need none, and the sync is
/// about half as long (measured: 170-270 µs against 320-480 µs for 16 KiB). One sync in this
/// many bytes pays for the zeros instead of every group's. Only small groups (at most 1/16 of
/// this) write zeros ahead.
pub const ZERO_AHEAD: u64 = 1024 * 1024;

/// The largest write buffer kept from one group for the next ([`SegmentWriter::recycle`]). A
/// fresh buffer costs a page fault and a zeroed page for every 4 KiB it grows to, each group
/// again (on this kind of virtual machine 3.5-5 µs a page, against 1 µs to write a page to the
/// page cache); a buffer kept is already mapped. Larger ones are let go, so an idle node does
/// not hold them.
pub const KEPT_BUFFER: usize = 4 * 1024 * 1024;

/// Bodies at least this long are not copied into the group's write buffer: the write gathers
/// them from where they are (`pwritev`). A replica receiving a sync's page of 50 KB bodies
/// queued 33 MB in one group, and copying it into a fresh buffer cost more than writing it.
/// Smaller bodies are copied: a copy of a few KiB costs less than a part of the gathered write.
pub const SHARED_BODY: usize = 16 * 1024;

/// The entries of one group, in file order, as one gathered write: headers, records and small
/// bodies copied back to back into one buffer, large bodies shared with the batch that brought
/// them.
#[derive(Default)]
struct Queued {
    copied: Vec<u8>,
    parts: Vec<Part>,
    len: u64,
}

enum Part {
    /// `copied[start..end]`.
    Copied(usize, usize),
    Shared(Arc<Vec<u8>>),
}

impl Queued {
    fn copy(&mut self, bytes: &[u8]) {
        self.copy_with(|out| out.extend_from_slice(bytes));
    }

    /// Appends what `write` puts at the end of the buffer (and nothing else may it change).
    fn copy_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.copied.len();
        write(&mut self.copied);
        let end = self.copied.len();
        self.len += (end - start) as u64;
        match self.parts.last_mut() {
            Some(Part::Copied(_, last_end)) if *last_end == start => *last_end = end,
            _ => self.parts.push(Part::Copied(start, end)),
        }
    }

    fn share(&mut self, bytes: Arc<Vec<u8>>) {
        self.len += bytes.len() as u64;
        self.parts.push(Part::Shared(bytes));
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.copied.clear();
        self.parts.clear();
        self.len = 0;
    }

    fn slices(&self) -> Vec<&[u8]> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Copied(start, end) => &self.copied[*start..*end],
                Part::Shared(bytes) => bytes.as_slice(),
            })
            .collect()
    }
}

impl SegmentWriter {
    /// Opens the newest segment for appending, or creates the first one. Bytes after the last
    /// committed entry (a crash between write and commit) are dead and stay until compaction.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, max_segment: u64) -> Result<Self, StoreError> {
        let seg_dir = dir.join(SEGMENT_DIR);
        let mut newest = 0u32;
        let names = disk
            .list_dir(&seg_dir)
            .map_err(|e| StoreError::io(seg_dir.display(), e))?;
        for name in names {
            if let Some(n) = segment_number(&name) {
                newest = newest.max(n);
            }
        }
        let segment = newest.max(1);
        let (file, len) = open_segment(disk.as_ref(), dir, segment)?;
        Ok(SegmentWriter {
            disk,
            dir: dir.to_path_buf(),
            segment,
            file: Arc::from(file),
            len,
            pending: Queued::default(),
            spare: Queued::default(),
            max_segment,
            zero_ahead: false,
            written_to: len,
        })
    }

    /// Writes zeros ahead of the entries (a node's real disk; the simulator's has nothing to
    /// gain, and its full-disk tests count every byte).
    pub fn with_zero_ahead(mut self, on: bool) -> Self {
        self.zero_ahead = on;
        self
    }

    pub fn segment(&self) -> u32 {
        self.segment
    }

    /// Queues a body; it is durable after the next successful [`SegmentWriter::sync`].
    pub fn append(&mut self, guid: &Guid, body: &[u8]) -> BodyLocation {
        let location = self.queue_header(guid, body.len());
        self.pending.copy(body);
        location
    }

    /// Queues a body held by a batch: a large one is written from where it is, not copied (see
    /// [`SHARED_BODY`]).
    pub fn append_shared(&mut self, guid: &Guid, body: &Arc<Vec<u8>>) -> BodyLocation {
        let location = self.queue_header(guid, body.len());
        match body.len() >= SHARED_BODY {
            true => self.pending.share(body.clone()),
            false => self.pending.copy(body),
        }
        location
    }

    fn queue_header(&mut self, guid: &Guid, len: usize) -> BodyLocation {
        let offset = self.end();
        let mut header = [0u8; HEADER_LEN as usize];
        header[0..4].copy_from_slice(MAGIC);
        header[4..36].copy_from_slice(&guid.0);
        header[36..40].copy_from_slice(&(len as u32).to_be_bytes());
        self.pending.copy(&header);
        BodyLocation {
            segment: self.segment,
            offset,
            len: len as u32,
            refs: 1,
        }
    }

    /// [`SegmentWriter::append_record_with`] of a payload already built (tests).
    #[cfg(test)]
    pub fn append_record(&mut self, payload: &[u8]) {
        self.append_record_with(|out| out.extend_from_slice(payload));
    }

    /// Queues a group record (`journal.rs`) behind the queued bodies, durable with them; its
    /// payload is written by `write` straight into the group's write buffer, which is kept from
    /// group to group: a record built in a Vec of its own (250 KB for 1,000 flag changes) grew
    /// by doubling, faulted in fresh pages, and was then copied here.
    pub fn append_record_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.pending.copy_with(|out| {
            out.extend_from_slice(RECORD_MAGIC);
            let hash_at = out.len();
            out.extend_from_slice(&[0; 32 + 4]);
            let payload_at = out.len();
            write(out);
            let len = (out.len() - payload_at) as u32;
            let hash = blake3::hash(&out[payload_at..]);
            out[hash_at..hash_at + 32].copy_from_slice(hash.as_bytes());
            out[hash_at + 32..payload_at].copy_from_slice(&len.to_be_bytes());
        });
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the queued entries and fdatasyncs the segment. On failure the file is cut back to
    /// where it was, and the caller must not commit anything that names the queued entries.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        match self.take_pending() {
            Some(job) => {
                let result = job.run();
                let start = job.start();
                self.recycle(job);
                self.finish(start, result)
            }
            None => Ok(()),
        }
    }

    /// Takes the queued entries to be written and fdatasynced by [`SegmentSync::run`], which may
    /// run on another thread while the caller goes on (the commit group builds its transaction
    /// meanwhile). Entries queued after this land behind them. Hand the job's start and its
    /// result to [`SegmentWriter::finish`].
    pub fn take_pending(&mut self) -> Option<SegmentSync> {
        if self.pending.is_empty() {
            return None;
        }
        let queued = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        let offset = self.len;
        self.len += queued.len;
        // A large write (a sync's page of bodies) gains little from zeros ahead of it, and
        // would pay for twice its bytes: it extends the file instead.
        let small = queued.len <= ZERO_AHEAD / 16;
        let zeros_to = match self.zero_ahead && small && self.len > self.written_to {
            true => (self.len / ZERO_AHEAD + 1) * ZERO_AHEAD,
            false => self.len,
        };
        self.written_to = self.written_to.max(zeros_to);
        Some(SegmentSync {
            file: self.file.clone(),
            path: segment_path(&self.dir, self.segment),
            offset,
            queued,
            zeros_to,
        })
    }

    /// Takes back a finished [`SegmentSync`]'s buffer to queue later entries in (see
    /// [`KEPT_BUFFER`]).
    pub fn recycle(&mut self, job: SegmentSync) {
        let mut queued = job.queued;
        if queued.copied.capacity() <= KEPT_BUFFER && queued.copied.capacity() >= self.spare.copied.capacity()
        {
            // The shared bodies go back to their batches now.
            queued.clear();
            self.spare = queued;
        }
    }

    /// Records how the [`SegmentSync`] that began at `start` ([`SegmentSync::start`]) ended. On
    /// failure the file is cut back to where it was before the job and everything queued since
    /// is dropped: nothing may name those entries.
    pub fn finish(&mut self, start: u64, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if let Err(e) = result {
            self.rewind(start)?;
            return Err(e);
        }
        Ok(())
    }

    /// Where the next entry goes (after the queued ones).
    pub fn end(&self) -> u64 {
        self.len + self.pending.len
    }

    /// Drops everything from `to` on (written, synced or queued) and cuts the file back there:
    /// a group that fails before its commit leaves no dead bytes in front of the next group's.
    /// `to` must be an [`SegmentWriter::end`] taken before that group, so no committed entry is
    /// behind it.
    ///
    /// The cut is synced: the bytes cut may hold a synced group record, which must not be
    /// replayed at the next start (its group failed). If the cut cannot be made durable, the
    /// error says so; the caller refuses further groups until a restart.
    pub fn rewind(&mut self, to: u64) -> Result<(), StoreError> {
        self.pending.clear();
        if self.len > to {
            let path = segment_path(&self.dir, self.segment);
            self.file
                .set_len(to)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| StoreError::io(path.display(), e))?;
            self.len = to;
            self.written_to = to;
        }
        Ok(())
    }

    /// Drops queued entries: their group failed, nothing will name them, and they must not be
    /// written by the next group as dead bytes.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Starts a new segment once the current one is full. Called between groups only.
    pub fn rotate_if_full(&mut self) -> Result<(), StoreError> {
        if self.len < self.max_segment {
            return Ok(());
        }
        let next = self.segment + 1;
        let (file, len) = open_segment(self.disk.as_ref(), &self.dir, next)?;
        if self.written_to > self.len {
            // The sealed segment's zeros go; if a crash brings them back they are dead bytes.
            if let Err(e) = self.file.set_len(self.len) {
                tracing::warn!(error = %e, "cannot cut the zeros off a sealed segment");
            }
        }
        self.segment = next;
        self.file = Arc::from(file);
        self.len = len;
        self.written_to = len;
        Ok(())
    }

    /// Size of a segment file on disk.
    pub fn file_len(&self, segment: u32) -> Result<u64, StoreError> {
        let path = segment_path(&self.dir, segment);
        self.disk
            .file_len(&path)
            .map_err(|e| StoreError::io(path.display(), e))
    }

    /// Numbers of all segment files except the one being appended to.
    pub fn sealed_segments(&self) -> Result<Vec<u32>, StoreError> {
        let mut out = segment_numbers(self.disk.as_ref(), &self.dir)?;
        out.retain(|n| *n != self.segment);
        Ok(out)
    }

    /// Deletes a compacted segment. Its directory entry may come back after a crash (the removal
    /// is not synced): then its bytes are dead, and the next compaction removes it again.
    pub fn remove_segment(&self, segment: u32) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, segment);
        self.disk
            .remove_file(&path)
            .map_err(|e| StoreError::io(path.display(), e))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Entries taken from a [`SegmentWriter`], to be written at their offset and made durable.
pub struct SegmentSync {
    file: Arc<dyn DiskFile>,
    path: PathBuf,
    offset: u64,
    queued: Queued,
    /// Zeros follow the entries up to here (see [`ZERO_AHEAD`]).
    zeros_to: u64,
}

impl SegmentSync {
    /// The segment offset its entries start at.
    pub fn start(&self) -> u64 {
        self.offset
    }

    /// One gathered write (two when zeros go ahead) and one fdatasync.
    pub fn run(&self) -> Result<(), StoreError> {
        let end = self.offset + self.queued.len;
        self.file
            .write_all_gathered_at(&self.queued.slices(), self.offset)
            .and_then(|()| match self.zeros_to > end {
                true => self
                    .file
                    .write_all_at(&vec![0u8; (self.zeros_to - end) as usize], end),
                false => Ok(()),
            })
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StoreError::io(self.path.display(), e))
    }
}

/// The numbers of the segment files in `dir`, ascending.
pub fn segment_numbers(disk: &dyn Disk, dir: &Path) -> Result<Vec<u32>, StoreError> {
    let seg_dir = dir.join(SEGMENT_DIR);
    let names = disk
        .list_dir(&seg_dir)
        .map_err(|e| StoreError::io(seg_dir.display(), e))?;
    let mut out: Vec<u32> = names.iter().filter_map(|n| segment_number(n)).collect();
    out.sort_unstable();
    Ok(out)
}

/// The number of a segment file's name (`NNNNNNNN.seg`).
fn segment_number(name: &str) -> Option<u32> {
    name.strip_suffix(".seg").and_then(|n| n.parse::<u32>().ok())
}

/// Opens a segment for appending, creating it if needed. The segment's directory entry is made
/// durable before anything can name the file: a commit that indexes a body in a segment whose
/// entry a crash undoes would lose the body with the file.
fn open_segment(disk: &dyn Disk, dir: &Path, segment: u32) -> Result<(Box<dyn DiskFile>, u64), StoreError> {
    let path = segment_path(dir, segment);
    let file = disk
        .open(&path, true)
        .map_err(|e| StoreError::io(path.display(), e))?;
    let len = file.len().map_err(|e| StoreError::io(path.display(), e))?;
    let seg_dir = dir.join(SEGMENT_DIR);
    disk.sync_dir(&seg_dir)
        .map_err(|e| StoreError::io(seg_dir.display(), e))?;
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::RealDisk;

    #[test]
    fn zeros_go_ahead_of_small_writes_only_and_a_sealed_segment_loses_them() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        disk.create_dir_all(&dir.path().join(SEGMENT_DIR)).unwrap();
        let mut writer = SegmentWriter::open(disk.clone(), dir.path(), 2 * ZERO_AHEAD)
            .unwrap()
            .with_zero_ahead(true);
        let path = segment_path(dir.path(), 1);
        let guid = Guid::of(b"small body");
        let small = writer.append(&guid, b"small body");
        writer.sync().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ZERO_AHEAD);
        assert_eq!(
            read_body(disk.as_ref(), dir.path(), None, &guid, &small).unwrap(),
            b"small body"
        );
        // A large write extends the file by its own bytes only.
        let large = vec![7u8; (ZERO_AHEAD + ZERO_AHEAD / 2) as usize];
        writer.append(&Guid([2; 32]), &large);
        writer.sync().unwrap();
        let end = writer.end();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        // A failed group's cut takes the zeros too.
        writer.append(&Guid([3; 32]), b"failed");
        writer.sync().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > end);
        writer.rewind(end).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        writer.append(&Guid([4; 32]), b"last");
        writer.sync().unwrap();
        let data_end = writer.end();
        assert!(std::fs::metadata(&path).unwrap().len() > data_end);
        // Sealing cuts the zeros off.
        writer.append(&Guid([5; 32]), &vec![1u8; (2 * ZERO_AHEAD) as usize]);
        writer.sync().unwrap();
        let sealed_end = writer.end();
        writer.rotate_if_full().unwrap();
        assert_eq!(writer.segment(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), sealed_end);
    }

    #[test]
    fn shared_and_copied_bodies_read_back_from_one_gathered_write() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        disk.create_dir_all(&dir.path().join(SEGMENT_DIR)).unwrap();
        let mut writer = SegmentWriter::open(disk.clone(), dir.path(), u64::MAX).unwrap();
        // More parts than one pwritev takes, shared and copied bodies interleaved, and a group
        // record behind them.
        let bodies: Vec<Arc<Vec<u8>>> = (0..1_100u32)
            .map(|n| {
                let len = if n % 3 == 0 {
                    100 + n as usize
                } else {
                    SHARED_BODY + n as usize
                };
                Arc::new((0..len).map(|i| (i as u32 ^ n) as u8).collect())
            })
            .collect();
        let mut placed = Vec::new();
        for body in &bodies {
            let guid = Guid::of(body);
            placed.push((guid, writer.append_shared(&guid, body)));
        }
        writer.append_record(b"group record");
        let end = writer.end();
        writer.sync().unwrap();
        assert_eq!(std::fs::metadata(segment_path(dir.path(), 1)).unwrap().len(), end);
        for (body, (guid, location)) in bodies.iter().zip(&placed) {
            assert_eq!(
                &read_body(disk.as_ref(), dir.path(), None, guid, location).unwrap(),
                body.as_ref()
            );
        }
        // The next group queues into the first one's buffers, behind its entries.
        let guid = Guid::of(b"next group");
        let location = writer.append(&guid, b"next group");
        assert_eq!(location.offset, end);
        writer.sync().unwrap();
        assert_eq!(
            read_body(disk.as_ref(), dir.path(), None, &guid, &location).unwrap(),
            b"next group"
        );
    }

    #[test]
    fn entries_read_together_come_back_in_the_asked_order_and_a_bad_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        disk.create_dir_all(&dir.path().join(SEGMENT_DIR)).unwrap();
        let mut writer = SegmentWriter::open(disk.clone(), dir.path(), u64::MAX).unwrap();
        // Small bodies side by side, a group record between them (a gap read across), a body
        // larger than one read's limit, then more small ones.
        let mut bodies: Vec<Vec<u8>> = (0..300u32)
            .map(|n| format!("body {n} ").repeat(n as usize % 50 + 1).into_bytes())
            .collect();
        bodies.insert(150, vec![7u8; 1536 * 1024]);
        let mut placed = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let guid = Guid::of(body);
            placed.push((guid, writer.append(&guid, body)));
            if i == 100 {
                writer.append_record(&[1u8; 3000]);
            }
        }
        writer.sync().unwrap();
        // One entry's bytes damaged on disk, and one location whose header names another body.
        let file = disk.open(&segment_path(dir.path(), 1), true).unwrap();
        let damaged = placed[40].1;
        file.write_all_at(b"X", damaged.offset + HEADER_LEN + 1).unwrap();
        let mut asked: Vec<(Guid, BodyLocation)> = placed.iter().rev().copied().collect();
        let misplaced = (Guid::of(b"not there"), placed[7].1);
        asked.insert(5, misplaced);
        let read = read_entries_in(file.as_ref(), &asked);
        assert_eq!(read.len(), asked.len());
        for ((guid, _), result) in asked.iter().zip(&read) {
            let index = placed.iter().position(|(g, _)| g == guid);
            match index {
                Some(40) => assert!(
                    matches!(result, Err(StoreError::BodyCorrupt { reason, .. }) if reason.contains("hash")),
                    "{result:?}"
                ),
                Some(i) => assert_eq!(result.as_ref().unwrap(), &bodies[i]),
                None => assert!(
                    matches!(result, Err(StoreError::BodyCorrupt { reason, .. }) if reason.contains("header")),
                    "{result:?}"
                ),
            }
        }
        // An entry past the end of the file (the index ahead of a cut segment) fails alone too.
        let end = writer.end();
        let beyond = BodyLocation {
            segment: 1,
            offset: end,
            len: 10,
            refs: 1,
        };
        let read = read_entries_in(file.as_ref(), &[placed[0], (Guid::of(b"gone"), beyond)]);
        assert_eq!(read[0].as_ref().unwrap(), &bodies[0]);
        assert!(matches!(&read[1], Err(StoreError::BodyCorrupt { .. })));
    }
}
