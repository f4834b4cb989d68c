//! The cluster's link graph, and the relays a mailbox placed on some nodes needs.
//!
//! Mailbox contents replicate only between the nodes that hold the mailbox (its locations), over
//! configured links. Locations that reach each other only through nodes outside them would never
//! replicate, so every node publishes its configured peers (one last-writer-wins register per
//! node, replicated like the other directory items) and every node computes from the same graph
//! the same *effective holders*: the locations plus the relay nodes that connect them
//! ([`LinkGraph::holders`]). A relay keeps a copy and replicates like a holder; it takes no
//! client write and is never the primary (that is the mailbox entry's business, not this one's).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::merge::{Lww, Merge};
use crate::records::MailboxEntry;
use crate::version::Version;

/// Node -> the peers it configured, as it last published them.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LinkGraph {
    pub peers: BTreeMap<NodeId, Lww<BTreeSet<NodeId>>>,
}

impl LinkGraph {
    /// `node` publishes its configured peers at `version`; returns whether the graph changed.
    pub fn publish(&mut self, node: &NodeId, peers: BTreeSet<NodeId>, version: Version) -> bool {
        match self.peers.get_mut(node) {
            Some(register) => register.value != peers && register.set(peers, version),
            None => {
                self.peers.insert(node.clone(), Lww::new(peers, version));
                true
            }
        }
    }

    /// The peers `node` published (empty if it published none).
    pub fn published(&self, node: &NodeId) -> Option<&BTreeSet<NodeId>> {
        self.peers.get(node).map(|r| &r.value)
    }

    /// Whether `a` and `b` replicate with each other: each names the other as a peer (a link is
    /// a channel both ways, and a node accepts only peers it configured).
    pub fn linked(&self, a: &NodeId, b: &NodeId) -> bool {
        a != b
            && self.published(a).is_some_and(|p| p.contains(b))
            && self.published(b).is_some_and(|p| p.contains(a))
    }

