//! Identities. Each type says what it names, so a uid can never be passed where a modseq is meant.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::checked_str;

use crate::names::NameError;

/// A node's configured name, `[a-z0-9-]{1,63}`. It is also the name in the node's TLS
/// certificate, so a peer is identified by the same string everywhere.
///
/// Shared, not copied: every Version and record names its node, and merges clone them by the
/// thousand, so a clone is a reference count, and encoding one writes the string in place.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub const MAX_LEN: usize = 63;

    pub fn new(name: impl AsRef<str>) -> Result<Self, NameError> {
        let name = name.as_ref();
        // A name this thread made lately was checked then: the common case, a record's names.
        if let Some(known) = recent_name(name) {
            return Ok(NodeId(known));
        }
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(NameError::NodeId {
                name: name.to_string(),
                reason: "must be 1 to 63 characters",
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(NameError::NodeId {
                name: name.to_string(),
                reason: "may contain only a-z, 0-9 and '-'",
            });
        }
        Ok(NodeId(remembered(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// 16 bits derived from the name, stamped into the low bits of every modseq this node mints.
    /// Two nodes may share a tag (a hash collision); that only costs a client a full resync it
    /// could have skipped, never a wrong answer, because a foreign tag always forces the resync.
    pub fn modseq_tag(&self) -> u16 {
        let hash = blake3::hash(self.0.as_bytes());
        u16::from_le_bytes([hash.as_bytes()[0], hash.as_bytes()[1]])
    }
}

/// How many node names each thread keeps at hand: more than a cluster's peers and the names its
/// records carry, so a record's names are found here, not allocated.
const INTERNED_NAMES: usize = 16;

thread_local! {
    /// The node names this thread made last, most recent first.
    static RECENT_NAMES: std::cell::RefCell<Vec<Arc<str>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The shared copy of `name` this thread made lately, if it is among the last
/// [`INTERNED_NAMES`]. Every record read from the store or the wire names its nodes several
/// times over (its AppendId, each flag's version, its origin), always among the same few names:
/// decoding 1,000 flag changes allocated and freed some 6,000 copies of two names. Only which
/// allocation holds the name depends on the cache, never the value.
fn recent_name(name: &str) -> Option<Arc<str>> {
    RECENT_NAMES.with(|recent| {
        let mut recent = recent.borrow_mut();
        let at = recent.iter().position(|n| **n == *name)?;
        let found = recent[at].clone();
        if at > 0 {
            // The most used stay in front, where the search starts.
            recent.swap(at, at - 1);
        }
        Some(found)
    })
}

/// A new shared copy of `name`, a checked node name, kept as the most recent.
fn remembered(name: &str) -> Arc<str> {
    RECENT_NAMES.with(|recent| {
        let mut recent = recent.borrow_mut();
        let made: Arc<str> = name.into();
        if recent.len() == INTERNED_NAMES {
            recent.pop();
        }
        recent.insert(0, made.clone());
        made
    })
}

impl TryFrom<String> for NodeId {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        NodeId::new(value)
    }
}

impl From<NodeId> for String {
    fn from(value: NodeId) -> Self {
        value.0.to_string()
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a node name", |s: &str| NodeId::new(s))
    }
}

impl FromStr for NodeId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// A mailbox's identity for its whole life: 128 random bits drawn at creation, kept across
/// renames and moves between users (RFC 8474 MAILBOXID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MailboxId(pub u128);

impl MailboxId {
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MailboxId(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxId({:032x})", self.0)
    }
}

impl FromStr for MailboxId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(MailboxId)
    }
}

/// IMAP UIDVALIDITY. A mailbox id keeps one uidvalidity for its life; a name re-created after a
/// delete gets a new id and a new uidvalidity, so clients drop their caches.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct UidValidity(pub u32);

impl fmt::Display for UidValidity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// IMAP UID within one uidvalidity. Zero is never a valid uid.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Uid(pub u32);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One message's identity for its whole life, across UID promotion: the node that accepted the
/// append and that node's append counter. Two appends of the same bytes are two messages.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppendId {
    pub origin: NodeId,
    pub counter: u64,
}

impl AppendId {
    /// Order-preserving key bytes: the origin name, a zero byte, then the counter big-endian (node
    /// names never contain a zero byte). Storage keys end with these, so the records of one
    /// mailbox sort on disk in the same order as `AppendId`'s `Ord`.
    pub fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.origin.as_str().len());
        out.extend_from_slice(self.origin.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(&self.counter.to_be_bytes());
        out
    }

    pub fn from_key_bytes(bytes: &[u8]) -> Option<Self> {
        let zero = bytes.iter().position(|&b| b == 0)?;
        let origin = NodeId::new(std::str::from_utf8(&bytes[..zero]).ok()?).ok()?;
        let counter = u64::from_be_bytes(bytes.get(zero + 1..)?.try_into().ok()?);
        Some(AppendId { origin, counter })
    }
}

