//! Logging: `tracing` events formatted as text lines on stderr, filtered by `RUST_LOG`.
//!
//! stdout is left to command output (a uid, a mailbox list, a configuration), so scripts can read
//! it while logs go elsewhere.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset; a `RUST_LOG`
/// that does not parse is reported and replaced by the default rather than silencing the node.
pub fn init(default_filter: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring RUST_LOG={spec:?} ({e}); using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal; files and pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