    /// The nodes linked with `node`, in name order.
    pub fn neighbours<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a NodeId> + 'a {
        self.published(node)
            .into_iter()
            .flatten()
            .filter(move |p| self.linked(node, p))
    }

    /// Every link, each once as (smaller name, larger name).
    pub fn links(&self) -> BTreeSet<(NodeId, NodeId)> {
        let mut out = BTreeSet::new();
        for node in self.peers.keys() {
            for peer in self.neighbours(node) {
                if node < peer {
                    out.insert((node.clone(), peer.clone()));
                }
            }
        }
        out
    }

    /// The nodes that keep a copy of `entry`'s mailbox (empty: every node): its locations and
    /// their relays ([`LinkGraph::holders`] of the locations alone), plus each node still letting
    /// a copy go (`MailboxEntry::leaving`) with the relays joining it to them
    /// ([`LinkGraph::leaving_path`]).
    ///
    /// The locations' relays never depend on who is leaving, and each leaving node is joined on
    /// its own (engine bug 31, --wipes --locations seed 80). When the leaving nodes were joined
    /// together with the locations, a leaving node could change the locations' own relays: on
    /// the ring n1..n6 with the mailbox on {n2, n3, n5}, n4 joins n3 to n5, but with n1 leaving
    /// the group {n1, n2, n3} reached n5 through n6 (n4 not needed), and with n6 leaving
    /// {n2, n3} reached {n5, n6} through n1. Whichever of n1 and n6 let go first made the other
    /// a relay of its leaving, and once the other let go, the first was a relay no longer needed,
    /// left, and made the other a relay again, every release, for ever. Joined one by one to a
    /// fixed set, a leaving node's relays lie on a shortest path from it to that set, each
    /// strictly nearer to the set than the leaving node: a relay never needs the node it relays
    /// for, so "needed for" has no cycle and the leaving marks reach a fixed point.
    pub fn holders_of(&self, entry: &MailboxEntry) -> BTreeSet<NodeId> {
        if entry.locations.value.is_empty() {
            return BTreeSet::new();
        }
        let kept = self.holders(&entry.locations.value);
        let mut held = kept.clone();
        for node in entry.leaving_nodes() {
            held.extend(self.leaving_path(&kept, node));
        }
        held
    }

    /// Whether `node` must keep its copy of `entry`'s mailbox for the others' sake: it is among
    /// the locations, a relay between them, or a relay another node letting its copy go needs
    /// to reach them. A node holding a copy it is not needed for lets it go (and is among the
    /// holders while it does).
    pub fn needs(&self, entry: &MailboxEntry, node: &NodeId) -> bool {
        if entry.locations.value.is_empty() || entry.locations.value.contains(node) {
            return true;
        }
        let kept = self.holders(&entry.locations.value);
        kept.contains(node)
            || entry
                .leaving_nodes()
                .filter(|n| *n != node)
                .any(|leaving| self.leaving_path(&kept, leaving).contains(node))
    }

    /// `leaving` and the relays joining it to `kept` (the locations and their relays, whose
    /// groups, if several, the graph cannot join): the inner nodes of a shortest path between it
    /// and the nearest of them, by [`LinkGraph::holders`]' rule.
    fn leaving_path(&self, kept: &BTreeSet<NodeId>, leaving: &NodeId) -> BTreeSet<NodeId> {
        let mut base = kept.clone();
        if !base.insert(leaving.clone()) {
            return BTreeSet::new();
        }
        let mut joined = self.holders(&base);
        joined.retain(|n| !kept.contains(n));
        joined
    }

    /// The nodes that must keep a copy of a mailbox placed on `locations` (empty: every node,
    /// returned as empty): the locations, plus relays so that the locations reach each other
    /// through copy holders only. Deterministic: while the holders fall apart into more than
    /// one connected group, the group holding the lowest name (or, if it reaches no other, the
    /// next one that does) is joined to the nearest other holder by a shortest path, ties broken
    /// by name order, and the nodes on that path become holders. Locations the graph does not
    /// connect at all stay apart (nothing can join them).
    pub fn holders(&self, locations: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        let mut held = locations.clone();
        if held.len() < 2 {
            return held;
        }
        loop {
            let groups = self.groups(&held);
            if groups.len() < 2 {
                return held;
            }
            let Some(path) = groups.iter().find_map(|g| self.path_out_of(g, &held)) else {
                return held;
            };
            held.extend(path);
        }
    }

    /// The connected groups of `held` through links among `held` only, each group's nodes in
    /// name order, the groups ordered by their lowest name.
    fn groups(&self, held: &BTreeSet<NodeId>) -> Vec<BTreeSet<NodeId>> {
        let mut seen = BTreeSet::new();
        let mut groups = Vec::new();
        for start in held {
            if !seen.insert(start.clone()) {
                continue;
            }
            let mut group = BTreeSet::from([start.clone()]);
            let mut queue = VecDeque::from([start.clone()]);
            while let Some(n) = queue.pop_front() {
                for p in self.neighbours(&n) {
                    if held.contains(p) && seen.insert(p.clone()) {
                        group.insert(p.clone());
                        queue.push_back(p.clone());
                    }
                }
            }
            groups.push(group);
        }
        groups
    }

    /// The inner nodes of a shortest path from `group` to a holder outside it (breadth first,
    /// nodes in name order), or `None` if no other holder is reachable.
    fn path_out_of(&self, group: &BTreeSet<NodeId>, held: &BTreeSet<NodeId>) -> Option<Vec<NodeId>> {
        let mut parent: BTreeMap<NodeId, Option<NodeId>> = group.iter().map(|n| (n.clone(), None)).collect();
        let mut queue: VecDeque<NodeId> = group.iter().cloned().collect();
        while let Some(n) = queue.pop_front() {
            for p in self.neighbours(&n) {
                if parent.contains_key(p) {
                    continue;
                }
                parent.insert(p.clone(), Some(n.clone()));
                if held.contains(p) {
                    let mut inner = Vec::new();
                    let mut at = parent[p].clone();
                    while let Some(node) = at {
                        if group.contains(&node) {
                            break;
                        }
                        at = parent[&node].clone();
                        inner.push(node);
                    }
                    return Some(inner);
                }
                queue.push_back(p.clone());
            }
        }
        None
    }

    /// The newest version in the graph; a node's Lamport clock observes it.
    pub fn max_version(&self) -> Option<&Version> {
        self.peers.values().map(|r| &r.version).max()
    }
}

