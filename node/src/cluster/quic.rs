//! The cluster transport: the engine's [`Transport`] over QUIC (quinn) with mutual TLS.
//!
//! **One link per peer pair.** Both nodes dial every configured peer, so two nodes starting
//! together dial each other at once and briefly have two connections. Each keeps the one dialled
//! by the node whose name sorts first and closes the other ("duplicate link"); both sides apply
//! the same rule and so keep the same connection. A kept link older than [`SIMULTANEOUS`] loses
//! to a newcomer instead: a peer that dials while we think we are connected has lost that link
//! (it restarted), and waiting for our side to notice would cost an idle timeout.
//!
//! **A link** is a QUIC connection on which the dialler first opens one stream and sends the
//! codec's Hello, answered by the acceptor's Hello (protocol version, node name matching the TLS
//! certificate, largest frame). Then each request travels on its own bidirectional stream: one
//! length-prefixed frame out, the stream finished, one frame back. Either side sends requests on
//! the same connection, so a link serves both directions.
//!
//! **Bad input** on a stream (random bytes, a truncated or oversize frame, anything but one
//! request) resets that stream only, with a log line naming the peer; the connection and every
//! other stream go on. A peer that stops reading or answering is bounded: at most
//! [`IN_FLIGHT_PER_PEER`] requests of ours wait on it, each for at most [`REQUEST_TIMEOUT`], and
//! the peer may open at most [`MAX_STREAMS`] streams of its own at once.
//!
//! **Flow control**: a stream may have [`STREAM_WINDOW`] bytes unread and a connection
//! [`CONNECTION_WINDOW`]; the engine sends bodies in 1 MiB chunks, one chunk a request, so a 64
//! MiB message streams through a few chunks in flight instead of being framed whole.
//!
//! **Reconnects**: a dialler task per peer redials with exponential backoff and jitter
//! ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]) while no link is up, and is woken at once by a request
//! waiting for the link. Keep-alives every [`KEEP_ALIVE`] detect a dead peer within
//! [`IDLE_TIMEOUT`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mailmesh_actors::peer_session::Inbound;
use mailmesh_actors::transport::{Transport, TransportError, TransportFuture};
use mailmesh_protocol::codec::{
    check_hello, decode_frame_body, encode_frame, hello, CodecError, DEFAULT_MAX_FRAME,
};
use mailmesh_protocol::ids::NodeId;
use mailmesh_protocol::wire::{ErrorCode, Frame, Request, Response};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use super::tls::{self, TlsIdentity};
use super::{ClusterOptions, PeerAddress};
use crate::operator::links::{LinkReport, LinkStatus};

/// Largest frame this node accepts (and announces in its Hello).
pub const MAX_FRAME: u32 = DEFAULT_MAX_FRAME;
/// How long a request waits for a link to its peer before it fails as unreachable.
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// The longest one request may take, sending, the peer's work and the answer together.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a TLS handshake plus the Hello exchange may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of ours waiting on one peer at once; more wait for a slot, not for memory.
pub const IN_FLIGHT_PER_PEER: usize = 32;
/// Streams a peer may have open to us at once (its requests).
pub const MAX_STREAMS: u32 = 64;
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Two links of one pair set up within this time of each other are a simultaneous dial.
pub const SIMULTANEOUS: Duration = Duration::from_secs(2);

/// Application close codes of a connection.
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_NOT_A_PEER: u32 = 2;
const CLOSE_HANDSHAKE: u32 = 3;
const CLOSE_SHUTDOWN: u32 = 4;
/// Application error codes of a stream reset.
const STREAM_BAD_FRAME: u32 = 1;
const STREAM_TIMEOUT: u32 = 2;
const STREAM_NOT_READY: u32 = 3;

struct Link {
    conn: Connection,
    dialled_by_us: bool,
    installed: Instant,
    peer_max_frame: u32,
}

struct Peer {
    address: String,
    link: Option<Link>,
    /// Woken whenever a link is installed.
    link_up: Rc<Notify>,
    /// Cuts the dialler's backoff short.
    wake_dialler: Rc<Notify>,
    dialler: Option<tokio::task::JoinHandle<()>>,
    in_flight: Arc<Semaphore>,
    status: LinkStatus,
}

