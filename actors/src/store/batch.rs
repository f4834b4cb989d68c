//! A batch: the writes of one logical change (one append, one flag store, one rename), applied
//! atomically by the commit group together with other batches.

use std::sync::Arc;

use mailmesh_protocol::ids::Guid;
use serde::Serialize;

use super::{encode, RawTable};

/// The tables a batch may write. Bodies are written only through [`Batch::add_body`] and
/// [`Batch::release_body`], which keep reference counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Mailboxes,
    Names,
    MailboxState,
    Messages,
    Uids,
    Modseqs,
    Annotations,
    Subscriptions,
    Sieve,
    Purges,
    SyncLog,
    ReplCache,
    UserEntries,
    Peers,
    Pruned,
    Settles,
    Moves,
    SyncWhole,
    ShownBefore,
}

impl Table {
    /// Every table, each at its discriminant: a group record (`journal.rs`) names a table by
    /// its index here, so new tables go at the end.
    pub const ALL: [Table; 19] = [
        Table::Mailboxes,
        Table::Names,
        Table::MailboxState,
        Table::Messages,
        Table::Uids,
        Table::Modseqs,
        Table::Annotations,
        Table::Subscriptions,
        Table::Sieve,
        Table::Purges,
        Table::SyncLog,
        Table::ReplCache,
        Table::UserEntries,
        Table::Peers,
        Table::Pruned,
        Table::Settles,
        Table::Moves,
        Table::SyncWhole,
        Table::ShownBefore,
    ];

    pub(crate) fn definition(self) -> RawTable {
        match self {
            Table::Mailboxes => super::MAILBOXES,
            Table::Names => super::NAMES,
            Table::MailboxState => super::MAILBOX_STATE,
            Table::Messages => super::MESSAGES,
            Table::Uids => super::UIDS,
            Table::Modseqs => super::MODSEQS,
            Table::Annotations => super::ANNOTATIONS,
            Table::Subscriptions => super::SUBSCRIPTIONS,
            Table::Sieve => super::SIEVE,
            Table::Purges => super::PURGES,
            Table::SyncLog => super::SYNC_LOG,
            Table::ReplCache => super::REPL_CACHE,
            Table::UserEntries => super::USER_ENTRIES,
            Table::Peers => super::PEERS,
            Table::Pruned => super::PRUNED,
            Table::Settles => super::SETTLES,
            Table::Moves => super::MOVES,
            Table::SyncWhole => super::SYNC_WHOLE,
            Table::ShownBefore => super::SHOWN_BEFORE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Mailboxes => "mailboxes",
            Table::Names => "names",
            Table::MailboxState => "mailbox state",
            Table::Messages => "messages",
            Table::Uids => "uid index",
            Table::Modseqs => "modseq index",
            Table::Annotations => "annotations",
            Table::Subscriptions => "subscriptions",
            Table::Sieve => "sieve scripts",
            Table::Purges => "purges",
            Table::SyncLog => "sync log",
            Table::ReplCache => "replication cache",
            Table::UserEntries => "user entries",
            Table::Peers => "peers",
            Table::Pruned => "pruned",
            Table::Settles => "settles",
            Table::Moves => "moves",
            Table::SyncWhole => "sync whole",
            Table::ShownBefore => "shown before",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
    /// Deletes the row only if it still holds this value (a sync log row not re-dirtied since).
    DeleteIfEquals(Table, Vec<u8>, Vec<u8>),
    /// One more reference to a body. With bytes, the body is stored if this node lacks it;
    /// without, the node must already have it (a copy), or the batch fails.
    AddBody(Guid, Option<Arc<Vec<u8>>>),
    /// One reference fewer; at zero the body is dead and compaction reclaims its bytes.
    ReleaseBody(Guid),
    /// One more reference to a body a peer put in the shared spool (`u64` is its length).
    AddSpooledBody(Guid, u64),
}

#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn put<T: Serialize + 'static>(&mut self, table: Table, key: Vec<u8>, value: &T) {
        self.ops.push(Op::Put(table, key, encode(value)));
    }

    pub fn put_raw(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(table, key, value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete(table, key));
    }

    pub fn delete_if_equals(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::DeleteIfEquals(table, key, value));
    }

    pub fn add_body(&mut self, guid: Guid, bytes: Option<Arc<Vec<u8>>>) {
        self.ops.push(Op::AddBody(guid, bytes));
    }

    pub fn add_spooled_body(&mut self, guid: Guid, len: u64) {
        self.ops.push(Op::AddSpooledBody(guid, len));
    }

    pub fn release_body(&mut self, guid: Guid) {
        self.ops.push(Op::ReleaseBody(guid));
    }

    /// Appends another batch's writes after this one's.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
}
