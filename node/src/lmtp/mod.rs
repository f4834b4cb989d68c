//! The LMTP front end (RFC 2033): how a mail transfer agent (Postfix, Exim) hands a node mail.
//!
//! - [`protocol`]: the sans-IO state machine (commands, replies, DATA with dot-unstuffing,
//!   bounds), property-tested on arbitrary bytes;
//! - [`session`]: one connection: the machine's events carried out, replies written;
//! - [`delivery`]: one message to one recipient: the user's sieve script, then appends that
//!   answer once durable;
//! - this module: `[lmtp]`'s options and the server a node runs.
//!
//! Flow: listener (`crate::listener`) → session → for each recipient, Directory (`GetUserSieve`,
//! `OpenMailbox`, `CreateMailbox`) and Mailbox (`Append`, answered after the group commit) →
//! one reply per recipient.

pub mod delivery;
pub mod protocol;
pub mod session;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use actix::Addr;
use mailmesh_actors::directory::Directory;
use tracing::error;

use self::delivery::{Deliverer, DeliveryCounters};
use crate::auth::Authenticator;
use crate::client_tls::{ListenAddress, ListenerTlsOptions, ServerTls};
use crate::error::Error;
use crate::listener::{self, ConnectionLimits, Listener, ListenerSpec, ListenerStats};

/// `[lmtp]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmtpOptions {
    pub listen: ListenAddress,
    /// Permission bits of a Unix socket.
    pub socket_mode: Option<u32>,
    pub tls: ListenerTlsOptions,
    pub limits: ConnectionLimits,
    pub max_message_bytes: u64,
    /// Message data all sessions together may hold while reading DATA.
    pub max_data_bytes: u64,
}

/// What every session of the listener shares.
pub struct LmtpContext {
    pub node_name: String,
    pub max_message_bytes: u64,
    pub auth: Authenticator,
    /// For STARTTLS (`None`: no certificate configured, or implicit TLS does it already).
    pub tls: Option<ServerTls>,
    pub deliverer: Deliverer,
    pub data_budget: DataBudget,
}

/// The message data every session together holds while reading DATA, bounded: the per-address
/// connection limit bounds what one address holds, this what all of them hold. A session that
/// would go over drops its message's data and refuses it with 452 (the MTA tries again later).
#[derive(Debug)]
pub struct DataBudget {
    limit: u64,
    used: Cell<u64>,
}

impl DataBudget {
    pub fn new(limit: u64) -> DataBudget {
        DataBudget {
            limit,
            used: Cell::new(0),
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.get()
    }
}

/// What one session holds of the [`DataBudget`]; given back when dropped.
pub struct Reservation<'a> {
    budget: &'a DataBudget,
    held: u64,
}

impl<'a> Reservation<'a> {
    pub fn new(budget: &'a DataBudget) -> Reservation<'a> {
        Reservation { budget, held: 0 }
    }

    /// Holds `bytes` in all (more or less than before); false, holding what it held, if the
    /// budget has not that much left.
    pub fn resize(&mut self, bytes: u64) -> bool {
        let used = self.budget.used.get();
        if bytes > self.held && used + (bytes - self.held) > self.budget.limit {
            return false;
        }
        self.budget.used.set(used - self.held + bytes);
        self.held = bytes;
        true
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.resize(0);
    }
}

/// The running LMTP listener.
pub struct LmtpServer {
    listener: Listener,
    tls: Option<ServerTls>,
}

impl LmtpServer {
    pub async fn start(
        options: &LmtpOptions,
        node_name: String,
        auth: Authenticator,
        directory: Addr<Directory>,
        counters: Arc<DeliveryCounters>,
    ) -> Result<LmtpServer, Error> {
        let tls = match &options.tls.files {
            Some(files) => Some(ServerTls::load("lmtp", files).map_err(|e| Error::Listener(e.to_string()))?),
            None => None,
        };
        let implicit = options.tls.implicit;
        let context = Rc::new(LmtpContext {
            node_name,
            max_message_bytes: options.max_message_bytes,
            auth,
            tls: if implicit { None } else { tls.clone() },
            deliverer: Deliverer::new(directory, counters),
            data_budget: DataBudget::new(options.max_data_bytes),
        });
        let spec = ListenerSpec {
            protocol: "lmtp",
            address: options.listen.clone(),
            socket_mode: options.socket_mode,
            implicit_tls: if implicit { tls.clone() } else { None },
            limits: options.limits,
            refusal: b"421 4.7.0 too many connections; try again later\r\n",
        };
        let listener = listener::start(spec, move |conn, peer| {
            session::serve(conn, peer, context.clone())
        })
        .await?;
        Ok(LmtpServer { listener, tls })
    }

    /// A reload: the certificate and key are read again (a renewed certificate is used by the
    /// next handshake). The listen address applies at the next start.
    pub fn reload(&self, options: Option<&LmtpOptions>) {
        if let (Some(tls), Some(files)) = (&self.tls, options.and_then(|o| o.tls.files.as_ref())) {
            if let Err(e) = tls.reload(files) {
                error!(error = %e, "LMTP certificate not reloaded; still using the previous one");
            }
        }
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.listener.stats.clone()
    }
}
