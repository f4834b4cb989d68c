//! Resident memory of a node holding many idle mailboxes: `count` mailboxes (100 per user) are
//! created through the operator socket, which opens each one (a Mailbox actor); the node lets an
//! unused mailbox go after `mailboxes.idle_after_secs`, set to 1 s here. Once `status` counts no
//! active mailbox, VmRSS is read from /proc/PID/status.

use std::time::Duration;

use super::nodes::{poll_until, share_out, Cluster};
use crate::error::Error;
use crate::operator::protocol::Request;

const PER_USER: usize = 100;
const CONNECTIONS: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct MemoryResult {
    pub mailboxes: usize,
    pub resident_bytes: u64,
    pub peak_bytes: u64,
    pub empty_node_bytes: u64,
}

pub fn idle_mailboxes(root: &std::path::Path, count: usize) -> Result<MemoryResult, Error> {
    let cluster = Cluster::new(root)?;
    let spec = cluster.node("m1", "\n[mailboxes]\nidle_after_secs = 1\n")?;
    spec.write_config(&[])?;
    let node = spec.start()?;
    let (empty_node_bytes, _) = node.resident_memory()?;
    let clients = (0..CONNECTIONS)
        .map(|_| node.connect())
        .collect::<Result<Vec<_>, _>>()?;
    share_out(clients, count, |client, i| {
        client.call(Request::CreateMailbox {
            user: format!("user{:05}", i / PER_USER),
            name: format!("folder{:03}", i % PER_USER),
        })?;
        Ok(())
    })?;
    poll_until("every mailbox to go idle", Duration::from_millis(100), || {
        Ok((node.status()?.active_mailboxes == 0).then_some(()))
    })?;
    let (resident_bytes, peak_bytes) = node.resident_memory()?;
    node.stop()?;
    Ok(MemoryResult {
        mailboxes: count,
        resident_bytes,
        peak_bytes,
        empty_node_bytes,
    })
}
