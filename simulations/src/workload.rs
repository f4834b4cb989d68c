//! Client operations against one node: mailboxes (create, rename, delete, move between users,
//! preferred primary), messages (append, flags, expunge, copy and move), annotations,
//! subscriptions and sieve scripts. Each operation draws its details from the run's generator,
//! runs against the node's actors as an IMAP or ManageSieve session would, records what the
//! client was told in the [`Model`], and returns a line for the trace.

use std::cell::RefCell;
use std::rc::Rc;

use actix::{Addr, MailboxError};
use mailmesh_actors::directory::*;
use mailmesh_actors::mailbox::*;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::{Guid, MailboxId, NodeId, Uid};

use crate::model::{Acked, Model, Register, Shown, Written};
use crate::network::short_id;
use crate::rng::SimRng;

pub const USERS: [&str; 2] = ["alice", "bob"];
const NAMES: [&str; 6] = ["INBOX", "Work", "Work/Reports", "Archive", "Lists", "Sent"];
const FLAGS: [&str; 5] = ["\\Seen", "\\Flagged", "\\Deleted", "$Label1", "\\Answered"];
const SCRIPTS: [&str; 3] = ["vacation", "spam", "filter"];
const ENTRIES: [&str; 2] = ["/shared/comment", "/private/color"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Create,
    Rename,
    Delete,
    Append,
    StoreFlags,
    Expunge,
    Transfer,
    Annotate,
    Subscribe,
    Sieve,
    SetPrimary,
    /// A MOVE (or COPY) from one mailbox to another and one back, at the same moment, on one
    /// node or on two.
    OppositeTransfers,
    /// Where a mailbox lives: a random non-empty subset of the nodes, or every node, sometimes
    /// with a named primary among them (not with `--no-locations`).
    SetLocations,
}

impl OpKind {
    /// A random operation, appends and flag changes the most common, as on a real mail server.
    pub fn random(rng: &SimRng) -> OpKind {
        match rng.range(0..100) {
            0..=7 => OpKind::Create,
            8..=11 => OpKind::Rename,
            12..=15 => OpKind::Delete,
            16..=49 => OpKind::Append,
            50..=63 => OpKind::StoreFlags,
            64..=69 => OpKind::Expunge,
            70..=74 => OpKind::Transfer,
            75..=76 => OpKind::OppositeTransfers,
            77..=82 => OpKind::Annotate,
            83..=87 => OpKind::Subscribe,
            88..=95 => OpKind::Sieve,
            _ => OpKind::SetPrimary,
        }
    }
}

/// A client connected to one node.
#[derive(Clone)]
pub struct Client {
    pub node: NodeId,
    pub directory: Addr<Directory>,
    pub model: Rc<RefCell<Model>>,
    pub rng: SimRng,
    /// Every node of the run (a primary may be named among them).
    pub nodes: Vec<NodeId>,
    /// Distinguishes the bodies of this run's appends.
    pub serial: u64,
    /// How many times the node had been wiped when this client connected.
    pub incarnation: usize,
    /// Another running node, for operations made on two nodes at once.
    pub other: Option<OtherNode>,
}

/// The second node of a two-node operation.
#[derive(Clone)]
pub struct OtherNode {
    pub node: NodeId,
    pub directory: Addr<Directory>,
    /// How many times it had been wiped when the operation began.
    pub incarnation: usize,
}

/// Why an operation failed, and whether it may have happened anyway.
struct Failed {
    text: String,
    /// The node went away mid-operation: the change may be durable without an answer.
    ambiguous: bool,
}

type Answer<T> = Result<T, Failed>;

fn answer<T>(r: Result<Result<T, MailError>, MailboxError>) -> Answer<T> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failed {
            ambiguous: matches!(e, MailError::ShuttingDown | MailError::Store(_)),
            text: e.to_string(),
        }),
        Err(_) => Err(Failed {
            text: "node down".into(),
            ambiguous: true,
        }),
    }
}

