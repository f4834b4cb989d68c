//! Delivery of one message to one recipient: the user's active sieve script decides where it
//! goes (keep, fileinto, discard, reject, flags), then the Mailbox actors append it. The answer
//! comes only once every copy is durable (the Mailbox actor answers an `Append` after its group
//! commit), so concurrent sessions share fsyncs.
//!
//! Compiled scripts are cached per user by (script name, the version of its register in the
//! replicated sieve state): a delivery reads the user's sieve state from the Directory (one
//! store read) but parses the script only when it changed, here or on another node.
//!
//! A script's run-time error (a missing include, a limit) never fails a delivery: the message is
//! kept in INBOX and the error logged. A script stored that does not compile (it could only
//! come from a node with another interpreter version) is treated the same way.
//!
//! Every copy's target is checked writable on this node before any copy is written, so a
//! delivery is all or nothing as the MTA sees it: a refusal (451) leaves nothing its retry
//! would duplicate. See [`Deliverer::resolve_copies`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use mailmesh_actors::directory::{
    CreateMailbox, Directory, GetUserSieve, ListMailboxes, OpenMailbox, OpenedMailbox,
};
use mailmesh_actors::mailbox::{Append, CheckWritable};
use mailmesh_actors::MailError;
use mailmesh_protocol::records::UserSieve;
use mailmesh_protocol::version::Version;
use tracing::{info, warn};

use crate::sieve::{self, Action, Envelope, Environment, Script};

/// An accepted recipient: whose mailbox, and the `+folder` of its address if that names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as the client gave it (for the sieve envelope and logs).
    pub address: String,
    pub user: String,
    pub folder: Option<String>,
}

/// What became of a message for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Stored (or discarded by the user's script) durably.
    Stored,
    /// The user's script rejected it, with this reason.
    Rejected(String),
    /// The store could not take it now (4xx: the MTA retries).
    Failed(String),
}

/// Counts for the metrics and status.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    pub delivered: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub sieve_keep: AtomicU64,
    pub sieve_fileinto: AtomicU64,
    pub sieve_discard: AtomicU64,
    pub sieve_reject: AtomicU64,
    pub sieve_errors: AtomicU64,
}

impl DeliveryCounters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct CachedScript {
    name: String,
    version: Option<Version>,
    script: Rc<Result<Script, sieve::ParseError>>,
}

/// Delivers into this node's mailboxes.
pub struct Deliverer {
    directory: Addr<Directory>,
    /// Compiled scripts by user. Bounded: a cache over [`MAX_CACHED_SCRIPTS`] starts afresh.
    scripts: RefCell<BTreeMap<String, CachedScript>>,
    pub counters: Arc<DeliveryCounters>,
}

/// Compiled scripts kept at most.
pub const MAX_CACHED_SCRIPTS: usize = 10_000;

impl Deliverer {
    pub fn new(directory: Addr<Directory>, counters: Arc<DeliveryCounters>) -> Deliverer {
        Deliverer {
            directory,
            scripts: RefCell::new(BTreeMap::new()),
            counters,
        }
    }

