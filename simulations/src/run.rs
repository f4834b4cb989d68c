//! One seeded multi-node run: set up, a workload under faults, heal, settle, check.
//!
//! 1. From the seed: the topology (2 to 7 nodes), how the nodes are configured, how faulty the
//!    network is and how often nodes crash, links are cut or the topology is edited.
//! 2. Steps: each one a client operation on a random running node (several may be in flight at
//!    once) or a fault; then some virtual time passes. Nodes are sampled as it goes.
//! 3. Faults stop: the network turns healthy, every link heals, every node runs again.
//! 4. The cluster must go quiet within a bounded virtual time; then the final checks, then a
//!    long wait during which nothing may cross any link (no echo), then one probe change whose
//!    crossings per link are measured.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

pub use crate::config::SimConfig;
pub use crate::faults::FaultCounts;
use crate::faults::FaultProfile;
pub use crate::probe::ProbeCrossings;

use crate::checks::{Kind, Observer, Violation};
use crate::cluster::{NodeSetup, SimCluster};
use crate::model::Model;
use crate::network::{NetFaults, SimNetwork};
use crate::rng::SimRng;
use crate::runtime::deterministic_system;
use crate::topology::Topology;
use crate::trace::{trace_hash, Trace};
use crate::workload::{Client, OpKind, OtherNode};
use mailmesh_protocol::ids::NodeId;

#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    /// Shape and size, e.g. "ring of 5".
    pub cluster: String,
    pub trace: Vec<String>,
    pub trace_hash: [u8; 32],
    pub violations: Vec<Violation>,
    pub virtual_time: Duration,
    pub faults: FaultCounts,
    pub client_ops: u64,
    /// Client operations acknowledged as having changed something.
    pub changes: u64,
    pub requests: u64,
    /// Message records carried over all links during the run.
    pub records: u64,
    pub samples: u64,
    pub settle_time: Option<Duration>,
    /// Virtual time until the healed cluster went quiet: the part of `virtual_time` in which
    /// anything happens (the rest is the waits that prove nothing more does).
    pub busy_time: Duration,
    pub probe: Option<ProbeCrossings>,
}

/// Runs one seed on a fresh deterministic runtime.
pub fn run_seed(seed: u64, config: &SimConfig) -> SimReport {
    let system = deterministic_system();
    let config = config.clone();
    let report = system.block_on(async move {
        let report = simulate(seed, &config).await;
        actix::System::current().stop();
        report
    });
    drop(system);
    report
}

/// A run in progress; its fault events and final probes live in [`crate::faults`] and
/// [`crate::probe`].
pub(crate) struct Run {
    pub(crate) rng: SimRng,
    pub(crate) trace: Trace,
    pub(crate) net: SimNetwork,
    pub(crate) cluster: SimCluster,
    pub(crate) model: Rc<RefCell<Model>>,
    pub(crate) observer: Observer,
    pub(crate) profile: FaultProfile,
    pub(crate) counts: FaultCounts,
    /// Client operations in flight: the task, the operation's trace line, when it was sent.
    pub(crate) tasks: Vec<(tokio::task::JoinHandle<()>, String, tokio::time::Instant)>,
    /// How long a client operation may go unanswered.
    pub(crate) answer_within: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) writers: Option<usize>,
    pub(crate) set_primary: bool,
    /// Clients set locations now and then.
    pub(crate) locations: bool,
    /// A node wiped a few steps ago, and how many more client operations favour it.
    pub(crate) rejoined: Option<(NodeId, u32)>,
}

