//! The nodes of one run: real actors on real stores, each on its own simulated disk
//! ([`SimDisk`]: redb and the body segments in memory, with what is durable kept apart from what
//! is only written), linked by the simulated network. A crash is a power cut: the node drops off
//! the network, its disk loses what was not synced (keeping or tearing some of it, as the seed
//! says), and its actors die without flushing anything; a crash may also be armed to fire inside
//! the commit path (before the segment sync, between the segment's fdatasync and the store
//! commit, between the commit and the answer, or at the n-th sync). A restart opens the store
//! from what the disk kept. A wipe is a crash that loses the whole disk: the node comes back under
//! the same name on a fresh one and must get everything back from its peers. The topology is
//! edited the way a config reload would (`LocalNode::set_peers` on both ends of an edge).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailmesh_actors::channel::{ChannelConfig, ChannelStats};
use mailmesh_actors::commit_group::FlushMode;
use mailmesh_actors::context::Faults;
use mailmesh_actors::directory::{ActivationPolicy, GetDirectoryStats};
use mailmesh_actors::directory_sync::LINKS_KEY;
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::mailbox::{StoredAnnotation, StoredRecord};
use mailmesh_actors::mailbox_sync::PageBudget;
use mailmesh_actors::node::{LocalNode, NodeOptions, PeerOptions};
use mailmesh_actors::sim_disk::{CrashModel, CrashTrigger, SimDisk};
use mailmesh_actors::store::{decode, Store, Table};
use mailmesh_actors::sync_log::Tagged;
use mailmesh_protocol::ids::{AppendId, MailboxId, NodeId, Uid};
use mailmesh_protocol::records::{
    LinkGraph, MailboxEntry, MessageRecord, PrunedSet, UserSieve, UserSubscriptions,
};
use mailmesh_protocol::version::Version;
use tokio::time::Instant;

use crate::model::Register;
use crate::network::{link, SimNetwork};
use crate::replicated::holds;
use crate::rng::SimRng;
use crate::topology::Topology;
use crate::trace::Trace;

/// The spread of the nodes' wall clocks: each is off by up to half of it, either way. The nodes
/// are told it as their `max_clock_skew`.
const MAX_CLOCK_SKEW_MS: u64 = 4000;

/// The wall clock of the simulated world at virtual time zero.
pub const EPOCH_MS: i64 = 1_700_000_000_000;

/// How every node of a run is configured (drawn per seed).
#[derive(Clone, Copy, Debug)]
pub struct NodeSetup {
    pub activation: ActivationPolicy,
    pub channel: ChannelConfig,
    /// Deliberate engine faults (off unless a test switches them on).
    pub faults: Faults,
}

impl NodeSetup {
    /// Small pages, chunks and activation sets now and then, so paging, chunked bodies and
    /// actors being let go and reloaded are exercised, not only the easy paths.
    pub fn random(rng: &SimRng, faults: Faults) -> Self {
        let small = rng.chance(0.5);
        NodeSetup {
            activation: ActivationPolicy {
                max_active: if small { rng.range(1..4) as usize } else { 10_000 },
                idle_after: Duration::from_secs(rng.range(10..120)),
            },
            channel: ChannelConfig {
                parallel: rng.range(1..5) as usize,
                page: if small { rng.range(1..8) as usize } else { 5000 },
                // Large pages are cut by bytes here, so that cut is exercised too (a simulated
                // mailbox never weighs the megabytes of the defaults).
                page_bytes: if small { PageBudget::RECORD_BYTES } else { 8 * 1024 },
                page_body_bytes: if small { PageBudget::BODY_BYTES } else { 32 * 1024 },
                body_chunk: if small {
                    rng.range(16..200) as usize
                } else {
                    256 * 1024
                },
                shared_bodies: false,
            },
            faults,
        }
    }
}

