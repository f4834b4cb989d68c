//! The seed runner.
//!
//! - `mailmesh-simulations --seeds 0..1000 [--jobs 2]`: runs the seeds, each in a process of its
//!   own (an engine panic fails that seed, not the run), and prints a summary: seeds run, virtual
//!   time simulated, faults injected, violations. Every failing seed is printed with its
//!   violations and the exact command that replays it. Exits 1 if any seed failed.
//! - `mailmesh-simulations --seed N --trace`: runs one seed here and prints its trace
//!   (`--live` prints it as it happens, which shows what led up to a panic).
//! - `mailmesh-simulations bench`: virtual seconds simulated per real second, and seeds per
//!   minute, for 5-node runs with faults (one seed at a time, on one core).

use std::io::Read;
use std::ops::Range;
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mailmesh_simulations::checks::{Kind, Violation};
use mailmesh_simulations::config::sabotage_switches;
use mailmesh_simulations::run::{run_seed, FaultCounts, SimConfig, SimReport};
use mailmesh_simulations::trace::short_hash;
use mailmesh_simulations::worker;

#[derive(Parser)]
#[command(
    name = "mailmesh-simulations",
    about = "Deterministic multi-node simulation of mailmesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Seeds to run, as START..END (END excluded).
    #[arg(long, default_value = "0..100", value_parser = parse_range)]
    seeds: Range<u64>,
    /// Run this one seed, in this process (instead of --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the trace of the seed.
    #[arg(long)]
    trace: bool,
    /// Print the trace to stderr as it happens.
    #[arg(long)]
    live: bool,
    /// Add every node's message records to the trace at the end (with --trace).
    #[arg(long)]
    dump: bool,
    /// Client operations and fault events per seed.
    #[arg(long, default_value_t = SimConfig::default().steps)]
    steps: usize,
    /// Nodes per cluster (2 to 7; drawn from the seed when absent).
    #[arg(long, value_parser = clap::value_parser!(u8).range(2..=7))]
    nodes: Option<u8>,
    /// A healthy cluster: no network faults, crashes, partitions or topology edits.
    #[arg(long)]
    no_faults: bool,
    /// Only the first N nodes create mailboxes and add messages.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=7))]
    writers: Option<u8>,
    /// Clients never name another preferred primary.
    #[arg(long)]
    no_set_primary: bool,
    /// Never wipe a node (by default nodes now and then lose their whole disk and rejoin under
    /// the same name).
    #[arg(long)]
    no_wipes: bool,
    /// Never move mailboxes (by default clients now and then set mailboxes' locations to random
    /// subsets of the nodes).
    #[arg(long)]
    no_locations: bool,
    /// Records per sync request on every channel (drawn from the seed when absent).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    page: Option<u32>,
    /// Switch on a deliberately broken engine behaviour (to see the checks catch it).
    #[arg(long, value_parser = parse_sabotage)]
    sabotage: Vec<String>,
    /// Seeds run at once (each in its own process).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Wall-clock seconds one seed may take before it counts as hung.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// A line per seed, not only per failing seed.
    #[arg(long, short)]
    verbose: bool,
    /// Run one seed and print its report for a parent runner (internal).
    #[arg(long, hide = true)]
    worker: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Virtual seconds per real second and seeds per minute for 5-node runs with faults.
    Bench {
        /// Seeds to run for the measurement.
        #[arg(long, default_value = "0..10", value_parser = parse_range)]
        seeds: Range<u64>,
    },
}

/// A `--sabotage` name, checked against the list the replay command prints from.
fn parse_sabotage(name: &str) -> Result<String, String> {
    let mut faults = Default::default();
    let names: Vec<&str> = sabotage_switches(&mut faults)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if names.contains(&name) {
        Ok(name.to_string())
    } else {
        Err(format!("unknown sabotage; one of: {}", names.join(", ")))
    }
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range like 0..1000"))?;
    let start: u64 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let end: u64 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if end <= start {
        return Err(format!("{s:?} is empty"));
    }
    Ok(start..end)
}

impl Cli {
    fn config(&self) -> SimConfig {
        let mut config = SimConfig {
            steps: self.steps,
            nodes: self.nodes.map(usize::from),
            page: self.page.map(|p| p as usize),
            writers: self.writers.map(usize::from),
            set_primary: !self.no_set_primary,
            wipes: !self.no_wipes,
            locations: !self.no_locations,
            faults: !self.no_faults,
            live_trace: self.live,
            dump: self.dump,
            ..SimConfig::default()
        };
        for name in &self.sabotage {
            for (known, on) in sabotage_switches(&mut config.engine_faults) {
                if known == name {
                    *on = true;
                }
            }
        }
        config
    }
}

