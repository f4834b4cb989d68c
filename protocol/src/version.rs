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

/// A version for tests: `counter` at node `node`.
#[cfg(test)]
pub(crate) fn version_at(counter: u64, node: &str) -> Version {
    Version {
        counter,
        node: NodeId::new(node).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_the_last_one_handed_out_or_observed() {
        let mut a = LamportClock::new(NodeId::new("a").unwrap(), 4);
        assert_eq!(a.counter(), 4);
        a.tick();
        assert_eq!(a.counter(), 5, "the store persists what counter() says");
    }

    /// Traces and operator output name versions this way; the simulator's traces compare byte
    /// for byte across runs.
    #[test]
    fn a_version_prints_as_counter_at_node() {
        let v = Version {
            counter: 7,
            node: NodeId::new("n2").unwrap(),
        };
        assert_eq!(v.to_string(), "7@n2");
        assert_eq!(format!("{v:?}"), "V(7@n2)");
    }

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
