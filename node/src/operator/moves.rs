//! Mailbox moves under way, for `mailmesh status`: read from the store, nothing kept in memory.
//!
//! A mailbox placed on some nodes (non-empty locations) is moving while a node still lets its
//! copy go (`MailboxEntry::leaving`: this node or another, as the entry here says), or while this
//! node still has changes of it to send to a holder: a location, a relay between them, or a node
//! letting its copy go (the effective holders, from the link graph as this node knows it). The
//! node cannot tell a move's first sync from ordinary replication of a placed mailbox, so both
//! show.

use std::collections::{BTreeMap, BTreeSet};

use mailmesh_actors::directory_sync::LINKS_KEY;
use mailmesh_actors::store::{decode, Store, Table};
use mailmesh_actors::sync_log::{SyncItem, Tagged};
use mailmesh_actors::StoreError;
use mailmesh_protocol::ids::{MailboxId, NodeId};
use mailmesh_protocol::records::{LinkGraph, MailboxEntry};

use super::protocol::MoveStatus;

/// The moves this node takes part in, by user and name.
pub fn moves_in_progress(store: &Store, me: &NodeId) -> Result<Vec<MoveStatus>, StoreError> {
    // Which peers each mailbox still has log rows for: row keys are `peer \0 item`.
    let mut pending: BTreeMap<MailboxId, BTreeSet<String>> = BTreeMap::new();
    store.scan_prefix(Table::SyncLog, &[], None, |key, _| {
        if let Some(split) = key.iter().position(|&b| b == 0) {
            if let Some(SyncItem::Mailbox(id)) = SyncItem::decode(&key[split + 1..]) {
                let peer = String::from_utf8_lossy(&key[..split]).into_owned();
                pending.entry(id).or_default().insert(peer);
            }
        }
        Ok(true)
    })?;
    let links: LinkGraph = store
        .get::<Tagged<LinkGraph>>(Table::Peers, LINKS_KEY)?
        .map(|t| t.item)
        .unwrap_or_default();
    let mut moves = Vec::new();
    store.scan_prefix(Table::Mailboxes, &[], None, |_, value| {
        let entry: Tagged<MailboxEntry> = decode(value, "mailbox entry")?;
        let entry = entry.item;
        if entry.is_deleted() || entry.locations.value.is_empty() {
            return Ok(true);
        }
        let holders: Vec<String> = links.holders_of(&entry).iter().map(|n| n.to_string()).collect();
        let letting_go: Vec<String> = entry.leaving_nodes().map(|n| n.to_string()).collect();
        let leaving = entry.is_leaving(me);
        let sending_to: Vec<String> = pending
            .get(&entry.id)
            .map(|peers| peers.iter().filter(|p| holders.contains(p)).cloned().collect())
            .unwrap_or_default();
        if leaving || !letting_go.is_empty() || !sending_to.is_empty() {
            moves.push(MoveStatus {
                user: entry.path.value.user.clone(),
                name: entry.path.value.name.clone(),
                locations: entry.locations.value.iter().map(|n| n.to_string()).collect(),
                primary: entry.primary.value.as_ref().map(|n| n.to_string()),
                sending_to,
                leaving,
                holders,
                letting_go,
            });
        }
        Ok(true)
    })?;
    moves.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use mailmesh_actors::memory_network::MemoryNetwork;
    use mailmesh_actors::node::{LocalNode, NodeOptions, PeerOptions};

    use super::*;
    use crate::operator::protocol::{NodeStatus, Reply, Request};
    use crate::operator::NodeHandle;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    async fn status(handle: &NodeHandle) -> NodeStatus {
        match handle.handle(Request::Status).await.unwrap() {
            Reply::Status(status) => status,
            other => panic!("{other:?}"),
        }
    }

    /// Polls `done` until it holds, for at most 30 s of real time.
    async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done().await {
            assert!(Instant::now() < deadline, "{what} did not happen in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A mailbox moved off node a while its link to b is down shows as leaving a and being sent
    /// to b; once the link is back and b has it, the move is no longer listed.
    #[test]
    fn a_move_shows_until_the_new_location_has_the_mailbox() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        actix::System::new().block_on(async {
            let net = MemoryNetwork::new();
            let start = |me: &str, peer: &str, dir: &std::path::Path| {
                let mut options = NodeOptions::new(n(me), dir);
                options.peers = vec![PeerOptions::new(n(peer))];
                let node =
                    LocalNode::start_replicating(options, crate::run::node_env().unwrap(), Some(net.transport(&n(me))))
                        .unwrap();
                net.attach(n(me), node.inbound.clone());
                NodeHandle::new(Rc::new(RefCell::new(node)), None)
            };
            let a = start("a", "b", dirs[0].path());
            let b = start("b", "a", dirs[1].path());
            let create = Request::CreateMailbox {
                user: "alice".into(),
                name: "INBOX".into(),
            };
            a.handle(create).await.unwrap();
            let list = Request::ListMailboxes { user: "alice".into() };
            wait_until("b has the mailbox", || async {
                matches!(b.handle(list.clone()).await, Ok(Reply::Mailboxes(rows)) if rows.len() == 1)
            })
            .await;
            assert_eq!(status(&a).await.moves, Vec::new(), "an unplaced mailbox is not moving");

            net.set_link(&n("a"), &n("b"), false);
            // A message b lacks: without it an empty mailbox b already has would leave nothing
            // to send, and a would let its copy go (the move done) before status is asked.
            let append = Request::Append {
                user: "alice".into(),
                mailbox: "INBOX".into(),
                body: serde_bytes::ByteBuf::from(b"Subject: moving\r\n\r\nhi".to_vec()),
                flags: Vec::new(),
            };
            a.handle(append).await.unwrap();
            let moved = Request::MoveMailbox {
                user: "alice".into(),
                name: "INBOX".into(),
                locations: vec!["b".into()],
                primary: Some("b".into()),
            };
            a.handle(moved).await.unwrap();
            let moves = status(&a).await.moves;
            assert_eq!(moves.len(), 1, "{moves:?}");
            assert!(moves[0].leaving, "{moves:?}");
            assert_eq!(moves[0].sending_to, vec!["b".to_string()]);
            assert_eq!(moves[0].primary.as_deref(), Some("b"));

            net.set_link(&n("a"), &n("b"), true);
            wait_until("a's move is done", || async { status(&a).await.moves.is_empty() }).await;
            // The new placement travels with the user's mailbox list, its own log item.
            wait_until("b knows it holds the mailbox alone", || async {
                matches!(b.handle(list.clone()).await, Ok(Reply::Mailboxes(rows)) if rows[0].locations == ["b"])
            })
            .await;
            // b lists the move until it hears that a let its copy go (a's entry, sent after).
            wait_until("b has nothing left to send and knows a let go", || async {
                status(&b).await.moves.is_empty()
            })
            .await;
        });
    }
}
