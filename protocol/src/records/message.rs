//! One message in one mailbox, keyed by its AppendId.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AppendId, Guid, Uid};
use crate::merge::{max_version, Lww, Merge};
use crate::names::Flag;
use crate::records::PrunedSet;
use crate::version::Version;

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MessageRecord {
    pub append_id: AppendId,
    /// The uid can change once, by UID promotion; the newest assignment wins.
    pub uid: Lww<Uid>,
    pub guid: Guid,
    pub size: u64,
    /// Seconds since the Unix epoch (IMAP INTERNALDATE).
    pub internaldate: i64,
    /// Every flag ever set on the message with its own version (per-flag modseq, from the seed):
    /// a cleared flag stays here as `false`, so a concurrent set on another node with an older
    /// version cannot bring it back, and two nodes changing different flags both win.
    pub flags: BTreeMap<Flag, Lww<bool>>,
    /// Sticky: once expunged, always expunged.
    pub expunged: Option<Version>,
}

impl MessageRecord {
    pub fn is_expunged(&self) -> bool {
        self.expunged.is_some()
    }

    pub fn has_flag(&self, flag: &Flag) -> bool {
        self.flags.get(flag).is_some_and(|f| f.value)
    }

    /// The flags currently set, in order.
    pub fn set_flags(&self) -> impl Iterator<Item = &Flag> {
        self.flags.iter().filter(|(_, f)| f.value).map(|(k, _)| k)
    }

    /// Sets or clears `flag` at `version`; returns whether it changed the record.
    ///
    /// Each flag is a last-writer-wins register (DESIGN.md: per-flag {set, Version}). A write
    /// that leaves the register's value as it is (setting a set flag) is no write. Clearing a
    /// flag never set here is one: it records `false` at `version`, so a set made elsewhere
    /// with an older version, arriving later, loses to it as it would to any later clear
    /// (engine bug 19; without it the older set came back).
    pub fn write_flag(&mut self, flag: Flag, set: bool, version: Version) -> bool {
        match self.flags.get_mut(&flag) {
            Some(state) => {
                let was = state.value;
                state.set(set, version) && was != set
            }
            None => {
                self.flags.insert(flag, Lww::new(set, version));
                true
            }
        }
    }

    /// The newest version anywhere in the record; the Lamport clock observes it.
    pub fn max_version(&self) -> &Version {
        let mut max = &self.uid.version;
        for f in self.flags.values() {
            max = max.max(&f.version);
        }
        if let Some(e) = &self.expunged {
            max = max.max(e);
        }
        max
    }

    /// 32 bytes that change whenever anything replicated in a live record changes. An expunged
    /// record counts only as its AppendId (see [`expunged_digest`]): nothing else of it matters
    /// any more, and a node that compacted it into its `PrunedSet` must sum to the same digest.
    pub fn digest(&self) -> [u8; 32] {
        if self.is_expunged() {
            return expunged_digest(&self.append_id);
        }
        let mut encoded = Vec::with_capacity(128 + 48 * self.flags.len());
        self.write_msgpack(&mut encoded, GuidAs::Numbers);
        *blake3::hash(&encoded).as_bytes()
    }

