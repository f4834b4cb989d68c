//! An in-process network: many nodes in one actix System, linked by a real [`Transport`] that
//! encodes every frame with the wire codec and counts what crosses each link. Links can be cut
//! and healed. The tests use it for whole topologies; the simulator builds its faulty network
//! on the same seam.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use tokio::sync::Notify;

use mailmesh_protocol::codec::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME};
use mailmesh_protocol::ids::NodeId;
use mailmesh_protocol::wire::{Frame, Request, Response};

use crate::peer_session::Inbound;
use crate::transport::{Transport, TransportError, TransportFuture};

/// What crossed one direction of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub requests: u64,
    /// Message records that flowed from the first node to the second, in requests of the first
    /// or in answers of the first to the second's requests.
    pub records: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Default)]
struct Net {
    nodes: BTreeMap<NodeId, Inbound>,
    /// Cut links, each as (smaller name, larger name).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Held directions (from, to): their requests wait until released, as over a link that
    /// stalls one way. Lets a test put something in between two steps of a node's work.
    held: BTreeMap<(NodeId, NodeId), Rc<Notify>>,
    /// (from, to) -> what flowed on the link from `from` to `to`.
    stats: BTreeMap<(NodeId, NodeId), LinkStats>,
    next_id: u64,
}

#[derive(Clone, Default)]
pub struct MemoryNetwork(Rc<RefCell<Net>>);

fn link(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `node` reachable (again, after a restart).
    pub fn attach(&self, node: NodeId, inbound: Inbound) {
        self.0.borrow_mut().nodes.insert(node, inbound);
    }

    /// Makes `node` unreachable, as a crashed or stopped node is.
    pub fn detach(&self, node: &NodeId) {
        self.0.borrow_mut().nodes.remove(node);
    }

    pub fn set_link(&self, a: &NodeId, b: &NodeId, up: bool) {
        let mut net = self.0.borrow_mut();
        if up {
            net.cut.remove(&link(a, b));
        } else {
            net.cut.insert(link(a, b));
        }
    }

    /// Holds (`true`) or releases the requests `from` sends to `to`; held ones wait.
    pub fn hold(&self, from: &NodeId, to: &NodeId, held: bool) {
        let mut net = self.0.borrow_mut();
        let key = (from.clone(), to.clone());
        if held {
            net.held.entry(key).or_default();
        } else if let Some(waiting) = net.held.remove(&key) {
            waiting.notify_waiters();
        }
    }

    pub fn transport(&self, node: &NodeId) -> Rc<dyn Transport> {
        Rc::new(MemoryTransport {
            net: self.clone(),
            from: node.clone(),
        })
    }

    pub fn stats(&self) -> BTreeMap<(NodeId, NodeId), LinkStats> {
        self.0.borrow().stats.clone()
    }

    /// Requests sent over every link so far.
    pub fn total_requests(&self) -> u64 {
        self.0.borrow().stats.values().map(|s| s.requests).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.0
            .borrow()
            .stats
            .values()
            .map(|s| s.request_bytes + s.response_bytes)
            .sum()
    }
}

struct MemoryTransport {
    net: MemoryNetwork,
    from: NodeId,
}

/// Encodes and decodes a frame, as a real link would; returns the decoded frame and its size.
fn through_the_wire(frame: &Frame, peer: &NodeId) -> Result<(Frame, usize), TransportError> {
    let malformed = |e: &dyn std::fmt::Display| TransportError::Malformed {
        peer: peer.clone(),
        reason: e.to_string(),
    };
    let bytes = encode_frame(frame, DEFAULT_MAX_FRAME).map_err(|e| malformed(&e))?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.push(&bytes);
    let decoded = decoder
        .next_frame()
        .map_err(|e| malformed(&e))?
        .ok_or_else(|| malformed(&"incomplete frame"))?;
    Ok((decoded, bytes.len()))
}

impl Transport for MemoryTransport {
    fn request(&self, peer: &NodeId, request: Request) -> TransportFuture {
        let net = self.net.clone();
        let from = self.from.clone();
        let peer = peer.clone();
        Box::pin(async move {
            let unreachable = |reason: &str| TransportError::Unreachable {
                peer: peer.clone(),
                reason: reason.into(),
            };
            loop {
                let held = net.0.borrow().held.get(&(from.clone(), peer.clone())).cloned();
                match held {
                    // Registered at creation: a release before the first poll still wakes it.
                    Some(released) => released.notified().await,
                    None => break,
                }
            }
            let (inbound, id) = {
                let mut n = net.0.borrow_mut();
                if n.cut.contains(&link(&from, &peer)) {
                    return Err(unreachable("link is cut"));
                }
                let inbound = n
                    .nodes
                    .get(&peer)
                    .cloned()
                    .ok_or_else(|| unreachable("node is down"))?;
                n.next_id += 1;
                (inbound, n.next_id)
            };
            let records = match &request {
                Request::ChangeRequest(r) => r.records.len() as u64,
                _ => 0,
            };
            let (frame, size) = through_the_wire(&Frame::Request { id, request }, &peer)?;
            {
                let mut n = net.0.borrow_mut();
                let s = n.stats.entry((from.clone(), peer.clone())).or_default();
                s.requests += 1;
                s.records += records;
                s.request_bytes += size as u64;
            }
            let Frame::Request { request, .. } = frame else {
                return Err(TransportError::Malformed {
                    peer,
                    reason: "not a request".into(),
                });
            };
            let response = inbound.handle(from.clone(), request).await;
            // The link may have been cut, or the peer stopped, while it worked: the answer is lost.
            {
                let n = net.0.borrow();
                if n.cut.contains(&link(&from, &peer)) || !n.nodes.contains_key(&peer) {
                    return Err(TransportError::Closed {
                        peer,
                        reason: "lost while the peer worked".into(),
                    });
                }
            }
            let records = match &response {
                Response::Mismatch { changes, .. } | Response::Changes(changes) => {
                    changes.records.len() as u64
                }
                Response::Full { records, .. } => records.len() as u64,
                _ => 0,
            };
            let (frame, size) = through_the_wire(&Frame::Response { id, response }, &peer)?;
            {
                let mut n = net.0.borrow_mut();
                n.stats
                    .entry((from.clone(), peer.clone()))
                    .or_default()
                    .response_bytes += size as u64;
                // Records in an answer flow from the peer to the requester.
                n.stats.entry((peer.clone(), from)).or_default().records += records;
            }
            match frame {
                Frame::Response { response, .. } => Ok(response),
                _ => Err(TransportError::Malformed {
                    peer,
                    reason: "not a response".into(),
                }),
            }
        })
    }
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryNetwork({} nodes)", self.0.borrow().nodes.len())
    }
}
