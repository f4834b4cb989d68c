//! The simulated network: a [`Transport`] between the nodes of one run, with faults.
//!
//! Like the actors' in-process network, every frame is encoded and decoded with the wire codec
//! and what crosses each link is counted. On top of that, drawn from the run's one generator:
//! a random delay each way (so concurrent requests overtake each other: reordering), a request
//! lost before the peer sees it, an answer lost after the peer acted on it, and a request
//! delivered twice. Links can be cut and healed, and a node detached while it is down. A request
//! or answer in flight when its link is cut, or when either end crashes, is lost with it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use mailmesh_actors::peer_session::Inbound;
use mailmesh_actors::transport::{Transport, TransportError, TransportFuture};
use mailmesh_protocol::codec::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME};
use mailmesh_protocol::ids::{AppendId, MailboxId, NodeId};
use mailmesh_protocol::wire::{Frame, Request, Response};

use crate::rng::SimRng;
use crate::trace::Trace;

/// How badly the network behaves. Probabilities are per request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetFaults {
    /// The request is lost before the peer sees it.
    pub drop_request: f64,
    /// The answer is lost after the peer acted on the request.
    pub drop_response: f64,
    /// The peer receives the request twice (the sender gets one answer).
    pub duplicate: f64,
    /// Each way takes up to this long.
    pub max_delay_ms: u64,
    /// A delivery is slow, up to `slow_delay_ms`: it lets later requests overtake it.
    pub slow: f64,
    pub slow_delay_ms: u64,
}

impl NetFaults {
    /// A healthy LAN: small random delays only (requests still overtake each other).
    pub fn calm() -> Self {
        NetFaults {
            drop_request: 0.0,
            drop_response: 0.0,
            duplicate: 0.0,
            max_delay_ms: 5,
            slow: 0.0,
            slow_delay_ms: 0,
        }
    }

    /// A healthy network whose latency varies a lot: nothing is lost or repeated, but one
    /// delivery in three is slow, so a change often reaches a node over a longer path first.
    pub fn uneven() -> Self {
        NetFaults {
            slow: 0.3,
            slow_delay_ms: 1000,
            ..NetFaults::calm()
        }
    }

    /// Intensities drawn for one seed, from a mild to a very lossy network.
    pub fn random(rng: &SimRng) -> Self {
        NetFaults {
            drop_request: rng.float(0.0, 0.08),
            drop_response: rng.float(0.0, 0.08),
            duplicate: rng.float(0.0, 0.1),
            max_delay_ms: rng.range(1..40),
            slow: rng.float(0.0, 0.1),
            slow_delay_ms: rng.range(100..3000),
        }
    }
}

/// What crossed one direction of one link, keyed (from, to): the requests from `from` to `to`,
/// their answers' bytes, and the message records that flowed from `from` to `to` (in `from`'s
/// requests or in its answers to `to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub requests: u64,
    pub records: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// Network faults injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetFaultCounts {
    pub dropped_requests: u64,
    pub dropped_responses: u64,
    pub duplicated: u64,
    /// Requests refused at once because the link was cut or the peer down.
    pub refused: u64,
    /// Requests or answers lost because a link was cut or a node crashed while they travelled.
    pub lost_in_flight: u64,
}

impl NetFaultCounts {
    /// Faults the simulator chose to inject (refusals follow from partitions and crashes, which
    /// are counted where they are made).
    pub fn injected(&self) -> u64 {
        self.dropped_requests + self.dropped_responses + self.duplicated
    }
}

/// One crossing of a watched message record over one directed link: when it was sent and when it
/// arrived, on one clock of network events (so "had `to` received it before it sent it on" can
/// be told).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub append_id: AppendId,
    pub from: NodeId,
    pub to: NodeId,
    /// Copies of the record in the frame (a well-behaved sender puts one).
    pub copies: u64,
    /// In an answer to `to`'s request (pulled), not in `from`'s own request (pushed).
    pub in_answer: bool,
    pub sent: u64,
    pub arrived: u64,
}

/// The crossings of one mailbox's message records (the final probe's), recorded while watched.
#[derive(Default)]
struct Watch {
    mailbox: Option<MailboxId>,
    crossings: Vec<Crossing>,
    /// The clock of network events.
    clock: u64,
}