/// What one node's disk holds durably: its mailbox entries (tombstones too) and its messages,
/// as records (expunged ones too) or compacted into a pruned set.
#[derive(Clone, Debug, Default)]
pub struct DurableContent {
    pub mailboxes: BTreeSet<MailboxId>,
    pub messages: BTreeSet<AppendId>,
    /// Every record's place: (mailbox, the uid the record holds, message).
    pub places: BTreeSet<(MailboxId, Uid, AppendId)>,
    pub pruned: BTreeMap<MailboxId, PrunedSet>,
    /// The expunged records (tombstones not compacted yet).
    pub expunged: BTreeSet<(MailboxId, AppendId)>,
    /// The mailboxes this node holds by its own entry and link graph (a location, a relay or a
    /// copy still being let go), as the engine decides it.
    pub held: BTreeSet<MailboxId>,
    /// The registers clients write, for the versions they hold.
    pub records: BTreeMap<AppendId, MessageRecord>,
    pub annotations: BTreeMap<(MailboxId, String), Version>,
    pub subscriptions: BTreeMap<String, UserSubscriptions>,
    pub sieve: BTreeMap<String, UserSieve>,
}

impl DurableContent {
    /// Whether this disk knows `aid` expunged from `mailbox` in a copy it holds: as an expunged
    /// record, or compacted into the mailbox's pruned set. A copy let go keeps its pruned set
    /// too (engine bug 39), but only for itself: a node outside the holders syncs the mailbox
    /// with nobody, so what it remembers reaches a holder only if the holders change to take it
    /// in again (simulator seed 148637: the only holders that knew an expunge were wiped one
    /// after the other, and the nodes that still remembered it had let their copies go).
    pub fn knows_expunged(&self, mailbox: MailboxId, aid: &AppendId) -> bool {
        self.held.contains(&mailbox)
            && (self.expunged.contains(&(mailbox, aid.clone()))
                || self.pruned.get(&mailbox).is_some_and(|p| p.contains(aid)))
    }

    /// The version `register` holds on this disk, if it holds it.
    pub fn version_of(&self, register: &Register) -> Option<Version> {
        match register {
            Register::Flag { message, flag, .. } => self
                .records
                .get(message)
                .and_then(|r| r.flags.get(flag))
                .map(|f| f.version.clone()),
            Register::Annotation { mailbox, entry } => {
                self.annotations.get(&(*mailbox, entry.clone())).cloned()
            }
            Register::Subscription { user, name } => self
                .subscriptions
                .get(user)
                .and_then(|s| s.names.get(name))
                .map(|s| s.version.clone()),
            Register::Script { user, name } => self
                .sieve
                .get(user)
                .and_then(|s| s.scripts.get(name))
                .map(|s| s.version.clone()),
            Register::ActiveScript { user } => self
                .sieve
                .get(user)
                .and_then(|s| s.active.as_ref())
                .map(|a| a.version.clone()),
        }
    }

    /// Whether the disk holds `aid` of `mailbox`, as a record or a compacted tombstone.
    pub fn holds(&self, mailbox: MailboxId, aid: &AppendId) -> bool {
        self.messages.contains(aid) || self.pruned.get(&mailbox).is_some_and(|p| p.contains(aid))
    }
}

pub struct SimCluster {
    pub net: SimNetwork,
    pub topology: Topology,
    running: BTreeMap<NodeId, LocalNode>,
    /// Each node's data dir on its disk.
    dirs: BTreeMap<NodeId, PathBuf>,
    disks: BTreeMap<NodeId, SimDisk>,
    /// How the disks lose unsynced state in a crash (a wiped node's new disk gets the same).
    crash_model: CrashModel,
    /// How many times each node was wiped.
    wipes: BTreeMap<NodeId, usize>,
    /// Each node's clock is off by a fixed amount, as real clocks are.
    skew_ms: BTreeMap<NodeId, i64>,
    setup: NodeSetup,
    rng: SimRng,
    trace: Trace,
    run_start: Instant,
}

