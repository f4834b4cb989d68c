//! The operator interface of a node: a Unix socket in the data directory through which the
//! one-shot `mailmesh` commands (status, mailbox create/list/move/rename/delete, append, flags,
//! expunge, fetch) work on a running node.
//!
//! - [`protocol`]: the request and reply types and their framing (versioned);
//! - [`server`]: the socket a running node serves (mode 0600; one task per connection);
//! - [`client`]: what a one-shot command uses to reach it;
//! - [`links`]: what the cluster transport reports about its links;
//! - [`moves`]: mailbox moves under way, read from the store;
//! - this module: [`NodeHandle::handle`], the one place a request becomes actor messages, used
//!   by the socket server and, on a stopped node's data directory, by `ops`.

pub mod client;
pub mod links;
pub mod moves;
pub mod protocol;
pub mod server;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use mailmesh_actors::channel::GetChannelStats;
use mailmesh_actors::directory::{
    CreateMailbox, DeleteMailbox, GetDirectoryStats, ListMailboxes, ListScripts, MailboxInfo, OpenMailbox,
    OpenedMailbox, PutScript, RenameMailbox, SetActiveScript, SetLocations,
};
use mailmesh_actors::mailbox::{
    Append, Expunge, ExpungeMode, FetchBody, FlagAction, GetState, MessageView, StoreFlags, StoreOutcome,
};
use mailmesh_actors::node::LocalNode;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::{NodeId, Uid};
use serde_bytes::ByteBuf;

use self::links::LinkReport;
use self::protocol::{
    ErrorKind, FlagChange, ListenerStatus, MailboxRow, MessageRow, NodeStatus, OperatorError, PeerStatus,
    Reply, Request,
};
use crate::auth::Authenticator;
use crate::listener::ListenerStats;
use crate::lmtp::delivery::DeliveryCounters;

/// What an operator request acts on: the node's actors, and the transport's view of its links.
#[derive(Clone)]
pub struct NodeHandle {
    /// Shared with whoever reloads the peers; borrowed only between awaits, never across one.
    pub node: Rc<RefCell<LocalNode>>,
    pub links: Option<Rc<dyn LinkReport>>,
    pub front_ends: FrontEnds,
}

/// The client front ends' counts, for the status and the metrics.
#[derive(Clone, Default)]
pub struct FrontEnds {
    pub listeners: Vec<Arc<ListenerStats>>,
    pub deliveries: Arc<DeliveryCounters>,
    /// Failed logins are counted by the authenticator.
    pub auth: Option<Authenticator>,
}

impl NodeHandle {
    pub fn new(node: Rc<RefCell<LocalNode>>, links: Option<Rc<dyn LinkReport>>) -> Self {
        NodeHandle {
            node,
            links,
            front_ends: FrontEnds::default(),
        }
    }

