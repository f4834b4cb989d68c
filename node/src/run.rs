//! `mailmesh run`: starts one node and keeps it running until SIGINT or SIGTERM; with a
//! `[cluster]`, links it to its peers over QUIC and reloads its configuration on SIGHUP or when
//! the file changes (see [`crate::cluster`]).
//!
//! The node is the actors of `mailmesh_actors` on one actix System: a current-thread tokio
//! runtime, plus tokio's blocking pool where the CommitGroup runs its fdatasyncs. Shutting down
//! stops that System; dropping it drops every actor, and an actor dropped while alive still runs
//! its `stopping` hook, where the CommitGroup commits whatever batches are queued. So a signal
//! never loses a write that was already submitted.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::{System, SystemRunner};
use mailmesh_actors::env::{Entropy, Env, TokioClock};
use mailmesh_actors::node::LocalNode;
use mailmesh_actors::transport::Transport;
use mailmesh_protocol::ids::NodeId;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::span::EnteredSpan;
use tracing::{error, info, info_span, Span};

use crate::auth::Authenticator;
use crate::cluster::reload::{self, ReloadTriggers};
use crate::cluster::QuicTransport;
use crate::config::Loaded;
use crate::error::Error;
use crate::imap::ImapServer;
use crate::lmtp::LmtpServer;
use crate::managesieve::ManageSieveServer;
use crate::metrics::MetricsServer;
use crate::operator::links::LinkReport;
use crate::operator::protocol::FRAME_OVERHEAD;
use crate::operator::server::OperatorServer;
use crate::operator::NodeHandle;

/// Runs a node configured by `loaded` (read from `config_path`, which a reload reads again)
/// until a shutdown signal, then stops it.
pub fn run(loaded: Loaded, config_path: Option<&Path>) -> Result<(), Error> {
    let Loaded {
        config,
        options,
        cluster,
        metrics_listen,
        users,
        lmtp,
        managesieve,
        imap,
    } = loaded;
    let auth = Authenticator::new(users);
    let (system, span) = node_system(&options.node)?;
    let _entered = span.enter();
    // Logged absolute, so an operator sees where a relative data_dir really is.
    let data_dir = std::path::absolute(&options.data_dir).unwrap_or_else(|_| options.data_dir.clone());

    let outcome = system.block_on(async {
        // Handlers go in before "node ready": a SIGTERM sent as soon as the node says it is
        // ready must be caught here, not kill the process with the default action.
        let mut shutdown = ShutdownSignals::install()?;
        let mut reloads = ReloadTriggers::install(config_path)?;
        let transport = match &cluster {
            Some(cluster) => Some(QuicTransport::bind(options.node.clone(), cluster).map_err(Error::Cluster)?),
            None => None,
        };
        let engine_transport = transport.clone().map(|t| Rc::new(t) as Rc<dyn Transport>);
        let max_frame = options.limits.max_message_bytes + FRAME_OVERHEAD;
        let socket_dir = options.data_dir.clone();
        let max_script_bytes = options.limits.max_script_bytes;
        let limits = options.limits;
        let wait = LocalNode::fresh_store_wait(&options)?;
        if !wait.is_zero() {
            info!(
                wait_ms = wait.as_millis() as u64,
                "new store: waiting out cluster.max_clock_skew_ms before minting identities"
            );
            tokio::time::sleep(wait).await;
        }
        let node = LocalNode::start_replicating(options, node_env()?, engine_transport)?;
        if let Some(transport) = &transport {
            transport.start(node.inbound.clone());
        }
        let node = Rc::new(RefCell::new(node));
        let links = transport.clone().map(|t| Rc::new(t) as Rc<dyn LinkReport>);
        // Operator commands reach the node from here on; the socket goes before the actors stop.
        let mut handle = NodeHandle::new(node.clone(), links);
        let lmtp_server = match &lmtp {
            Some(lmtp) => {
                let (directory, name) = {
                    let node = node.borrow();
                    (node.directory.clone(), node.node.to_string())
                };
                let server = LmtpServer::start(
                    lmtp,
                    name,
                    auth.clone(),
                    directory,
                    handle.front_ends.deliveries.clone(),
                )
                .await?;
                handle.front_ends.listeners.push(server.stats());
                Some(server)
            }
            None => None,
        };
        let managesieve_server = match &managesieve {
            Some(managesieve) => {
                let directory = node.borrow().directory.clone();
                let server =
                    ManageSieveServer::start(managesieve, max_script_bytes, auth.clone(), directory).await?;
                handle.front_ends.listeners.push(server.stats());
                Some(server)
            }
            None => None,
        };
        let imap_server = match &imap {
            Some(imap) => {
                let (directory, name) = {
                    let node = node.borrow();
                    (node.directory.clone(), node.node.clone())
                };
                let server =
                    ImapServer::start(imap, auth.clone(), directory, limits, name, cluster.as_ref()).await?;
                handle.front_ends.listeners.extend(server.stats());
                Some(server)
            }
            None => None,
        };
        handle.front_ends.auth = Some(auth.clone());
        let operator = OperatorServer::start(&socket_dir, handle.clone(), max_frame)?;
        let metrics = match metrics_listen {
            Some(listen) => Some(MetricsServer::start(listen, handle).await?),
            None => None,
        };
        info!(data_dir = %data_dir.display(), "node ready");
        let mut running = config;
        let signal = loop {
            tokio::select! {
                signal = shutdown.recv() => break signal,
                reason = reloads.next() => {
                    match reload::load_for_reload(config_path, &running) {
                        Ok(loaded) => {
                            let changes = reload::peer_changes(&running, &loaded.config);
                            reload::apply_transport(transport.as_ref(), &loaded);
                            node.borrow_mut().set_peers(loaded.options.peers.clone());
                            auth.replace_users(loaded.users.clone());
                            if let Some(server) = &lmtp_server {
                                server.reload(loaded.lmtp.as_ref());
                            }
                            if let Some(server) = &managesieve_server {
                                server.reload(loaded.managesieve.as_ref());
                            }
                            if let Some(server) = &imap_server {
                                server.reload(loaded.imap.as_ref(), loaded.cluster.as_ref());
                            }
                            reload::log_applied(reason, &changes);
                            running = loaded.config;
                        }
                        Err(e) => error!(reason, error = %e, "configuration not reloaded; still running on the previous one"),
                    }
                }
            }
        };
        info!(signal, "shutting down");
        drop(metrics);
        drop(lmtp_server);
        drop(managesieve_server);
        drop(imap_server);
        drop(operator);
        if let Some(transport) = &transport {
            transport.close();
        }
        Ok::<_, Error>(node)
    });
    let stopped = stop(system);
    // The store stays open until the actors are gone: only then is the data directory free.
    drop(outcome?);
    stopped?;
    info!("node stopped");
    Ok(())
}

