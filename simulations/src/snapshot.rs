//! What a client could see on one node, read through the node's actors (plus, for diagnosing a
//! failing seed, replication caches and sync logs read straight from the store).

use std::collections::BTreeMap;

use actix::Addr;
use mailmesh_actors::directory::{GetScript, ListMailboxes, ListScripts, ListSubscriptions, OpenMailboxById};
use mailmesh_actors::mailbox::{
    ChangedSince, Fetch, GetAnnotations, GetPruned, GetState, Mailbox, MailboxState, MessageView,
    StoredRecord,
};
use mailmesh_actors::node::LocalNode;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::{MailboxId, ModSeq, NodeId, UidValidity};
use mailmesh_protocol::records::PrunedSet;

use crate::cluster::SimCluster;
use crate::network::short_id;
use crate::trace::Trace;
use crate::workload::USERS;

/// One mailbox as one node shows it.
#[derive(Clone, Debug)]
pub struct MailboxSnapshot {
    pub user: String,
    pub name: String,
    pub uidvalidity: UidValidity,
    pub visible: Vec<MessageView>,
    /// Every record the node holds, expunged and hidden ones included.
    pub records: Vec<StoredRecord>,
    /// Expunged messages compacted away (no longer held as records), read after `records` so a
    /// record compacted in between is in one or the other.
    pub pruned: PrunedSet,
    pub annotations: Vec<(String, Vec<u8>)>,
    pub state: MailboxState,
    /// Whether the node is among the mailbox's locations (as it sees them): a node that is not
    /// holds nothing of it once its copy is released, and is not judged on its messages.
    pub held: bool,
}

/// What a client could see on one node.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    pub mailboxes: BTreeMap<MailboxId, MailboxSnapshot>,
    pub subscriptions: BTreeMap<String, Vec<String>>,
    /// Per user: (script, active, content).
    pub scripts: BTreeMap<String, Vec<(String, bool, Vec<u8>)>>,
}

pub async fn open_by_id(local: &LocalNode, id: MailboxId) -> Result<Addr<Mailbox>, Option<MailError>> {
    match local.directory.send(OpenMailboxById { id }).await {
        Ok(Ok(o)) => Ok(o.addr),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// Reads what a client could see on `local`; `full` adds subscriptions and sieve scripts.
/// Mailboxes deleted while they are being read are left out.
pub async fn snapshot(local: &LocalNode, full: bool) -> NodeSnapshot {
    let mut snap = NodeSnapshot::default();
    for user in USERS {
        let Ok(Ok(list)) = local.directory.send(ListMailboxes { user: user.into() }).await else {
            continue;
        };
        for info in list {
            let held = info.holders.is_empty() || info.holders.contains(&local.node);
            let Ok(mb) = open_by_id(local, info.id).await else {
                continue;
            };
            let (Ok(Ok(state)), Ok(Ok(visible)), Ok(Ok(records)), Ok(Ok(pruned)), Ok(Ok(annotations))) = (
                mb.send(GetState).await,
                mb.send(Fetch { uids: UidSet::all() }).await,
                mb.send(ChangedSince {
                    since: ModSeq::ZERO,
                    limit: usize::MAX,
                })
                .await,
                mb.send(GetPruned).await,
                mb.send(GetAnnotations).await,
            ) else {
                continue;
            };
            snap.mailboxes.insert(
                info.id,
                MailboxSnapshot {
                    user: info.user,
                    name: info.name,
                    uidvalidity: info.uidvalidity,
                    visible,
                    records,
                    pruned,
                    annotations,
                    state,
                    held,
                },
            );
        }
        if !full {
            continue;
        }
        if let Ok(Ok(subs)) = local
            .directory
            .send(ListSubscriptions { user: user.into() })
            .await
        {
            if !subs.is_empty() {
                snap.subscriptions.insert(user.to_string(), subs);
            }
        }
        if let Ok(Ok(scripts)) = local.directory.send(ListScripts { user: user.into() }).await {
            let mut with_content = Vec::new();
            for (name, active) in scripts {
                let content = match local
                    .directory
                    .send(GetScript {
                        user: user.into(),
                        name: name.clone(),
                    })
                    .await
                {
                    Ok(Ok(c)) => c,
                    _ => Vec::new(),
                };
                with_content.push((name, active, content));
            }
            if !with_content.is_empty() {
                snap.scripts.insert(user.to_string(), with_content);
            }
        }
    }
    snap
}

/// Adds every node's mailboxes and message records (hidden and expunged ones too) to the
/// trace, for diagnosing a failing seed.
pub fn dump_snapshots(snaps: &BTreeMap<NodeId, NodeSnapshot>, trace: &Trace) {
    for (node, snap) in snaps {
        for (id, mb) in &snap.mailboxes {
            trace.log(format!(
                "dump {node} {} {}/{}: uidnext {} highestmodseq {} annotations {:?} compacted {:?}",
                short_id(id.0),
                mb.user,
                mb.name,
                mb.state.uidnext,
                mb.state.highestmodseq,
                mb.annotations,
                mb.pruned
            ));
            for s in &mb.records {
                let r = &s.record;
                let flags: Vec<&str> = r.set_flags().map(|f| f.as_str()).collect();
                let expunged = r.expunged.as_ref().map(|v| v.to_string());
                trace.log(format!(
                    "dump {node} {} {} uid {} ({}) flags {flags:?} hidden {} expunged {expunged:?} origin {} arrived on {:?} modseq {}",
                    short_id(id.0),
                    r.append_id,
                    r.uid.value,
                    r.uid.version,
                    s.hidden,
                    s.origin,
                    s.arrived_on,
                    s.modseq
                ));
            }
        }
    }
}

/// Adds each node's replication caches and pending sync log rows to the trace (read straight
/// from the stores: engine internals, for diagnosing a failing seed).
pub fn dump_sync_state(cluster: &SimCluster, trace: &Trace) {
    use mailmesh_actors::mailbox_sync::ReplicationCache;
    use mailmesh_actors::store::{decode, Table};
    use mailmesh_actors::sync_log::SyncItem;
    for (node, local) in cluster.nodes() {
        let mut lines = Vec::new();
        let _ = local.store.scan_prefix(Table::ReplCache, &[], None, |k, v| {
            let (id, peer) = k.split_at(16.min(k.len()));
            let id = MailboxId::from_bytes(id.try_into().unwrap_or_default());
            let cache: Result<ReplicationCache, _> = decode(v, "replication cache");
            lines.push(format!(
                "dump {node} cache {} for {}: {cache:?}",
                short_id(id.0),
                String::from_utf8_lossy(peer)
            ));
            Ok(true)
        });
        let _ = local.store.scan_prefix(Table::SyncLog, &[], None, |k, v| {
            let zero = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let item = SyncItem::decode(&k[(zero + 1).min(k.len())..]);
            lines.push(format!(
                "dump {node} sync log row for {}: {item:?} generation {v:?}",
                String::from_utf8_lossy(&k[..zero])
            ));
            Ok(true)
        });
        for line in lines {
            trace.log(line);
        }
    }
}
