//! The faults a run injects besides the network's own (drops, delays, duplicates, which
//! [`crate::network`] draws per request): node crashes and restarts, wipes, cut links and isolated
//! nodes, and topology edits as a config reload would make them.
//!
//! A crash is a power cut on the node's simulated disk (see [`crate::cluster`]): at once, between
//! two client steps (batches queued for the next group are lost), or armed to fire inside the
//! commit path at a [`CrashPoint`] or at the n-th sync from now (BUGGIFY); the run takes a node
//! whose armed crash fired off the network and restarts it later from what its disk kept.
//!
//! A wipe takes a node's whole disk: it comes back under the same name, empty, once its new store
//! has waited out the clock skew (`LocalNode::fresh_store_wait`; no client operation runs
//! meanwhile). What it
//! alone held durably is lost for good, and only that is excused: at the wipe, every other node's
//! durable state is read (running or down, from an image of its disk) and the acknowledged
//! appends and mailboxes found on none of them go into the model as lost. The next client
//! operations favour the wiped node, so it writes again (new identities that must not collide
//! with the ones its lost store minted) while it is being rebuilt.

use mailmesh_actors::disk::CrashPoint;
use mailmesh_actors::sim_disk::CrashTrigger;
use std::collections::{BTreeMap, BTreeSet};

use mailmesh_protocol::ids::{AppendId, MailboxId, NodeId};

use crate::checks::Kind;
use crate::cluster::DurableContent;
use crate::network::short_id;
use crate::network::{link, NetFaults};
use crate::rng::SimRng;
use crate::run::Run;

/// How often each kind of fault happens in one run (drawn per seed).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FaultProfile {
    pub(crate) net: NetFaults,
    /// Percent of steps that are a fault event rather than a client operation.
    pub(crate) event_percent: u64,
    crash_weight: u64,
    partition_weight: u64,
    topology_weight: u64,
    wipe_weight: u64,
}

impl FaultProfile {
    /// `wipes`: whether nodes may be wiped (drawn only then, so runs without wipes keep the
    /// histories they had before wipes existed).
    pub(crate) fn random(rng: &SimRng, enabled: bool, wipes: bool) -> Self {
        // Some seeds run a healthy cluster: the plain path must hold as well as the faulty one.
        if !enabled || rng.chance(0.15) {
            return FaultProfile {
                net: NetFaults::calm(),
                event_percent: 0,
                crash_weight: 0,
                partition_weight: 0,
                topology_weight: 0,
                wipe_weight: 0,
            };
        }
        FaultProfile {
            net: NetFaults::random(rng),
            event_percent: rng.range(5..25),
            crash_weight: rng.range(0..4),
            partition_weight: rng.range(1..6),
            topology_weight: rng.range(0..3),
            // Half the faulty runs wipe nodes: a wipe costs a full resync of the node.
            wipe_weight: if wipes && rng.chance(0.5) { 1 } else { 0 },
        }
    }
}

/// Faults injected by the run, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub crashes: u64,
    pub partitions: u64,
    pub topology_edits: u64,
    pub dropped_requests: u64,
    pub dropped_responses: u64,
    pub duplicated: u64,
    pub wipes: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.crashes
            + self.partitions
            + self.topology_edits
            + self.dropped_requests
            + self.dropped_responses
            + self.duplicated
            + self.wipes
    }
}

impl Run {
    pub(crate) async fn fault_event(&mut self) {
        let p = self.profile;
        let total = p.crash_weight + p.partition_weight + p.topology_weight + p.wipe_weight;
        if total == 0 {
            return;
        }
        let roll = self.rng.range(0..total);
        if roll < p.crash_weight {
            self.crash_or_restart().await;
        } else if roll < p.crash_weight + p.partition_weight {
            self.partition();
        } else if roll < p.crash_weight + p.partition_weight + p.topology_weight {
            self.edit_topology();
        } else {
            self.wipe().await;
        }
    }