    /// The record's MessagePack encoding, struct fields in an array as rmp-serde writes them,
    /// written directly rather than through serde: every change to a record encodes it twice
    /// for the mailbox digest (old and new) and once for the store. The two differ only in the
    /// Guid ([`GuidAs`]); the digest's must keep its value across versions, as stores and peers
    /// keep summed digests, and the store's must stay what rmp-serde reads.
    pub fn write_msgpack(&self, out: &mut Vec<u8>, guid: GuidAs) {
        fn version(out: &mut Vec<u8>, v: &Version) -> Result<(), rmp::encode::ValueWriteError> {
            rmp::encode::write_array_len(out, 2)?;
            rmp::encode::write_uint(out, v.counter)?;
            rmp::encode::write_str(out, v.node.as_str())
        }
        let write = |out: &mut Vec<u8>| -> Result<(), rmp::encode::ValueWriteError> {
            use rmp::encode::{
                write_array_len, write_bin, write_bool, write_map_len, write_sint, write_str, write_uint,
            };
            write_array_len(out, 7)?;
            write_array_len(out, 2)?;
            write_str(out, self.append_id.origin.as_str())?;
            write_uint(out, self.append_id.counter)?;
            write_array_len(out, 2)?;
            write_uint(out, u64::from(self.uid.value.0))?;
            version(out, &self.uid.version)?;
            match guid {
                GuidAs::Numbers => {
                    write_array_len(out, 32)?;
                    write_bytes_as_numbers(out, &self.guid.0);
                }
                GuidAs::Bytes => write_bin(out, &self.guid.0)?,
            }
            write_uint(out, self.size)?;
            write_sint(out, self.internaldate)?;
            write_map_len(out, self.flags.len() as u32)?;
            for (flag, state) in &self.flags {
                write_str(out, flag.as_str())?;
                write_array_len(out, 2)?;
                write_bool(out, state.value).map_err(rmp::encode::ValueWriteError::InvalidMarkerWrite)?;
                version(out, &state.version)?;
            }
            match &self.expunged {
                Some(v) => version(out, v),
                None => rmp::encode::write_nil(out).map_err(rmp::encode::ValueWriteError::InvalidMarkerWrite),
            }
        };
        write(out).expect("writing to a Vec cannot fail");
    }
}

/// Bytes as MessagePack unsigned numbers, each as `write_uint` writes it: a positive fixint
/// below 128, else the uint8 marker and the byte. The digest hashes every Guid so, twice per
/// changed record (old and new); through `write_uint`, one call and width choice per byte, it
/// was an eighth of a replica's merge of 1,000 flag changes (26 of 228 samples).
fn write_bytes_as_numbers(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        if b < 0x80 {
            out.push(b);
        } else {
            out.extend_from_slice(&[0xcc, b]);
        }
    }
}

/// How [`MessageRecord::write_msgpack`] writes the Guid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidAs {
    /// An array of 32 numbers, as protocol version 2 wrote it: what the digest hashes.
    Numbers,
    /// MessagePack binary, as the Guid serializes today: what the store holds.
    Bytes,
}

impl Merge for MessageRecord {
    fn merge(&self, other: &Self) -> Self {
        // guid, size and internaldate are fixed at append; should two copies disagree (only
        // corruption does that) the smaller triple wins, to keep the merge commutative.
        let base =
            if (self.guid, self.size, self.internaldate) <= (other.guid, other.size, other.internaldate) {
                self
            } else {
                other
            };
        let mut flags = self.flags.clone();
        for (flag, theirs) in &other.flags {
            flags
                .entry(flag.clone())
                .and_modify(|ours| *ours = ours.merge(theirs))
                .or_insert_with(|| theirs.clone());
        }
        MessageRecord {
            append_id: self.append_id.clone().min(other.append_id.clone()),
            uid: self.uid.merge(&other.uid),
            guid: base.guid,
            size: base.size,
            internaldate: base.internaldate,
            flags,
            expunged: max_version(&self.expunged, &other.expunged),
        }
    }
}

/// The parts of a message record that change after the append: what a peer that already has the
/// record needs to merge a change. Leaving out the Guid, size and date keeps a flag change small
/// on the wire (a Guid alone is 32 bytes of randomness no compressor shrinks).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecordUpdate {
    pub append_id: AppendId,
    pub uid: Lww<Uid>,
    pub flags: BTreeMap<Flag, Lww<bool>>,
    pub expunged: Option<Version>,
}

impl MessageRecord {
    pub fn update(&self) -> RecordUpdate {
        RecordUpdate {
            append_id: self.append_id.clone(),
            uid: self.uid.clone(),
            flags: self.flags.clone(),
            expunged: self.expunged.clone(),
        }
    }

