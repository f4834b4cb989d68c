//! The value of a uid index row (`Table::Uids`, key: mailbox, uid, AppendId): what a client
//! reading a mailbox's flags needs of the record, so that listing the uids, FETCH FLAGS and a
//! SEARCH over flags read the index alone instead of decoding every record (a whole
//! MessagePack record for two facts cost most of those commands' time on a large mailbox).
//!
//! Written with the record in the same batch, whenever the record is written
//! (`Mailbox::write_stored_returning`), so it never disagrees with a committed record:
//!
//! | bytes | what |
//! | --- | --- |
//! | 1 | 1 if a client sees the record (live, not hidden by a uid conflict), 0 if not |
//! | 8 | the record's modseq, big-endian |
//! | 1 | its system flags set, one bit each ([`SYSTEM_BITS`]) |
//! | rest | its keywords set, each one length byte and the name (a flag is at most 128 bytes) |
//!
//! Stores written before carry shorter rows, which stay readable: an empty row (before the index
//! said anything) or the visibility byte alone (before it held flags). Their record is read.

use mailmesh_protocol::ids::ModSeq;
use mailmesh_protocol::names::Flag;
use mailmesh_protocol::records::MessageRecord;

use crate::flag_set::FlagSet;

/// The system flags, in the order of their bits (bit 0 first).
pub const SYSTEM_BITS: [&str; 5] = Flag::SYSTEM;

const SHOWN: u8 = 1;
const NOT_SHOWN: u8 = 0;
/// Visibility, modseq and the system flags: the fixed part of a full row.
const FIXED: usize = 10;

/// A uid index row, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UidRow<'a> {
    /// Written before the index said anything of the record: read the record.
    Unknown,
    /// Written before the index held flags: whether the record is shown, nothing more.
    Visibility(bool),
    Full(IndexedFlags<'a>),
}

/// What a full row says of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedFlags<'a> {
    pub shown: bool,
    pub modseq: ModSeq,
    /// One bit per system flag set ([`SYSTEM_BITS`]).
    pub system: u8,
    keywords: &'a [u8],
}

impl<'a> UidRow<'a> {
    /// Reads a row; one that does not parse is taken as [`UidRow::Unknown`] (the record is read,
    /// which is always right).
    pub fn parse(value: &'a [u8]) -> UidRow<'a> {
        match value {
            [] => UidRow::Unknown,
            [SHOWN] => UidRow::Visibility(true),
            [NOT_SHOWN] => UidRow::Visibility(false),
            [shown @ (SHOWN | NOT_SHOWN), ..] if value.len() >= FIXED && keywords_parse(&value[FIXED..]) => {
                UidRow::Full(IndexedFlags {
                    shown: *shown == SHOWN,
                    modseq: ModSeq(u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"))),
                    system: value[9],
                    keywords: &value[FIXED..],
                })
            }
            _ => UidRow::Unknown,
        }
    }

    /// Whether the row says the record is shown, if it says.
    pub fn shown(&self) -> Option<bool> {
        match self {
            UidRow::Unknown => None,
            UidRow::Visibility(shown) => Some(*shown),
            UidRow::Full(f) => Some(f.shown),
        }
    }
}

impl IndexedFlags<'_> {
    /// Whether the system flag `name` (as in [`Flag::SYSTEM`]) is set.
    pub fn has_system(&self, name: &str) -> bool {
        SYSTEM_BITS
            .iter()
            .position(|s| *s == name)
            .is_some_and(|bit| self.system & (1 << bit) != 0)
    }

    /// The keywords set, as stored.
    pub fn keywords(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = self.keywords;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (name, tail) = tail.split_at(len as usize);
            rest = tail;
            Some(name)
        })
    }

    /// The flags set: the system bits as they are, the keywords as `Flag`s.
    pub fn flag_set(&self) -> FlagSet {
        let keywords = self
            .keywords()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter_map(|k| Flag::new(k).ok())
            .collect();
        FlagSet::with_keywords(self.system, keywords)
    }

    /// The flags set, in the record's order (`MessageRecord::set_flags`: sorted by name).
    pub fn flags(&self) -> Vec<Flag> {
        let mut flags: Vec<Flag> = SYSTEM_BITS
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.system & (1 << bit) != 0)
            .filter_map(|(_, name)| Flag::new(name).ok())
            .collect();
        flags.extend(
            self.keywords()
                .filter_map(|k| std::str::from_utf8(k).ok())
                .filter_map(|k| Flag::new(k).ok()),
        );
        flags.sort_unstable();
        flags
    }
}

