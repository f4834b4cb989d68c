//! The nodes a benchmark runs: real `mailmesh run` processes of this very executable, on
//! loopback ports picked free, each with its own directory (config file, data, log), certificates
//! from one cluster CA made by `mailmesh certs`' code, and driven through their operator sockets.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::cluster::certs;
use crate::error::Error;
use crate::operator::client::OperatorClient;
use crate::operator::protocol::{MailboxRow, MessageRow, NodeStatus, Reply, Request};

/// The longest a node may take to start, to stop, or a replication step to finish before the
/// benchmark gives up on that row.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A cluster's certificates and the directory its nodes live in.
pub struct Cluster {
    root: PathBuf,
    ca: PathBuf,
    certs: PathBuf,
}

impl Cluster {
    /// A new cluster CA in `root` (created).
    pub fn new(root: &Path) -> Result<Cluster, Error> {
        let ca = root.join("ca");
        certs::make_ca(&ca, 2)?;
        Ok(Cluster {
            root: root.to_path_buf(),
            certs: root.join("certs"),
            ca,
        })
    }

    /// A node named `name` with its certificate; `extra` is appended to its configuration
    /// (e.g. a `[mailboxes]` section).
    pub fn node(&self, name: &str, extra: &str) -> Result<NodeSpec, Error> {
        certs::make_node(name, &self.ca, &self.certs, 2)?;
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(NodeSpec {
            name: name.to_string(),
            port: free_udp_port()?,
            ca: self.ca.join(certs::CA_CERT),
            cert: self.certs.join(format!("{name}.pem")),
            key: self.certs.join(format!("{name}.key")),
            extra: extra.to_string(),
            dir,
        })
    }

    pub fn ca_dir(&self) -> &Path {
        &self.ca
    }

    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> Result<u16, Error> {
    let socket =
        std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::io("cannot bind a UDP port", e))?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("cannot read a UDP port", e))
}

/// One node's files: `<root>/<name>/node.toml`, `data/`, `node.log`.
pub struct NodeSpec {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    extra: String,
}

impl NodeSpec {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Writes the node's configuration with `peers` as its `[[peers]]` (a complete new file
    /// renamed over the old one, so a watching node never reads half of it).
    pub fn write_config(&self, peers: &[&NodeSpec]) -> Result<(), Error> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut text = format!(
            "[node]\nname = {:?}\n\n[storage]\ndata_dir = {:?}\n\n[cluster]\nlisten = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.name,
            path(&self.data_dir()),
            self.address(),
            path(&self.ca),
            path(&self.cert),
            path(&self.key),
        );
        text.push_str(&self.extra);
        for peer in peers {
            let _ = write!(
                text,
                "\n[[peers]]\nname = {:?}\naddress = {:?}\n",
                peer.name,
                peer.address()
            );
        }
        let tmp = self.dir.join("node.toml.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, self.config_path()))
            .map_err(|e| Error::io(format!("cannot write {}", self.config_path().display()), e))
    }