impl Merge for LinkGraph {
    fn merge(&self, other: &Self) -> Self {
        let mut peers = self.peers.clone();
        for (node, theirs) in &other.peers {
            peers
                .entry(node.clone())
                .and_modify(|ours| *ours = ours.merge(theirs))
                .or_insert_with(|| theirs.clone());
        }
        LinkGraph { peers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn set(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|s| n(s)).collect()
    }

    fn v(counter: u64, node: &str) -> Version {
        Version {
            counter,
            node: n(node),
        }
    }

    /// The newest version of any node's list: what a node's Lamport clock must observe when it
    /// takes the graph (cargo-mutants found nothing checking it).
    #[test]
    fn max_version_is_the_newest_published_list() {
        let mut g = LinkGraph::default();
        assert_eq!(g.max_version(), None);
        g.publish(&n("n1"), set(&["n2"]), v(7, "n1"));
        g.publish(&n("n2"), set(&["n1"]), v(3, "n2"));
        assert_eq!(g.max_version(), Some(&v(7, "n1")));
        g.publish(&n("n2"), set(&["n1", "n3"]), v(9, "n2"));
        assert_eq!(g.max_version(), Some(&v(9, "n2")));
    }

    /// A graph of undirected links, each published by both ends.
    fn graph(links: &[(&str, &str)]) -> LinkGraph {
        let mut peers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in links {
            peers.entry(a).or_default().push(b);
            peers.entry(b).or_default().push(a);
        }
        let mut g = LinkGraph::default();
        for (node, ps) in peers {
            g.publish(&n(node), set(&ps), v(1, node));
        }
        g
    }

    #[test]
    fn a_chain_gets_its_middle_as_relay() {
        let g = graph(&[("a", "b"), ("b", "c")]);
        assert_eq!(g.holders(&set(&["a", "c"])), set(&["a", "b", "c"]));
        assert_eq!(
            g.holders(&set(&["a", "b"])),
            set(&["a", "b"]),
            "already connected"
        );
        assert_eq!(g.holders(&set(&["c"])), set(&["c"]));
        assert_eq!(g.holders(&BTreeSet::new()), BTreeSet::new(), "everyone holds it");
    }

    #[test]
    fn a_long_chain_relays_through_every_node_between() {
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]);
        assert_eq!(g.holders(&set(&["a", "e"])), set(&["a", "b", "c", "d", "e"]));
        assert_eq!(g.holders(&set(&["b", "d"])), set(&["b", "c", "d"]));
        assert_eq!(g.holders(&set(&["a", "c", "e"])), set(&["a", "b", "c", "d", "e"]));
    }

    #[test]
    fn ties_go_to_the_lower_name_and_shortest_paths_win() {
        // a reaches d through b or c (two hops each) or through x, y (three hops).
        let g = graph(&[
            ("a", "c"),
            ("c", "d"),
            ("a", "b"),
            ("b", "d"),
            ("a", "x"),
            ("x", "y"),
            ("y", "d"),
        ]);
        assert_eq!(g.holders(&set(&["a", "d"])), set(&["a", "b", "d"]));
    }

    #[test]
    fn a_link_needs_both_ends_and_unreachable_locations_stay_apart() {
        let mut g = graph(&[("a", "b")]);
        g.publish(&n("b"), set(&["a", "c"]), v(2, "b"));
        g.publish(&n("c"), BTreeSet::new(), v(1, "c"));
        assert!(!g.linked(&n("b"), &n("c")), "c does not name b");
        assert_eq!(g.holders(&set(&["a", "c"])), set(&["a", "c"]));
        g.publish(&n("c"), set(&["b"]), v(2, "c"));
        assert_eq!(g.holders(&set(&["a", "c"])), set(&["a", "b", "c"]));
        assert_eq!(g.links(), [(n("a"), n("b")), (n("b"), n("c"))].into());
    }

    #[test]
    fn three_groups_are_all_joined() {
        // a-b-c-d-e-f chain: locations a, d, f.
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f")]);
        assert_eq!(
            g.holders(&set(&["a", "d", "f"])),
            set(&["a", "b", "c", "d", "e", "f"])
        );
        // A star: the hub relays for every pair of leaves.
        let star = graph(&[("h", "l1"), ("h", "l2"), ("h", "l3")]);
        assert_eq!(star.holders(&set(&["l1", "l3"])), set(&["h", "l1", "l3"]));
    }

    #[test]
    fn publishing_is_last_writer_wins_per_node() {
        let mut a = graph(&[("a", "b")]);
        let mut b = a.clone();
        assert!(a.publish(&n("a"), set(&["b", "c"]), v(5, "a")));
        assert!(
            !a.publish(&n("a"), set(&["b", "c"]), v(6, "a")),
            "same peers: nothing new"
        );
        assert!(b.publish(&n("b"), set(&["a", "c"]), v(3, "b")));
        assert_eq!(a.merge(&b), b.merge(&a));
        let m = a.merge(&b);
        assert_eq!(m.published(&n("a")), Some(&set(&["b", "c"])));
        assert_eq!(m.published(&n("b")), Some(&set(&["a", "c"])));
        assert_eq!(m.merge(&a), m);
    }

    /// An entry placed on `locations` with `leaving` marked as letting their copies go.
    fn placed(locations: &[&str], leaving: &[&str]) -> MailboxEntry {
        use crate::ids::{MailboxId, UidValidity};
        use crate::records::MailboxPath;
        let path = MailboxPath {
            user: "u".into(),
            name: "INBOX".into(),
        };
        let mut entry = MailboxEntry::new(MailboxId(1), UidValidity(1), path, v(1, "a"));
        entry.locations = Lww::new(set(locations), v(2, "a"));
        for (i, node) in leaving.iter().enumerate() {
            entry.set_leaving(&n(node), true, v(3 + i as u64, node));
        }
        entry
    }

    fn ring(names: &[&'static str]) -> LinkGraph {
        let links: Vec<(&str, &str)> = (0..names.len())
            .map(|i| (names[i], names[(i + 1) % names.len()]))
            .collect();
        graph(&links)
    }

    /// Engine bug 31 (--wipes --locations seed 80), on the graph alone: the ring n1..n6 with the
    /// mailbox on {n2, n3, n5}. n4 relays between n3 and n5 whoever is leaving, and n1 and n6,
    /// each letting its copy go, reach the locations directly and need no relay. Before, n1's
    /// leaving made n6 the relay (n4 not needed) and n6's leaving made n1 the relay: each needed
    /// the other, and they took turns holding the mailbox for ever.
    #[test]
    fn leaving_nodes_leave_the_locations_relays_as_they_are() {
        let g = ring(&["n1", "n2", "n3", "n4", "n5", "n6"]);
        let locations = ["n2", "n3", "n5"];
        assert_eq!(
            g.holders_of(&placed(&locations, &[])),
            set(&["n2", "n3", "n4", "n5"])
        );
        let n1_leaving = placed(&locations, &["n1"]);
        assert_eq!(g.holders_of(&n1_leaving), set(&["n1", "n2", "n3", "n4", "n5"]));
        assert!(!g.needs(&n1_leaving, &n("n6")), "n1 reaches n2 directly");
        assert!(g.needs(&n1_leaving, &n("n4")));
        let n6_leaving = placed(&locations, &["n6"]);
        assert_eq!(g.holders_of(&n6_leaving), set(&["n2", "n3", "n4", "n5", "n6"]));
        assert!(!g.needs(&n6_leaving, &n("n1")), "n6 reaches n5 directly");
        let both = placed(&locations, &["n1", "n6"]);
        assert_eq!(g.holders_of(&both), set(&["n1", "n2", "n3", "n4", "n5", "n6"]));
        assert!(!g.needs(&both, &n("n1")) && !g.needs(&both, &n("n6")));
    }

    /// A mailbox placed nowhere in particular (no locations) lives on every node: each one is
    /// needed and keeps its copy, linked or not (cargo-mutants: `needs` answering false here
    /// was not caught).
    #[test]
    fn a_mailbox_without_locations_needs_every_node() {
        let g = graph(&[("a", "b"), ("b", "c")]);
        let everywhere = placed(&[], &[]);
        assert_eq!(g.holders_of(&everywhere), BTreeSet::new(), "empty: every node");
        for node in ["a", "b", "c", "unlinked"] {
            assert!(g.needs(&everywhere, &n(node)), "{node}");
        }
    }

    /// A node letting its copy go far from the locations keeps the nodes between as relays, each
    /// nearer to the locations than it is, and they may go once it has.
    #[test]
    fn a_far_leaving_node_keeps_the_path_to_the_locations() {
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "d")]);
        let entry = placed(&["a"], &["d"]);
        assert_eq!(g.holders_of(&entry), set(&["a", "b", "c", "d"]));
        assert!(g.needs(&entry, &n("b")) && g.needs(&entry, &n("c")));
        assert!(!g.needs(&entry, &n("d")), "d itself is only leaving");
        // c, still leaving too, is needed by d, and needs nobody beyond what d needs.
        let entry = placed(&["a"], &["c", "d"]);
        assert!(g.needs(&entry, &n("c")));
        assert!(!g.needs(&entry, &n("d")), "no node relays through d");
    }

    /// The fixed point behind engine bug 31, over every placement and every pair of nodes on a
    /// few graphs with tied shortest paths: whenever r relays for a leaving node x, x is not a
    /// relay r's own leaving needs (so two nodes never hold a copy for each other's sake in
    /// turn), and a node's relays do not depend on which other nodes are leaving.
    #[test]
    fn no_node_relays_for_a_node_it_needs() {
        let names = ["a", "b", "c", "d", "e", "f"];
        let graphs = [
            ring(&names),
            ring(&names[..5]),
            // A ladder: two rows joined at every rung.
            graph(&[
                ("a", "b"),
                ("b", "c"),
                ("d", "e"),
                ("e", "f"),
                ("a", "d"),
                ("b", "e"),
                ("c", "f"),
            ]),
            // A ring with a chord.
            graph(&[
                ("a", "b"),
                ("b", "c"),
                ("c", "d"),
                ("d", "e"),
                ("e", "f"),
                ("f", "a"),
                ("b", "e"),
            ]),
        ];
        let mut checked = 0;
        for g in &graphs {
            let nodes: Vec<&str> = names
                .iter()
                .copied()
                .filter(|x| g.published(&n(x)).is_some())
                .collect();
            for mask in 1..(1u32 << nodes.len()) {
                let locations: Vec<&str> = (0..nodes.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| nodes[i])
                    .collect();
                // The locations and their relays are needed whoever is leaving.
                let kept = g.holders_of(&placed(&locations, &[]));
                for x in &nodes {
                    for r in &nodes {
                        if x == r || kept.contains(&n(x)) || kept.contains(&n(r)) {
                            continue;
                        }
                        let x_leaving = placed(&locations, &[x]);
                        if !g.needs(&x_leaving, &n(r)) {
                            continue;
                        }
                        checked += 1;
                        let r_leaving = placed(&locations, &[r]);
                        assert!(
                            !g.needs(&r_leaving, &n(x)),
                            "{r} relays for {x} and {x} for {r}, locations {locations:?}"
                        );
                        // Another node leaving too changes nothing of what x needs of r.
                        for other in &nodes {
                            if other != x && other != r {
                                assert!(g.needs(&placed(&locations, &[x, other]), &n(r)));
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} relays checked");
    }
}
