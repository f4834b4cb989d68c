//! The ManageSieve front end (RFC 5804): how a user's mail client (Thunderbird's sieve add-on,
//! sieve-connect, Roundcube's managesieve plugin) manages their sieve scripts.
//!
//! - [`protocol`]: the sans-IO command parser (atoms, quoted strings, `{n+}` literals, bounds)
//!   and the response encoder, property-tested on arbitrary bytes;
//! - [`session`]: one connection: logins (PLAIN and LOGIN through [`crate::auth`], refused
//!   before TLS unless the listener allows a password in plaintext), STARTTLS, and the script
//!   commands;
//! - this module: `[managesieve]`'s options and the server a node runs.
//!
//! Flow: listener (`crate::listener`) → session → Directory (`PutScript`, `SetActiveScript`,
//! `GetScript`, `ListScripts`, `DeleteScript`, `RenameScript`): the same replicated sieve state
//! `mailmesh sieve put|activate` writes and LMTP delivery reads.

pub mod protocol;
pub mod session;
#[cfg(test)]
mod tests;

use std::rc::Rc;

use actix::Addr;
use mailmesh_actors::directory::Directory;
use tracing::error;

use crate::auth::Authenticator;
use crate::client_tls::{ListenAddress, ListenerTlsOptions, ServerTls};
use crate::error::Error;
use crate::listener::{self, ConnectionLimits, Listener, ListenerSpec, ListenerStats};

/// The IMPLEMENTATION capability.
pub const IMPLEMENTATION: &str = concat!("mailmesh ", env!("CARGO_PKG_VERSION"));
/// The SASL mechanisms offered (where a password may be sent).
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "LOGIN"];

/// `[managesieve]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManageSieveOptions {
    pub listen: ListenAddress,
    /// Permission bits of a Unix socket.
    pub socket_mode: Option<u32>,
    pub tls: ListenerTlsOptions,
    pub limits: ConnectionLimits,
}

/// What every session of the listener shares.
pub struct SieveContext {
    pub auth: Authenticator,
    /// For STARTTLS (`None`: no certificate configured, or implicit TLS does it already).
    pub tls: Option<ServerTls>,
    pub tls_options: ListenerTlsOptions,
    pub directory: Addr<Directory>,
    /// The largest script taken: `limits.max_script_bytes`, and at most what the sieve compiler
    /// takes.
    pub max_script_bytes: usize,
}

/// The running ManageSieve listener.
pub struct ManageSieveServer {
    listener: Listener,
    tls: Option<ServerTls>,
}

impl ManageSieveServer {
    pub async fn start(
        options: &ManageSieveOptions,
        max_script_bytes: usize,
        auth: Authenticator,
        directory: Addr<Directory>,
    ) -> Result<ManageSieveServer, Error> {
        let tls = match &options.tls.files {
            Some(files) => {
                Some(ServerTls::load("managesieve", files).map_err(|e| Error::Listener(e.to_string()))?)
            }
            None => None,
        };
        let implicit = options.tls.implicit;
        let context = Rc::new(SieveContext {
            auth,
            tls: if implicit { None } else { tls.clone() },
            tls_options: options.tls.clone(),
            directory,
            max_script_bytes: max_script_bytes.min(crate::sieve::limits::MAX_SCRIPT_BYTES),
        });
        let spec = ListenerSpec {
            protocol: "managesieve",
            address: options.listen.clone(),
            socket_mode: options.socket_mode,
            implicit_tls: if implicit { tls.clone() } else { None },
            limits: options.limits,
            refusal: b"BYE \"too many connections; try again later\"\r\n",
        };
        let listener = listener::start(spec, move |conn, peer| {
            session::serve(conn, peer, context.clone())
        })
        .await?;
        Ok(ManageSieveServer { listener, tls })
    }

    /// A reload: the certificate and key are read again. The listen address applies at the next
    /// start.
    pub fn reload(&self, options: Option<&ManageSieveOptions>) {
        if let (Some(tls), Some(files)) = (&self.tls, options.and_then(|o| o.tls.files.as_ref())) {
            if let Err(e) = tls.reload(files) {
                error!(error = %e, "ManageSieve certificate not reloaded; still using the previous one");
            }
        }
    }

    pub fn stats(&self) -> std::sync::Arc<ListenerStats> {
        self.listener.stats.clone()
    }
}