/// A COPY or MOVE answer in the trace: `old->new=copy` per message.
fn uid_pairs(taken: &[Transferred]) -> String {
    let pairs: Vec<String> = taken
        .iter()
        .map(|t| format!("{}->{}={}", t.from, t.to, t.copy))
        .collect();
    format!("[{}]", pairs.join(" "))
}

fn describe<T>(r: &Answer<T>, ok: impl FnOnce(&T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(f) => format!("error: {}", f.text),
    }
}

impl Client {
    fn user(&self) -> &'static str {
        USERS[self.rng.below(USERS.len())]
    }

    /// A mailbox name: mostly one the node shows the user now (conflict copies included), else
    /// one of the usual names, which may not exist.
    async fn name(&self, user: &str) -> String {
        if self.rng.chance(0.6) {
            let listed = self.directory.send(ListMailboxes { user: user.into() }).await;
            if let Ok(Ok(list)) = listed {
                if !list.is_empty() {
                    return self.rng.pick(&list).name.clone();
                }
            }
        }
        self.rng.pick(&NAMES).to_string()
    }

    async fn open(&self, user: &str, name: &str) -> Answer<OpenedMailbox> {
        answer(
            self.directory
                .send(OpenMailbox {
                    user: user.into(),
                    name: name.into(),
                })
                .await,
        )
    }

    /// Uids the mailbox shows now, to aim at (what the client saw goes to the observer).
    async fn shown(&self, mb: &OpenedMailbox) -> Vec<MessageView> {
        self.shown_by(&self.node, self.incarnation, mb).await
    }

    /// Like [`Client::shown`], for a mailbox opened on `node` (this client's or the other one)
    /// in its `incarnation`.
    async fn shown_by(&self, node: &NodeId, incarnation: usize, mb: &OpenedMailbox) -> Vec<MessageView> {
        match mb.addr.send(Fetch { uids: UidSet::all() }).await {
            Ok(Ok(views)) => {
                self.saw_on(node, incarnation, &mb.info, &views);
                views
            }
            _ => Vec::new(),
        }
    }

    /// Hands the messages an answer showed to the observer, which checks that no uid ever means
    /// two messages.
    fn saw(&self, info: &MailboxInfo, views: &[MessageView]) {
        self.saw_on(&self.node, self.incarnation, info, views)
    }

    fn saw_on(&self, node: &NodeId, incarnation: usize, info: &MailboxInfo, views: &[MessageView]) {
        if views.is_empty() {
            return;
        }
        self.model.borrow_mut().shown.push(Shown {
            node: node.clone(),
            mailbox: info.id,
            uidvalidity: info.uidvalidity,
            messages: views.iter().map(|v| (v.uid, v.append_id.clone())).collect(),
            incarnation,
        });
    }

    /// A small uid range starting at a shown message (or at a uid that may not exist).
    fn aim(&self, shown: &[MessageView]) -> (Uid, Uid) {
        let lo = if shown.is_empty() || self.rng.chance(0.1) {
            Uid(self.rng.range(1..30) as u32)
        } else {
            self.rng.pick(shown).uid
        };
        (lo, Uid(lo.0 + self.rng.range(0..4) as u32))
    }

    pub async fn run(self, kind: OpKind) -> String {
        self.model.borrow_mut().ops += 1;
        let line = match kind {
            OpKind::Create => self.create().await,
            OpKind::Rename => self.rename().await,
            OpKind::Delete => self.delete().await,
            OpKind::Append => self.append().await,
            OpKind::StoreFlags => self.store_flags().await,
            OpKind::Expunge => self.expunge().await,
            OpKind::Transfer => self.transfer().await,
            OpKind::Annotate => self.annotate().await,
            OpKind::Subscribe => self.subscribe().await,
            OpKind::Sieve => self.sieve().await,
            OpKind::SetPrimary => self.set_primary().await,
            OpKind::OppositeTransfers => self.opposite_transfers().await,
            OpKind::SetLocations => self.set_locations().await,
        };
        format!("on {}: {line}", self.node)
    }

    fn changed(&self) {
        self.model.borrow_mut().changes += 1;
    }

    async fn create(&self) -> String {
        let user = self.user();
        let name = self.rng.pick(&NAMES).to_string();
        let r = answer(
            self.directory
                .send(CreateMailbox {
                    user: user.into(),
                    name: name.clone(),
                })
                .await,
        );
        if r.is_ok() {
            self.changed();
        }
        let shown = describe(&r, |i| {
            format!("{} uidvalidity {}", short_id(i.id.0), i.uidvalidity)
        });
        format!("create {user}/{name}: {shown}")
    }

    async fn rename(&self) -> String {
        let user = self.user();
        let from = self.name(user).await;
        let to_user = self.rng.chance(0.2).then(|| self.user().to_string());
        let to = if self.rng.chance(0.3) {
            format!("R{}", self.rng.range(0..20))
        } else {
            self.rng.pick(&NAMES).to_string()
        };
        let r = answer(
            self.directory
                .send(RenameMailbox {
                    user: user.into(),
                    from: from.clone(),
                    to_user: to_user.clone(),
                    to: to.clone(),
                })
                .await,
        );
        if r.is_ok() {
            self.changed();
        }
        let target = to_user.unwrap_or_else(|| user.to_string());
        format!(
            "rename {user}/{from} -> {target}/{to}: {}",
            describe(&r, |_| "ok".into())
        )
    }

    async fn delete(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let before = self.open(user, &name).await.ok().map(|o| o.info.id);
        if let Some(id) = before {
            // Recorded first: the delete may be durable even if its answer is lost.
            self.model.borrow_mut().deleted.insert(id);
        }
        let r = answer(
            self.directory
                .send(DeleteMailbox {
                    user: user.into(),
                    name: name.clone(),
                })
                .await,
        );
        match &r {
            Ok(()) => {
                self.changed();
                // The name may have meant another mailbox by the time the delete ran (a rename
                // or a replicated change in between): then the model cannot say which it was.
                let pinned = match before {
                    Some(id) => matches!(
                        self.directory.send(OpenMailboxById { id }).await,
                        Ok(Err(MailError::MailboxDeleted(_)))
                    ),
                    None => false,
                };
                if !pinned {
                    self.model.borrow_mut().uncertain_deletes += 1;
                }
            }
            Err(f) if f.ambiguous => self.model.borrow_mut().uncertain_deletes += 1,
            Err(_) => {}
        }
        let id = before.map(|i| short_id(i.0)).unwrap_or_else(|| "-".into());
        format!("delete {user}/{name} ({id}): {}", describe(&r, |_| "ok".into()))
    }

    fn body(&self) -> Vec<u8> {
        // Now and then the same bytes again: two appends of one body are two messages sharing
        // one stored body.
        if self.rng.chance(0.1) {
            return format!("Subject: common {}\r\n\r\nsame body\r\n", self.rng.range(0..3)).into_bytes();
        }
        let filler = "x".repeat(self.rng.range(1..600) as usize);
        format!(
            "From: {}@example.org\r\nSubject: message {} of {}\r\n\r\n{filler}\r\n",
            self.user(),
            self.serial,
            self.node
        )
        .into_bytes()
    }

    async fn append(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let opened = match self.open(user, &name).await {
            Ok(o) => o,
            Err(f) => return format!("append {user}/{name}: {}", f.text),
        };
        let body = self.body();
        let guid = Guid::of(&body);
        let flags: Vec<String> = (0..self.rng.range(0..3))
            .map(|_| self.rng.pick(&FLAGS).to_string())
            .collect();
        let r = answer(
            opened
                .addr
                .send(Append {
                    body,
                    flags: flags.clone(),
                    internaldate: None,
                })
                .await,
        );
        drop(opened.addr);
        if let Ok(o) = &r {
            self.changed();
            let mut model = self.model.borrow_mut();
            model.shown.push(Shown {
                node: self.node.clone(),
                mailbox: opened.info.id,
                uidvalidity: opened.info.uidvalidity,
                messages: vec![(o.uid, o.append_id.clone())],
                incarnation: self.incarnation,
            });
            if flags.iter().any(|f| f == "\\Deleted") {
                model.deleted_flagged.insert(o.append_id.clone());
            }
            let acked = Acked {
                mailbox: opened.info.id,
                guid,
                node: self.node.clone(),
            };
            model.acknowledged_message(&o.append_id, acked);
        }
        let shown = describe(&r, |o| {
            format!("uid {} {} modseq {}", o.uid, o.append_id, o.modseq)
        });
        format!("append {user}/{name} {flags:?}: {shown}")
    }

    async fn store_flags(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let opened = match self.open(user, &name).await {
            Ok(o) => o,
            Err(f) => return format!("store {user}/{name}: {}", f.text),
        };
        let shown = self.shown(&opened).await;
        let (lo, hi) = self.aim(&shown);
        let action = *self
            .rng
            .pick(&[FlagAction::Add, FlagAction::Remove, FlagAction::Replace]);
        let flags: Vec<String> = (0..self.rng.range(1..3))
            .map(|_| self.rng.pick(&FLAGS).to_string())
            .collect();
        // Now and then a CONDSTORE store, conditional on a modseq the client saw.
        let unchanged_since = if !shown.is_empty() && self.rng.chance(0.15) {
            Some(self.rng.pick(&shown).modseq)
        } else {
            None
        };
        // A STORE that sets \Deleted is recorded before it is sent, like every operation that
        // lets a later EXPUNGE remove something: its answer may be lost while the change is
        // durable.
        let sets_deleted = action != FlagAction::Remove && flags.iter().any(|f| f == "\\Deleted");
        if sets_deleted {
            let mut model = self.model.borrow_mut();
            for view in shown.iter().filter(|v| lo <= v.uid && v.uid <= hi) {
                model.deleted_flagged.insert(view.append_id.clone());
            }
        }
        let r = answer(
            opened
                .addr
                .send(StoreFlags {
                    uids: UidSet::range(lo, hi),
                    action,
                    flags: flags.clone(),
                    unchanged_since,
                })
                .await,
        );
        if let Ok(o) = &r {
            self.changed();
            self.saw(&opened.info, &o.updated);
            let mut model = self.model.borrow_mut();
            if let Some(version) = &o.version {
                for (message, flags) in &o.written {
                    for (flag, set) in flags {
                        let register = Register::Flag {
                            mailbox: opened.info.id,
                            message: message.clone(),
                            flag: flag.clone(),
                        };
                        model.acknowledged(register, Written::Bool(*set), version);
                    }
                }
            }
            for view in &o.updated {
                if view.flags.iter().any(|f| f.as_str() == "\\Deleted") {
                    model.deleted_flagged.insert(view.append_id.clone());
                }
            }
        }
        if sets_deleted && matches!(&r, Err(f) if f.ambiguous) {
            self.model
                .borrow_mut()
                .maybe_deleted
                .push((opened.info.id, lo, hi));
        }
        let outcome = describe(&r, |o| {
            let updated: Vec<String> = o
                .updated
                .iter()
                .map(|v| {
                    let flags: Vec<&str> = v.flags.iter().map(|f| f.as_str()).collect();
                    format!("{}={}{flags:?}", v.uid, v.append_id)
                })
                .collect();
            format!("{} modified {:?}", updated.join(" "), o.modified)
        });
        let cond = if unchanged_since.is_some() {
            " (unchanged since)"
        } else {
            ""
        };
        format!("store {user}/{name} {lo}:{hi} {action:?} {flags:?}{cond}: {outcome}")
    }

    async fn expunge(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let opened = match self.open(user, &name).await {
            Ok(o) => o,
            Err(f) => return format!("expunge {user}/{name}: {}", f.text),
        };
        self.model
            .borrow_mut()
            .expunged_on
            .insert((opened.info.id, self.node.clone()));
        let r = answer(
            opened
                .addr
                .send(Expunge {
                    mode: ExpungeMode::Deleted,
                })
                .await,
        );
        if r.as_ref().is_ok_and(|gone| !gone.is_empty()) {
            self.changed();
        }
        format!("expunge {user}/{name}: {}", describe(&r, |g| format!("{g:?}")))
    }

    async fn transfer(&self) -> String {
        let user = self.user();
        let from = self.name(user).await;
        let to = self.name(user).await;
        let (source, target) = match (self.open(user, &from).await, self.open(user, &to).await) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(f), _) | (_, Err(f)) => return format!("transfer {user}/{from} -> {to}: {}", f.text),
        };
        let shown = self.shown(&source).await;
        let (lo, hi) = self.aim(&shown);
        let remove = self.rng.chance(0.5);
        let r = answer(
            source
                .addr
                .send(Transfer {
                    uids: UidSet::range(lo, hi),
                    target_id: target.info.id,
                    target: target.addr.clone(),
                    remove_source: remove,
                })
                .await,
        );
        self.took(
            (&source, &target),
            (&self.node, self.incarnation),
            remove,
            (lo, hi),
            &r,
        );
        let verb = if remove { "move" } else { "copy" };
        format!(
            "{verb} {user}/{from} {lo}:{hi} -> {to}: {}",
            describe(&r, |p| uid_pairs(p))
        )
    }

    /// Puts what a COPY or MOVE of `lo..=hi` from `source` to `target` on `node` answered into
    /// the model: the copies as acknowledged messages the client was shown at their new uids,
    /// the sources a move took (or, without an answer, the range it may have taken).
    fn took(
        &self,
        (source, target): (&OpenedMailbox, &OpenedMailbox),
        (node, incarnation): (&NodeId, usize),
        remove: bool,
        range: (Uid, Uid),
        r: &Answer<Vec<Transferred>>,
    ) {
        let taken = r.as_ref().ok().map(Vec::as_slice);
        self.model
            .borrow_mut()
            .transferred((source.info.id, target.info.id), node, remove, range, taken);
        if let Some(taken) = taken.filter(|t| !t.is_empty()) {
            self.changed();
            self.model.borrow_mut().shown.push(Shown {
                node: node.clone(),
                mailbox: target.info.id,
                uidvalidity: target.info.uidvalidity,
                messages: taken.iter().map(|t| (t.to, t.copy.clone())).collect(),
                incarnation,
            });
        }
    }

    /// A MOVE from A to B and a MOVE from B to A of one user's mailboxes (or a COPY pair), sent
    /// at the same moment and awaited together: on this node, or the second on another node.
    /// Both must answer (no transfer may wait on the other), and nothing is lost.
    async fn opposite_transfers(&self) -> String {
        let user = self.user();
        // Two different mailboxes the user has here, when there are two.
        let listed: Vec<String> = match self.directory.send(ListMailboxes { user: user.into() }).await {
            Ok(Ok(list)) => list.into_iter().map(|i| i.name).collect(),
            _ => Vec::new(),
        };
        let (a, b) = if listed.len() >= 2 {
            let a = self.rng.pick(&listed).clone();
            let rest: Vec<&String> = listed.iter().filter(|n| **n != a).collect();
            (a, (*self.rng.pick(&rest)).clone())
        } else {
            (self.name(user).await, self.name(user).await)
        };
        let (second_node, second_dir, second_incarnation) = match &self.other {
            Some(other) if self.rng.chance(0.5) => {
                (other.node.clone(), other.directory.clone(), other.incarnation)
            }
            _ => (self.node.clone(), self.directory.clone(), self.incarnation),
        };
        let open_on = |dir: &Addr<Directory>, name: &str| {
            dir.send(OpenMailbox {
                user: user.into(),
                name: name.into(),
            })
        };
        let opened = (
            answer(open_on(&self.directory, &a).await),
            answer(open_on(&self.directory, &b).await),
            answer(open_on(&second_dir, &b).await),
            answer(open_on(&second_dir, &a).await),
        );
        let (a_here, b_here, b_there, a_there) = match opened {
            (Ok(w), Ok(x), Ok(y), Ok(z)) => (w, x, y, z),
            (Err(f), ..) | (_, Err(f), ..) | (_, _, Err(f), _) | (.., Err(f)) => {
                return format!(
                    "opposite transfers {user}/{a} <-> {b} on {} and {second_node}: {}",
                    self.node, f.text
                )
            }
        };
        let remove = self.rng.chance(0.7);
        let forth_shown = self.shown(&a_here).await;
        let (lo1, hi1) = self.aim(&forth_shown);
        let back_shown = self.shown_by(&second_node, second_incarnation, &b_there).await;
        let (lo2, hi2) = self.aim(&back_shown);
        let forth = a_here.addr.send(Transfer {
            uids: UidSet::range(lo1, hi1),
            target_id: b_here.info.id,
            target: b_here.addr.clone(),
            remove_source: remove,
        });
        let back = b_there.addr.send(Transfer {
            uids: UidSet::range(lo2, hi2),
            target_id: a_there.info.id,
            target: a_there.addr.clone(),
            remove_source: remove,
        });
        let (forth, back) = tokio::join!(forth, back);
        let (forth, back) = (answer(forth), answer(back));
        self.took(
            (&a_here, &b_here),
            (&self.node, self.incarnation),
            remove,
            (lo1, hi1),
            &forth,
        );
        self.took(
            (&b_there, &a_there),
            (&second_node, second_incarnation),
            remove,
            (lo2, hi2),
            &back,
        );
        let verb = if remove { "moves" } else { "copies" };
        format!(
            "opposite {verb} {user}/{a} {lo1}:{hi1} -> {b} on {}: {}; {user}/{b} {lo2}:{hi2} -> {a} on {second_node}: {}",
            self.node,
            describe(&forth, |p| uid_pairs(p)),
            describe(&back, |p| uid_pairs(p))
        )
    }

    async fn annotate(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let opened = match self.open(user, &name).await {
            Ok(o) => o,
            Err(f) => return format!("annotate {user}/{name}: {}", f.text),
        };
        let entry = self.rng.pick(&ENTRIES).to_string();
        let value = self
            .rng
            .chance(0.7)
            .then(|| format!("v{}", self.rng.range(0..1000)).into_bytes());
        let shown_value = value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
        let r = answer(
            opened
                .addr
                .send(SetAnnotation {
                    entry: entry.clone(),
                    value: value.clone(),
                })
                .await,
        );
        if let Ok(written) = &r {
            self.changed();
            if let Some(version) = written {
                let register = Register::Annotation {
                    mailbox: opened.info.id,
                    entry: entry.clone(),
                };
                self.model
                    .borrow_mut()
                    .acknowledged(register, Written::Bytes(value), version);
            }
        }
        format!(
            "annotate {user}/{name} {entry}={shown_value:?}: {}",
            describe(&r, |_| "ok".into())
        )
    }

    async fn subscribe(&self) -> String {
        let user = self.user();
        let name = self.rng.pick(&NAMES).to_string();
        let on = self.rng.chance(0.6);
        let r = answer(
            self.directory
                .send(Subscribe {
                    user: user.into(),
                    name: name.clone(),
                    subscribed: on,
                })
                .await,
        );
        if let Ok(written) = &r {
            self.changed();
            if let Some(version) = written {
                let register = Register::Subscription {
                    user: user.into(),
                    name: name.clone(),
                };
                self.model
                    .borrow_mut()
                    .acknowledged(register, Written::Bool(on), version);
            }
        }
        format!("subscribe {user}/{name} {on}: {}", describe(&r, |_| "ok".into()))
    }

    async fn sieve(&self) -> String {
        let user = self.user();
        let script = self.rng.pick(&SCRIPTS).to_string();
        let (what, r, register, value) = match self.rng.range(0..4) {
            0 | 1 => {
                let content = format!("# {} rev {}\r\nkeep;\r\n", script, self.rng.range(0..1000));
                let r = self
                    .directory
                    .send(PutScript {
                        user: user.into(),
                        name: script.clone(),
                        content: content.clone().into_bytes(),
                    })
                    .await;
                let register = Register::Script {
                    user: user.into(),
                    name: script.clone(),
                };
                (
                    "put",
                    answer(r),
                    register,
                    Written::Bytes(Some(content.into_bytes())),
                )
            }
            2 => {
                let name = self.rng.chance(0.8).then(|| script.clone());
                let r = self
                    .directory
                    .send(SetActiveScript {
                        user: user.into(),
                        name: name.clone(),
                    })
                    .await;
                let register = Register::ActiveScript { user: user.into() };
                ("activate", answer(r), register, Written::Name(name))
            }
            _ => {
                let r = self
                    .directory
                    .send(DeleteScript {
                        user: user.into(),
                        name: script.clone(),
                    })
                    .await;
                let register = Register::Script {
                    user: user.into(),
                    name: script.clone(),
                };
                ("delete", answer(r), register, Written::Bytes(None))
            }
        };
        if let Ok(version) = &r {
            self.changed();
            self.model.borrow_mut().acknowledged(register, value, version);
        }
        format!("sieve {what} {user}/{script}: {}", describe(&r, |_| "ok".into()))
    }

    /// Moves a mailbox: its locations become a random non-empty subset of the nodes (now and
    /// then every node again), with a named primary among them or none. Nodes left out let their
    /// copies go once drained, nodes added get everything; nothing acknowledged may be lost.
    async fn set_locations(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let locations: Vec<NodeId> = if self.rng.chance(0.15) {
            Vec::new()
        } else {
            let mut chosen: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|_| self.rng.chance(0.5))
                .cloned()
                .collect();
            if chosen.is_empty() {
                chosen.push(self.rng.pick(&self.nodes).clone());
            }
            chosen
        };
        let primary = if self.rng.chance(0.5) {
            let among = if locations.is_empty() {
                &self.nodes
            } else {
                &locations
            };
            Some(self.rng.pick(among).clone())
        } else {
            None
        };
        let r = answer(
            self.directory
                .send(SetLocations {
                    user: user.into(),
                    name: name.clone(),
                    locations: locations.clone(),
                    primary: primary.clone(),
                })
                .await,
        );
        if r.is_ok() {
            self.changed();
        }
        let shown: Vec<&str> = locations.iter().map(|n| n.as_str()).collect();
        format!(
            "set locations {user}/{name} {shown:?} primary {primary:?}: {}",
            describe(&r, |_| "ok".into())
        )
    }

    /// Names another preferred primary (locations stay: every node), as an operator would when
    /// the primary is gone or moved.
    async fn set_primary(&self) -> String {
        let user = self.user();
        let name = self.name(user).await;
        let primary = self.rng.pick(&self.nodes).clone();
        let r = answer(
            self.directory
                .send(SetLocations {
                    user: user.into(),
                    name: name.clone(),
                    locations: Vec::new(),
                    primary: Some(primary.clone()),
                })
                .await,
        );
        if r.is_ok() {
            self.changed();
        }
        format!(
            "set primary {user}/{name} {primary}: {}",
            describe(&r, |_| "ok".into())
        )
    }
}

/// The mailbox id a trace line names.
pub fn mailbox_label(id: MailboxId) -> String {
    short_id(id.0)
}
