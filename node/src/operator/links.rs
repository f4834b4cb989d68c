//! What the cluster transport tells `mailmesh status` and the metrics about its links.
//!
//! The replication engine knows what it has to send (the Channels); only the transport knows the
//! connections: whether one is up and since when, where it points, what went over it. The
//! transport implements [`LinkReport`]; a node without one (running alone) reports no links and
//! the status shows the link columns as not available.

use std::collections::BTreeMap;

use mailmesh_protocol::ids::NodeId;

/// One peer's link, as the transport sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The address the peer is dialled at (from `[[peers]]`), or where it connected from.
    pub address: Option<String>,
    pub connected: bool,
    /// Unix milliseconds since which the link has been up (or down), if it ever changed.
    pub since_ms: Option<i64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests sent to the peer, and those that failed (timeout, reset, refused).
    pub requests: u64,
    pub request_failures: u64,
    /// The last failure of the connection (dial, handshake, certificate), if any.
    pub last_error: Option<String>,
}

/// Implemented by the cluster transport: the current state of each peer's link.
pub trait LinkReport {
    fn links(&self) -> BTreeMap<NodeId, LinkStatus>;
}
