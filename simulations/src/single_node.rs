//! A seeded workload against one node, with a trace and invariant checks.
//!
//! Checked after every step, not only at the end:
//! - UIDNEXT and HIGHESTMODSEQ of every mailbox never go down;
//! - no uid of one uidvalidity is ever shown as two different messages;
//! - no loss: every acknowledged append that was not expunged (and whose mailbox was not deleted)
//!   is there, with its body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use mailmesh_actors::commit_group::FlushMode;
use mailmesh_actors::directory::*;
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::mailbox::*;
use mailmesh_actors::node::{LocalNode, NodeOptions};
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::{AppendId, MailboxId, ModSeq, NodeId, Uid, UidValidity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::runtime::deterministic_system;

const USERS: [&str; 2] = ["alice", "bob"];
const NAMES: [&str; 5] = ["INBOX", "Work", "Work/Reports", "Archive", "Lists"];
const FLAGS: [&str; 5] = ["\\Seen", "\\Flagged", "\\Deleted", "$Label1", "\\Answered"];

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub steps: usize,
    /// BLAKE3 of the whole trace.
    pub trace_hash: [u8; 32],
    pub trace: Vec<String>,
    pub violations: Vec<Violation>,
    pub virtual_time: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub step: usize,
    pub what: String,
}

/// A fault switched on deliberately, to show that the checks catch what they claim to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sabotage {
    #[default]
    None,
    /// The model forgets one acknowledged append, as a store that lost it would.
    ForgetAnAppend,
}

/// The model: what clients were told.
#[derive(Default)]
struct Model {
    /// Acknowledged, not expunged: (mailbox, uid) -> (append id, body).
    live: BTreeMap<(MailboxId, Uid), (AppendId, Vec<u8>)>,
    /// Highest UIDNEXT / HIGHESTMODSEQ seen per mailbox.
    high: BTreeMap<MailboxId, (Uid, ModSeq)>,
    /// Every (uidvalidity, uid) ever shown, with the message it was.
    shown: BTreeMap<(MailboxId, UidValidity, Uid), AppendId>,
}

pub fn run_seed(seed: u64, steps: usize) -> SeedReport {
    run_seed_with(seed, steps, Sabotage::None)
}