impl Peer {
    fn new(address: String) -> Peer {
        Peer {
            status: LinkStatus {
                address: Some(address.clone()),
                ..LinkStatus::default()
            },
            address,
            link: None,
            link_up: Rc::default(),
            wake_dialler: Rc::default(),
            dialler: None,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_PER_PEER)),
        }
    }

    fn live_link(&self) -> Option<&Link> {
        self.link.as_ref().filter(|l| l.conn.close_reason().is_none())
    }

    /// Folds a finished connection's byte counts into the totals.
    fn account(&mut self, conn: &Connection) {
        let stats = conn.stats();
        self.status.bytes_sent += stats.udp_tx.bytes;
        self.status.bytes_received += stats.udp_rx.bytes;
    }
}

struct Shared {
    me: NodeId,
    endpoint: Endpoint,
    listen: Cell<SocketAddr>,
    client: RefCell<quinn::ClientConfig>,
    peers: RefCell<BTreeMap<NodeId, Peer>>,
    /// Where requests of peers go; `None` until the node's actors run, and after shutdown.
    inbound: RefCell<Option<Inbound>>,
    next_id: Cell<u64>,
}

/// The cluster transport of one node. Cloning shares it.
#[derive(Clone)]
pub struct QuicTransport(Rc<Shared>);

