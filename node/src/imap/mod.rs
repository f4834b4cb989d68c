//! The IMAP front end (IMAP4rev1, RFC 3501; IMAP4rev2, RFC 9051, in part after `ENABLE
//! IMAP4rev2`): how a user's mail client reads and files what the store holds.
//!
//! - [`protocol`]: the sans-IO side: imap-codec splits bytes into lines and literals and
//!   decodes commands; this module adds the literal policy (continuation requests, LITERAL+,
//!   limits) and encodes responses, property-tested on arbitrary bytes;
//! - [`extensions`]: the grammar of the extensions imap-codec lacks (LIST-EXTENDED, LIST-STATUS),
//!   in nom, tried on a command imap-codec refused; [`listing`] decides what a LIST answers,
//!   with the [`special_use`] attributes `[imap.special_use]` gives mailboxes;
//! - [`utf7`]: modified UTF-7 (RFC 3501 5.1.3), mailbox names on the wire; UTF-8 in the store;
//! - [`metadata`]: METADATA (RFC 5464; imap-codec's grammar) over the mailboxes' annotations:
//!   entry names, what a GETMETADATA answers;
//! - [`session`]: one connection: the RFC 3501 states, logins through [`crate::auth`]
//!   (refused before TLS unless the listener allows a password in plaintext), STARTTLS, and the
//!   mailbox commands, carried out with Directory and Mailbox actor messages;
//! - [`messages`]: the commands on messages of the selected mailbox (FETCH, STORE, EXPUNGE,
//!   APPEND, COPY, MOVE) and the untagged EXISTS/EXPUNGE that keep the client's numbers in step
//!   with the session's [`sequence`] map; [`message`] cuts a raw message into what FETCH names;
//! - [`direct`]: `[imap] direct`: a login on a node that is not the primary of the user's
//!   INBOX is referred (RFC 2221) or proxied there, or served here when the primary is unknown
//!   or down;
//! - this module: `[imap]`'s options and the server a node runs (one listener with STARTTLS,
//!   one with implicit TLS, either or both).
//!
//! Flow: listener (`crate::listener`) → session → Directory (`ListMailboxes`, `CreateMailbox`,
//! `DeleteMailbox`, `RenameMailbox`, `Subscribe`, `ListSubscriptions`, `OpenMailbox`,
//! `ListAnnotation`) →
//! Mailbox (`GetState`, `ListUids`, `Fetch`, `FetchBody`, `StoreFlags`, `Expunge`, `Append`,
//! `Transfer`, `GetAnnotations`, `SetAnnotations`). Nothing in `actors/` knows IMAP syntax.

pub mod direct;
pub mod esearch;
pub mod extensions;
pub mod listing;
pub mod message;
pub mod messages;
pub mod metadata;
pub mod mime;
pub mod protocol;
pub mod search;
pub mod sequence;
pub mod session;
pub mod special_use;
#[cfg(test)]
mod tests;
pub mod utf7;

use std::cell::RefCell;
use std::rc::Rc;

use actix::Addr;
use mailmesh_actors::directory::Directory;
use mailmesh_actors::mailbox::Limits;
use mailmesh_protocol::ids::NodeId;
use tracing::error;

use self::direct::{Direct, Directing};
use self::metadata::MetadataLimits;
use self::special_use::SpecialUses;
use crate::auth::Authenticator;
use crate::client_tls::{ListenAddress, ListenerTlsOptions, ServerTls};
use crate::cluster::ClusterOptions;
use crate::error::Error;
use crate::listener::{self, ConnectionLimits, Listener, ListenerSpec, ListenerStats};

/// The greeting's and ID's name for this server.
pub const IMPLEMENTATION: &str = concat!("mailmesh ", env!("CARGO_PKG_VERSION"));

/// One IMAP listener, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapListenerOptions {
    pub listen: ListenAddress,
    /// Permission bits of a Unix socket.
    pub socket_mode: Option<u32>,
    /// `implicit` says which of the two it is (`listen_tls`: TLS from the first byte).
    pub tls: ListenerTlsOptions,
}

