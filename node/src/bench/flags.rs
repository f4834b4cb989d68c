//! Flag changes replicated: `count` messages already on both nodes get a flag on the first in
//! one request (one commit, as one IMAP STORE over a range); the clock runs from that request's
//! answer until the second node's operator socket lists every message with the flag (polled on
//! the last message alone, which shows it last; then checked by a listing of all of them). The bytes
//! are the QUIC datagrams both ways between the two nodes while the change crosses (the first
//! node's per-peer counters in `status`, read when replication is idle before and after).
//!
//! The change is timed `runs` times, the flag set, cleared and set again on every message, and
//! the table reports the median run with every run beside it (one run can take half as long
//! again as the next on a shared virtual machine).

use std::time::{Duration, Instant};

use super::nodes::{load, poll_until, report_window, traffic, wait_quiet, CpuTime, NodeProcess};
use crate::error::Error;
use crate::operator::protocol::{FlagChange, MessageRow, Reply, Request};

const USER: &str = "flags";
const MAILBOX: &str = "INBOX";
const FLAG: &str = "\\Flagged";

#[derive(Clone, Copy, Debug)]
pub struct FlagsResult {
    pub changes: usize,
    pub secs: f64,
    pub bytes_per_change: f64,
    /// What both nodes used from the answer until the second node showed every change.
    pub cpu: CpuTime,
}

/// `a` and `b` are linked to each other.
pub fn flag_changes(
    a: &NodeProcess,
    b: &NodeProcess,
    count: usize,
    runs: usize,
) -> Result<Vec<FlagsResult>, Error> {
    a.create_mailbox(USER, MAILBOX)?;
    load(a, USER, MAILBOX, count, 1024)?;
    poll_until(
        "the messages to flag on both nodes",
        Duration::from_millis(5),
        || Ok((b.message_count(USER, MAILBOX)? >= count as u64).then_some(())),
    )?;
    wait_quiet(a)?;
    wait_quiet(b)?;
    let uids: Vec<u32> = a.messages(USER, MAILBOX)?.iter().map(|m| m.uid).collect();
    let (first, last) = (uids[0], uids[uids.len() - 1]);
    if uids.len() != count || (last - first + 1) as usize != count {
        return Err(Error::Bench(format!(
            "expected {count} messages with consecutive uids, found {} ({first}..{last})",
            uids.len()
        )));
    }

    let mut results = Vec::with_capacity(runs);
    for run in 0..runs.max(1) {
        // Set, cleared, set again: each run changes every message.
        let want = run % 2 == 0;
        let change = if want { FlagChange::Add } else { FlagChange::Remove };
        let (bytes_before, _) = traffic(&a.status()?);
        let reply = a.call(Request::StoreFlagsRange {
            user: USER.into(),
            mailbox: MAILBOX.into(),
            first_uid: first,
            last_uid: last,
            change,
            flags: vec![FLAG.into()],
        })?;
        let start = Instant::now();
        let cpu_before = CpuTime::of(&[a, b])?;
        match reply {
            Reply::Messages(rows) if rows.len() == count => {}
            _ => return Err(a.failed("did not change the flag on every message")),
        }
        // Polled cheaply: listing all the messages every millisecond took the second node's actor
        // thread (where the merge runs) several milliseconds each time. The last message is asked
        // for alone until it shows the change (the flag set, or cleared), and the clock stops
        // then: the first node changed the messages in uid order in one commit, so the last has
        // the highest modseq there; its sync sends changes in modseq order, page after page, each
        // committed on the second node before the next goes. So when the last shows the change,
        // so does every other message. A full listing then checks it; were one message still
        // unchanged, the argument would be wrong, and the clock runs on until a full listing
        // shows the change on every message.
        let as_wanted = |rows: &[MessageRow]| rows.iter().all(|m| m.flags.iter().any(|f| f == FLAG) == want);
        let (_, tail_at) = poll_until("the flag on the last message", Duration::from_millis(1), || {
            let tail = b.message_range(USER, MAILBOX, last, last)?;
            Ok((!tail.is_empty() && as_wanted(&tail)).then_some(()))
        })?;
        let all_as_wanted = || -> Result<Option<()>, Error> {
            let rows = b.messages(USER, MAILBOX)?;
            Ok((rows.len() == count && as_wanted(&rows)).then_some(()))
        };
        let done = match all_as_wanted()? {
            Some(()) => tail_at,
            None => {
                poll_until(
                    "the flags on the second node",
                    Duration::from_millis(1),
                    all_as_wanted,
                )?
                .1
            }
        };
        let secs = done.duration_since(start).as_secs_f64();
        let cpu = CpuTime::of(&[a, b])?.since(cpu_before);
        report_window("flag changes", start, done);
        wait_quiet(a)?;
        wait_quiet(b)?;
        let (bytes_after, _) = traffic(&a.status()?);
        results.push(FlagsResult {
            changes: count,
            secs,
            bytes_per_change: bytes_after.saturating_sub(bytes_before) as f64 / count as f64,
            cpu,
        });
    }
    Ok(results)
}
