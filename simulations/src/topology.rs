//! The configured topology of a run: which nodes have a channel to which. Each edge is a channel
//! both ways (each end names the other as a peer), as a cluster's config files would say.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mailmesh_protocol::ids::NodeId;

use crate::network::link;
use crate::rng::SimRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    FullMesh,
    Chain,
    Ring,
    Star,
    /// A random spanning tree plus random extra edges.
    Random,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Shape::FullMesh => "mesh",
            Shape::Chain => "chain",
            Shape::Ring => "ring",
            Shape::Star => "star",
            Shape::Random => "random",
        };
        f.write_str(name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub nodes: Vec<NodeId>,
    /// Undirected edges as (smaller name, larger name).
    pub edges: BTreeSet<(NodeId, NodeId)>,
}

pub fn node_name(i: usize) -> NodeId {
    NodeId::new(format!("n{}", i + 1)).expect("a valid node name")
}

impl Topology {
    /// A topology of `count` nodes (2 to 7 when `None`) in a random shape.
    pub fn generate(rng: &SimRng, count: Option<usize>) -> (Shape, Topology) {
        let count = count.unwrap_or_else(|| rng.range(2..8) as usize).max(2);
        let nodes: Vec<NodeId> = (0..count).map(node_name).collect();
        let shapes = [
            Shape::FullMesh,
            Shape::Chain,
            Shape::Ring,
            Shape::Star,
            Shape::Random,
        ];
        let mut shape = *rng.pick(&shapes);
        // Two or three nodes in a ring are a mesh or a chain already.
        if shape == Shape::Ring && count < 3 {
            shape = Shape::Chain;
        }
        let mut edges = BTreeSet::new();
        match shape {
            Shape::FullMesh => {
                for (i, a) in nodes.iter().enumerate() {
                    for b in &nodes[i + 1..] {
                        edges.insert(link(a, b));
                    }
                }
            }
            Shape::Chain | Shape::Ring => {
                for w in nodes.windows(2) {
                    edges.insert(link(&w[0], &w[1]));
                }
                if shape == Shape::Ring {
                    edges.insert(link(&nodes[0], &nodes[count - 1]));
                }
            }
            Shape::Star => {
                let hub = rng.below(count);
                for (i, n) in nodes.iter().enumerate() {
                    if i != hub {
                        edges.insert(link(&nodes[hub], n));
                    }
                }
            }
            Shape::Random => {
                // Each node after the first joins a random earlier one: connected by construction.
                for i in 1..count {
                    let j = rng.below(i);
                    edges.insert(link(&nodes[i], &nodes[j]));
                }
                for _ in 0..rng.below(count) {
                    let a = rng.below(count);
                    let b = rng.below(count);
                    if a != b {
                        edges.insert(link(&nodes[a], &nodes[b]));
                    }
                }
            }
        }
        (shape, Topology { nodes, edges })
    }

    pub fn neighbours(&self, node: &NodeId) -> Vec<NodeId> {
        self.edges
            .iter()
            .filter_map(|(a, b)| {
                if a == node {
                    Some(b.clone())
                } else if b == node {
                    Some(a.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn is_connected(&self) -> bool {
        connected(&self.nodes, &self.edges)
    }

    /// Edges whose removal keeps the graph connected.
    pub fn removable_edges(&self) -> Vec<(NodeId, NodeId)> {
        self.edges
            .iter()
            .filter(|e| {
                let mut rest = self.edges.clone();
                rest.remove(*e);
                connected(&self.nodes, &rest)
            })
            .cloned()
            .collect()
    }

    /// Pairs of nodes without an edge.
    pub fn missing_edges(&self) -> Vec<(NodeId, NodeId)> {
        let mut out = Vec::new();
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[i + 1..] {
                if !self.edges.contains(&link(a, b)) {
                    out.push(link(a, b));
                }
            }
        }
        out
    }

    pub fn describe(&self) -> String {
        let edges: Vec<String> = self.edges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        edges.join(" ")
    }
}

fn connected(nodes: &[NodeId], edges: &BTreeSet<(NodeId, NodeId)>) -> bool {
    let Some(first) = nodes.first() else {
        return true;
    };
    let mut adjacent: BTreeMap<&NodeId, Vec<&NodeId>> = BTreeMap::new();
    for (a, b) in edges {
        adjacent.entry(a).or_default().push(b);
        adjacent.entry(b).or_default().push(a);
    }
    let mut seen = BTreeSet::from([first]);
    let mut stack = vec![first];
    while let Some(n) = stack.pop() {
        for m in adjacent.get(n).into_iter().flatten() {
            if seen.insert(*m) {
                stack.push(*m);
            }
        }
    }
    seen.len() == nodes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_topology_is_connected_and_removals_keep_it_so() {
        let rng = SimRng::new(9);
        for _ in 0..200 {
            let (shape, mut t) = Topology::generate(&rng, None);
            assert!((2..=7).contains(&t.nodes.len()));
            assert!(t.is_connected(), "{shape}: {}", t.describe());
            while let Some(e) = t.removable_edges().first().cloned() {
                t.edges.remove(&e);
                assert!(t.is_connected(), "removing {e:?} disconnected {shape}");
            }
            // What is left is a spanning tree.
            assert_eq!(t.edges.len(), t.nodes.len() - 1);
        }
    }

    #[test]
    fn shapes_have_their_edges() {
        let rng = SimRng::new(1);
        let mut seen = BTreeSet::new();
        for _ in 0..100 {
            let (shape, t) = Topology::generate(&rng, Some(5));
            let expected = match shape {
                Shape::FullMesh => Some(10),
                Shape::Chain | Shape::Star => Some(4),
                Shape::Ring => Some(5),
                Shape::Random => None,
            };
            if let Some(e) = expected {
                assert_eq!(t.edges.len(), e, "{shape}");
            }
            seen.insert(shape.to_string());
        }
        assert_eq!(seen.len(), 5, "every shape is drawn: {seen:?}");
    }
}
