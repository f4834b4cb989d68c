//! Mailbox annotations (RFC 5464 METADATA), with versions (seed item a: modseq on annotations).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::merge::{Lww, Merge};
use crate::version::Version;

/// One annotation entry's value. `None` is a delete tombstone: it outlives the value so that an
/// older concurrent write cannot bring the entry back.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Annotation(pub Lww<Option<ByteBuf>>);

impl Annotation {
    pub fn new(value: Option<Vec<u8>>, version: Version) -> Self {
        Annotation(Lww::new(value.map(ByteBuf::from), version))
    }

    pub fn value(&self) -> Option<&[u8]> {
        self.0.value.as_ref().map(|b| b.as_slice())
    }

    pub fn version(&self) -> &Version {
        &self.0.version
    }

    pub fn is_tombstone(&self) -> bool {
        self.0.value.is_none()
    }
}

impl Merge for Annotation {
    fn merge(&self, other: &Self) -> Self {
        Annotation(self.0.merge(&other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::version_at;

    fn v(counter: u64) -> Version {
        version_at(counter, "n1")
    }

    #[test]
    fn a_value_reads_back_and_a_delete_is_a_tombstone() {
        let set = Annotation::new(Some(b"red".to_vec()), v(1));
        assert_eq!(set.value(), Some(&b"red"[..]));
        assert!(!set.is_tombstone());
        let empty = Annotation::new(Some(Vec::new()), v(2));
        assert_eq!(
            empty.value(),
            Some(&b""[..]),
            "an empty value is a value, not a delete"
        );
        assert!(!empty.is_tombstone());
        let deleted = Annotation::new(None, v(3));
        assert_eq!(deleted.value(), None);
        assert!(deleted.is_tombstone());
        assert_eq!(
            set.merge(&deleted),
            deleted,
            "the later delete wins and stays as a tombstone"
        );
    }
}
