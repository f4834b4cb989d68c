//! The last checks of a run, on the quiet cluster: nothing crosses any link for a long while (no
//! echo, no retry loop), and one probe change travels as the forwarding rule says (DESIGN.md,
//! "Channels, sync log, echo suppression"): a node that took a change whole sends it to every peer
//! but the one it came from and its origin. So in a healthy cluster the probe's record
//! - never reaches its origin again, nor travels back over the link it first arrived on (echo);
//! - is pushed over each directed link at most once, and carried back in answers over it at
//!   most once (a node's push can race the peer's own sync with it, whose Mismatch answer lists
//!   the change too: once pushed and once in an answer, never more);
//! - is pushed over at most [`forwarding_bound`] links in all: the origin's links, plus each
//!   other node's links but the one it arrived on and the one to the origin (on a tree, one
//!   push per link).
//!
//! The first probe change travels with small even delays. The others travel with uneven latency:
//! a change often reaches a node over a longer path first, where skipping the origin matters.

use std::collections::BTreeMap;
use std::time::Duration;

use mailmesh_actors::directory::{CreateMailbox, OpenMailbox};
use mailmesh_actors::mailbox::{Append, AppendOutcome};
use mailmesh_protocol::ids::NodeId;

use crate::checks::Kind;
use crate::config::SimConfig;
use crate::network::{link, Crossing, NetFaults};
use crate::run::Run;
use crate::topology::Topology;

/// Most crossings the forwarding rule allows one change made on `origin`: `origin` sends it over
/// each of its links; every other node sends it on over its links but the one it arrived on,
/// and never to `origin` (a node next to `origin` that got it from elsewhere skips both).
pub fn forwarding_bound(topology: &Topology, origin: &NodeId) -> u64 {
    let neighbours = |n: &NodeId| -> Vec<&NodeId> {
        topology
            .edges
            .iter()
            .filter_map(|(a, b)| (a == n).then_some(b).or((b == n).then_some(a)))
            .collect()
    };
    let mut bound = neighbours(origin).len() as u64;
    for node in topology.nodes.iter().filter(|n| *n != origin) {
        let links = neighbours(node);
        let next_to_origin = links.contains(&origin);
        let others = links.iter().filter(|n| **n != origin).count() as u64;
        // Next to the origin: it came from there (all other links), or from elsewhere (all but
        // that one and the origin). Elsewhere: all links but the one it came over.
        bound += if next_to_origin {
            others
        } else {
            others.saturating_sub(1)
        };
    }
    bound
}

/// What one probe change cost on the network of a quiet cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCrossings {
    pub links: usize,
    /// Records carried over all links together.
    pub records: u64,
    /// Most records carried over one link.
    pub max_per_link: u64,
    pub requests: u64,
}

/// Probe changes made one after another on the quiet cluster (each judged on its own): several,
/// so that some reach a node over a longer path first.
const PROBES: usize = 3;

impl Run {
    /// Appends `body` to alice's Probe mailbox on `node` (a violation if it cannot).
    async fn probe_append(&mut self, node: &NodeId, body: &[u8]) -> Option<AppendOutcome> {
        let local = self.cluster.node(node)?;
        let opened = local
            .directory
            .send(OpenMailbox {
                user: "alice".into(),
                name: "Probe".into(),
            })
            .await;
        let Ok(Ok(opened)) = opened else {
            self.observer.report(
                Kind::Probe,
                format!("probe: the new mailbox did not reach {node}"),
            );
            return None;
        };
        let appended = opened
            .addr
            .send(Append {
                body: body.to_vec(),
                flags: Vec::new(),
                internaldate: None,
            })
            .await;
        drop(opened);
        match appended {
            Ok(Ok(appended)) => Some(appended),
            other => {
                self.observer
                    .report(Kind::Probe, format!("probe: append on {node} failed: {other:?}"));
                None
            }
        }
    }

    /// Nothing may cross any link for `wait` (no echo, no retry loop).
    pub(crate) async fn check_quiet(&mut self, wait: Duration, when: &str) {
        let before = self.net.stats();
        tokio::time::sleep(wait).await;
        let after = self.net.stats();
        let crossed: Vec<String> = after
            .iter()
            .filter_map(|(k, s)| {
                let b = before.get(k).copied().unwrap_or_default();
                (s.requests != b.requests).then(|| {
                    format!(
                        "{}->{}: {} requests, {} records",
                        k.0,
                        k.1,
                        s.requests - b.requests,
                        s.records - b.records
                    )
                })
            })
            .collect();
        if !crossed.is_empty() {
            self.observer.report(
                Kind::Traffic,
                format!("traffic {when} (echo or a retry loop): {}", crossed.join("; ")),
            );
        }
    }