    /// Starts `mailmesh run` on the configuration written last and waits until its operator
    /// socket answers.
    pub fn start(&self) -> Result<NodeProcess, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::io("cannot find the mailmesh executable", e))?;
        let log = File::create(self.log_path())
            .map_err(|e| Error::io(format!("cannot create {}", self.log_path().display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("cannot duplicate the log file", e))?;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // The nodes log at info unless RUST_LOG asks for more (to see where time goes).
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        // The node reads its configuration from the file alone, whatever the shell exports.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MAILMESH_") {
                cmd.env_remove(key);
            }
        }
        stop_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("cannot start node {}", self.name), e))?;
        let mut process = NodeProcess {
            name: self.name.clone(),
            data_dir: self.data_dir(),
            log: self.log_path(),
            child,
            client: RefCell::new(None),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(client) = OperatorClient::connect(&process.data_dir)? {
                *process.client.borrow_mut() = Some(client);
                if process.status().is_ok() {
                    return Ok(process);
                }
            }
            process.check_alive()?;
            if Instant::now() > deadline {
                return Err(process.failed("did not open its operator socket in time"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Asks the kernel to send the child SIGTERM when this process dies, however it dies (SIGKILL
/// included, which runs no destructor): a killed `mailmesh demo` or `bench` leaves no node
/// behind. The signal follows the thread that started the child; every node is started from the
/// main thread, which lives as long as the process.
fn stop_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the child between fork and exec, calling only async-signal-safe system
        // calls (prctl, getppid) and allocating nothing.
        let parent = std::process::id();
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the request took effect.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the parent exited while starting the node"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A running node; dropping it kills the process if [`NodeProcess::stop`] was not called.
pub struct NodeProcess {
    pub name: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Child,
    client: RefCell<Option<OperatorClient>>,
}

impl NodeProcess {
    /// A new operator connection of its own (for a thread of its own).
    pub fn connect(&self) -> Result<OperatorClient, Error> {
        OperatorClient::connect(&self.data_dir)?.ok_or_else(|| self.failed("its operator socket is gone"))
    }

    /// Sends `request` on this process's main operator connection.
    pub fn call(&self, request: Request) -> Result<Reply, Error> {
        let mut client = self.client.borrow_mut();
        if client.is_none() {
            *client = Some(self.connect()?);
        }
        let result = client.as_mut().expect("connected above").call(request);
        if matches!(result, Err(Error::Io { .. })) {
            // The connection is unusable after an I/O failure; the next call makes a new one.
            *client = None;
        }
        result
    }

    pub fn status(&self) -> Result<NodeStatus, Error> {
        match self.call(Request::Status)? {
            Reply::Status(status) => Ok(status),
            _ => Err(self.failed("answered status with something else")),
        }
    }

    pub fn create_mailbox(&self, user: &str, name: &str) -> Result<(), Error> {
        self.call(Request::CreateMailbox {
            user: user.into(),
            name: name.into(),
        })
        .map(drop)
    }

    /// The user's mailbox `name`, if the node has it.
    pub fn mailbox(&self, user: &str, name: &str) -> Result<Option<MailboxRow>, Error> {
        match self.call(Request::ListMailboxes { user: user.into() })? {
            Reply::Mailboxes(rows) => Ok(rows.into_iter().find(|r| r.name == name)),
            _ => Err(self.failed("answered list-mailboxes with something else")),
        }
    }

    /// Messages in the user's mailbox `name`; 0 while the node lacks the mailbox.
    pub fn message_count(&self, user: &str, name: &str) -> Result<u64, Error> {
        Ok(self.mailbox(user, name)?.map(|r| r.messages).unwrap_or(0))
    }

    pub fn messages(&self, user: &str, name: &str) -> Result<Vec<MessageRow>, Error> {
        match self.call(Request::ListMessages {
            user: user.into(),
            mailbox: name.into(),
        })? {
            Reply::Messages(rows) => Ok(rows),
            _ => Err(self.failed("answered list-messages with something else")),
        }
    }

    /// Messages in the user's mailbox `name` with a uid in `first..=last`.
    pub fn message_range(
        &self,
        user: &str,
        name: &str,
        first: u32,
        last: u32,
    ) -> Result<Vec<MessageRow>, Error> {
        match self.call(Request::ListMessageRange {
            user: user.into(),
            mailbox: name.into(),
            first_uid: first,
            last_uid: last,
        })? {
            Reply::Messages(rows) => Ok(rows),
            _ => Err(self.failed("answered list-message-range with something else")),
        }
    }

    /// Asks the node to reload its configuration file (SIGHUP).
    pub fn reload(&self) -> Result<(), Error> {
        self.signal(libc::SIGHUP)
    }

    fn signal(&self, signal: i32) -> Result<(), Error> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|_| self.failed("pid out of range"))?;
        // SAFETY: kill(2) takes plain integers. The pid is our child's, not yet waited for, so
        // it cannot have been reused by another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(Error::io(
                format!("cannot signal node {}", self.name),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Stops the node with SIGTERM and waits for it to exit cleanly.
    pub fn stop(mut self) -> Result<(), Error> {
        self.client.borrow_mut().take();
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(self.failed(&format!("exited with {status} when stopped"))),
                Ok(None) if Instant::now() > deadline => return Err(self.failed("did not stop in time")),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(Error::io(format!("cannot wait for node {}", self.name), e)),
            }
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// An error if the process has exited.
    fn check_alive(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failed(&format!("exited ({status})"))),
            Err(e) => Err(Error::io(format!("cannot check on node {}", self.name), e)),
        }
    }

    /// An error about this node that says where its log is.
    pub fn failed(&self, what: &str) -> Error {
        Error::Bench(format!(
            "node {} {what} (its log: {})",
            self.name,
            self.log.display()
        ))
    }

    /// The process's resident memory (VmRSS) and its peak (VmHWM), in bytes.
    pub fn resident_memory(&self) -> Result<(u64, u64), Error> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("cannot read {path}"), e))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| Error::Bench(format!("{path} has no {name}")))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl NodeProcess {
    /// CPU this node has used (all its threads, from /proc/PID/stat, in clock ticks), and how
    /// long its actor thread (the main one, where every actor and the QUIC transport run) has
    /// waited for a core while runnable (/proc/PID/task/PID/schedstat).
    pub fn cpu_time(&self) -> Result<CpuTime, Error> {
        let pid = self.child.id();
        let read = |path: String| {
            std::fs::read_to_string(&path).map_err(|e| Error::io(format!("cannot read {path}"), e))
        };
        let stat = read(format!("/proc/{pid}/stat"))?;
        // The fields after the command's closing parenthesis, from the state (field 3) on.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf reads a constant of the system.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let schedstat = read(format!("/proc/{pid}/task/{pid}/schedstat"))?;
        let waiting_ns = schedstat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(CpuTime {
            // utime and stime are fields 14 and 15: 11 and 12 counted from the state.
            busy: (ticks(11) + ticks(12)) as f64 / per_second,
            waiting: waiting_ns as f64 / 1e9,
        })
    }
}

/// Seconds of CPU used and of waiting for a core; summed over nodes, subtracted over a window.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub busy: f64,
    pub waiting: f64,
}

