//! The node-wide counters: the Lamport clock, the append counter, the last uidvalidity handed out.
//! Shared by the actors of one node (all on one thread; the mutex is never contended) and
//! persisted by the commit group with every commit, so a value handed out before a crash is never
//! handed out again for anything that was acknowledged.
//!
//! A store can also be lost (a wiped disk, a node replaced under the same name) or rolled back (a
//! restored backup); its counters go with it. So that the node never mints an AppendId or Version
//! it minted before (DESIGN.md, "Identity"), both counters start at least at a floor read from the
//! wall clock at every start: the milliseconds since the epoch times 2^20
//! ([`identity_floor`]). A counter of an earlier incarnation of the store is below that floor
//! unless the node minted more than 2^20 (about a million) identities per millisecond on average
//! since it last started, or the wall clock went back. As a second line, a node that finds one of
//! its own AppendIds or Versions among its peers' records moves its counters past it (the
//! Lamport clock observes every version it merges; [`NodeCounters::observe_append_id`]).
//! ARCHITECTURE.md ("Identities across store incarnations") says why this and not waiting for
//! the peers.

use std::sync::{Arc, Mutex};

use mailmesh_protocol::ids::{AppendId, NodeId, UidValidity};
use mailmesh_protocol::version::{LamportClock, Version};

use crate::store::CounterState;

#[derive(Clone, Debug)]
pub struct NodeCounters(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    clock: LamportClock,
    next_append: u64,
    last_uidvalidity: u32,
    log_generation: u64,
    incarnation: u128,
    incarnation_floor: u64,
    appended: u64,
}

