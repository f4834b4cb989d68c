//! The invariant checks (DESIGN.md, "Deterministic simulation").
//!
//! Throughout the run, on sampled nodes:
//! - UID safety: a node never shows one uid of one uidvalidity as two different messages;
//! - monotonic: a node's UIDNEXT and HIGHESTMODSEQ of a mailbox never go down, restarts included;
//! - tombstones: a mailbox a node saw deleted is never listed there again, and a message a node
//!   holds expunged is never shown there again.
//!
//! Once the network has healed and gone quiet ([`Observer::final_checks`]):
//! - convergence: every node shows the same mailboxes, messages (uid, AppendId, flags),
//!   annotations, subscriptions and sieve scripts;
//! - no loss: every acknowledged append that no client may have expunged or moved, in a mailbox no
//!   client may have deleted, is visible on every node with its body (a record still hidden by an
//!   unresolved uid conflict counts as lost: the primary has been reachable);
//! - a uid that two nodes ever showed as two different messages shows neither now (the primary
//!   promoted both);
//! - no mailbox is gone that no client deleted; tombstones seen anywhere hold everywhere.

use std::collections::{BTreeMap, BTreeSet};

use mailmesh_actors::mailbox::FetchBody;
use mailmesh_actors::node::LocalNode;
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::{AppendId, Guid, MailboxId, ModSeq, NodeId, Uid, UidValidity};

use crate::cluster::SimCluster;
use crate::model::{Model, Shown};
use crate::network::short_id;
use crate::replicated::{self, read_replicated};
use crate::snapshot::{dump_snapshots, dump_sync_state, open_by_id, snapshot};
pub use crate::snapshot::{MailboxSnapshot, NodeSnapshot};
use crate::trace::Trace;
pub use crate::violation::{Kind, Violation};

/// One mailbox as every replica must show it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ReplicaMailbox {
    user: String,
    name: String,
    uidvalidity: UidValidity,
    /// (uid, message, flags), in uid order.
    messages: Vec<(Uid, AppendId, Vec<String>)>,
    annotations: Vec<(String, Vec<u8>)>,
}

/// The part of a snapshot every replica must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ReplicaView {
    mailboxes: BTreeMap<MailboxId, ReplicaMailbox>,
    subscriptions: BTreeMap<String, Vec<String>>,
    scripts: BTreeMap<String, Vec<(String, bool, Vec<u8>)>>,
}

impl NodeSnapshot {
    fn replica_view(&self) -> ReplicaView {
        ReplicaView {
            mailboxes: self
                .mailboxes
                .iter()
                .map(|(id, m)| {
                    let messages = m
                        .visible
                        .iter()
                        .map(|v| {
                            let flags = v.flags.iter().map(|f| f.to_string()).collect();
                            (v.uid, v.append_id.clone(), flags)
                        })
                        .collect();
                    let value = ReplicaMailbox {
                        user: m.user.clone(),
                        name: m.name.clone(),
                        uidvalidity: m.uidvalidity,
                        messages,
                        annotations: m.annotations.clone(),
                    };
                    (*id, value)
                })
                .collect(),
            subscriptions: self.subscriptions.clone(),
            scripts: self.scripts.clone(),
        }
    }
}

/// What the checks remember of one node between samples.
#[derive(Default)]
struct NodeMemory {
    shown: BTreeMap<(MailboxId, UidValidity, Uid), AppendId>,
    high: BTreeMap<MailboxId, (Uid, ModSeq)>,
    listed: BTreeSet<MailboxId>,
    deleted: BTreeSet<MailboxId>,
    /// Expunges seen in copies the node held: promises for every node.
    expunged: BTreeSet<(MailboxId, AppendId)>,
    /// Expunges seen only in the pruned set of a copy the node let go: a promise for this node
    /// alone (held again, it refuses the message, engine bug 39). It syncs that copy with
    /// nobody, so no other node learns them from it (seed 148637).
    expunged_let_go: BTreeSet<(MailboxId, AppendId)>,
}

pub struct Observer {
    nodes: BTreeMap<NodeId, NodeMemory>,
    /// Every message any node ever showed at each uid.
    global_shown: BTreeMap<(MailboxId, UidValidity, Uid), BTreeSet<AppendId>>,
    pub violations: Vec<Violation>,
    /// Problems already reported: one problem seen by many samples is reported once.
    reported: BTreeSet<String>,
    pub samples: u64,
    trace: Trace,
    /// Mailboxes wiped nodes had listed before their wipes (they existed, whatever the node
    /// shows now).
    listed_before_wipes: BTreeSet<MailboxId>,
}