impl fmt::Display for AppendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.origin, self.counter)
    }
}

impl fmt::Debug for AppendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppendId({}-{})", self.origin, self.counter)
    }
}

/// Content hash (BLAKE3) of a raw message. Bodies are stored once per node, by Guid.
///
/// Encoded as one byte string (MessagePack `bin 8`, 34 bytes), not as an array of 32 numbers:
/// the array took 32 encoder and decoder calls per Guid, and every record, body part and
/// missing-bodies list carries Guids (a good part of decoding an initial sync's pages). The
/// array form, which stores written before protocol version 3 hold, is still read.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(pub [u8; 32]);

impl Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GuidVisitor;

        impl<'de> serde::de::Visitor<'de> for GuidVisitor {
            type Value = Guid;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte Guid")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Guid, E> {
                <[u8; 32]>::try_from(v)
                    .map(Guid)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Guid, A::Error> {
                let mut out = [0u8; 32];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(33, &self));
                }
                Ok(Guid(out))
            }
        }

        deserializer.deserialize_bytes(GuidVisitor)
    }
}

impl Guid {
    pub fn of(body: &[u8]) -> Self {
        Guid(*blake3::hash(body).as_bytes())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write of the whole hex string: a byte at a time through `write!` made listing
        // a thousand messages cost milliseconds of formatting.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&hex[..2 * self.0.len()]).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Guid({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// IMAP CONDSTORE modseq: per mailbox, per node. It grows whenever a record changes on this node,
/// whoever made the change, and is never replicated as-is: two nodes' modseqs are unrelated.
///
/// The low 16 bits carry the minting node's [`NodeId::modseq_tag`], so a CHANGEDSINCE value
/// minted on another node (a client that failed over) is recognised and answered with a full
/// resync instead of a wrong delta.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
pub struct ModSeq(pub u64);

impl ModSeq {
    pub const ZERO: ModSeq = ModSeq(0);
    const TAG_BITS: u32 = 16;

    pub fn new(counter: u64, tag: u16) -> Self {
        ModSeq((counter << Self::TAG_BITS) | tag as u64)
    }

    /// The per-mailbox counter part.
    pub fn counter(self) -> u64 {
        self.0 >> Self::TAG_BITS
    }

    pub fn tag(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// True when this value was minted by the node with `tag` (or is zero, which every node
    /// understands as "from the beginning").
    pub fn minted_by(self, tag: u16) -> bool {
        self.0 == 0 || self.tag() == tag
    }
}

impl fmt::Display for ModSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_shared_while_recent_and_always_equal() {
        let a = NodeId::new("n1").unwrap();
        let b = NodeId::new("n1").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "a recent name is shared, not made again");
        // More names than the cache holds push the first out: a new copy, the same value.
        for i in 0..2 * INTERNED_NAMES {
            assert_eq!(NodeId::new(format!("x{i}")).unwrap().as_str(), format!("x{i}"));
        }
        let c = NodeId::new("n1").unwrap();
        assert_eq!(c, a);
        assert_eq!(c.as_str(), "n1");
        assert!(NodeId::new("N1").is_err(), "checked as before");
    }

    #[test]
    fn guid_displays_as_lowercase_hex_of_every_byte() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0x0f);
        }
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Guid(bytes).to_string(), expected);
        assert_eq!(Guid([0xff; 32]).to_string(), "f".repeat(64));
    }

    #[test]
    fn node_ids_are_validated() {
        assert!(NodeId::new("node-1").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("Node").is_err());
        assert!(NodeId::new("a".repeat(64)).is_err());
        assert!(NodeId::new("a b").is_err());
    }

    #[test]
    fn append_id_key_bytes_round_trip() {
        let id = AppendId {
            origin: NodeId::new("n1").unwrap(),
            counter: 77,
        };
        assert_eq!(AppendId::from_key_bytes(&id.to_key_bytes()), Some(id));
        assert_eq!(AppendId::from_key_bytes(b"junk"), None);
    }

    #[test]
    fn modseq_carries_its_node() {
        let n = NodeId::new("alpha").unwrap();
        let m = ModSeq::new(5, n.modseq_tag());
        assert_eq!(m.counter(), 5);
        assert!(m.minted_by(n.modseq_tag()));
        assert!(ModSeq::new(6, n.modseq_tag()) > m);
        assert!(ModSeq::ZERO.minted_by(123));
    }
}
