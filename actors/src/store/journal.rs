//! The group journal: one fdatasync per commit group instead of two.
//!
//! A group used to be durable after two syncs in a row: the body segment's (its new bodies), then
//! redb's durable commit, which writes every page the group dirtied (about 85 scattered 4 KiB
//! pages for 8 LMTP deliveries to 8 mailboxes) and syncs them. That second sync was most of a
//! group's time, and its kernel CPU (one block request per scattered page) most of the commit's.
//!
//! Now a group's batches are also written, as one *group record*, into the segment right behind
//! the group's bodies, and go to disk with them in the segment's one write and one fdatasync
//! (sequential bytes, no journal update on ext4 once the segment is past them). The redb
//! transaction then commits without a sync (`Durability::None`): readers see it at once, and a
//! crash takes it back to the last durable commit. Every `CHECKPOINT_GROUPS` groups (or
//! `CHECKPOINT_BYTES` of segment, or a new segment) a group's commit is durable instead, which
//! also makes every commit before it durable.
//!
//! Each commit, durable or not, stores a [`JournalMark`] in the same transaction: the sequence
//! number of the last group it holds, and (advanced by durable commits only) the segment
//! position from which a replay reads. Opening a store replays, in order, every group record
//! past that position whose number is above the stored one, in one durable transaction. The
//! numbers make replay exact whatever redb kept: a clean close that persisted non-durable
//! commits (redb does so on drop) left marks that skip their records.
//!
//! A group that fails after its record was queued cuts the segment back (and syncs the cut), so
//! a refused group never comes back at the next start. A group whose record was synced but whose
//! commit a crash prevented does come back: nobody was answered about it, which allows either.
//!
//! With a shared body spool the journal is off (bodies go to per-body files, not the segment):
//! such a node commits durably every group, as before.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use mailmesh_protocol::ids::Guid;
use serde::{Deserialize, Serialize};

use super::batch::{Op, Table};
use super::bodies::BodyLocation;
use super::{Batch, CounterState};
use crate::error::StoreError;

/// Groups between two durable commits.
///
/// redb keeps a non-durable commit's dirty pages in memory and writes them all at the next
/// durable one, which stalls every writer meanwhile: 7 ms for 64 LMTP groups (841 pages of
/// 4 KiB, then an fdatasync), 14 to 18 ms for 512, since later groups rewrite the same pages.
/// At 64, those stalls were 13% of the LMTP bench's time; at 512 they are 4%. A replay after a
/// crash reads at most this many records (about 10 MiB of segment for 2 KB deliveries).
pub const CHECKPOINT_GROUPS: u32 = 512;
/// Segment bytes written since the last durable commit after which the next commit is durable.
pub const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// Where replay starts and which groups the store already holds (META's "journal" value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMark {
    /// The last group whose changes this state holds (0: none journaled yet).
    pub seq: u64,
    /// The segment and offset where replay starts reading: everything before is in a durable
    /// commit.
    pub segment: u32,
    pub offset: u64,
}

impl JournalMark {
    /// The mark of a commit holding groups up to `seq`, replayed from `from` (segment, offset).
    pub fn at(seq: u64, from: (u32, u64)) -> Self {
        JournalMark {
            seq,
            segment: from.0,
            offset: from.1,
        }
    }
}

/// A group record read back from a segment.
pub struct GroupRecord {
    pub seq: u64,
    pub counters: CounterState,
    /// The group's new bodies, written ahead in the segment.
    pub prewritten: Vec<(Guid, BodyLocation)>,
    pub batches: Vec<Batch>,
}

const PUT: u8 = 0;
const DELETE: u8 = 1;
const DELETE_IF_EQUALS: u8 = 2;
const ADD_BODY: u8 = 3;
const ADD_BODY_WRITTEN_AHEAD: u8 = 4;
const ADD_KNOWN_BODY: u8 = 5;
const RELEASE_BODY: u8 = 6;
const ADD_SPOOLED_BODY: u8 = 7;

