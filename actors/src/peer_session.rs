//! The PeerSession actor: the answering side of one peer's link. It routes the peer's requests to
//! the Directory and the Mailbox actors, tagged with the peer they came from (so the changes they
//! make are not echoed back to it), and assembles the bodies the peer streams before the records
//! that name them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use mailmesh_protocol::ids::{Guid, MailboxId, NodeId};
use mailmesh_protocol::wire::{ErrorCode, Request, Response};
use serde_bytes::ByteBuf;
use tracing::{debug, warn};

use crate::context::NodeContext;
use crate::directory::{Directory, OpenMailboxById};
use crate::directory_sync::{
    ApplyEntries, ApplyLinks, ApplyUserItem, KeepsMailbox, PeerHello, UserItemChange,
};
use crate::error::MailError;
use crate::mailbox::Mailbox;
use crate::mailbox_sync::{wire_error, ApplyChanges, Bodies, ListChanges, ListFull, PageBudget};

/// Bodies a session holds between their chunks and the change request that names them.
const MAX_STAGED_BYTES: usize = 256 * 1024 * 1024;
/// Largest page a session answers with.
const MAX_PAGE: usize = 5000;

pub struct PeerSession {
    peer: NodeId,
    ctx: NodeContext,
    directory: Addr<Directory>,
    /// Bodies being received, by Guid.
    partial: BTreeMap<Guid, Vec<u8>>,
    /// Bodies received whole and checked, waiting for their records.
    complete: BTreeMap<Guid, Arc<Vec<u8>>>,
    staged_bytes: usize,
}

impl Actor for PeerSession {
    type Context = Context<Self>;
}

impl PeerSession {
    pub fn new(peer: NodeId, ctx: NodeContext, directory: Addr<Directory>) -> Self {
        PeerSession {
            peer,
            ctx,
            directory,
            partial: BTreeMap::new(),
            complete: BTreeMap::new(),
            staged_bytes: 0,
        }
    }

    fn receive_chunk(&mut self, guid: Guid, offset: u64, data: ByteBuf, last: bool) -> Response {
        if offset == 0 && last {
            // A whole body in one part (many small bodies share a request): kept as it was
            // decoded, not copied through `partial`.
            if let Some(earlier) = self.partial.remove(&guid) {
                self.staged_bytes -= earlier.len().min(self.staged_bytes);
            }
            if data.len() > self.ctx.limits.max_message_bytes as usize {
                return wire_error(
                    ErrorCode::BadRequest,
                    &format!("body {guid} exceeds the maximum message size"),
                );
            }
            let body = data.into_vec();
            if Guid::of(&body) != guid {
                return wire_error(
                    ErrorCode::Corrupt,
                    &format!("body {guid} does not hash to its Guid"),
                );
            }
            self.staged_bytes += body.len();
            if let Some(replaced) = self.complete.insert(guid, Arc::new(body)) {
                self.staged_bytes -= replaced.len().min(self.staged_bytes);
            }
            self.bound_staged();
            return Response::Ok;
        }
        let buf = self.partial.entry(guid).or_default();
        if offset == 0 {
            self.staged_bytes -= buf.len().min(self.staged_bytes);
            buf.clear();
        }
        if offset != buf.len() as u64 {
            return wire_error(
                ErrorCode::BadRequest,
                &format!("chunk of body {guid} at {offset}, expected {}", buf.len()),
            );
        }
        if buf.len() + data.len() > self.ctx.limits.max_message_bytes as usize {
            self.partial.remove(&guid);
            return wire_error(
                ErrorCode::BadRequest,
                &format!("body {guid} exceeds the maximum message size"),
            );
        }
        buf.extend_from_slice(&data);
        self.staged_bytes += data.len();
        if last {
            let body = self.partial.remove(&guid).unwrap_or_default();
            if Guid::of(&body) != guid {
                self.staged_bytes -= body.len().min(self.staged_bytes);
                return wire_error(
                    ErrorCode::Corrupt,
                    &format!("body {guid} does not hash to its Guid"),
                );
            }
            if let Some(replaced) = self.complete.insert(guid, Arc::new(body)) {
                self.staged_bytes -= replaced.len().min(self.staged_bytes);
            }
        }
        self.bound_staged();
        Response::Ok
    }

