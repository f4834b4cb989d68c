//! The join every replicated record implements, and the last-writer-wins register.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// A state-based CRDT join. Implementations must be commutative, associative and idempotent
/// (`a.merge(b) == b.merge(a)`, `a.merge(b.merge(c)) == a.merge(b).merge(c)`,
/// `a.merge(a) == a`); `tests/merge_laws.rs` checks this for every record type.
pub trait Merge: Sized + Clone + PartialEq {
    fn merge(&self, other: &Self) -> Self;

    /// Merges `incoming` into `self` and says what happened. Replication needs the distinction:
    /// a merge where the incoming state won whole may skip the channel it came from (echo
    /// suppression), a merge that combined both sides is news to everyone.
    fn merge_from(&mut self, incoming: &Self) -> MergeEffect {
        let merged = self.merge(incoming);
        let effect = if merged == *self {
            MergeEffect::Unchanged
        } else if merged == *incoming {
            MergeEffect::TookIncoming
        } else {
            MergeEffect::Combined
        };
        *self = merged;
        effect
    }

    /// The merge of `self` and `incoming` with what it did to `self`, leaving `self` as it
    /// was: what [`Merge::merge_from`] does to a copy, without making the copy first.
    fn merged_with(&self, incoming: &Self) -> (Self, MergeEffect) {
        let merged = self.merge(incoming);
        let effect = if merged == *self {
            MergeEffect::Unchanged
        } else if merged == *incoming {
            MergeEffect::TookIncoming
        } else {
            MergeEffect::Combined
        };
        (merged, effect)
    }
}

/// What [`Merge::merge_from`] did to the local state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MergeEffect {
    /// The local state already contained the incoming one: nothing to store or forward.
    Unchanged,
    /// The local state is now exactly the incoming one.
    TookIncoming,
    /// The result differs from both sides: it is new to every peer, the sender included.
    Combined,
}

impl MergeEffect {
    pub fn changed(self) -> bool {
        self != MergeEffect::Unchanged
    }
}

/// A last-writer-wins register: the value written with the greatest [`Version`] wins. Versions
/// are unique per write, so equal versions mean the same write; should two differ anyway
/// (corruption), the greater value wins so the merge stays commutative.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Lww<T> {
    pub value: T,
    pub version: Version,
}

impl<T> Lww<T> {
    pub fn new(value: T, version: Version) -> Self {
        Lww { value, version }
    }

    /// Writes `value` at `version` if that version is newer; returns whether it took effect.
    pub fn set(&mut self, value: T, version: Version) -> bool {
        if version > self.version {
            self.value = value;
            self.version = version;
            true
        } else {
            false
        }
    }
}

impl<T: Clone + Ord> Merge for Lww<T> {
    fn merge(&self, other: &Self) -> Self {
        match self.version.cmp(&other.version) {
            std::cmp::Ordering::Greater => self.clone(),
            std::cmp::Ordering::Less => other.clone(),
            std::cmp::Ordering::Equal => {
                if self.value >= other.value {
                    self.clone()
                } else {
                    other.clone()
                }
            }
        }
    }
}

/// Merges two optional states: absent is the bottom element.
pub fn merge_option<T: Merge>(a: &Option<T>, b: &Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (Some(a), None) => Some(a.clone()),
        (None, Some(b)) => Some(b.clone()),
        (None, None) => None,
    }
}

/// The greater of two optional versions (absent is the bottom element).
pub fn max_version(a: &Option<Version>, b: &Option<Version>) -> Option<Version> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b).clone()),
        (Some(v), None) | (None, Some(v)) => Some(v.clone()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::version_at as v;

    /// A write seen again (the same version) changes nothing, whatever value it carries: a set
    /// that took it would make the register depend on the order writes arrive in, which `merge`
    /// never does.
    #[test]
    fn set_takes_only_a_newer_version() {
        let mut r = Lww::new(1, v(5, "a"));
        assert!(!r.set(2, v(5, "a")), "the same version again");
        assert_eq!(r, Lww::new(1, v(5, "a")));
        assert!(!r.set(3, v(4, "b")), "an older version");
        assert!(
            r.set(4, v(5, "b")),
            "a newer version (same counter, greater node)"
        );
        assert_eq!(r, Lww::new(4, v(5, "b")));
    }
}
