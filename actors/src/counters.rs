//! The node-wide counters: the Lamport clock, the append counter, the last uidvalidity handed out.
//! Shared by the actors of one node (all on one thread; the mutex is never contended) and
//! persisted by the commit group with every commit, so a value handed out before a crash is never
//! handed out again for anything that was acknowledged.

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
}

impl NodeCounters {
    pub fn new(node: NodeId, state: CounterState) -> Self {
        NodeCounters(Arc::new(Mutex::new(Inner {
            clock: LamportClock::new(node, state.lamport),
            next_append: state.next_append,
            last_uidvalidity: state.last_uidvalidity,
            log_generation: state.log_generation,
            incarnation: state.incarnation,
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

    pub fn next_append_id(&self) -> AppendId {
        let mut inner = self.inner();
        inner.next_append += 1;
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

    /// This store's incarnation, minted from `fresh` the first time (a new or wiped store).
    pub fn incarnation(&self, fresh: impl FnOnce() -> u128) -> u128 {
        let mut inner = self.inner();
        if inner.incarnation == 0 {
            inner.incarnation = fresh().max(1);
        }
        inner.incarnation
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
        }
    }
}
