//! The operator socket a running node serves: `<data_dir>/mailmesh.sock`, mode 0600, so only the
//! node's own user can reach it.
//!
//! The socket is made under a temporary name, restricted to 0600, and only then renamed into
//! place: nobody can connect in the moment between its creation and the change of its mode. A
//! socket file left by a killed node is replaced: the store admits one process per data
//! directory, so once this node opened it, no other node can be serving that socket.
//!
//! Each connection is served by its own task on the node's thread, one request at a time. A
//! frame that is too large, truncated, undecodable or of another protocol version gets an error
//! answer (when the connection still takes one) and that connection is closed; nothing else is
//! affected.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::protocol::{
    encode_frame, ErrorKind, OperatorError, RequestEnvelope, ResponseEnvelope, VersionProbe, SOCKET_NAME,
    VERSION,
};
use super::NodeHandle;
use crate::error::Error;

/// The socket being served; dropping it stops accepting and removes the socket file.
pub struct OperatorServer {
    path: PathBuf,
    accept: JoinHandle<()>,
}

/// Where the operator socket of a node with data in `data_dir` is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

impl OperatorServer {
    /// Creates the socket and serves it on the current (actix) runtime. `max_frame` bounds a
    /// request: the node's largest message plus room for the envelope.
    pub fn start(data_dir: &Path, handle: NodeHandle, max_frame: u64) -> Result<Self, Error> {
        let path = socket_path(data_dir);
        let staging = data_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
        let cannot = |what: &str, e: std::io::Error| {
            Error::io(format!("cannot {what} the operator socket {}", path.display()), e)
        };
        let _ = std::fs::remove_file(&staging);
        let listener = std::os::unix::net::UnixListener::bind(&staging).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EINVAL) {
                " (a socket path is limited to 107 bytes: use a shorter storage.data_dir)"
            } else {
                ""
            };
            Error::io(
                format!("cannot create the operator socket {}{hint}", staging.display()),
                e,
            )
        })?;
        let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| cannot("restrict", e))
            .and_then(|()| std::fs::rename(&staging, &path).map_err(|e| cannot("place", e)));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| cannot("configure", e))?;
        let listener = UnixListener::from_std(listener).map_err(|e| cannot("serve", e))?;
        info!(socket = %path.display(), "operator socket ready");
        let accept = actix::spawn(accept_loop(listener, handle, max_frame));
        Ok(OperatorServer { path, accept })
    }
}

impl Drop for OperatorServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, handle: NodeHandle, max_frame: u64) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                actix::spawn(serve_connection(stream, handle.clone(), max_frame));
            }
            Err(e) => {
                // Out of file descriptors and the like: the node goes on; the next accept may work.
                warn!(error = %e, "operator socket: cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a connection is closed after its current frame.
enum Closing {
    /// The client closed it between requests.
    Done,
    /// The client sent something unusable; it was told why (if it still listens).
    Bad(OperatorError),
    /// Reading or writing failed (the client went away mid-frame).
    Io(std::io::Error),
}

async fn serve_connection(mut stream: UnixStream, handle: NodeHandle, max_frame: u64) {
    loop {
        let closing = match read_request(&mut stream, max_frame).await {
            Ok(envelope) => {
                let name = envelope.request.name();
                debug!(request = name, "operator request");
                let result = handle.handle(envelope.request).await;
                if let Err(e) = &result {
                    debug!(request = name, error = %e, "operator request refused");
                }
                let response = encode_frame(&ResponseEnvelope {
                    version: VERSION,
                    result,
                });
                match stream.write_all(&response).await {
                    Ok(()) => continue,
                    Err(e) => Closing::Io(e),
                }
            }
            Err(closing) => closing,
        };
        match closing {
            Closing::Done => {}
            Closing::Bad(error) => {
                warn!(error = %error, "operator socket: bad request; closing that connection");
                let response = encode_frame(&ResponseEnvelope {
                    version: VERSION,
                    result: Err(error),
                });
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            }
            Closing::Io(e) => debug!(error = %e, "operator connection lost"),
        }
        return;
    }
}

async fn read_request(stream: &mut UnixStream, max_frame: u64) -> Result<RequestEnvelope, Closing> {
    let mut length = [0u8; 4];
    match stream.read(&mut length[..1]).await {
        Ok(0) => return Err(Closing::Done),
        Ok(_) => {}
        Err(e) => return Err(Closing::Io(e)),
    }
    if let Err(e) = stream.read_exact(&mut length[1..]).await {
        return Err(truncated(e, "its length"));
    }
    let length = u64::from(u32::from_be_bytes(length));
    if length > max_frame {
        return Err(Closing::Bad(OperatorError::new(
            ErrorKind::BadRequest,
            format!("a request of {length} bytes exceeds the limit of {max_frame} bytes"),
        )));
    }
    // Read as it arrives rather than allocated up front from the announced length.
    let mut frame = Vec::new();
    match (&mut *stream).take(length).read_to_end(&mut frame).await {
        Ok(n) if n as u64 == length => {}
        Ok(n) => {
            return Err(truncated(
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{n} of {length} bytes"),
                ),
                "its body",
            ))
        }
        Err(e) => return Err(truncated(e, "its body")),
    }
    let probe: VersionProbe = rmp_serde::from_slice(&frame).map_err(|e| {
        Closing::Bad(OperatorError::new(
            ErrorKind::BadRequest,
            format!("undecodable request: {e}"),
        ))
    })?;
    if probe.version != VERSION {
        return Err(Closing::Bad(OperatorError::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "operator protocol version {} is not supported; this node speaks version {VERSION} \
                 (use the mailmesh binary the node runs)",
                probe.version
            ),
        )));
    }
    rmp_serde::from_slice(&frame).map_err(|e| {
        Closing::Bad(OperatorError::new(
            ErrorKind::BadRequest,
            format!("undecodable request: {e}"),
        ))
    })
}

fn truncated(e: std::io::Error, part: &str) -> Closing {
    Closing::Bad(OperatorError::new(
        ErrorKind::BadRequest,
        format!("truncated request: the connection ended within {part} ({e})"),
    ))
}