/// Whether the keyword part is a whole sequence of length-prefixed names.
fn keywords_parse(mut rest: &[u8]) -> bool {
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 || tail.len() < len as usize {
            return false;
        }
        rest = &tail[len as usize..];
    }
    true
}

/// The full row of a record stored at `modseq`, `shown` or not.
pub fn encode(record: &MessageRecord, modseq: ModSeq, shown: bool) -> Vec<u8> {
    let mut row = Vec::with_capacity(FIXED);
    row.push(if shown { SHOWN } else { NOT_SHOWN });
    row.extend_from_slice(&modseq.0.to_be_bytes());
    row.push(0);
    for flag in record.set_flags() {
        match SYSTEM_BITS.iter().position(|s| *s == flag.as_str()) {
            Some(bit) => row[9] |= 1 << bit,
            None => {
                let name = flag.as_str().as_bytes();
                // Flag names are 1 to 128 bytes (`Flag::new`); one that is not would not parse
                // back, so the row is left without flags rather than wrong.
                let Ok(len) = u8::try_from(name.len()) else {
                    return Vec::new();
                };
                row.push(len);
                row.extend_from_slice(name);
            }
        }
    }
    row
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mailmesh_protocol::ids::{AppendId, Guid, NodeId, Uid};
    use mailmesh_protocol::merge::Lww;
    use mailmesh_protocol::version::Version;

    /// A record at `uid` with `flags` set (the shown index's tests build rows from it too).
    pub(crate) fn record_at(uid: u32, flags: &[&str]) -> MessageRecord {
        let node = NodeId::new("n").unwrap();
        let version = Version {
            counter: 1,
            node: node.clone(),
        };
        let mut record = MessageRecord {
            append_id: AppendId {
                origin: node,
                counter: u64::from(uid),
            },
            uid: Lww::new(Uid(uid), version.clone()),
            guid: Guid([0; 32]),
            size: 10,
            internaldate: 0,
            flags: Default::default(),
            expunged: None,
        };
        for f in flags {
            record.write_flag(Flag::new(f).unwrap(), true, version.clone());
        }
        record
    }

    fn record(flags: &[&str]) -> MessageRecord {
        record_at(7, flags)
    }

    #[test]
    fn a_row_gives_back_the_records_flags_in_its_order() {
        let r = record(&["\\Seen", "Zeta", "$Junk", "\\Answered", "lower", "\\Draft"]);
        let row = encode(&r, ModSeq(0x1234_5678_9abc), true);
        let UidRow::Full(read) = UidRow::parse(&row) else {
            panic!("a full row: {row:?}");
        };
        assert!(read.shown);
        assert_eq!(read.modseq, ModSeq(0x1234_5678_9abc));
        assert_eq!(read.flags(), r.set_flags().cloned().collect::<Vec<_>>());
        assert_eq!(read.flag_set(), r.set_flags().cloned().collect::<FlagSet>());
        assert!(read.has_system("\\Seen") && read.has_system("\\Draft"));
        assert!(!read.has_system("\\Flagged") && !read.has_system("\\Deleted"));
        let keywords: Vec<&[u8]> = read.keywords().collect();
        assert_eq!(keywords, vec![&b"$Junk"[..], b"Zeta", b"lower"]);
    }

    #[test]
    fn rows_from_before_are_read_as_they_were() {
        assert_eq!(UidRow::parse(&[]), UidRow::Unknown);
        assert_eq!(UidRow::parse(&[1]), UidRow::Visibility(true));
        assert_eq!(UidRow::parse(&[0]), UidRow::Visibility(false));
        let row = encode(&record(&[]), ModSeq(3), false);
        assert_eq!(UidRow::parse(&row).shown(), Some(false));
        // Damaged: the record is read instead.
        assert_eq!(UidRow::parse(&row[..5]), UidRow::Unknown);
        let mut cut = encode(&record(&["kw"]), ModSeq(3), true);
        cut.pop();
        assert_eq!(UidRow::parse(&cut), UidRow::Unknown);
        assert_eq!(UidRow::parse(&[7, 0, 0]), UidRow::Unknown);
    }
}
