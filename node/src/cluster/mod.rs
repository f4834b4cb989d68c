//! A node in a cluster: how it reaches its peers and proves who it is.
//!
//! - [`certs`]: `mailmesh certs ca` and `mailmesh certs node`, the cluster CA and node
//!   certificates (rcgen);
//! - [`tls`]: mutual TLS, the two checks every peer certificate passes (chains to the CA, names a
//!   configured peer) and the log line that says which one failed;
//! - [`quic`]: the engine's `Transport` over QUIC (quinn): one link per peer pair, a stream per
//!   request, reconnects, bounds on what a slow peer can cost;
//! - [`reload`]: SIGHUP and config file changes applied to a running node.
//!
//! Nothing in `mailmesh-actors` or `mailmesh-protocol` knows about any of this: the actors see a
//! `Transport`, and receive their peers' requests through `Inbound`.

pub mod certs;
pub mod quic;
pub mod reload;
pub mod tls;

use std::net::SocketAddr;

use mailmesh_actors::node::PeerOptions;
use mailmesh_protocol::ids::NodeId;

pub use self::quic::QuicTransport;
use self::tls::TlsIdentity;

/// `[cluster]` and `[[peers]]`, validated, with the TLS files read.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub listen: SocketAddr,
    pub tls: TlsIdentity,
    pub peers: Vec<PeerAddress>,
}

/// One `[[peers]]` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    pub node: NodeId,
    /// `host:port`, resolved at each dial.
    pub address: String,
    pub shared_bodies: bool,
    /// `host:port` of the peer's IMAP listener (`[[peers]] imap`), for `[imap] direct`.
    pub imap: Option<String>,
    /// `imap` takes TLS from the first byte (`[[peers]] imap_tls`); else STARTTLS.
    pub imap_tls: bool,
}

impl ClusterOptions {
    /// The replication engine's view of the peers: a Channel to each.
    pub fn peer_options(&self) -> Vec<PeerOptions> {
        self.peers
            .iter()
            .map(|p| {
                let mut options = PeerOptions::new(p.node.clone());
                options.channel.shared_bodies = p.shared_bodies;
                options
            })
            .collect()
    }
}
