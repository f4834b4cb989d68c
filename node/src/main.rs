//! `mailmesh`: runs a node of the mailmesh replicated mail store, checks its configuration, and
//! offers operator commands that work on a running node (through its operator socket) or on a
//! stopped node's data.
//!
//! - [`config`]: defaults, TOML file and `MAILMESH_` environment, validated into node options;
//! - [`run`]: starts the actors, the cluster transport and the operator socket, and waits for
//!   SIGINT or SIGTERM, reloading on SIGHUP;
//! - [`cluster`]: QUIC links to the peers, mutual TLS, certificates, live reload;
//! - [`operator`]: the operator socket, its protocol, and the one place requests are carried out;
//! - [`ops`]: sends an operator command to the running node, or runs it on the data directory;
//! - [`bench`]: `mailmesh bench`, figures measured on real nodes of this executable;
//! - [`demo`]: `mailmesh demo`, a three-node cluster of this executable, shown replicating;
//! - [`metrics`]: the Prometheus endpoint (`[metrics] listen`);
//! - [`sieve`]: the Sieve interpreter (RFC 5228 and extensions) run at delivery, pure;
//! - [`auth`]: `[[users]]`, password checks (PLAIN, LOGIN) and the per-address failure delay;
//! - [`client_tls`]: TLS for client listeners (certificate files, STARTTLS, implicit TLS);
//! - [`listener`]: accepting client connections (TCP or Unix socket, limits, counts);
//! - [`lmtp`]: the LMTP front end (RFC 2033) with sieve at delivery;
//! - [`managesieve`]: the ManageSieve front end (RFC 5804): users manage their sieve scripts;
//! - [`logging`]: `tracing` lines on stderr, filtered by `RUST_LOG`;
//! - [`error`]: what can fail, and the exit code it gives (0 ok, 1 failure, 2 configuration).

mod auth;
mod bench;
mod client_tls;
mod cluster;
mod config;
mod demo;
mod error;
mod imap;
mod listener;
mod lmtp;
mod logging;
mod managesieve;
mod metrics;
mod operator;
mod ops;
mod run;
mod sieve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_bytes::ByteBuf;

use crate::config::Config;
use crate::error::Error;
use crate::operator::protocol::{FlagChange, MailboxRow, MessageRow, NodeStatus, Reply, Request};

