//! A Mailbox's copy in memory of the shown rows of its uid index (`store::uid_row`): uid,
//! modseq and flags of each message a client sees, in uid order, 16 bytes a message (a message
//! with keywords also keeps its keywords apart).
//!
//! A SELECT lists the uids and then FETCH FLAGS and SEARCH over flags read the same rows again,
//! each a redb scan of a row per message (100,000 rows: most of each command's time). The
//! Mailbox keeps the copy made by its last listing, with when it was read (`Listed` in
//! mailbox.rs), and answers from it while no commit of the mailbox has come since; it is never
//! changed, only replaced by the next listing, so it says what the committed index said.

use mailmesh_protocol::ids::{ModSeq, Uid};

use crate::flag_set::FlagSet;
use crate::mailbox::MessageFlags;
use crate::store::uid_row::IndexedFlags;

/// The shown rows, in the order of the index (uid, then AppendId).
#[derive(Debug, Default)]
pub struct ShownIndex {
    rows: Vec<Row>,
    /// The flags of the rows with keywords (shared with the answers made from them: a keyword
    /// list is not copied per answer).
    with_keywords: Vec<FlagSet>,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    modseq: u64,
    uid: u32,
    /// The system flags' bits (`SYSTEM_BITS`) in the low byte; above them, 0 or one more than
    /// the row's place in `with_keywords`.
    flags: u32,
}

impl Row {
    fn system(self) -> u8 {
        self.flags as u8
    }

    fn with_keywords(self) -> Option<usize> {
        (self.flags >> 8).checked_sub(1).map(|at| at as usize)
    }
}

impl ShownIndex {
    /// Adds a full row's message (rows come in index order).
    pub fn push_row(&mut self, uid: Uid, row: &IndexedFlags<'_>) {
        self.push(uid, row.modseq, row.flag_set());
    }

    /// Adds a message whose flags were read from its record, at place `at` among those added
    /// so far (a row from before the index held flags, read after the scan).
    pub fn insert_message(&mut self, at: usize, message: MessageFlags) {
        self.push(message.uid, message.modseq, message.flags);
        let row = self.rows.pop().expect("just pushed");
        self.rows.insert(at, row);
    }

    fn push(&mut self, uid: Uid, modseq: ModSeq, flags: FlagSet) {
        let mut bits = u32::from(flags.system);
        if !flags.keywords().is_empty() {
            self.with_keywords.push(flags);
            bits |= (self.with_keywords.len() as u32) << 8;
        }
        self.rows.push(Row {
            modseq: modseq.0,
            uid: uid.0,
            flags: bits,
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
    /// each: a message without keywords is its bits, no list built for it.
    pub fn flags_in(&self, lo: u32, hi: u32) -> impl ExactSizeIterator<Item = MessageFlags> + '_ {
        // Both ends found first: an iterator of known length, which `extend` fills without
        // growing its vector step by step (that growth was a fifth of a SEARCH UNSEEN).
        let start = self.rows.partition_point(|row| row.uid < lo);
        let end = self.rows.partition_point(|row| row.uid <= hi).max(start);
        self.rows[start..end].iter().map(|row| MessageFlags {
            uid: Uid(row.uid),
            modseq: ModSeq(row.modseq),
            flags: match row.with_keywords() {
                Some(at) => self.with_keywords[at].clone(),
                None => FlagSet::system(row.system()),
            },
        })
    }
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
