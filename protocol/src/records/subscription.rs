//! A user's subscriptions (IMAP SUBSCRIBE/LSUB).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::merge::{Lww, Merge};
use crate::version::Version;

/// Mailbox name -> subscribed, each a last-writer-wins bool. An unsubscribe stays as `false` so an
/// older subscribe cannot undo it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct UserSubscriptions {
    pub names: BTreeMap<String, Lww<bool>>,
}

impl UserSubscriptions {
    pub fn set(&mut self, name: &str, subscribed: bool, version: Version) -> bool {
        match self.names.get_mut(name) {
            Some(state) => {
                let was = state.value;
                state.set(subscribed, version) && was != subscribed
            }
            None => {
                self.names.insert(name.to_string(), Lww::new(subscribed, version));
                subscribed
            }
        }
    }

    pub fn subscribed(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .filter(|(_, s)| s.value)
            .map(|(n, _)| n.as_str())
    }
}

impl Merge for UserSubscriptions {
    fn merge(&self, other: &Self) -> Self {
        let mut names = self.names.clone();
        for (name, theirs) in &other.names {
            names
                .entry(name.clone())
                .and_modify(|ours| *ours = ours.merge(theirs))
                .or_insert_with(|| theirs.clone());
        }
        UserSubscriptions { names }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::version_at;

    fn v(counter: u64) -> Version {
        version_at(counter, "n1")
    }

    /// `set` answers whether the subscribed state changed (what a client is told and what is
    /// logged), and an unsubscribe stays against an older subscribe.
    #[test]
    fn set_says_whether_the_state_changed() {
        let mut s = UserSubscriptions::default();
        assert!(s.set("Lists", true, v(1)), "a new subscription");
        assert!(!s.set("Lists", true, v(2)), "subscribed again: no change");
        assert!(
            !s.set("Drafts", false, v(3)),
            "unsubscribing what was never subscribed"
        );
        assert!(s.set("Work", true, v(4)));
        assert_eq!(s.subscribed().collect::<Vec<_>>(), ["Lists", "Work"]);
        assert!(s.set("Lists", false, v(5)), "an unsubscribe");
        assert!(!s.set("Lists", true, v(4)), "an older subscribe does not undo it");
        assert_eq!(s.subscribed().collect::<Vec<_>>(), ["Work"]);
        assert!(s.set("Lists", true, v(6)));
        assert_eq!(s.subscribed().collect::<Vec<_>>(), ["Lists", "Work"]);
    }
}
