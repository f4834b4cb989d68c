//! The multi-node simulator: a seed replays byte for byte (in one process and across processes),
//! a fixed seed range passes the invariant checks, and the checks catch a deliberately broken
//! engine with a command that replays the failing seed.

use std::collections::BTreeMap;
use std::process::Command;

use mailmesh_simulations::run::{run_seed, SimConfig};
use mailmesh_simulations::trace::short_hash;

/// What the runner binary printed.
struct RunnerOutput {
    success: bool,
    stdout: String,
    /// Failing seeds with their violation lines (`[kind] at .. ms: ..`).
    failed: BTreeMap<u64, Vec<String>>,
    /// Failing seeds with their replay commands.
    replay: BTreeMap<u64, String>,
}

fn runner(args: &[&str]) -> RunnerOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_mailmesh-simulations"))
        .args(args)
        .output()
        .expect("the runner starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut failed: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut replay = BTreeMap::new();
    let mut current = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("seed ") {
            let seed: Option<u64> = rest.split([' ', ':']).next().and_then(|s| s.parse().ok());
            current = seed.filter(|_| line.contains("FAILED"));
            if let Some(seed) = current {
                failed.entry(seed).or_default();
            }
        } else if let (Some(seed), Some(v)) = (current, line.strip_prefix("  [")) {
            failed.entry(seed).or_default().push(format!("[{v}"));
        } else if let (Some(seed), Some(cmd)) = (current, line.strip_prefix("  replay: ")) {
            replay.insert(seed, cmd.to_string());
        }
    }
    RunnerOutput {
        success: out.status.success(),
        stdout,
        failed,
        replay,
    }
}

/// One range runs without primary changes: a different workload (the mailbox's creator stays
/// the primary), so the same seeds explore other histories.
const WITHOUT_PRIMARY_CHANGES: [&str; 1] = ["--no-set-primary"];

/// The workload before wipes and mailbox moves were part of the default: the sabotage checks
/// and the kept ranges were written against it, and keep it so their histories stay the same.
const WITHOUT_WIPES_OR_MOVES: [&str; 2] = ["--no-wipes", "--no-locations"];

#[test]
fn same_seed_same_trace() {
    let config = SimConfig::default();
    let mut hashes = Vec::new();
    for seed in [0, 5, 15] {
        let a = run_seed(seed, &config);
        let b = run_seed(seed, &config);
        assert_eq!(a.trace, b.trace, "seed {seed} diverged");
        assert_eq!(a.trace_hash, b.trace_hash);
        // A trace worth comparing: faults, deliveries and client operations in it.
        assert!(a.faults.total() > 0, "seed {seed} injected no faults");
        assert!(a.trace.iter().any(|l| l.contains(" FAULT ")), "seed {seed}");
        assert!(
            a.trace.iter().any(|l| l.contains("ChangeRequest(")),
            "seed {seed}"
        );
        assert!(
            a.client_ops > 50 && a.changes > 10,
            "seed {seed}: {} ops",
            a.client_ops
        );
        assert!(a.samples > 10 && a.probe.is_some(), "seed {seed} was checked");
        hashes.push(a.trace_hash);
    }
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "different seeds, different runs");
}

/// Determinism must not rest on anything a process has of its own (addresses, hash seeds,
/// temp dir names): a seed run in two other processes gives this process's trace hash.
#[test]
fn same_seed_same_trace_in_other_processes() {
    let seed = 24;
    let here = short_hash(&run_seed(seed, &SimConfig::default()).trace_hash);
    for _ in 0..2 {
        let out = runner(&["--seed", &seed.to_string(), "--verbose"]);
        assert!(
            out.stdout.contains(&format!("trace {here}")),
            "expected trace {here}:\n{}",
            out.stdout
        );
    }
}

/// Wipes: a node loses its whole disk and rejoins under the same name. The run replays byte for
/// byte, wipes happen, the wiped node writes again, and a range passes the checks (what lived
/// only on a wiped disk is excused, nothing else; seed 214 of this range found engine bug 20).
#[test]
fn wipes_replay_and_a_range_with_them_passes_the_checks() {
    let config = SimConfig {
        locations: false,
        ..SimConfig::default()
    };
    let a = run_seed(203, &config);
    let b = run_seed(203, &config);
    assert_eq!(a.trace_hash, b.trace_hash, "the run with wipes replays");
    assert!(a.faults.wipes > 0, "seed 203 wiped no node");
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    let out = runner(&["--seeds", "200..300", "--jobs", "2", "--no-locations"]);
    assert!(out.stdout.contains("seeds run:          100"), "{}", out.stdout);
    assert!(out.failed.is_empty(), "{}", out.stdout);
}

