//! `mailmesh demo`: three real nodes made, linked, reloaded into a chain and stopped by one
//! command; run here to the end (`--exit-when-done`) and stopped part way by Ctrl-C.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{mailmesh, Running};
use tempfile::TempDir;

/// The demo may take a while on a loaded machine: three nodes start, link, reload.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);

/// The process ids the demo printed for its nodes ("n1 started: pid 1234, ...").
fn node_pids(stdout: &str) -> Vec<libc::pid_t> {
    stdout
        .lines()
        .filter_map(|l| l.split_once("started: pid ").map(|(_, rest)| rest))
        .map(|rest| rest.split(',').next().unwrap().parse().expect("a pid"))
        .collect()
}

/// Whether a process with `pid` still exists (a zombie counts: its parent has not reaped it).
fn exists(pid: libc::pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists; it touches no memory.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The one directory the demo made in `base`.
fn demo_root(base: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mailmesh-demo-")
        })
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

#[test]
fn the_demo_shows_mesh_and_chain_replication_and_stops_its_nodes() {
    let tmp = TempDir::new().unwrap();
    let demo = Running::start(mailmesh(&["demo", "--exit-when-done", "--dir"]).arg(tmp.path()));
    let done = demo.wait_within(DEMO_DEADLINE);
    done.expect_code(0).expect_no_panic();
    let out = &done.stdout;

    // Three messages over the full mesh, each seen arriving on n2 and n3 with its time.
    let mesh: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains("appended on n1: arrived on n2 after ") && l.contains(", arrived on n3 after ")
        })
        .collect();
    assert_eq!(mesh.len(), 3, "{out}");
    assert!(
        out.contains("reloaded without a restart: n1 links to n2 only, n3 to n2 only"),
        "{out}"
    );
    let chain: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("arrived on n3 (through n2) after "))
        .collect();
    assert_eq!(chain.len(), 1, "{out}");
    for line in mesh.iter().chain(&chain) {
        assert!(line.ends_with(" ms") || line.ends_with(" s"), "a time: {line}");
    }

    // Where things are, and how to ask each node for its status.
    let root = demo_root(tmp.path());
    for node in ["n1", "n2", "n3"] {
        let config = root.join(node).join("node.toml");
        assert!(
            out.contains(&format!("status --config {}", config.display())),
            "{out}"
        );
        let log = std::fs::read_to_string(root.join(node).join("node.log")).unwrap();
        // n2 keeps both its peers in the chain: the demo sees n1's and n3's reloads in their
        // links, and may stop n2 before its (empty) reload is logged.
        if node != "n2" {
            assert!(log.contains("configuration reloaded"), "{node}: {log}");
        }
        assert!(log.contains("node stopped"), "{node} did not stop cleanly: {log}");
    }
    // Each node took mail on the ports printed for it, with the login printed.
    assert!(
        out.contains("(login demo, password demo; plaintext on loopback)"),
        "{out}"
    );
    for node in ["n1", "n2", "n3"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("  {node}: IMAP 127.0.0.1:")))
            .unwrap_or_else(|| panic!("no mail ports for {node} in {out}"));
        let log = std::fs::read_to_string(root.join(node).join("node.log")).unwrap();
        for (protocol, address) in line
            .trim()
            .split(", ")
            .map(|part| part.rsplit_once(' ').unwrap())
            .map(|(label, address)| (label.rsplit(' ').next().unwrap(), address))
        {
            assert!(
                log.lines()
                    .any(|l| l.contains("listening") && l.contains(address)),
                "{node}: no {protocol} listener on {address} in {log}"
            );
        }
    }
    // The configurations were left as the chain: n1 and n3 peer with n2 alone.
    for (node, peers) in [("n1", 1), ("n2", 2), ("n3", 1)] {
        let text = std::fs::read_to_string(root.join(node).join("node.toml")).unwrap();
        assert_eq!(text.matches("[[peers]]").count(), peers, "{node}: {text}");
    }
    assert!(out.contains("stopped the nodes"), "{out}");

    // No node outlives the demo; n3's data (read as a stopped node's) holds all four messages.
    let pids = node_pids(out);
    assert_eq!(pids.len(), 3, "{out}");
    for pid in pids {
        assert!(!exists(pid), "node process {pid} outlived the demo");
    }
    let config = root.join("n3").join("node.toml");
    let listed = support::finish(
        mailmesh(&["fetch", "--user", "demo", "--mailbox", "INBOX", "--config"]).arg(&config),
    );
    assert_eq!(
        listed.expect_code(0).stdout.lines().count(),
        4,
        "{}",
        listed.stdout
    );
}

#[test]
fn ctrl_c_stops_the_demo_and_its_three_nodes_cleanly() {
    let tmp = TempDir::new().unwrap();
    // Its own process group, as a shell gives a foreground job: Ctrl-C signals the whole group.
    let mut cmd = mailmesh(&["demo", "--dir"]);
    cmd.arg(tmp.path()).process_group(0);
    let mut demo = Running::start(&mut cmd);
    demo.wait_for_stdout("press Ctrl-C to stop all three");
    let group = libc::pid_t::try_from(demo.pid()).unwrap();
    // SAFETY: kill(2) on our child's process group (its pid, as it leads the group).
    assert_eq!(unsafe { libc::kill(-group, libc::SIGINT) }, 0);
    let done = demo.wait_within(DEMO_DEADLINE);
    done.expect_code(0).expect_no_panic();
    assert!(done.stdout.contains("stopped the nodes"), "{}", done.stdout);
    for pid in node_pids(&done.stdout) {
        assert!(!exists(pid), "node process {pid} outlived the demo");
    }
    let root = demo_root(tmp.path());
    for node in ["n1", "n2", "n3"] {
        let log = std::fs::read_to_string(root.join(node).join("node.log")).unwrap();
        assert!(log.contains("node stopped"), "{node} did not stop cleanly: {log}");
    }
}

/// Whether `pid` is gone or a zombie (its new parent may not reap it at once).
fn exited(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A demo killed outright (SIGKILL runs no clean-up of its own) still takes its nodes with it:
/// the kernel signals them as their parent dies, and they stop cleanly.
#[test]
fn a_killed_demo_leaves_no_node_running() {
    let tmp = TempDir::new().unwrap();
    let mut demo = Running::start(mailmesh(&["demo", "--dir"]).arg(tmp.path()));
    demo.wait_for_stdout("press Ctrl-C to stop all three");
    demo.signal(libc::SIGKILL);
    let done = demo.wait_within(DEMO_DEADLINE);
    let pids = node_pids(&done.stdout);
    assert_eq!(pids.len(), 3, "{}", done.stdout);
    let root = demo_root(tmp.path());
    support::cluster::eventually("the nodes stopped after the demo was killed", || {
        let running: Vec<_> = pids.iter().filter(|p| !exited(**p)).collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(format!("{running:?}"))
        }
    });
    for node in ["n1", "n2", "n3"] {
        let log = std::fs::read_to_string(root.join(node).join("node.log")).unwrap();
        assert!(log.contains("node stopped"), "{node} did not stop cleanly: {log}");
    }
}