impl Observer {
    pub fn new(trace: Trace) -> Self {
        Observer {
            nodes: BTreeMap::new(),
            global_shown: BTreeMap::new(),
            violations: Vec::new(),
            reported: BTreeSet::new(),
            samples: 0,
            trace,
            listed_before_wipes: BTreeSet::new(),
        }
    }

    /// A node lost its whole store: what it showed before (uids, counters, tombstones) is no
    /// promise any more. Messages `lost` with it (on no other disk) are forgotten wherever any
    /// node showed them, and a message shown at a uid by no node still remembered (this one and
    /// nodes wiped before) where no other disk holds it (`survives` says which places did) is
    /// forgotten there: that uid assignment (an append, or a promotion by the primary) was lost
    /// with the stores, and the uid may go to another message. Likewise an expunge no other disk
    /// knows in a copy it holds (`expunge_known`: an expunged record or a compacted range) is no
    /// promise to other nodes any more: a stale copy may bring the message back, at a fresh uid.
    pub fn node_wiped(
        &mut self,
        node: &NodeId,
        lost: &BTreeSet<AppendId>,
        survives: impl Fn(MailboxId, Uid, &AppendId) -> bool,
        expunge_known: impl Fn(MailboxId, &AppendId) -> bool,
        holds: impl Fn(&NodeId, MailboxId) -> bool,
    ) {
        for aids in self.global_shown.values_mut() {
            aids.retain(|aid| !lost.contains(aid));
        }
        if let Some(memory) = self.nodes.remove(node) {
            self.listed_before_wipes.extend(memory.listed);
        }
        // Every assignment no running memory shows is judged again, not only those this node
        // showed: one shown by a node wiped earlier was kept because this node's disk still held
        // it (seed 4840), and that disk is gone now.
        // A node that let its copy go passes on nothing of it, so an expunge it saw may have
        // lived in held copies on the wiped disks alone: the holders its copy was let go to
        // (seed 20689: the source messages of a MOVE came back from a copy down since before the
        // move, once the only holder of the moved copies and of the expunges was wiped; the
        // moved copies were lost with it, so bringing the sources back is all that is left of
        // those messages). What such a node still remembers binds only itself
        // (`expunged_let_go`, seed 148637).
        for memory in self.nodes.values_mut() {
            memory.expunged.retain(|(id, aid)| expunge_known(*id, aid));
        }
        // A running node's memory keeps an assignment for everyone only while that node holds
        // the mailbox: a copy let go keeps its counters and retired uids for itself (held again,
        // it shows nothing else at a uid it showed), but syncs with nobody, so once every holder
        // that knew the assignment is wiped, the primary may give the uid to another message
        // (seed 25779 with --steps 300: the only location was wiped three times, and the node
        // that had shown the message at uid 1 had let its copy go before).
        let nodes = &self.nodes;
        for (key, aids) in self.global_shown.iter_mut() {
            let (id, _, uid) = *key;
            aids.retain(|aid| {
                nodes
                    .iter()
                    .any(|(n, m)| m.shown.get(key) == Some(aid) && holds(n, id))
                    || survives(id, uid, aid)
            });
        }
    }

    /// Records a violation once per `key`.
    fn violation(&mut self, kind: Kind, key: String, what: String) {
        if self.reported.insert(key) {
            let v = Violation {
                at_ms: self.trace.elapsed().as_millis(),
                kind,
                what,
            };
            self.trace.log(format!("VIOLATION {v}"));
            self.violations.push(v);
        }
    }

    /// Reports a problem outside the per-node checks (the run could not settle, restart, ...).
    pub fn report(&mut self, kind: Kind, what: String) {
        self.violation(kind, what.clone(), what);
    }