/// Why a link could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(String),
    #[error("truncated frame")]
    Truncated,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl QuicTransport {
    /// Opens the UDP socket and prepares a link to each configured peer. Nothing is dialled or
    /// accepted until [`QuicTransport::start`]. Must run inside the node's tokio runtime.
    pub fn bind(me: NodeId, options: &ClusterOptions) -> Result<QuicTransport, String> {
        let server = server_config(&options.tls, peer_names(&options.peers))?;
        let client = client_config(&options.tls)?;
        let endpoint = Endpoint::server(server, options.listen)
            .map_err(|e| format!("cluster.listen: cannot listen on {}: {e}", options.listen))?;
        let listen = endpoint.local_addr().unwrap_or(options.listen);
        info!(%listen, "cluster listening (QUIC)");
        let peers = options
            .peers
            .iter()
            .map(|p| (p.node.clone(), Peer::new(p.address.clone())))
            .collect();
        Ok(QuicTransport(Rc::new(Shared {
            me,
            endpoint,
            listen: Cell::new(listen),
            client: RefCell::new(client),
            peers: RefCell::new(peers),
            inbound: RefCell::new(None),
            next_id: Cell::new(0),
        })))
    }

    /// Starts accepting peers, whose requests go to `inbound`, and dialling them.
    pub fn start(&self, inbound: Inbound) {
        *self.0.inbound.borrow_mut() = Some(inbound);
        let shared = self.0.clone();
        tokio::task::spawn_local(accept_loop(shared));
        let names: Vec<NodeId> = self.0.peers.borrow().keys().cloned().collect();
        for peer in names {
            spawn_dialler(&self.0, peer);
        }
    }

    /// Applies a reloaded `[cluster]` and `[[peers]]`: peers added, removed or re-pointed, new
    /// certificate files, a new listen address. A new listen address that cannot be bound is
    /// reported and the old one kept; everything else still applies.
    pub fn apply(&self, options: &ClusterOptions) -> Result<(), String> {
        let shared = &self.0;
        let mut problems = Vec::new();
        if options.listen != shared.listen.get() {
            match std::net::UdpSocket::bind(options.listen).and_then(|s| shared.endpoint.rebind(s)) {
                Ok(()) => {
                    let listen = shared.endpoint.local_addr().unwrap_or(options.listen);
                    shared.listen.set(listen);
                    info!(%listen, "cluster listening (QUIC) on the new address");
                }
                Err(e) => problems.push(format!(
                    "cluster.listen: cannot listen on {}: {e}; still listening on {}",
                    options.listen,
                    shared.listen.get()
                )),
            }
        }
        shared
            .endpoint
            .set_server_config(Some(server_config(&options.tls, peer_names(&options.peers))?));
        *shared.client.borrow_mut() = client_config(&options.tls)?;

        let wanted: BTreeMap<&NodeId, &PeerAddress> = options.peers.iter().map(|p| (&p.node, p)).collect();
        let mut added = Vec::new();
        {
            let mut peers = shared.peers.borrow_mut();
            peers.retain(|name, peer| {
                if wanted.contains_key(name) {
                    return true;
                }
                info!(peer = %name, "peer removed; closing its link");
                if let Some(d) = peer.dialler.take() {
                    d.abort();
                }
                if let Some(link) = peer.link.take() {
                    link.conn
                        .close(VarInt::from_u32(CLOSE_NOT_A_PEER), b"no longer a configured peer");
                    // The link's own task finds the peer gone and stays silent: say it here, so
                    // the log tells every link that went down, whichever side noticed first.
                    info!(peer = %name, reason = "peer removed", "link down");
                }
                false
            });
            for (name, wanted) in &wanted {
                match peers.get_mut(*name) {
                    Some(peer) if peer.address != wanted.address => {
                        info!(peer = %name, old = %peer.address, new = %wanted.address, "peer re-pointed; reconnecting");
                        peer.address = wanted.address.clone();
                        peer.status.address = Some(wanted.address.clone());
                        if let Some(link) = &peer.link {
                            link.conn.close(VarInt::from_u32(CLOSE_NOT_A_PEER), b"re-pointed");
                        }
                        peer.wake_dialler.notify_one();
                    }
                    Some(_) => {}
                    None => {
                        info!(peer = %name, address = %wanted.address, "peer added");
                        peers.insert((*name).clone(), Peer::new(wanted.address.clone()));
                        added.push((*name).clone());
                    }
                }
            }
        }
        if shared.inbound.borrow().is_some() {
            for peer in added {
                spawn_dialler(shared, peer);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Closes every link and stops dialling and accepting (the node is stopping).
    pub fn close(&self) {
        self.0.inbound.borrow_mut().take();
        for peer in self.0.peers.borrow_mut().values_mut() {
            if let Some(d) = peer.dialler.take() {
                d.abort();
            }
        }
        self.0
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node stopping");
    }
}

impl LinkReport for QuicTransport {
    /// Each configured peer's link, now: what `mailmesh status` shows.
    fn links(&self) -> BTreeMap<NodeId, LinkStatus> {
        self.0
            .peers
            .borrow()
            .iter()
            .map(|(name, peer)| {
                let mut status = peer.status.clone();
                if let Some(link) = peer.live_link() {
                    let stats = link.conn.stats();
                    status.bytes_sent += stats.udp_tx.bytes;
                    status.bytes_received += stats.udp_rx.bytes;
                }
                (name.clone(), status)
            })
            .collect()
    }
}

impl Transport for QuicTransport {
    fn request(&self, peer: &NodeId, request: Request) -> TransportFuture {
        let shared = self.0.clone();
        let peer = peer.clone();
        Box::pin(async move {
            let result = send_request(&shared, &peer, request).await;
            if let Some(p) = shared.peers.borrow_mut().get_mut(&peer) {
                p.status.requests += 1;
                if let Err(e) = &result {
                    p.status.request_failures += 1;
                    p.status.last_error = Some(e.to_string());
                }
            }
            result
        })
    }
}

fn peer_names(peers: &[PeerAddress]) -> BTreeSet<NodeId> {
    peers.iter().map(|p| p.node.clone()).collect()
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT.try_into().expect("10 s is a valid idle timeout"),
        ));
    Arc::new(t)
}

pub(crate) fn server_config(
    identity: &TlsIdentity,
    peers: BTreeSet<NodeId>,
) -> Result<quinn::ServerConfig, String> {
    let tls = identity.server_config(peers).map_err(|e| e.to_string())?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| format!("cluster TLS: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

pub(crate) fn client_config(identity: &TlsIdentity) -> Result<quinn::ClientConfig, String> {
    let tls = identity.client_config().map_err(|e| e.to_string())?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| format!("cluster TLS: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---- requests of this node -------------------------------------------------------------------

async fn send_request(
    shared: &Rc<Shared>,
    peer: &NodeId,
    request: Request,
) -> Result<Response, TransportError> {
    let (conn, peer_max_frame, in_flight) = link_for(shared, peer).await?;
    let _slot = in_flight
        .acquire_owned()
        .await
        .map_err(|_| TransportError::Closed {
            peer: peer.clone(),
            reason: "peer removed".into(),
        })?;
    let id = shared.next_id.get() + 1;
    shared.next_id.set(id);
    let bytes = encode_frame(&Frame::Request { id, request }, peer_max_frame).map_err(|e| {
        TransportError::Malformed {
            peer: peer.clone(),
            reason: e.to_string(),
        }
    })?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| LinkError::Io(e.to_string()))?;
        // Handed to quinn whole (`write_all` would copy the frame into its buffers first).
        send.write_chunk(Bytes::from(bytes))
            .await
            .map_err(|e| LinkError::Io(e.to_string()))?;
        send.finish().map_err(|e| LinkError::Io(e.to_string()))?;
        read_frame(&mut recv, MAX_FRAME).await
    };
    let closed = |reason: String| TransportError::Closed {
        peer: peer.clone(),
        reason,
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => Err(closed(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        Ok(Err(LinkError::Io(e))) => Err(closed(e)),
        Ok(Err(e)) => Err(TransportError::Malformed {
            peer: peer.clone(),
            reason: e.to_string(),
        }),
        Ok(Ok(Frame::Response { id: got, response })) if got == id => Ok(response),
        Ok(Ok(other)) => Err(TransportError::Malformed {
            peer: peer.clone(),
            reason: format!(
                "expected the response to request {id}, got {}",
                frame_name(&other)
            ),
        }),
    }
}

/// The live link to `peer`, waiting up to [`CONNECT_WAIT`] for one.
async fn link_for(
    shared: &Rc<Shared>,
    peer: &NodeId,
) -> Result<(Connection, u32, Arc<Semaphore>), TransportError> {
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    loop {
        let link_up = {
            let peers = shared.peers.borrow();
            let Some(p) = peers.get(peer) else {
                return Err(TransportError::Unreachable {
                    peer: peer.clone(),
                    reason: "not a configured peer".into(),
                });
            };
            if let Some(link) = p.live_link() {
                return Ok((link.conn.clone(), link.peer_max_frame, p.in_flight.clone()));
            }
            p.wake_dialler.notify_one();
            p.link_up.clone()
        };
        let notified = link_up.notified();
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let reason = shared
                .peers
                .borrow()
                .get(peer)
                .and_then(|p| p.status.last_error.clone())
                .unwrap_or_else(|| "no link".into());
            return Err(TransportError::Unreachable {
                peer: peer.clone(),
                reason,
            });
        }
    }
}

// ---- dialling ----------------------------------------------------------------------------------

fn spawn_dialler(shared: &Rc<Shared>, peer: NodeId) {
    let task = tokio::task::spawn_local(dial_loop(shared.clone(), peer.clone()));
    if let Some(p) = shared.peers.borrow_mut().get_mut(&peer) {
        if let Some(old) = p.dialler.replace(task) {
            old.abort();
        }
    } else {
        task.abort();
    }
}

/// Keeps a link to `peer` up for as long as it is configured.
async fn dial_loop(shared: Rc<Shared>, peer: NodeId) {
    let mut failures: u32 = 0;
    loop {
        let (live, wake) = {
            let peers = shared.peers.borrow();
            let Some(p) = peers.get(&peer) else { return };
            (p.live_link().map(|l| l.conn.clone()), p.wake_dialler.clone())
        };
        if let Some(conn) = live {
            conn.closed().await;
            continue;
        }
        match dial(&shared, &peer).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                let message = format!("dial: {e}");
                if failures == 1 {
                    warn!(%peer, error = %message, "cannot reach peer; retrying with backoff");
                } else {
                    debug!(%peer, error = %message, failures, "peer still unreachable");
                }
                if let Some(p) = shared.peers.borrow_mut().get_mut(&peer) {
                    p.status.last_error = Some(message);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures)) => {}
                    _ = wake.notified() => {}
                }
            }
        }
    }
}