    /// Carries out one request.
    pub async fn handle(&self, request: Request) -> Result<Reply, OperatorError> {
        let directory = self.node.borrow().directory.clone();
        match request {
            Request::Status => {
                let mut status = self.status().await?;
                let (store, me) = {
                    let node = self.node.borrow();
                    (node.store.clone(), node.node.clone())
                };
                status.moves = moves::moves_in_progress(&store, &me).map_err(MailError::from)?;
                Ok(Reply::Status(status))
            }
            Request::CreateMailbox { user, name } => {
                directory
                    .send(CreateMailbox {
                        user: user.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(MailError::from)??;
                let opened = self.open(&user, &name).await?;
                Ok(Reply::Mailbox(mailbox_row(&opened).await?))
            }
            Request::ListMailboxes { user } => {
                let infos: Vec<MailboxInfo> = directory
                    .send(ListMailboxes { user: user.clone() })
                    .await
                    .map_err(MailError::from)??;
                let mut rows = Vec::with_capacity(infos.len());
                for info in infos {
                    let opened = self.open(&user, &info.name).await?;
                    rows.push(mailbox_row(&opened).await?);
                }
                Ok(Reply::Mailboxes(rows))
            }
            Request::Append {
                user,
                mailbox,
                body,
                flags,
            } => {
                let opened = self.open(&user, &mailbox).await?;
                let outcome = opened
                    .addr
                    .send(Append {
                        body: body.into_vec(),
                        flags,
                        internaldate: None,
                    })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::Appended {
                    uid: outcome.uid.0,
                    uidvalidity: outcome.uidvalidity.0,
                })
            }
            Request::StoreFlags {
                user,
                mailbox,
                uid,
                change,
                flags,
            } => {
                let outcome = self
                    .store_flags(&user, &mailbox, UidSet::single(Uid(uid)), change, flags)
                    .await?;
                let view = outcome
                    .updated
                    .first()
                    .ok_or(MailError::NoSuchMessage(Uid(uid)))?;
                Ok(Reply::Flags(message_row(view)))
            }
            Request::StoreFlagsRange {
                user,
                mailbox,
                first_uid,
                last_uid,
                change,
                flags,
            } => {
                if first_uid == 0 || first_uid > last_uid {
                    return Err(OperatorError::new(
                        ErrorKind::Refused,
                        format!("uid range {first_uid}:{last_uid} is empty or starts at 0"),
                    ));
                }
                let uids = UidSet::range(Uid(first_uid), Uid(last_uid));
                let outcome = self.store_flags(&user, &mailbox, uids, change, flags).await?;
                Ok(Reply::Messages(outcome.updated.iter().map(message_row).collect()))
            }
            Request::FetchBody { user, mailbox, uid } => {
                let opened = self.open(&user, &mailbox).await?;
                let body = opened
                    .addr
                    .send(FetchBody { uid: Uid(uid) })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::Body(ByteBuf::from(body)))
            }
            Request::ListMessages { user, mailbox } => {
                let opened = self.open(&user, &mailbox).await?;
                let views = opened
                    .addr
                    .send(mailmesh_actors::mailbox::Fetch { uids: UidSet::all() })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::Messages(views.iter().map(message_row).collect()))
            }
            Request::ListMessageRange {
                user,
                mailbox,
                first_uid,
                last_uid,
            } => {
                if first_uid == 0 || first_uid > last_uid {
                    return Err(OperatorError::new(
                        ErrorKind::Refused,
                        format!("uid range {first_uid}:{last_uid} is empty or starts at 0"),
                    ));
                }
                let opened = self.open(&user, &mailbox).await?;
                let views = opened
                    .addr
                    .send(mailmesh_actors::mailbox::Fetch {
                        uids: UidSet::range(Uid(first_uid), Uid(last_uid)),
                    })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::Messages(views.iter().map(message_row).collect()))
            }
            Request::MoveMailbox {
                user,
                name,
                locations,
                primary,
            } => {
                let node_id = |n: &str| {
                    NodeId::new(n)
                        .map_err(|e| OperatorError::new(ErrorKind::Refused, format!("node name {n:?}: {e}")))
                };
                let locations = locations
                    .iter()
                    .map(|n| node_id(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let primary = primary.as_deref().map(node_id).transpose()?;
                directory
                    .send(SetLocations {
                        user: user.clone(),
                        name: name.clone(),
                        locations,
                        primary,
                    })
                    .await
                    .map_err(MailError::from)??;
                let opened = self.open(&user, &name).await?;
                Ok(Reply::Mailbox(mailbox_row(&opened).await?))
            }
            Request::Expunge { user, mailbox } => {
                let opened = self.open(&user, &mailbox).await?;
                let mut uids: Vec<u32> = opened
                    .addr
                    .send(Expunge {
                        mode: ExpungeMode::Deleted,
                    })
                    .await
                    .map_err(MailError::from)??
                    .into_iter()
                    .map(|uid| uid.0)
                    .collect();
                uids.sort_unstable();
                Ok(Reply::Expunged(uids))
            }
            Request::RenameMailbox { user, name, to } => {
                directory
                    .send(RenameMailbox {
                        user: user.clone(),
                        from: name,
                        to_user: None,
                        to: to.clone(),
                    })
                    .await
                    .map_err(MailError::from)??;
                let opened = self.open(&user, &to).await?;
                Ok(Reply::Mailbox(mailbox_row(&opened).await?))
            }
            Request::PutScript { user, name, content } => {
                // The same check ManageSieve's PUTSCRIPT makes: a script that would fail every
                // delivery is refused with the parser's line and reason.
                if let Err(e) = crate::sieve::compile(&content) {
                    return Err(OperatorError::new(
                        ErrorKind::Refused,
                        format!("sieve script {name:?} does not compile: {e}"),
                    ));
                }
                directory
                    .send(PutScript {
                        user: user.clone(),
                        name,
                        content: content.into_vec(),
                    })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::ScriptsChanged { user })
            }
            Request::ListScripts { user } => Ok(Reply::Scripts(
                directory
                    .send(ListScripts { user })
                    .await
                    .map_err(MailError::from)??,
            )),
            Request::SetActiveScript { user, name } => {
                directory
                    .send(SetActiveScript {
                        user: user.clone(),
                        name,
                    })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::ScriptsChanged { user })
            }
            Request::DeleteMailbox { user, name } => {
                directory
                    .send(DeleteMailbox {
                        user: user.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(MailError::from)??;
                Ok(Reply::Deleted { user, name })
            }
        }
    }

