//! Shared set-up for the actor tests: a node on a temp dir inside an actix System.
#![allow(dead_code)]

pub mod cluster;

use std::path::Path;
use std::sync::Arc;

use mailmesh_actors::directory::{CreateMailbox, OpenMailbox};
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::mailbox::{Append, AppendOutcome, Mailbox};
use mailmesh_actors::node::{LocalNode, NodeOptions};
use mailmesh_protocol::ids::NodeId;

pub const EPOCH_MS: i64 = 1_700_000_000_000;

pub fn env(seed: u64) -> Env {
    Env::new(Arc::new(TokioClock::new(EPOCH_MS)), Entropy::from_seed(seed))
}

pub fn node_id() -> NodeId {
    NodeId::new("test-node").unwrap()
}

pub fn options(dir: &Path) -> NodeOptions {
    NodeOptions::new(node_id(), dir)
}

pub fn start(dir: &Path) -> LocalNode {
    LocalNode::start(options(dir), env(7)).expect("node starts")
}

/// Runs `f` inside a fresh actix System, then stops the System.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let system = actix::System::new();
    let out = system.block_on(f());
    actix::System::current().stop();
    out
}

pub async fn mailbox(node: &LocalNode, user: &str, name: &str) -> actix::Addr<Mailbox> {
    node.directory
        .send(CreateMailbox {
            user: user.into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .unwrap();
    open(node, user, name).await
}

pub async fn open(node: &LocalNode, user: &str, name: &str) -> actix::Addr<Mailbox> {
    node.directory
        .send(OpenMailbox {
            user: user.into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .unwrap()
        .addr
}

pub async fn append(mb: &actix::Addr<Mailbox>, body: &str, flags: &[&str]) -> AppendOutcome {
    mb.send(Append {
        body: body.as_bytes().to_vec(),
        flags: flags.iter().map(|s| s.to_string()).collect(),
        internaldate: Some(1_600_000_000),
    })
    .await
    .unwrap()
    .unwrap()
}

pub fn message(i: usize) -> String {
    format!("From: a@example.org\r\nSubject: message {i}\r\n\r\nbody {i}\r\n")
}