/// Seeds a soak once found failing, each kept once its cause was fixed (engine or judge), with
/// what was wrong. They run with the workload of the soak that found them (before wipes and
/// mailbox moves were part of the default).
const SEEDS_THAT_FAILED_ONCE: &[(u64, &str)] = &[
    (
        101386,
        "judge: a STORE of \\Deleted whose answer was lost was durable; the model must let a later \
         EXPUNGE remove what it may have flagged",
    ),
    (
        21623,
        "engine bug 22: a node made the primary crashed after the entry committed and before it \
         settled the uid conflicts it held; after the restart nothing settled them (now a durable \
         `settles` row, written with the entry, is resumed at start)",
    ),
    (
        22421,
        "simulator: a crash armed on a disk whose process had crashed already stayed armed and \
         fired inside the restarted node's start, reported as a node that does not start",
    ),
];

/// Seeds a `--locations` run once found failing (mailboxes moved between random subsets of the
/// nodes), each kept once its cause was fixed, with what was wrong.
const LOCATION_SEEDS_THAT_FAILED_ONCE: &[(u64, &str)] = &[
    (
        82,
        "engine bug 23: a copy let go and held again started its counters from nothing and, cut \
         off from the other holder, gave a client's append uid 1, which this node had shown for \
         another message",
    ),
    (
        241,
        "engine bug 23: a copy held again showed UIDNEXT 1 and a HIGHESTMODSEQ below the ones it \
         had shown before it let go, then reused uid 1",
    ),
    (
        83,
        "engine bug 25: a node that had let its copy go got a new link to a holder, queued the \
         mailbox for it and pulled the holder's stale records into a copy outside the holders, \
         which nothing let go again; it showed uid 1 as another message than it had before",
    ),
    (
        34,
        "engine bug 24: a mailbox moved between two nodes of a ring with no link between them: \
         the old holder, no longer among the holders, had no holder next to it to hand its \
         changes to and let its copy go (MailboxEntry::leaving keeps the relays it needs)",
    ),
    (
        214,
        "a node letting a copy go waited for its log rows for a peer removed from the \
         configuration by a topology edit, which no channel drains: not quiescent for good",
    ),
    (
        2,
        "a node that let its copy go (leaving register back to false) was counted as a holder \
         all along by its peers (leaving, then a relay by the graph) and never sent anything \
         again: its copy stayed empty",
    ),
    (
        825,
        "engine bug 26: a copy let go kept its modseq counter (engine bug 23), which matched a \
         peer's stale replication cache: the peer's delta was applied and the message the cache \
         said was there never came back",
    ),
    (
        244,
        "a store write failing for good (a crashed disk) made the release's retry spin without \
         end inside the Directory: the seed never finished",
    ),
    (
        909,
        "engine bug 28: two old holders let go after draining their logs to each other, both \
         leaving; the new location got the mailbox from neither and a message was lost",
    ),
    (
        175,
        "a release's purge ran while the Directory went on: a Mailbox actor started on the \
         half-purged rows (the node a relay again) kept counters that counted records deleted \
         under it, counted them again when they came back, and its digest never matched",
    ),
];

