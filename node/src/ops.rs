//! Operator commands on a stopped node's data directory: create and list mailboxes, append a
//! message.
//!
//! Each command opens the store the way `mailmesh run` does (the same actors, the same checks),
//! sends one message to the Directory or a Mailbox, waits until the result is durable, and stops.
//! The store admits one process at a time, so while a node runs on the same data directory these
//! commands fail with "in use by another mailmesh process" instead of writing behind its back.
//! (Front ends of a running node come later; these work without one.)

use std::future::Future;
use std::io::Read;
use std::path::Path;

use mailmesh_actors::directory::{CreateMailbox, ListMailboxes, MailboxInfo, OpenMailbox};
use mailmesh_actors::mailbox::{Append, AppendOutcome, GetState, MailboxState};
use mailmesh_actors::node::{LocalNode, NodeOptions};
use mailmesh_actors::MailError;

use crate::error::Error;
use crate::run::{node_env, node_system, stop};

/// Creates mailbox `name` (and any missing parents of a hierarchical name) for `user`.
pub fn create_mailbox(options: NodeOptions, user: String, name: String) -> Result<MailboxInfo, Error> {
    with_node(options, |node| async move {
        Ok(node.directory.send(CreateMailbox { user, name }).await??)
    })
}

/// The user's mailboxes, sorted by name, each with its current state.
pub fn list_mailboxes(options: NodeOptions, user: String) -> Result<Vec<(MailboxInfo, MailboxState)>, Error> {
    with_node(options, |node| async move {
        let mut out = Vec::new();
        for info in node
            .directory
            .send(ListMailboxes { user: user.clone() })
            .await??
        {
            let opened = node
                .directory
                .send(OpenMailbox {
                    user: user.clone(),
                    name: info.name.clone(),
                })
                .await??;
            let state = opened.addr.send(GetState).await??;
            out.push((info, state));
        }
        Ok(out)
    })
}

/// Appends `body` with `flags` to the user's mailbox; answers once it is durable.
pub fn append(
    options: NodeOptions,
    user: String,
    mailbox: String,
    body: Vec<u8>,
    flags: Vec<String>,
) -> Result<AppendOutcome, Error> {
    with_node(options, |node| async move {
        let opened = node.directory.send(OpenMailbox { user, name: mailbox }).await??;
        let outcome = opened
            .addr
            .send(Append {
                body,
                flags,
                internaldate: None,
            })
            .await??;
        Ok(outcome)
    })
}

/// Reads a message from `path`, or from standard input for `-`.
pub fn read_message(path: &Path) -> Result<Vec<u8>, Error> {
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| Error::io("cannot read the message from standard input", e))?;
        return Ok(body);
    }
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
}

/// Starts the node's actors in a short-lived System, runs `op` against them, and stops.
fn with_node<T, F, Fut>(options: NodeOptions, op: F) -> Result<T, Error>
where
    F: FnOnce(LocalNode) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let (system, span) = node_system(&options.node)?;
    let _entered = span.enter();
    let result = system.block_on(async move {
        let node = LocalNode::start(options, node_env()?)?;
        op(node).await
    });
    stop(system)?;
    result
}

/// `send(..).await??` needs the outer actix error as a `MailError` first: the only way a send
/// fails is an actor that stopped, which MailError already calls "shutting down".
impl From<actix::MailboxError> for Error {
    fn from(e: actix::MailboxError) -> Self {
        Error::Mail(MailError::from(e))
    }
}
