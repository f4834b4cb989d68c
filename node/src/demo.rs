//! `mailmesh demo`: a three-node cluster on this machine, with no set-up. It makes a cluster CA
//! and three node configurations in a fresh directory, starts three real `mailmesh run`
//! processes of this executable on loopback ports picked free as a full mesh, appends messages on
//! one node and shows them arriving on the other two with the time it took; then rewrites the
//! configurations into a chain n1 - n2 - n3, reloads them (SIGHUP), and shows a message appended
//! on n1 reach n3 through n2. It prints where the files and logs are and how to ask each node for
//! its status, and runs until Ctrl-C (or, with `--exit-when-done`, stops by itself).
//!
//! The nodes are started and driven with the benchmark's [`crate::bench::nodes`]: the same
//! configuration files an operator would write, the same operator socket `mailmesh status` uses.
//! Every way out (done, Ctrl-C, SIGTERM, an error) stops the three children: cleanly by SIGTERM
//! where they answer, killed where they do not; if the demo itself is killed, the kernel sends
//! them SIGTERM (parent-death signal, set where they are started). The directory is kept, for
//! its logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailmesh_protocol::ids::Guid;
use serde_bytes::ByteBuf;

use crate::bench::lmtp::free_tcp_port;
use crate::bench::nodes::{Cluster, NodeProcess, NodeSpec};
use crate::error::Error;
use crate::operator::protocol::{Reply, Request};

/// The demo's user and mailbox.
const USER: &str = "demo";
const MAILBOX: &str = "INBOX";
/// The demo user's password (its IMAP login).
const PASSWORD: &str = "demo";
/// How long any one step (a node starting, links coming up, a message arriving) may take before
/// the demo gives up; generous, for a loaded machine.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

pub struct DemoOptions {
    /// Where the demo's directory is made (the system's temporary directory by default).
    pub dir: Option<PathBuf>,
    /// Stop the nodes and exit after the chain step instead of waiting for Ctrl-C.
    pub exit_when_done: bool,
}

/// Set by SIGINT or SIGTERM: every wait of the demo checks it and winds down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Why a step ended early.
enum Stop {
    /// Ctrl-C or SIGTERM: not a failure.
    Interrupted,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

pub fn run(options: DemoOptions) -> Result<(), Error> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; installed before
    // any thread or child exists. The children get the terminal's Ctrl-C as well (same process
    // group) and stop by themselves; SIGTERM from the demo covers the other cases.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_interrupt as *const () as libc::sighandler_t);
    }
    let root = make_root(options.dir)?;
    println!(
        "mailmesh demo: a three-node cluster on this machine, in {}",
        root.display()
    );
    let outcome = demo(&root, options.exit_when_done);
    match outcome {
        Ok(()) => {
            println!(
                "the files and logs stay in {} (remove it when done)",
                root.display()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("demo: failed; the files and logs are in {}", root.display());
            Err(match e {
                Error::Bench(message) => Error::Demo(message),
                other => other,
            })
        }
    }
}

/// A fresh directory: `<base>/mailmesh-demo-<pid>-<ms>`.
fn make_root(base: Option<PathBuf>) -> Result<PathBuf, Error> {
    let base = base.unwrap_or_else(std::env::temp_dir);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let root = std::path::absolute(base.join(format!("mailmesh-demo-{}-{stamp}", std::process::id())))
        .map_err(|e| Error::io("cannot resolve the demo directory", e))?;
    std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
    Ok(root)
}