/// 100 ms doubling to 5 s, each scaled by a random factor in [0.5, 1.5) so that nodes that lost
/// a peer together do not redial it in step.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1 << failures.min(10)).min(BACKOFF_MAX);
    base.mul_f64(0.5 + rand::random::<f64>())
}

async fn dial(shared: &Rc<Shared>, peer: &NodeId) -> Result<(), String> {
    let address = match shared.peers.borrow().get(peer) {
        Some(p) => p.address.clone(),
        None => return Ok(()),
    };
    let addr = tokio::net::lookup_host(&address)
        .await
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))?;
    let client = shared.client.borrow().clone();
    let connecting = shared
        .endpoint
        .connect_with(client, addr, tls::server_name(peer).to_str().as_ref())
        .map_err(|e| format!("{addr}: {e}"))?;
    let handshake = async {
        let conn = connecting.await.map_err(|e| format!("{addr}: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let ours =
            encode_frame(&hello(shared.me.clone(), MAX_FRAME), MAX_FRAME).map_err(|e| e.to_string())?;
        send.write_all(&ours).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let theirs = read_frame(&mut recv, MAX_FRAME)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        match check_hello(&theirs, Some(peer)) {
            Ok(h) => Ok((conn, h.max_frame)),
            Err(e) => {
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake failed");
                Err(format!("handshake: {e}"))
            }
        }
    };
    let (conn, peer_max_frame) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("{addr}: no handshake within {HANDSHAKE_TIMEOUT:?}"))??;
    install(shared, peer, conn, true, peer_max_frame);
    Ok(())
}