impl NodeCounters {
    pub fn new(node: NodeId, state: CounterState) -> Self {
        NodeCounters(Arc::new(Mutex::new(Inner {
            clock: LamportClock::new(node, state.lamport),
            next_append: state.next_append,
            last_uidvalidity: state.last_uidvalidity,
            log_generation: state.log_generation,
            incarnation: state.incarnation,
            incarnation_floor: state.incarnation_floor,
            appended: state.appended,
        })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("counters lock")
    }

    pub fn node(&self) -> NodeId {
        self.inner().clock.node().clone()
    }

    pub fn tick(&self) -> Version {
        self.inner().clock.tick()
    }

    pub fn observe(&self, seen: &Version) {
        self.inner().clock.observe(seen)
    }

    /// Raises the append counter and the Lamport clock to the wall-clock floor (see the module
    /// documentation); never lowers them.
    pub fn raise_to_clock(&self, unix_millis: i64) {
        self.raise_to(identity_floor(unix_millis));
    }

    fn raise_to(&self, floor: u64) {
        let mut inner = self.inner();
        inner.next_append = inner.next_append.max(floor);
        let node = inner.clock.node().clone();
        inner.clock.observe(&Version { counter: floor, node });
    }

    /// Moves the append counter past one of this node's own AppendIds found among a peer's
    /// records (minted by an earlier incarnation of this store).
    pub fn observe_append_id(&self, aid: &AppendId) {
        let mut inner = self.inner();
        if aid.origin == *inner.clock.node() {
            inner.next_append = inner.next_append.max(aid.counter);
        }
    }

    pub fn next_append_id(&self) -> AppendId {
        let mut inner = self.inner();
        inner.next_append += 1;
        inner.appended += 1;
        AppendId {
            origin: inner.clock.node().clone(),
            counter: inner.next_append,
        }
    }

    /// A uidvalidity for a new mailbox: the current time in seconds (the traditional choice, so
    /// values keep growing across restarts and nodes), but always above the last one this node
    /// handed out and above `above` (the uidvalidity of a deleted mailbox of the same name), as
    /// RFC 3501 requires of a re-created name.
    pub fn next_uidvalidity(&self, now_secs: i64, above: u32) -> UidValidity {
        let mut inner = self.inner();
        let now = now_secs.clamp(1, u32::MAX as i64) as u32;
        let next = now
            .max(inner.last_uidvalidity.saturating_add(1))
            .max(above.saturating_add(1));
        inner.last_uidvalidity = next;
        UidValidity(next)
    }

    /// Moves the uidvalidity high-water mark past one seen on a peer's mailbox, so a name
    /// re-created here gets a higher one.
    pub fn observe_uidvalidity(&self, seen: UidValidity) {
        let mut inner = self.inner();
        inner.last_uidvalidity = inner.last_uidvalidity.max(seen.0);
    }

    /// Starts the counters of a node whose identity floor is `floor` ([`identity_floor`] of the
    /// wall clock now): mints the store's incarnation from `fresh` if it has none yet (a new or
    /// wiped store), with `floor` as the incarnation's floor, then raises the counters to it.
    pub fn start(&self, fresh: impl FnOnce() -> u128, floor: u64) {
        {
            let mut inner = self.inner();
            if inner.incarnation == 0 {
                inner.incarnation = fresh().max(1);
                inner.incarnation_floor = floor;
            }
        }
        self.raise_to(floor);
    }

    /// This store's incarnation (minted by [`NodeCounters::start`]).
    pub fn incarnation(&self) -> u128 {
        let inner = self.inner();
        assert_ne!(inner.incarnation, 0, "the incarnation is minted at start");
        inner.incarnation
    }

    /// The lowest Version counter this store incarnation mints: every Version it made is at or
    /// above it, and (by the identity floor) every Version an earlier incarnation of the store
    /// made is below it. Peers learn it in Hello; echo suppression skips a change's origin only
    /// for a change at or above it (engine bug 20, ARCHITECTURE.md "Identities across store
    /// incarnations").
    pub fn incarnation_floor(&self) -> u64 {
        self.inner().incarnation_floor
    }

    /// A fresh sync log row generation.
    pub fn next_log_generation(&self) -> u64 {
        let mut inner = self.inner();
        inner.log_generation += 1;
        inner.log_generation
    }

    pub fn snapshot(&self) -> CounterState {
        let inner = self.inner();
        CounterState {
            lamport: inner.clock.counter(),
            next_append: inner.next_append,
            last_uidvalidity: inner.last_uidvalidity,
            log_generation: inner.log_generation,
            incarnation: inner.incarnation,
            incarnation_floor: inner.incarnation_floor,
            appended: inner.appended,
        }
    }
}

/// Bits of counter below the wall-clock milliseconds in [`identity_floor`].
const IDENTITY_FLOOR_SHIFT: u32 = 20;

/// The lowest append counter and Lamport counter a node starting at `unix_millis` hands out.
/// Good until the year 2527.
pub fn identity_floor(unix_millis: i64) -> u64 {
    (unix_millis.max(0) as u64) << IDENTITY_FLOOR_SHIFT
}

/// The lowest modseq counter of a mailbox's first change on this node, from the wall clock at that
/// moment: modseqs of a replica made after a wipe are above those of the lost one (a client's
/// cached CHANGEDSINCE point or a stale replication cache then asks for too much, never too
/// little), unless the lost replica changed more than 64 times per millisecond on average.
/// Fits the 48 counter bits of a [`mailmesh_protocol::ids::ModSeq`] until the year 2109, but a
/// whole ModSeq (counter and 16-bit tag) shown to IMAP clients must stay under 2^63 (RFC 7162's
/// mod-sequence-value), which a floor from this clock passes in September 2039: before then the
/// shift must shrink (a floor may only go down for mailboxes made after the change; one taken
/// at a wipe must stay above what the lost replica minted).
pub fn modseq_floor(unix_millis: i64) -> u64 {
    (unix_millis.max(0) as u64) << 6
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailmesh_protocol::ids::NodeId;

    #[test]
    fn a_later_start_mints_above_everything_an_earlier_one_minted() {
        let node = NodeId::new("a").unwrap();
        let first = NodeCounters::new(node.clone(), CounterState::default());
        first.raise_to_clock(1_700_000_000_000);
        let mut last = (0, 0);
        for _ in 0..10_000 {
            last = (first.next_append_id().counter, first.tick().counter);
        }
        // The store is lost; the node starts again a millisecond later with nothing.
        let second = NodeCounters::new(node.clone(), CounterState::default());
        second.raise_to_clock(1_700_000_000_001);
        assert!(second.next_append_id().counter > last.0);
        assert!(second.tick().counter > last.1);
        // A restart never lowers what a store already holds.
        let restarted = NodeCounters::new(node.clone(), first.snapshot());
        restarted.raise_to_clock(1_600_000_000_000);
        assert!(restarted.next_append_id().counter > last.0);
    }

    #[test]
    fn an_own_append_id_seen_at_a_peer_moves_the_counter_past_it() {
        let node = NodeId::new("a").unwrap();
        let counters = NodeCounters::new(node.clone(), CounterState::default());
        let other = AppendId {
            origin: NodeId::new("b").unwrap(),
            counter: 500,
        };
        counters.observe_append_id(&other);
        assert_eq!(counters.next_append_id().counter, 1);
        counters.observe_append_id(&AppendId {
            origin: node,
            counter: 500,
        });
        assert_eq!(counters.next_append_id().counter, 501);
    }
}
