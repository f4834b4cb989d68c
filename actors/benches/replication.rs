//! Replication figures over the in-process network (real actors, real storage, real codec on every
//! frame; no QUIC yet): initial sync of 10,000 x 2 KB messages to an empty replica, bytes on the
//! wire per flag change in a batch of 1,000, and link crossings per change in a 4-node full mesh
//! and a 5-node chain. Run with `cargo bench -p mailmesh-actors --bench replication`. Printed,
//! never asserted.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{body, disk_write_mb_per_second, fdatasyncs_per_second};
use mailmesh_actors::commit_group::GetCommitStats;
use mailmesh_actors::directory::{CreateMailbox, OpenMailbox};
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::mailbox::{Append, FlagAction, GetState, Mailbox, StoreFlags};
use mailmesh_actors::memory_network::MemoryNetwork;
use mailmesh_actors::node::{LocalNode, NodeOptions, PeerOptions};
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::NodeId;

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

struct Nodes {
    net: MemoryNetwork,
    nodes: BTreeMap<NodeId, LocalNode>,
    _dirs: Vec<tempfile::TempDir>,
}

fn start(base: &Path, names: &[&str], edges: &[(&str, &str)]) -> Nodes {
    let net = MemoryNetwork::new();
    let mut nodes = BTreeMap::new();
    let mut dirs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = tempfile::tempdir_in(base).unwrap();
        let mut options = NodeOptions::new(n(name), dir.path());
        options.peers = edges
            .iter()
            .filter_map(|(a, b)| {
                if a == name {
                    Some(*b)
                } else if b == name {
                    Some(*a)
                } else {
                    None
                }
            })
            .map(|p| PeerOptions::new(n(p)))
            .collect();
        let env = Env::new(
            Arc::new(TokioClock::new(1_700_000_000_000)),
            Entropy::from_seed(i as u64 + 1),
        );
        let local = LocalNode::start_replicating(options, env, Some(net.transport(&n(name)))).unwrap();
        net.attach(n(name), local.inbound.clone());
        nodes.insert(n(name), local);
        dirs.push(dir);
    }
    Nodes {
        net,
        nodes,
        _dirs: dirs,
    }
}

impl Nodes {
    async fn open(&self, node: &str, name: &str) -> actix::Addr<Mailbox> {
        self.nodes[&n(node)]
            .directory
            .send(OpenMailbox {
                user: "bench".into(),
                name: name.into(),
            })
            .await
            .unwrap()
            .unwrap()
            .addr
    }

    /// Waits until every node shows `count` messages in `name` and the network has gone quiet.
    async fn settle(&self, name: &str, count: u64) {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut all = true;
            for node in self.nodes.keys() {
                let opened = self.nodes[node]
                    .directory
                    .send(OpenMailbox {
                        user: "bench".into(),
                        name: name.into(),
                    })
                    .await;
                match opened {
                    Ok(Ok(o)) => all &= o.addr.send(GetState).await.unwrap().unwrap().exists == count,
                    _ => all = false,
                }
            }
            let now = self.net.total_requests();
            if all && now == last {
                return;
            }
            last = now;
        }
    }
}

