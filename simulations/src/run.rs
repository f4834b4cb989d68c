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
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use mailmesh_actors::context::Faults;
use mailmesh_actors::directory::CreateMailbox;
use mailmesh_actors::mailbox::Append;
use mailmesh_protocol::ids::NodeId;

use crate::checks::{Kind, Observer, Violation};
use crate::cluster::{NodeSetup, SimCluster};
use crate::model::Model;
use crate::network::{link, NetFaults, SimNetwork};
use crate::rng::SimRng;
use crate::runtime::deterministic_system;
use crate::topology::Topology;
use crate::trace::{trace_hash, Trace};
use crate::workload::{Client, OpKind};

/// Most records one change may carry over one link (both directions of it together) in a quiet
/// cluster: the change itself, and at most a couple of overlapping exchanges when it reaches a
/// node from two sides at once. An echo loop would carry it without end.
pub const MAX_PROBE_RECORDS_PER_LINK: u64 = 4;

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Client operations and fault events before the faults stop.
    pub steps: usize,
    /// Nodes in the cluster (2 to 7 drawn from the seed when `None`).
    pub nodes: Option<usize>,
    /// Network faults, crashes, partitions and topology edits (off: a healthy cluster).
    pub faults: bool,
    /// Deliberately broken engine behaviour, to show that the checks catch it.
    pub engine_faults: Faults,
    /// How long the healed cluster may take to go quiet.
    pub settle_limit: Duration,
    /// How long nothing may cross the network once it is quiet.
    pub quiet_for: Duration,
    /// Print the trace to stderr as it happens (to see what led up to an engine panic).
    pub live_trace: bool,
    /// Add every node's message records (hidden and expunged ones too) to the trace at the end.
    pub dump: bool,
    /// Records per sync request on every channel (drawn from the seed when `None`: often 1 to 7,
    /// so paging is exercised).
    pub page: Option<usize>,
    /// Only the first `writers` nodes create mailboxes and add messages (appends, copies, moves);
    /// the others change flags, expunge, rename, delete and so on. `None`: every node writes.
    pub writers: Option<usize>,
    /// Clients name other preferred primaries now and then.
    pub set_primary: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            steps: 120,
            nodes: None,
            faults: true,
            engine_faults: Faults::default(),
            settle_limit: Duration::from_secs(30 * 60),
            quiet_for: Duration::from_secs(10 * 60),
            live_trace: false,
            dump: false,
            page: None,
            writers: None,
            set_primary: true,
        }
    }
}

impl SimConfig {
    /// The runner's flags that select this configuration (defaults left out).
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let default = SimConfig::default();
        if self.steps != default.steps {
            args.extend(["--steps".to_string(), self.steps.to_string()]);
        }
        if let Some(n) = self.nodes {
            args.extend(["--nodes".to_string(), n.to_string()]);
        }
        if !self.faults {
            args.push("--no-faults".into());
        }
        if let Some(page) = self.page {
            args.extend(["--page".to_string(), page.to_string()]);
        }
        if let Some(writers) = self.writers {
            args.extend(["--writers".to_string(), writers.to_string()]);
        }
        if !self.set_primary {
            args.push("--no-set-primary".into());
        }
        if self.engine_faults.no_uid_promotion {
            args.extend(["--sabotage".into(), "no-uid-promotion".into()]);
        }
        if self.engine_faults.drop_incoming_records {
            args.extend(["--sabotage".into(), "drop-incoming-records".into()]);
        }
        args
    }

    /// The command that replays `seed` with this configuration and prints its trace.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut cmd = format!("cargo run --release -p mailmesh-simulations -- --seed {seed} --trace");
        for arg in self.args() {
            cmd.push(' ');
            cmd.push_str(&arg);
        }
        cmd
    }
}

/// How often each kind of fault happens in one run (drawn per seed).
#[derive(Clone, Copy, Debug)]
struct FaultProfile {
    net: NetFaults,
    /// Percent of steps that are a fault event rather than a client operation.
    event_percent: u64,
    crash_weight: u64,
    partition_weight: u64,
    topology_weight: u64,
}

