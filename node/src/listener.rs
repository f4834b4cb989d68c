//! Accepting client connections for any protocol (LMTP today; ManageSieve and IMAP next): a TCP
//! or Unix socket, implicit TLS where configured, a bound on connections per IP address and in
//! all, and the counts `mailmesh status` shows.
//!
//! Each accepted connection is served by its own task on the node's thread (the actors' thread;
//! a session only awaits I/O and actor answers, never blocks). A connection over a limit is told
//! so in the protocol's words (`refusal`) and closed; the others are not affected.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client_tls::{Connection, ListenAddress, ServerTls};
use crate::error::Error;

/// Bounds on what clients of one listener may hold open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub per_address: usize,
    pub total: usize,
}

/// One listener's counts, shared with the status and metrics.
#[derive(Debug)]
pub struct ListenerStats {
    pub protocol: &'static str,
    pub address: String,
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    per_address: Mutex<BTreeMap<IpAddr, usize>>,
}

impl ListenerStats {
    fn new(protocol: &'static str, address: String) -> Arc<ListenerStats> {
        Arc::new(ListenerStats {
            protocol,
            address,
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            per_address: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip` if the limits allow.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>, limits: ConnectionLimits) -> Option<Slot> {
        if self.open() as usize >= limits.total {
            return None;
        }
        if let Some(ip) = ip {
            let mut per = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
            let count = per.entry(ip).or_insert(0);
            if *count >= limits.per_address {
                return None;
            }
            *count += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            stats: self.clone(),
            ip,
        })
    }
}

/// A connection's place in the counts; dropping it frees the place.
struct Slot {
    stats: Arc<ListenerStats>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per = self.stats.per_address.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per.remove(&ip);
                }
            }
        }
    }
}

/// Who is on the other end.
#[derive(Clone, Debug)]
pub struct Peer {
    /// `None` for a Unix socket.
    pub ip: Option<IpAddr>,
    /// For logs and Received headers: `ip:port` or `unix`.
    pub display: String,
}

/// A listener being served; dropping it stops accepting (open sessions finish on their own) and
/// removes its Unix socket file.
pub struct Listener {
    pub stats: Arc<ListenerStats>,
    accept: JoinHandle<()>,
    unix_path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How a listener treats each connection.
pub struct ListenerSpec {
    pub protocol: &'static str,
    pub address: ListenAddress,
    /// Permission bits for a Unix socket (`None`: as the umask leaves them).
    pub socket_mode: Option<u32>,
    /// TLS from the first byte, when configured.
    pub implicit_tls: Option<ServerTls>,
    pub limits: ConnectionLimits,
    /// The line sent to a connection over a limit before it is closed.
    pub refusal: &'static [u8],
}

/// Binds `spec.address` and serves every connection with `serve` on the current (actix)
/// runtime.
pub async fn start<F, Fut>(spec: ListenerSpec, serve: F) -> Result<Listener, Error>
where
    F: Fn(Connection, Peer) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let stats = ListenerStats::new(spec.protocol, spec.address.to_string());
    let serve = Rc::new(serve);
    let cannot = |e: std::io::Error| {
        Error::io(
            format!("cannot listen for {} on {}", spec.protocol, spec.address),
            e,
        )
    };
    let address = spec.address.clone();
    let (accept, unix_path) = match &address {
        ListenAddress::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(cannot)?;
            let local = listener.local_addr().map_err(cannot)?;
            info!(protocol = spec.protocol, address = %local, "listening");
            let stats = stats.clone();
            let spec = Rc::new(spec);
            let task = actix::spawn(async move {
                loop {
                    let (stream, from) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: this connection is lost,
                            // the listener goes on.
                            warn!(protocol = spec.protocol, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let peer = Peer {
                        ip: Some(from.ip()),
                        display: from.to_string(),
                    };
                    admit(&spec, &stats, Connection::plain(stream), peer, serve.clone());
                }
            });
            (task, None)
        }
        ListenAddress::Unix(path) => {
            if std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                // A socket left by a node that was killed: the store lock admits one node per data
                // directory, and a second node configured on the same path is an operator's
                // mistake that this makes visible at once (the first stops receiving).
                let _ = std::fs::remove_file(path);
            }
            let listener = bind_unix(path, spec.socket_mode).map_err(cannot)?;
            info!(protocol = spec.protocol, socket = %path.display(), "listening");
            let stats = stats.clone();
            let spec = Rc::new(spec);
            let task = actix::spawn(async move {
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            warn!(protocol = spec.protocol, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let peer = Peer {
                        ip: None,
                        display: "unix".to_string(),
                    };
                    admit(&spec, &stats, Connection::plain(stream), peer, serve.clone());
                }
            });
            (task, Some(path.clone()))
        }
    };
    Ok(Listener {
        stats,
        accept,
        unix_path,
    })
}

/// Binds a Unix socket at `path` with `mode`: under a temporary name in the same directory,
/// given its permissions, then renamed into place, so no client ever finds it with others.
fn bind_unix(path: &std::path::Path, mode: Option<u32>) -> std::io::Result<UnixListener> {
    let Some(mode) = mode else {
        return UnixListener::bind(path);
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the socket path has no file name"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
}

fn admit<F, Fut>(
    spec: &Rc<ListenerSpec>,
    stats: &Arc<ListenerStats>,
    mut conn: Connection,
    peer: Peer,
    serve: Rc<F>,
) where
    F: Fn(Connection, Peer) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let slot = stats.admit(peer.ip, spec.limits);
    let spec = spec.clone();
    let stats = stats.clone();
    actix::spawn(async move {
        let Some(slot) = slot else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            debug!(protocol = spec.protocol, peer = %peer.display, "connection refused: over the limit");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let _ = conn.write_all(spec.refusal).await;
                let _ = conn.shutdown().await;
            })
            .await;
            return;
        };
        if let Some(tls) = &spec.implicit_tls {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(30), conn.start_tls(tls.acceptor()));
            conn = match handshake.await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    debug!(protocol = spec.protocol, peer = %peer.display, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
        }
        serve(conn, peer).await;
        drop(slot);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_per_address_and_in_all() {
        let stats = ListenerStats::new("lmtp", "x".into());
        let limits = ConnectionLimits {
            per_address: 2,
            total: 3,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = stats.admit(Some(a), limits).unwrap();
        let _a2 = stats.admit(Some(a), limits).unwrap();
        assert!(stats.admit(Some(a), limits).is_none(), "a third from one address");
        let _b1 = stats.admit(Some(b), limits).unwrap();
        assert!(stats.admit(None, limits).is_none(), "over the total");
        assert_eq!(stats.open(), 3);
        drop(a1);
        assert_eq!(stats.open(), 2);
        assert!(
            stats.admit(Some(a), limits).is_some(),
            "a freed place is taken again"
        );
    }
}