    /// Bounds memory: drops the oldest staged bodies; the peer resends what is still missing.
    fn bound_staged(&mut self) {
        while self.staged_bytes > MAX_STAGED_BYTES {
            let Some((&g, _)) = self.complete.iter().next() else {
                break;
            };
            if let Some(b) = self.complete.remove(&g) {
                self.staged_bytes -= b.len().min(self.staged_bytes);
            }
        }
    }
}

/// One request from the session's peer.
#[derive(Message)]
#[rtype(result = "Response")]
pub struct InboundRequest(pub Request);

/// A peer's request about a mailbox this node does not hold (not among its locations, not a
/// relay between them) is refused, to be
/// retried: the two nodes disagree on the entry, and once they agree either this node holds
/// the mailbox again or the peer no longer sends it anything (engine bug 17: a node that had let
/// its copy go took changes into a copy nobody would ever purge, and acknowledged them).
fn not_held_here(opened: &crate::directory::OpenedMailbox, me: &NodeId) -> Option<Response> {
    let holders = &opened.info.holders;
    (!holders.is_empty() && !holders.contains(me)).then(|| Response::Error {
        code: ErrorCode::Busy,
        message: format!("mailbox {} is not held on {me}", opened.info.id),
        retry: true,
    })
}

fn error_response(e: MailError) -> Response {
    let (code, retry) = match &e {
        MailError::MailboxDeleted(_) => (ErrorCode::MailboxDeleted, false),
        MailError::UnknownMailboxId(_) | MailError::UnknownMailbox { .. } => {
            (ErrorCode::UnknownMailbox, false)
        }
        MailError::BodyNotReceived(_) => (ErrorCode::MissingBody, true),
        MailError::Store(_) | MailError::ShuttingDown => (ErrorCode::Storage, true),
        _ => (ErrorCode::BadRequest, false),
    };
    Response::Error {
        code,
        message: e.to_string(),
        retry,
    }
}

impl Handler<InboundRequest> for PeerSession {
    type Result = ResponseActFuture<Self, Response>;