#[derive(Debug, Parser)]
#[command(
    name = "mailmesh",
    version,
    about = "A node of the mailmesh replicated mail store"
)]
struct Cli {
    /// Configuration file (TOML). Without it the built-in defaults apply; MAILMESH_<SECTION>__<KEY>
    /// environment variables override either (e.g. MAILMESH_NODE__NAME=n2).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node until SIGINT or SIGTERM; SIGHUP (or a change of the --config file) reloads
    /// the configuration.
    Run,
    /// Stores a user's sieve script or makes one active.
    #[command(subcommand)]
    Sieve(SieveCommand),
    /// Users: `mailmesh user hash` makes a password hash for `[[users]]`.
    #[command(subcommand)]
    User(UserCommand),
    /// Makes the cluster's certificates: a CA, and one certificate per node.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Validates the configuration and prints it, as the node would use it, in TOML.
    CheckConfig,
    /// Prints the running node's peers: link, sync log, lag, traffic, errors; and moves under way.
    Status {
        /// Prints the status as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Creates, lists, renames, deletes or moves mailboxes.
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Appends a message to a mailbox and prints its uid.
    Append {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's name, e.g. INBOX or Archive/2024.
        #[arg(long)]
        mailbox: String,
        /// The raw message (RFC 5322); `-` reads standard input.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Flags to set, comma-separated, e.g. '\Seen,$Junk'.
        #[arg(long, value_delimiter = ',')]
        flags: Vec<String>,
    },
    /// Changes a message's flags and prints them afterwards (uid, then the flags); with a uid
    /// range, prints each message changed as `fetch` lists it.
    Flags {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's name.
        #[arg(long)]
        mailbox: String,
        /// The message's uid, or a range FIRST:LAST (one commit for all of them).
        #[arg(long, value_name = "UID|FIRST:LAST", value_parser = parse_uids)]
        uid: (u32, u32),
        /// '+FLAGS' adds, '-FLAGS' removes, 'FLAGS' replaces them all (comma-separated, e.g.
        /// '+\Seen,$Junk'; '' clears every flag).
        #[arg(allow_hyphen_values = true, value_name = "[+|-]FLAGS")]
        change: String,
    },
    /// Removes the mailbox's messages flagged \Deleted and prints their uids, one per line.
    Expunge {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's name.
        #[arg(long)]
        mailbox: String,
    },
    /// Prints a message (raw, as stored) with --uid; without it lists the mailbox's messages, one
    /// per line: uid, flags (space-separated), size, content hash (tab-separated).
    Fetch {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's name.
        #[arg(long)]
        mailbox: String,
        /// The message to print.
        #[arg(long)]
        uid: Option<u32>,
    },
    /// Measures real nodes of this executable on loopback (initial sync, flag changes, lag,
    /// quiescent traffic, memory) beside this machine's limits, and prints a table.
    Bench {
        /// A reduced run (under a minute), for CI smoke tests: the figures are not the targets'.
        #[arg(long)]
        quick: bool,
        /// Directory in which the run's own directory is made (the system's temporary directory
        /// by default). Its disk is the one measured.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Keeps the run's directory (configs, data, logs of every node) afterwards.
        #[arg(long)]
        keep: bool,
        /// Runs only these row groups (comma-separated; all by default): `sync-small`,
        /// `sync-large`, `flags`, `lag`, `quiet`, `memory`, `lmtp`, `imap-read`, `idle`,
        /// `imap-append`. The machine's limits are always measured.
        #[arg(long, value_name = "ROWS", value_delimiter = ',', value_enum)]
        only: Vec<bench::RowGroup>,
    },
    /// Starts a three-node cluster on this machine (CA, configs, `mailmesh run` processes on
    /// loopback), shows appends replicating over a full mesh and then over a chain after a live
    /// reload, and runs until Ctrl-C. Needs no set-up.
    Demo {
        /// Directory in which the demo's own directory is made (the system's temporary
        /// directory by default); it is kept afterwards, with the nodes' logs.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stops the nodes and exits after the chain step instead of waiting for Ctrl-C.
        #[arg(long)]
        exit_when_done: bool,
    },
    /// A bare QUIC echo and sink server with the cluster's TLS, for `mailmesh bench` to measure
    /// what QUIC itself carries on this machine.
    #[command(hide = true)]
    BenchPeer {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum SieveCommand {
    /// Stores a script (a script that does not compile is refused with its line and reason).
    Put {
        /// The script's owner.
        #[arg(long)]
        user: String,
        /// The script's name.
        #[arg(long)]
        name: String,
        /// The script (UTF-8); `-` reads standard input.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
    /// Lists a user's scripts, one per line; the active one is marked `(active)`.
    List {
        /// The scripts' owner.
        #[arg(long)]
        user: String,
    },
    /// Makes a script the user's active one; without --name, none is active.
    Activate {
        /// The script's owner.
        #[arg(long)]
        user: String,
        /// The script to run at delivery.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Reads a password from standard input (its first line) and prints an argon2id hash of it
    /// for `password_hash` in `[[users]]`.
    Hash,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Makes a new cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600). Keep ca.key safe: it can
    /// admit any node to the cluster.
    Ca {
        /// Directory to write to (created if missing); existing files are never replaced.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Signs a certificate for node NAME with the CA: OUT/NAME.pem and OUT/NAME.key (mode 0600).
    Node {
        /// The node's name, as in its `node.name`.
        name: String,
        /// Directory of the CA (ca.pem and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Directory to write to (created if missing); existing files are never replaced.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum MailboxCommand {
    /// Creates a mailbox (and any missing parents of a name like "Archive/2024").
    Create {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The new mailbox's name; `/` separates hierarchy levels.
        #[arg(long)]
        name: String,
    },
    /// Lists a user's mailboxes, one per line: name, messages, uidnext, uidvalidity, mailbox id,
    /// locations (comma-separated, `*` for every node), primary (`-` for none) (tab-separated).
    List {
        /// Whose mailboxes to list.
        #[arg(long)]
        user: String,
    },
    /// Moves a mailbox: sets the nodes that hold it and its primary. The new nodes are sent the
    /// mailbox; a node no longer among them lets its copy go once it has passed on its changes.
    Move {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's name.
        #[arg(long)]
        name: String,
        /// The nodes to hold it, comma-separated; `*` for every node.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// The node to be its primary (among --to); the first of --to by default.
        #[arg(long)]
        primary: Option<String>,
    },
    /// Renames a mailbox and its inferiors (Archive/2024 goes along with Archive). The messages
    /// stay; INBOX cannot be renamed.
    Rename {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's current name.
        #[arg(long)]
        name: String,
        /// The new name.
        #[arg(long)]
        to: String,
    },
    /// Deletes a mailbox and its messages, on every node holding it. INBOX cannot be deleted.
    Delete {
        /// The mailbox's owner.
        #[arg(long)]
        user: String,
        /// The mailbox's name.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        // A one-shot command piped into `head` stops quietly when the reader goes away, as other
        // command-line tools do, instead of panicking on its next line. The node itself keeps
        // Rust's default (SIGPIPE ignored): a closed pipe is an error it handles, not its death.
        // SAFETY: setting a signal's disposition to the default, before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(cli: Cli) -> Result<(), Error> {
    // Certificates are made before any node has a configuration to load.
    if let Command::Certs(certs) = cli.command {
        let written = match certs {
            CertsCommand::Ca { out, days } => cluster::certs::make_ca(&out, days)?,
            CertsCommand::Node { name, ca, out, days } => cluster::certs::make_node(&name, &ca, &out, days)?,
        };
        println!("{}\n{}", written.cert.display(), written.key.display());
        return Ok(());
    }
    if let Command::User(UserCommand::Hash) = cli.command {
        return print_password_hash();
    }
    // The benchmark makes its own nodes, each with a configuration file of its own.
    match cli.command {
        Command::Bench {
            quick,
            dir,
            keep,
            only,
        } => {
            return bench::run(bench::BenchOptions {
                quick,
                dir,
                keep,
                only,
            })
        }
        Command::Demo { dir, exit_when_done } => return demo::run(demo::DemoOptions { dir, exit_when_done }),
        Command::BenchPeer {
            ca,
            cert,
            key,
            listen,
        } => {
            return bench::peer::serve(bench::peer::PeerArgs {
                ca,
                cert,
                key,
                listen,
            })
        }
        _ => {}
    }
    let loaded = Config::load(cli.config.as_deref())?;
    let request = match cli.command {
        Command::Run => {
            logging::init("info");
            return run::run(loaded, cli.config.as_deref());
        }
        Command::Certs(_)
        | Command::User(_)
        | Command::Bench { .. }
        | Command::Demo { .. }
        | Command::BenchPeer { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::CheckConfig => {
            print!("{}", loaded.config.to_toml());
            return Ok(());
        }
        Command::Status { json } => {
            logging::init("warn");
            let Reply::Status(status) = ops::execute(loaded.options, Request::Status)? else {
                return Err(unexpected_reply());
            };
            if json {
                let text = serde_json::to_string_pretty(&status)
                    .map_err(|e| Error::io("cannot print the status", e.into()))?;
                println!("{text}");
            } else {
                print!("{}", status_table(&status));
            }
            return Ok(());
        }
        Command::Mailbox(MailboxCommand::Create { user, name }) => Request::CreateMailbox { user, name },
        Command::Mailbox(MailboxCommand::List { user }) => Request::ListMailboxes { user },
        Command::Mailbox(MailboxCommand::Rename { user, name, to }) => {
            Request::RenameMailbox { user, name, to }
        }
        Command::Mailbox(MailboxCommand::Delete { user, name }) => Request::DeleteMailbox { user, name },
        Command::Expunge { user, mailbox } => Request::Expunge { user, mailbox },
        Command::Mailbox(MailboxCommand::Move {
            user,
            name,
            to,
            primary,
        }) => {
            let locations: Vec<String> = to.into_iter().filter(|n| n != "*").collect();
            let primary = primary.or_else(|| locations.first().cloned());
            Request::MoveMailbox {
                user,
                name,
                locations,
                primary,
            }
        }
        Command::Append {
            user,
            mailbox,
            file,
            flags,
        } => Request::Append {
            user,
            mailbox,
            body: ByteBuf::from(ops::read_message(&file)?),
            flags,
        },
        Command::Flags {
            user,
            mailbox,
            uid,
            change,
        } => {
            let (change, list) = match change.as_bytes().first() {
                Some(b'+') => (FlagChange::Add, &change[1..]),
                Some(b'-') => (FlagChange::Remove, &change[1..]),
                _ => (FlagChange::Replace, change.as_str()),
            };
            let flags = list
                .split([',', ' '])
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect();
            match uid {
                (uid, last) if uid == last => Request::StoreFlags {
                    user,
                    mailbox,
                    uid,
                    change,
                    flags,
                },
                (first_uid, last_uid) => Request::StoreFlagsRange {
                    user,
                    mailbox,
                    first_uid,
                    last_uid,
                    change,
                    flags,
                },
            }
        }
        Command::Sieve(SieveCommand::Put { user, name, file }) => Request::PutScript {
            user,
            name,
            content: ByteBuf::from(ops::read_message(&file)?),
        },
        Command::Sieve(SieveCommand::Activate { user, name }) => Request::SetActiveScript { user, name },
        Command::Sieve(SieveCommand::List { user }) => Request::ListScripts { user },
        Command::Fetch { user, mailbox, uid } => match uid {
            Some(uid) => Request::FetchBody { user, mailbox, uid },
            None => Request::ListMessages { user, mailbox },
        },
    };
    // A one-shot command prints its result on stdout; only problems are worth a log line there.
    logging::init("warn");
    print_reply(ops::execute(loaded.options, request)?)
}

/// `mailmesh user hash`: one line of stdin (without its line ending) to a PHC string on stdout.
fn print_password_hash() -> Result<(), Error> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("cannot read the password from standard input", e))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(Error::io(
            "no password on standard input",
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        ));
    }
    let hash = auth::hash_password(password.as_bytes())
        .map_err(|e| Error::io("cannot hash the password", std::io::Error::other(e)))?;
    println!("{hash}");
    Ok(())
}

/// `N` or `FIRST:LAST`, both at least 1, FIRST not above LAST.
fn parse_uids(text: &str) -> Result<(u32, u32), String> {
    let uid = |t: &str| match t.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{t:?} is not a uid (a number from 1)")),
    };
    let (first, last) = match text.split_once(':') {
        Some((first, last)) => (uid(first)?, uid(last)?),
        None => (uid(text)?, uid(text)?),
    };
    if first > last {
        return Err(format!("the range {first}:{last} is empty (FIRST above LAST)"));
    }
    Ok((first, last))
}

fn print_reply(reply: Reply) -> Result<(), Error> {
    use std::io::Write;
    match reply {
        Reply::Mailbox(row) => println!(
            "mailbox {:?} of user {:?} (uidvalidity {}, id {}, locations {}, primary {})",
            row.name,
            row.user,
            row.uidvalidity,
            row.id,
            locations(&row),
            row.primary.as_deref().unwrap_or("-")
        ),
        Reply::Mailboxes(rows) => {
            for row in rows {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    row.name,
                    row.messages,
                    row.uidnext,
                    row.uidvalidity,
                    row.id,
                    locations(&row),
                    row.primary.as_deref().unwrap_or("-")
                );
            }
        }
        Reply::Appended { uid, .. } => println!("{uid}"),
        Reply::Flags(row) => println!("{}\t{}", row.uid, row.flags.join(" ")),
        Reply::Messages(rows) => {
            for row in rows {
                println!("{}", message_line(&row));
            }
        }
        Reply::Body(body) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&body)
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("cannot write the message", e))?;
        }
        Reply::Expunged(uids) => {
            for uid in uids {
                println!("{uid}");
            }
        }
        Reply::Deleted { user, name } => println!("deleted mailbox {name:?} of user {user:?}"),
        Reply::ScriptsChanged { user } => println!("sieve scripts of user {user:?} changed"),
        Reply::Scripts(scripts) => {
            for (name, active) in scripts {
                println!("{name}{}", if active { " (active)" } else { "" });
            }
        }
        Reply::Status(_) => return Err(unexpected_reply()),
    }
    Ok(())
}

