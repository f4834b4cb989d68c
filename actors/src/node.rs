//! Starts the actors of one node on the current actix System.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use mailmesh_protocol::ids::NodeId;

use crate::commit_group::{CommitGroup, FlushMode, DEFAULT_SEGMENT_BYTES};
use crate::context::NodeContext;
use crate::counters::NodeCounters;
use crate::directory::{ActivationPolicy, Directory};
use crate::env::Env;
use crate::error::StoreError;
use crate::mailbox::Limits;
use crate::store::Store;
use crate::sync_log::SyncLog;

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
}

impl LocalNode {
    /// Opens the store and starts the actors. Must run inside an actix System.
    pub fn start(options: NodeOptions, env: Env) -> Result<LocalNode, StoreError> {
        let store = Arc::new(Store::open(&options.data_dir, &options.node)?);
        let counters = NodeCounters::new(options.node.clone(), store.initial_counters());
        counters.incarnation(|| env.entropy.next_u128());
        let commit = CommitGroup::new(
            store.clone(),
            counters.clone(),
            options.segment_bytes,
            options.flush_mode,
        )?
        .start();
        let context = NodeContext {
            node: options.node.clone(),
            store: store.clone(),
            commit: commit.clone(),
            sync_log: SyncLog::new(counters.clone()),
            counters,
            env,
            limits: options.limits,
        };
        let directory = Directory::new(context.clone(), options.activation).start();
        Ok(LocalNode {
            node: options.node,
            store,
            commit,
            directory,
            context,
        })
    }
}
