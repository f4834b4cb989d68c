//! A session's message sequence numbers (RFC 3501 2.3.1.2): the uids of the selected mailbox
//! as this session has been told of them, in order. Message `n` is the `n`-th uid. The map is
//! a sorted `Vec<u32>` (4 bytes a message: 400 KB for 100,000 messages), never the records.
//!
//! It changes only where the session tells the client: an untagged EXISTS adds uids at the end
//! ([`SequenceMap::push`]), an untagged EXPUNGE removes one ([`SequenceMap::remove_all`] gives
//! the sequence numbers to announce, each relative to the numbering after the ones before it).

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequenceMap {
    uids: Vec<u32>,
}

/// A message set the client named that cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetError {
    /// A sequence number above the number of messages (RFC 3501 9, `seq-number`: invalid).
    OutOfRange { seq: u32, exists: u32 },
    /// `*` as a sequence number in an empty mailbox.
    Empty,
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetError::OutOfRange { seq, exists } => write!(
                f,
                "message sequence number {seq} out of range (the mailbox has {exists} messages)"
            ),
            SetError::Empty => f.write_str("no message to name: the mailbox is empty"),
        }
    }
}

impl SequenceMap {
    /// The map of a mailbox whose visible uids are `uids` (any order; duplicates dropped).
    pub fn new(mut uids: Vec<u32>) -> SequenceMap {
        uids.sort_unstable();
        uids.dedup();
        uids.shrink_to_fit();
        SequenceMap { uids }
    }

    pub fn len(&self) -> u32 {
        self.uids.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.uids.is_empty()
    }

    /// The highest uid the session knows (0: none).
    pub fn last_uid(&self) -> u32 {
        self.uids.last().copied().unwrap_or(0)
    }

    /// The sequence number of `uid`, if the session knows it.
    pub fn seq(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    pub fn uids(&self) -> &[u32] {
        &self.uids
    }

    /// Numbers uids asked in ascending order (a FETCH or SEARCH walking its messages): each
    /// lookup starts where the last one ended, so a run of neighbours costs a comparison each
    /// instead of a binary search of the whole map (a sixth of a SEARCH over 100,000).
    pub fn numbering(&self) -> Numbering<'_> {
        Numbering {
            uids: &self.uids,
            next: 0,
        }
    }

    /// A new message at the end. A uid at or below the last one cannot take a sequence number
    /// without renumbering the messages after it, which RFC 3501 allows only through EXPUNGE:
    /// it is left out (false) and the session sees it at its next SELECT.
    pub fn push(&mut self, uid: u32) -> bool {
        if uid <= self.last_uid() {
            return false;
        }
        self.uids.push(uid);
        true
    }

    /// Removes the `gone` uids the map holds and answers the sequence numbers to announce, in
    /// the order to announce them: each untagged EXPUNGE renumbers the messages after it at once
    /// (RFC 3501 7.4.1), so the `i`-th removal (ascending) of the message at position `p` is
    /// announced as `p + 1 - i`.
    pub fn remove_all(&mut self, gone: &[u32]) -> Vec<u32> {
        let mut positions: Vec<usize> = gone
            .iter()
            .filter_map(|uid| self.uids.binary_search(uid).ok())
            .collect();
        positions.sort_unstable();
        positions.dedup();
        let announced = positions
            .iter()
            .enumerate()
            .map(|(i, p)| (p + 1 - i) as u32)
            .collect();
        let mut next = positions.iter().peekable();
        let mut index = 0;
        self.uids.retain(|_| {
            let keep = next.peek() != Some(&&index);
            if !keep {
                next.next();
            }
            index += 1;
            keep
        });
        announced
    }

