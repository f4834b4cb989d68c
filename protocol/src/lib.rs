//! The pure core of mailmesh: who is who, what is replicated, how two replicas merge, and the
//! bytes that travel between nodes.
//!
//! Nothing in this crate does I/O, reads a clock or draws a random number: every function is a
//! plain computation, so the merge rules can be property-tested exhaustively and the actors on top
//! stay deterministic. The layout follows `quinn-proto`: this crate is the sans-IO core, the
//! `mailmesh-actors` crate drives it.
//!
//! - [`ids`]: NodeId, MailboxId, UidValidity, Uid, AppendId, Guid, ModSeq.
//! - [`version`]: Lamport versions, the total order every last-writer-wins register uses.
//! - [`names`]: validation of user names, mailbox names and IMAP flags.
//! - [`merge`]: the `Merge` trait (a state-based CRDT join) and `Lww`.
//! - [`records`]: every replicated record and its merge.
//! - [`wire`]: the sync protocol's messages; [`codec`]: their framing.

pub mod codec;
pub mod ids;
pub mod merge;
pub mod names;
pub mod records;
pub mod version;
pub mod wire;

pub use ids::{AppendId, Guid, MailboxId, ModSeq, NodeId, Uid, UidValidity};
pub use merge::{Lww, Merge, MergeEffect};
pub use version::{LamportClock, Version};
