//! Live reload: SIGHUP, or a change of the configuration file, makes a running node read its
//! configuration again.
//!
//! The new file is loaded and validated whole (the same [`Config::load`] as at start, TLS files
//! included) before anything changes; a file that does not load is reported and the node keeps
//! running on what it had. Then the cluster transport takes the new peers, certificates and
//! listen address, and the replication engine the new peer list (`LocalNode::set_peers`, which
//! keeps every sync-log row of a removed peer for when it comes back). Settings the running
//! actors were started with and cannot change (node name, data directory, shared spool, whether
//! there is a `[cluster]` at all) are refused as a whole, with a message saying a restart is
//! needed; the other sections are read but apply at the next start, which is logged too.
//!
//! File changes are watched with the notify crate on the file's directory (editors replace a file
//! by renaming a new one over it, which a watch on the file itself would miss), and debounced:
//! a save is often several events, and the reload waits until [`DEBOUNCE`] passes without one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::QuicTransport;
use crate::config::{Config, Loaded, PeerSection};
use crate::error::Error;

/// Quiet time after the last file event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What makes the node reload: SIGHUP always, and file changes when it runs with `--config`.
pub struct ReloadTriggers {
    hangup: Signal,
    file_changes: Option<mpsc::UnboundedReceiver<()>>,
    /// Kept alive for as long as the node runs: dropping it stops the watch.
    _watcher: Option<RecommendedWatcher>,
}

impl ReloadTriggers {
    pub fn install(config_path: Option<&Path>) -> Result<ReloadTriggers, Error> {
        let hangup =
            signal(SignalKind::hangup()).map_err(|e| Error::io("cannot install a SIGHUP handler", e))?;
        let (file_changes, watcher) = match config_path {
            Some(path) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(rx), Some(watch(path, tx)?))
            }
            None => (None, None),
        };
        Ok(ReloadTriggers {
            hangup,
            file_changes,
            _watcher: watcher,
        })
    }

    /// Waits for the next reason to reload, and names it.
    pub async fn next(&mut self) -> &'static str {
        let Some(changes) = self.file_changes.as_mut() else {
            self.hangup.recv().await;
            return "SIGHUP";
        };
        tokio::select! {
            _ = self.hangup.recv() => "SIGHUP",
            Some(()) = changes.recv() => {
                // Debounce: wait until the file has been quiet for a while.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {}
                "config file changed"
            }
        }
    }
}

/// Watches the directory of `path` and sends a unit for each change to that file.
fn watch(path: &Path, tx: mpsc::UnboundedSender<()>) -> Result<RecommendedWatcher, Error> {
    let absolute =
        std::path::absolute(path).map_err(|e| Error::io(format!("cannot resolve {}", path.display()), e))?;
    let dir = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let name = absolute.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (as a reload does) is an access event; only writes count.
        let writes = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        );
        if writes
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| Error::io("cannot watch the configuration file", std::io::Error::other(e)))?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| {
        Error::io(
            format!("cannot watch {}", dir.display()),
            std::io::Error::other(e),
        )
    })?;
    Ok(watcher)
}

/// What a reload changed in the peer list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub repointed: Vec<String>,
    /// Peers whose `imap` address (for `[imap] direct`) alone changed: no link is touched.
    pub imap: Vec<String>,
}