/// Totals over many seeds.
#[derive(Default)]
struct Summary {
    seeds: u64,
    failed: Vec<u64>,
    violations: u64,
    virtual_time: Duration,
    busy_time: Duration,
    faults: FaultCounts,
    client_ops: u64,
    changes: u64,
    requests: u64,
    records: u64,
    probes: u64,
    probe_records: u64,
    probe_links: u64,
    probe_max: u64,
}

impl Summary {
    fn add(&mut self, r: &SimReport) {
        self.seeds += 1;
        if !r.violations.is_empty() {
            self.failed.push(r.seed);
        }
        self.violations += r.violations.len() as u64;
        self.virtual_time += r.virtual_time;
        self.busy_time += r.busy_time;
        let f = &r.faults;
        self.faults.crashes += f.crashes;
        self.faults.wipes += f.wipes;
        self.faults.partitions += f.partitions;
        self.faults.topology_edits += f.topology_edits;
        self.faults.dropped_requests += f.dropped_requests;
        self.faults.dropped_responses += f.dropped_responses;
        self.faults.duplicated += f.duplicated;
        self.client_ops += r.client_ops;
        self.changes += r.changes;
        self.requests += r.requests;
        self.records += r.records;
        if let Some(p) = r.probe {
            self.probes += 1;
            self.probe_records += p.records;
            self.probe_links += p.links as u64;
            self.probe_max = self.probe_max.max(p.max_per_link);
        }
    }

    fn print(&self, real: Duration) {
        let f = &self.faults;
        let per_real = |x: f64| x / real.as_secs_f64().max(1e-9);
        println!("seeds run:          {}", self.seeds);
        println!(
            "virtual time:       {} ({:.0} virtual s per real s); until quiescence {} ({:.0} per real s)",
            hms(self.virtual_time),
            per_real(self.virtual_time.as_secs_f64()),
            hms(self.busy_time),
            per_real(self.busy_time.as_secs_f64())
        );
        println!(
            "faults injected:    {} (crashes {}, wipes {}, partitions {}, topology edits {}, requests dropped {}, answers dropped {}, duplicated {})",
            f.total(),
            f.crashes,
            f.wipes,
            f.partitions,
            f.topology_edits,
            f.dropped_requests,
            f.dropped_responses,
            f.duplicated
        );
        println!(
            "client operations:  {} ({} changed something)",
            self.client_ops, self.changes
        );
        println!(
            "network:            {} requests, {} records carried ({:.1} per change, faults and full syncs included)",
            self.requests,
            self.records,
            self.records as f64 / self.changes.max(1) as f64
        );
        if self.probes > 0 {
            println!(
                "crossings:          one change in a quiet cluster crossed a link {:.2} times on average, at most {} times",
                self.probe_records as f64 / self.probe_links.max(1) as f64,
                self.probe_max
            );
        }
        let failed = if self.failed.is_empty() {
            String::new()
        } else {
            format!(" {:?}", self.failed)
        };
        println!(
            "violations:         {} in {} seeds{failed}",
            self.violations,
            self.failed.len()
        );
        println!(
            "real time:          {} ({:.1} seeds per minute)",
            hms(real),
            per_real(self.seeds as f64 * 60.0)
        );
    }
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

fn print_seed(r: &SimReport, config: &SimConfig, verbose: bool) {
    if r.violations.is_empty() {
        if verbose {
            println!(
                "seed {}: ok ({}, {} ops, {} faults, {} virtual, trace {})",
                r.seed,
                r.cluster,
                r.client_ops,
                r.faults.total(),
                hms(r.virtual_time),
                short_hash(&r.trace_hash)
            );
        }
        return;
    }
    println!(
        "seed {} FAILED ({}, {} ops, {} faults, trace {}): {} violations",
        r.seed,
        r.cluster,
        r.client_ops,
        r.faults.total(),
        short_hash(&r.trace_hash),
        r.violations.len()
    );
    for v in r.violations.iter().take(10) {
        println!("  {v}");
    }
    if r.violations.len() > 10 {
        println!("  ... and {} more", r.violations.len() - 10);
    }
    println!("  replay: {}", config.replay_command(r.seed));
}

/// The replay command of the seed running in this process, for the panic hook.
static REPLAY: Mutex<Option<String>> = Mutex::new(None);

/// On a panic (an engine bug), say which seed it was and how to replay it before the process
/// dies: a panic inside the actor system usually ends in an abort that nothing can catch.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if let Some(replay) = REPLAY.lock().ok().and_then(|r| r.clone()) {
            eprintln!("the engine panicked; replay: {replay}");
        }
    }));
}

fn run_here(seed: u64, config: &SimConfig) -> SimReport {
    *REPLAY.lock().expect("replay lock") = Some(config.replay_command(seed));
    let report = run_seed(seed, config);
    // A panic from here on (a closed stdout, say) is not the engine's.
    *REPLAY.lock().expect("replay lock") = None;
    report
}

