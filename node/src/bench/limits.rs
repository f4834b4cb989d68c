//! This machine's own limits, measured in the same run as the rows they are compared with:
//! fdatasyncs/s of the disk the nodes' data is on, and what bare QUIC carries between two
//! processes on loopback (bytes/s, request round trips/s), with the cluster's TLS and transport
//! settings but no mailmesh behind them ([`super::peer`]).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailmesh_protocol::ids::NodeId;
use quinn::{Connection, Endpoint};

use super::nodes::Cluster;
use super::peer::{CLIENT_NAME, ECHO, SERVER_NAME, SINK};
use super::Scale;
use crate::cluster::certs;
use crate::cluster::quic::client_config;
use crate::cluster::tls::{TlsFiles, TlsIdentity};
use crate::error::Error;

/// Requests in flight at once for the parallel round-trip figure: a node's bound per peer.
pub const IN_FLIGHT: usize = crate::cluster::quic::IN_FLIGHT_PER_PEER;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub fdatasyncs_per_sec: f64,
    pub quic_bytes_per_sec: f64,
    pub round_trips_per_sec: f64,
    pub parallel_round_trips_per_sec: f64,
}

pub fn measure(root: &Path, scale: &Scale) -> Result<Limits, Error> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
    let fdatasyncs_per_sec = fdatasyncs_per_second(root, scale.probe)?;
    let quic = quic_limits(root, scale)?;
    Ok(Limits {
        fdatasyncs_per_sec,
        ..quic
    })
}

/// 2 KB write + fdatasync in a loop for `duration`, on a file in `dir`.
fn fdatasyncs_per_second(dir: &Path, duration: Duration) -> Result<f64, Error> {
    let path = dir.join("fdatasync.probe");
    let io = |e| Error::io(format!("disk probe {}", path.display()), e);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(io)?;
    let block = vec![b'x'; 2048];
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < duration {
        file.write_all(&block).map_err(io)?;
        file.sync_data().map_err(io)?;
        syncs += 1;
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).map_err(io)?;
    Ok(rate)
}

/// The bench-peer process; killed when dropped (it also exits when its stdin closes).
struct PeerProcess(Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quic_limits(root: &Path, scale: &Scale) -> Result<Limits, Error> {
    let cluster = Cluster::new(root)?;
    for name in [SERVER_NAME, CLIENT_NAME] {
        certs::make_node(name, cluster.ca_dir(), cluster.certs_dir(), 2)?;
    }
    let file = |name: &str, ext: &str| cluster.certs_dir().join(format!("{name}.{ext}"));
    let exe = std::env::current_exe().map_err(|e| Error::io("cannot find the mailmesh executable", e))?;
    let log_path = root.join("bench-peer.log");
    let peer_log = std::fs::File::create(&log_path)
        .map_err(|e| Error::io(format!("cannot create {}", log_path.display()), e))?;
    let mut child = Command::new(exe)
        .arg("bench-peer")
        .arg("--ca")
        .arg(cluster.ca_dir().join(certs::CA_CERT))
        .arg("--cert")
        .arg(file(SERVER_NAME, "pem"))
        .arg("--key")
        .arg(file(SERVER_NAME, "key"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(peer_log)
        .spawn()
        .map_err(|e| Error::io("cannot start mailmesh bench-peer", e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let peer = PeerProcess(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| Error::io("cannot read bench-peer's address", e))?;
    let address: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::Bench(format!("bench-peer did not say where it listens: {line:?}")))?;

    let client = NodeId::new(CLIENT_NAME).map_err(|e| Error::Bench(e.to_string()))?;
    let identity = TlsIdentity::load(
        &TlsFiles {
            ca: cluster.ca_dir().join(certs::CA_CERT),
            cert: file(CLIENT_NAME, "pem"),
            key: file(CLIENT_NAME, "key"),
        },
        &client,
    )
    .map_err(|e| Error::Bench(e.to_string()))?;
    let config = client_config(&identity).map_err(Error::Bench)?;
    // Current-thread, as a node's runtime is.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
    let limits = runtime.block_on(async {
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut endpoint = Endpoint::client(bind).map_err(|e| Error::io("cannot open a QUIC endpoint", e))?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(address, SERVER_NAME)
            .map_err(|e| Error::Bench(format!("cannot dial bench-peer: {e}")))?
            .await
            .map_err(|e| Error::Bench(format!("cannot reach bench-peer: {e}")))?;
        let quic_bytes_per_sec = sink_rate(&conn, scale.quic_bytes).await?;
        let round_trips_per_sec = round_trips(&conn, 1, scale.probe).await?;
        let parallel_round_trips_per_sec = round_trips(&conn, IN_FLIGHT, scale.probe).await?;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok::<_, Error>(Limits {
            fdatasyncs_per_sec: 0.0,
            quic_bytes_per_sec,
            round_trips_per_sec,
            parallel_round_trips_per_sec,
        })
    })?;
    drop(peer);
    Ok(limits)
}

/// Sends `total` bytes on one stream (1 MiB writes) and waits for the peer's count of them.
async fn sink_rate(conn: &Connection, total: u64) -> Result<f64, Error> {
    let failed = |e: String| Error::Bench(format!("QUIC bytes/s probe: {e}"));
    let chunk = vec![b'x'; 1 << 20];
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
    send.write_all(&[SINK]).await.map_err(|e| failed(e.to_string()))?;
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        send.write_all(&chunk[..n])
            .await
            .map_err(|e| failed(e.to_string()))?;
        sent += n as u64;
    }
    send.finish().map_err(|e| failed(e.to_string()))?;
    let answer = recv.read_to_end(8).await.map_err(|e| failed(e.to_string()))?;
    let secs = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(answer.try_into().map_err(|_| failed("short answer".into()))?);
    if received != total {
        return Err(failed(format!("the peer read {received} of {total} bytes")));
    }
    Ok(total as f64 / secs)
}

/// Request round trips (a stream each: 64 bytes out, echoed back) for `duration`, with
/// `in_flight` at once.
async fn round_trips(conn: &Connection, in_flight: usize, duration: Duration) -> Result<f64, Error> {
    let start = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let conn = conn.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut request = vec![b'r'; 64];
            request[0] = ECHO;
            while start.elapsed() < duration {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(&request).await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                let answer = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
                if answer.len() != request.len() - 1 {
                    return Err(format!(
                        "echo of {} bytes, not {}",
                        answer.len(),
                        request.len() - 1
                    ));
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, String>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result
            .map_err(|e| Error::Bench(format!("QUIC round-trip probe: {e}")))?
            .map_err(|e| Error::Bench(format!("QUIC round-trip probe: {e}")))?;
    }
    Ok(done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