    /// Samples one node and checks the running invariants against what it showed before.
    pub async fn sample(&mut self, node: &NodeId, local: &LocalNode, full: bool) -> NodeSnapshot {
        self.samples += 1;
        let snap = snapshot(local, full).await;
        let now_listed: BTreeSet<MailboxId> = snap.mailboxes.keys().copied().collect();
        // A mailbox listed before and not now: deleted (confirmed by the node), or merely
        // skipped because it was deleted while being read, which is the same.
        let before: Vec<MailboxId> = {
            let memory = self.nodes.entry(node.clone()).or_default();
            memory.listed.difference(&now_listed).copied().collect()
        };
        for id in before {
            if let Err(Some(MailError::MailboxDeleted(_))) = open_by_id(local, id).await {
                self.nodes.get_mut(node).expect("seen").deleted.insert(id);
            }
        }
        let mut found = Vec::new();
        {
            let memory = self.nodes.get_mut(node).expect("seen");
            for id in &now_listed {
                if memory.deleted.contains(id) {
                    found.push((
                        Kind::MailboxBack,
                        format!("back {node} {id}"),
                        format!(
                            "mailbox {} was deleted on {node} and is listed there again",
                            short_id(id.0)
                        ),
                    ));
                }
            }
            memory.listed.extend(now_listed.iter().copied());
            for (id, mb) in &snap.mailboxes {
                let label = format!("{}/{} ({})", mb.user, mb.name, short_id(id.0));
                // UIDNEXT and HIGHESTMODSEQ are judged while held, against everything this node
                // showed before, a copy it let go and holds again included (a released copy keeps
                // its counters, engine bug 23).
                let high = memory.high.entry(*id).or_insert((Uid(0), ModSeq::ZERO));
                if mb.held && (mb.state.uidnext < high.0 || mb.state.highestmodseq < high.1) {
                    found.push((
                        Kind::WentDown,
                        format!(
                            "down {node} {id} {:?}",
                            (mb.state.uidnext, mb.state.highestmodseq)
                        ),
                        format!(
                            "{label} on {node}: UIDNEXT/HIGHESTMODSEQ went down from {}/{} to {}/{}",
                            high.0, high.1, mb.state.uidnext, mb.state.highestmodseq
                        ),
                    ));
                }
                *high = (high.0.max(mb.state.uidnext), high.1.max(mb.state.highestmodseq));
                let mut aids_seen = BTreeSet::new();
                for view in &mb.visible {
                    let key = (*id, mb.uidvalidity, view.uid);
                    match memory.shown.get(&key) {
                        Some(aid) if *aid != view.append_id => found.push((
                            Kind::UidReused,
                            format!("uid {node} {key:?} {}", view.append_id),
                            format!(
                                "{label} on {node}: uid {} shown as {aid} and later as {}",
                                view.uid, view.append_id
                            ),
                        )),
                        Some(_) => {}
                        None => {
                            memory.shown.insert(key, view.append_id.clone());
                        }
                    }
                    self.global_shown
                        .entry(key)
                        .or_default()
                        .insert(view.append_id.clone());
                    if !aids_seen.insert(view.append_id.clone()) {
                        found.push((
                            Kind::ShownTwice,
                            format!("twice {node} {id} {}", view.append_id),
                            format!("{label} on {node}: {} shown at two uids", view.append_id),
                        ));
                    }
                    let key = (*id, view.append_id.clone());
                    if memory.expunged.contains(&key) || memory.expunged_let_go.contains(&key) {
                        found.push((
                            Kind::MessageBack,
                            format!("unexpunged {node} {id} {}", view.append_id),
                            format!(
                                "{label} on {node}: {} was expunged and is shown again at uid {}",
                                view.append_id, view.uid
                            ),
                        ));
                    }
                }
                let expunged = if mb.held {
                    &mut memory.expunged
                } else {
                    &mut memory.expunged_let_go
                };
                for r in &mb.records {
                    if r.record.is_expunged() {
                        expunged.insert((*id, r.record.append_id.clone()));
                    }
                }
                expunged.extend(mb.pruned.iter().map(|aid| (*id, aid)));
            }
        }
        for (kind, key, what) in found {
            self.violation(kind, key, what);
        }
        snap
    }