fn demo(root: &Path, exit_when_done: bool) -> Result<(), Error> {
    let cluster = Cluster::new(root)?;
    let names = ["n1", "n2", "n3"];
    // Each node also takes mail: IMAP and LMTP on loopback ports, where a password may cross
    // without TLS, with one user whose INBOX is the mailbox the demo fills.
    let hash = crate::auth::hash_password(PASSWORD.as_bytes()).map_err(Error::Bench)?;
    let mut mail = Vec::new();
    let mut specs = Vec::new();
    for name in names {
        let (imap, lmtp) = (free_tcp_port()?, free_tcp_port()?);
        let extra = format!(
            "\n[imap]\nlisten = \"127.0.0.1:{imap}\"\n\n[lmtp]\nlisten = \"127.0.0.1:{lmtp}\"\n\n[[users]]\nname = {USER:?}\npassword_hash = {hash:?}\n"
        );
        specs.push(cluster.node(name, &extra)?);
        mail.push(MailPorts { imap, lmtp });
    }
    println!(
        "made a cluster CA ({}) and a certificate for each node ({})",
        relative(root, &cluster.ca_dir().join("ca.pem")),
        names
            .iter()
            .map(|n| relative(root, &cluster.certs_dir().join(format!("{n}.pem"))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for spec in &specs {
        let others: Vec<&NodeSpec> = specs.iter().filter(|p| p.name != spec.name).collect();
        spec.write_config(&others)?;
    }
    println!("wrote the configurations as a full mesh (every node peers with the other two)");

    // The nodes start one by one; a failure or Ctrl-C part way stops those already running.
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for spec in &specs {
        if interrupted() {
            break;
        }
        let node = match spec.start() {
            Ok(node) => node,
            // A Ctrl-C reaches the node being started too: it stops, which is no failure.
            Err(_) if interrupted() => break,
            Err(e) => {
                if let Err(also) = stop_all(nodes) {
                    eprintln!("{also}");
                }
                return Err(e);
            }
        };
        println!(
            "  {} started: pid {}, QUIC on {}, config {}, log {}",
            spec.name,
            node.pid(),
            spec.address(),
            relative(root, &spec.config_path()),
            relative(root, &spec.log_path())
        );
        nodes.push(node);
    }
    let outcome = if nodes.len() == specs.len() {
        steps(root, &specs, &mail, &mut nodes, exit_when_done)
    } else {
        Err(Stop::Interrupted)
    };
    let stopped = stop_all(nodes);
    // A step cut short by a Ctrl-C (a node stopped under it) is the Ctrl-C, not a failure.
    let outcome = match outcome {
        Err(Stop::Failed(_)) if interrupted() => Err(Stop::Interrupted),
        other => other,
    };
    match outcome {
        Ok(()) | Err(Stop::Interrupted) => {
            stopped?;
            println!("stopped the nodes");
            Ok(())
        }
        Err(Stop::Failed(e)) => {
            if let Err(also) = stopped {
                eprintln!("{also}");
            }
            Err(e)
        }
    }
}

/// The client-facing ports of one demo node.
struct MailPorts {
    imap: u16,
    lmtp: u16,
}

fn steps(
    root: &Path,
    specs: &[NodeSpec],
    mail: &[MailPorts],
    nodes: &mut [NodeProcess],
    exit_when_done: bool,
) -> Result<(), Stop> {
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let took = wait_for_links(nodes, &[&["n2", "n3"], &["n1", "n3"], &["n1", "n2"]])?;
    println!("links up: n1 - n2, n1 - n3, n2 - n3 ({})", millis(took));

    n1.create_mailbox(USER, MAILBOX)?;
    wait_for("every node to have the mailbox", || {
        for node in [n2, n3] {
            if node.mailbox(USER, MAILBOX)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    println!("appending 3 messages to {USER}'s {MAILBOX} on n1:");
    for i in 1..=3 {
        let (uid, arrived) = append_and_follow(n1, &[n2, n3], i)?;
        println!(
            "  message {i} (uid {uid}) appended on n1: arrived on n2 after {}, arrived on n3 after {}",
            millis(arrived[0]),
            millis(arrived[1])
        );
    }

    // The chain: n1 and n3 each keep only n2; n2 keeps both. The files are rewritten whole and
    // every node is told by SIGHUP (each also sees its file change).
    specs[0].write_config(&[&specs[1]])?;
    specs[1].write_config(&[&specs[0], &specs[2]])?;
    specs[2].write_config(&[&specs[1]])?;
    for node in nodes.iter() {
        node.reload()?;
    }
    println!("rewrote the configurations into a chain n1 - n2 - n3 and sent each node SIGHUP");
    let took = wait_for_links(nodes, &[&["n2"], &["n1", "n3"], &["n2"]])?;
    println!(
        "reloaded without a restart: n1 links to n2 only, n3 to n2 only ({})",
        millis(took)
    );
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    println!("appending a message on n1:");
    let (uid, arrived) = append_and_follow(n1, &[n2, n3], 4)?;
    println!(
        "  message 4 (uid {uid}) appended on n1: arrived on n2 after {}, arrived on n3 (through n2) after {}",
        millis(arrived[0]),
        millis(arrived[1])
    );

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "mailmesh".into());
    println!();
    println!("files (in {}):", root.display());
    println!("  ca/          the cluster CA (ca.pem, ca.key)");
    println!("  certs/       each node's certificate and key (n1.pem, n1.key, ...)");
    println!("  nN/node.toml each node's configuration (now the chain)");
    println!("  nN/data/     each node's store and its operator socket (mailmesh.sock)");
    println!("  nN/node.log  each node's log");
    println!("ask a node for its peers, sync logs and traffic:");
    for spec in specs {
        println!("  {exe} status --config {}", spec.config_path().display());
    }
    println!(
        "or list the messages: {exe} fetch --config {} --user {USER} --mailbox {MAILBOX}",
        specs[2].config_path().display()
    );
    println!(
        "read the mail with any IMAP client (login {USER}, password {PASSWORD}; plaintext on loopback):"
    );
    for (spec, ports) in specs.iter().zip(mail) {
        println!(
            "  {}: IMAP 127.0.0.1:{}, LMTP 127.0.0.1:{}",
            spec.name, ports.imap, ports.lmtp
        );
    }
    if exit_when_done {
        return Ok(());
    }
    println!("the nodes keep running; press Ctrl-C to stop all three");
    loop {
        if interrupted() {
            println!();
            return Err(Stop::Interrupted);
        }
        for node in nodes.iter_mut() {
            if !node.is_running() {
                return Err(Stop::Failed(node.failed("exited by itself")));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops every node cleanly (SIGTERM, then waits); the first failure is returned, the others are
/// still stopped (a node that will not stop is killed when its handle is dropped).
fn stop_all(nodes: Vec<NodeProcess>) -> Result<(), Error> {
    let mut first = None;
    for node in nodes {
        if let Err(e) = node.stop() {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Polls `check` every millisecond until it holds; returns how long that took.
fn wait_for(what: &str, mut check: impl FnMut() -> Result<bool, Error>) -> Result<Duration, Stop> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if interrupted() {
            return Err(Stop::Interrupted);
        }
        if start.elapsed() > STEP_DEADLINE {
            return Err(Stop::Failed(Error::Demo(format!(
                "waited {STEP_DEADLINE:?} for {what}"
            ))));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until each node's peers are exactly `expected` (by position), every link connected and
/// replicating.
fn wait_for_links(nodes: &[NodeProcess], expected: &[&[&str]]) -> Result<Duration, Stop> {
    wait_for("the links between the nodes", || {
        for (node, want) in nodes.iter().zip(expected) {
            let status = node.status()?;
            let names: Vec<&str> = status.peers.iter().map(|p| p.name.as_str()).collect();
            let up = status
                .peers
                .iter()
                .all(|p| p.connected == Some(true) && p.replicating);
            if names != *want || !up {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Appends message `i` on `origin` and waits until each of `others` has it; returns its uid and
/// how long after the append's answer it showed on each.
fn append_and_follow(
    origin: &NodeProcess,
    others: &[&NodeProcess],
    i: usize,
) -> Result<(u32, Vec<Duration>), Stop> {
    let body = format!(
        "From: demo@example.org\r\nTo: demo@example.org\r\nSubject: demo message {i}\r\nMessage-ID: <demo-{i}@mailmesh>\r\n\r\nHello from n1, message {i}.\r\n"
    );
    // The node names a message by the hash of its bytes: that is what to look for elsewhere.
    let guid = Guid::of(body.as_bytes()).to_string();
    let reply = origin.call(Request::Append {
        user: USER.into(),
        mailbox: MAILBOX.into(),
        body: ByteBuf::from(body.into_bytes()),
        flags: Vec::new(),
    })?;
    let start = Instant::now();
    let Reply::Appended { uid, .. } = reply else {
        return Err(Stop::Failed(
            origin.failed("answered an append with something else"),
        ));
    };
    let mut arrived: Vec<Option<Duration>> = vec![None; others.len()];
    wait_for(&format!("message {i} to arrive everywhere"), || {
        for (node, seen) in others.iter().zip(arrived.iter_mut()) {
            if seen.is_none() && node.messages(USER, MAILBOX)?.iter().any(|m| m.guid == guid) {
                *seen = Some(start.elapsed());
            }
        }
        Ok(arrived.iter().all(Option::is_some))
    })?;
    Ok((uid, arrived.into_iter().flatten().collect()))
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}
