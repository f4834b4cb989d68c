//! Operator commands: mailboxes, messages, flags, moves and status, on a running node through its
//! operator socket, or on a stopped node's data directory directly.
//!
//! Either way a request is carried out by [`NodeHandle::handle`], so a command gives the same
//! answer on a running node and a stopped one. Which one applies is decided by the socket: if a
//! node answers on `<data_dir>/mailmesh.sock`, the request goes to it; otherwise this process opens
//! the store the way `mailmesh run` does (the same actors, the same checks), carries the request
//! out, waits until it is durable, and stops. The store admits one process at a time, so a node
//! that runs but cannot be reached is reported as "in use by another mailmesh process" instead of
//! being written behind its back.

use std::cell::RefCell;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use mailmesh_actors::node::{LocalNode, NodeOptions};
use mailmesh_actors::MailError;

use crate::error::Error;
use crate::operator::client::OperatorClient;
use crate::operator::protocol::{Reply, Request};
use crate::operator::NodeHandle;
use crate::run::{node_env, node_system, stop};

/// Carries out `request` on the node of `options`: through its socket if it runs, else on its
/// data directory. `status` needs a running node.
pub fn execute(options: NodeOptions, request: Request) -> Result<Reply, Error> {
    if let Some(mut client) = OperatorClient::connect(&options.data_dir)? {
        return client.call(request);
    }
    if matches!(request, Request::Status) {
        return Err(Error::NotRunning(options.data_dir));
    }
    let (system, span) = node_system(&options.node)?;
    let _entered = span.enter();
    let result = system.block_on(async move {
        // A new data directory waits out the clock skew as `mailmesh run` does.
        tokio::time::sleep(LocalNode::fresh_store_wait(&options)?).await;
        let node = LocalNode::start(options, node_env()?)?;
        let handle = NodeHandle::new(Rc::new(RefCell::new(node)), None);
        Ok::<_, Error>(handle.handle(request).await?)
    });
    stop(system)?;
    result
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

/// `send(..).await??` needs the outer actix error as a `MailError` first: the only way a send
/// fails is an actor that stopped, which MailError already calls "shutting down".
impl From<actix::MailboxError> for Error {
    fn from(e: actix::MailboxError) -> Self {
        Error::Mail(MailError::from(e))
    }
}