    /// Probe changes on the quiet cluster, once every directed link has synced the probe mailbox
    /// once: each must reach every node as the forwarding rule says, and the cluster must go
    /// quiet again. Returns what the first one cost.
    pub(crate) async fn probe(&mut self, config: &SimConfig) -> Option<ProbeCrossings> {
        let nodes = self.cluster.running();
        let creator = self.rng.pick(&nodes).clone();
        let writer = self.rng.pick(&nodes).clone();
        let directory = self.cluster.node(&creator)?.directory.clone();
        let created = directory
            .send(CreateMailbox {
                user: "alice".into(),
                name: "Probe".into(),
            })
            .await;
        let Ok(Ok(created)) = created else {
            self.observer.report(
                Kind::Probe,
                format!("probe: cannot create a mailbox on {creator}: {created:?}"),
            );
            return None;
        };
        if let Err(e) = self.cluster.settle(config.settle_limit).await {
            self.observer.report(Kind::NotQuiescent, format!("probe: {e}"));
            return None;
        }
        // First every node appends one message: the first sync of a mailbox over a directed link
        // is a full one (no replication cache yet), sent whole; the probe measures the steady
        // state, where echo suppression holds.
        for node in &nodes {
            self.probe_append(
                node,
                format!("Subject: warm-up {node}\r\n\r\nwarm-up\r\n").as_bytes(),
            )
            .await?;
        }
        if let Err(e) = self.cluster.settle(config.settle_limit).await {
            self.observer.report(Kind::NotQuiescent, format!("probe: {e}"));
            return None;
        }
        let mut first = None;
        for round in 0..PROBES {
            let writer = if round == 0 {
                writer.clone()
            } else {
                self.rng.pick(&nodes).clone()
            };
            let crossings = self.probe_change(config, created.id, &writer, round > 0).await?;
            first.get_or_insert(crossings);
        }
        self.check_quiet(Duration::from_secs(120), "after the probe")
            .await;
        first
    }

    /// One probe change: an append on `writer` to the Probe mailbox `mailbox`, under uneven
    /// latency; judges how it travelled and that every node got it. Returns what it cost.
    async fn probe_change(
        &mut self,
        config: &SimConfig,
        mailbox: mailmesh_protocol::ids::MailboxId,
        writer: &NodeId,
        uneven: bool,
    ) -> Option<ProbeCrossings> {
        let before = self.net.stats();
        self.net.watch(mailbox);
        if uneven {
            self.net.set_faults(NetFaults::uneven());
        }
        let appended = self
            .probe_append(writer, b"Subject: probe\r\n\r\nprobe\r\n")
            .await;
        let settled = self.cluster.settle(config.settle_limit).await;
        self.net.set_faults(NetFaults::calm());
        let appended = appended?;
        if let Err(e) = settled {
            self.observer.report(Kind::NotQuiescent, format!("probe: {e}"));
            return None;
        }
        let after = self.net.stats();
        let mut per_link: BTreeMap<(NodeId, NodeId), (u64, u64)> = BTreeMap::new();
        for (k, s) in &after {
            let b = before.get(k).copied().unwrap_or_default();
            let e = per_link.entry(link(&k.0, &k.1)).or_default();
            e.0 += s.records - b.records;
            e.1 += s.requests - b.requests;
        }
        let crossings = ProbeCrossings {
            links: self.cluster.topology.edges.len(),
            records: per_link.values().map(|v| v.0).sum(),
            max_per_link: per_link.values().map(|v| v.0).max().unwrap_or(0),
            requests: per_link.values().map(|v| v.1).sum(),
        };
        self.trace.log(format!(
            "probe {} appended on {writer}: {crossings:?}",
            appended.append_id
        ));
        let crossings_of_probe: Vec<Crossing> = self
            .net
            .watched()
            .into_iter()
            .filter(|c| c.append_id == appended.append_id)
            .collect();
        let bound = forwarding_bound(&self.cluster.topology, writer);
        for (kind, what) in judge_forwarding(&crossings_of_probe, writer, bound) {
            self.observer.report(
                kind,
                format!("probe {} made on {writer}: {what}", appended.append_id),
            );
        }
        for (node, local) in self.cluster.nodes() {
            let snap = crate::snapshot::snapshot(local, false).await;
            let has = snap
                .mailboxes
                .values()
                .any(|m| m.visible.iter().any(|v| v.append_id == appended.append_id));
            if !has {
                self.observer.report(
                    Kind::Lost,
                    format!("probe: {node} did not get {}", appended.append_id),
                );
            }
        }
        Some(crossings)
    }
}

