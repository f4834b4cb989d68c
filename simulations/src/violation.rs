//! What a broken invariant looks like: its kind and a line that says what was seen where.

/// What kind of invariant a violation breaks. The kinds let a test tell a known engine bug's
/// symptoms from anything new.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A node showed one uid of one uidvalidity as two different messages.
    UidReused,
    /// A uid two nodes showed as two different messages still shows one of them.
    UidConflictKept,
    /// A node showed one message at two uids at once.
    ShownTwice,
    /// UIDNEXT or HIGHESTMODSEQ went down on a node.
    WentDown,
    /// A deleted mailbox is listed again.
    MailboxBack,
    /// An expunged message is shown again.
    MessageBack,
    /// Replicas differ in mailboxes, names, messages, flags, subscriptions or sieve scripts.
    NotConverged,
    /// Replicas agree on everything but annotations.
    AnnotationsDiverged,
    /// Replicas show clients the same but differ in the replicated state underneath: record
    /// versions, hidden records, known expunged messages, UIDNEXT, annotation tombstones,
    /// digests, mailbox entries (locations, primary, tombstones), subscription or sieve state; or
    /// a holder cannot read a mailbox it holds.
    Diverged,
    /// An acknowledged append (or its mailbox) is missing.
    Lost,
    /// An acknowledged flag, annotation, subscription or sieve write is gone from the replicated
    /// state though no write with a higher version replaced it.
    LostWrite,
    /// An acknowledged append is held hidden by an unresolved uid conflict.
    StillHidden,
    /// A node holds neither an expunged message nor its tombstone (record or compacted range),
    /// so nothing there would stop a stale copy from bringing it back.
    NoTombstone,
    /// A message is expunged though no client expunged or moved it there.
    Unrequested,
    /// A mailbox is gone though no client deleted it.
    MailboxGone,
    /// A message's body is missing, unreadable or not the one appended.
    WrongBody,
    /// A node's uid index says of a record (shown, modseq, flags) what the record does not, or
    /// has a row without its record or none for one.
    IndexDisagrees,
    /// The healed cluster did not go quiet within the bound.
    NotQuiescent,
    /// A client operation got no answer within the bound (an engine hang: a deadlock, a lost
    /// wake-up); the violation names the operation as the trace does.
    NoAnswer,
    /// Requests crossed a link after quiescence (echo or a retry loop).
    Traffic,
    /// In a healthy cluster a change went back to its origin or over the link it arrived on.
    Echo,
    /// One change crossed one link more often than the bound.
    Crossings,
    /// A node did not start or restart from its data dir.
    Restart,
    /// A node minted an identity (an AppendId) it had minted before for another message (after
    /// a wipe, say).
    IdentityReused,
    /// The final probe could not be made (a symptom of something else going wrong).
    Probe,
    /// The engine panicked (the runner saw the run's process die).
    Panic,
    /// The run did not finish within the runner's wall-clock timeout.
    Hung,
}

impl Kind {
    pub const ALL: [Kind; 27] = [
        Kind::UidReused,
        Kind::UidConflictKept,
        Kind::ShownTwice,
        Kind::WentDown,
        Kind::MailboxBack,
        Kind::MessageBack,
        Kind::NotConverged,
        Kind::AnnotationsDiverged,
        Kind::Diverged,
        Kind::Lost,
        Kind::LostWrite,
        Kind::StillHidden,
        Kind::NoTombstone,
        Kind::Unrequested,
        Kind::MailboxGone,
        Kind::WrongBody,
        Kind::IndexDisagrees,
        Kind::NotQuiescent,
        Kind::NoAnswer,
        Kind::Traffic,
        Kind::Echo,
        Kind::Crossings,
        Kind::Restart,
        Kind::IdentityReused,
        Kind::Probe,
        Kind::Panic,
        Kind::Hung,
    ];

    /// The kebab-case tag printed before a violation, e.g. `uid-reused`.
    pub fn tag(self) -> String {
        let name = format!("{self:?}");
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    pub fn from_tag(tag: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Virtual milliseconds since the run started.
    pub at_ms: u128,
    pub kind: Kind,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] at {} ms: {}", self.kind.tag(), self.at_ms, self.what)
    }
}
