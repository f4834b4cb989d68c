//! Starts the actors of one node on the current actix System, and stops them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use mailmesh_protocol::ids::NodeId;

use crate::channel::{Channel, ChannelConfig, ChannelStats, GetChannelStats};
use crate::commit_group::{CommitGroup, FlushMode, DEFAULT_SEGMENT_BYTES};
use crate::context::NodeContext;
use crate::counters::NodeCounters;
use crate::directory::{ActivationPolicy, Directory};
use crate::disk::{Disk, RealDisk};
use crate::env::Env;
use crate::error::StoreError;
use crate::mailbox::Limits;
use crate::peer_session::Inbound;
use crate::store::Store;
use crate::sync_log::SyncLog;
use crate::transport::Transport;

/// One configured peer: a Channel is run to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOptions {
    pub node: NodeId,
    pub channel: ChannelConfig,
}

impl PeerOptions {
    pub fn new(node: NodeId) -> Self {
        PeerOptions {
            node,
            channel: ChannelConfig::default(),
        }
    }
}

/// Everything a node needs to start its actors.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub node: NodeId,
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub activation: ActivationPolicy,
    /// Size at which a new body segment file starts.
    pub segment_bytes: u64,
    /// Background for a node; Inline for deterministic simulation.
    pub flush_mode: FlushMode,
    pub peers: Vec<PeerOptions>,
    /// Deliberate faults, for tests and the simulator only.
    pub faults: crate::context::Faults,
    /// A body spool shared with some peers (NFS or the like): new bodies are stored there, each a
    /// file named by its Guid, and peers marked `shared_bodies` are sent none.
    pub shared_spool: Option<PathBuf>,
    /// The file system under the store: the real one, or the simulator's simulated disk.
    pub disk: Arc<dyn Disk>,
    /// The largest difference between two nodes' wall clocks this node counts on: a new store
    /// waits it out before it starts ([`LocalNode::fresh_store_wait`]). Zero for a node alone.
    pub max_clock_skew: Duration,
}

impl NodeOptions {
    pub fn new(node: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        NodeOptions {
            node,
            data_dir: data_dir.into(),
            limits: Limits::default(),
            activation: ActivationPolicy::default(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            flush_mode: FlushMode::Background,
            peers: Vec::new(),
            faults: Default::default(),
            shared_spool: None,
            disk: Arc::new(RealDisk),
            max_clock_skew: Duration::ZERO,
        }
    }
}

/// A running node's actors.
pub struct LocalNode {
    pub node: NodeId,
    pub store: Arc<Store>,
    pub commit: Addr<CommitGroup>,
    pub directory: Addr<Directory>,
    pub context: NodeContext,
    /// Where a transport delivers the requests of peers.
    pub inbound: Inbound,
    transport: Option<Rc<dyn Transport>>,
    channels: BTreeMap<NodeId, (PeerOptions, Addr<Channel>)>,
}

impl LocalNode {
    /// How long a node must wait before it starts on `options`' store (DESIGN.md, "Identity";
    /// engine bug 41): zero for a store that started before, whose counters it keeps; just over
    /// `max_clock_skew` for a new store (never started, or a lost one replaced).
    ///
    /// Why: every AppendId and Version counter is some node's wall clock read at its start
    /// (`counters::identity_floor`) and raised by Lamport observation since, so whatever a lost
    /// store minted is below the fastest clock in the cluster when it was lost, at most
    /// `max_clock_skew` ahead of this node's clock then. Read after the wait, this node's clock
    /// is past that: the new store's floor is above every identity the lost one minted, so it
    /// mints none of them again, and a peer that judges echo suppression by that floor (engine
    /// bug 20) judges right. Without the wait (simulator, seed 100359), a store whose clock ran
    /// 1.9 s behind a peer's had minted, by observing that peer, a subscription Version above
    /// the floor it came back with 1.3 s after its wipe; a peer then took the subscription,
    /// which the new store never had, for one it made, and never sent it.
    pub fn fresh_store_wait(options: &NodeOptions) -> Result<Duration, StoreError> {
        if options.max_clock_skew.is_zero() {
            return Ok(Duration::ZERO);
        }
        let store = Store::open_on(
            options.disk.clone(),
            &options.data_dir,
            &options.node,
            options.shared_spool.as_deref(),
        )?;
        let fresh = store.initial_counters().incarnation == 0;
        Ok(match fresh {
            true => options.max_clock_skew + Duration::from_millis(1),
            false => Duration::ZERO,
        })
    }

    /// Opens the store and starts the actors of a node with no peers. Must run inside an actix
    /// System.
    pub fn start(options: NodeOptions, env: Env) -> Result<LocalNode, StoreError> {
        Self::start_replicating(options, env, None)
    }

