//! Initial sync to an empty replica: a source node holding `count` messages gains a new peer
//! that has nothing (its configuration file rewritten with the peer, and SIGHUP), and the clock
//! runs until the replica's operator socket counts every message.
//!
//! The source is loaded while it has no peer at all (over 16 operator connections at once, so it
//! commits in groups), and the replica is started, already configured with the source, before
//! the reload. The clock starts when the source's status lists the new peer (the reload applied):
//! what is timed is the link coming up (QUIC and TLS handshakes, Hello), the source queueing
//! everything for a peer it has never seen, and the transfer itself, until the replica's count
//! (polled every millisecond) is complete.
//!
//! The source is loaded once and syncs `runs` times, each time to a new empty replica (the one
//! before stopped and taken out of its configuration): on a shared virtual machine one sync
//! can take half as long again as the next, and the table reports the median with every run
//! beside it.

use std::path::Path;
use std::time::Duration;

use super::nodes::{load, poll_until, report_window, Cluster, CpuTime};
use crate::error::Error;

const USER: &str = "sync";
const MAILBOX: &str = "INBOX";

#[derive(Clone, Copy, Debug)]
pub struct SyncResult {
    pub messages: usize,
    pub bytes: u64,
    pub secs: f64,
    /// What both nodes used while it ran.
    pub cpu: CpuTime,
}

pub fn initial_sync(root: &Path, count: usize, size: usize, runs: usize) -> Result<Vec<SyncResult>, Error> {
    let cluster = Cluster::new(root)?;
    let source = cluster.node("n1", "")?;
    source.write_config(&[])?;
    let a = source.start()?;
    a.create_mailbox(USER, MAILBOX)?;
    load(&a, USER, MAILBOX, count, size)?;
    let ours = a.messages(USER, MAILBOX)?;
    if ours.len() != count {
        return Err(Error::Bench(format!(
            "the source lists {} messages after loading {count}",
            ours.len()
        )));
    }
    let bytes = ours.iter().map(|m| m.size).sum();
    let mut results = Vec::with_capacity(runs);
    for run in 0..runs.max(1) {
        let replica = cluster.node(&format!("r{}", run + 1), "")?;
        replica.write_config(&[&source])?;
        let b = replica.start()?;
        source.write_config(&[&replica])?;
        a.reload()?;
        // The node also reloads when it sees its file change, after a 300 ms debounce that
        // SIGHUP may wait behind: the clock starts when the source has taken the new peer, as
        // its status shows (the transport dials and the engine starts its channel in that same
        // step).
        let (_, start) = poll_until(
            "the source to take the new peer",
            Duration::from_micros(500),
            || {
                Ok(a.status()?
                    .peers
                    .iter()
                    .any(|p| p.name == replica.name)
                    .then_some(()))
            },
        )?;
        let cpu_before = CpuTime::of(&[&a, &b])?;
        let (_, done) = poll_until(
            &format!("{count} messages on the replica"),
            Duration::from_millis(1),
            || Ok((b.message_count(USER, MAILBOX)? >= count as u64).then_some(())),
        )?;
        let secs = done.duration_since(start).as_secs_f64();
        let cpu = CpuTime::of(&[&a, &b])?.since(cpu_before);
        report_window("initial sync", start, done);

        // Not timed: the replica holds exactly what the source does.
        let theirs = b.messages(USER, MAILBOX)?;
        if ours != theirs {
            return Err(Error::Bench(format!(
                "after the initial sync the replica lists {} messages, the source {} (of {count}), and they differ",
                theirs.len(),
                ours.len()
            )));
        }
        b.stop()?;
        results.push(SyncResult {
            messages: count,
            bytes,
            secs,
            cpu,
        });
    }
    a.stop()?;
    Ok(results)
}