    /// Delivers `message` (headers already added) from `from` to `recipient`.
    pub async fn deliver(&self, recipient: &Recipient, from: &str, message: Rc<Vec<u8>>) -> Delivered {
        let outcome = match self.run(recipient, from, &message).await {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(recipient = %recipient.address, error = %e, "delivery failed");
                Delivered::Failed(e.to_string())
            }
        };
        match &outcome {
            Delivered::Stored => DeliveryCounters::add(&self.counters.delivered),
            Delivered::Rejected(_) => DeliveryCounters::add(&self.counters.rejected),
            Delivered::Failed(_) => DeliveryCounters::add(&self.counters.failed),
        }
        outcome
    }

    async fn run(
        &self,
        recipient: &Recipient,
        from: &str,
        message: &Rc<Vec<u8>>,
    ) -> Result<Delivered, MailError> {
        let user = &recipient.user;
        let keep_target = match &recipient.folder {
            Some(folder) if self.mailbox_exists(user, folder).await? => folder.clone(),
            _ => "INBOX".to_string(),
        };
        let actions = self.sieve_actions(recipient, from, message).await?;
        if let Some(reason) = actions.iter().find_map(|a| match a {
            Action::Reject { reason, .. } => Some(reason.clone()),
            _ => None,
        }) {
            DeliveryCounters::add(&self.counters.sieve_reject);
            return Ok(Delivered::Rejected(reason));
        }
        let copies = self.resolve_copies(user, &keep_target, actions).await?;
        self.write_copies(user, message, copies).await?;
        Ok(Delivered::Stored)
    }

    /// Where each copy goes, every target checked writable here before anything is written: a
    /// refusal after some copies were durable would make the MTA's retry duplicate them. A
    /// target that is missing, refuses its name or is held on other nodes only is replaced by
    /// INBOX (the message is kept rather than lost or delayed); INBOX itself not writable here
    /// fails the whole delivery with nothing written. Copies to one mailbox are one copy (RFC
    /// 5228 section 2.10.3), with the flags of all of them.
    async fn resolve_copies(
        &self,
        user: &str,
        keep_target: &str,
        actions: Vec<Action>,
    ) -> Result<Vec<Copy>, MailError> {
        let mut copies: Vec<Copy> = Vec::new();
        for action in actions {
            let (target, flags) = match action {
                Action::Keep { flags } => (keep_target.to_string(), flags),
                Action::FileInto {
                    mailbox,
                    create,
                    flags,
                    ..
                } => {
                    if create {
                        match self
                            .directory
                            .send(CreateMailbox {
                                user: user.to_string(),
                                name: mailbox.clone(),
                            })
                            .await?
                        {
                            Ok(_) | Err(MailError::MailboxExists { .. }) => (mailbox, flags),
                            Err(e) => {
                                warn!(%user, %mailbox, error = %e, "sieve fileinto :create failed; keeping in INBOX");
                                ("INBOX".to_string(), flags)
                            }
                        }
                    } else {
                        (mailbox, flags)
                    }
                }
                Action::Discard => continue,
                Action::Reject { .. } => unreachable!("rejects are handled before any append"),
            };
            let opened = match self.writable(user, &target).await {
                Ok(opened) => opened,
                Err(e) if !target.eq_ignore_ascii_case("INBOX") && Self::unusable_target(&e) => {
                    // Deleted since the script's check, a name the store refuses, or a mailbox
                    // placed on other nodes: kept in INBOX rather than lost.
                    warn!(%user, mailbox = %target, error = %e, "delivery target is not writable here; keeping in INBOX");
                    self.writable(user, "INBOX").await?
                }
                Err(e) => return Err(e),
            };
            match copies.iter_mut().find(|c| c.opened.info.id == opened.info.id) {
                Some(copy) => {
                    for flag in flags {
                        if !copy.flags.contains(&flag) {
                            copy.flags.push(flag);
                        }
                    }
                }
                None => copies.push(Copy { opened, flags }),
            }
        }
        Ok(copies)
    }

    /// A target error that sends the copy to INBOX instead of failing the delivery.
    fn unusable_target(error: &MailError) -> bool {
        matches!(
            error,
            MailError::UnknownMailbox { .. }
                | MailError::InvalidName(_)
                | MailError::NotHeldHere { .. }
                | MailError::MailboxDeleted(_)
        )
    }

    /// Appends every copy at once (they share the group commit) and waits until all are
    /// durable. Once the targets were checked, a copy can still fail (the disk, a move made
    /// meanwhile): if another copy is durable the delivery counts as done (a 4xx would make the
    /// MTA deliver that copy again), with the lost copy logged; if none is, it fails.
    async fn write_copies(
        &self,
        user: &str,
        message: &Rc<Vec<u8>>,
        copies: Vec<Copy>,
    ) -> Result<(), MailError> {
        let writes = copies.iter().map(|copy| self.append(user, copy, message));
        let results = futures_util::future::join_all(writes).await;
        let stored = results.iter().filter(|r| r.is_ok()).count();
        let mut first_error = None;
        for (copy, result) in copies.iter().zip(results) {
            if let Err(e) = result {
                if stored > 0 {
                    warn!(%user, mailbox = %copy.opened.info.name, error = %e, "one copy of a delivered message could not be written; the others are stored");
                }
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) if stored == 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// The actions of the user's active script, or a keep without one (or when it fails). A
    /// keep goes to the address's `+folder` when it exists, else INBOX (RFC 5233's detail as
    /// the default target).
    async fn sieve_actions(
        &self,
        recipient: &Recipient,
        from: &str,
        message: &[u8],
    ) -> Result<Vec<Action>, MailError> {
        let keep = vec![Action::Keep { flags: Vec::new() }];
        let user = &recipient.user;
        let state = self.directory.send(GetUserSieve { user: user.clone() }).await??;
        let Some(name) = state.active_script().map(str::to_string) else {
            return Ok(keep);
        };
        let script = self.compiled(user, &name, &state);
        let script = match &*script {
            Ok(script) => script,
            Err(e) => {
                DeliveryCounters::add(&self.counters.sieve_errors);
                warn!(%user, script = %name, error = %e, "active sieve script does not compile; message kept");
                return Ok(keep);
            }
        };
        let mailboxes: BTreeSet<String> = self
            .directory
            .send(ListMailboxes { user: user.clone() })
            .await??
            .into_iter()
            .map(|info| info.name)
            .collect();
        let environment = UserEnvironment {
            mailboxes,
            sieve: &state,
        };
        let parsed = sieve::Message::parse(message);
        let envelope = Envelope {
            from,
            to: &recipient.address,
        };
        match sieve::evaluate(script, &name, &parsed, &envelope, &environment) {
            Ok(outcome) => {
                for note in &outcome.notes {
                    info!(%user, script = %name, %note, "sieve");
                }
                for action in &outcome.actions {
                    let counter = match action {
                        Action::Keep { .. } => &self.counters.sieve_keep,
                        Action::FileInto { .. } => &self.counters.sieve_fileinto,
                        Action::Discard => &self.counters.sieve_discard,
                        Action::Reject { .. } => continue,
                    };
                    DeliveryCounters::add(counter);
                }
                Ok(outcome.actions)
            }
            Err(e) => {
                DeliveryCounters::add(&self.counters.sieve_errors);
                warn!(%user, script = %name, error = %e, "sieve run-time error; message kept in INBOX");
                Ok(keep)
            }
        }
    }

    /// The user's script `name`, compiled once per version.
    fn compiled(&self, user: &str, name: &str, state: &UserSieve) -> Rc<Result<Script, sieve::ParseError>> {
        let version = state.scripts.get(name).map(|register| register.version.clone());
        let mut cache = self.scripts.borrow_mut();
        if let Some(cached) = cache.get(user) {
            if cached.name == name && cached.version == version {
                return cached.script.clone();
            }
        }
        let source = state.script(name).unwrap_or_default();
        let script = Rc::new(sieve::compile(source));
        if cache.len() >= MAX_CACHED_SCRIPTS {
            cache.clear();
        }
        cache.insert(
            user.to_string(),
            CachedScript {
                name: name.to_string(),
                version,
                script: script.clone(),
            },
        );
        script
    }

    async fn mailbox_exists(&self, user: &str, name: &str) -> Result<bool, MailError> {
        match self
            .directory
            .send(OpenMailbox {
                user: user.to_string(),
                name: name.to_string(),
            })
            .await?
        {
            Ok(_) => Ok(true),
            Err(MailError::UnknownMailbox { .. }) | Err(MailError::InvalidName(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `user`'s `mailbox` if a client may write it on this node (INBOX is created on a user's
    /// first delivery).
    async fn writable(&self, user: &str, mailbox: &str) -> Result<OpenedMailbox, MailError> {
        let open = || OpenMailbox {
            user: user.to_string(),
            name: mailbox.to_string(),
        };
        let opened = match self.directory.send(open()).await? {
            Ok(opened) => opened,
            Err(MailError::UnknownMailbox { .. }) if mailbox.eq_ignore_ascii_case("INBOX") => {
                match self
                    .directory
                    .send(CreateMailbox {
                        user: user.to_string(),
                        name: "INBOX".to_string(),
                    })
                    .await?
                {
                    Ok(_) | Err(MailError::MailboxExists { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.directory.send(open()).await??
            }
            Err(e) => return Err(e),
        };
        opened.addr.send(CheckWritable).await??;
        Ok(opened)
    }

    /// Appends one copy and waits until it is durable. Flags the store refuses (a script may
    /// name any string) are dropped with a log line rather than losing the message.
    async fn append(&self, user: &str, copy: &Copy, message: &Rc<Vec<u8>>) -> Result<(), MailError> {
        let append = |flags| Append {
            body: message.as_ref().clone(),
            flags,
            internaldate: None,
        };
        let addr = &copy.opened.addr;
        match addr.send(append(copy.flags.clone())).await? {
            Ok(_) => Ok(()),
            Err(MailError::InvalidName(e)) if !copy.flags.is_empty() => {
                warn!(%user, mailbox = %copy.opened.info.name, error = %e, "sieve flags refused by the store; stored without them");
                addr.send(append(Vec::new())).await?.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

/// One copy of a message: the mailbox (checked writable) and its flags.
struct Copy {
    opened: OpenedMailbox,
    flags: Vec<String>,
}

/// What the interpreter may ask about the recipient.
struct UserEnvironment<'a> {
    mailboxes: BTreeSet<String>,
    sieve: &'a UserSieve,
}

impl Environment for UserEnvironment<'_> {
    fn mailbox_exists(&self, name: &str) -> bool {
        if name.eq_ignore_ascii_case("INBOX") {
            return true;
        }
        self.mailboxes.contains(name)
    }

    fn personal_script(&self, name: &str) -> Option<Vec<u8>> {
        self.sieve.script(name).map(<[u8]>::to_vec)
    }
}