async fn simulate(seed: u64, config: &SimConfig) -> SimReport {
    let rng = SimRng::new(seed);
    let trace = if config.live_trace {
        Trace::live()
    } else {
        Trace::new()
    };
    let (shape, topology) = Topology::generate(&rng, config.nodes);
    let cluster_name = format!("{shape} of {}", topology.nodes.len());
    let mut setup = NodeSetup::random(&rng, config.engine_faults);
    if let Some(page) = config.page {
        setup.channel.page = page;
    }
    let profile = FaultProfile::random(&rng, config.faults, config.wipes);
    trace.log(format!("seed {seed}: {cluster_name}: {}", topology.describe()));
    trace.log(format!("setup {setup:?}"));
    trace.log(format!("faults {profile:?}"));
    let net = SimNetwork::new(rng.clone(), trace.clone(), profile.net);
    let mut observer = Observer::new(trace.clone());
    let cluster = match SimCluster::start(topology, net.clone(), setup, rng.clone(), trace.clone()) {
        Ok(c) => c,
        Err(e) => {
            observer.report(Kind::Restart, e);
            let parts = Parts {
                seed,
                cluster: cluster_name,
                observer,
                model: Model::default(),
                outcome: Outcome::default(),
            };
            return report(parts, &trace, &net);
        }
    };
    let topology_size = cluster.topology.nodes.len();
    let mut run = Run {
        max_in_flight: rng.range(1..5) as usize,
        rng,
        trace: trace.clone(),
        net: net.clone(),
        cluster,
        model: Rc::default(),
        observer,
        profile,
        counts: FaultCounts::default(),
        tasks: Vec::new(),
        answer_within: config.answer_within,
        writers: config.writers.map(|w| w.clamp(1, topology_size)),
        set_primary: config.set_primary,
        rejoined: None,
        locations: config.locations,
    };
    for step in 0..config.steps {
        run.step(step).await;
    }
    let mut outcome = Outcome {
        settle_time: run.heal_and_settle(config).await,
        busy_time: Some(trace.elapsed()),
        ..Outcome::default()
    };
    if outcome.settle_time.is_some() {
        // Every client is done: a copy of the model is the final word on what they were told.
        let model = run.model.borrow().clone();
        run.observer.final_checks(&run.cluster, &model, config.dump).await;
        run.check_quiet(config.quiet_for, "after quiescence").await;
        outcome.probe = run.probe(config).await;
    } else if config.dump {
        // No checks on a cluster that never went quiet, but the state that kept it busy.
        let mut snaps = std::collections::BTreeMap::new();
        for (node, local) in run.cluster.nodes() {
            snaps.insert(node.clone(), crate::snapshot::snapshot(local, true).await);
        }
        crate::snapshot::dump_snapshots(&snaps, &trace);
        crate::snapshot::dump_sync_state(&run.cluster, &trace);
    }
    let Run {
        cluster,
        observer,
        model,
        mut counts,
        ..
    } = run;
    cluster.shutdown().await;
    let net_counts = net.fault_counts();
    counts.dropped_requests = net_counts.dropped_requests;
    counts.dropped_responses = net_counts.dropped_responses;
    counts.duplicated = net_counts.duplicated;
    outcome.faults = counts;
    let model = model.borrow().clone();
    let parts = Parts {
        seed,
        cluster: cluster_name,
        observer,
        model,
        outcome,
    };
    report(parts, &trace, &net)
}

/// What the phases after the workload produced.
#[derive(Default)]
struct Outcome {
    faults: FaultCounts,
    settle_time: Option<Duration>,
    /// Virtual time when the cluster went quiet (None: it never did).
    busy_time: Option<Duration>,
    probe: Option<ProbeCrossings>,
}

/// Everything a report is made of besides the trace and the network.
struct Parts {
    seed: u64,
    cluster: String,
    observer: Observer,
    model: Model,
    outcome: Outcome,
}

fn report(parts: Parts, trace: &Trace, net: &SimNetwork) -> SimReport {
    let virtual_time = trace.elapsed();
    let lines = trace.take();
    let Parts {
        seed,
        cluster,
        observer,
        model,
        outcome,
    } = parts;
    SimReport {
        seed,
        cluster,
        trace_hash: trace_hash(&lines),
        trace: lines,
        violations: observer.violations,
        virtual_time,
        faults: outcome.faults,
        client_ops: model.ops,
        changes: model.changes,
        requests: net.total_requests(),
        records: net.total_records(),
        samples: observer.samples,
        settle_time: outcome.settle_time,
        busy_time: outcome.busy_time.unwrap_or(virtual_time),
        probe: outcome.probe,
    }
}

impl Run {
    async fn step(&mut self, step: usize) {
        if self.rng.range(0..100) < self.profile.event_percent {
            self.fault_event().await;
        } else {
            self.client_op(step).await;
        }
        tokio::time::sleep(Duration::from_millis(self.rng.range(0..400))).await;
        self.reap_crashes().await;
        self.tasks.retain(|(t, _, _)| !t.is_finished());
        self.report_unanswered(None);
        self.judge_what_clients_saw();
        if self.rng.chance(0.3) {
            let running = self.cluster.running();
            if !running.is_empty() {
                let node = self.rng.pick(&running).clone();
                if let Some(local) = self.cluster.node(&node) {
                    self.observer.sample(&node, local, false).await;
                }
            }
        }
    }

    /// Hands everything clients were shown since the last step to the observer.
    pub(crate) fn judge_what_clients_saw(&mut self) {
        let (mut shown, reused) = {
            let mut model = self.model.borrow_mut();
            (
                std::mem::take(&mut model.shown),
                std::mem::take(&mut model.reused_ids),
            )
        };
        // An answer a wiped store gave (it arrived after the wipe) says nothing of the new one.
        shown.retain(|s| s.incarnation == self.cluster.incarnation(&s.node));
        self.observer.clients_saw(shown);
        for what in reused {
            self.observer.report(Kind::IdentityReused, what);
        }
    }