    /// The update of this record, taking its parts rather than copying them (a sender's plan
    /// reads each record only to turn it into its update).
    pub fn into_update(self) -> RecordUpdate {
        RecordUpdate {
            append_id: self.append_id,
            uid: self.uid,
            flags: self.flags,
            expunged: self.expunged,
        }
    }

    /// The record `update` describes, on top of the fixed parts of `self` (the same message).
    pub fn updated_by(&self, update: &RecordUpdate) -> MessageRecord {
        self.updated_by_owned(update.clone())
    }

    /// [`MessageRecord::updated_by`], taking the update's parts rather than copying them.
    pub fn updated_by_owned(&self, update: RecordUpdate) -> MessageRecord {
        MessageRecord {
            append_id: update.append_id,
            uid: update.uid,
            guid: self.guid,
            size: self.size,
            internaldate: self.internaldate,
            flags: update.flags,
            expunged: update.expunged,
        }
    }
}

/// The digest contribution of an expunged message, stored as a record or compacted away.
pub fn expunged_digest(aid: &AppendId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"expunged\0");
    hasher.update(&aid.to_key_bytes());
    *hasher.finalize().as_bytes()
}

/// A cheap, order-independent summary of a mailbox's records: their count and the XOR of their
/// digests. It is maintained incrementally (XOR out the old record, XOR in the new) and carried in
/// sync answers, so two replicas that silently diverged notice and fall back to a full sync.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct MailboxDigest {
    pub records: u64,
    pub xor: [u8; 32],
}

impl MailboxDigest {
    pub fn add(&mut self, record: &MessageRecord) {
        self.records += 1;
        self.toggle(&record.digest());
    }

    pub fn remove(&mut self, record: &MessageRecord) {
        self.records = self.records.saturating_sub(1);
        self.toggle(&record.digest());
    }

    /// Replaces `old` by `new` in the summary.
    pub fn replace(&mut self, old: &MessageRecord, new: &MessageRecord) {
        self.toggle(&old.digest());
        self.toggle(&new.digest());
    }

    /// Counts an expunged message a node learns of only as a compacted AppendId.
    pub fn add_pruned(&mut self, aid: &AppendId) {
        self.records += 1;
        self.toggle(&expunged_digest(aid));
    }

    /// Counts every message of a compacted set (a copy's whole set, counted from nothing).
    pub fn add_pruned_set(&mut self, pruned: &PrunedSet) {
        for aid in pruned.iter() {
            self.add_pruned(&aid);
        }
    }

