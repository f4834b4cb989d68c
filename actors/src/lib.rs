//! The actors of a mailmesh node and the storage under them.
//!
//! - [`directory::Directory`]: mailboxes.db, names, subscriptions, sieve scripts; activates
//!   [`mailbox::Mailbox`] actors on demand and lets idle ones go.
//! - [`mailbox::Mailbox`]: one mailbox's messages, flags, annotations.
//! - [`commit_group::CommitGroup`]: the single writer; groups batches into one fdatasync.
//! - [`store`]: the redb database and the body segments, on a [`disk::Disk`] (the real file
//!   system, or the simulator's [`sim_disk::SimDisk`], which loses unsynced writes on a crash).
//! - [`env`]: the only way in for time and randomness; [`counters`]: the node's Lamport clock
//!   and append counter.
//! - [`node::LocalNode`]: starts all of the above for one node.
//!
//! Everything runs on one actix System thread: no actor starts threads of its own.

pub mod channel;
pub mod commit_group;
pub mod context;
pub mod counters;
pub mod directory;
pub mod directory_sync;
pub mod disk;
pub mod env;
pub mod error;
pub mod flag_set;
pub mod inflight;
pub mod mailbox;
pub mod mailbox_sync;
pub mod memory_network;
mod moving;
pub mod node;
pub mod peer_session;
pub mod shown_index;
pub mod sim_disk;
pub mod store;
pub mod sync_log;
pub mod transport;
pub mod uid_set;

pub use error::{MailError, StoreError};
