//! Helpers shared by the process tests in `tests/`: they run the real `mailmesh` binary as a
//! child process, read its output while it runs, signal it, and never wait without a deadline. A
//! failing test kills its child (see [`Running`]'s `Drop`), so nothing is left behind.
//!
//! Each test file in `tests/` is a test target of the mailmesh-node package (declared in
//! `node/Cargo.toml`), so cargo builds the `mailmesh` binary before them and tells them where it
//! is (`CARGO_BIN_EXE_mailmesh`): `cargo test` and `cargo nextest run` need no build step first.
//! Each file includes this module with `mod support;`; each uses only some of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The longest any test waits for a process to say something or to exit.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Path of the `mailmesh` binary cargo built for these tests.
pub fn mailmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailmesh"))
}

/// A `mailmesh` command with `args`, isolated from the environment the tests run in: no
/// `MAILMESH_` variable of the developer's shell leaks into its configuration, and logging is at
/// the level the assertions expect.
pub fn mailmesh(args: &[&str]) -> Command {
    let mut cmd = Command::new(mailmesh_bin());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAILMESH_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info").env_remove("RUST_BACKTRACE");
    cmd
}

/// Writes `node.toml` in `dir` for a node named `name` with its data in `data_dir`.
pub fn write_config(dir: &Path, name: &str, data_dir: &Path) -> PathBuf {
    let path = dir.join("node.toml");
    let text = format!(
        "[node]\nname = {name:?}\n\n[storage]\ndata_dir = {:?}\n",
        data_dir.to_str().expect("temporary paths are UTF-8")
    );
    std::fs::write(&path, text).expect("write node.toml");
    path
}

/// Runs the one-shot command `args` with `--config config` (through the node's operator socket if
/// it runs, on its data directory if not).
pub fn op(config: &Path, args: &[&str]) -> Finished {
    let mut cmd = mailmesh(args);
    cmd.arg("--config").arg(config);
    finish(&mut cmd)
}

/// `mailmesh append` of the message in `file` to `user`'s `mailbox`; `extra` adds arguments
/// (e.g. `--flags`).
pub fn append_file(config: &Path, user: &str, mailbox: &str, file: &Path, extra: &[&str]) -> Finished {
    let file = file.to_str().expect("temporary paths are UTF-8");
    let mut args = vec!["append", "--user", user, "--mailbox", mailbox, "--file", file];
    args.extend_from_slice(extra);
    op(config, &args)
}

/// `mailmesh flags` on message `uid` of `user`'s `mailbox` (`change` as the command takes it).
pub fn store_flags(config: &Path, user: &str, mailbox: &str, uid: &str, change: &str) -> Finished {
    op(
        config,
        &[
            "flags",
            "--user",
            user,
            "--mailbox",
            mailbox,
            "--uid",
            uid,
            change,
        ],
    )
}

/// Starts `mailmesh run --config config` and waits until the node is ready.
pub fn start_node(config: &Path) -> Running {
    let mut node = Running::start(mailmesh(&["run", "--config"]).arg(config));
    node.wait_for_stderr("node ready");
    node
}

/// A single node's files in a fresh temporary directory: `node.toml` naming it `n1`, its data
/// directory (not created: the node makes it), and a message file `m.eml` with `subject`.
pub struct NodeDir {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub message: PathBuf,
}

impl NodeDir {
    pub fn new(subject: &str) -> NodeDir {
        let tmp = tempfile::TempDir::new().expect("a temporary directory");
        let data = tmp.path().join("data");
        let config = write_config(tmp.path(), "n1", &data);
        let message = tmp.path().join("m.eml");
        std::fs::write(&message, format!("Subject: {subject}\r\n\r\nHello\r\n")).expect("write m.eml");
        NodeDir {
            tmp,
            data,
            config,
            message,
        }
    }
}

