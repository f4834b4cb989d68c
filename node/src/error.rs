//! What can make a `mailmesh` command fail, and the exit code each failure gives.

use mailmesh_actors::{MailError, StoreError};

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::operator::protocol::OperatorError;

/// Exit code of a configuration that cannot be loaded or is invalid (clap uses 2 for a bad
/// command line too: both mean "fix how you called it").
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of everything else that went wrong: the store, a refused operation, I/O.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config error: {0}")]
    Config(#[from] ConfigError),
    #[error("error: {0}")]
    Store(#[from] StoreError),
    #[error("error: {0}")]
    Mail(#[from] MailError),
    #[error("error: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("error: {0}")]
    Cluster(String),
    /// A client listener could not start (its TLS files, its address).
    #[error("error: {0}")]
    Listener(String),
    #[error("error: {0}")]
    Certs(#[from] crate::cluster::certs::CertError),
    /// The running node refused or failed the request (its message says why).
    #[error("error: {0}")]
    Operator(#[from] OperatorError),
    #[error(
        "error: no node is running on {} (its operator socket is absent); start it with `mailmesh run`",
        .0.display()
    )]
    NotRunning(PathBuf),
    /// `mailmesh bench` could not take a measurement (a node that would not start, a deadline
    /// passed); the message says which and where the logs are.
    #[error("error: bench: {0}")]
    Bench(String),
    /// `mailmesh demo` could not go on (a node that would not start, a deadline passed).
    #[error("error: demo: {0}")]
    Demo(String),
    #[error("error: the system clock reads a time before 1970; set the clock before starting a node")]
    ClockBeforeEpoch,
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            _ => EXIT_FAILURE,
        }
    }
}
