//! What every actor of a node shares: the store, the commit group, the counters, the sync log, the
//! injected clock and entropy, and the limits.

use std::sync::Arc;

use actix::Addr;
use mailmesh_protocol::ids::NodeId;

use crate::commit_group::{commit, CommitGroup};
use crate::counters::NodeCounters;
use crate::env::Env;
use crate::error::StoreError;
use crate::inflight::Inflight;
use crate::mailbox::Limits;
use crate::store::{Batch, Store};
use crate::sync_log::{Logged, SyncLog};

/// Deliberate faults a test or the simulator switches on to prove its checks catch them (like
/// FoundationDB's BUGGIFY). All off in a real node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The primary never promotes conflicting uids.
    pub no_uid_promotion: bool,
    /// New records arriving from peers are acknowledged but not stored (a lossy merge).
    pub drop_incoming_records: bool,
    /// No echo suppression: a change merged from a peer is logged for every peer, the one it
    /// came from and its origin included.
    pub no_echo_suppression: bool,
    /// Echo suppression skips the peer a change came from but not the change's origin.
    pub origin_not_skipped: bool,
    /// A merge keeps this node's version of a flag whose value the incoming record shares, so
    /// replicas show the same flags under different versions (a hidden divergence).
    pub stale_flag_versions: bool,
    /// STORE answers as if it wrote the flags but stores the record unchanged (a lost write).
    pub lost_flag_writes: bool,
    /// COPY and MOVE never answer (and do nothing): a client operation that hangs.
    pub transfer_never_answers: bool,
    /// APPEND now and then gives a new message the uid of the previous one.
    pub reuse_uids: bool,
    /// A mailbox opening or reloading its counters takes UIDNEXT and HIGHESTMODSEQ from its
    /// records only, forgetting what was handed out before (they go down after a restart).
    pub counters_from_records: bool,
    /// A live copy arriving from a peer replaces an expunged record (expunge not sticky).
    pub expunge_not_sticky: bool,
    /// A store starting empty (new or wiped) mints identities from zero instead of above the
    /// wall-clock floor: a wiped node reuses AppendIds and Versions it minted before.
    pub identities_from_zero: bool,
    /// A record this node hid (a uid conflict) stays hidden after its conflict is settled: the
    /// replicas agree on every record but not on what they show.
    pub hidden_stays_hidden: bool,
    /// Every change request a Channel sends goes over the link twice: no echo, no loss, only
    /// more crossings than the forwarding rule allows.
    pub changes_pushed_twice: bool,
    /// The primary settling a uid conflict leaves the lowest AppendId at the contested uid and
    /// promotes only the others: every replica agrees, but a uid clients saw as two different
    /// messages still shows one of them.
    pub promotion_keeps_one: bool,
    /// A live mailbox entry arriving from a peer replaces this node's DELETED tombstone of it:
    /// a deleted mailbox comes back.
    pub mailbox_tombstone_not_sticky: bool,
    /// A write that changes a record's flags but not its uid or visibility leaves its uid index
    /// row as it was (as before the row held flags): FETCH FLAGS and SEARCH read stale flags.
    pub stale_uid_rows: bool,
}

#[derive(Clone)]
pub struct NodeContext {
    pub node: NodeId,
    pub store: Arc<Store>,
    pub commit: Addr<CommitGroup>,
    pub counters: NodeCounters,
    pub env: Env,
    pub limits: Limits,
    pub sync_log: SyncLog,
    pub faults: Faults,
}

/// The writes of one operation: a batch, and the sync log rows it holds, announced to the
/// Channels once the batch is durable.
#[derive(Default, Debug)]
pub struct Writes {
    pub batch: Batch,
    pub logged: Logged,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl NodeContext {
    /// Commits `writes`; once durable, wakes the Channels that have new log rows.
    pub fn commit(
        &self,
        writes: Writes,
        inflight: Option<&Inflight>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let done = commit(&self.commit, writes.batch, inflight);
        let sync_log = self.sync_log.clone();
        let logged = writes.logged;
        async move {
            done.await?;
            sync_log.notify(logged);
            Ok(())
        }
    }
}