/// `[imap]`, validated: a STARTTLS listener (`listen`), an implicit TLS one (`listen_tls`), or
/// both, with the same limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapOptions {
    pub listeners: Vec<ImapListenerOptions>,
    pub limits: ConnectionLimits,
    /// `[imap.special_use]`: LIST's `\Sent`, `\Trash`, ... (applied at the next start).
    pub special_use: SpecialUses,
    /// `[imap] direct`: where a login on a node that is not the INBOX's primary goes.
    pub direct: Direct,
    /// `[imap] metadata_max_entries`: annotations with a value one mailbox may hold.
    pub metadata_max_entries: usize,
    /// `[imap] proxy_ca`: the CA a proxy trusts for the primaries' IMAP certificates; `None`:
    /// the cluster CA.
    pub proxy_ca: Option<std::path::PathBuf>,
}

/// What every session of a listener shares.
pub struct ImapContext {
    pub auth: Authenticator,
    /// For STARTTLS (`None`: no certificate configured, or implicit TLS does it already).
    pub tls: Option<ServerTls>,
    pub tls_options: ListenerTlsOptions,
    pub directory: Addr<Directory>,
    pub special_use: SpecialUses,
    /// `[imap] direct` and the peers' IMAP addresses, shared by every listener; a reload
    /// replaces it.
    pub directing: Rc<RefCell<Directing>>,
    /// The longest command after a login: an APPEND's message (`limits.max_message_bytes`)
    /// with room for the command around it.
    pub max_command_bytes: u32,
    pub metadata: MetadataLimits,
}

/// The running IMAP listeners.
pub struct ImapServer {
    listeners: Vec<(Listener, Option<ServerTls>)>,
    directing: Rc<RefCell<Directing>>,
}

impl ImapServer {
    pub async fn start(
        options: &ImapOptions,
        auth: Authenticator,
        directory: Addr<Directory>,
        limits: Limits,
        node: NodeId,
        cluster: Option<&ClusterOptions>,
    ) -> Result<ImapServer, Error> {
        let directing = Rc::new(RefCell::new(Directing::new(options, node, cluster)));
        let max_command_bytes =
            u32::try_from(limits.max_message_bytes.saturating_add(session::COMMAND_ROOM)).unwrap_or(u32::MAX);
        let metadata = MetadataLimits {
            max_entries: options.metadata_max_entries,
            max_value_bytes: limits.max_annotation_bytes,
        };
        let mut listeners = Vec::new();
        for one in &options.listeners {
            let tls = match &one.tls.files {
                Some(files) => {
                    Some(ServerTls::load("imap", files).map_err(|e| Error::Listener(e.to_string()))?)
                }
                None => None,
            };
            let implicit = one.tls.implicit;
            let context = Rc::new(ImapContext {
                auth: auth.clone(),
                tls: if implicit { None } else { tls.clone() },
                tls_options: one.tls.clone(),
                directory: directory.clone(),
                special_use: options.special_use.clone(),
                directing: directing.clone(),
                max_command_bytes,
                metadata,
            });
            let spec = ListenerSpec {
                protocol: "imap",
                address: one.listen.clone(),
                socket_mode: one.socket_mode,
                implicit_tls: if implicit { tls.clone() } else { None },
                limits: options.limits,
                refusal: b"* BYE [UNAVAILABLE] too many connections; try again later\r\n",
            };
            let listener = listener::start(spec, move |conn, peer| {
                session::serve(conn, peer, context.clone())
            })
            .await?;
            listeners.push((listener, tls));
        }
        Ok(ImapServer { listeners, directing })
    }

    /// A reload: certificates and keys are read again, `direct` and the peers' IMAP addresses
    /// apply to the next logins. Listen addresses apply at the next start.
    pub fn reload(&self, options: Option<&ImapOptions>, cluster: Option<&ClusterOptions>) {
        let Some(options) = options else { return };
        let node = self.directing.borrow().node.clone();
        *self.directing.borrow_mut() = Directing::new(options, node, cluster);
        for ((_, tls), one) in self.listeners.iter().zip(&options.listeners) {
            if let (Some(tls), Some(files)) = (tls, &one.tls.files) {
                if let Err(e) = tls.reload(files) {
                    error!(error = %e, "IMAP certificate not reloaded; still using the previous one");
                }
            }
        }
    }

    pub fn stats(&self) -> Vec<std::sync::Arc<ListenerStats>> {
        self.listeners.iter().map(|(l, _)| l.stats.clone()).collect()
    }
}