    /// UID safety on what clients were shown (every FETCH, APPEND and STORE answer): on each node
    /// a uid of one uidvalidity means one message for ever, and one answer never shows a message
    /// at two uids.
    pub fn clients_saw(&mut self, shown: Vec<Shown>) {
        let mut found = Vec::new();
        for seen in shown {
            let node = &seen.node;
            let id = seen.mailbox;
            let memory = self.nodes.entry(node.clone()).or_default();
            let mut aids_seen = BTreeSet::new();
            for (uid, aid) in &seen.messages {
                let key = (id, seen.uidvalidity, *uid);
                match memory.shown.get(&key) {
                    Some(before) if before != aid => found.push((
                        Kind::UidReused,
                        format!("uid {node} {key:?} {aid}"),
                        format!(
                            "mailbox {} on {node}: a client was shown uid {uid} as {before} and later as {aid}",
                            short_id(id.0)
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        memory.shown.insert(key, aid.clone());
                    }
                }
                self.global_shown.entry(key).or_default().insert(aid.clone());
                if !aids_seen.insert(aid.clone()) {
                    found.push((
                        Kind::ShownTwice,
                        format!("twice {node} {id} {aid}"),
                        format!(
                            "mailbox {} on {node}: a client was shown {aid} at two uids",
                            short_id(id.0)
                        ),
                    ));
                }
            }
        }
        for (kind, key, what) in found {
            self.violation(kind, key, what);
        }
    }

    /// The checks once the network has healed and gone quiet, on every node. With `dump`, every
    /// node's records go into the trace first.
    pub async fn final_checks(&mut self, cluster: &SimCluster, model: &Model, dump: bool) {
        let mut snaps: BTreeMap<NodeId, NodeSnapshot> = BTreeMap::new();
        for (node, local) in cluster.nodes() {
            let snap = self.sample(node, local, true).await;
            snaps.insert(node.clone(), snap);
        }
        if dump {
            dump_snapshots(&snaps, &self.trace);
            dump_sync_state(cluster, &self.trace);
        }
        self.check_convergence(&snaps);
        self.check_promoted_conflicts(&snaps);
        let gone = self.check_gone_mailboxes(&snaps, model);
        self.check_no_loss(cluster, &snaps, model, &gone).await;
        self.check_tombstones_everywhere(&snaps);
        self.check_replicated_state(cluster, model).await;
    }

    /// Every node's whole replicated state against every other node's (see [`crate::replicated`]),
    /// and every visible message's body on every node.
    async fn check_replicated_state(&mut self, cluster: &SimCluster, model: &Model) {
        let mut states = Vec::new();
        for (node, local) in cluster.nodes() {
            states.push((node.clone(), read_replicated(local).await));
        }
        for (node, state) in &states {
            // A quiet cluster has no copy left half let go: every node that was leaving a
            // mailbox has handed its changes on and said so.
            for (id, entry) in &state.entries {
                let leaving: Vec<String> = entry.leaving_nodes().map(|n| n.to_string()).collect();
                if !entry.is_deleted() && !leaving.is_empty() {
                    self.violation(
                        Kind::Diverged,
                        format!("leaving {node} {id}"),
                        format!(
                            "{node}: mailbox {} still has {} letting their copy go",
                            short_id(id.0),
                            leaving.join(",")
                        ),
                    );
                }
            }
            // Every node knows the configured topology: relays are computed from it.
            let links = state.links.links();
            if links != cluster.topology.edges {
                self.violation(
                    Kind::Diverged,
                    format!("links {node}"),
                    format!(
                        "{node} knows the links {links:?}, the cluster is configured with {:?}",
                        cluster.topology.edges
                    ),
                );
            }
            for (id, why) in &state.unreadable {
                self.violation(
                    Kind::Diverged,
                    format!("unreadable {node} {id}"),
                    format!(
                        "{node} holds mailbox {} but cannot read it: {why}",
                        short_id(id.0)
                    ),
                );
            }
            for bad in &state.bad_bodies {
                self.violation(Kind::WrongBody, format!("body {bad}"), format!("body of {bad}"));
            }
            for line in &state.index_disagreements {
                self.violation(
                    Kind::IndexDisagrees,
                    format!("index {line}"),
                    format!("uid index of {line}"),
                );
            }
            for (i, what) in replicated::lost_writes(&model.writes, node, state) {
                if model.writes_lost_in_wipes.contains(&i) {
                    continue;
                }
                self.violation(Kind::LostWrite, format!("lost write {i}"), what);
            }
        }
        // Every pair: a mailbox held by only some nodes is compared among its holders.
        for (i, (node, state)) in states.iter().enumerate() {
            let difference = states[..i]
                .iter()
                .find_map(|(other, earlier)| replicated::first_difference(other, earlier, node, state));
            if let Some(what) = difference {
                self.violation(
                    Kind::Diverged,
                    format!("diverged {node}"),
                    format!("replicated state differs: {what}"),
                );
            }
        }
    }

    fn check_convergence(&mut self, snaps: &BTreeMap<NodeId, NodeSnapshot>) {
        let mut views = snaps.iter().map(|(n, s)| (n, s.replica_view(), s));
        let Some((first, reference, first_snap)) = views.next() else {
            return;
        };
        for (node, mut view, snap) in views {
            // Messages and annotations are compared where both nodes hold the mailbox.
            let mut reference = reference.clone();
            for (id, mb) in reference.mailboxes.iter_mut() {
                let held = |s: &NodeSnapshot| s.mailboxes.get(id).is_none_or(|m| m.held);
                if !held(first_snap) || !held(snap) {
                    mb.messages.clear();
                    mb.annotations.clear();
                    if let Some(other) = view.mailboxes.get_mut(id) {
                        other.messages.clear();
                        other.annotations.clear();
                    }
                }
            }
            if view == reference {
                continue;
            }
            let (kind, what) = describe_difference(first, &reference, node, &view);
            self.violation(kind, format!("converge {node}"), format!("not converged: {what}"));
        }
    }

    fn check_promoted_conflicts(&mut self, snaps: &BTreeMap<NodeId, NodeSnapshot>) {
        let conflicts: Vec<((MailboxId, UidValidity, Uid), BTreeSet<AppendId>)> = self
            .global_shown
            .iter()
            .filter(|(_, aids)| aids.len() > 1)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((id, uidvalidity, uid), aids) in conflicts {
            for (node, snap) in snaps {
                // A node that does not hold the mailbox shows what its copy held when it let go
                // (or nothing): no primary's decision reaches it, by design.
                let Some(mb) = snap
                    .mailboxes
                    .get(&id)
                    .filter(|m| m.uidvalidity == uidvalidity && m.held)
                else {
                    continue;
                };
                if let Some(view) = mb.visible.iter().find(|v| v.uid == uid) {
                    let shown: Vec<String> = aids.iter().map(|a| a.to_string()).collect();
                    self.violation(
                        Kind::UidConflictKept,
                        format!("kept {id} {uid}"),
                        format!(
                            "mailbox {} uid {uid} was shown as {} on different nodes, and {node} still shows {} there",
                            short_id(id.0),
                            shown.join(" and "),
                            view.append_id
                        ),
                    );
                }
            }
        }
    }

    /// Mailboxes that existed and are listed nowhere now. Returns them.
    fn check_gone_mailboxes(
        &mut self,
        snaps: &BTreeMap<NodeId, NodeSnapshot>,
        model: &Model,
    ) -> BTreeSet<MailboxId> {
        // Every mailbox known to have existed: seen listed by a sample, or named by a client's
        // append or delete (a mailbox may live and die between two samples).
        let ever: BTreeSet<MailboxId> = self
            .nodes
            .values()
            .flat_map(|m| m.listed.iter().copied())
            .chain(model.appends.values().map(|a| a.mailbox))
            .chain(model.deleted.iter().copied())
            .chain(self.listed_before_wipes.iter().copied())
            .collect();
        let now: BTreeSet<MailboxId> = snaps.values().flat_map(|s| s.mailboxes.keys().copied()).collect();
        let gone: BTreeSet<MailboxId> = ever.difference(&now).copied().collect();
        for id in &gone {
            let excused = model.deleted.contains(id) || model.mailboxes_lost_in_wipes.contains(id);
            if !excused && model.uncertain_deletes == 0 {
                self.violation(
                    Kind::MailboxGone,
                    format!("gone {id}"),
                    format!("mailbox {} is gone though no client deleted it", short_id(id.0)),
                );
            }
        }
        gone
    }

    async fn check_no_loss(
        &mut self,
        cluster: &SimCluster,
        snaps: &BTreeMap<NodeId, NodeSnapshot>,
        model: &Model,
        gone: &BTreeSet<MailboxId>,
    ) {
        for (aid, acked) in &model.appends {
            if gone.contains(&acked.mailbox) || model.lost_in_wipes.contains(aid) {
                continue;
            }
            let label = format!(
                "{aid} (appended on {} to {})",
                acked.node,
                short_id(acked.mailbox.0)
            );
            for (node, snap) in snaps {
                let Some(mb) = snap.mailboxes.get(&acked.mailbox) else {
                    self.violation(
                        Kind::Lost,
                        format!("nombox {node} {}", acked.mailbox),
                        format!(
                            "{node} does not show mailbox {}, which holds acknowledged appends",
                            short_id(acked.mailbox.0)
                        ),
                    );
                    continue;
                };
                if !mb.held {
                    // Not among the locations: its copy is gone or going, by design.
                    continue;
                }
                if let Some(view) = mb.visible.iter().find(|v| &v.append_id == aid) {
                    if view.guid != acked.guid {
                        self.violation(
                            Kind::WrongBody,
                            format!("guid {node} {aid}"),
                            format!("{label}: {node} shows it with another body"),
                        );
                    } else if let Some(local) = cluster.node(node) {
                        self.check_body(node, local, acked.mailbox, view.uid, acked.guid, &label)
                            .await;
                    }
                    continue;
                }
                let record = mb.records.iter().find(|r| &r.record.append_id == aid);
                let (kind, problem) = match record {
                    None if mb.pruned.contains(aid) => {
                        if model.expunge_possible(acked.mailbox, aid) {
                            continue;
                        }
                        (
                            Kind::Unrequested,
                            format!("{label}: expunged and compacted on {node}, though no client expunged or moved it"),
                        )
                    }
                    // Expunged and compacted elsewhere: what is missing here is the tombstone.
                    None if compacted_elsewhere(snaps, acked.mailbox, aid) => {
                        if !model.expunge_possible(acked.mailbox, aid) {
                            (
                                Kind::Unrequested,
                                format!("{label}: expunged and compacted, though no client expunged or moved it"),
                            )
                        } else {
                            (
                                Kind::NoTombstone,
                                format!("{label}: expunged and compacted elsewhere; {node} holds neither the message nor its tombstone"),
                            )
                        }
                    }
                    // Known expunged only by copies let go (kept with their counters' floor):
                    // what such a node remembers serves it if it holds the mailbox again, and
                    // reaches a holder only over a direct link; nodes without a copy between
                    // carry none of it. The message was expunged by a client: nothing is lost.
                    None if compacted_off_the_holders(snaps, acked.mailbox, aid)
                        && model.expunge_possible(acked.mailbox, aid) =>
                    {
                        continue
                    }
                    None => (Kind::Lost, format!("{label}: lost on {node}")),
                    Some(r) => match &r.record.expunged {
                        Some(v) if model.expunge_justified(acked.mailbox, aid, r.record.uid.value, &v.node) => continue,
                        Some(v) => (
                            Kind::Unrequested,
                            format!("{label}: expunged on {node} by {v}, though no client there expunged or moved it"),
                        ),
                        None if r.hidden => (
                            Kind::StillHidden,
                            format!("{label}: still hidden on {node} by an unresolved uid conflict"),
                        ),
                        None => (Kind::Lost, format!("{label}: held but not shown on {node}")),
                    },
                };
                self.violation(kind, format!("loss {node} {aid}"), problem);
            }
        }
    }

    async fn check_body(
        &mut self,
        node: &NodeId,
        local: &LocalNode,
        id: MailboxId,
        uid: Uid,
        guid: Guid,
        label: &str,
    ) {
        let body = match open_by_id(local, id).await {
            Ok(mb) => mb.send(FetchBody { uid }).await,
            Err(_) => return,
        };
        let problem = match body {
            Ok(Ok(b)) if Guid::of(&b) == guid => return,
            Ok(Ok(_)) => format!("{label}: {node} returns another body"),
            Ok(Err(e)) => format!("{label}: body unreadable on {node}: {e}"),
            Err(_) => return,
        };
        self.violation(Kind::WrongBody, format!("body {node} {label}"), problem);
    }

    fn check_tombstones_everywhere(&mut self, snaps: &BTreeMap<NodeId, NodeSnapshot>) {
        let deleted: BTreeSet<MailboxId> = self
            .nodes
            .values()
            .flat_map(|m| m.deleted.iter().copied())
            .collect();
        let expunged: BTreeSet<(MailboxId, AppendId)> = self
            .nodes
            .values()
            .flat_map(|m| m.expunged.iter().cloned())
            .collect();
        let mut found = Vec::new();
        for (node, snap) in snaps {
            for (id, mb) in &snap.mailboxes {
                if deleted.contains(id) {
                    found.push((
                        Kind::MailboxBack,
                        format!("back {node} {id}"),
                        format!("mailbox {} was deleted and {node} lists it", short_id(id.0)),
                    ));
                }
                for v in &mb.visible {
                    if expunged.contains(&(*id, v.append_id.clone())) {
                        found.push((
                            Kind::MessageBack,
                            format!("unexpunged {node} {id} {}", v.append_id),
                            format!(
                                "{} was expunged and {node} shows it in {}",
                                v.append_id,
                                short_id(id.0)
                            ),
                        ));
                    }
                }
            }
        }
        for (kind, key, what) in found {
            self.violation(kind, key, what);
        }
    }
}

/// Whether some node holds `aid` of `mailbox` in its compacted (expunged) set.
/// Whether a node holding the mailbox compacted `aid` away as expunged.
fn compacted_elsewhere(snaps: &BTreeMap<NodeId, NodeSnapshot>, mailbox: MailboxId, aid: &AppendId) -> bool {
    snaps
        .values()
        .filter_map(|s| s.mailboxes.get(&mailbox))
        .any(|m| m.held && m.pruned.contains(aid))
}

/// Whether a node that let its copy go keeps `aid` as expunged.
fn compacted_off_the_holders(
    snaps: &BTreeMap<NodeId, NodeSnapshot>,
    mailbox: MailboxId,
    aid: &AppendId,
) -> bool {
    snaps
        .values()
        .filter_map(|s| s.mailboxes.get(&mailbox))
        .any(|m| !m.held && m.pruned.contains(aid))
}

/// Names the first thing two replica views disagree on, and whether only annotations differ.
fn describe_difference(a: &NodeId, va: &ReplicaView, b: &NodeId, vb: &ReplicaView) -> (Kind, String) {
    let without_annotations = |v: &ReplicaView| {
        let mut v = v.clone();
        for m in v.mailboxes.values_mut() {
            m.annotations.clear();
        }
        v
    };
    let kind = if without_annotations(va) == without_annotations(vb) {
        Kind::AnnotationsDiverged
    } else {
        Kind::NotConverged
    };
    (kind, first_difference(a, va, b, vb))
}

fn first_difference(a: &NodeId, va: &ReplicaView, b: &NodeId, vb: &ReplicaView) -> String {
    let ids: BTreeSet<&MailboxId> = va.mailboxes.keys().chain(vb.mailboxes.keys()).collect();
    for id in ids {
        let (x, y) = (va.mailboxes.get(id), vb.mailboxes.get(id));
        if x == y {
            continue;
        }
        let mailbox = short_id(id.0);
        return match (x, y) {
            (Some(_), None) => format!("{a} shows mailbox {mailbox}, {b} does not"),
            (None, Some(_)) => format!("{b} shows mailbox {mailbox}, {a} does not"),
            (Some(x), Some(y)) if (&x.user, &x.name, x.uidvalidity) != (&y.user, &y.name, y.uidvalidity) => {
                format!(
                    "mailbox {mailbox} is {}/{} on {a} and {}/{} on {b}",
                    x.user, x.name, y.user, y.name
                )
            }
            (Some(x), Some(y)) if x.messages != y.messages => {
                let i = x
                    .messages
                    .iter()
                    .zip(&y.messages)
                    .position(|(m, n)| m != n)
                    .unwrap_or(x.messages.len().min(y.messages.len()));
                format!(
                    "mailbox {mailbox} ({}/{}): {} messages on {a}, {} on {b}; first difference: {:?} on {a}, {:?} on {b}",
                    x.user,
                    x.name,
                    x.messages.len(),
                    y.messages.len(),
                    x.messages.get(i),
                    y.messages.get(i)
                )
            }
            (Some(x), Some(y)) => format!(
                "mailbox {mailbox}: annotations {:?} on {a}, {:?} on {b}",
                x.annotations, y.annotations
            ),
            (None, None) => unreachable!("differing entries"),
        };
    }
    if va.subscriptions != vb.subscriptions {
        return format!(
            "subscriptions {:?} on {a}, {:?} on {b}",
            va.subscriptions, vb.subscriptions
        );
    }
    format!("sieve scripts {:?} on {a}, {:?} on {b}", va.scripts, vb.scripts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailmesh_actors::mailbox::{MailboxState, MessageView};
    use mailmesh_protocol::records::PrunedSet;

    use crate::snapshot::MailboxSnapshot;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn shown(on: &str, uid: u32, aid: &AppendId) -> Shown {
        Shown {
            node: node(on),
            mailbox: MailboxId(7),
            uidvalidity: UidValidity(1),
            messages: vec![(Uid(uid), aid.clone())],
            incarnation: 0,
        }
    }

    fn shown_at(observer: &Observer, uid: u32) -> BTreeSet<AppendId> {
        let key = (MailboxId(7), UidValidity(1), Uid(uid));
        observer.global_shown.get(&key).cloned().unwrap_or_default()
    }

    /// Seed 4840: a promotion shown only on n3 survived n3's wipe on n2's disk; when n2 is
    /// wiped too, no memory and no disk keeps it, so the uid is free again.
    #[test]
    fn an_assignment_is_forgotten_when_the_last_disk_holding_it_is_wiped() {
        let mut observer = Observer::new(Trace::new());
        let promoted = AppendId {
            origin: node("n2"),
            counter: 1,
        };
        observer.clients_saw(vec![shown("n3", 3, &promoted)]);
        observer.clients_saw(vec![shown("n2", 1, &promoted)]);
        let nothing_lost = BTreeSet::new();
        // n2's disk still holds the promotion when n3 is wiped.
        observer.node_wiped(
            &node("n3"),
            &nothing_lost,
            |_, uid, _| uid == Uid(3),
            |_, _| true,
            |_, _| true,
        );
        assert_eq!(shown_at(&observer, 3), BTreeSet::from([promoted.clone()]));
        // Then n2 is wiped and no other disk holds it at uid 3.
        observer.node_wiped(
            &node("n2"),
            &nothing_lost,
            |_, _, _| false,
            |_, _| true,
            |_, _| true,
        );
        assert!(shown_at(&observer, 3).is_empty());
        assert!(observer.violations.is_empty());
    }

    /// The other side: an assignment a remembered node showed stays a promise through any wipe.
    #[test]
    fn an_assignment_a_remembered_node_showed_survives_other_nodes_wipes() {
        let mut observer = Observer::new(Trace::new());
        let promoted = AppendId {
            origin: node("n2"),
            counter: 1,
        };
        observer.clients_saw(vec![shown("n1", 3, &promoted), shown("n3", 3, &promoted)]);
        let nothing_lost = BTreeSet::new();
        observer.node_wiped(
            &node("n3"),
            &nothing_lost,
            |_, _, _| false,
            |_, _| true,
            |_, _| true,
        );
        observer.node_wiped(
            &node("n2"),
            &nothing_lost,
            |_, _, _| false,
            |_, _| true,
            |_, _| true,
        );
        assert_eq!(shown_at(&observer, 3), BTreeSet::from([promoted]));
    }

    /// Seed 25779 with --steps 300: what a node that let its copy go showed is no promise for
    /// the others once no holder's memory or disk keeps it.
    #[test]
    fn an_assignment_only_a_node_that_let_its_copy_go_showed_is_forgotten_at_a_wipe() {
        let mut observer = Observer::new(Trace::new());
        let moved = AppendId {
            origin: node("n3"),
            counter: 1,
        };
        observer.clients_saw(vec![shown("n1", 1, &moved), shown("n2", 1, &moved)]);
        let nothing_lost = BTreeSet::new();
        // n2 let its copy go; n1, the only holder, is wiped.
        observer.node_wiped(
            &node("n1"),
            &nothing_lost,
            |_, _, _| false,
            |_, _| true,
            |n, _| *n != node("n2"),
        );
        assert!(shown_at(&observer, 1).is_empty());
        // n2's own memory stays: held again, it shows nothing else at uid 1.
        assert_eq!(observer.nodes[&node("n2")].shown.len(), 1);
    }

    /// Seed 20689: an expunge a remembered node saw is a promise only while some disk knows it;
    /// once the last one is wiped, the message may come back (from a stale copy, at a new uid).
    #[test]
    fn an_expunge_is_forgotten_when_the_last_disk_knowing_it_is_wiped() {
        let mut observer = Observer::new(Trace::new());
        let moved = AppendId {
            origin: node("n4"),
            counter: 2,
        };
        let kept = AppendId {
            origin: node("n4"),
            counter: 3,
        };
        for on in ["n4", "n5"] {
            let memory = observer.nodes.entry(node(on)).or_default();
            memory.expunged.insert((MailboxId(7), moved.clone()));
            memory.expunged.insert((MailboxId(7), kept.clone()));
        }
        let nothing_lost = BTreeSet::new();
        // Only `kept`'s expunge is on a disk other than the wiped one.
        observer.node_wiped(
            &node("n3"),
            &nothing_lost,
            |_, _, _| false,
            |_, aid| *aid == kept,
            |_, _| true,
        );
        for on in ["n4", "n5"] {
            let memory = &observer.nodes[&node(on)];
            assert!(!memory.expunged.contains(&(MailboxId(7), moved.clone())));
            assert!(memory.expunged.contains(&(MailboxId(7), kept.clone())));
        }
    }

    /// A snapshot of one node showing `aid` at uid 1 in mailbox 7.
    fn showing(aid: &AppendId) -> NodeSnapshot {
        let view = MessageView {
            uid: Uid(1),
            append_id: aid.clone(),
            guid: Guid::of(b"body"),
            size: 4,
            internaldate: 0,
            flags: Vec::new(),
            modseq: ModSeq::ZERO,
        };
        let mailbox = MailboxSnapshot {
            user: "bob".into(),
            name: "Sent".into(),
            uidvalidity: UidValidity(1),
            visible: vec![view],
            records: Vec::new(),
            pruned: PrunedSet::default(),
            annotations: Vec::new(),
            state: MailboxState {
                id: MailboxId(7),
                uidvalidity: UidValidity(1),
                uidnext: Uid(2),
                highestmodseq: ModSeq::ZERO,
                exists: 1,
                unseen: 1,
                digest: Default::default(),
                quarantined: 0,
            },
            held: true,
        };
        NodeSnapshot {
            mailboxes: BTreeMap::from([(MailboxId(7), mailbox)]),
            ..NodeSnapshot::default()
        }
    }

    /// Seed 148637: an expunge a node remembers only in a copy it let go binds that node, not
    /// the holders, which it tells nothing; one seen in a held copy binds every node.
    #[test]
    fn an_expunge_remembered_by_a_copy_let_go_is_no_promise_for_other_nodes() {
        let mut observer = Observer::new(Trace::new());
        let aid = AppendId {
            origin: node("n5"),
            counter: 1,
        };
        let n4_shows_it = BTreeMap::from([(node("n4"), showing(&aid))]);
        observer
            .nodes
            .entry(node("n7"))
            .or_default()
            .expunged_let_go
            .insert((MailboxId(7), aid.clone()));
        observer.check_tombstones_everywhere(&n4_shows_it);
        assert!(observer.violations.is_empty(), "{:?}", observer.violations);
        observer
            .nodes
            .entry(node("n1"))
            .or_default()
            .expunged
            .insert((MailboxId(7), aid.clone()));
        observer.check_tombstones_everywhere(&n4_shows_it);
        assert_eq!(observer.violations.len(), 1);
        assert_eq!(observer.violations[0].kind, Kind::MessageBack);
    }
}
