//! The operator protocol: what `mailmesh` one-shot commands ask a running node over its Unix
//! socket, and what it answers.
//!
//! Framing: each message is a 4-byte big-endian length and that many bytes of MessagePack
//! (rmp-serde, fields by name, so a field added later is ignored by an older reader). A client
//! sends one [`RequestEnvelope`] and reads one [`ResponseEnvelope`], any number of times on one
//! connection. A frame that cannot be decoded, is too large, or carries another protocol version
//! gets an error answer and the connection is closed; the node and its other connections go on.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Version of this protocol. A node answers a request of another version with
/// [`ErrorKind::UnsupportedVersion`] and closes the connection.
pub const VERSION: u32 = 1;

/// Name of the socket file in the node's data directory.
pub const SOCKET_NAME: &str = "mailmesh.sock";

/// Room a frame may take beyond the message it carries (names, flags, field names).
pub const FRAME_OVERHEAD: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    pub request: Request,
}

/// Only the version of a request: read first, so a request of another version is refused by
/// name instead of failing to decode.
#[derive(Debug, Deserialize)]
pub struct VersionProbe {
    pub version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    pub result: Result<Reply, OperatorError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The node and its peers (`mailmesh status`).
    Status,
    CreateMailbox {
        user: String,
        name: String,
    },
    ListMailboxes {
        user: String,
    },
    Append {
        user: String,
        mailbox: String,
        body: ByteBuf,
        flags: Vec<String>,
    },
    /// Adds, removes or replaces flags of one message.
    StoreFlags {
        user: String,
        mailbox: String,
        uid: u32,
        change: FlagChange,
        flags: Vec<String>,
    },
    /// Adds, removes or replaces flags of every message with a uid in `first_uid..=last_uid`, in
    /// one commit (as one IMAP STORE over a range). Answers with the messages changed.
    StoreFlagsRange {
        user: String,
        mailbox: String,
        first_uid: u32,
        last_uid: u32,
        change: FlagChange,
        flags: Vec<String>,
    },
    /// The raw message.
    FetchBody {
        user: String,
        mailbox: String,
        uid: u32,
    },
    /// Every visible message: uid, flags, size.
    ListMessages {
        user: String,
        mailbox: String,
    },
    /// The visible messages with a uid in `first_uid..=last_uid` (a few rows of a large
    /// mailbox without listing all of it).
    ListMessageRange {
        user: String,
        mailbox: String,
        first_uid: u32,
        last_uid: u32,
    },
    /// Sets where a mailbox is replicated (empty: every node) and its primary.
    MoveMailbox {
        user: String,
        name: String,
        locations: Vec<String>,
        primary: Option<String>,
    },
    /// Removes every message flagged \Deleted (IMAP EXPUNGE).
    Expunge {
        user: String,
        mailbox: String,
    },
    /// Renames a mailbox and its inferiors; its id (and so its messages) stays.
    RenameMailbox {
        user: String,
        name: String,
        to: String,
    },
    /// Deletes a mailbox: its messages are purged, a tombstone stays.
    DeleteMailbox {
        user: String,
        name: String,
    },
    /// Stores a user's sieve script (refused, nothing stored, if it does not compile).
    PutScript {
        user: String,
        name: String,
        content: ByteBuf,
    },
    /// Makes a script the user's active one (`None`: none active).
    SetActiveScript {
        user: String,
        name: Option<String>,
    },
    /// A user's scripts, and which is active.
    ListScripts {
        user: String,
    },
}

impl Request {
    /// What the request is, for log lines (never its content).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::CreateMailbox { .. } => "create-mailbox",
            Request::ListMailboxes { .. } => "list-mailboxes",
            Request::Append { .. } => "append",
            Request::StoreFlags { .. } => "store-flags",
            Request::StoreFlagsRange { .. } => "store-flags-range",
            Request::FetchBody { .. } => "fetch-body",
            Request::ListMessages { .. } => "list-messages",
            Request::ListMessageRange { .. } => "list-message-range",
            Request::MoveMailbox { .. } => "move-mailbox",
            Request::Expunge { .. } => "expunge",
            Request::RenameMailbox { .. } => "rename-mailbox",
            Request::DeleteMailbox { .. } => "delete-mailbox",
            Request::PutScript { .. } => "put-script",
            Request::SetActiveScript { .. } => "set-active-script",
            Request::ListScripts { .. } => "list-scripts",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlagChange {
    Add,
    Remove,
    Replace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Status(NodeStatus),
    Mailbox(MailboxRow),
    Mailboxes(Vec<MailboxRow>),
    Appended {
        uid: u32,
        uidvalidity: u32,
    },
    Flags(MessageRow),
    Body(ByteBuf),
    Messages(Vec<MessageRow>),
    /// The uids an expunge removed, ascending.
    Expunged(Vec<u32>),
    /// The mailbox was deleted.
    Deleted {
        user: String,
        name: String,
    },
    /// A sieve write was stored (PutScript, SetActiveScript).
    ScriptsChanged {
        user: String,
    },
    /// A user's scripts by name, with whether each is the active one.
    Scripts(Vec<(String, bool)>),
}

/// A mailbox as the operator commands show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRow {
    pub user: String,
    pub name: String,
    pub id: String,
    pub uidvalidity: u32,
    pub messages: u64,
    pub uidnext: u32,
    /// Nodes holding a replica; empty means every node.
    pub locations: Vec<String>,
    pub primary: Option<String>,
}