impl CpuTime {
    /// The sum over `nodes`, now.
    pub fn of(nodes: &[&NodeProcess]) -> Result<CpuTime, Error> {
        nodes.iter().try_fold(CpuTime::default(), |sum, node| {
            let one = node.cpu_time()?;
            Ok(CpuTime {
                busy: sum.busy + one.busy,
                waiting: sum.waiting + one.waiting,
            })
        })
    }

    /// What was used between `earlier` and this sample.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            busy: (self.busy - earlier.busy).max(0.0),
            waiting: (self.waiting - earlier.waiting).max(0.0),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Prints on stderr the wall-clock window (Unix seconds) of a timed figure, from `start` to
/// `done`, so a system-wide `perf record -k realtime` of the run can be cut to it (`perf report
/// --time`). Both ends are placed by their distance from now: a window printed as "ending now"
/// was shifted by whatever ran between `done` and the print (a check listing 1,000 messages).
pub fn report_window(what: &str, start: Instant, done: Instant) {
    let wall_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let now = Instant::now();
    let ago = |at: Instant| now.saturating_duration_since(at).as_secs_f64();
    eprintln!(
        "bench: {what} timed from {:.6} to {:.6} (Unix seconds)",
        wall_now - ago(start),
        wall_now - ago(done)
    );
}

/// Polls `check` every `every` until it gives a value, at most [`DEADLINE`]; returns the value
/// and the moment the poll that found it returned.
pub fn poll_until<T>(
    what: &str,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>, Error>,
) -> Result<(T, Instant), Error> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check()? {
            return Ok((value, Instant::now()));
        }
        if Instant::now() > deadline {
            return Err(Error::Bench(format!("{what}: not within {DEADLINE:?}")));
        }
        std::thread::sleep(every);
    }
}

/// Waits until `node`'s replication to every peer is idle: nothing in any sync log, nothing
/// syncing, every link connected.
pub fn wait_quiet(node: &NodeProcess) -> Result<(), Error> {
    poll_until(
        &format!("node {}'s replication to go idle", node.name),
        Duration::from_millis(5),
        || {
            let status = node.status()?;
            let idle = status
                .peers
                .iter()
                .all(|p| p.log_depth == 0 && p.syncing == 0 && p.connected == Some(true) && p.replicating);
            Ok(idle.then_some(()))
        },
    )
    .map(drop)
}

/// The bytes on the wire (sent plus received, QUIC datagrams) and the requests this node sent,
/// summed over its peers.
pub fn traffic(status: &NodeStatus) -> (u64, u64) {
    status.peers.iter().fold((0, 0), |(bytes, requests), p| {
        (
            bytes + p.bytes_sent.unwrap_or(0) + p.bytes_received.unwrap_or(0),
            requests + p.requests.unwrap_or(0),
        )
    })
}

/// A message of `size` bytes, unique by its header (so its content hash is).
pub fn message(i: usize, size: usize) -> Vec<u8> {
    let mut body =
        format!("From: bench@example.org\r\nSubject: message {i}\r\nMessage-ID: <{i}@bench>\r\n\r\n")
            .into_bytes();
    body.resize(size.max(body.len() + 2), b'x');
    body
}

/// Appends `count` messages of `size` bytes to `user`'s `mailbox` on `node` over `connections`
/// operator connections at once, so the node commits them in groups as it would concurrent
/// deliveries.
pub fn load(node: &NodeProcess, user: &str, mailbox: &str, count: usize, size: usize) -> Result<(), Error> {
    const CONNECTIONS: usize = 16;
    let clients = (0..CONNECTIONS)
        .map(|_| node.connect())
        .collect::<Result<Vec<_>, _>>()?;
    share_out(clients, count, |client, i| {
        client.call(Request::Append {
            user: user.into(),
            mailbox: mailbox.into(),
            body: ByteBuf::from(message(i, size)),
            flags: Vec::new(),
        })?;
        Ok(())
    })
}

/// Runs `job` for each of `0..count` on `workers`, a thread each: a worker takes the next index
/// as soon as its last one is done, so a slow worker holds none of the others back. The first
/// error (or panic) wins.
pub fn share_out<W: Send>(
    workers: Vec<W>,
    count: usize,
    job: impl Fn(&mut W, usize) -> Result<(), Error> + Sync,
) -> Result<(), Error> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let threads: Vec<_> = workers
            .into_iter()
            .map(|mut worker| {
                let (next, job) = (&next, &job);
                scope.spawn(move || -> Result<(), Error> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        job(&mut worker, i)?;
                    }
                })
            })
            .collect();
        join_all(threads)
    })
}

/// Joins scoped worker threads; the first error (or panic) wins.
pub fn join_all(workers: Vec<std::thread::ScopedJoinHandle<'_, Result<(), Error>>>) -> Result<(), Error> {
    let results: Vec<Result<(), Error>> = workers
        .into_iter()
        .map(|w| {
            w.join()
                .unwrap_or_else(|_| Err(Error::Bench("a worker thread panicked".into())))
        })
        .collect();
    results.into_iter().collect()
}