/// Everything a finished process left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Asserts the exit code, showing the output if it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}, got {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts that stderr contains every one of `needles`.
    pub fn expect_stderr(&self, needles: &[&str]) -> &Self {
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
        self
    }

    /// Asserts the failure was reported, not crashed on: no panic message, no backtrace.
    pub fn expect_no_panic(&self) -> &Self {
        for sign in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
            assert!(
                !self.stderr.contains(sign),
                "stderr shows a panic:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Runs `cmd` to completion (at most [`DEADLINE`]).
pub fn finish(cmd: &mut Command) -> Finished {
    Running::start(cmd).wait()
}

#[derive(Default)]
struct Output {
    stdout: String,
    stderr: String,
    /// Streams still open; 0 once the process and its pipes are done.
    open: u8,
}

/// A running `mailmesh` process whose stdout and stderr are collected as they arrive.
pub struct Running {
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let output = Arc::new((
            Mutex::new(Output {
                open: 2,
                ..Output::default()
            }),
            Condvar::new(),
        ));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        collect(stdout, output.clone(), |o| &mut o.stdout);
        collect(stderr, output.clone(), |o| &mut o.stderr);
        Running { child, output }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stderr has a line containing `needle` and returns that line. Panics, with
    /// everything the process printed, if it exits first or the deadline passes.
    pub fn wait_for_stderr(&mut self, needle: &str) -> String {
        self.wait_for_line("stderr", |o| &o.stderr, needle, |l| l.contains(needle))
    }

    /// Like [`Running::wait_for_stderr`], on stdout.
    pub fn wait_for_stdout(&mut self, needle: &str) -> String {
        self.wait_for_line("stdout", |o| &o.stdout, needle, |l| l.contains(needle))
    }

    /// Waits until the node logs `event` ("link up", "link down") for its link to `peer`; returns
    /// that line.
    pub fn wait_for_link(&mut self, event: &str, peer: &str) -> String {
        let what = format!("{event} peer={peer}");
        self.wait_for_line(
            "stderr",
            |o| &o.stderr,
            &what,
            |l| l.contains(event) && l.split_whitespace().any(|w| w == format!("peer={peer}")),
        )
    }

    fn wait_for_line(
        &mut self,
        stream: &str,
        pick: fn(&Output) -> &String,
        needle: &str,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + DEADLINE;
        let output = self.output.clone();
        let (lock, changed) = &*output;
        let mut out = lock.lock().expect("output lock");
        loop {
            if let Some(line) = pick(&out).lines().find(|l| matches(l)) {
                return line.to_string();
            }
            if out.open == 0 {
                drop(out);
                let status = self.wait_status();
                let out = lock.lock().expect("output lock");
                panic!(
                    "process exited ({status}) before printing {needle:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.stdout, out.stderr
                );
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no {needle:?} on {stream} within {DEADLINE:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.stdout,
                out.stderr
            );
            out = changed.wait_timeout(out, deadline - now).expect("output lock").0;
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is our own
        // child's, which cannot be reaped (and its pid reused) before we wait for it.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit and for its output (at most [`DEADLINE`]); kills it and
    /// panics if it does not.
    pub fn wait(self) -> Finished {
        self.wait_within(DEADLINE)
    }

    /// Like [`Running::wait`], for a process expected to run longer than [`DEADLINE`]: waits at
    /// most `limit` for it to exit.
    pub fn wait_within(mut self, limit: Duration) -> Finished {
        let status = self.wait_status_within(limit);
        // The pipes close when the process exits (it starts no children that could hold them).
        let (lock, changed) = &*self.output;
        let out = lock.lock().expect("output lock");
        let (mut out, timeout) = changed
            .wait_timeout_while(out, DEADLINE, |o| o.open > 0)
            .expect("output lock");
        assert!(!timeout.timed_out(), "output pipes stayed open after exit");
        Finished {
            status,
            stdout: std::mem::take(&mut out.stdout),
            stderr: std::mem::take(&mut out.stderr),
        }
    }
}

impl Running {
    /// The exit status, polled until [`DEADLINE`]; past it the process is killed and the test fails.
    fn wait_status(&mut self) -> ExitStatus {
        self.wait_status_within(DEADLINE)
    }

    /// The exit status, polled until `limit`; past it the process is killed and the test fails.
    fn wait_status_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.output.0.lock().expect("output lock");
                panic!(
                    "process did not exit within {limit:?}; killed it\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.stdout, out.stderr
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    /// A test that fails while its node runs must not leave the node behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies `stream` line by line into the field `pick` selects, waking waiters on every line.
fn collect(
    stream: impl Read + Send + 'static,
    output: Arc<(Mutex<Output>, Condvar)>,
    pick: fn(&mut Output) -> &mut String,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
            let (lock, changed) = &*output;
            let mut out = lock.lock().expect("output lock");
            if n == 0 {
                out.open -= 1;
                changed.notify_all();
                return;
            }
            pick(&mut out).push_str(&String::from_utf8_lossy(&line));
            changed.notify_all();
        }
    });
}

/// The address in a node's log line saying a listener is ready (`address=`, or the metrics
/// endpoint's `addr=`).
pub fn address(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address=").or_else(|| w.strip_prefix("addr=")))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_matches('"')
        .to_string()
}

/// `mailmesh user hash` with `password` on stdin: the hash for a `[[users]]` entry.
pub fn password_hash(password: &str) -> String {
    let mut child = mailmesh(&["user", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub mod cluster;
pub mod imap_lines;
pub mod imap_node;
pub mod quic;

impl Running {
    /// Waits until stderr has at least `count` lines containing `needle`; returns the last one.
    pub fn wait_for_stderr_count(&mut self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + DEADLINE;
        let output = self.output.clone();
        let (lock, changed) = &*output;
        let mut out = lock.lock().expect("output lock");
        loop {
            let found: Vec<&str> = out.stderr.lines().filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return found[count - 1].to_string();
            }
            if out.open == 0 {
                panic!(
                    "process exited before printing {needle:?} {count} times\n--- stderr ---\n{}",
                    out.stderr
                );
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "fewer than {count} {needle:?} on stderr within {DEADLINE:?}\n--- stderr ---\n{}",
                out.stderr
            );
            out = changed.wait_timeout(out, deadline - now).expect("output lock").0;
        }
    }

    /// Every line of stderr so far containing `needle`.
    pub fn stderr_lines(&self, needle: &str) -> Vec<String> {
        let out = self.output.0.lock().expect("output lock");
        out.stderr
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Everything on stderr so far.
    pub fn stderr(&self) -> String {
        self.output.0.lock().expect("output lock").stderr.clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// One LMTP transaction to `target` (host:port) for one recipient: LHLO, MAIL, RCPT, DATA with a
/// one-line body, QUIT. Returns the final reply to DATA (the sixth of the seven final replies).
pub fn lmtp_deliver(target: &str, to: &str, subject: &str) -> String {
    let mut s = std::net::TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(
        format!(
            "LHLO test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<{to}>\r\nDATA\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\nQUIT\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let finals: Vec<&str> = text
        .lines()
        .filter(|l| l.len() > 3 && l.as_bytes()[3] == b' ')
        .collect();
    assert_eq!(finals.len(), 7, "{text}");
    finals[5].to_string()
}