fn main() {
    let base_dir = std::env::var("MAILMESH_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let base = tempfile::tempdir_in(base_dir).unwrap();
    let fsyncs = fdatasyncs_per_second(base.path());
    let disk_mb = disk_write_mb_per_second(base.path());
    let mut rows: Vec<(String, String, String)> = Vec::new();
    actix::System::new().block_on(async {
        // Initial sync of 10,000 x 2 KB to an empty replica.
        let cluster = start(base.path(), &["a"], &[]);
        let a = &cluster.nodes[&n("a")];
        a.directory
            .send(CreateMailbox {
                user: "bench".into(),
                name: "INBOX".into(),
            })
            .await
            .unwrap()
            .unwrap();
        let mb = cluster.open("a", "INBOX").await;
        for round in 0..100 {
            let tasks: Vec<_> = (0..100)
                .map(|k| {
                    let mb = mb.clone();
                    let b = body(round * 100 + k, 2048);
                    actix::spawn(async move {
                        mb.send(Append {
                            body: b,
                            flags: vec![],
                            internaldate: None,
                        })
                        .await
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap().unwrap();
            }
        }
        let net = cluster.net.clone();
        let mut nodes = cluster.nodes;
        let mut dirs = cluster._dirs;
        let dir_b = tempfile::tempdir_in(base.path()).unwrap();
        let mut options = NodeOptions::new(n("b"), dir_b.path());
        options.peers = vec![PeerOptions::new(n("a"))];
        let env = Env::new(
            Arc::new(TokioClock::new(1_700_000_000_000)),
            Entropy::from_seed(99),
        );
        let start_time = Instant::now();
        let b = LocalNode::start_replicating(options, env, Some(net.transport(&n("b")))).unwrap();
        net.attach(n("b"), b.inbound.clone());
        nodes
            .get_mut(&n("a"))
            .unwrap()
            .set_peers(vec![PeerOptions::new(n("b"))]);
        nodes.insert(n("b"), b);
        dirs.push(dir_b);
        let cluster = Nodes {
            net,
            nodes,
            _dirs: dirs,
        };
        cluster.settle("INBOX", 10_000).await;
        let secs = start_time.elapsed().as_secs_f64();
        let mb_per_s = 10_000.0 * 2048.0 / secs / 1e6;
        let commits = cluster.nodes[&n("b")]
            .commit
            .send(GetCommitStats)
            .await
            .unwrap()
            .groups;
        rows.push((
            "initial sync, 10,000 x 2 KB".into(),
            format!("{:.0} msg/s, {mb_per_s:.1} MB/s", 10_000.0 / secs),
            format!(
                "{:.2} of this disk's {disk_mb:.0} MB/s (sequential write + fdatasync); {commits} commits on \
                 the replica, disk {fsyncs:.0} fdatasyncs/s; target > 20,000 msg/s",
                mb_per_s / disk_mb
            ),
        ));

        // Bytes per flag change, 1,000 changed in one STORE.
        let mb = cluster.open("a", "INBOX").await;
        let before = cluster.net.total_bytes();
        mb.send(StoreFlags {
            uids: UidSet::range(mailmesh_protocol::ids::Uid(1), mailmesh_protocol::ids::Uid(1000)),
            action: FlagAction::Add,
            flags: vec!["\\Seen".into()],
            unchanged_since: None,
        })
        .await
        .unwrap()
        .unwrap();
        // Wait for b to see the change.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let on_b = cluster
                .open("b", "INBOX")
                .await
                .send(GetState)
                .await
                .unwrap()
                .unwrap();
            if on_b.unseen == 9_000 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bytes = cluster.net.total_bytes() - before;
        rows.push((
            "flag change, batch of 1,000".into(),
            format!("{:.1} bytes/change on the wire", bytes as f64 / 1000.0),
            "target < 64; Cyrus ~40 after deflate".into(),
        ));

        // Link crossings per change.
        for (label, names, edges) in [
            (
                "4-node full mesh",
                vec!["a", "b", "c", "d"],
                vec![
                    ("a", "b"),
                    ("a", "c"),
                    ("a", "d"),
                    ("b", "c"),
                    ("b", "d"),
                    ("c", "d"),
                ],
            ),
            (
                "5-node chain",
                vec!["a", "b", "c", "d", "e"],
                vec![("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")],
            ),
        ] {
            let cluster = start(base.path(), &names, &edges);
            let a = &cluster.nodes[&n("a")];
            a.directory
                .send(CreateMailbox {
                    user: "bench".into(),
                    name: "X".into(),
                })
                .await
                .unwrap()
                .unwrap();
            cluster.settle("X", 0).await;
            let before: u64 = cluster.net.stats().values().map(|s| s.records).sum();
            let changes = 50u64;
            let mb = cluster.open("a", "X").await;
            for i in 0..changes {
                mb.send(Append {
                    body: body(i as usize, 2048),
                    flags: vec![],
                    internaldate: None,
                })
                .await
                .unwrap()
                .unwrap();
                cluster.settle("X", i + 1).await;
            }
            let after: u64 = cluster.net.stats().values().map(|s| s.records).sum();
            let per_change = (after - before) as f64 / changes as f64;
            rows.push((
                format!("link crossings, {label}"),
                format!("{per_change:.2} record crossings per change"),
                format!("{} links; the minimum is {}", edges.len(), names.len() - 1),
            ));
        }
        actix::System::current().stop();
    });
    println!();
    let (what, figure, beside) = ("replication (in-process network)", "figure", "beside");
    println!("{what:<34} {figure:<36} {beside}");
    for (a, b, c) in rows {
        println!("{a:<34} {b:<36} {c}");
    }
}