impl FaultProfile {
    fn random(rng: &SimRng, enabled: bool) -> Self {
        // Some seeds run a healthy cluster: the plain path must hold as well as the faulty one.
        if !enabled || rng.chance(0.15) {
            return FaultProfile {
                net: NetFaults::calm(),
                event_percent: 0,
                crash_weight: 0,
                partition_weight: 0,
                topology_weight: 0,
            };
        }
        FaultProfile {
            net: NetFaults::random(rng),
            event_percent: rng.range(5..25),
            crash_weight: rng.range(0..4),
            partition_weight: rng.range(1..6),
            topology_weight: rng.range(0..3),
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
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.crashes
            + self.partitions
            + self.topology_edits
            + self.dropped_requests
            + self.dropped_responses
            + self.duplicated
    }
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

#[derive(Clone, Debug)]
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

struct Run {
    rng: SimRng,
    trace: Trace,
    net: SimNetwork,
    cluster: SimCluster,
    model: Rc<RefCell<Model>>,
    observer: Observer,
    profile: FaultProfile,
    counts: FaultCounts,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    max_in_flight: usize,
    writers: Option<usize>,
    set_primary: bool,
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
    let profile = FaultProfile::random(&rng, config.faults);
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
        writers: config.writers.map(|w| w.clamp(1, topology_size)),
        set_primary: config.set_primary,
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
        self.tasks.retain(|t| !t.is_finished());
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

    async fn client_op(&mut self, step: usize) {
        let running = self.cluster.running();
        if running.is_empty() {
            return;
        }
        let node = self.rng.pick(&running).clone();
        let local = self.cluster.node(&node).expect("running");
        let client = Client {
            node: node.clone(),
            directory: local.directory.clone(),
            model: self.model.clone(),
            rng: self.rng.clone(),
            nodes: self.cluster.topology.nodes.clone(),
            serial: step as u64,
        };
        let writer = self
            .writers
            .is_none_or(|w| self.cluster.topology.nodes[..w].contains(&node));
        let kind = loop {
            let kind = OpKind::random(&self.rng);
            let adds = matches!(kind, OpKind::Create | OpKind::Append | OpKind::Transfer);
            if (writer || !adds) && (self.set_primary || kind != OpKind::SetPrimary) {
                break kind;
            }
        };
        self.trace.log(format!("op{step} {kind:?} on {node}"));
        let trace = self.trace.clone();
        let op = async move {
            let line = client.run(kind).await;
            trace.log(format!("op{step} {line}"));
        };
        if self.tasks.len() < self.max_in_flight && self.rng.chance(0.6) {
            self.tasks.push(actix::spawn(op));
        } else {
            op.await;
        }
    }

    async fn fault_event(&mut self) {
        let p = self.profile;
        let total = p.crash_weight + p.partition_weight + p.topology_weight;
        if total == 0 {
            return;
        }
        let roll = self.rng.range(0..total);
        if roll < p.crash_weight {
            self.crash_or_restart().await;
        } else if roll < p.crash_weight + p.partition_weight {
            self.partition();
        } else {
            self.edit_topology();
        }
    }

    async fn crash_or_restart(&mut self) {
        let running = self.cluster.running();
        let down = self.cluster.down();
        if !down.is_empty() && (running.len() < 2 || self.rng.chance(0.5)) {
            let node = self.rng.pick(&down).clone();
            self.restart(&node);
        } else if running.len() >= 2 {
            let node = self.rng.pick(&running).clone();
            self.trace.log(format!("FAULT crash {node}"));
            self.counts.crashes += 1;
            self.cluster.crash(&node).await;
            self.trace.log(format!("{node} is down"));
        }
    }

    fn restart(&mut self, node: &NodeId) {
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
        for node in self.cluster.down() {
            self.restart(&node);
        }
        if !self.cluster.down().is_empty() {
            return None;
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
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

    /// Nothing may cross any link for `wait` (no echo, no retry loop).
    async fn check_quiet(&mut self, wait: Duration, when: &str) {
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

    /// One append on a random node of the quiet cluster: every node must get it, each link may
    /// carry it a bounded number of times, and the cluster must go quiet again.
    async fn probe(&mut self, config: &SimConfig) -> Option<ProbeCrossings> {
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
        if !matches!(created, Ok(Ok(_))) {
            self.observer.report(
                Kind::Probe,
                format!("probe: cannot create a mailbox on {creator}: {created:?}"),
            );
            return None;
        }
        if let Err(e) = self.cluster.settle(config.settle_limit).await {
            self.observer.report(Kind::NotQuiescent, format!("probe: {e}"));
            return None;
        }
        let before = self.net.stats();
        let local = self.cluster.node(&writer)?;
        let opened = local
            .directory
            .send(mailmesh_actors::directory::OpenMailbox {
                user: "alice".into(),
                name: "Probe".into(),
            })
            .await;
        let Ok(Ok(opened)) = opened else {
            self.observer.report(
                Kind::Probe,
                format!("probe: the new mailbox did not reach {writer}"),
            );
            return None;
        };
        let appended = opened
            .addr
            .send(Append {
                body: b"Subject: probe\r\n\r\nprobe\r\n".to_vec(),
                flags: Vec::new(),
                internaldate: None,
            })
            .await;
        drop(opened);
        let Ok(Ok(appended)) = appended else {
            self.observer.report(
                Kind::Probe,
                format!("probe: append on {writer} failed: {appended:?}"),
            );
            return None;
        };
        if let Err(e) = self.cluster.settle(config.settle_limit).await {
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
        for ((a, b), (records, _)) in &per_link {
            if *records > MAX_PROBE_RECORDS_PER_LINK {
                self.observer.report(
                    Kind::Crossings,
                    format!(
                    "one change crossed link {a}-{b} {records} times (more than {MAX_PROBE_RECORDS_PER_LINK})"
                ),
                );
            }
        }
        for (node, local) in self.cluster.nodes() {
            let snap = crate::checks::snapshot(local, false).await;
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
        self.check_quiet(Duration::from_secs(120), "after the probe")
            .await;
        Some(crossings)
    }
}