/// Seeds that failed with wipes and mailbox moves together (the default workload now), with the
/// cause.
const WIPE_AND_LOCATION_SEEDS_THAT_FAILED_ONCE: &[(u64, &str)] = &[
    (
        276,
        "engine bug 27: a node let its copy go (the purge deleted its own annotation) and held the \
         mailbox again; a relay that took the annotation later skipped it as its origin, so the \
         acknowledged write never came back to it",
    ),
    (
        262,
        "engine bug 27: a copy let go and held again never got back an annotation its peers took \
         it for having (echo suppression by origin and sender ignored the let-go)",
    ),
    (
        267,
        "engine bug 28: a mailbox moved to a node neither old holder had a link to yet; both old \
         holders were leaving, drained their logs to each other and purged: a message lost on \
         every node",
    ),
    (
        80,
        "engine bug 31: on a ring, two nodes letting their copies go were each the other's \
         relay (leaving nodes changed the locations' own relays); whichever let go first was \
         made a relay again by its own release, got the mailbox back and left again, for ever: \
         the cluster never went quiet (engine bug 28's change hid it in this seed)",
    ),
    (
        1651,
        "engine bug 29: a node restarted and let its copy go at once on the replication cache of \
         the only location, which had been wiped while it was down: the mailbox was lost",
    ),
    (
        4062,
        "engine bug 32: a copy let go forgot the uids it had retired; the only holder, wiped, gave \
         uid 1 to a new message, and the copy held again showed it where its clients had seen \
         another",
    ),
    (
        2428,
        "engine bug 31: a ring with no faults at all; leaving nodes recruited relays that then had \
         to leave in turn, for ever (not quiescent)",
    ),
    (
        8990,
        "engine bug 33: a wiped node's links register from before the wipe won by version over \
         the one it published after; no node ever knew the link the configuration had",
    ),
    (
        5990,
        "engine bug 34: a relay let its copy go on the replication cache of the only location, \
         which had been wiped behind a cut link since; an acknowledged annotation the relay and \
         the node beyond it still held at the wipe was gone (fixed by engine bug 36's change: \
         the keeper's own answer, with its store incarnation, is asked for before a copy goes)",
    ),
    (
        7931,
        "engine bug 35: a wiped holder learned UIDNEXT 2 from a node that had let its copy go; \
         the raise, with no record behind it, was logged for the other holder but its channel \
         found no record to send and sent nothing (UIDNEXT 2 on one holder, 1 on the other)",
    ),
    (
        14875,
        "engine bug 37: a copy held again remembered a message at uid 1 that every disk that knew \
         it had lost (wiped); it hid the live message at uid 1 for a settlement the primary, never \
         seeing a conflict, never made",
    ),
    (16184, "engine bug 37: as 14875, on a chain of 4"),
    (
        8921,
        "engine bug 36: n4, cut off, placed the mailbox on the others and let its copy go on n1's \
         replication cache, while n1, not knowing, let its copy go on n4's: a message and an \
         annotation gone from every node",
    ),
    (
        4840,
        "a checker mistake, not an engine bug: a promotion shown only on n3 was kept as a promise \
         after n3's wipe because n2's disk held it, and still kept after n2 was wiped too, when no \
         disk held it any more; the primary then gave the uid to another message, which was right",
    ),
    (
        20689,
        "a checker mistake, not an engine bug: the source messages of a MOVE came back, at fresh \
         uids, from a copy down since before the move, once the only holder of the moved copies \
         and of the expunges was wiped (the nodes that had seen the expunges had let their copies \
         go); the checker still held the expunges as promises though no disk knew them",
    ),
    (
        100602,
        "engine bug 42: n1's change request to n4 was answered after n4 let its copy go and held \
         the mailbox again; n1 saved the late answer's cache (\"n4 has everything\") over the \
         whole sync the Directory had queued, and n4 never got four messages (a cache now names \
         the peer's let-go date it was made against, and one from before is not used)",
    ),
    (
        100359,
        "engine bug 41: n3, its clock behind n5's, minted a subscription Version above the floor \
         its store came back with after a wipe 1.3 s later; n4 took the subscription for one n3's \
         new store made and never sent it (a new store now waits out the clock skew before it \
         starts)",
    ),
    (
        183402,
        "engine bug 44: a copy held again kept the UIDNEXT of the message it had let go, lost \
         everywhere since; the other holders pulled its pages, empty but for that UIDNEXT, skipped \
         them as empty, and UIDNEXT stayed 2 on it and 1 on every other holder",
    ),
    (
        148637,
        "a checker mistake, not an engine bug: an expunge was known in held copies only on n5, \
         wiped, and on n6, a relay that failed to push it to the emptied n5 (an answer lost) and \
         was wiped 1.3 s later; n4, down since before the expunge, brought the message back. \
         n1 and n7 still remembered the expunge in the pruned sets of copies they had let go, \
         which they sync with nobody, and the checker held those as promises for every node",
    ),
    (
        21385,
        "engine bug 38: the retired uids a released copy keeps counted as a copy, so a node that \
         had let its copy go pulled a wiped peer's stale records back into it and showed a \
         message expunged everywhere else",
    ),
];

