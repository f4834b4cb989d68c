//! Lamport versions: the one total order that every last-writer-wins choice uses.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// A Lamport timestamp `(counter, node)`. Ordered by counter, then by node name, so two nodes
/// never mint equal versions and every node picks the same winner.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub counter: u64,
    pub node: NodeId,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.counter, self.node)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V({}@{})", self.counter, self.node)
    }
}

/// One node's Lamport clock. The counter is persisted by the store; this type only computes.
#[derive(Clone, Debug)]
pub struct LamportClock {
    node: NodeId,
    counter: u64,
}

impl LamportClock {
    pub fn new(node: NodeId, counter: u64) -> Self {
        LamportClock { node, counter }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The last counter handed out or observed; the store persists this.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// A fresh version, greater than every version this clock has minted or observed.
    pub fn tick(&mut self) -> Version {
        self.counter += 1;
        Version {
            counter: self.counter,
            node: self.node.clone(),
        }
    }

    /// Moves the clock past a version seen from elsewhere, so the next tick is newer than it.
    pub fn observe(&mut self, seen: &Version) {
        self.counter = self.counter.max(seen.counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_exceed_everything_observed() {
        let mut a = LamportClock::new(NodeId::new("a").unwrap(), 0);
        let mut b = LamportClock::new(NodeId::new("b").unwrap(), 10);
        let vb = b.tick();
        a.observe(&vb);
        let va = a.tick();
        assert!(va > vb);
        assert_eq!(va.counter, 12);
    }

    #[test]
    fn equal_counters_order_by_node() {
        let a = Version {
            counter: 3,
            node: NodeId::new("a").unwrap(),
        };
        let b = Version {
            counter: 3,
            node: NodeId::new("b").unwrap(),
        };
        assert!(a < b);
    }
}