fn locations(row: &MailboxRow) -> String {
    if row.locations.is_empty() {
        "*".to_string()
    } else {
        row.locations.join(",")
    }
}

fn message_line(row: &MessageRow) -> String {
    format!("{}\t{}\t{}\t{}", row.uid, row.flags.join(" "), row.size, row.guid)
}

fn unexpected_reply() -> Error {
    Error::io(
        "the node answered with something else than was asked",
        std::io::Error::from(std::io::ErrorKind::InvalidData),
    )
}

/// `mailmesh status` as a table: one row per peer, then the moves under way.
fn status_table(status: &NodeStatus) -> String {
    use std::fmt::Write;
    let na = || "n/a".to_string();
    let age = |ms: i64| {
        let ms = ms.max(0);
        if ms < 10_000 {
            format!("{ms}ms")
        } else if ms < 3_600_000 {
            format!("{}s", ms / 1000)
        } else {
            format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60)
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}: {} peer(s), {} active mailbox(es){}",
        status.node,
        status.peers.len(),
        status.active_mailboxes,
        if status.clustered {
            ""
        } else {
            " (no cluster transport: running alone)"
        }
    );
    let header = [
        "PEER",
        "CONNECTED",
        "SINCE",
        "ADDRESS",
        "LOG",
        "SYNCING",
        "LAG",
        "SENT",
        "RECEIVED",
        "FULL-SYNCS",
        "QUARANTINED",
        "LAST-ERROR",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for peer in &status.peers {
        rows.push(vec![
            peer.name.clone(),
            match peer.connected {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None if peer.replicating => "yes (engine)".into(),
                None => "no (engine)".into(),
            },
            peer.since_ms
                .map(|t| format!("{} ago", age(status.now_ms - t)))
                .unwrap_or_else(na),
            peer.address.clone().unwrap_or_else(na),
            peer.log_depth.to_string(),
            peer.syncing.to_string(),
            peer.lag_ms.map(age).unwrap_or_else(|| "0".into()),
            peer.bytes_sent.map(|b| b.to_string()).unwrap_or_else(na),
            peer.bytes_received.map(|b| b.to_string()).unwrap_or_else(na),
            peer.full_syncs.to_string(),
            peer.quarantined.to_string(),
            peer.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if !status.listeners.is_empty() {
        let _ = writeln!(out, "listeners:");
        for l in &status.listeners {
            let _ = writeln!(
                out,
                "  {} {}: {} connection(s) open, {} accepted, {} refused over the limits",
                l.protocol, l.address, l.open, l.accepted, l.refused
            );
        }
    }
    if !status.moves.is_empty() {
        let _ = writeln!(out, "moves in progress:");
        for m in &status.moves {
            let _ = writeln!(
                out,
                "  {}/{} to {} (primary {}){}{}{}{}",
                m.user,
                m.name,
                if m.locations.is_empty() {
                    "*".to_string()
                } else {
                    m.locations.join(",")
                },
                m.primary.as_deref().unwrap_or("-"),
                if m.sending_to.is_empty() {
                    String::new()
                } else {
                    format!(", sending to {}", m.sending_to.join(","))
                },
                if m.leaving {
                    ", leaving this node once drained"
                } else {
                    ""
                },
                if m.holders.is_empty() || m.holders == m.locations {
                    String::new()
                } else {
                    format!(", held on {}", m.holders.join(","))
                },
                if m.letting_go.is_empty() {
                    String::new()
                } else {
                    format!(", still letting go: {}", m.letting_go.join(","))
                }
            );
        }
    }
    out
}