/// Seeds that failed with the long workload (`--steps 300`, the default faults), with the cause.
const LONG_WORKLOAD_SEEDS_THAT_FAILED_ONCE: &[(u64, &str)] = &[
    (
        25779,
        "a checker mistake, not an engine bug: the only location was wiped three times; the \
         node that had shown a moved-away message at uid 1 had let its copy go, which keeps its \
         retired uids for itself and syncs with nobody, and the primary gave uid 1 to a new \
         message; the checker held that node's memory of uid 1 as a promise for every node",
    ),
    (
        1209,
        "engine bug 39: a copy let go forgot the expunges it had seen (only their uids stayed \
         retired); placed back on it alone, it took a stale node's live records of a MOVE's \
         sources for messages at retired uids and promoted them back into view",
    ),
    (
        2886,
        "engine bug 40: a relay-to-be, outside the holders with no copy, refused what its full \
         sync pulled but saved a cache saying it had the peer's state; the peer believed it on \
         the next change request, and an annotation never reached the relay or the holder behind \
         it",
    ),
    (
        1772,
        "a keeper's yes to Keeps kept for a later release attempt outlived the keeper's store, \
         wiped meanwhile: a message lost (fixed in session 9 by consuming the yes with the \
         attempt its answer starts; found by review before this seed)",
    ),
    (
        374,
        "a checker mistake, not an engine bug: on a chain of 7 the holders lost an expunge to \
         wipes, and the only node that still knew it had let its copy go two nodes away from \
         them (nodes without a copy carry nothing); the checker wanted a tombstone on the holders",
    ),
];

