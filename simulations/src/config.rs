//! What a run is asked to do: how many steps, which faults, which restrictions, and the runner
//! flags that ask for the same again (so a failing seed prints a command that replays it).

use std::time::Duration;

use mailmesh_actors::context::Faults;

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
    /// How long a client operation may go unanswered (virtual time), counted from when it was
    /// sent or, for one still open when the faults stop, from the heal.
    pub answer_within: Duration,
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
    /// Nodes are wiped now and then (lose their whole disk and rejoin under the same name).
    pub wipes: bool,
    /// Clients set mailboxes' locations to random subsets of the nodes now and then (copies
    /// dropped and made again), sometimes with a named primary among them.
    pub locations: bool,
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
            answer_within: Duration::from_secs(10 * 60),
            live_trace: false,
            dump: false,
            page: None,
            writers: None,
            set_primary: true,
            wipes: true,
            locations: true,
        }
    }
}

impl SimConfig {
    /// The workload before wipes and mailbox moves were part of the default: the seeds kept
    /// from those soaks replay the histories they were found with.
    pub fn without_wipes_or_moves() -> SimConfig {
        SimConfig {
            wipes: false,
            locations: false,
            ..SimConfig::default()
        }
    }

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
        if !self.wipes {
            args.push("--no-wipes".into());
        }
        if !self.locations {
            args.push("--no-locations".into());
        }
        let mut faults = self.engine_faults;
        for (name, on) in sabotage_switches(&mut faults) {
            if *on {
                args.extend(["--sabotage".into(), name.into()]);
            }
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

/// Every sabotage the runner's `--sabotage NAME` switches on, by name: one list for parsing the
/// flag and for printing it back in a replay command.
pub fn sabotage_switches(faults: &mut Faults) -> [(&'static str, &mut bool); 16] {
    [
        ("no-uid-promotion", &mut faults.no_uid_promotion),
        ("drop-incoming-records", &mut faults.drop_incoming_records),
        ("no-echo-suppression", &mut faults.no_echo_suppression),
        ("origin-not-skipped", &mut faults.origin_not_skipped),
        ("stale-flag-versions", &mut faults.stale_flag_versions),
        ("lost-flag-writes", &mut faults.lost_flag_writes),
        ("transfer-never-answers", &mut faults.transfer_never_answers),
        ("reuse-uids", &mut faults.reuse_uids),
        ("counters-from-records", &mut faults.counters_from_records),
        ("expunge-not-sticky", &mut faults.expunge_not_sticky),
        ("identities-from-zero", &mut faults.identities_from_zero),
        ("hidden-stays-hidden", &mut faults.hidden_stays_hidden),
        ("changes-pushed-twice", &mut faults.changes_pushed_twice),
        ("promotion-keeps-one", &mut faults.promotion_keeps_one),
        ("stale-uid-rows", &mut faults.stale_uid_rows),
        (
            "mailbox-tombstone-not-sticky",
            &mut faults.mailbox_tombstone_not_sticky,
        ),
    ]
}