pub fn run_seed_with(seed: u64, steps: usize, sabotage: Sabotage) -> SeedReport {
    let dir = tempfile::tempdir().expect("temp dir");
    let system = deterministic_system();
    let report = system.block_on(async move {
        let started = tokio::time::Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let env = Env::new(
            Arc::new(TokioClock::new(1_700_000_000_000)),
            Entropy::from_seed(rng.random()),
        );
        let mut options = NodeOptions::new(NodeId::new("sim-1").unwrap(), dir.path());
        options.flush_mode = FlushMode::Inline;
        options.activation = ActivationPolicy {
            max_active: 3,
            idle_after: Duration::from_secs(30),
        };
        let node = LocalNode::start(options, env).expect("node starts");
        let mut trace = Vec::new();
        let mut violations = Vec::new();
        let mut model = Model::default();
        // Every user starts with an INBOX and a Work folder, as a provisioned account would.
        for user in USERS {
            for name in ["INBOX", "Work"] {
                let r = node
                    .directory
                    .send(CreateMailbox {
                        user: user.into(),
                        name: name.into(),
                    })
                    .await
                    .unwrap();
                trace.push(format!(
                    "setup create {user}/{name} -> {:?}",
                    r.map(|i| (i.id, i.uidvalidity))
                ));
            }
        }
        for step in 0..steps {
            let line = one_step(&node, &mut rng, &mut model).await;
            trace.push(format!("{step:05} {line}"));
            if sabotage == Sabotage::ForgetAnAppend && step == steps / 2 {
                if let Some(key) = model.live.keys().next().cloned() {
                    model.live.remove(&key);
                    // Now the model no longer knows a message the store has: check_no_loss
                    // below is mirrored by an "unexpected message" check.
                }
            }
            check(&node, &mut model, step, &mut violations).await;
            // Let virtual time pass now and then, so idle actors are let go and timers fire.
            if rng.random_ratio(1, 10) {
                tokio::time::sleep(Duration::from_secs(rng.random_range(1..60))).await;
            }
        }
        let virtual_time = started.elapsed();
        actix::System::current().stop();
        let mut hasher = blake3::Hasher::new();
        for line in &trace {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
        SeedReport {
            seed,
            steps,
            trace_hash: *hasher.finalize().as_bytes(),
            trace,
            violations,
            virtual_time,
        }
    });
    drop(system);
    report
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

async fn open(node: &LocalNode, user: &str, name: &str) -> Option<(MailboxInfo, Addr<Mailbox>)> {
    match node
        .directory
        .send(OpenMailbox {
            user: user.into(),
            name: name.into(),
        })
        .await
        .unwrap()
    {
        Ok(o) => Some((o.info, o.addr)),
        Err(_) => None,
    }
}

/// Runs one random client operation; returns its trace line.
async fn one_step(node: &LocalNode, rng: &mut ChaCha8Rng, model: &mut Model) -> String {
    let d = &node.directory;
    let user = *pick(rng, &USERS);
    let name = *pick(rng, &NAMES);
    match rng.random_range(0..100) {
        0..=9 => {
            let r = d
                .send(CreateMailbox {
                    user: user.into(),
                    name: name.into(),
                })
                .await
                .unwrap();
            format!("create {user}/{name} -> {:?}", r.map(|i| (i.id, i.uidvalidity)))
        }
        10..=12 => {
            let to = *pick(rng, &NAMES);
            let r = d
                .send(RenameMailbox {
                    user: user.into(),
                    from: name.into(),
                    to_user: None,
                    to: to.into(),
                })
                .await;
            format!(
                "rename {user}/{name} -> {to}: {:?}",
                r.unwrap().map_err(|e| e.to_string())
            )
        }
        13..=15 => {
            let id = open(node, user, name).await.map(|(i, _)| i.id);
            let r = d
                .send(DeleteMailbox {
                    user: user.into(),
                    name: name.into(),
                })
                .await
                .unwrap();
            if r.is_ok() {
                if let Some(id) = id {
                    model.live.retain(|(m, _), _| *m != id);
                    model.high.remove(&id);
                }
            }
            format!("delete {user}/{name}: {:?}", r.map_err(|e| e.to_string()))
        }
        16..=55 => {
            let Some((info, mb)) = open(node, user, name).await else {
                return format!("append {user}/{name}: no mailbox");
            };
            let body = format!(
                "Subject: {}\r\n\r\n{}\r\n",
                rng.random::<u32>(),
                "b".repeat(rng.random_range(1..200))
            );
            let flags: Vec<String> = (0..rng.random_range(0..3))
                .map(|_| pick(rng, &FLAGS).to_string())
                .collect();
            let r = mb
                .send(Append {
                    body: body.clone().into_bytes(),
                    flags,
                    internaldate: None,
                })
                .await
                .unwrap();
            if let Ok(o) = &r {
                model
                    .live
                    .insert((info.id, o.uid), (o.append_id.clone(), body.into_bytes()));
            }
            format!(
                "append {user}/{name} -> {:?}",
                r.map(|o| (o.uid, o.append_id, o.modseq))
            )
        }
        56..=75 => {
            let Some((_, mb)) = open(node, user, name).await else {
                return format!("store {user}/{name}: no mailbox");
            };
            let action = *pick(rng, &[FlagAction::Add, FlagAction::Remove, FlagAction::Replace]);
            let flag = pick(rng, &FLAGS).to_string();
            let lo = rng.random_range(1..20);
            let r = mb
                .send(StoreFlags {
                    uids: UidSet::range(Uid(lo), Uid(lo + 3)),
                    action,
                    flags: vec![flag.clone()],
                    unchanged_since: None,
                })
                .await
                .unwrap();
            format!(
                "store {user}/{name} {action:?} {flag} {lo}: {:?}",
                r.map(|o| o.updated.len())
            )
        }
        76..=83 => {
            let Some((info, mb)) = open(node, user, name).await else {
                return format!("expunge {user}/{name}: no mailbox");
            };
            let r = mb
                .send(Expunge {
                    mode: ExpungeMode::Deleted,
                })
                .await
                .unwrap();
            if let Ok(gone) = &r {
                for uid in gone {
                    model.live.remove(&(info.id, *uid));
                }
            }
            format!("expunge {user}/{name} -> {r:?}")
        }
        84..=89 => {
            let to_name = *pick(rng, &NAMES);
            let (Some((from, src)), Some((to, dst))) =
                (open(node, user, name).await, open(node, user, to_name).await)
            else {
                return format!("move {user}/{name} -> {to_name}: no mailbox");
            };
            let lo = rng.random_range(1..20);
            let remove = rng.random_bool(0.5);
            let r = src
                .send(Transfer {
                    uids: UidSet::range(Uid(lo), Uid(lo + 2)),
                    target_id: to.id,
                    target: dst,
                    remove_source: remove,
                })
                .await
                .unwrap();
            if let Ok(transferred) = &r {
                for t in transferred {
                    let entry = if remove {
                        model.live.remove(&(from.id, t.from))
                    } else {
                        model.live.get(&(from.id, t.from)).cloned()
                    };
                    if let Some((_, body)) = entry {
                        // The copy is a new message, with its own AppendId.
                        model.live.insert((to.id, t.to), (t.copy.clone(), body));
                    }
                }
            }
            format!(
                "{} {user}/{name} {lo} -> {to_name}: {r:?}",
                if remove { "move" } else { "copy" }
            )
        }
        90..=93 => {
            let Some((_, mb)) = open(node, user, name).await else {
                return format!("annotate {user}/{name}: no mailbox");
            };
            let value = rng
                .random_bool(0.7)
                .then(|| format!("v{}", rng.random::<u16>()).into_bytes());
            let r = mb
                .send(SetAnnotation {
                    entry: "/shared/comment".into(),
                    value,
                })
                .await
                .unwrap();
            format!("annotate {user}/{name}: {r:?}")
        }
        94..=96 => {
            let on = rng.random_bool(0.6);
            let r = d
                .send(Subscribe {
                    user: user.into(),
                    name: name.into(),
                    subscribed: on,
                })
                .await
                .unwrap();
            format!("subscribe {user}/{name} {on}: {r:?}")
        }
        _ => {
            let script = *pick(rng, &["vacation", "spam"]);
            let r = match rng.random_range(0..3) {
                0 => d
                    .send(PutScript {
                        user: user.into(),
                        name: script.into(),
                        content: vec![b'#'; 10],
                    })
                    .await
                    .unwrap(),
                1 => d
                    .send(SetActiveScript {
                        user: user.into(),
                        name: Some(script.into()),
                    })
                    .await
                    .unwrap(),
                _ => d
                    .send(DeleteScript {
                        user: user.into(),
                        name: script.into(),
                    })
                    .await
                    .unwrap(),
            };
            format!("sieve {user} {script}: {:?}", r.map_err(|e| e.to_string()))
        }
    }
}

/// Checks every invariant against the node's current state.
async fn check(node: &LocalNode, model: &mut Model, step: usize, violations: &mut Vec<Violation>) {
    let mut present: BTreeMap<(MailboxId, Uid), Vec<u8>> = BTreeMap::new();
    for user in USERS {
        let list = node
            .directory
            .send(ListMailboxes { user: user.into() })
            .await
            .unwrap()
            .unwrap();
        for info in list {
            let Ok(opened) = node
                .directory
                .send(OpenMailboxById { id: info.id })
                .await
                .unwrap()
            else {
                continue;
            };
            let mb = opened.addr;
            let state = mb.send(GetState).await.unwrap().unwrap();
            let high = model.high.entry(info.id).or_insert((Uid(0), ModSeq::ZERO));
            if state.uidnext < high.0 || state.highestmodseq < high.1 {
                violations.push(Violation {
                    step,
                    what: format!(
                        "mailbox {}: uidnext/highestmodseq went down: {:?} after {:?}",
                        info.id,
                        (state.uidnext, state.highestmodseq),
                        high
                    ),
                });
            }
            *high = (state.uidnext, state.highestmodseq);
            for view in mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap() {
                let key = (info.id, info.uidvalidity, view.uid);
                match model.shown.get(&key) {
                    Some(aid) if *aid != view.append_id => violations.push(Violation {
                        step,
                        what: format!(
                            "uid {} of mailbox {} shown as {:?} and as {:?}",
                            view.uid, info.id, aid, view.append_id
                        ),
                    }),
                    Some(_) => {}
                    None => {
                        model.shown.insert(key, view.append_id.clone());
                    }
                }
                let body = mb.send(FetchBody { uid: view.uid }).await.unwrap();
                match body {
                    Ok(b) => {
                        present.insert((info.id, view.uid), b);
                    }
                    Err(e) => violations.push(Violation {
                        step,
                        what: format!("uid {} of {}: body unreadable: {e}", view.uid, info.id),
                    }),
                }
            }
        }
    }
    for (key, (_, body)) in &model.live {
        match present.get(key) {
            Some(b) if b == body => {}
            Some(_) => violations.push(Violation {
                step,
                what: format!("{key:?}: body differs from the acknowledged one"),
            }),
            None => violations.push(Violation {
                step,
                what: format!("{key:?}: acknowledged message lost"),
            }),
        }
    }
    for key in present.keys() {
        if !model.live.contains_key(key) {
            violations.push(Violation {
                step,
                what: format!("{key:?}: a message no client stored or kept is visible"),
            });
        }
    }
}
