//! `mailmesh`: runs a node of the mailmesh replicated mail store, checks its configuration, and
//! offers a few operator commands on a stopped node's data.
//!
//! - [`config`]: defaults, TOML file and `MAILMESH_` environment, validated into node options;
//! - [`run`]: starts the actors and waits for SIGINT or SIGTERM, reloading on SIGHUP;
//! - [`cluster`]: QUIC links to the peers, mutual TLS, certificates, live reload;
//! - [`ops`]: mailbox and append commands on a stopped node's data directory;
//! - [`logging`]: `tracing` lines on stderr, filtered by `RUST_LOG`;
//! - [`error`]: what can fail, and the exit code it gives (0 ok, 1 failure, 2 configuration).

mod cluster;
mod config;
mod error;
mod logging;
mod ops;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::error::Error;

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
    /// Makes the cluster's certificates: a CA, and one certificate per node.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Validates the configuration and prints it, as the node would use it, in TOML.
    CheckConfig,
    /// Creates or lists mailboxes (on a stopped node's data directory).
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Appends a message to a mailbox and prints its uid (on a stopped node's data directory).
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
    /// Lists a user's mailboxes, one per line: name, messages, uidnext, uidvalidity, mailbox id
    /// (tab-separated).
    List {
        /// Whose mailboxes to list.
        #[arg(long)]
        user: String,
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
    let loaded = Config::load(cli.config.as_deref())?;
    // A one-shot command prints its result on stdout; only problems are worth a log line there.
    match cli.command {
        Command::Run => {
            logging::init("info");
            run::run(loaded, cli.config.as_deref())
        }
        Command::Certs(_) => unreachable!("handled before the configuration is loaded"),
        Command::CheckConfig => {
            print!("{}", loaded.config.to_toml());
            Ok(())
        }
        Command::Mailbox(MailboxCommand::Create { user, name }) => {
            logging::init("warn");
            let info = ops::create_mailbox(loaded.options, user, name)?;
            println!(
                "created mailbox {:?} of user {:?} (uidvalidity {}, id {})",
                info.name, info.user, info.uidvalidity, info.id
            );
            Ok(())
        }
        Command::Mailbox(MailboxCommand::List { user }) => {
            logging::init("warn");
            for (info, state) in ops::list_mailboxes(loaded.options, user)? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    info.name, state.exists, state.uidnext, info.uidvalidity, info.id
                );
            }
            Ok(())
        }
        Command::Append {
            user,
            mailbox,
            file,
            flags,
        } => {
            logging::init("warn");
            let body = ops::read_message(&file)?;
            let outcome = ops::append(loaded.options, user, mailbox, body, flags)?;
            println!("{}", outcome.uid);
            Ok(())
        }
    }
}