/// Runs one seed in a child process and reads its report; a child that dies or hangs is a
/// violation of that seed.
fn run_child(seed: u64, config: &SimConfig, timeout: Duration) -> SimReport {
    let failed = |kind: Kind, what: String| SimReport {
        seed,
        cluster: "?".into(),
        violations: vec![Violation { at_ms: 0, kind, what }],
        ..SimReport::default()
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(Kind::Panic, format!("cannot find the runner binary: {e}")),
    };
    let mut child = match Process::new(exe)
        .args(["--worker", "--seed", &seed.to_string()])
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(Kind::Panic, format!("cannot start a worker: {e}")),
    };
    // Drain both pipes on threads of their own so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut hung = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout => {
                hung = true;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if hung {
        return failed(Kind::Hung, format!("no result after {timeout:?} of real time"));
    }
    match worker::decode(&out) {
        Ok(report) => report,
        Err(_) => {
            // The panic message is the line after "panicked at <location>:".
            let mut lines = err.lines();
            let panic = lines
                .by_ref()
                .find(|l| l.contains("panicked at"))
                .map(|at| format!("{} {}", at.trim(), lines.next().unwrap_or_default().trim()))
                .unwrap_or_else(|| format!("the run died: {}", err.lines().last().unwrap_or_default()));
            failed(Kind::Panic, panic)
        }
    }
}

/// Runs `seeds` in child processes, `jobs` at a time, printing each seed's result in seed order.
fn run_seeds(
    seeds: Range<u64>,
    config: &SimConfig,
    jobs: usize,
    timeout: Duration,
    verbose: bool,
) -> Summary {
    let next = AtomicU64::new(seeds.start);
    let done: Mutex<std::collections::BTreeMap<u64, SimReport>> = Mutex::default();
    let printed = Mutex::new((seeds.start, Summary::default()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    return;
                }
                let report = run_child(seed, config, timeout);
                done.lock().expect("results").insert(seed, report);
                // Print whatever is ready, in seed order.
                let mut printed = printed.lock().expect("printer");
                let mut done = done.lock().expect("results");
                while let Some(r) = done.remove(&printed.0) {
                    print_seed(&r, config, verbose);
                    printed.1.add(&r);
                    printed.0 += 1;
                }
            });
        }
    });
    printed.into_inner().expect("printer").1
}

fn main() -> ExitCode {
    // Piped into `head` or `less`, the runner stops quietly when the reader goes away, as other
    // command-line tools do, instead of panicking on the next print.
    // SAFETY: setting a signal's disposition to the default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let config = cli.config();
    install_panic_hook();
    if cli.worker {
        let Some(seed) = cli.seed else {
            eprintln!("--worker needs --seed");
            return ExitCode::FAILURE;
        };
        print!("{}", worker::encode(&run_here(seed, &config)));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Bench { seeds }) = &cli.command {
        return bench(seeds.clone(), &config, Duration::from_secs(cli.timeout));
    }
    let started = Instant::now();
    let summary = match cli.seed {
        Some(seed) => {
            let report = run_here(seed, &config);
            if cli.trace {
                for line in &report.trace {
                    println!("{line}");
                }
                println!("trace hash {}", short_hash(&report.trace_hash));
            }
            print_seed(&report, &config, true);
            let mut summary = Summary::default();
            summary.add(&report);
            summary
        }
        None => run_seeds(
            cli.seeds.clone(),
            &config,
            cli.jobs,
            Duration::from_secs(cli.timeout),
            cli.verbose,
        ),
    };
    summary.print(started.elapsed());
    if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs 5-node seeds with faults one at a time (each in its own process, as `--seeds` does, so an
/// engine panic costs one seed) and prints how fast the simulation goes.
fn bench(seeds: Range<u64>, config: &SimConfig, timeout: Duration) -> ExitCode {
    let config = SimConfig {
        nodes: Some(5),
        faults: true,
        ..config.clone()
    };
    println!(
        "bench: seeds {}..{}, 5 nodes, faults on, {} steps per seed, one seed at a time",
        seeds.start, seeds.end, config.steps
    );
    let started = Instant::now();
    let summary = run_seeds(seeds, &config, 1, timeout, true);
    let real = started.elapsed();
    summary.print(real);
    let per_real = |x: f64| x / real.as_secs_f64().max(1e-9);
    println!(
        "bench:              {:.0} virtual seconds per real second ({:.0} counting only the time until quiescence, the rest being the quiet waits), {:.1} seeds per minute",
        per_real(summary.virtual_time.as_secs_f64()),
        per_real(summary.busy_time.as_secs_f64()),
        per_real(summary.seeds as f64 * 60.0)
    );
    ExitCode::SUCCESS
}