    /// Opens the store and starts the actors, with a Channel to each configured peer over
    /// `transport`.
    pub fn start_replicating(
        options: NodeOptions,
        env: Env,
        transport: Option<Rc<dyn Transport>>,
    ) -> Result<LocalNode, StoreError> {
        let store = Arc::new(Store::open_on(
            options.disk.clone(),
            &options.data_dir,
            &options.node,
            options.shared_spool.as_deref(),
        )?);
        let counters = NodeCounters::new(options.node.clone(), store.initial_counters());
        // Never mint what an earlier incarnation of this store minted (a wiped or restored
        // store): see `counters.rs`.
        // (The sabotage `identities_from_zero` starts a store's counters at zero instead.)
        let floor = match options.faults.identities_from_zero {
            false => crate::counters::identity_floor(env.clock.unix_millis()),
            true => 0,
        };
        counters.start(|| env.entropy.next_u128(), floor);
        let commit = CommitGroup::new(
            store.clone(),
            counters.clone(),
            options.segment_bytes,
            options.flush_mode,
        )?
        .with_clock(env.clock.clone())
        .start();
        let sync_log = SyncLog::with_faults(counters.clone(), options.faults);
        for (peer, floor) in crate::directory_sync::known_peer_floors(&store)? {
            sync_log.set_peer_floor(&peer, floor);
        }
        let context = NodeContext {
            node: options.node.clone(),
            store: store.clone(),
            commit: commit.clone(),
            sync_log,
            counters,
            env,
            limits: options.limits,
            faults: options.faults,
        };
        let directory = Directory::new(context.clone(), options.activation, transport.clone()).start();
        let inbound = Inbound::new(context.clone(), directory.clone());
        let mut node = LocalNode {
            node: options.node,
            store,
            commit,
            directory,
            context,
            inbound,
            transport,
            channels: BTreeMap::new(),
        };
        node.set_peers(options.peers);
        Ok(node)
    }

    /// Applies a new peer list (a config reload): Channels to removed peers stop, new ones start,
    /// unchanged ones keep running. No sync log row is lost: a removed peer's rows stay in the
    /// store and are drained if it is added again.
    pub fn set_peers(&mut self, peers: Vec<PeerOptions>) {
        let Some(transport) = self.transport.clone() else {
            if !peers.is_empty() {
                tracing::warn!("peers are configured but this node has no transport; not replicating");
            }
            return;
        };
        let wanted: BTreeMap<NodeId, PeerOptions> = peers
            .into_iter()
            .filter(|p| p.node != self.node)
            .map(|p| (p.node.clone(), p))
            .collect();
        let sync_log = &self.context.sync_log;
        sync_log.set_peers(wanted.keys().cloned().collect());
        self.directory.do_send(crate::directory_sync::ConfiguredPeers {
            peers: wanted.keys().cloned().collect(),
        });
        self.channels.retain(|peer, (options, addr)| {
            let keep = wanted.get(peer) == Some(options);
            if !keep {
                sync_log.detach_channel(peer);
                addr.do_send(StopChannel);
            }
            keep
        });
        for (peer, options) in wanted {
            if self.channels.contains_key(&peer) {
                continue;
            }
            let channel = Channel::new(
                peer.clone(),
                self.context.clone(),
                self.directory.clone(),
                transport.clone(),
                options.channel,
            )
            .start();
            sync_log.attach_channel(
                peer.clone(),
                channel.clone().recipient(),
                channel.clone().recipient(),
            );
            self.channels.insert(peer, (options, channel));
        }
    }

    pub fn peers(&self) -> Vec<NodeId> {
        self.channels.keys().cloned().collect()
    }

    /// The Channel actor of each configured peer, for status queries that must not hold the node
    /// across an await (an operator request while the peers are reloaded).
    pub fn channels(&self) -> Vec<(NodeId, Addr<Channel>)> {
        self.channels
            .iter()
            .map(|(peer, (_, addr))| (peer.clone(), addr.clone()))
            .collect()
    }

    /// Each channel's state.
    pub async fn channel_stats(&self) -> BTreeMap<NodeId, ChannelStats> {
        let mut out = BTreeMap::new();
        for (peer, (_, addr)) in &self.channels {
            if let Ok(stats) = addr.send(GetChannelStats).await {
                out.insert(peer.clone(), stats);
            }
        }
        out
    }

    /// Stops every actor of the node and waits until the store is closed, so the data dir can be
    /// opened again (a restart). Anything not yet acknowledged may be lost, as in a crash;
    /// everything acknowledged is durable.
    pub async fn shutdown(self) {
        let LocalNode {
            store,
            commit,
            directory,
            context,
            inbound,
            channels,
            ..
        } = self;
        for (peer, (_, addr)) in channels {
            context.sync_log.detach_channel(&peer);
            addr.do_send(StopChannel);
        }
        inbound.close();
        directory.do_send(StopDirectory);
        drop(directory);
        drop(context);
        drop(inbound);
        // Actors let go of the store as they stop; the commit group goes last. Whoever still
        // holds a Mailbox address or this node's Inbound (a transport) keeps the store open:
        // after a bounded wait the node reports it instead of hanging.
        let wait = |holders: usize| {
            let store = store.clone();
            async move {
                for _ in 0..30_000 {
                    if Arc::strong_count(&store) <= holders + 1 {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                false
            }
        };
        let quiet = wait(2).await;
        commit.do_send(crate::commit_group::StopCommitGroup);
        if !(quiet && wait(1).await) {
            tracing::error!("node stopped but something still holds its store open");
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct StopChannel;

impl Handler<StopChannel> for Channel {
    type Result = ();

    fn handle(&mut self, _: StopChannel, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDirectory;

impl Handler<StopDirectory> for Directory {
    type Result = ();

    fn handle(&mut self, _: StopDirectory, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
