//! The network as the actors see it: send a request to a named peer, get its response.
//!
//! Nothing in this crate knows what carries the bytes. A node plugs in QUIC, the tests and the
//! simulator plug in an in-process network; both implement [`Transport`] and deliver what
//! arrives to the receiving node's [`crate::peer_session::Inbound`].

use std::future::Future;
use std::pin::Pin;

use mailmesh_protocol::ids::NodeId;
use mailmesh_protocol::wire::{Request, Response};

pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Response, TransportError>>>>;

pub trait Transport: 'static {
    /// Sends one request to `peer` and resolves to its response. A failure says nothing about
    /// whether the peer acted on the request: every request is safe to repeat.
    fn request(&self, peer: &NodeId, request: Request) -> TransportFuture;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    #[error("malformed frame on the link to {peer}: {reason}")]
    Malformed { peer: NodeId, reason: String },
    #[error("the link to {peer} closed: {reason}")]
    Closed { peer: NodeId, reason: String },
}