/// A message as the operator commands show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRow {
    pub uid: u32,
    pub flags: Vec<String>,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub internaldate: i64,
    /// The body's content hash (hex).
    pub guid: String,
}

/// A running node and its links, for `mailmesh status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// The node's clock (Unix milliseconds) when the status was taken: ages are relative to it.
    pub now_ms: i64,
    /// Whether the node has a cluster transport at all (false: it runs alone).
    pub clustered: bool,
    pub peers: Vec<PeerStatus>,
    /// Mailboxes this node holds whose move between nodes is not finished.
    pub moves: Vec<MoveStatus>,
    /// Mailbox actors active now.
    pub active_mailboxes: u64,
    /// Client listeners (LMTP, ...) and their connections. Absent from an older node's answer.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// One client listener as `mailmesh status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub protocol: String,
    pub address: String,
    /// Connections open now.
    pub open: u64,
    /// Connections accepted since the node started.
    pub accepted: u64,
    /// Connections refused over the per-address or total limit.
    pub refused: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// The configured address, if the transport knows one.
    pub address: Option<String>,
    /// Whether a connection is up. `None` when no transport reports on links.
    pub connected: Option<bool>,
    /// Since when (Unix ms) the link has been in its current state, if known.
    pub since_ms: Option<i64>,
    /// Whether the replication engine reached the peer (its Hello was answered).
    pub replicating: bool,
    /// Items (mailboxes, mailbox lists, subscriptions, scripts) in the sync log for this peer.
    pub log_depth: u64,
    /// Items being synced now.
    pub syncing: u64,
    /// Age in milliseconds of the oldest change not yet sent; `None` when nothing is pending.
    pub lag_ms: Option<i64>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// Requests sent to the peer and how many failed, as the transport counts them.
    pub requests: Option<u64>,
    pub request_failures: Option<u64>,
    pub synced: u64,
    pub item_failures: u64,
    pub link_failures: u64,
    pub full_syncs: u64,
    pub quarantined: u64,
    pub last_error: Option<String>,
}

/// A mailbox moving between nodes, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStatus {
    pub user: String,
    pub name: String,
    pub locations: Vec<String>,
    pub primary: Option<String>,
    /// Peers among the holders (locations, relays, nodes letting a copy go) still to be sent
    /// (part of) the mailbox.
    pub sending_to: Vec<String>,
    /// This node is no longer needed (not a location, not a relay) and keeps its copy until
    /// its changes are handed on.
    pub leaving: bool,
    /// The nodes that hold a copy as this node knows them: the locations, relays between them,
    /// and nodes still letting a copy go.
    #[serde(default)]
    pub holders: Vec<String>,
    /// The nodes still letting their copy go, as this node last heard (this one included).
    #[serde(default)]
    pub letting_go: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OperatorError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request could not be decoded or is too large; the connection is closed.
    BadRequest,
    /// The request is of another protocol version; the connection is closed.
    UnsupportedVersion,
    /// The node refused the operation (no such mailbox, bad flag, message too large, ...).
    Refused,
    /// The node failed (a store error); nothing was changed unless the message says so.
    Failed,
}

impl OperatorError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        OperatorError {
            kind,
            message: message.into(),
        }
    }
}

/// Encodes `value` as one frame: length, then MessagePack.
pub fn encode_frame<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data of strings, integers and bytes always encodes; a failure would be a bug here.
    let body = rmp_serde::to_vec_named(value).expect("operator messages encode");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_a_newer_field_is_ignored() {
        let request = RequestEnvelope {
            version: VERSION,
            request: Request::Append {
                user: "alice".into(),
                mailbox: "INBOX".into(),
                body: ByteBuf::from(b"Subject: x\r\n\r\nhi".to_vec()),
                flags: vec!["\\Seen".into()],
            },
        };
        let frame = encode_frame(&request);
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let back: RequestEnvelope = rmp_serde::from_slice(&frame[4..]).unwrap();
        assert_eq!(back, request);

        #[derive(Serialize)]
        struct Newer {
            version: u32,
            request: Request,
            deadline_ms: u64,
        }
        let newer = encode_frame(&Newer {
            version: 7,
            request: Request::Status,
            deadline_ms: 5,
        });
        let probe: VersionProbe = rmp_serde::from_slice(&newer[4..]).unwrap();
        assert_eq!(probe.version, 7);
    }
}
