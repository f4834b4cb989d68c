//! The `messages` table's values ([`StoredRecord`]) written and read by hand: byte for byte the
//! MessagePack that rmp-serde makes of them (structs as arrays; a test compares the two on
//! random records), without serde's visitor machinery in between. The record inside is written
//! by `MessageRecord::write_msgpack`, the encoder the mailbox digest uses too.
//!
//! Every flag change reads a record and writes it back, and a sync reads each record it sends:
//! through rmp-serde a 107-byte record took about 480 ns to write and 630 ns to read, a fifth of
//! the receiving node's work for 1,000 flag changes. What this module does not recognise (a
//! record from before a field was added, damage) it leaves to rmp-serde, which reads every
//! layout the store ever wrote and names what is wrong.

use std::collections::BTreeMap;

use mailmesh_protocol::ids::{AppendId, Guid, ModSeq, NodeId, Uid};
use mailmesh_protocol::merge::Lww;
use mailmesh_protocol::names::Flag;
use mailmesh_protocol::records::{GuidAs, MessageRecord};
use mailmesh_protocol::version::Version;
use rmp::encode::{write_array_len, write_bool, write_nil, write_str, write_uint};
use rmp::Marker;

use crate::mailbox::StoredRecord;

/// Fields of a [`StoredRecord`] and of its [`MessageRecord`], as written today.
const STORED_FIELDS: usize = 6;
const RECORD_FIELDS: usize = 7;

/// `stored`'s MessagePack, as `rmp_serde::to_vec` writes it.
pub fn encode(stored: &StoredRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + 32 * stored.record.flags.len());
    write_stored(stored, &mut out).expect("writing to a Vec cannot fail");
    out
}

type WriteResult = Result<(), std::io::Error>;

fn write_stored(stored: &StoredRecord, out: &mut Vec<u8>) -> WriteResult {
    write_array_len(out, STORED_FIELDS as u32)?;
    stored.record.write_msgpack(out, GuidAs::Bytes);
    write_uint(out, stored.modseq.0)?;
    write_str(out, stored.origin.as_str())?;
    match &stored.arrived_on {
        Some(node) => write_str(out, node.as_str())?,
        None => write_nil(out)?,
    }
    write_bool(out, stored.hidden)?;
    write_uint(out, stored.created.0)?;
    Ok(())
}

/// The record in `bytes` if they are today's layout, whole, with nothing after it and every
/// name valid; `None` for anything else (rmp-serde then reads it, or says why it cannot).
pub fn decode(bytes: &[u8]) -> Option<StoredRecord> {
    let mut r = Reader { rest: bytes };
    if r.array()? != STORED_FIELDS {
        return None;
    }
    let record = r.record()?;
    let modseq = ModSeq(r.uint()?);
    let origin = r.node()?;
    let arrived_on = match r.nil()? {
        true => None,
        false => Some(r.node()?),
    };
    let hidden = r.bool()?;
    let created = ModSeq(r.uint()?);
    if !r.rest.is_empty() {
        return None;
    }
    Some(StoredRecord {
        record,
        modseq,
        origin,
        arrived_on,
        hidden,
        created,
    })
}