impl Watch {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[derive(Default)]
struct Net {
    attached: BTreeMap<NodeId, Inbound>,
    /// Bumped whenever a node is attached or detached: a request from or to an older epoch
    /// belongs to a connection that died with the node.
    epochs: BTreeMap<NodeId, u64>,
    /// Cut links, each as (smaller name, larger name).
    cut: BTreeSet<(NodeId, NodeId)>,
    stats: BTreeMap<(NodeId, NodeId), LinkStats>,
    faults: Option<NetFaults>,
    counts: NetFaultCounts,
    next_id: u64,
    watch: Watch,
}

impl Net {
    fn epoch(&self, node: &NodeId) -> u64 {
        self.epochs.get(node).copied().unwrap_or(0)
    }

    /// Why a request from `from` (at `from_epoch`) cannot reach `to` now, if it cannot.
    fn blocked(&self, from: &NodeId, from_epoch: u64, to: &NodeId) -> Option<&'static str> {
        if self.cut.contains(&link(from, to)) {
            Some("link is cut")
        } else if !self.attached.contains_key(to) {
            Some("node is down")
        } else if self.epoch(from) != from_epoch {
            Some("sender crashed")
        } else {
            None
        }
    }
}

pub fn link(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

/// The network of one run. Cheap to clone; lives on the simulation thread.
#[derive(Clone)]
pub struct SimNetwork {
    net: Rc<RefCell<Net>>,
    /// Requests (and duplicate deliveries) not finished yet; kept outside the RefCell so the
    /// guard of a future dropped mid-flight (its channel stopped) can always lower it.
    in_flight: Rc<Cell<u64>>,
    rng: SimRng,
    trace: Trace,
}

struct InFlightGuard(Rc<Cell<u64>>);

impl InFlightGuard {
    fn new(count: &Rc<Cell<u64>>) -> Self {
        count.set(count.get() + 1);
        InFlightGuard(count.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl SimNetwork {
    pub fn new(rng: SimRng, trace: Trace, faults: NetFaults) -> Self {
        let net = Net {
            faults: Some(faults),
            ..Default::default()
        };
        SimNetwork {
            net: Rc::new(RefCell::new(net)),
            in_flight: Rc::default(),
            rng,
            trace,
        }
    }

    /// Makes `node` reachable (at start, and after a restart).
    pub fn attach(&self, node: NodeId, inbound: Inbound) {
        let mut net = self.net.borrow_mut();
        *net.epochs.entry(node.clone()).or_default() += 1;
        net.attached.insert(node, inbound);
    }

    /// Makes `node` unreachable (it crashed); whatever it had in flight is lost.
    pub fn detach(&self, node: &NodeId) {
        let mut net = self.net.borrow_mut();
        *net.epochs.entry(node.clone()).or_default() += 1;
        net.attached.remove(node);
    }

    pub fn set_link(&self, a: &NodeId, b: &NodeId, up: bool) {
        let mut net = self.net.borrow_mut();
        if up {
            net.cut.remove(&link(a, b));
        } else {
            net.cut.insert(link(a, b));
        }
    }

    pub fn cut_links(&self) -> Vec<(NodeId, NodeId)> {
        self.net.borrow().cut.iter().cloned().collect()
    }

    pub fn heal_all(&self) {
        self.net.borrow_mut().cut.clear();
    }

    pub fn set_faults(&self, faults: NetFaults) {
        self.net.borrow_mut().faults = Some(faults);
    }

    pub fn transport(&self, node: &NodeId) -> Rc<dyn Transport> {
        Rc::new(SimTransport {
            net: self.clone(),
            from: node.clone(),
        })
    }

    pub fn stats(&self) -> BTreeMap<(NodeId, NodeId), LinkStats> {
        self.net.borrow().stats.clone()
    }

    pub fn total_requests(&self) -> u64 {
        self.net.borrow().stats.values().map(|s| s.requests).sum()
    }

    pub fn total_records(&self) -> u64 {
        self.net.borrow().stats.values().map(|s| s.records).sum()
    }

    /// Starts recording every crossing of the message records of `mailbox` (and forgets any
    /// earlier watch).
    pub fn watch(&self, mailbox: MailboxId) {
        let mut net = self.net.borrow_mut();
        net.watch.mailbox = Some(mailbox);
        net.watch.crossings.clear();
    }

    /// The crossings of the watched records so far, in order of arrival.
    pub fn watched(&self) -> Vec<Crossing> {
        self.net.borrow().watch.crossings.clone()
    }

    /// The time on the clock of network events (for [`Crossing::sent`]).
    fn watch_tick(&self) -> u64 {
        self.net.borrow_mut().watch.tick()
    }

    /// The watched records in a request or in the answer to a request about `about`, each with
    /// its number of copies.
    fn watched_in(
        &self,
        about: Option<MailboxId>,
        request: Option<&Request>,
        response: Option<&Response>,
    ) -> BTreeMap<AppendId, u64> {
        let mut found = BTreeMap::new();
        let net = self.net.borrow();
        if net.watch.mailbox.is_none() || net.watch.mailbox != about {
            return found;
        }
        let records: Vec<&AppendId> = match (request, response) {
            (Some(Request::ChangeRequest(r)), _) => r
                .records
                .iter()
                .map(|c| &c.item.append_id)
                .chain(r.updates.iter().map(|c| &c.item.append_id))
                .collect(),
            (_, Some(Response::Mismatch { changes, .. } | Response::Changes(changes))) => {
                changes.records.iter().map(|c| &c.item.append_id).collect()
            }
            (_, Some(Response::Full { records, .. })) => records.iter().map(|c| &c.item.append_id).collect(),
            _ => Vec::new(),
        };
        for aid in records {
            *found.entry(aid.clone()).or_default() += 1;
        }
        found
    }

    fn record_crossings(
        &self,
        (from, to): (&NodeId, &NodeId),
        in_answer: bool,
        records: BTreeMap<AppendId, u64>,
        sent: u64,
    ) {
        if records.is_empty() {
            return;
        }
        let mut net = self.net.borrow_mut();
        let arrived = net.watch.tick();
        for (append_id, copies) in records {
            net.watch.crossings.push(Crossing {
                append_id,
                from: from.clone(),
                to: to.clone(),
                copies,
                in_answer,
                sent,
                arrived,
            });
        }
    }

    pub fn fault_counts(&self) -> NetFaultCounts {
        self.net.borrow().counts
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    fn faults(&self) -> NetFaults {
        self.net.borrow().faults.unwrap_or_else(NetFaults::calm)
    }

    /// One way's travel time.
    fn delay(&self) -> Duration {
        let f = self.faults();
        let ms = if self.rng.chance(f.slow) && f.slow_delay_ms > 0 {
            self.rng.range(0..f.slow_delay_ms)
        } else {
            self.rng.range(0..f.max_delay_ms + 1)
        };
        Duration::from_millis(ms)
    }

    /// How long a sender waits before it gives a lost request or answer up.
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.rng.range(500..3000))
    }

    fn count(&self, f: impl FnOnce(&mut NetFaultCounts)) {
        f(&mut self.net.borrow_mut().counts);
    }

    fn add_stats(&self, from: &NodeId, to: &NodeId, f: impl FnOnce(&mut LinkStats)) {
        let mut net = self.net.borrow_mut();
        f(net.stats.entry((from.clone(), to.clone())).or_default());
    }

    /// Carries one request from `from` to `to` and its answer back.
    async fn carry(self, from: NodeId, to: NodeId, request: Request) -> Result<Response, TransportError> {
        let _guard = InFlightGuard::new(&self.in_flight);
        let label = request_label(&request);
        let (id, from_epoch, refused) = {
            let mut net = self.net.borrow_mut();
            net.next_id += 1;
            let from_epoch = net.epoch(&from);
            (net.next_id, from_epoch, net.blocked(&from, from_epoch, &to))
        };
        let head = format!("#{id} {from}->{to} {label}");
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer: to.clone(),
            reason: reason.into(),
        };
        let closed = |reason: &str| TransportError::Closed {
            peer: to.clone(),
            reason: reason.into(),
        };
        if let Some(why) = refused {
            self.count(|c| c.refused += 1);
            self.trace.log(format!("{head}: refused, {why}"));
            return Err(unreachable(why));
        }
        let records = request_records(&request);
        let about = request_mailbox(&request);
        let watched = self.watched_in(about, Some(&request), None);
        let sent = self.watch_tick();
        let (frame, size) = through_the_wire(&Frame::Request { id, request }, &to)?;
        self.add_stats(&from, &to, |s| {
            s.requests += 1;
            s.records += records;
            s.request_bytes += size as u64;
        });
        let Frame::Request { request, .. } = frame else {
            return Err(malformed(&to, "not a request"));
        };
        tokio::time::sleep(self.delay()).await;
        let faults = self.faults();
        if self.rng.chance(faults.drop_request) {
            self.count(|c| c.dropped_requests += 1);
            self.trace.log(format!("{head}: request lost"));
            tokio::time::sleep(self.timeout()).await;
            return Err(unreachable("request lost"));
        }
        // Deliver. The peer's Inbound is looked up only now, so nothing in flight keeps a
        // crashed node's store open.
        let delivered = {
            let net = self.net.borrow();
            match net.blocked(&from, from_epoch, &to) {
                Some(why) => Err(why),
                None => {
                    let inbound = net.attached.get(&to).expect("checked attached");
                    let duplicate = self.rng.chance(faults.duplicate).then(|| request.clone());
                    Ok((inbound.handle(from.clone(), request), net.epoch(&to), duplicate))
                }
            }
        };
        let (handled, to_epoch, duplicate) = match delivered {
            Ok(d) => {
                self.record_crossings((&from, &to), false, watched, sent);
                d
            }
            Err(why) => {
                self.count(|c| c.lost_in_flight += 1);
                self.trace.log(format!("{head}: lost in flight, {why}"));
                return Err(closed(why));
            }
        };
        if let Some(copy) = duplicate {
            self.count(|c| c.duplicated += 1);
            let net = self.clone();
            let (from, to, label) = (from.clone(), to.clone(), label.clone());
            actix::spawn(net.deliver_again(id, from, from_epoch, to, copy, label, records));
        }
        let response = handled.await;
        let answer_sent = self.watch_tick();
        tokio::time::sleep(self.delay()).await;
        let gone = {
            let net = self.net.borrow();
            net.blocked(&from, from_epoch, &to)
                .or_else(|| (net.epoch(&to) != to_epoch).then_some("peer restarted"))
        };
        let answer = response_label(&response);
        if let Some(why) = gone {
            self.count(|c| c.lost_in_flight += 1);
            self.trace
                .log(format!("{head} -> {answer}: answer lost in flight, {why}"));
            return Err(closed(why));
        }
        if self.rng.chance(faults.drop_response) {
            self.count(|c| c.dropped_responses += 1);
            self.trace.log(format!("{head} -> {answer}: answer lost"));
            tokio::time::sleep(self.timeout()).await;
            return Err(closed("answer lost"));
        }
        let records = response_records(&response);
        let watched = self.watched_in(about, None, Some(&response));
        self.record_crossings((&to, &from), true, watched, answer_sent);
        let (frame, size) = through_the_wire(&Frame::Response { id, response }, &to)?;
        self.add_stats(&from, &to, |s| s.response_bytes += size as u64);
        // Records in an answer flow from the peer to the requester.
        self.add_stats(&to, &from, |s| s.records += records);
        self.trace.log(format!("{head} -> {answer}"));
        match frame {
            Frame::Response { response, .. } => Ok(response),
            _ => Err(malformed(&to, "not a response")),
        }
    }

    /// The second delivery of a duplicated request; its answer goes nowhere.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_again(
        self,
        id: u64,
        from: NodeId,
        from_epoch: u64,
        to: NodeId,
        request: Request,
        label: String,
        records: u64,
    ) {
        let _guard = InFlightGuard::new(&self.in_flight);
        tokio::time::sleep(self.delay()).await;
        let handled = {
            let net = self.net.borrow();
            match net.blocked(&from, from_epoch, &to) {
                Some(_) => None,
                None => net.attached.get(&to).map(|i| i.handle(from.clone(), request)),
            }
        };
        let head = format!("#{id} {from}->{to} {label} (duplicate)");
        let Some(handled) = handled else {
            self.trace.log(format!("{head}: lost"));
            return;
        };
        self.add_stats(&from, &to, |s| {
            s.requests += 1;
            s.records += records;
        });
        let response = handled.await;
        self.trace
            .log(format!("{head} -> {} (dropped)", response_label(&response)));
    }
}

struct SimTransport {
    net: SimNetwork,
    from: NodeId,
}

impl Transport for SimTransport {
    fn request(&self, peer: &NodeId, request: Request) -> TransportFuture {
        Box::pin(self.net.clone().carry(self.from.clone(), peer.clone(), request))
    }
}

fn malformed(peer: &NodeId, reason: &str) -> TransportError {
    TransportError::Malformed {
        peer: peer.clone(),
        reason: reason.into(),
    }
}

/// Encodes and decodes a frame, as a real link would; returns the decoded frame and its size.
fn through_the_wire(frame: &Frame, peer: &NodeId) -> Result<(Frame, usize), TransportError> {
    let bytes = encode_frame(frame, DEFAULT_MAX_FRAME).map_err(|e| malformed(peer, &e.to_string()))?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.push(&bytes);
    let decoded = decoder
        .next_frame()
        .map_err(|e| malformed(peer, &e.to_string()))?
        .ok_or_else(|| malformed(peer, "incomplete frame"))?;
    Ok((decoded, bytes.len()))
}

/// The mailbox a mailbox sync request is about.
fn request_mailbox(request: &Request) -> Option<MailboxId> {
    match request {
        Request::ChangeRequest(r) => Some(r.mailbox),
        Request::ChangesSince { mailbox, .. } | Request::FullState { mailbox, .. } => Some(*mailbox),
        _ => None,
    }
}

fn request_records(request: &Request) -> u64 {
    match request {
        Request::ChangeRequest(r) => (r.records.len() + r.updates.len()) as u64,
        _ => 0,
    }
}

fn response_records(response: &Response) -> u64 {
    match response {
        Response::Mismatch { changes, .. } | Response::Changes(changes) => changes.records.len() as u64,
        Response::Full { records, .. } => records.len() as u64,
        _ => 0,
    }
}

/// A short, deterministic description of a request for the trace.
pub fn request_label(request: &Request) -> String {
    match request {
        Request::Hello { .. } => "Hello".into(),
        Request::Mailboxes { user, entries } => format!("Mailboxes({user}, {})", entries.len()),
        Request::Subscriptions { user, .. } => format!("Subscriptions({user})"),
        Request::Sieve { user, .. } => format!("Sieve({user})"),
        Request::Links { links } => format!("Links({})", links.item.peers.len()),
        Request::ChangeRequest(r) => format!(
            "ChangeRequest({}, rec={}, upd={}, ann={}, bodies={}{})",
            short_id(r.mailbox.0),
            r.records.len(),
            r.updates.len(),
            r.annotations.len(),
            r.bodies.len(),
            if r.full { ", full" } else { "" }
        ),
        Request::ChangesSince { mailbox, .. } => format!("ChangesSince({})", short_id(mailbox.0)),
        Request::FullState { mailbox, .. } => format!("FullState({})", short_id(mailbox.0)),
        Request::MissingBodies { guids } => format!("MissingBodies({})", guids.len()),
        Request::Keeps { mailbox, .. } => format!("Keeps({})", short_id(mailbox.0)),
        Request::FetchBody { offset, .. } => format!("FetchBody(@{offset})"),
        Request::BodyChunk {
            offset, data, last, ..
        } => {
            format!(
                "BodyChunk(@{offset}+{}{})",
                data.len(),
                if *last { ", last" } else { "" }
            )
        }
        Request::Bodies { parts } => format!("Bodies({})", parts.len()),
        #[allow(unreachable_patterns)]
        other => variant_name(&format!("{other:?}")),
    }
}

/// A short, deterministic description of an answer for the trace.
pub fn response_label(response: &Response) -> String {
    match response {
        Response::Ok => "Ok".into(),
        Response::Hello { .. } => "Hello".into(),
        Response::Body { data, total } => format!("Body({}/{total})", data.len()),
        Response::Applied { .. } => "Applied".into(),
        Response::Mismatch { changes, .. } => format!("Mismatch(rec={})", changes.records.len()),
        Response::Changes(p) => format!("Changes(rec={})", p.records.len()),
        Response::Full { records, .. } => format!("Full(rec={})", records.len()),
        Response::Missing { guids } => format!("Missing({})", guids.len()),
        Response::Keeps { keeps, .. } => format!("Keeps({keeps})"),
        Response::Error { code, .. } => format!("Error({code:?})"),
        #[allow(unreachable_patterns)]
        other => variant_name(&format!("{other:?}")),
    }
}

/// The variant name at the start of a Debug rendering (for wire messages newer than this file).
fn variant_name(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_string()
}

/// The first 8 hex digits of a mailbox id, enough to tell a run's mailboxes apart in the trace.
pub fn short_id(id: u128) -> String {
    format!("{:08x}", (id >> 96) as u32)
}
