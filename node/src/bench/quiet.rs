//! Traffic of a quiescent cluster: once both nodes' replication is idle, their links are watched
//! for `window` and the figures scaled to a minute. Replication traffic is what the engine sends:
//! the transport's request counters of both nodes. The bytes are everything on the wire between
//! them (QUIC datagrams both ways), which includes QUIC's own keep-alives (one PING every 2 s
//! while a link is up, so a dead peer is noticed within the 10 s idle timeout).

use std::time::Duration;

use super::nodes::{traffic, wait_quiet, NodeProcess};
use crate::error::Error;

#[derive(Clone, Copy, Debug)]
pub struct QuietResult {
    pub requests_per_minute: f64,
    pub bytes_per_minute: f64,
    pub window_secs: f64,
}

/// `a` and `b` are linked to each other (and only to each other).
pub fn quiescent_traffic(a: &NodeProcess, b: &NodeProcess, window: Duration) -> Result<QuietResult, Error> {
    wait_quiet(a)?;
    wait_quiet(b)?;
    let (bytes_before, a_requests_before) = traffic(&a.status()?);
    let (_, b_requests_before) = traffic(&b.status()?);
    let started = std::time::Instant::now();
    std::thread::sleep(window);
    let (bytes_after, a_requests_after) = traffic(&a.status()?);
    let (_, b_requests_after) = traffic(&b.status()?);
    let secs = started.elapsed().as_secs_f64();
    let per_minute = |n: u64| n as f64 * 60.0 / secs;
    Ok(QuietResult {
        requests_per_minute: per_minute(
            a_requests_after.saturating_sub(a_requests_before)
                + b_requests_after.saturating_sub(b_requests_before),
        ),
        bytes_per_minute: per_minute(bytes_after.saturating_sub(bytes_before)),
        window_secs: secs,
    })
}
