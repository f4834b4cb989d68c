//! The messages of one mailbox that a move to another mailbox is taking.
//!
//! A move between two mailboxes runs in steps, each holding one mailbox (see `Transfer`), so the
//! source is not held while the target inserts the copies. Meanwhile another move from the same
//! source must not copy the same message again: two clients moving one message to two mailboxes
//! would leave two copies for good. The first step claims the messages here; a claim ends when
//! its [`Claim`] is dropped (the move finished, failed, or its actor stopped).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use mailmesh_protocol::ids::AppendId;

/// The claimed messages of one Mailbox actor (single-threaded, like the actor).
#[derive(Debug, Default)]
pub(crate) struct Moving(Rc<RefCell<BTreeSet<AppendId>>>);

/// The messages one move claimed; dropping it releases them.
#[derive(Debug)]
pub(crate) struct Claim {
    set: Rc<RefCell<BTreeSet<AppendId>>>,
    held: BTreeSet<AppendId>,
}

impl Moving {
    /// Claims those of `wanted` that no other move holds.
    pub(crate) fn claim<'a>(&self, wanted: impl IntoIterator<Item = &'a AppendId>) -> Claim {
        let mut set = self.0.borrow_mut();
        let held = wanted
            .into_iter()
            .filter(|aid| set.insert((*aid).clone()))
            .cloned()
            .collect();
        Claim {
            set: self.0.clone(),
            held,
        }
    }

    pub(crate) fn is_claimed(&self, aid: &AppendId) -> bool {
        self.0.borrow().contains(aid)
    }
}

impl Claim {
    pub(crate) fn holds(&self, aid: &AppendId) -> bool {
        self.held.contains(aid)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = self.set.borrow_mut();
        for aid in &self.held {
            set.remove(aid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailmesh_protocol::ids::NodeId;

    fn aid(counter: u64) -> AppendId {
        AppendId {
            origin: NodeId::new("a").unwrap(),
            counter,
        }
    }

    #[test]
    fn a_claimed_message_is_not_claimed_twice_until_released() {
        let moving = Moving::default();
        let first = moving.claim(&[aid(1), aid(2)]);
        let second = moving.claim(&[aid(2), aid(3)]);
        assert!(first.holds(&aid(2)) && !second.holds(&aid(2)));
        assert!(second.holds(&aid(3)));
        drop(first);
        assert!(!moving.is_claimed(&aid(1)) && !moving.is_claimed(&aid(2)));
        assert!(moving.is_claimed(&aid(3)), "the second claim still holds its own");
        let third = moving.claim(&[aid(2)]);
        assert!(third.holds(&aid(2)));
    }
}