    /// One StoreFlags over `uids`: one commit, however many messages it changes.
    async fn store_flags(
        &self,
        user: &str,
        mailbox: &str,
        uids: UidSet,
        change: FlagChange,
        flags: Vec<String>,
    ) -> Result<StoreOutcome, OperatorError> {
        let opened = self.open(user, mailbox).await?;
        let action = match change {
            FlagChange::Add => FlagAction::Add,
            FlagChange::Remove => FlagAction::Remove,
            FlagChange::Replace => FlagAction::Replace,
        };
        Ok(opened
            .addr
            .send(StoreFlags {
                uids,
                action,
                flags,
                unchanged_since: None,
            })
            .await
            .map_err(MailError::from)??)
    }

    async fn open(&self, user: &str, name: &str) -> Result<OpenedMailbox, OperatorError> {
        let directory = self.node.borrow().directory.clone();
        Ok(directory
            .send(OpenMailbox {
                user: user.to_string(),
                name: name.to_string(),
            })
            .await
            .map_err(MailError::from)??)
    }

    /// The node's peers: the engine's side from each Channel, the link's side from the transport.
    pub(crate) async fn status(&self) -> Result<NodeStatus, OperatorError> {
        let (node, now_ms, channels, directory) = {
            let node = self.node.borrow();
            (
                node.node.to_string(),
                node.context.env.clock.unix_millis(),
                node.channels(),
                node.directory.clone(),
            )
        };
        let links = self.links.as_ref().map(|l| l.links()).unwrap_or_default();
        let mut peers: BTreeMap<NodeId, PeerStatus> = BTreeMap::new();
        for (peer, channel) in channels {
            let Ok(stats) = channel.send(GetChannelStats).await else {
                continue; // stopped by a reload meanwhile
            };
            peers.insert(
                peer.clone(),
                PeerStatus {
                    name: peer.to_string(),
                    replicating: stats.link_up,
                    log_depth: stats.pending as u64,
                    syncing: stats.running as u64,
                    lag_ms: stats.oldest_pending_ms.map(|t| (now_ms - t).max(0)),
                    synced: stats.synced,
                    item_failures: stats.item_failures,
                    link_failures: stats.link_failures,
                    full_syncs: stats.full_syncs,
                    quarantined: stats.quarantined,
                    last_error: stats.last_error,
                    ..PeerStatus::default()
                },
            );
        }
        for (peer, link) in links {
            let row = peers.entry(peer.clone()).or_insert_with(|| PeerStatus {
                name: peer.to_string(),
                ..PeerStatus::default()
            });
            row.address = link.address;
            row.connected = Some(link.connected);
            row.since_ms = link.since_ms;
            row.bytes_sent = Some(link.bytes_sent);
            row.bytes_received = Some(link.bytes_received);
            row.requests = Some(link.requests);
            row.request_failures = Some(link.request_failures);
            // A connection failure says more than the engine's "link failed" that follows it.
            if link.last_error.is_some() && !link.connected {
                row.last_error = link.last_error;
            }
        }
        let active_mailboxes = directory
            .send(GetDirectoryStats)
            .await
            .map(|s| s.active as u64)
            .map_err(MailError::from)?;
        Ok(NodeStatus {
            node,
            now_ms,
            clustered: self.links.is_some(),
            peers: peers.into_values().collect(),
            moves: Vec::new(),
            active_mailboxes,
            listeners: self
                .front_ends
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    protocol: l.protocol.to_string(),
                    address: l.address.clone(),
                    open: l.open(),
                    accepted: l.accepted(),
                    refused: l.refused(),
                })
                .collect(),
        })
    }
}

async fn mailbox_row(opened: &OpenedMailbox) -> Result<MailboxRow, OperatorError> {
    let state = opened.addr.send(GetState).await.map_err(MailError::from)??;
    let info = &opened.info;
    Ok(MailboxRow {
        user: info.user.clone(),
        name: info.name.clone(),
        id: info.id.to_string(),
        uidvalidity: info.uidvalidity.0,
        messages: state.exists,
        uidnext: state.uidnext.0,
        locations: info.locations.iter().map(|n| n.to_string()).collect(),
        primary: info.primary.as_ref().map(|n| n.to_string()),
    })
}

fn message_row(view: &MessageView) -> MessageRow {
    MessageRow {
        uid: view.uid.0,
        flags: view.flags.iter().map(|f| f.to_string()).collect(),
        size: view.size,
        internaldate: view.internaldate,
        guid: view.guid.to_string(),
    }
}

impl From<MailError> for OperatorError {
    fn from(e: MailError) -> Self {
        let kind = match e {
            MailError::Store(_) => ErrorKind::Failed,
            _ => ErrorKind::Refused,
        };
        OperatorError::new(kind, e.to_string())
    }
}