impl SimCluster {
    /// Starts every node of `topology`. Must run inside the simulation's actix System.
    pub fn start(
        topology: Topology,
        net: SimNetwork,
        setup: NodeSetup,
        rng: SimRng,
        trace: Trace,
    ) -> Result<SimCluster, String> {
        let mut dirs = BTreeMap::new();
        let mut disks = BTreeMap::new();
        let mut skew_ms = BTreeMap::new();
        // How much of the unsynced state a crash keeps: none, some, most (per run).
        let model = CrashModel {
            keep_unsynced: *rng.pick(&[0.0, 0.2, 0.6]),
            tear_last: 0.5,
        };
        for node in &topology.nodes {
            dirs.insert(
                node.clone(),
                PathBuf::from("/var/lib/mailmesh").join(node.as_str()),
            );
            disks.insert(node.clone(), SimDisk::new(rng.u64(), model));
            skew_ms.insert(
                node.clone(),
                rng.range(0..MAX_CLOCK_SKEW_MS) as i64 - MAX_CLOCK_SKEW_MS as i64 / 2,
            );
        }
        trace.log(format!("disks {model:?}"));
        let mut cluster = SimCluster {
            net,
            topology,
            running: BTreeMap::new(),
            dirs,
            disks,
            crash_model: model,
            wipes: BTreeMap::new(),
            skew_ms,
            setup,
            rng,
            trace,
            run_start: Instant::now(),
        };
        for node in cluster.topology.nodes.clone() {
            cluster.boot(&node)?;
        }
        Ok(cluster)
    }

    fn peers_of(&self, node: &NodeId) -> Vec<PeerOptions> {
        self.topology
            .neighbours(node)
            .into_iter()
            .map(|peer| PeerOptions {
                node: peer,
                channel: self.setup.channel,
            })
            .collect()
    }

    /// The options `node` starts with, on its current disk, with the current topology's peers.
    fn options(&self, node: &NodeId) -> NodeOptions {
        let mut options = NodeOptions::new(node.clone(), &self.dirs[node]);
        options.disk = Arc::new(self.disks[node].clone());
        options.max_clock_skew = Duration::from_millis(MAX_CLOCK_SKEW_MS);
        options.flush_mode = FlushMode::Inline;
        options.activation = self.setup.activation;
        options.faults = self.setup.faults;
        options.peers = self.peers_of(node);
        options
    }

    fn boot(&mut self, node: &NodeId) -> Result<(), String> {
        // A new process on the disk the crashed one left.
        self.disks[node].restart();
        let options = self.options(node);
        // The clock goes on from where the simulated world is, so a restart does not turn the
        // node's wall clock back.
        let now = EPOCH_MS + self.run_start.elapsed().as_millis() as i64 + self.skew_ms[node];
        let env = Env::new(Arc::new(TokioClock::new(now)), Entropy::from_seed(self.rng.u64()));
        let local = LocalNode::start_replicating(options, env, Some(self.net.transport(node)))
            .map_err(|e| format!("node {node} does not start: {e}"))?;
        self.net.attach(node.clone(), local.inbound.clone());
        self.running.insert(node.clone(), local);
        Ok(())
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.running.keys().cloned().collect()
    }

    pub fn down(&self) -> Vec<NodeId> {
        self.topology
            .nodes
            .iter()
            .filter(|n| !self.running.contains_key(*n))
            .cloned()
            .collect()
    }