    fn handle(&mut self, msg: InboundRequest, _: &mut Self::Context) -> Self::Result {
        let peer = self.peer.clone();
        let directory = self.directory.clone();
        debug!(%peer, request = request_name(&msg.0), "inbound request");
        let immediate = |r: Response| -> Self::Result { Box::pin(actix::fut::ready(r)) };
        match msg.0 {
            Request::Hello { incarnation, floor } => Box::pin(
                async move {
                    match directory
                        .send(PeerHello {
                            peer,
                            incarnation,
                            floor,
                        })
                        .await
                    {
                        Ok(Ok((incarnation, floor))) => Response::Hello { incarnation, floor },
                        Ok(Err(e)) => error_response(e),
                        Err(e) => error_response(e.into()),
                    }
                }
                .into_actor(self),
            ),
            Request::Mailboxes { entries, .. } => Box::pin(
                async move {
                    match directory.send(ApplyEntries { from: peer, entries }).await {
                        Ok(Ok(())) => Response::Ok,
                        Ok(Err(e)) => error_response(e),
                        Err(e) => error_response(e.into()),
                    }
                }
                .into_actor(self),
            ),
            Request::Links { links } => Box::pin(
                async move {
                    match directory.send(ApplyLinks { from: peer, links }).await {
                        Ok(Ok(())) => Response::Ok,
                        Ok(Err(e)) => error_response(e),
                        Err(e) => error_response(e.into()),
                    }
                }
                .into_actor(self),
            ),
            Request::Subscriptions { user, subscriptions } => {
                let change = UserItemChange::Subscriptions(subscriptions);
                Box::pin(apply_user_item(directory, peer, user, change).into_actor(self))
            }
            Request::Sieve { user, sieve } => {
                let change = UserItemChange::Sieve(sieve);
                Box::pin(apply_user_item(directory, peer, user, change).into_actor(self))
            }
            Request::Keeps { mailbox, uidvalidity } => Box::pin(
                async move {
                    match directory.send(KeepsMailbox { mailbox, uidvalidity }).await {
                        Ok(Ok((keeps, incarnation))) => Response::Keeps { keeps, incarnation },
                        Ok(Err(e)) => error_response(e),
                        Err(e) => error_response(e.into()),
                    }
                }
                .into_actor(self),
            ),
            Request::MissingBodies { guids } => {
                let snapshot = match self.ctx.store.snapshot() {
                    Ok(s) => s,
                    Err(e) => return immediate(error_response(e.into())),
                };
                let mut missing = Vec::new();
                for guid in guids {
                    match snapshot.body_location(&guid) {
                        Ok(Some(_)) => {}
                        Ok(None) if self.complete.contains_key(&guid) => {}
                        Ok(None) if self.ctx.store.spooled(&guid).is_some() => {}
                        Ok(None) => missing.push(guid),
                        Err(e) => return immediate(error_response(e.into())),
                    }
                }
                immediate(Response::Missing { guids: missing })
            }
            Request::BodyChunk {
                guid,
                offset,
                data,
                last,
            } => immediate(self.receive_chunk(guid, offset, data, last)),
            Request::Bodies { parts } => {
                for part in parts {
                    let response = self.receive_chunk(part.guid, part.offset, part.data, part.last);
                    if response != Response::Ok {
                        return immediate(response);
                    }
                }
                immediate(Response::Ok)
            }
            Request::FetchBody { guid, offset, limit } => {
                let limit = (limit as usize).min(4 * 1024 * 1024);
                match self.ctx.store.read_body_range(&guid, offset, limit) {
                    Ok((data, total)) => immediate(Response::Body {
                        data: ByteBuf::from(data),
                        total,
                    }),
                    Err(e) => immediate(error_response(e.into())),
                }
            }
            Request::ChangeRequest(mut request) => {
                // Bodies carried along are staged first, exactly as a `Bodies` request would.
                for part in std::mem::take(&mut request.bodies) {
                    let response = self.receive_chunk(part.guid, part.offset, part.data, part.last);
                    if response != Response::Ok {
                        return immediate(response);
                    }
                }
                let bodies: Bodies = request
                    .records
                    .iter()
                    .filter_map(|c| self.complete.get(&c.item.guid).map(|b| (c.item.guid, b.clone())))
                    .collect();
                let mailbox = request.mailbox;
                let me = self.ctx.node.clone();
                Box::pin(
                    async move {
                        let opened = match directory.send(OpenMailboxById { id: mailbox }).await {
                            Ok(Ok(o)) => o,
                            Ok(Err(e)) => return (error_response(e), Vec::new()),
                            Err(e) => return (error_response(e.into()), Vec::new()),
                        };
                        if let Some(refused) = not_held_here(&opened, &me) {
                            return (refused, Vec::new());
                        }
                        let used: Vec<Guid> = bodies.keys().copied().collect();
                        let apply = ApplyChanges {
                            from: peer,
                            request,
                            bodies,
                            page: PageBudget::records(MAX_PAGE / 4),
                        };
                        match opened.addr.send(apply).await {
                            Ok(Ok(response)) => {
                                let applied = matches!(response, Response::Applied { .. });
                                (response, if applied { used } else { Vec::new() })
                            }
                            Ok(Err(e)) => (error_response(e), Vec::new()),
                            Err(e) => (error_response(e.into()), Vec::new()),
                        }
                    }
                    .into_actor(self)
                    .map(|(response, used), act, _| {
                        for guid in used {
                            if let Some(b) = act.complete.remove(&guid) {
                                act.staged_bytes -= b.len().min(act.staged_bytes);
                            }
                        }
                        response
                    }),
                )
            }
            Request::ChangesSince {
                mailbox,
                uidvalidity,
                since,
                limit,
            } => {
                let limit = (limit as usize).clamp(1, MAX_PAGE);
                let ask = ListChanges {
                    peer,
                    uidvalidity,
                    since,
                    page: PageBudget::records(limit),
                };
                Box::pin(ask_mailbox(directory, self.ctx.node.clone(), mailbox, ask).into_actor(self))
            }
            Request::FullState {
                mailbox,
                uidvalidity,
                after,
                limit,
            } => {
                let limit = (limit as usize).clamp(1, MAX_PAGE);
                let ask = ListFull {
                    uidvalidity,
                    after,
                    page: PageBudget::records(limit),
                };
                Box::pin(ask_mailbox(directory, self.ctx.node.clone(), mailbox, ask).into_actor(self))
            }
        }
    }
}