/// Loads the configuration again and decides whether it can be applied to the running node.
/// Returns the new configuration, or why it is refused (the running one stays).
pub fn load_for_reload(path: Option<&Path>, running: &Config) -> Result<Loaded, String> {
    let loaded = Config::load(path).map_err(|e| e.to_string())?;
    let new = &loaded.config;
    let mut restart = Vec::new();
    if new.node.name != running.node.name {
        restart.push("node.name");
    }
    if new.storage.data_dir != running.storage.data_dir {
        restart.push("storage.data_dir");
    }
    if new.storage.shared_spool != running.storage.shared_spool {
        restart.push("storage.shared_spool");
    }
    if new.cluster.is_some() != running.cluster.is_some() {
        restart.push("[cluster] (added or removed)");
    }
    if !restart.is_empty() {
        return Err(format!(
            "{} changed: a restart is needed to apply that",
            restart.join(", ")
        ));
    }
    let later: Vec<&str> = [
        (
            "cluster.max_clock_skew_ms",
            new.cluster.as_ref().map(|c| c.max_clock_skew_ms)
                != running.cluster.as_ref().map(|c| c.max_clock_skew_ms),
        ),
        (
            "storage.segment_bytes",
            new.storage.segment_bytes != running.storage.segment_bytes,
        ),
        ("[limits]", new.limits != running.limits),
        ("[mailboxes]", new.mailboxes != running.mailboxes),
        (
            "lmtp.listen (and the listener's limits)",
            new.lmtp.as_ref().map(|l| {
                (
                    &l.listen,
                    &l.socket_mode,
                    l.implicit_tls,
                    l.max_connections,
                    l.max_connections_per_address,
                )
            }) != running.lmtp.as_ref().map(|l| {
                (
                    &l.listen,
                    &l.socket_mode,
                    l.implicit_tls,
                    l.max_connections,
                    l.max_connections_per_address,
                )
            }),
        ),
        (
            "imap.special_use",
            new.imap.as_ref().map(|i| &i.special_use) != running.imap.as_ref().map(|i| &i.special_use),
        ),
        (
            "managesieve.listen (and the listener's limits)",
            new.managesieve.as_ref().map(|l| {
                (
                    &l.listen,
                    &l.socket_mode,
                    l.implicit_tls,
                    l.max_connections,
                    l.max_connections_per_address,
                )
            }) != running.managesieve.as_ref().map(|l| {
                (
                    &l.listen,
                    &l.socket_mode,
                    l.implicit_tls,
                    l.max_connections,
                    l.max_connections_per_address,
                )
            }),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    if !later.is_empty() {
        warn!(changed = ?later, "these settings apply at the next restart");
    }
    Ok(loaded)
}

/// The difference between two `[[peers]]` lists.
pub fn peer_changes(old: &Config, new: &Config) -> PeerChanges {
    let mut changes = PeerChanges::default();
    for peer in &new.peers {
        match old.peers.iter().find(|p| p.name == peer.name) {
            None => changes.added.push(peer.name.clone()),
            Some(p) if (&p.imap, p.imap_tls) != (&peer.imap, peer.imap_tls) && same_link(p, peer) => {
                changes.imap.push(peer.name.clone())
            }
            Some(p) if p != peer => changes.repointed.push(peer.name.clone()),
            Some(_) => {}
        }
    }
    for peer in &old.peers {
        if !new.peers.iter().any(|p| p.name == peer.name) {
            changes.removed.push(peer.name.clone());
        }
    }
    changes
}

/// Whether two entries of one peer differ at most in `imap`, which no link uses.
fn same_link(a: &PeerSection, b: &PeerSection) -> bool {
    PeerSection {
        imap: None,
        imap_tls: false,
        ..a.clone()
    } == PeerSection {
        imap: None,
        imap_tls: false,
        ..b.clone()
    }
}

/// Applies a loaded configuration's cluster part to the transport; logs what could not apply.
pub fn apply_transport(transport: Option<&QuicTransport>, loaded: &Loaded) {
    if let (Some(transport), Some(cluster)) = (transport, &loaded.cluster) {
        if let Err(e) = transport.apply(cluster) {
            error!(error = %e, "part of the reloaded configuration could not be applied");
        }
    }
}

/// Logs the outcome of a reload that applied.
pub fn log_applied(reason: &str, changes: &PeerChanges) {
    info!(
        reason,
        added = ?changes.added,
        removed = ?changes.removed,
        repointed = ?changes.repointed,
        imap = ?changes.imap,
        "configuration reloaded"
    );
}
