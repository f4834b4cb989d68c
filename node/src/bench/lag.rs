//! Replication lag under a steady stream of appends: `rate` appends/s to one mailbox on the first
//! node for `duration`, each sent at its own slot of a fixed schedule (eight operator connections,
//! so a slow append does not delay the next one's send). A message's lag is the time from the
//! first node's answer to its append (durable there) until the second node shows it.
//!
//! "Shows it" is read by polling the second node's operator socket for the mailbox's message
//! count every 0.5 ms: the mailbox has a single writer, its changes are sent in modseq order and
//! its uids rise with modseq, so once the count reaches k the message with the k-th uid is
//! there. A lag is therefore late by up to one poll (0.5 ms plus the poll's own round trip); a
//! message the second node counts before the first node's answer reaches the benchmark has lag 0.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::nodes::{join_all, message, poll_until, wait_quiet, CpuTime, NodeProcess, DEADLINE};
use crate::error::Error;
use crate::operator::protocol::{Reply, Request};

const USER: &str = "lag";
const MAILBOX: &str = "INBOX";
const SENDERS: usize = 8;
const POLL_EVERY: Duration = Duration::from_micros(500);
const SIZE: usize = 2048;

#[derive(Clone, Copy, Debug)]
pub struct LagResult {
    pub appends: usize,
    /// Appends per second actually answered.
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// What both nodes used during the run.
    pub cpu: CpuTime,
}

/// `a` and `b` are linked to each other.
pub fn replication_lag(
    a: &NodeProcess,
    b: &NodeProcess,
    rate: u32,
    duration: Duration,
) -> Result<LagResult, Error> {
    a.create_mailbox(USER, MAILBOX)?;
    poll_until(
        "the lag mailbox on the second node",
        Duration::from_millis(2),
        || Ok(b.mailbox(USER, MAILBOX)?.map(drop)),
    )?;
    wait_quiet(a)?;
    let count = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let senders = (0..SENDERS).map(|_| a.connect()).collect::<Result<Vec<_>, _>>()?;
    let mut watcher = b.connect()?;
    let acks: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::with_capacity(count));
    let next = AtomicUsize::new(0);
    let start = Instant::now() + Duration::from_millis(20);
    let cpu_before = CpuTime::of(&[a, b])?;

    let visible = std::thread::scope(|scope| {
        let workers: Vec<_> = senders
            .into_iter()
            .map(|mut client| {
                let (next, acks) = (&next, &acks);
                scope.spawn(move || -> Result<(), Error> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        let slot = start + interval * i as u32;
                        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let reply = client.call(Request::Append {
                            user: USER.into(),
                            mailbox: MAILBOX.into(),
                            body: ByteBuf::from(message(i, SIZE)),
                            flags: Vec::new(),
                        })?;
                        let at = Instant::now();
                        let Reply::Appended { uid, .. } = reply else {
                            return Err(Error::Bench("append answered with something else".into()));
                        };
                        acks.lock().expect("acks lock").push((uid, at));
                    }
                })
            })
            .collect();
        // The watcher runs here, on the scope's own thread.
        let watched = (|| -> Result<Vec<Instant>, Error> {
            let mut visible: Vec<Instant> = Vec::with_capacity(count);
            let deadline = start + duration + DEADLINE;
            while visible.len() < count {
                let seen = match watcher.call(Request::ListMailboxes { user: USER.into() })? {
                    Reply::Mailboxes(rows) => {
                        rows.iter().find(|r| r.name == MAILBOX).map_or(0, |r| r.messages)
                    }
                    _ => return Err(Error::Bench("list-mailboxes answered with something else".into())),
                };
                let now = Instant::now();
                while (visible.len() as u64) < seen.min(count as u64) {
                    visible.push(now);
                }
                if now > deadline {
                    return Err(Error::Bench(format!(
                        "replication lag: {} of {count} appends reached the second node",
                        visible.len()
                    )));
                }
                std::thread::sleep(POLL_EVERY);
            }
            Ok(visible)
        })();
        join_all(workers)?;
        watched
    })?;

    let cpu = CpuTime::of(&[a, b])?.since(cpu_before);
    let acks = acks.into_inner().expect("acks lock");
    let first_uid = acks.iter().map(|(uid, _)| *uid).min().unwrap_or(1);
    let mut lags: Vec<f64> = acks
        .iter()
        .map(|(uid, at)| {
            let shown = visible[(uid - first_uid) as usize];
            shown.saturating_duration_since(*at).as_secs_f64() * 1000.0
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let last_ack = acks.iter().map(|(_, at)| *at).max().unwrap_or(start);
    let percentile = |p: usize| lags[(lags.len() * p / 100).min(lags.len() - 1)];
    Ok(LagResult {
        appends: count,
        achieved_rate: count as f64 / last_ack.duration_since(start).as_secs_f64(),
        p50_ms: percentile(50),
        p99_ms: percentile(99),
        max_ms: lags[lags.len() - 1],
        cpu,
    })
}