/// Opens a mailbox by id and asks it a question whose answer is a wire response; every failure
/// on the way is answered as a wire error.
async fn ask_mailbox<M>(directory: Addr<Directory>, me: NodeId, mailbox: MailboxId, ask: M) -> Response
where
    M: Message<Result = Result<Response, MailError>> + Send + 'static,
    Mailbox: Handler<M>,
{
    let opened = match directory.send(OpenMailboxById { id: mailbox }).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return error_response(e),
        Err(e) => return error_response(e.into()),
    };
    if let Some(refused) = not_held_here(&opened, &me) {
        return refused;
    }
    match opened.addr.send(ask).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error_response(e),
        Err(e) => error_response(e.into()),
    }
}

async fn apply_user_item(
    directory: Addr<Directory>,
    from: NodeId,
    user: String,
    change: UserItemChange,
) -> Response {
    match directory.send(ApplyUserItem { from, user, change }).await {
        Ok(Ok(())) => Response::Ok,
        Ok(Err(e)) => error_response(e),
        Err(e) => error_response(e.into()),
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "Hello",
        Request::Mailboxes { .. } => "Mailboxes",
        Request::Subscriptions { .. } => "Subscriptions",
        Request::Sieve { .. } => "Sieve",
        Request::Links { .. } => "Links",
        Request::ChangeRequest(_) => "ChangeRequest",
        Request::ChangesSince { .. } => "ChangesSince",
        Request::FullState { .. } => "FullState",
        Request::MissingBodies { .. } => "MissingBodies",
        Request::Keeps { .. } => "Keeps",
        Request::FetchBody { .. } => "FetchBody",
        Request::BodyChunk { .. } => "BodyChunk",
        Request::Bodies { .. } => "Bodies",
    }
}

/// A node's inbound side: what a transport hands each arriving request to. One PeerSession per
/// peer is started on its first request.
#[derive(Clone)]
pub struct Inbound {
    ctx: NodeContext,
    directory: Addr<Directory>,
    sessions: Rc<RefCell<BTreeMap<NodeId, Addr<PeerSession>>>>,
}

impl Inbound {
    pub fn new(ctx: NodeContext, directory: Addr<Directory>) -> Self {
        Inbound {
            ctx,
            directory,
            sessions: Rc::default(),
        }
    }

    /// Answers one request from `from`.
    pub fn handle(
        &self,
        from: NodeId,
        request: Request,
    ) -> impl std::future::Future<Output = Response> + 'static {
        let session = {
            let mut sessions = self.sessions.borrow_mut();
            sessions
                .entry(from.clone())
                .or_insert_with(|| {
                    PeerSession::new(from.clone(), self.ctx.clone(), self.directory.clone()).start()
                })
                .clone()
        };
        async move {
            match session.send(InboundRequest(request)).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(peer = %from, error = %e, "peer session is gone");
                    error_response(e.into())
                }
            }
        }
    }

    /// Ends every session (the node is stopping).
    pub fn close(&self) {
        self.sessions.borrow_mut().clear();
    }
}