/// What is wrong with the way one change made on `origin` travelled (`crossings` in order of
/// arrival), by the forwarding rule: no echo; each directed link at most once pushed and once in
/// answers; at most `bound` pushes in all.
pub fn judge_forwarding(crossings: &[Crossing], origin: &NodeId, bound: u64) -> Vec<(Kind, String)> {
    let mut found = Vec::new();
    let mut per_link: BTreeMap<(&NodeId, &NodeId, bool), u64> = BTreeMap::new();
    for c in crossings {
        *per_link.entry((&c.from, &c.to, c.in_answer)).or_default() += c.copies;
        if &c.to == origin {
            found.push((
                Kind::Echo,
                format!("it travelled back to its origin, from {}", c.from),
            ));
            continue;
        }
        if &c.from == origin {
            continue;
        }
        // What `c.from` had received before it sent this: if all of it came from `c.to`, the
        // change went back over the link it arrived on.
        let before: Vec<&Crossing> = crossings
            .iter()
            .filter(|d| d.to == c.from && d.arrived < c.sent)
            .collect();
        if !before.is_empty() && before.iter().all(|d| d.from == c.to) {
            found.push((
                Kind::Echo,
                format!("{} sent it back to {} over the link it arrived on", c.from, c.to),
            ));
        }
    }
    for ((from, to, pulled), copies) in &per_link {
        if *copies > 1 {
            let how = if *pulled { "in answers" } else { "pushed" };
            found.push((
                Kind::Crossings,
                format!("it crossed {from}->{to} {how} {copies} times (at most once)"),
            ));
        }
    }
    let total: u64 = per_link
        .iter()
        .filter(|((_, _, pulled), _)| !pulled)
        .map(|(_, copies)| copies)
        .sum();
    if total > bound {
        found.push((
            Kind::Crossings,
            format!(
                "it was pushed over links {total} times, more than the {bound} the forwarding rule allows"
            ),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::node_name;

    fn topology(count: usize, edges: &[(usize, usize)]) -> Topology {
        Topology {
            nodes: (0..count).map(node_name).collect(),
            edges: edges
                .iter()
                .map(|(a, b)| link(&node_name(*a), &node_name(*b)))
                .collect(),
        }
    }

    fn crossing(from: usize, to: usize, sent: u64, arrived: u64) -> Crossing {
        Crossing {
            append_id: mailmesh_protocol::ids::AppendId {
                origin: node_name(0),
                counter: 1,
            },
            from: node_name(from),
            to: node_name(to),
            copies: 1,
            in_answer: false,
            sent,
            arrived,
        }
    }

    #[test]
    fn the_bound_is_one_crossing_per_link_on_a_tree_and_more_with_cycles() {
        let chain = topology(4, &[(0, 1), (1, 2), (2, 3)]);
        for origin in 0..4 {
            assert_eq!(forwarding_bound(&chain, &node_name(origin)), 3);
        }
        let star = topology(5, &[(0, 1), (0, 2), (0, 3), (0, 4)]);
        assert_eq!(forwarding_bound(&star, &node_name(0)), 4);
        assert_eq!(forwarding_bound(&star, &node_name(3)), 4);
        let mesh = topology(4, &[(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]);
        // The origin's 3 links, then each other node to the two that are not the origin.
        assert_eq!(forwarding_bound(&mesh, &node_name(0)), 9);
        let ring = topology(4, &[(0, 1), (1, 2), (2, 3), (3, 0)]);
        // 0 sends to 1 and 3; they send on to 2; 2 sends on to whichever it heard from last.
        assert_eq!(forwarding_bound(&ring, &node_name(0)), 5);
    }

    #[test]
    fn forwarding_down_a_chain_is_clean() {
        let crossings = [crossing(0, 1, 1, 2), crossing(1, 2, 3, 4)];
        assert!(judge_forwarding(&crossings, &node_name(0), 2).is_empty());
    }

    #[test]
    fn going_back_to_the_origin_or_over_the_arrival_link_is_echo() {
        let back_to_origin = [crossing(0, 1, 1, 2), crossing(1, 0, 3, 4)];
        let found = judge_forwarding(&back_to_origin, &node_name(0), 2);
        assert!(found.iter().any(|(k, _)| *k == Kind::Echo), "{found:?}");
        let back_over_arrival = [crossing(0, 1, 1, 2), crossing(1, 2, 3, 4), crossing(2, 1, 5, 6)];
        let found = judge_forwarding(&back_over_arrival, &node_name(0), 3);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Kind::Echo);
        // Sent before anything arrived from the other side: a crossing, not an echo.
        let crossed = [
            crossing(0, 1, 1, 2),
            crossing(0, 2, 1, 3),
            crossing(1, 2, 4, 6),
            crossing(2, 1, 5, 7),
        ];
        assert!(judge_forwarding(&crossed, &node_name(0), 4).is_empty());
    }

    #[test]
    fn a_directed_link_twice_or_too_many_crossings_are_caught() {
        let twice = [crossing(0, 1, 1, 2), crossing(0, 1, 3, 4)];
        let found = judge_forwarding(&twice, &node_name(0), 5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Kind::Crossings);
        // Once pushed and once in an answer is a race of the two syncs of a link, not a fault.
        let mut pulled = crossing(0, 1, 3, 4);
        pulled.in_answer = true;
        let raced = [crossing(0, 1, 1, 2), pulled.clone()];
        assert!(judge_forwarding(&raced, &node_name(0), 1).is_empty());
        let twice_pulled = [crossing(0, 1, 1, 2), pulled.clone(), pulled];
        assert_eq!(judge_forwarding(&twice_pulled, &node_name(0), 1).len(), 1);
        let many = [crossing(0, 1, 1, 2), crossing(0, 2, 1, 3)];
        let found = judge_forwarding(&many, &node_name(0), 1);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Kind::Crossings);
    }
}
