//! `mailmesh bench-peer` (hidden): a bare QUIC server with the cluster's own TLS and transport
//! settings and nothing of mailmesh behind it, so the benchmark can measure what QUIC itself
//! carries between two processes on this machine.
//!
//! Every request is one bidirectional stream whose first byte says what to do: `e` echoes the
//! rest of the stream back (a round trip), `s` reads the rest to its end and answers with the
//! number of bytes read, as 8 bytes big-endian (a sink, for bytes/s). The server prints
//! `listening <address>` on stdout once it accepts, and exits when its standard input closes, so
//! it never outlives the benchmark that started it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use mailmesh_protocol::ids::NodeId;
use quinn::{Endpoint, RecvStream, SendStream};

use crate::cluster::quic::server_config;
use crate::cluster::tls::{TlsFiles, TlsIdentity};
use crate::error::Error;

/// The names on the certificates of the two ends.
pub const SERVER_NAME: &str = "bench-peer";
pub const CLIENT_NAME: &str = "bench-client";

pub const ECHO: u8 = b'e';
pub const SINK: u8 = b's';

/// The largest echo request; anything longer is cut off there.
const MAX_ECHO: usize = 64 * 1024;

/// What `mailmesh bench-peer` is given.
pub struct PeerArgs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub listen: SocketAddr,
}

/// Serves until standard input closes.
pub fn serve(args: PeerArgs) -> Result<(), Error> {
    let name = NodeId::new(SERVER_NAME).map_err(|e| Error::Bench(e.to_string()))?;
    let client = NodeId::new(CLIENT_NAME).map_err(|e| Error::Bench(e.to_string()))?;
    let identity = TlsIdentity::load(
        &TlsFiles {
            ca: args.ca,
            cert: args.cert,
            key: args.key,
        },
        &name,
    )
    .map_err(|e| Error::Bench(e.to_string()))?;
    let config = server_config(&identity, BTreeSet::from([client])).map_err(Error::Bench)?;
    // A current-thread runtime, as a node's: the same one core's worth of QUIC work.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    runtime.block_on(async move {
        let endpoint = Endpoint::server(config, args.listen)
            .map_err(|e| Error::io(format!("cannot listen on {}", args.listen), e))?;
        let address = endpoint
            .local_addr()
            .map_err(|e| Error::io("cannot read the listening address", e))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {address}")
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("cannot write to stdout", e))?;
        drop(out);
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve_stream(send, recv));
                }
            });
        }
        Ok(())
    })
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream) {
    let mut mode = [0u8; 1];
    if recv.read_exact(&mut mode).await.is_err() {
        return;
    }
    match mode[0] {
        ECHO => {
            let Ok(request) = recv.read_to_end(MAX_ECHO).await else {
                return;
            };
            let _ = send.write_all(&request).await;
        }
        SINK => {
            let mut total: u64 = 0;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                match recv.read(&mut buffer).await {
                    Ok(Some(n)) => total += n as u64,
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            let _ = send.write_all(&total.to_be_bytes()).await;
        }
        _ => {}
    }
    let _ = send.finish();
    // Wait until the client has everything before the stream's state goes.
    let _ = send.stopped().await;
}
