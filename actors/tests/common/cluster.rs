//! Many nodes in one actix System on a single thread with paused (virtual) time, linked by the
//! in-process network: real actors, real storage in temp dirs, real codec on every frame.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mailmesh_actors::commit_group::FlushMode;
use mailmesh_actors::directory::{
    GetDirectoryStats, ListMailboxes, ListScripts, ListSubscriptions, OpenMailboxById,
};
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::mailbox::{Fetch, GetAnnotations, GetState, Mailbox};
use mailmesh_actors::memory_network::MemoryNetwork;
use mailmesh_actors::node::{LocalNode, NodeOptions, PeerOptions};
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::{AppendId, MailboxId, NodeId, Uid, UidValidity};

pub fn n(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// Runs `f` on a deterministic runtime: one thread, time paused and advanced only when idle.
pub fn run_virtual<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    });
    let out = system.block_on(f());
    actix::System::current().stop();
    out
}

pub struct Cluster {
    pub net: MemoryNetwork,
    pub nodes: BTreeMap<NodeId, LocalNode>,
    pub dirs: BTreeMap<NodeId, tempfile::TempDir>,
    pub neighbours: BTreeMap<NodeId, Vec<NodeId>>,
    /// A body spool shared by every node, with channels that send no bodies.
    pub shared_spool: Option<std::path::PathBuf>,
    seed: u64,
    /// When the cluster started: a node's wall clock goes on from there across restarts.
    started: tokio::time::Instant,
}

/// What a client could see of one mailbox on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxDump {
    pub id: MailboxId,
    pub uidvalidity: UidValidity,
    pub messages: Vec<(Uid, AppendId, Vec<String>)>,
    pub annotations: Vec<(String, Vec<u8>)>,
}

/// Everything a client could see on one node, by (user, mailbox name).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeDump {
    pub mailboxes: BTreeMap<(String, String), MailboxDump>,
    pub subscriptions: BTreeMap<String, Vec<String>>,
    pub scripts: BTreeMap<String, Vec<(String, bool)>>,
}

impl Cluster {
    /// Starts `names` with a channel along every edge (both ways).
    pub fn start(names: &[&str], edges: &[(&str, &str)]) -> Cluster {
        Self::start_with(names, edges, None)
    }

    /// Starts `names` along `edges`, all storing bodies in one shared spool, with channels that
    /// send no bodies.
    pub fn start_sharing(names: &[&str], edges: &[(&str, &str)], spool: &std::path::Path) -> Cluster {
        Self::start_with(names, edges, Some(spool.to_path_buf()))
    }

    fn start_with(
        names: &[&str],
        edges: &[(&str, &str)],
        shared_spool: Option<std::path::PathBuf>,
    ) -> Cluster {
        let mut neighbours: BTreeMap<NodeId, Vec<NodeId>> =
            names.iter().map(|s| (n(s), Vec::new())).collect();
        for (a, b) in edges {
            neighbours.get_mut(&n(a)).unwrap().push(n(b));
            neighbours.get_mut(&n(b)).unwrap().push(n(a));
        }
        let mut cluster = Cluster {
            net: MemoryNetwork::new(),
            nodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            neighbours,
            shared_spool,
            seed: 1,
            started: tokio::time::Instant::now(),
        };
        for name in names {
            cluster.dirs.insert(n(name), tempfile::tempdir().unwrap());
            cluster.boot(&n(name));
        }
        cluster
    }

