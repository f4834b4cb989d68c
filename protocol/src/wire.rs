//! The messages two nodes exchange. A connection starts with [`Hello`] both ways; after that the
//! dialing node (the Channel) sends [`Request`]s and the answering node (the PeerSession) sends one
//! [`Response`] per request, matched by id. Every change carries its origin, the node where a
//! client made it, so the receiver can keep it from echoing back (DESIGN.md, "Channels, sync log,
//! echo suppression").

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::ids::{AppendId, Guid, MailboxId, ModSeq, NodeId, UidValidity};
use crate::records::{
    Annotation, LinkGraph, MailboxDigest, MailboxEntry, MessageRecord, PrunedSet, RecordUpdate, UidNext,
    UserSieve, UserSubscriptions,
};

/// Bumped on every incompatible change to these types. Peers with different versions refuse each
/// other in the handshake with a message naming both versions. 3: a Guid travels as one byte
/// string instead of an array of 32 numbers. 4: `Keeps`, asked before a copy is let go. 5: a
/// change request carries the whole bodies of a few small new records (`ChangeRequest::bodies`).
pub const PROTOCOL_VERSION: u32 = 5;

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// The answer to a Hello that cannot be accepted; the connection closes after it.
    Refuse {
        reason: String,
    },
    Request {
        id: u64,
        request: Request,
    },
    Response {
        id: u64,
        response: Response,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub node: NodeId,
    /// The largest frame this node accepts, so the sender splits batches below it.
    pub max_frame: u32,
}

/// A replicated item with the node where the change that made it was first committed.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Change<T> {
    pub origin: NodeId,
    pub item: T,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// First request on a link, and again after any transport failure: each side learns the
    /// other's store incarnation. A changed incarnation means the peer lost its data (a wiped or
    /// replaced store), and everything is queued for it again. `floor` is the lowest Version
    /// counter the incarnation mints: a change that node made with an older newest Version was
    /// made by a store it may have lost, so echo suppression does not skip it (engine bug 20).
    Hello {
        incarnation: u128,
        floor: u64,
    },
    /// The directory entries of one user's mailboxes (creates, renames, moves, deletes, location
    /// and primary changes).
    Mailboxes {
        user: String,
        entries: Vec<Change<MailboxEntry>>,
    },
    Subscriptions {
        user: String,
        subscriptions: Change<UserSubscriptions>,
    },
    Sieve {
        user: String,
        sieve: Change<UserSieve>,
    },
    /// The cluster's link graph (every node's configured peers), from which each node computes
    /// the relays a mailbox placed on some nodes needs.
    Links {
        links: Change<LinkGraph>,
    },
    /// Step 1 of a mailbox sync: the records changed since the last acknowledged point, and the
    /// peer modseq the sender's replication cache expects. Applied only if it matches (or, for the
    /// push half of a full sync, unconditionally).
    ChangeRequest(ChangeRequest),
    /// Step 2: the records the peer changed after `since`, a modseq of the peer's own, one page.
    ChangesSince {
        mailbox: MailboxId,
        uidvalidity: UidValidity,
        since: ModSeq,
        limit: u32,
    },
    /// Step 3: every record of the mailbox (metadata only), one page after `after`.
    FullState {
        mailbox: MailboxId,
        uidvalidity: UidValidity,
        after: Option<AppendId>,
        limit: u32,
    },
    /// Asked by a node letting its copy of a mailbox go, of the peer it hands the mailbox to:
    /// does the peer hold a copy now, and is it not letting that copy go itself? A copy goes
    /// only on a yes asked after its node started leaving, so two nodes can never each let go
    /// on the strength of the other (engine bug 36).
    Keeps {
        mailbox: MailboxId,
        uidvalidity: UidValidity,
    },
    /// Which of these bodies does the peer lack?
    MissingBodies {
        guids: Vec<Guid>,
    },
    /// Up to `limit` bytes of a body the peer has, from `offset` (the pull side of a sync).
    FetchBody {
        guid: Guid,
        offset: u64,
        limit: u32,
    },
    /// Pieces of several bodies in one request (many small messages travel together).
    Bodies {
        parts: Vec<BodyPart>,
    },
    /// A piece of one body; `last` closes it and the receiver checks it against its Guid.
    BodyChunk {
        guid: Guid,
        offset: u64,
        data: ByteBuf,
        last: bool,
    },
}