    /// Wipes a node (running or down) and starts it again, empty, under the same name.
    async fn wipe(&mut self) {
        let node = self.rng.pick(&self.cluster.topology.nodes).clone();
        // What survives is what the other disks hold durably at this instant: read before the
        // wipe, with no await in between.
        let others: BTreeMap<NodeId, DurableContent> = self
            .cluster
            .topology
            .nodes
            .iter()
            .filter(|n| **n != node)
            .map(|n| (n.clone(), self.cluster.durable_content(n)))
            .collect();
        let own = self.cluster.durable_content(&node);
        let lost_mailboxes: BTreeSet<MailboxId> = own
            .mailboxes
            .iter()
            .filter(|id| others.values().all(|o| !o.mailboxes.contains(id)))
            .copied()
            .collect();
        // Acknowledged appends found on no other disk, and every other message the node alone
        // held (copies made by COPY and MOVE, appends whose answer was lost): a client may have
        // been shown any of them.
        let mut lost: BTreeSet<AppendId> = {
            let model = self.model.borrow();
            model
                .appends
                .iter()
                .filter(|(aid, acked)| {
                    !model.lost_in_wipes.contains(*aid)
                        && others.values().all(|o| !o.holds(acked.mailbox, aid))
                })
                .map(|(aid, _)| aid.clone())
                .collect()
        };
        lost.extend(
            own.messages
                .iter()
                .filter(|aid| others.values().all(|o| !o.messages.contains(*aid)))
                .filter(|aid| {
                    others
                        .values()
                        .all(|o| o.pruned.values().all(|p| !p.contains(aid)))
                })
                .cloned(),
        );
        // Writes whose register holds that version or a later one on no other disk.
        let lost_writes: BTreeSet<usize> = {
            let model = self.model.borrow();
            model
                .writes
                .iter()
                .enumerate()
                .filter(|(i, w)| {
                    !model.writes_lost_in_wipes.contains(i)
                        && others
                            .values()
                            .all(|o| o.version_of(&w.register).is_none_or(|v| v < w.version))
                })
                .map(|(i, _)| i)
                .collect()
        };
        self.trace.log(format!("FAULT wipe {node}"));
        self.counts.wipes += 1;
        let wiped = self.cluster.wipe(&node).await;
        let names = |ids: Vec<String>| {
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(" ")
            }
        };
        self.trace.log(format!(
            "{node} wiped and started empty; lost with it: appends {}; mailboxes {}; {} acknowledged writes",
            names(lost.iter().map(|a| a.to_string()).collect()),
            names(lost_mailboxes.iter().map(|m| short_id(m.0)).collect()),
            lost_writes.len()
        ));
        {
            let mut model = self.model.borrow_mut();
            model.wipes.push((node.clone(), self.trace.elapsed().as_millis()));
            model.mailboxes_lost_in_wipes.extend(lost_mailboxes);
            model.lost_in_wipes.extend(lost.iter().cloned());
            model.writes_lost_in_wipes.extend(lost_writes);
        }
        // What clients saw before the wipe goes to the observer before it forgets the node.
        self.judge_what_clients_saw();
        self.observer.node_wiped(
            &node,
            &lost,
            |id, uid, aid| {
                others
                    .values()
                    .any(|o| o.places.contains(&(id, uid, aid.clone())))
            },
            |id, aid| others.values().any(|o| o.knows_expunged(id, aid)),
            |n, id| others.get(n).is_some_and(|o| o.held.contains(&id)),
        );
        if let Err(e) = wiped {
            self.observer.report(Kind::Restart, e);
        }
        self.rejoined = Some((node, 12));
    }

    async fn crash_or_restart(&mut self) {
        let running = self.cluster.running();
        let down = self.cluster.down();
        if !down.is_empty() && (running.len() < 2 || self.rng.chance(0.5)) {
            let node = self.rng.pick(&down).clone();
            self.restart(&node);
        } else if running.len() >= 2 {
            let node = self.rng.pick(&running).clone();
            if self.rng.chance(0.5) {
                self.trace.log(format!("FAULT crash {node}"));
                self.counts.crashes += 1;
                self.cluster.crash(&node).await;
                self.trace.log(format!("{node} is down"));
            } else {
                let trigger = if self.rng.chance(0.7) {
                    CrashTrigger::At(*self.rng.pick(&CrashPoint::ALL))
                } else {
                    CrashTrigger::Sync(self.rng.range(1..8) as u32)
                };
                self.trace
                    .log(format!("FAULT arm crash of {node} at {trigger:?}"));
                self.cluster.arm_crash(&node, trigger);
            }
        }
    }

    /// Takes down the nodes whose armed crash fired (their disk already lost what it loses).
    pub(crate) async fn reap_crashes(&mut self) {
        for node in self.cluster.reap_crashed().await {
            self.counts.crashes += 1;
            self.trace.log(format!(
                "FAULT crashed {node} (armed crash fired); {node} is down"
            ));
        }
    }

    pub(crate) fn restart(&mut self, node: &NodeId) {
        self.trace.log(format!("restart {node}"));
        if let Err(e) = self.cluster.restart(node) {
            self.observer.report(Kind::Restart, e);
        }
    }

    fn partition(&mut self) {
        let nodes = self.cluster.topology.nodes.clone();
        let cut = self.net.cut_links();
        match self.rng.range(0..10) {
            0..=3 => {
                // Cut a configured link (most of the time) or any pair.
                let edges: Vec<(NodeId, NodeId)> = self.cluster.topology.edges.iter().cloned().collect();
                let (a, b) = if !edges.is_empty() && self.rng.chance(0.8) {
                    self.rng.pick(&edges).clone()
                } else {
                    let a = self.rng.pick(&nodes).clone();
                    let b = self.rng.pick(&nodes).clone();
                    if a == b {
                        return;
                    }
                    link(&a, &b)
                };
                self.trace.log(format!("FAULT cut {a}-{b}"));
                self.counts.partitions += 1;
                self.net.set_link(&a, &b, false);
            }
            4..=5 => {
                let node = self.rng.pick(&nodes).clone();
                self.trace.log(format!("FAULT isolate {node}"));
                self.counts.partitions += 1;
                for other in nodes.iter().filter(|n| **n != node) {
                    self.net.set_link(&node, other, false);
                }
            }
            6..=8 if !cut.is_empty() => {
                let (a, b) = self.rng.pick(&cut).clone();
                self.trace.log(format!("heal {a}-{b}"));
                self.net.set_link(&a, &b, true);
            }
            _ => {
                self.trace.log("heal all links");
                self.net.heal_all();
            }
        }
    }

    /// A config reload on both ends of an edge; the configured graph stays connected.
    fn edit_topology(&mut self) {
        let topology = &self.cluster.topology;
        let removable = topology.removable_edges();
        let missing = topology.missing_edges();
        let remove = !removable.is_empty() && (missing.is_empty() || self.rng.chance(0.5));
        if remove {
            let (a, b) = self.rng.pick(&removable).clone();
            self.trace.log(format!("FAULT reconfigure: remove edge {a}-{b}"));
            self.cluster.set_edge(&a, &b, false);
        } else if !missing.is_empty() {
            let (a, b) = self.rng.pick(&missing).clone();
            self.trace.log(format!("FAULT reconfigure: add edge {a}-{b}"));
            self.cluster.set_edge(&a, &b, true);
        } else {
            return;
        }
        self.counts.topology_edits += 1;
    }
}