// ---- accepting ---------------------------------------------------------------------------------

async fn accept_loop(shared: Rc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.inbound.borrow().is_none() {
            incoming.refuse();
            continue;
        }
        tokio::task::spawn_local(accept_one(shared.clone(), incoming));
    }
}

async fn accept_one(shared: Rc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // The certificate checks log their own reason; this line says where it came from.
            warn!(%remote, error = %e, "inbound connection refused");
            return;
        }
        Err(_) => {
            warn!(%remote, "inbound connection refused: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let peer = {
        let peers = shared.peers.borrow();
        conn.peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().and_then(|cert| tls::named_peer(cert, peers.keys())))
    };
    let Some(peer) = peer else {
        // Removed from [[peers]] between the TLS check and now.
        warn!(%remote, "inbound connection refused: its certificate names no configured peer");
        conn.close(VarInt::from_u32(CLOSE_NOT_A_PEER), b"not a configured peer");
        return;
    };
    let handshake = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let theirs = read_frame(&mut recv, MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        let reply = match check_hello(&theirs, Some(&peer)) {
            Ok(h) => Ok(h.max_frame),
            Err(e) => Err(e.to_string()),
        };
        let frame = match &reply {
            Ok(_) => hello(shared.me.clone(), MAX_FRAME),
            Err(reason) => Frame::Refuse {
                reason: reason.clone(),
            },
        };
        let bytes = encode_frame(&frame, MAX_FRAME).map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        reply
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(peer_max_frame)) => install(&shared, &peer, conn, false, peer_max_frame),
        Ok(Err(e)) => {
            warn!(%peer, %remote, error = %e, "handshake failed; closing the connection");
            conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake failed");
        }
        Err(_) => {
            warn!(%peer, %remote, "no Hello within {HANDSHAKE_TIMEOUT:?}; closing the connection");
            conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake timed out");
        }
    }
}

// ---- links -------------------------------------------------------------------------------------

/// Makes `conn` the link to `peer`, unless the pair already has a link that wins the tie-break.
fn install(shared: &Rc<Shared>, peer: &NodeId, conn: Connection, dialled_by_us: bool, peer_max_frame: u32) {
    let direction = if dialled_by_us { "outbound" } else { "inbound" };
    let link_up = {
        let mut peers = shared.peers.borrow_mut();
        let Some(p) = peers.get_mut(peer) else {
            conn.close(VarInt::from_u32(CLOSE_NOT_A_PEER), b"not a configured peer");
            return;
        };
        if let Some(old) = p.live_link() {
            // The link dialled by the node whose name sorts first is the one both sides keep.
            let we_are_preferred_dialler = shared.me < *peer;
            let old_preferred = old.dialled_by_us == we_are_preferred_dialler;
            let new_preferred = dialled_by_us == we_are_preferred_dialler;
            if old_preferred && !new_preferred && old.installed.elapsed() < SIMULTANEOUS {
                debug!(%peer, direction, "duplicate link closed; keeping the one dialled first by name");
                conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate link");
                return;
            }
            debug!(%peer, direction, "newer link replaces the old one");
            old.conn
                .close(VarInt::from_u32(CLOSE_DUPLICATE), b"replaced by a newer link");
        }
        if let Some(old) = p.link.take() {
            p.account(&old.conn);
        }
        let remote = conn.remote_address();
        info!(%peer, %remote, direction, "link up");
        p.status.connected = true;
        p.status.since_ms = Some(now_ms());
        if !dialled_by_us {
            p.status.address = Some(remote.to_string());
        } else {
            p.status.address = Some(p.address.clone());
        }
        p.link = Some(Link {
            conn: conn.clone(),
            dialled_by_us,
            installed: Instant::now(),
            peer_max_frame,
        });
        p.link_up.clone()
    };
    link_up.notify_waiters();
    tokio::task::spawn_local(serve_link(shared.clone(), peer.clone(), conn));
}