    async fn client_op(&mut self, step: usize) {
        let running = self.cluster.running();
        if running.is_empty() {
            return;
        }
        // After a wipe, the wiped node takes the next operations more often than not: it must
        // write again while it is being rebuilt.
        let node = match self.rejoined.take() {
            Some((node, left)) if left > 0 && running.contains(&node) => {
                self.rejoined = Some((node.clone(), left - 1));
                if self.rng.chance(0.5) {
                    node
                } else {
                    self.rng.pick(&running).clone()
                }
            }
            _ => self.rng.pick(&running).clone(),
        };
        let local = self.cluster.node(&node).expect("running");
        let client = Client {
            node: node.clone(),
            directory: local.directory.clone(),
            model: self.model.clone(),
            rng: self.rng.clone(),
            nodes: self.cluster.topology.nodes.clone(),
            serial: step as u64,
            incarnation: self.cluster.incarnation(&node),
            other: {
                let others: Vec<&NodeId> = running.iter().filter(|n| **n != node).collect();
                // Two-node operations add messages on the second node: only when every node
                // writes.
                (!others.is_empty() && self.writers.is_none()).then(|| {
                    let other = (*self.rng.pick(&others)).clone();
                    let directory = self.cluster.node(&other).expect("running").directory.clone();
                    let incarnation = self.cluster.incarnation(&other);
                    OtherNode {
                        node: other,
                        directory,
                        incarnation,
                    }
                })
            },
        };
        let writer = self
            .writers
            .is_none_or(|w| self.cluster.topology.nodes[..w].contains(&node));
        // Not drawn with --no-locations, so runs without moves keep their histories.
        let set_locations = self.locations && self.writers.is_none() && self.rng.chance(0.08);
        let kind = if set_locations {
            OpKind::SetLocations
        } else {
            loop {
                let kind = OpKind::random(&self.rng);
                let adds = matches!(
                    kind,
                    OpKind::Create | OpKind::Append | OpKind::Transfer | OpKind::OppositeTransfers
                );
                if (writer || !adds) && (self.set_primary || kind != OpKind::SetPrimary) {
                    break kind;
                }
            }
        };
        let sent = format!("op{step} {kind:?} on {node}");
        self.trace.log(sent.clone());
        let trace = self.trace.clone();
        let op = async move {
            let line = client.run(kind).await;
            trace.log(format!("op{step} {line}"));
        };
        if self.tasks.len() < self.max_in_flight && self.rng.chance(0.6) {
            self.tasks
                .push((actix::spawn(op), sent, tokio::time::Instant::now()));
        } else if tokio::time::timeout(self.answer_within, op).await.is_err() {
            self.no_answer(&sent);
        }
    }

    /// A client operation that never answers is an engine hang (a deadlock, a lost wake-up):
    /// reported with the operation's trace line. The client gives up on it.
    fn no_answer(&mut self, sent: &str) {
        let what = format!("{sent}: no answer within {:?}", self.answer_within);
        self.observer.report(Kind::NoAnswer, what);
    }

    /// Reports (and gives up on) every operation in flight for longer than the bound, counted
    /// from when it was sent or from `healed_at`, whichever is later.
    fn report_unanswered(&mut self, healed_at: Option<tokio::time::Instant>) {
        let now = tokio::time::Instant::now();
        let mut late = Vec::new();
        self.tasks.retain(|(task, sent, at)| {
            let since = healed_at.map_or(*at, |h| h.max(*at));
            if now.duration_since(since) >= self.answer_within {
                task.abort();
                late.push(sent.clone());
                false
            } else {
                true
            }
        });
        for sent in late {
            self.no_answer(&sent);
        }
    }

    /// Stops the faults, heals the network, restarts every node, waits for the clients, and
    /// waits for quiescence. Returns how long that took, or None (and a violation) if the cluster
    /// did not go quiet.
    async fn heal_and_settle(&mut self, config: &SimConfig) -> Option<Duration> {
        self.trace.log(format!(
            "faults stop; topology {}",
            self.cluster.topology.describe()
        ));
        self.net.set_faults(NetFaults::calm());
        self.net.heal_all();
        self.cluster.disarm_crashes();
        self.reap_crashes().await;
        for node in self.cluster.down() {
            self.restart(&node);
        }
        if !self.cluster.down().is_empty() {
            return None;
        }
        // A client whose node was crashed under it gets an error, not silence: every operation
        // must answer within the bound of the heal, or it is reported (and given up on).
        let healed_at = tokio::time::Instant::now();
        while !self.tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.tasks.retain(|(t, _, _)| !t.is_finished());
            self.report_unanswered(Some(healed_at));
        }
        match self.cluster.settle(config.settle_limit).await {
            Ok(took) => {
                self.trace.log(format!("quiescent after {} ms", took.as_millis()));
                Some(took)
            }
            Err(e) => {
                self.observer.report(Kind::NotQuiescent, e);
                None
            }
        }
    }
}