    fn toggle(&mut self, digest: &[u8; 32]) {
        for (x, d) in self.xor.iter_mut().zip(digest) {
            *x ^= d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::version::version_at as v;

    fn record() -> MessageRecord {
        MessageRecord {
            append_id: AppendId {
                origin: NodeId::new("n1").unwrap(),
                counter: 1,
            },
            uid: Lww::new(Uid(1), v(1, "n1")),
            guid: Guid::of(b"hello"),
            size: 5,
            internaldate: 0,
            flags: BTreeMap::new(),
            expunged: None,
        }
    }

    #[test]
    fn different_flags_changed_concurrently_both_survive() {
        let mut base = record();
        base.write_flag(Flag::new("\\Flagged").unwrap(), true, v(2, "n1"));
        let mut a = base.clone();
        let mut b = base.clone();
        a.write_flag(Flag::seen(), true, v(3, "n1"));
        b.write_flag(Flag::new("\\Flagged").unwrap(), false, v(3, "n2"));
        let m = a.merge(&b);
        assert!(m.has_flag(&Flag::seen()));
        assert!(!m.has_flag(&Flag::new("\\Flagged").unwrap()));
        assert_eq!(m, b.merge(&a));
    }

    #[test]
    fn bytes_as_numbers_are_what_write_uint_writes() {
        let every: Vec<u8> = (0..=255).collect();
        let mut fast = Vec::new();
        write_bytes_as_numbers(&mut fast, &every);
        let mut generic = Vec::new();
        for b in &every {
            rmp::encode::write_uint(&mut generic, u64::from(*b)).unwrap();
        }
        assert_eq!(fast, generic);
    }

    #[test]
    fn digest_is_order_independent_and_tracks_changes() {
        let a = record();
        let mut b = record();
        b.append_id.counter = 2;
        let mut d1 = MailboxDigest::default();
        d1.add(&a);
        d1.add(&b);
        let mut d2 = MailboxDigest::default();
        d2.add(&b);
        d2.add(&a);
        assert_eq!(d1, d2);
        let mut b2 = b.clone();
        b2.write_flag(Flag::seen(), true, v(9, "n1"));
        d2.replace(&b, &b2);
        assert_ne!(d1, d2);
        d2.replace(&b2, &b);
        assert_eq!(d1, d2);
    }

    /// What `write_flag` answers is what the Mailbox records as a change (and sends on): a write
    /// that leaves the flag as it is, is none; clearing a flag never set is one (bug 19).
    #[test]
    fn write_flag_says_whether_the_record_changed() {
        let mut r = record();
        assert!(
            r.write_flag(Flag::seen(), true, v(2, "n1")),
            "setting an unset flag"
        );
        assert!(!r.write_flag(Flag::seen(), true, v(3, "n1")), "setting it again");
        assert!(r.write_flag(Flag::seen(), false, v(4, "n1")), "clearing it");
        assert!(
            !r.write_flag(Flag::seen(), true, v(1, "n2")),
            "an older set loses"
        );
        assert!(
            r.write_flag(Flag::new("\\Flagged").unwrap(), false, v(5, "n1")),
            "clearing a never-set flag"
        );
        let set: Vec<&Flag> = r.set_flags().collect();
        assert!(set.is_empty(), "{set:?}");
        r.write_flag(Flag::new("\\Flagged").unwrap(), true, v(6, "n1"));
        assert_eq!(
            r.set_flags().collect::<Vec<_>>(),
            vec![&Flag::new("\\Flagged").unwrap()]
        );
    }

    /// Two copies disagreeing on what never changes after append (only corruption does that):
    /// the smaller (guid, size, internaldate) wins on both sides.
    #[test]
    fn disagreeing_append_fields_resolve_to_the_smaller_triple() {
        let a = record();
        let mut b = record();
        b.size = 99;
        assert_eq!(a.merge(&b).size, 5);
        assert_eq!(b.merge(&a).size, 5);
    }

    /// The digest counts records and tells sets apart: an expunged record counts as its
    /// AppendId alone, exactly as a compacted one does, so a node that compacted and one that did
    /// not agree.
    #[test]
    fn digest_counts_and_an_expunged_record_equals_its_compacted_id() {
        let live = record();
        let mut gone = record();
        gone.append_id.counter = 2;
        gone.expunged = Some(v(4, "n1"));
        let mut holding = MailboxDigest::default();
        holding.add(&live);
        holding.add(&gone);
        assert_eq!(holding.records, 2);
        let mut compacted = MailboxDigest::default();
        compacted.add(&live);
        compacted.add_pruned(&gone.append_id);
        assert_eq!(holding, compacted);
        assert_ne!(holding.xor, [0; 32]);
        // Another expunged message is another digest.
        assert_ne!(expunged_digest(&gone.append_id), expunged_digest(&live.append_id));
        assert_ne!(expunged_digest(&gone.append_id), live.digest());
        holding.remove(&gone);
        assert_eq!(holding.records, 1);
        let mut only_live = MailboxDigest::default();
        only_live.add(&live);
        assert_eq!(holding, only_live);
        holding.remove(&live);
        assert_eq!(holding, MailboxDigest::default());
    }
}
