//! A Mailbox's copy in memory of the shown rows of its uid index (`store::uid_row`): uid,
//! modseq and flags of each message a client sees, in uid order, 16 bytes a message (a message
//! with keywords, or from a store written before rows held flags, also keeps its flag list).
//!
//! A SELECT lists the uids and then FETCH FLAGS and SEARCH over flags read the same rows again,
//! each a redb scan of a row per message (100,000 rows: most of each command's time). The
//! Mailbox keeps the copy made by its last listing, with when it was read (`Listed` in
//! mailbox.rs), and answers from it while no commit of the mailbox has come since; it is never
//! changed, only replaced by the next listing, so it says what the committed index said.

use std::sync::OnceLock;

use mailmesh_protocol::ids::{ModSeq, Uid};
use mailmesh_protocol::names::Flag;

use crate::mailbox::MessageFlags;
use crate::store::uid_row::{IndexedFlags, SYSTEM_BITS};

/// The shown rows, in the order of the index (uid, then AppendId).
#[derive(Debug, Default)]
pub struct ShownIndex {
    rows: Vec<Row>,
    /// The whole flag list of the rows whose flags are not the system bits alone.
    listed_flags: Vec<Vec<Flag>>,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    modseq: u64,
    uid: u32,
    /// The system flags' bits (`SYSTEM_BITS`) in the low byte; above them, 0 or one more than
    /// the row's place in `listed_flags`.
    flags: u32,
}

impl Row {
    fn system(self) -> u8 {
        self.flags as u8
    }

    fn listed(self) -> Option<usize> {
        (self.flags >> 8).checked_sub(1).map(|at| at as usize)
    }
}

impl ShownIndex {
    /// Adds a full row's message (rows come in index order).
    pub fn push_row(&mut self, uid: Uid, row: &IndexedFlags<'_>) {
        if row.keywords().next().is_none() {
            self.rows.push(Row {
                modseq: row.modseq.0,
                uid: uid.0,
                flags: u32::from(row.system),
            });
        } else {
            self.push_listed(uid, row.modseq, row.flags());
        }
    }

    /// Adds a message whose flags were read from its record, at place `at` among those added
    /// so far (a row from before the index held flags, read after the scan).
    pub fn insert_message(&mut self, at: usize, message: MessageFlags) {
        self.push_listed(message.uid, message.modseq, message.flags);
        let row = self.rows.pop().expect("just pushed");
        self.rows.insert(at, row);
    }

    fn push_listed(&mut self, uid: Uid, modseq: ModSeq, flags: Vec<Flag>) {
        self.listed_flags.push(flags);
        self.rows.push(Row {
            modseq: modseq.0,
            uid: uid.0,
            flags: (self.listed_flags.len() as u32) << 8,
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The uids, ascending.
    pub fn uids(&self) -> Vec<Uid> {
        self.rows.iter().map(|row| Uid(row.uid)).collect()
    }

    /// The messages with uids from `lo` to `hi`, in uid order, with what `FetchFlags` says of
    /// each.
    pub fn flags_in(&self, lo: u32, hi: u32) -> impl ExactSizeIterator<Item = MessageFlags> + '_ {
        // Both ends found first: an iterator of known length, which `extend` fills without
        // growing its vector step by step (that growth was a fifth of a SEARCH UNSEEN).
        let start = self.rows.partition_point(|row| row.uid < lo);
        let end = self.rows.partition_point(|row| row.uid <= hi).max(start);
        self.rows[start..end].iter().map(|row| MessageFlags {
            uid: Uid(row.uid),
            modseq: ModSeq(row.modseq),
            flags: match row.listed() {
                Some(at) => self.listed_flags[at].clone(),
                None => system_flags(row.system()),
            },
        })
    }
}

/// The system flags set in `bits` (`SYSTEM_BITS`), sorted as `MessageRecord::set_flags` sorts
/// them: shared copies of five flags made once, not a new `Flag` per message.
fn system_flags(bits: u8) -> Vec<Flag> {
    static SORTED: OnceLock<Vec<(u8, Flag)>> = OnceLock::new();
    if bits == 0 {
        return Vec::new();
    }
    let sorted = SORTED.get_or_init(|| {
        let mut flags: Vec<(u8, Flag)> = SYSTEM_BITS
            .iter()
            .enumerate()
            .filter_map(|(bit, name)| Some((1u8 << bit, Flag::new(name).ok()?)))
            .collect();
        flags.sort_by(|a, b| a.1.cmp(&b.1));
        flags
    });
    sorted
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, flag)| flag.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::uid_row::tests::record_at as record;
    use crate::store::uid_row::{encode, UidRow};

    fn message(uid: u32, modseq: u64, flags: &[&str]) -> MessageFlags {
        MessageFlags {
            uid: Uid(uid),
            modseq: ModSeq(modseq),
            flags: record(uid, flags).set_flags().cloned().collect(),
        }
    }

    /// Every mix of system flags, keywords and a record read in its place answers what the
    /// row (or the record) says, in uid order, for any range.
    #[test]
    fn the_copy_answers_what_the_rows_say() {
        let flag_sets: [&[&str]; 6] = [
            &[],
            &["\\Seen"],
            &["\\Seen", "\\Answered", "\\Draft", "\\Flagged", "\\Deleted"],
            &["$Junk", "\\Seen"],
            &["Zeta", "lower", "\\Draft"],
            &["\\Flagged"],
        ];
        let mut index = ShownIndex::default();
        let mut expected = Vec::new();
        for (i, flags) in flag_sets.iter().enumerate() {
            let uid = 2 * i as u32 + 1;
            let row = encode(&record(uid, flags), ModSeq(100 + uid as u64), true);
            let UidRow::Full(read) = UidRow::parse(&row) else {
                panic!("a full row");
            };
            index.push_row(Uid(uid), &read);
            expected.push(message(uid, 100 + uid as u64, flags));
        }
        // A record read after the scan, put at its place (uid 4, between 3 and 5).
        index.insert_message(2, message(4, 7, &["\\Seen", "kw"]));
        expected.insert(2, message(4, 7, &["\\Seen", "kw"]));
        assert_eq!(index.len(), expected.len());
        assert_eq!(index.uids(), expected.iter().map(|m| m.uid).collect::<Vec<_>>());
        for (lo, hi) in [(1, u32::MAX), (2, 4), (4, 4), (6, 6), (12, 100), (0, 0)] {
            let got: Vec<MessageFlags> = index.flags_in(lo, hi).collect();
            let want: Vec<MessageFlags> = expected
                .iter()
                .filter(|m| (lo..=hi).contains(&m.uid.0))
                .cloned()
                .collect();
            assert_eq!(got, want, "{lo}:{hi}");
        }
    }
}
