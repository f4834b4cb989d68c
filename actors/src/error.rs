//! Typed errors of the actors and the store. Each message names the thing that is wrong, so an
//! operator reading a log line or a client reading a response knows what to fix.

use mailmesh_protocol::ids::{Guid, MailboxId, Uid};
use mailmesh_protocol::names::NameError;

/// Errors of the durable store: the redb file and the body segments.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is in use by another mailmesh process")]
    InUse { path: String },
    #[error("store file {path} is corrupt or truncated: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("store file {path} belongs to node {found:?}, but this node is configured as {configured:?}")]
    WrongNode {
        path: String,
        found: String,
        configured: String,
    },
    #[error(
        "store file {path} is of format {found}, newer than this build of mailmesh reads (up to \
         {known}); run the newer mailmesh that wrote it"
    )]
    NewerFormat { path: String, found: u32, known: u32 },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("storage error: {0}")]
    Db(String),
    #[error("body {guid} is missing from the body store")]
    BodyMissing { guid: Guid },
    #[error("body {guid} is corrupt in segment {segment} at offset {offset}: {reason}")]
    BodyCorrupt {
        guid: Guid,
        segment: u32,
        offset: u64,
        reason: String,
    },
    #[error("record {what} could not be decoded: {reason}")]
    Decode { what: String, reason: String },
    #[error("commit failed: {0}")]
    Commit(String),
}

impl StoreError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_string(),
            source,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

/// Errors a client operation can get back from the Directory or a Mailbox actor.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("user {user:?} has no mailbox named {name:?}")]
    UnknownMailbox { user: String, name: String },
    #[error("no mailbox with id {0}")]
    UnknownMailboxId(MailboxId),
    #[error("user {user:?} already has a mailbox named {name:?}")]
    MailboxExists { user: String, name: String },
    #[error("mailbox {0} was deleted")]
    MailboxDeleted(MailboxId),
    #[error("message of {size} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge { size: u64, max: u64 },
    #[error("the message is empty")]
    EmptyMessage,
    #[error("no message with uid {0}")]
    NoSuchMessage(Uid),
    #[error("sieve script {name:?} of user {user:?} does not exist")]
    UnknownScript { user: String, name: String },
    #[error("user {user:?} already has a sieve script named {name:?}")]
    ScriptExists { user: String, name: String },
    #[error("sieve script of {size} bytes exceeds the maximum of {max} bytes")]
    ScriptTooLarge { size: usize, max: usize },
    #[error("annotation value of {size} bytes exceeds the maximum of {max} bytes")]
    AnnotationTooLarge { size: usize, max: usize },
    #[error("the mailbox may hold at most {max} annotations")]
    TooManyAnnotations { max: usize },
    #[error("cannot {0}")]
    NotAllowed(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an update names message {0}, which this node does not have")]
    UnknownRecord(mailmesh_protocol::ids::AppendId),
    #[error("body {0} of a replicated message was not received")]
    BodyNotReceived(Guid),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("mailbox {id} lives on {locations}, not on this node ({node}); write to one of those")]
    NotHeldHere {
        id: MailboxId,
        node: String,
        locations: String,
    },
}

impl From<actix::MailboxError> for MailError {
    fn from(_: actix::MailboxError) -> Self {
        MailError::ShuttingDown
    }
}