/// A cursor over MessagePack, reading only the markers rmp-serde writes for these types.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    fn marker(&mut self) -> Option<Marker> {
        Some(Marker::from_u8(self.take(1)?[0]))
    }

    /// A big-endian number of `n` bytes.
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    }

    /// Whether a nil comes next (taken if so).
    fn nil(&mut self) -> Option<bool> {
        match self.rest.first()? {
            0xc0 => {
                self.rest = &self.rest[1..];
                Some(true)
            }
            _ => Some(false),
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.marker()? {
            Marker::True => Some(true),
            Marker::False => Some(false),
            _ => None,
        }
    }

    fn uint(&mut self) -> Option<u64> {
        match self.marker()? {
            Marker::FixPos(n) => Some(u64::from(n)),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            _ => None,
        }
    }

    fn sint(&mut self) -> Option<i64> {
        match self.marker()? {
            Marker::FixPos(n) => Some(i64::from(n)),
            Marker::FixNeg(n) => Some(i64::from(n)),
            Marker::U8 => self.be(1).map(|v| v as i64),
            Marker::U16 => self.be(2).map(|v| v as i64),
            Marker::U32 => self.be(4).map(|v| v as i64),
            Marker::U64 => self.be(8).and_then(|v| i64::try_from(v).ok()),
            Marker::I8 => self.be(1).map(|v| i64::from(v as u8 as i8)),
            Marker::I16 => self.be(2).map(|v| i64::from(v as u16 as i16)),
            Marker::I32 => self.be(4).map(|v| i64::from(v as u32 as i32)),
            Marker::I64 => self.be(8).map(|v| v as i64),
            _ => None,
        }
    }

    fn array(&mut self) -> Option<usize> {
        match self.marker()? {
            Marker::FixArray(n) => Some(usize::from(n)),
            Marker::Array16 => self.be(2).map(|n| n as usize),
            Marker::Array32 => self.be(4).map(|n| n as usize),
            _ => None,
        }
    }

    fn map(&mut self) -> Option<usize> {
        match self.marker()? {
            Marker::FixMap(n) => Some(usize::from(n)),
            Marker::Map16 => self.be(2).map(|n| n as usize),
            Marker::Map32 => self.be(4).map(|n| n as usize),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = match self.marker()? {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.be(1)? as usize,
            Marker::Str16 => self.be(2)? as usize,
            Marker::Str32 => self.be(4)? as usize,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.marker()? {
            Marker::Bin8 => self.be(1)? as usize,
            Marker::Bin16 => self.be(2)? as usize,
            Marker::Bin32 => self.be(4)? as usize,
            _ => return None,
        };
        self.take(len)
    }

    /// A node name, checked as its deserializer checks it.
    fn node(&mut self) -> Option<NodeId> {
        NodeId::new(self.str()?).ok()
    }

    fn version(&mut self) -> Option<Version> {
        if self.array()? != 2 {
            return None;
        }
        let counter = self.uint()?;
        let node = self.node()?;
        Some(Version { counter, node })
    }

    fn record(&mut self) -> Option<MessageRecord> {
        if self.array()? != RECORD_FIELDS || self.array()? != 2 {
            return None;
        }
        let append_id = AppendId {
            origin: self.node()?,
            counter: self.uint()?,
        };
        if self.array()? != 2 {
            return None;
        }
        let uid = Lww {
            value: Uid(u32::try_from(self.uint()?).ok()?),
            version: self.version()?,
        };
        let guid = Guid(<[u8; 32]>::try_from(self.bin()?).ok()?);
        let size = self.uint()?;
        let internaldate = self.sint()?;
        let mut flags = BTreeMap::new();
        for _ in 0..self.map()? {
            let flag = Flag::new(self.str()?).ok()?;
            if self.array()? != 2 {
                return None;
            }
            let value = self.bool()?;
            let version = self.version()?;
            // A name twice: rmp-serde's map keeps the last; leave such a record to it.
            if flags.insert(flag, Lww { value, version }).is_some() {
                return None;
            }
        }
        let expunged = match self.nil()? {
            true => None,
            false => Some(self.version()?),
        };
        Some(MessageRecord {
            append_id,
            uid,
            guid,
            size,
            internaldate,
            flags,
            expunged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        "[a-z0-9-]{1,63}".prop_map(|s| NodeId::new(s).unwrap())
    }

    fn version() -> impl Strategy<Value = Version> {
        (any::<u64>(), node()).prop_map(|(counter, node)| Version { counter, node })
    }

    fn flag() -> impl Strategy<Value = Flag> {
        prop_oneof![
            proptest::sample::select(Flag::SYSTEM.to_vec()).prop_map(|s| Flag::new(s).unwrap()),
            "[A-Za-z$][A-Za-z0-9_.-]{0,40}".prop_map(|s| Flag::new(&s).unwrap()),
        ]
    }

    fn stored() -> impl Strategy<Value = StoredRecord> {
        let record = (
            (node(), any::<u64>()),
            (any::<u32>(), version()),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<i64>(),
            proptest::collection::btree_map(flag(), (any::<bool>(), version()), 0..40),
            proptest::option::of(version()),
        )
            .prop_map(
                |((origin, counter), (uid, uv), guid, size, internaldate, flags, expunged)| MessageRecord {
                    append_id: AppendId { origin, counter },
                    uid: Lww::new(Uid(uid), uv),
                    guid: Guid(guid),
                    size,
                    internaldate,
                    flags: flags
                        .into_iter()
                        .map(|(f, (value, version))| (f, Lww::new(value, version)))
                        .collect(),
                    expunged,
                },
            );
        (
            record,
            any::<u64>(),
            node(),
            proptest::option::of(node()),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(
                |(record, modseq, origin, arrived_on, hidden, created)| StoredRecord {
                    record,
                    modseq: ModSeq(modseq),
                    origin,
                    arrived_on,
                    hidden,
                    created: ModSeq(created),
                },
            )
    }

    proptest! {
        #[test]
        fn written_as_rmp_serde_writes_and_read_back_whole(stored in stored()) {
            let bytes = encode(&stored);
            prop_assert_eq!(&bytes, &rmp_serde::to_vec(&stored).unwrap());
            prop_assert_eq!(decode(&bytes), Some(stored.clone()));
            // Through the store's own functions too, which pick this path for records.
            prop_assert_eq!(super::super::encode(&stored), bytes.clone());
            prop_assert_eq!(super::super::decode::<StoredRecord>(&bytes, "t").unwrap(), stored);
        }

        #[test]
        fn anything_cut_short_or_extended_is_left_to_rmp_serde(stored in stored(), cut in any::<proptest::sample::Index>()) {
            let bytes = encode(&stored);
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert_eq!(decode(short), None);
            let mut long = bytes.clone();
            long.push(0xc0);
            prop_assert_eq!(decode(&long), None);
        }
    }

    /// A record written before `created` was added (five fields): this module leaves it, and the
    /// store reads it through rmp-serde with `created` at its default, as before.
    #[test]
    fn an_older_layout_is_read_through_rmp_serde() {
        #[derive(serde::Serialize)]
        struct Before<'a> {
            record: &'a MessageRecord,
            modseq: ModSeq,
            origin: &'a NodeId,
            arrived_on: Option<&'a NodeId>,
            hidden: bool,
        }
        let n1 = NodeId::new("n1").unwrap();
        let v = Version {
            counter: 3,
            node: n1.clone(),
        };
        let mut flags = BTreeMap::new();
        flags.insert(Flag::seen(), Lww::new(true, v.clone()));
        let record = MessageRecord {
            append_id: AppendId {
                origin: n1.clone(),
                counter: 9,
            },
            uid: Lww::new(Uid(4), v.clone()),
            guid: Guid::of(b"body"),
            size: 4,
            internaldate: -5,
            flags,
            expunged: None,
        };
        let bytes = rmp_serde::to_vec(&Before {
            record: &record,
            modseq: ModSeq(77),
            origin: &n1,
            arrived_on: None,
            hidden: false,
        })
        .unwrap();
        assert_eq!(decode(&bytes), None);
        let read = super::super::decode::<StoredRecord>(&bytes, "t").unwrap();
        assert_eq!(read.record, record);
        assert_eq!(read.modseq, ModSeq(77));
        assert_eq!(read.created, ModSeq::ZERO);
    }

    /// A name the deserializer refuses is refused here too: rmp-serde then reports it.
    #[test]
    fn a_bad_name_is_left_to_rmp_serde_which_refuses_it() {
        let n1 = NodeId::new("n1").unwrap();
        let v = Version {
            counter: 3,
            node: n1.clone(),
        };
        let stored = StoredRecord {
            record: MessageRecord {
                append_id: AppendId {
                    origin: n1.clone(),
                    counter: 9,
                },
                uid: Lww::new(Uid(4), v),
                guid: Guid::of(b"body"),
                size: 4,
                internaldate: 0,
                flags: BTreeMap::new(),
                expunged: None,
            },
            modseq: ModSeq(1),
            origin: n1,
            arrived_on: None,
            hidden: false,
            created: ModSeq(1),
        };
        let bytes = encode(&stored);
        // "n1" appears first as the AppendId's origin: make it "N1", which no node is named.
        let at = bytes.windows(2).position(|w| w == b"n1").unwrap();
        let mut bad = bytes.clone();
        bad[at] = b'N';
        assert_eq!(decode(&bad), None);
        assert!(super::super::decode::<StoredRecord>(&bad, "t").is_err());
    }
}