    /// The uids a command's set names, ascending, each once. With `uid` the set holds uids:
    /// those the session does not know are ignored (RFC 3501 6.4.8), and `*` is the highest uid
    /// known (`n:*` always includes it). Without, it holds sequence numbers, each of which must
    /// exist.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<u32>, SetError> {
        let mut out = Vec::new();
        if uid {
            if self.is_empty() {
                return Ok(out);
            }
            let star = self.last_uid();
            for (lo, hi) in ranges(set, star) {
                let start = self.uids.partition_point(|&u| u < lo);
                let end = self.uids.partition_point(|&u| u <= hi);
                out.extend_from_slice(&self.uids[start..end]);
            }
        } else {
            let exists = self.len();
            for (lo, hi) in ranges(set, exists) {
                if lo == 0 {
                    return Err(SetError::Empty);
                }
                if hi > exists {
                    return Err(SetError::OutOfRange { seq: hi, exists });
                }
                out.extend_from_slice(&self.uids[lo as usize - 1..hi as usize]);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Sequence numbers of ascending uids ([`SequenceMap::numbering`]).
pub struct Numbering<'a> {
    uids: &'a [u32],
    /// Where the uid after the last one found would be.
    next: usize,
}

impl Numbering<'_> {
    /// The sequence number of `uid`, if the session knows it. A uid below the last one asked is
    /// looked up in the whole map (right, only slower).
    pub fn seq(&mut self, uid: u32) -> Option<u32> {
        if self.uids.get(self.next) != Some(&uid) {
            let rest = match self.next.checked_sub(1).and_then(|i| self.uids.get(i)) {
                Some(&before) if before < uid => self.next,
                _ => 0,
            };
            let rest = rest.min(self.uids.len());
            match self.uids[rest..].binary_search(&uid) {
                Ok(i) => self.next = rest + i,
                Err(i) => {
                    self.next = rest + i;
                    return None;
                }
            }
        }
        self.next += 1;
        Some(self.next as u32)
    }
}

/// The set's ranges with `*` as `star`, each low to high.
fn ranges(set: &SequenceSet, star: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
    let value = move |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => star,
    };
    set.0.as_ref().iter().map(move |sequence| match sequence {
        Sequence::Single(v) => (value(v), value(v)),
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            (a.min(b), a.max(b))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> SequenceSet {
        SequenceSet::try_from(text).unwrap()
    }

    #[test]
    fn sequence_numbers_follow_uid_order() {
        let map = SequenceMap::new(vec![9, 3, 4, 3, 20]);
        assert_eq!(map.uids(), &[3, 4, 9, 20]);
        assert_eq!(map.seq(9), Some(3));
        assert_eq!(map.seq(5), None);
        assert_eq!(map.seq(3), Some(1));
        assert_eq!(map.seq(20), Some(4));
    }

    #[test]
    fn a_numbering_answers_what_seq_does_in_any_order() {
        let map = SequenceMap::new(vec![3, 4, 9, 20, 21, 40]);
        let asked = [1, 3, 4, 5, 9, 20, 21, 22, 40, 41, 4, 3, 40, 2, 21, 9, 9, 0, 100];
        let mut numbering = map.numbering();
        for uid in asked {
            assert_eq!(numbering.seq(uid), map.seq(uid), "uid {uid}");
        }
        let empty = SequenceMap::default();
        assert_eq!(empty.numbering().seq(1), None);
    }

    #[test]
    fn sequence_sets_resolve_with_star_and_reversed_ranges() {
        let map = SequenceMap::new(vec![3, 4, 9, 20]);
        assert_eq!(map.resolve(&set("1:*"), false), Ok(vec![3, 4, 9, 20]));
        assert_eq!(map.resolve(&set("*"), false), Ok(vec![20]));
        assert_eq!(map.resolve(&set("3:2,1"), false), Ok(vec![3, 4, 9]));
        assert_eq!(map.resolve(&set("*:3"), false), Ok(vec![9, 20]));
        assert_eq!(
            map.resolve(&set("2:5"), false),
            Err(SetError::OutOfRange { seq: 5, exists: 4 })
        );
        assert_eq!(
            SequenceMap::default().resolve(&set("*"), false),
            Err(SetError::Empty)
        );
        assert_eq!(
            SequenceMap::default().resolve(&set("1"), false),
            Err(SetError::OutOfRange { seq: 1, exists: 0 })
        );
    }

    #[test]
    fn uid_sets_ignore_unknown_uids_and_star_is_the_last_uid() {
        let map = SequenceMap::new(vec![3, 4, 9, 20]);
        assert_eq!(map.resolve(&set("1:*"), true), Ok(vec![3, 4, 9, 20]));
        assert_eq!(map.resolve(&set("5:8"), true), Ok(vec![]));
        assert_eq!(map.resolve(&set("4,100"), true), Ok(vec![4]));
        // RFC 3501 6.4.8: `n:*` includes the last uid even when n is above it.
        assert_eq!(map.resolve(&set("500:*"), true), Ok(vec![20]));
        assert_eq!(SequenceMap::default().resolve(&set("1:*"), true), Ok(vec![]));
    }

    #[test]
    fn expunges_renumber_the_messages_after_them() {
        let mut map = SequenceMap::new(vec![3, 4, 9, 20, 21]);
        // Removing seqs 2, 3 and 5 (uids 4, 9, 21): announced as 2, 2 (old 3 moved to 2),
        // then 3 (old 5, after two removals).
        assert_eq!(map.remove_all(&[21, 4, 9, 77]), vec![2, 2, 3]);
        assert_eq!(map.uids(), &[3, 20]);
        assert_eq!(map.seq(20), Some(2));
        assert_eq!(map.remove_all(&[]), Vec::<u32>::new());
        assert_eq!(map.remove_all(&[3, 20]), vec![1, 1]);
        assert!(map.is_empty());
    }

    #[test]
    fn only_higher_uids_are_added() {
        let mut map = SequenceMap::new(vec![3, 4]);
        assert!(map.push(7));
        assert!(!map.push(5));
        assert!(!map.push(7));
        assert_eq!(map.uids(), &[3, 4, 7]);
        assert_eq!(map.len(), 3);
    }
}