    pub fn full_mesh(names: &[&str]) -> Cluster {
        let mut edges = Vec::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                edges.push((*a, *b));
            }
        }
        Cluster::start(names, &edges)
    }

    pub fn chain(names: &[&str]) -> Cluster {
        let edges: Vec<(&str, &str)> = names.windows(2).map(|w| (w[0], w[1])).collect();
        Cluster::start(names, &edges)
    }

    fn boot(&mut self, node: &NodeId) {
        self.seed += 1;
        let mut options = NodeOptions::new(node.clone(), self.dirs[node].path());
        options.flush_mode = FlushMode::Inline;
        options.peers = self.neighbours[node]
            .iter()
            .cloned()
            .map(PeerOptions::new)
            .collect();
        if let Some(spool) = &self.shared_spool {
            options.shared_spool = Some(spool.clone());
            for peer in &mut options.peers {
                peer.channel.shared_bodies = true;
            }
        }
        // A restarted node's clock goes on from where the world is, not back to the start.
        let now = 1_700_000_000_000 + self.started.elapsed().as_millis() as i64;
        let env = Env::new(Arc::new(TokioClock::new(now)), Entropy::from_seed(self.seed));
        let local = LocalNode::start_replicating(options, env, Some(self.net.transport(node))).unwrap();
        self.net.attach(node.clone(), local.inbound.clone());
        self.nodes.insert(node.clone(), local);
    }

    pub fn node(&self, name: &str) -> &LocalNode {
        &self.nodes[&n(name)]
    }

    /// Stops a node (it becomes unreachable), keeping its data.
    pub async fn stop(&mut self, name: &str) {
        let node = n(name);
        self.net.detach(&node);
        if let Some(local) = self.nodes.remove(&node) {
            local.shutdown().await;
        }
    }

    /// Starts a stopped node again from its data.
    pub fn restart(&mut self, name: &str) {
        self.boot(&n(name));
    }

    /// Replaces a stopped node's data dir with an empty one (a wiped or replaced disk).
    pub fn wipe(&mut self, name: &str) {
        self.dirs.insert(n(name), tempfile::tempdir().unwrap());
    }

    /// Waits (in virtual time) until every channel with a working link is drained and nothing
    /// crosses the network for a while. Panics if that does not happen within `limit` of virtual time.
    pub async fn settle_within(&self, limit: Duration) {
        let start = tokio::time::Instant::now();
        let mut last = self.net.total_requests();
        let mut quiet_rounds = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.net.total_requests();
            let mut idle = true;
            for local in self.nodes.values() {
                // A node letting a copy go writes its entry once its log drains.
                let directory = local.directory.send(GetDirectoryStats).await.unwrap();
                if directory.releasing > 0 {
                    idle = false;
                }
                for stats in local.channel_stats().await.values() {
                    // A channel whose link is down waits; it is idle until the link heals.
                    if stats.running > 0 || (stats.pending > 0 && stats.link_up) {
                        idle = false;
                    }
                }
            }
            if idle && now == last {
                quiet_rounds += 1;
                if quiet_rounds >= 4 {
                    return;
                }
            } else {
                quiet_rounds = 0;
            }
            last = now;
            assert!(start.elapsed() < limit, "cluster did not settle within {limit:?}");
        }
    }

    pub async fn settle(&self) {
        self.settle_within(Duration::from_secs(600)).await
    }

    pub async fn dump(&self, name: &str) -> NodeDump {
        let local = self.node(name);
        let mut dump = NodeDump::default();
        for user in ["alice", "bob", "carol"] {
            let list = local
                .directory
                .send(ListMailboxes { user: user.into() })
                .await
                .unwrap()
                .unwrap();
            for info in list {
                let opened = local
                    .directory
                    .send(OpenMailboxById { id: info.id })
                    .await
                    .unwrap()
                    .unwrap();
                let mb: actix::Addr<Mailbox> = opened.addr;
                let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
                let messages = views
                    .into_iter()
                    .map(|v| {
                        (
                            v.uid,
                            v.append_id,
                            v.flags.iter().map(|f| f.to_string()).collect(),
                        )
                    })
                    .collect();
                let annotations = mb.send(GetAnnotations).await.unwrap().unwrap();
                let _ = mb.send(GetState).await.unwrap().unwrap();
                dump.mailboxes.insert(
                    (user.to_string(), info.name.clone()),
                    MailboxDump {
                        id: info.id,
                        uidvalidity: info.uidvalidity,
                        messages,
                        annotations,
                    },
                );
            }
            let subs = local
                .directory
                .send(ListSubscriptions { user: user.into() })
                .await
                .unwrap()
                .unwrap();
            if !subs.is_empty() {
                dump.subscriptions.insert(user.to_string(), subs);
            }
            let scripts = local
                .directory
                .send(ListScripts { user: user.into() })
                .await
                .unwrap()
                .unwrap();
            if !scripts.is_empty() {
                dump.scripts.insert(user.to_string(), scripts);
            }
        }
        dump
    }

    /// Asserts every running node shows the same thing; returns that.
    pub async fn assert_converged(&self) -> NodeDump {
        let mut names = self.nodes.keys();
        let first = names.next().unwrap().clone();
        let reference = self.dump(first.as_str()).await;
        for other in names {
            let dump = self.dump(other.as_str()).await;
            assert_eq!(dump, reference, "{other} differs from {first}");
        }
        reference
    }

    /// Asserts nothing crosses the network for a long while (no echo, no retry loop).
    pub async fn assert_quiet(&self) {
        let before = self.net.stats();
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(self.net.stats(), before, "traffic after quiescence");
    }
}