/// Answers the peer's requests on `conn` until it closes, then marks the link down.
async fn serve_link(shared: Rc<Shared>, peer: NodeId, conn: Connection) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::task::spawn_local(serve_stream(shared.clone(), peer.clone(), send, recv));
            }
            Err(reason) => {
                let mut peers = shared.peers.borrow_mut();
                let Some(p) = peers.get_mut(&peer) else { return };
                let ours = p
                    .link
                    .as_ref()
                    .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
                if ours {
                    p.link.take();
                    p.account(&conn);
                    p.status.connected = false;
                    p.status.since_ms = Some(now_ms());
                    p.status.last_error = Some(format!("link: {reason}"));
                    info!(%peer, %reason, "link down");
                }
                return;
            }
        }
    }
}

/// One request of the peer: a frame in, the node's answer out. Anything wrong with what the
/// peer sent resets this stream alone.
async fn serve_stream(shared: Rc<Shared>, peer: NodeId, mut send: SendStream, mut recv: RecvStream) {
    let reset = |send: &mut SendStream, recv: &mut RecvStream, code: u32| {
        let _ = recv.stop(VarInt::from_u32(code));
        let _ = send.reset(VarInt::from_u32(code));
    };
    let Some(inbound) = shared.inbound.borrow().clone() else {
        reset(&mut send, &mut recv, STREAM_NOT_READY);
        return;
    };
    let (id, request) = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut recv, MAX_FRAME)).await {
        Ok(Ok(Frame::Request { id, request })) => (id, request),
        Ok(Ok(other)) => {
            warn!(%peer, got = frame_name(&other), "bad stream from peer: expected a request; stream reset");
            reset(&mut send, &mut recv, STREAM_BAD_FRAME);
            return;
        }
        Ok(Err(LinkError::Io(e))) => {
            debug!(%peer, error = %e, "peer's stream ended before its request");
            return;
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "bad stream from peer; stream reset");
            reset(&mut send, &mut recv, STREAM_BAD_FRAME);
            return;
        }
        Err(_) => {
            warn!(%peer, "peer sent no whole request within {REQUEST_TIMEOUT:?}; stream reset");
            reset(&mut send, &mut recv, STREAM_TIMEOUT);
            return;
        }
    };
    let response = inbound.handle(peer.clone(), request).await;
    let peer_max_frame = shared
        .peers
        .borrow()
        .get(&peer)
        .and_then(|p| p.live_link().map(|l| l.peer_max_frame))
        .unwrap_or(MAX_FRAME);
    let bytes = match encode_frame(&Frame::Response { id, response }, peer_max_frame) {
        Ok(bytes) => bytes,
        Err(e) => {
            warn!(%peer, error = %e, "answer does not fit in a frame; answering with an error");
            let error = Response::Error {
                code: ErrorCode::BadRequest,
                message: format!("the answer does not fit in a frame: {e}"),
                retry: false,
            };
            match encode_frame(&Frame::Response { id, response: error }, peer_max_frame) {
                Ok(bytes) => bytes,
                Err(_) => {
                    reset(&mut send, &mut recv, STREAM_BAD_FRAME);
                    return;
                }
            }
        }
    };
    if let Err(e) = send.write_chunk(Bytes::from(bytes)).await {
        debug!(%peer, error = %e, "cannot send an answer; the peer will ask again");
        return;
    }
    let _ = send.finish();
}

/// Reads one whole frame, and nothing after it, from `recv`. The length prefix is checked before
/// the body is read, so an oversize frame costs 4 bytes, not its length.
async fn read_frame(recv: &mut RecvStream, max_frame: u32) -> Result<Frame, LinkError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => LinkError::Truncated,
        quinn::ReadExactError::ReadError(e) => LinkError::Io(e.to_string()),
    })?;
    let len = u32::from_be_bytes(prefix);
    if len > max_frame {
        return Err(CodecError::Oversize {
            len: len as usize,
            max: max_frame as usize,
        }
        .into());
    }
    let body = recv.read_to_end(len as usize).await.map_err(|e| match e {
        quinn::ReadToEndError::TooLong => LinkError::Codec(CodecError::Malformed(format!(
            "more bytes after a frame of {len} bytes"
        ))),
        quinn::ReadToEndError::Read(e) => LinkError::Io(e.to_string()),
    })?;
    if body.len() < len as usize {
        return Err(LinkError::Truncated);
    }
    // Decoded where quinn put it: a body request is megabytes, not worth copying again.
    Ok(decode_frame_body(&body)?)
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::Refuse { .. } => "Refuse",
        Frame::Request { .. } => "Request",
        Frame::Response { .. } => "Response",
    }
}