/// An actix System for `node`, and the span that puts the node's name on every log line.
///
/// The caller enters the span on this thread, where the actors run; every thread the runtime
/// starts (the blocking pool that flushes commits) enters it too, so no line of this process
/// lacks the name, whichever thread logged it.
pub fn node_system(node: &NodeId) -> Result<(SystemRunner, Span), Error> {
    let span = info_span!("node", name = %node);
    let for_threads = span.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || {
            THREAD_SPAN.with(|s| *s.borrow_mut() = Some(for_threads.clone().entered()));
        })
        .on_thread_stop(|| {
            THREAD_SPAN.with(|s| s.borrow_mut().take());
        })
        .build()
        .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
    Ok((System::with_tokio_rt(move || runtime), span))
}

thread_local! {
    /// The node span as entered by a runtime thread, for as long as that thread lives.
    static THREAD_SPAN: RefCell<Option<EnteredSpan>> = const { RefCell::new(None) };
}

/// The clock and randomness the actors get: wall-clock time and an OS-seeded generator. This is
/// the one place where a node reads them; the actors only see these handles.
pub fn node_env() -> Result<Env, Error> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::ClockBeforeEpoch)?;
    let millis = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    Ok(Env::new(
        Arc::new(TokioClock::new(millis)),
        Entropy::from_seed_bytes(rand::random()),
    ))
}

/// Stops the actix System and drops its actors (running their `stopping` hooks).
pub fn stop(system: SystemRunner) -> Result<(), Error> {
    System::current().stop();
    // `run` returns once the stop request is handled, then drops the runtime and with it every
    // actor still alive.
    system
        .run()
        .map_err(|e| Error::io("stopping the actor system", e))
}

/// SIGTERM (service managers, `kill`) and SIGINT (Ctrl-C) both ask for a clean stop.
struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    fn install() -> Result<Self, Error> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Error::io(format!("cannot install a {name} handler"), e))
        };
        Ok(ShutdownSignals {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Waits for the first signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
