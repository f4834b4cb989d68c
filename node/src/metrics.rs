//! The Prometheus endpoint: `GET /metrics` on `[metrics] listen`, off unless that is set.
//!
//! Nothing is counted twice: each scrape asks the actors for what they already keep (each
//! Channel's stats, the CommitGroup's counters and flush-duration buckets, the Directory's active
//! mailboxes, the node's append counter) and the transport for its links, through the same
//! [`NodeHandle`] the operator socket uses, and encodes that snapshot with `prometheus-client`'s
//! text encoder. The HTTP side is as small as a scrape needs: one request per connection, read
//! with a size and time bound, answered and closed, so a stuck or hostile client holds one task
//! for at most [`REQUEST_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use mailmesh_actors::commit_group::{CommitStats, GetCommitStats, FLUSH_BUCKETS_MICROS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::operator::protocol::NodeStatus;
use crate::operator::NodeHandle;

/// Longest a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The endpoint being served; dropping it stops it.
pub struct MetricsServer {
    accept: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl MetricsServer {
    /// Binds `listen` and serves it on the current (actix) runtime.
    pub async fn start(listen: SocketAddr, handle: NodeHandle) -> Result<Self, Error> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            Error::io(
                format!("cannot listen for metrics on {listen} (metrics.listen)"),
                e,
            )
        })?;
        let bound = listener.local_addr().unwrap_or(listen);
        info!(addr = %bound, "metrics endpoint ready");
        let accept = actix::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        actix::spawn(serve(stream, handle.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "metrics endpoint: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(MetricsServer { accept })
    }
}

async fn serve(mut stream: TcpStream, handle: NodeHandle) {
    let (status, content_type, body) =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => (
                "408 Request Timeout",
                "text/plain",
                "request not received in time\n".to_string(),
            ),
            Ok(Err(problem)) => ("400 Bad Request", "text/plain", format!("{problem}\n")),
            Ok(Ok(head)) => route(&head, &handle).await,
        };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        debug!(error = %e, "metrics client went away");
    }
    let _ = stream.shutdown().await;
}

async fn route(head: &str, handle: &NodeHandle) -> (&'static str, &'static str, String) {
    let mut words = head.split_ascii_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if path != "/metrics" && !path.starts_with("/metrics?") {
        return (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_string(),
        );
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "only GET\n".to_string());
    }
    match scrape(handle).await {
        Ok(text) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
    }
}

/// Reads up to the end of the request head (a blank line).
async fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the request ended before its head did".into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return String::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_string());
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Err(format!("the request head exceeds {MAX_REQUEST_BYTES} bytes"));
        }
    }
}

/// Everything one scrape reports, taken from the actors at once.
#[derive(Debug)]
struct Snapshot {
    status: NodeStatus,
    commits: CommitStats,
    appends: u64,
    front: FrontEndCounts,
}

/// The front ends' counters at the scrape.
#[derive(Debug, Default)]
struct FrontEndCounts {
    /// (outcome, count): delivered, rejected, failed.
    deliveries: Vec<(&'static str, u64)>,
    /// (action, count): keep, fileinto, discard, reject.
    sieve_actions: Vec<(&'static str, u64)>,
    sieve_errors: u64,
    failed_logins: u64,
    delayed_logins: u64,
}

impl FrontEndCounts {
    fn take(handle: &NodeHandle) -> FrontEndCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let d = &handle.front_ends.deliveries;
        FrontEndCounts {
            deliveries: vec![
                ("delivered", d.delivered.load(Relaxed)),
                ("rejected", d.rejected.load(Relaxed)),
                ("failed", d.failed.load(Relaxed)),
            ],
            sieve_actions: vec![
                ("keep", d.sieve_keep.load(Relaxed)),
                ("fileinto", d.sieve_fileinto.load(Relaxed)),
                ("discard", d.sieve_discard.load(Relaxed)),
                ("reject", d.sieve_reject.load(Relaxed)),
            ],
            sieve_errors: d.sieve_errors.load(Relaxed),
            failed_logins: handle.front_ends.auth.as_ref().map_or(0, |a| a.failed_logins()),
            delayed_logins: handle
                .front_ends
                .auth
                .as_ref()
                .map_or(0, |a| a.delayed_attempts()),
        }
    }
}

async fn scrape(handle: &NodeHandle) -> Result<String, Error> {
    let status = handle.status().await?;
    let (commit, appends) = {
        let node = handle.node.borrow();
        (node.commit.clone(), node.context.counters.snapshot().appended)
    };
    let commits = commit.send(GetCommitStats).await?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        status,
        commits,
        appends,
        front: FrontEndCounts::take(handle),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|_| Error::io("cannot encode the metrics", std::io::Error::other("format error")))?;
    Ok(text)
}