/// [`encode_record_into`] into a Vec of its own (tests; the commit group encodes straight into
/// the segment's write buffer).
#[cfg(test)]
pub fn encode_record(
    seq: u64,
    counters: &CounterState,
    prewritten: &[(Guid, BodyLocation)],
    indexed: &BTreeSet<Guid>,
    batches: &[&Batch],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + batches.len() * 512);
    encode_record_into(&mut out, seq, counters, prewritten, indexed, batches);
    out
}

/// Encodes a group's record, appended to `out` (the segment's write buffer, see
/// `SegmentWriter::append_record_with`). Bytes the group's ops bring are left out where applying
/// the op cannot need them, here and at replay alike:
/// - the first op that brings each written-ahead body's bytes (they are in the segment already;
///   `prewritten` says where): it is the op that takes that place when the group is applied. A
///   later op for the same body keeps its bytes: a body released to zero and added again
///   within the group is written again by that op;
/// - an op adding a body that was `indexed` when the group began, if no op of the group
///   releases that body: it stays indexed, and the op only counts one more reference.
pub fn encode_record_into(
    out: &mut Vec<u8>,
    seq: u64,
    counters: &CounterState,
    prewritten: &[(Guid, BodyLocation)],
    indexed: &BTreeSet<Guid>,
    batches: &[&Batch],
) {
    out.extend_from_slice(&seq.to_be_bytes());
    put_bytes(out, &super::encode(counters));
    out.extend_from_slice(&(prewritten.len() as u32).to_be_bytes());
    for (guid, loc) in prewritten {
        out.extend_from_slice(&guid.0);
        out.extend_from_slice(&loc.encode());
    }
    let ahead: BTreeSet<Guid> = prewritten.iter().map(|(g, _)| *g).collect();
    let released: BTreeSet<Guid> = batches
        .iter()
        .flat_map(|b| b.ops.iter())
        .filter_map(|op| match op {
            Op::ReleaseBody(guid) => Some(*guid),
            _ => None,
        })
        .collect();
    let mut stripped = BTreeSet::new();
    out.extend_from_slice(&(batches.len() as u32).to_be_bytes());
    for batch in batches {
        out.extend_from_slice(&(batch.ops.len() as u32).to_be_bytes());
        for op in &batch.ops {
            match op {
                Op::Put(table, key, value) => {
                    out.push(PUT);
                    out.push(*table as u8);
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
                Op::Delete(table, key) => {
                    out.push(DELETE);
                    out.push(*table as u8);
                    put_bytes(out, key);
                }
                Op::DeleteIfEquals(table, key, value) => {
                    out.push(DELETE_IF_EQUALS);
                    out.push(*table as u8);
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
                Op::AddBody(guid, Some(bytes)) => {
                    let kept = indexed.contains(guid) && !released.contains(guid);
                    if kept || (ahead.contains(guid) && stripped.insert(*guid)) {
                        out.push(ADD_BODY_WRITTEN_AHEAD);
                        out.extend_from_slice(&guid.0);
                    } else {
                        out.push(ADD_BODY);
                        out.extend_from_slice(&guid.0);
                        put_bytes(out, bytes);
                    }
                }
                Op::AddBody(guid, None) => {
                    out.push(ADD_KNOWN_BODY);
                    out.extend_from_slice(&guid.0);
                }
                Op::ReleaseBody(guid) => {
                    out.push(RELEASE_BODY);
                    out.extend_from_slice(&guid.0);
                }
                Op::AddSpooledBody(guid, len) => {
                    out.push(ADD_SPOOLED_BODY);
                    out.extend_from_slice(&guid.0);
                    out.extend_from_slice(&len.to_be_bytes());
                }
            }
        }
    }
}

/// Decodes a record [`encode_record_into`] made. An op whose bytes were written ahead comes back with
/// empty bytes: applying it takes the body's place from `prewritten`, never its bytes.
pub fn decode_record(bytes: &[u8]) -> Result<GroupRecord, StoreError> {
    let mut r = Reader { bytes, at: 0 };
    let seq = r.u64()?;
    let counters = super::decode::<CounterState>(r.bytes()?, "group record counters")?;
    let mut prewritten = Vec::new();
    for _ in 0..r.u32()? {
        let guid = r.guid()?;
        let loc = BodyLocation::decode(r.take(20)?)?;
        prewritten.push((guid, loc));
    }
    let mut batches = Vec::new();
    for _ in 0..r.u32()? {
        let mut batch = Batch::new();
        for _ in 0..r.u32()? {
            let op = match r.u8()? {
                PUT => Op::Put(r.table()?, r.bytes()?.to_vec(), r.bytes()?.to_vec()),
                DELETE => Op::Delete(r.table()?, r.bytes()?.to_vec()),
                DELETE_IF_EQUALS => Op::DeleteIfEquals(r.table()?, r.bytes()?.to_vec(), r.bytes()?.to_vec()),
                ADD_BODY => Op::AddBody(r.guid()?, Some(Arc::new(r.bytes()?.to_vec()))),
                ADD_BODY_WRITTEN_AHEAD => Op::AddBody(r.guid()?, Some(Arc::new(Vec::new()))),
                ADD_KNOWN_BODY => Op::AddBody(r.guid()?, None),
                RELEASE_BODY => Op::ReleaseBody(r.guid()?),
                ADD_SPOOLED_BODY => Op::AddSpooledBody(r.guid()?, r.u64()?),
                other => return Err(r.error(&format!("unknown op {other}"))),
            };
            batch.ops.push(op);
        }
        batches.push(batch);
    }
    if r.at != bytes.len() {
        return Err(r.error("bytes after the last batch"));
    }
    Ok(GroupRecord {
        seq,
        counters,
        prewritten,
        batches,
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &str) -> StoreError {
        StoreError::Decode {
            what: "group record".into(),
            reason: format!("{reason} at byte {}", self.at),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.error("truncated"));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn guid(&mut self) -> Result<Guid, StoreError> {
        Ok(Guid(self.take(32)?.try_into().expect("32 bytes")))
    }

    fn table(&mut self) -> Result<Table, StoreError> {
        let id = self.u8()?;
        Table::ALL
            .get(id as usize)
            .copied()
            .ok_or_else(|| self.error(&format!("unknown table {id}")))
    }
}

/// Reads the group records of the segments in `dir` from `from` on, in order, and hands each to
/// `each`. Body entries are stepped over. In each segment, reading stops at the first entry that
/// is not whole and valid (a crash's torn or unsynced tail, or zeros): nothing valid follows it
/// in that segment that replay needs, because every start checkpoints past the tail it found.
pub fn read_records(
    disk: &dyn crate::disk::Disk,
    dir: &Path,
    from: (u32, u64),
    mut each: impl FnMut(GroupRecord) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for segment in super::bodies::segment_numbers(disk, dir)? {
        if segment < from.0 {
            continue;
        }
        let path = super::bodies::segment_path(dir, segment);
        let file = disk
            .open(&path, false)
            .map_err(|e| StoreError::io(path.display(), e))?;
        let len = file.len().map_err(|e| StoreError::io(path.display(), e))?;
        let mut at = if segment == from.0 { from.1 } else { 0 };
        let mut header = [0u8; super::bodies::HEADER_LEN as usize];
        while at + header.len() as u64 <= len {
            if file.read_exact_at(&mut header, at).is_err() {
                break;
            }
            let entry_len = u32::from_be_bytes(header[36..40].try_into().expect("4 bytes")) as u64;
            let end = at + header.len() as u64 + entry_len;
            if end > len {
                break;
            }
            match &header[0..4] {
                m if m == super::bodies::MAGIC => {}
                m if m == super::bodies::RECORD_MAGIC => {
                    let mut payload = vec![0u8; entry_len as usize];
                    if file
                        .read_exact_at(&mut payload, at + header.len() as u64)
                        .is_err()
                        || blake3::hash(&payload).as_bytes() != &header[4..36]
                    {
                        break;
                    }
                    each(decode_record(&payload)?)?;
                }
                _ => break,
            }
            at = end;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_named_by_its_place_in_all() {
        for (i, table) in Table::ALL.iter().enumerate() {
            assert_eq!(*table as u8 as usize, i, "{}", table.name());
        }
    }

    #[test]
    fn a_record_comes_back_as_written_with_the_first_written_ahead_bytes_left_out() {
        let g1 = Guid([1; 32]);
        let g2 = Guid([2; 32]);
        let loc = BodyLocation {
            segment: 3,
            offset: 40,
            len: 5,
            refs: 1,
        };
        let mut b1 = Batch::new();
        b1.put_raw(Table::Messages, b"k".to_vec(), b"v".to_vec());
        b1.ops.push(Op::AddBody(g1, Some(Arc::new(b"hello".to_vec()))));
        b1.ops.push(Op::AddBody(g2, Some(Arc::new(b"again".to_vec()))));
        let mut b2 = Batch::new();
        b2.ops.push(Op::ReleaseBody(g1));
        b2.ops.push(Op::AddBody(g1, Some(Arc::new(b"hello".to_vec()))));
        b2.ops.push(Op::AddBody(g2, None));
        b2.ops.push(Op::AddSpooledBody(g2, 9));
        b2.delete_if_equals(Table::ShownBefore, b"a".to_vec(), b"b".to_vec());
        b2.delete(Table::Uids, b"x".to_vec());
        let counters = CounterState {
            lamport: 7,
            ..Default::default()
        };
        let bytes = encode_record(42, &counters, &[(g1, loc)], &BTreeSet::new(), &[&b1, &b2]);
        let back = decode_record(&bytes).unwrap();
        assert_eq!(back.seq, 42);
        assert_eq!(back.counters, counters);
        assert_eq!(back.prewritten, vec![(g1, loc)]);
        assert_eq!(back.batches.len(), 2);
        let shown: Vec<String> = back
            .batches
            .iter()
            .flat_map(|b| b.ops.iter().map(|op| format!("{op:?}")))
            .collect();
        assert_eq!(
            shown[0],
            format!("{:?}", Op::Put(Table::Messages, b"k".to_vec(), b"v".to_vec()))
        );
        // g1's first bytes are in the segment; g2 was not written ahead, so it keeps them.
        assert_eq!(
            shown[1],
            format!("{:?}", Op::AddBody(g1, Some(Arc::new(Vec::new()))))
        );
        assert_eq!(
            shown[2],
            format!("{:?}", Op::AddBody(g2, Some(Arc::new(b"again".to_vec()))))
        );
        assert_eq!(shown[3], format!("{:?}", Op::ReleaseBody(g1)));
        assert_eq!(
            shown[4],
            format!("{:?}", Op::AddBody(g1, Some(Arc::new(b"hello".to_vec()))))
        );
        assert_eq!(shown[5], format!("{:?}", Op::AddBody(g2, None)));
        assert_eq!(shown[6], format!("{:?}", Op::AddSpooledBody(g2, 9)));
        assert_eq!(shown.len(), 9);
        assert!(decode_record(&bytes[..bytes.len() - 1]).is_err());

        // A body indexed when the group began keeps no bytes unless the group releases it.
        let g3 = Guid([3; 32]);
        let mut b3 = Batch::new();
        b3.ops.push(Op::AddBody(g3, Some(Arc::new(b"known".to_vec()))));
        b3.ops.push(Op::AddBody(g1, Some(Arc::new(b"hello".to_vec()))));
        let indexed: BTreeSet<Guid> = [g1, g3].into_iter().collect();
        let back = decode_record(&encode_record(1, &counters, &[], &indexed, &[&b3, &b2])).unwrap();
        let shown: Vec<String> = back.batches[0].ops.iter().map(|op| format!("{op:?}")).collect();
        assert_eq!(
            shown[0],
            format!("{:?}", Op::AddBody(g3, Some(Arc::new(Vec::new()))))
        );
        // b2 releases g1: its bytes stay.
        assert_eq!(
            shown[1],
            format!("{:?}", Op::AddBody(g1, Some(Arc::new(b"hello".to_vec()))))
        );
    }
}