#[test]
fn long_workload_seeds_that_failed_once_pass() {
    let config = SimConfig {
        steps: 300,
        ..SimConfig::default()
    };
    for (seed, cause) in LONG_WORKLOAD_SEEDS_THAT_FAILED_ONCE {
        let report = run_seed(*seed, &config);
        let lines: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            lines.is_empty(),
            "seed {seed} with the long workload ({cause}) fails again:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn wipe_and_location_seeds_that_failed_once_pass() {
    // Explicit, so the test stays right whatever the default configuration becomes.
    let config = SimConfig {
        wipes: true,
        locations: true,
        ..SimConfig::default()
    };
    for (seed, cause) in WIPE_AND_LOCATION_SEEDS_THAT_FAILED_ONCE {
        let report = run_seed(*seed, &config);
        let lines: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            lines.is_empty(),
            "seed {seed} with wipes and moves ({cause}) fails again:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn location_seeds_that_failed_once_pass() {
    let config = SimConfig {
        wipes: false,
        locations: true,
        ..SimConfig::default()
    };
    for (seed, cause) in LOCATION_SEEDS_THAT_FAILED_ONCE {
        let report = run_seed(*seed, &config);
        let lines: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            lines.is_empty(),
            "seed {seed} with moves and no wipes ({cause}) fails again:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn seeds_that_failed_once_pass() {
    for (seed, cause) in SEEDS_THAT_FAILED_ONCE {
        let report = run_seed(*seed, &SimConfig::without_wipes_or_moves());
        let lines: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            lines.is_empty(),
            "seed {seed} ({cause}) fails again:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn seed_range_passes_the_checks() {
    let mut args = vec!["--seeds", "0..200", "--jobs", "2"];
    args.extend(WITHOUT_PRIMARY_CHANGES);
    args.extend(WITHOUT_WIPES_OR_MOVES);
    let out = runner(&args);
    assert!(out.stdout.contains("seeds run:          200"), "{}", out.stdout);
    let unexpected: Vec<String> = out
        .failed
        .iter()
        .flat_map(|(seed, vs)| vs.iter().map(move |v| format!("seed {seed}: {v}")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "violations (replay with the command printed for the seed):\n{}\n{}",
        unexpected.join("\n"),
        out.stdout
    );
}

#[test]
fn seed_range_passes_the_checks_with_the_full_workload() {
    let out = runner(&["--seeds", "0..300", "--jobs", "2"]);
    assert!(out.success, "{}", out.stdout);
}

/// Mailbox moves (`--locations`): relays, copies let go once drained (through relays kept for
/// the leaving node when it has no link to a holder), copies held again.
#[test]
fn seed_range_with_location_changes_passes_the_checks() {
    let out = runner(&["--seeds", "0..100", "--no-wipes", "--jobs", "2"]);
    assert!(out.stdout.contains("seeds run:          100"), "{}", out.stdout);
    assert!(out.success, "{}", out.stdout);
}

/// Longer histories (2.5 times the default steps): more compactions, retired uids and primary
/// changes per mailbox, where the engine's last bugs hid.
#[test]
fn seed_range_with_long_workloads_passes_the_checks() {
    let out = runner(&["--seeds", "0..40", "--steps", "300", "--jobs", "2"]);
    assert!(out.stdout.contains("seeds run:          40"), "{}", out.stdout);
    assert!(out.success, "{}", out.stdout);
}

/// Runs a seed range clean and with `sabotage`; returns the seeds that fail only with it, with
/// their violations and replay commands.
fn caught(sabotage: &str) -> Vec<(u64, Vec<String>, String)> {
    caught_with(sabotage, &WITHOUT_WIPES_OR_MOVES)
}

/// Like [`caught`], with the workload flags `workload` (e.g. `--no-locations`: wipes only) in
/// both runs.
fn caught_with(sabotage: &str, workload: &[&str]) -> Vec<(u64, Vec<String>, String)> {
    caught_in_seeds(sabotage, workload, "0..12")
}

fn caught_in_seeds(sabotage: &str, workload: &[&str], seeds: &str) -> Vec<(u64, Vec<String>, String)> {
    let mut args = vec!["--seeds", seeds, "--jobs", "2"];
    args.extend(WITHOUT_PRIMARY_CHANGES);
    args.extend(workload);
    let clean = runner(&args);
    args.extend(["--sabotage", sabotage]);
    let broken = runner(&args);
    assert!(!broken.success, "the runner exits non-zero on violations");
    broken
        .failed
        .into_iter()
        .filter(|(seed, _)| !clean.failed.contains_key(seed))
        .map(|(seed, vs)| {
            let replay = broken.replay.get(&seed).cloned().unwrap_or_default();
            (seed, vs, replay)
        })
        .collect()
}

#[test]
fn a_primary_that_never_promotes_is_caught() {
    let caught = caught("no-uid-promotion");
    assert!(!caught.is_empty(), "no seed caught the missing promotion");
    for (seed, violations, replay) in &caught {
        assert!(
            replay.ends_with(&format!(
                "--seed {seed} --trace --no-set-primary --no-wipes --no-locations --sabotage no-uid-promotion"
            )),
            "{replay}"
        );
        // Unpromoted conflicts leave messages hidden and nodes showing different messages.
        assert!(
            violations.iter().any(|v| v.starts_with("[still-hidden]")
                || v.starts_with("[not-converged]")
                || v.starts_with("[uid-conflict-kept]")),
            "seed {seed}: {violations:?}"
        );
    }
}

#[test]
fn a_merge_that_drops_records_is_caught() {
    let caught = caught("drop-incoming-records");
    assert!(!caught.is_empty(), "no seed caught the lossy merge");
    for (seed, violations, replay) in &caught {
        assert!(replay.contains("--sabotage drop-incoming-records"), "{replay}");
        // Records missing on the nodes that dropped them (the runner prints the first ten).
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with("[lost]") || v.starts_with("[not-converged]")),
            "seed {seed}: {violations:?}"
        );
    }
}

/// Echo suppression switched off (every peer is sent every change, the one it came from too):
/// the probe changes travel back.
#[test]
fn echo_suppression_switched_off_is_caught() {
    let caught = caught("no-echo-suppression");
    assert!(!caught.is_empty(), "no seed caught the echo");
    for (seed, violations, replay) in &caught {
        assert!(replay.contains("--sabotage no-echo-suppression"), "{replay}");
        assert!(
            violations.iter().any(|v| v.starts_with("[echo]")),
            "seed {seed}: {violations:?}"
        );
    }
}

/// Echo suppression that skips the peer a change came from but not its origin: a change that
/// reaches a neighbour of its origin over a longer path goes back to the origin.
#[test]
fn origin_not_skipped_is_caught() {
    let caught = caught("origin-not-skipped");
    assert!(
        !caught.is_empty(),
        "no seed caught the origin being sent its own change"
    );
    for (seed, violations, replay) in &caught {
        assert!(replay.contains("--sabotage origin-not-skipped"), "{replay}");
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with("[echo]") && v.contains("back to its origin")),
            "seed {seed}: {violations:?}"
        );
    }
}

/// A merge that keeps its own version of a flag whose value the incoming record shares: every
/// node shows the same flags, but the versions underneath differ, which only the whole-state
/// comparison sees (and the next concurrent write would resolve differently per node).
#[test]
fn flag_versions_that_diverge_under_equal_flags_are_caught() {
    // Which seeds hit the sabotage depends on the engine's scheduling: since change requests
    // carry small bodies, none of seeds 0..12 does; 17, 19 and 20 do.
    assert_caught_in_seeds_as(
        "stale-flag-versions",
        &WITHOUT_WIPES_OR_MOVES,
        "12..24",
        &["diverged"],
    );
}

/// A STORE that answers as if it wrote the flags but stores the record unchanged: every node
/// agrees (on the old flags), and only the model of acknowledged writes sees the loss.
#[test]
fn a_lost_flag_write_is_caught() {
    let caught = caught("lost-flag-writes");
    assert!(!caught.is_empty(), "no seed caught the lost flag write");
    for (seed, violations, replay) in &caught {
        assert!(
            replay.contains("--sabotage lost-flag-writes"),
            "seed {seed}: {replay}"
        );
        assert!(
            violations.iter().any(|v| v.starts_with("[lost-write]")),
            "seed {seed}: {violations:?}"
        );
    }
}

/// A flag change that leaves the uid index row as it was: every replica agrees and every
/// record is right, but FETCH FLAGS and SEARCH, which read the index, would show stale flags;
/// the comparison of each node's index with its records sees it.
#[test]
fn a_uid_index_behind_its_records_is_caught() {
    let caught = caught("stale-uid-rows");
    assert!(!caught.is_empty(), "no seed caught the stale uid index");
    for (seed, violations, replay) in &caught {
        assert!(
            replay.contains("--sabotage stale-uid-rows"),
            "seed {seed}: {replay}"
        );
        assert!(
            violations.iter().any(|v| v.starts_with("[index-disagrees]")),
            "seed {seed}: {violations:?}"
        );
    }
}

/// A COPY or MOVE that never answers (the handler waits for ever): every client operation must
/// answer within the bound, so the hang is reported with the operation's trace line, and the
/// seed replays with the sabotage.
#[test]
fn an_operation_that_never_answers_is_caught() {
    let caught = caught("transfer-never-answers");
    assert!(!caught.is_empty(), "no seed caught the hanging transfer");
    for (seed, violations, replay) in &caught {
        assert!(
            replay.ends_with(&format!(
                "--seed {seed} --trace --no-set-primary --no-wipes --no-locations --sabotage transfer-never-answers"
            )),
            "{replay}"
        );
        assert!(
            violations.iter().any(|v| v.starts_with("[no-answer]")
                && (v.contains(" Transfer on n") || v.contains(" OppositeTransfers on n"))
                && v.contains("no answer within")),
            "seed {seed}: {violations:?}"
        );
    }
}

/// Asserts that `sabotage` is caught on some seed with a violation of one of `kinds`, and that
/// every caught seed's replay command names the sabotage.
fn assert_caught_as(sabotage: &str, kinds: &[&str]) {
    assert_caught_with_as(sabotage, &WITHOUT_WIPES_OR_MOVES, kinds)
}

fn assert_caught_with_as(sabotage: &str, workload: &[&str], kinds: &[&str]) {
    assert_caught_in_seeds_as(sabotage, workload, "0..12", kinds)
}

fn assert_caught_in_seeds_as(sabotage: &str, workload: &[&str], seeds: &str, kinds: &[&str]) {
    let caught = caught_in_seeds(sabotage, workload, seeds);
    assert!(!caught.is_empty(), "no seed caught --sabotage {sabotage}");
    for (seed, _, replay) in &caught {
        assert!(
            replay.contains(&format!("--sabotage {sabotage}")),
            "seed {seed}: {replay}"
        );
    }
    assert!(
        caught.iter().any(|(_, violations, _)| violations
            .iter()
            .any(|v| kinds.iter().any(|k| v.starts_with(&format!("[{k}]"))))),
        "--sabotage {sabotage} caught, but never as {kinds:?}: {caught:?}"
    );
}

/// A wiped store minting identities from zero again: a new message gets an AppendId its lost
/// store gave another one.
#[test]
fn identities_reused_after_a_wipe_are_caught() {
    assert_caught_with_as("identities-from-zero", &["--no-locations"], &["identity-reused"]);
}

/// A node that keeps a record hidden after its uid conflict was settled: every record and version
/// agrees, only the hidden bit differs, and only the whole-state comparison sees it.
#[test]
fn a_record_left_hidden_on_one_replica_is_caught() {
    assert_caught_as("hidden-stays-hidden", &["diverged"]);
}

/// Every change request pushed twice over its link: nothing echoes and nothing is lost, only the
/// per-link and per-topology crossing bound sees the waste.
#[test]
fn changes_pushed_twice_are_caught_as_crossings_alone() {
    let caught = caught("changes-pushed-twice");
    assert!(!caught.is_empty(), "no seed caught the doubled pushes");
    for (seed, violations, replay) in &caught {
        assert!(replay.contains("--sabotage changes-pushed-twice"), "{replay}");
        assert!(
            violations.iter().all(|v| v.starts_with("[crossings]")),
            "seed {seed}: only the crossing bound should fire: {violations:?}"
        );
    }
}

/// A primary that promotes all but one record of a contested uid: the replicas agree and nothing
/// is hidden or lost, but a uid clients saw as two messages still shows one of them.
#[test]
fn a_uid_conflict_kept_at_its_uid_is_caught() {
    assert_caught_as("promotion-keeps-one", &["uid-conflict-kept"]);
}

/// A live mailbox entry from a peer replacing the DELETED tombstone: the mailbox comes back.
#[test]
fn a_mailbox_coming_back_is_caught() {
    assert_caught_as("mailbox-tombstone-not-sticky", &["mailbox-back"]);
}

/// APPEND giving a new message the previous message's uid: clients see one uid as two messages.
#[test]
fn uid_reuse_is_caught() {
    assert_caught_as("reuse-uids", &["uid-reused"]);
}

/// Counters rebuilt from the records alone when a mailbox opens: UIDNEXT or HIGHESTMODSEQ goes
/// down after a restart.
#[test]
fn counters_going_down_are_caught() {
    assert_caught_as("counters-from-records", &["went-down"]);
}

/// A live copy from a peer replacing an expunged record: the message comes back.
#[test]
fn a_message_coming_back_is_caught() {
    // A message is judged back only once some node was seen showing it expunged; in seeds
    // 0..12 the sabotage now revives messages before any check sees the expunge (change
    // requests carrying small bodies changed their scheduling), caught only as bodies missing.
    // Seeds 24 and 27 of this range show it expunged first.
    assert_caught_in_seeds_as(
        "expunge-not-sticky",
        &WITHOUT_WIPES_OR_MOVES,
        "20..32",
        &["message-back"],
    );
}

/// Locations added, removed and re-added (`--locations`): the run replays byte for byte and its
/// clients move mailboxes between random subsets of the nodes (the range itself is judged by
/// `seed_range_with_location_changes_passes_the_checks`).
#[test]
fn location_changes_replay() {
    let config = SimConfig {
        wipes: false,
        ..SimConfig::default()
    };
    // Which seed moves several mailboxes depends on the engine's scheduling (pipelined sync
    // pages changed seed 5's run): the first of a few seeds that does is the one replayed.
    let moved = |trace: &[String]| {
        trace
            .iter()
            .filter(|l| l.contains("set locations") && l.ends_with(": ok"))
            .count()
    };
    let (seed, a) = (5..15)
        .map(|seed| (seed, run_seed(seed, &config)))
        .find(|(_, run)| moved(&run.trace) >= 3)
        .expect("one of seeds 5 to 14 moves at least 3 mailboxes");
    let b = run_seed(seed, &config);
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "the run of seed {seed} with location changes replays"
    );
}