    pub fn node(&self, node: &NodeId) -> Option<&LocalNode> {
        self.running.get(node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, &LocalNode)> {
        self.running.iter()
    }

    /// Crashes a node: it drops off the network at once (what it had in flight is lost), its
    /// disk loses what was not synced (batches queued for the next group never get there), then
    /// its actors go, with every handle on the old disk dead. What it acknowledged must survive.
    pub async fn crash(&mut self, node: &NodeId) {
        self.net.detach(node);
        self.disks[node].crash();
        if let Some(local) = self.running.remove(node) {
            local.shutdown().await;
        }
    }

    /// Arms a crash inside a running node's commit path (or at its n-th sync from now).
    pub fn arm_crash(&mut self, node: &NodeId, trigger: CrashTrigger) {
        self.disks[node].arm(trigger);
    }

    /// Takes down every running node whose armed crash fired; returns them.
    pub async fn reap_crashed(&mut self) -> Vec<NodeId> {
        let fired: Vec<NodeId> = self
            .running
            .keys()
            .filter(|n| self.disks[*n].crashed())
            .cloned()
            .collect();
        for node in &fired {
            self.crash(node).await;
        }
        fired
    }

    /// Disarms every crash not yet fired (the faults stop).
    pub fn disarm_crashes(&mut self) {
        for disk in self.disks.values() {
            disk.disarm();
        }
    }

    /// Starts a crashed node again from its data dir, with the current topology's peers.
    pub fn restart(&mut self, node: &NodeId) -> Result<(), String> {
        self.boot(node)
    }

    /// Wipes a node: it crashes (if it runs) and loses its whole disk, then starts again under the
    /// same name on a fresh one, with the current topology's peers, holding nothing.
    pub async fn wipe(&mut self, node: &NodeId) -> Result<(), String> {
        self.crash(node).await;
        let disk = SimDisk::new(self.rng.u64(), self.crash_model);
        self.disks.insert(node.clone(), disk);
        *self.wipes.entry(node.clone()).or_default() += 1;
        // As a real node does, the new store waits out the clock skew before it starts (it
        // must not mint what the lost store minted: `LocalNode::fresh_store_wait`).
        let wait = LocalNode::fresh_store_wait(&self.options(node))
            .map_err(|e| format!("node {node}: cannot open its new store: {e}"))?;
        tokio::time::sleep(wait).await;
        self.boot(node)
    }

    /// How many times `node` was wiped: its store's incarnation, as far as the run knows.
    pub fn incarnation(&self, node: &NodeId) -> usize {
        self.wipes.get(node).copied().unwrap_or(0)
    }

    /// What `node`'s disk holds durably now (what it would keep whatever happened next), read from
    /// an image of its disk: the node, running or down, is not touched. A disk whose store does
    /// not open holds nothing.
    pub fn durable_content(&self, node: &NodeId) -> DurableContent {
        let mut content = DurableContent::default();
        let image = Arc::new(self.disks[node].durable_image());
        let Ok(store) = Store::open_on(image, &self.dirs[node], node, None) else {
            return content;
        };
        let mailbox_of = |k: &[u8]| {
            k.get(..16)
                .and_then(|b| b.try_into().ok())
                .map(MailboxId::from_bytes)
        };
        let links: LinkGraph = store
            .get::<Tagged<LinkGraph>>(Table::Peers, LINKS_KEY)
            .ok()
            .flatten()
            .map(|t| t.item)
            .unwrap_or_default();
        let _ = store.scan_prefix(Table::Mailboxes, &[], None, |k, v| {
            content.mailboxes.extend(mailbox_of(k));
            if let Ok(entry) = decode::<Tagged<MailboxEntry>>(v, "mailbox entry") {
                if !entry.item.is_deleted() && holds(&links, &entry.item, node) {
                    content.held.insert(entry.item.id);
                }
            }
            Ok(true)
        });
        let _ = store.scan_prefix(Table::Messages, &[], None, |k, v| {
            if let (Some(id), Ok(stored)) = (mailbox_of(k), decode::<StoredRecord>(v, "record")) {
                let aid = stored.record.append_id.clone();
                content.places.insert((id, stored.record.uid.value, aid.clone()));
                if stored.record.is_expunged() {
                    content.expunged.insert((id, aid.clone()));
                }
                content.messages.insert(aid.clone());
                content.records.insert(aid, stored.record);
            }
            Ok(true)
        });
        let _ = store.scan_prefix(Table::Annotations, &[], None, |k, v| {
            let entry = k.get(16..).map(|e| String::from_utf8_lossy(e).into_owned());
            let stored = decode::<StoredAnnotation>(v, "annotation");
            if let (Some(id), Some(entry), Ok(stored)) = (mailbox_of(k), entry, stored) {
                content
                    .annotations
                    .insert((id, entry), stored.annotation.0.version);
            }
            Ok(true)
        });
        let _ = store.scan_prefix(Table::Subscriptions, &[], None, |k, v| {
            if let Ok(t) = decode::<Tagged<UserSubscriptions>>(v, "subscriptions") {
                content
                    .subscriptions
                    .insert(String::from_utf8_lossy(k).into_owned(), t.item);
            }
            Ok(true)
        });
        let _ = store.scan_prefix(Table::Sieve, &[], None, |k, v| {
            if let Ok(t) = decode::<Tagged<UserSieve>>(v, "sieve") {
                content
                    .sieve
                    .insert(String::from_utf8_lossy(k).into_owned(), t.item);
            }
            Ok(true)
        });
        let _ = store.scan_prefix(Table::Pruned, &[], None, |k, v| {
            if let (Some(id), Ok(set)) = (mailbox_of(k), decode::<PrunedSet>(v, "pruned set")) {
                content.pruned.insert(id, set);
            }
            Ok(true)
        });
        content
    }

    /// Adds or removes the edge a-b as a config reload on both ends would. An end that is down
    /// picks the change up when it restarts.
    pub fn set_edge(&mut self, a: &NodeId, b: &NodeId, present: bool) {
        if present {
            self.topology.edges.insert(link(a, b));
        } else {
            self.topology.edges.remove(&link(a, b));
        }
        for end in [a, b] {
            let peers = self.peers_of(end);
            if let Some(local) = self.running.get_mut(end) {
                local.set_peers(peers);
            }
        }
    }

    /// Every channel's stats, by (node, peer).
    pub async fn channel_stats(&self) -> BTreeMap<(NodeId, NodeId), ChannelStats> {
        let mut out = BTreeMap::new();
        for (node, local) in &self.running {
            for (peer, stats) in local.channel_stats().await {
                out.insert((node.clone(), peer), stats);
            }
        }
        out
    }

    /// Waits (in virtual time) until every channel is drained with its link up, nothing is in
    /// flight and no request has crossed the network for a while. Meant for a healed network with
    /// every node up: a channel whose link failed during the faults says Hello again after its
    /// backoff even with nothing to send, so quiet means every link is back. Returns the virtual
    /// time it took, or what was still busy at `limit`.
    pub async fn settle(&self, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = self.net.total_requests();
        let mut quiet_rounds = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let stats = self.channel_stats().await;
            let mut busy: Vec<String> = stats
                .iter()
                .filter(|(_, s)| s.pending > 0 || s.running > 0 || !s.link_up)
                .map(|((node, peer), s)| format!("{node}->{peer} {s:?}"))
                .collect();
            // A node letting a copy go still has an entry to write once its log drains.
            for (node, local) in &self.running {
                if let Ok(d) = local.directory.send(GetDirectoryStats).await {
                    for (id, waits) in &d.releasing_waits {
                        let waits: Vec<String> = waits.iter().map(|p| p.to_string()).collect();
                        busy.push(format!(
                            "{node} letting {} go (log rows for [{}])",
                            crate::network::short_id(id.0),
                            waits.join(",")
                        ));
                    }
                }
            }
            let now = self.net.total_requests();
            if busy.is_empty() && self.net.in_flight() == 0 && now == last {
                quiet_rounds += 1;
                if quiet_rounds >= 4 {
                    return Ok(start.elapsed());
                }
            } else {
                quiet_rounds = 0;
            }
            last = now;
            if start.elapsed() >= limit {
                return Err(format!(
                    "not quiescent after {limit:?}: {} requests in flight; busy channels: {}",
                    self.net.in_flight(),
                    busy.join("; ")
                ));
            }
        }
    }

    /// Stops every node (the end of a run): actors with timers must stop before the System
    /// goes away.
    pub async fn shutdown(mut self) {
        for node in self.running() {
            self.net.detach(&node);
            if let Some(local) = self.running.remove(&node) {
                local.shutdown().await;
            }
        }
        self.trace.log("all nodes stopped");
    }
}