/// One value of a metric, with its label set (empty for a node-wide metric).
type Series = Vec<(Vec<(&'static str, String)>, f64)>;

impl Snapshot {
    /// Writes one metric family of `kind` with `series`.
    fn family(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        series: Series,
    ) -> Result<(), std::fmt::Error> {
        if series.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in series {
            let value = match kind {
                MetricType::Counter => Value::Counter(value),
                _ => Value::Gauge(value),
            };
            if labels.is_empty() {
                // Written bare (`name value`), not with an empty label set (`name{} value`).
                value.encode(&mut metric)?;
            } else {
                value.encode(&mut metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn per_peer(&self, value: impl Fn(&crate::operator::protocol::PeerStatus) -> Option<f64>) -> Series {
        self.status
            .peers
            .iter()
            .filter_map(|p| value(p).map(|v| (vec![("peer", p.name.clone())], v)))
            .collect()
    }
}

/// A single number, encoded as the kind its family declared.
enum Value {
    Counter(f64),
    Gauge(f64),
}

impl Value {
    fn encode(self, encoder: &mut prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Counter(v) => {
                encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&v, None)
            }
            Value::Gauge(v) => encoder.encode_gauge(&v),
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        // Per peer. A link column the node has no transport for is absent rather than 0.
        Self::family(e, "mailmesh_peer_connected", "1 if the connection to the peer is up (the transport's view; without one, whether the engine reached the peer)", Gauge,
            self.per_peer(|p| Some(flag(p.connected.unwrap_or(p.replicating)))))?;
        Self::family(
            e,
            "mailmesh_peer_replicating",
            "1 if the replication engine reached the peer (its Hello was answered)",
            Gauge,
            self.per_peer(|p| Some(flag(p.replicating))),
        )?;
        Self::family(
            e,
            "mailmesh_peer_sync_log_depth",
            "Items in the sync log for the peer (mailboxes, mailbox lists, subscriptions, scripts)",
            Gauge,
            self.per_peer(|p| Some(p.log_depth as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_syncing",
            "Items being synced to the peer now",
            Gauge,
            self.per_peer(|p| Some(p.syncing as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_lag_seconds",
            "Age of the oldest change not yet sent to the peer (0 when none is pending)",
            Gauge,
            self.per_peer(|p| Some(p.lag_ms.unwrap_or(0) as f64 / 1000.0)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_sent_bytes",
            "Bytes sent to the peer",
            Counter,
            self.per_peer(|p| p.bytes_sent.map(|b| b as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_received_bytes",
            "Bytes received from the peer",
            Counter,
            self.per_peer(|p| p.bytes_received.map(|b| b as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_requests",
            "Requests sent to the peer",
            Counter,
            self.per_peer(|p| p.requests.map(|b| b as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_request_failures",
            "Requests to the peer that failed (transport)",
            Counter,
            self.per_peer(|p| p.request_failures.map(|b| b as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_synced_items",
            "Items synced to the peer",
            Counter,
            self.per_peer(|p| Some(p.synced as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_item_failures",
            "Item syncs to the peer that failed and were retried",
            Counter,
            self.per_peer(|p| Some(p.item_failures as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_link_failures",
            "Times the link to the peer failed",
            Counter,
            self.per_peer(|p| Some(p.link_failures as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_full_syncs",
            "Full syncs of a mailbox to the peer",
            Counter,
            self.per_peer(|p| Some(p.full_syncs as f64)),
        )?;
        Self::family(
            e,
            "mailmesh_peer_quarantined_records",
            "Records left out of syncs to the peer because they could not be read intact",
            Gauge,
            self.per_peer(|p| Some(p.quarantined as f64)),
        )?;

        // Node-wide.
        let one = |v: f64| vec![(Vec::new(), v)];
        Self::family(
            e,
            "mailmesh_appends",
            "Messages appended on this node (copies included), kept across restarts",
            Counter,
            one(self.appends as f64),
        )?;
        Self::family(
            e,
            "mailmesh_commit_groups",
            "Commit groups flushed (one fdatasync and one store commit each)",
            Counter,
            one(self.commits.groups as f64),
        )?;
        Self::family(
            e,
            "mailmesh_commit_batches",
            "Batches committed (writes of one operation each)",
            Counter,
            one(self.commits.batches as f64),
        )?;
        Self::family(
            e,
            "mailmesh_commit_failed_groups",
            "Commit groups that failed (nothing of them was stored)",
            Counter,
            one(self.commits.failed_groups as f64),
        )?;
        Self::family(
            e,
            "mailmesh_body_written_bytes",
            "Bytes of message bodies written to segments",
            Counter,
            one(self.commits.body_bytes_written as f64),
        )?;
        Self::family(
            e,
            "mailmesh_active_mailboxes",
            "Mailbox actors active now",
            Gauge,
            one(self.status.active_mailboxes as f64),
        )?;

        // Client front ends.
        let labelled = |label: &'static str, rows: &[(&'static str, u64)]| -> Series {
            rows.iter()
                .map(|(l, v)| (vec![(label, l.to_string())], *v as f64))
                .collect()
        };
        Self::family(
            e,
            "mailmesh_lmtp_deliveries",
            "LMTP deliveries, one per recipient, by outcome (rejected: by the user's sieve script; failed: 4xx, the MTA retries)",
            Counter,
            labelled("outcome", &self.front.deliveries),
        )?;
        Self::family(
            e,
            "mailmesh_sieve_actions",
            "Sieve actions carried out at delivery",
            Counter,
            labelled("action", &self.front.sieve_actions),
        )?;
        Self::family(
            e,
            "mailmesh_sieve_errors",
            "Sieve scripts that failed at delivery (the message was kept in INBOX)",
            Counter,
            one(self.front.sieve_errors as f64),
        )?;
        Self::family(
            e,
            "mailmesh_failed_logins",
            "Failed logins on every client listener",
            Counter,
            one(self.front.failed_logins as f64),
        )?;
        Self::family(
            e,
            "mailmesh_delayed_logins",
            "Login attempts that waited out their address's failure delay before being checked",
            Counter,
            one(self.front.delayed_logins as f64),
        )?;
        let per_listener = |value: fn(&crate::operator::protocol::ListenerStatus) -> u64| -> Series {
            self.status
                .listeners
                .iter()
                .map(|l| {
                    (
                        vec![("protocol", l.protocol.clone()), ("address", l.address.clone())],
                        value(l) as f64,
                    )
                })
                .collect()
        };
        Self::family(
            e,
            "mailmesh_listener_connections",
            "Client connections open now",
            Gauge,
            per_listener(|l| l.open),
        )?;
        Self::family(
            e,
            "mailmesh_listener_accepted_connections",
            "Client connections accepted",
            Counter,
            per_listener(|l| l.accepted),
        )?;
        Self::family(
            e,
            "mailmesh_listener_refused_connections",
            "Client connections refused over a connection limit",
            Counter,
            per_listener(|l| l.refused),
        )?;

        // Per-bucket counts, as prometheus-client's own histogram keeps them: the encoder makes
        // them cumulative, and writes the last bound, f64::MAX, as +Inf.
        let buckets: Vec<(f64, u64)> = self
            .commits
            .flush_micros
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let bound = FLUSH_BUCKETS_MICROS
                    .get(i)
                    .map_or(f64::MAX, |&us| us as f64 / 1e6);
                (bound, count)
            })
            .collect();
        let flushes = buckets.iter().map(|(_, count)| count).sum();
        let mut metric = e.encode_descriptor(
            "mailmesh_commit_flush_seconds",
            "Duration of a commit group's flush: body writes, fdatasync and the store commit",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.commits.flush_micros_sum as f64 / 1e6,
            flushes,
            &buckets,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::protocol::PeerStatus;

    fn encode(snapshot: Snapshot) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn peers_are_labelled_and_link_counters_absent_without_a_transport() {
        let linked = PeerStatus {
            name: "n2".into(),
            connected: Some(true),
            replicating: true,
            log_depth: 3,
            lag_ms: Some(1500),
            bytes_sent: Some(4096),
            bytes_received: Some(512),
            requests: Some(7),
            request_failures: Some(1),
            ..PeerStatus::default()
        };
        let engine_only = PeerStatus {
            name: "n3".into(),
            replicating: false,
            ..PeerStatus::default()
        };
        let mut commits = CommitStats::default();
        commits.flush_micros[3] = 2; // two flushes of at most 1 ms
        commits.flush_micros[FLUSH_BUCKETS_MICROS.len()] = 1; // one over a second
        commits.flush_micros_sum = 1_500_000;
        let text = encode(Snapshot {
            status: NodeStatus {
                node: "n1".into(),
                now_ms: 0,
                clustered: true,
                peers: vec![linked, engine_only],
                moves: Vec::new(),
                active_mailboxes: 2,
                listeners: vec![crate::operator::protocol::ListenerStatus {
                    protocol: "lmtp".into(),
                    address: "127.0.0.1:2424".into(),
                    open: 4,
                    accepted: 10,
                    refused: 1,
                }],
            },
            commits,
            appends: 9,
            front: FrontEndCounts {
                deliveries: vec![("delivered", 8), ("rejected", 1)],
                sieve_actions: vec![("fileinto", 3)],
                sieve_errors: 0,
                failed_logins: 5,
                delayed_logins: 2,
            },
        });
        for line in [
            "mailmesh_peer_connected{peer=\"n2\"} 1",
            "mailmesh_peer_connected{peer=\"n3\"} 0",
            "mailmesh_peer_sync_log_depth{peer=\"n2\"} 3",
            "mailmesh_peer_lag_seconds{peer=\"n2\"} 1.5",
            "mailmesh_peer_sent_bytes_total{peer=\"n2\"} 4096",
            "mailmesh_peer_request_failures_total{peer=\"n2\"} 1",
            "mailmesh_appends_total 9",
            "mailmesh_active_mailboxes 2",
            "mailmesh_commit_flush_seconds_count 3",
            "mailmesh_commit_flush_seconds_bucket{le=\"0.001\"} 2",
            "mailmesh_commit_flush_seconds_bucket{le=\"1.0\"} 2",
            "mailmesh_commit_flush_seconds_bucket{le=\"+Inf\"} 3",
            "mailmesh_lmtp_deliveries_total{outcome=\"delivered\"} 8",
            "mailmesh_sieve_actions_total{action=\"fileinto\"} 3",
            "mailmesh_failed_logins_total 5",
            "mailmesh_delayed_logins_total 2",
            "mailmesh_listener_connections{protocol=\"lmtp\",address=\"127.0.0.1:2424\"} 4",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "no {line:?} in\n{text}"
            );
        }
        // n3 has no transport numbers: no series rather than a made-up 0.
        assert!(
            !text.contains("mailmesh_peer_sent_bytes_total{peer=\"n3\"}"),
            "{text}"
        );
    }
}