/// A piece of one body; `last` closes it and the receiver checks the whole against its Guid.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BodyPart {
    pub guid: Guid,
    pub offset: u64,
    pub data: ByteBuf,
    pub last: bool,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub mailbox: MailboxId,
    pub uidvalidity: UidValidity,
    /// The peer's modseq this sender believes current; `ModSeq::ZERO` means "no cache".
    pub expected_peer_modseq: ModSeq,
    /// The sender's own modseq after these changes.
    pub sender_modseq: ModSeq,
    pub uidnext: UidNext,
    /// Records the peer may not have, whole.
    pub records: Vec<Change<MessageRecord>>,
    /// Changes to records the peer already has (it acknowledged their append).
    pub updates: Vec<Change<RecordUpdate>>,
    pub annotations: Vec<Change<(String, Annotation)>>,
    /// The sender's digest after these changes, so the peer can detect silent divergence.
    pub digest: MailboxDigest,
    /// The push half of a full sync: apply whatever the peer's modseq.
    pub full: bool,
    /// The messages the sender compacted away as expunged: with a full push, and with a change
    /// request when the set changed after the acknowledged point (it travels like any change).
    pub pruned: Option<PrunedSet>,
    /// Whole bodies of some of `records`, carried along instead of asked about and sent first
    /// (a few small ones: the peer takes them as if from a `Bodies` request just before).
    pub bodies: Vec<BodyPart>,
}

/// One page of changes, oldest change first. `next` is where the following page starts, `None`
/// when this page is the last.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ChangePage {
    pub records: Vec<Change<MessageRecord>>,
    pub annotations: Vec<Change<(String, Annotation)>>,
    pub uidnext: UidNext,
    pub next: Option<ModSeq>,
    /// The messages compacted away as expunged, when that set changed after the page's start.
    pub pruned: Option<PrunedSet>,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Response {
    Ok,
    /// The answer to a Hello: this node's store incarnation and its floor (see the request).
    Hello {
        incarnation: u128,
        floor: u64,
    },
    /// A piece of a body; `total` is the body's whole length.
    Body {
        data: ByteBuf,
        total: u64,
    },
    /// A change request was applied; the peer is now at `modseq` with `digest`.
    Applied {
        modseq: ModSeq,
        digest: MailboxDigest,
    },
    /// The peer is not where the cache expected: here is where it is, and the first page of what
    /// changed there since the expected modseq.
    Mismatch {
        modseq: ModSeq,
        changes: ChangePage,
    },
    /// A page of changes since a modseq (answer to ChangesSince).
    Changes(ChangePage),
    /// A page of the full state; `next` is the AppendId to continue after, `None` at the end.
    Full {
        records: Vec<Change<MessageRecord>>,
        annotations: Vec<Change<(String, Annotation)>>,
        uidnext: UidNext,
        modseq: ModSeq,
        next: Option<AppendId>,
        /// On the first page: the messages the peer compacted away as expunged.
        pruned: Option<PrunedSet>,
    },
    Missing {
        guids: Vec<Guid>,
    },
    /// The answer to `Keeps`, with the store incarnation that gives it (a wiped store's yes
    /// says nothing about what the asker's replication cache records).
    Keeps {
        keeps: bool,
        incarnation: u128,
    },
    /// The request could not be served; `retry` says whether trying later may succeed.
    Error {
        code: ErrorCode,
        message: String,
        retry: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ErrorCode {
    UnknownMailbox,
    MailboxDeleted,
    UidValidityMismatch,
    /// The peer cannot list changes since the given modseq (not its own, ahead of it, or
    /// tombstones pruned): fall back to a full sync.
    NoHistory,
    /// A record names a body the receiver lacks and was not sent.
    MissingBody,
    /// An update names a record the receiver does not have: send it whole (a full sync).
    UnknownRecord,
    Busy,
    Corrupt,
    Storage,
    BadRequest,
}
