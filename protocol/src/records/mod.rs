//! Every replicated record, each a state-based CRDT (see [`crate::merge::Merge`]).
//!
//! | record | key | merge |
//! | --- | --- | --- |
//! | [`MailboxEntry`] | MailboxId | path, locations, primary: LWW; DELETED tombstone sticky |
//! | [`UidNext`] | MailboxId | max |
//! | [`MessageRecord`] | (MailboxId, AppendId) | uid LWW; per-flag LWW; expunge sticky |
//! | [`PrunedSet`] | MailboxId | union: expunged AppendIds compacted out of their records |
//! | [`Annotation`] | (MailboxId, entry) | LWW, a deleted value is a tombstone |
//! | [`UserSubscriptions`] | user | per mailbox name LWW bool |
//! | [`UserSieve`] | user | per script LWW content with deleted markers; active script LWW |
//! | [`LinkGraph`] | (one per cluster) | per node LWW set of its configured peers |

mod annotation;
mod links;
mod mailbox;
mod message;
mod pruned;
mod sieve;
mod subscription;
mod uid_conflict;

pub use annotation::Annotation;
pub use links::LinkGraph;
pub use mailbox::{resolve_names, MailboxEntry, MailboxPath, MailboxTombstone, ResolvedName, UidNext};
pub use message::{expunged_digest, GuidAs, MailboxDigest, MessageRecord, RecordUpdate};
pub use pruned::PrunedSet;
pub use sieve::{ScriptContent, UserSieve};
pub use subscription::UserSubscriptions;
pub use uid_conflict::{settle_uid, AtUid, Settlement};
