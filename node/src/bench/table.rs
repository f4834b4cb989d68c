//! The benchmark's output: the machine's limits, then one row per figure with its target (the
//! Cyrus 3.6 and Dovecot 2.3 figures in brackets) and whether it is met, as a Markdown table
//! that goes into README.md unchanged.

use std::fmt::Write as _;

use super::limits::{Limits, IN_FLIGHT};

/// The names of the rows, in order: every run prints each of them with a number.
pub const ROW_NAMES: [&str; 16] = [
    "initial sync, 2 KB messages",
    "initial sync, 50 KB messages",
    "flag changes replicated",
    "bytes on the wire per flag change",
    "replication lag p50",
    "replication lag p99",
    "quiescent replication traffic",
    "resident memory, idle mailboxes",
    "LMTP durable deliveries, 16 sessions, 2 KB",
    "IMAP SELECT, large mailbox",
    "IMAP UID FETCH 1:* (FLAGS), large mailbox",
    "IMAP UID SEARCH UNSEEN, large mailbox",
    "IMAP session memory, large mailbox selected",
    "LMTP delivery to IDLE EXISTS, same node",
    "LMTP delivery to IDLE EXISTS, on the peer",
    "IMAP APPEND, 16 sessions, 2 KB",
];

pub struct Row {
    pub name: &'static str,
    pub measured: String,
    /// The figure beside the machine's own limit, where one applies.
    pub vs_limit: String,
    /// CPU the nodes used while the figure was measured, and time their actor threads waited
    /// for a core: whether a slow figure was work, the disk, or other load on the machine.
    pub cpu: String,
    pub target: &'static str,
    pub met: bool,
}

/// What the run was, for the heading.
pub struct Heading {
    pub quick: bool,
    pub machine: String,
    pub date: String,
    pub dir: String,
}

pub fn render(heading: &Heading, limits: &Limits, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mailmesh bench{}: {}; {}; data in {}\n",
        if heading.quick {
            " --quick (reduced counts: a smoke run, not the figures)"
        } else {
            ""
        },
        heading.date,
        heading.machine,
        heading.dir
    );
    let _ = writeln!(out, "| machine limit (measured in this run) | value |");
    let _ = writeln!(out, "| --- | --- |");
    let _ = writeln!(
        out,
        "| fdatasyncs/s of the data disk (2 KB writes) | {} |",
        count(limits.fdatasyncs_per_sec)
    );
    let _ = writeln!(
        out,
        "| raw QUIC bytes/s between two processes (one stream) | {} |",
        rate(limits.quic_bytes_per_sec)
    );
    let _ = writeln!(
        out,
        "| QUIC request round trips/s, one at a time | {} ({} each) |",
        count(limits.round_trips_per_sec),
        duration(1.0 / limits.round_trips_per_sec)
    );
    let _ = writeln!(
        out,
        "| QUIC request round trips/s, {IN_FLIGHT} in flight | {} |",
        count(limits.parallel_round_trips_per_sec)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| figure | measured | vs machine limit | nodes' CPU meanwhile | target [Cyrus 3.6 / Dovecot 2.3] | met |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.name,
            row.measured,
            or_dash(&row.vs_limit),
            or_dash(&row.cpu),
            row.target,
            if row.met { "yes" } else { "NO" }
        );
    }
    out
}

fn or_dash(cell: &str) -> &str {
    if cell.is_empty() {
        "-"
    } else {
        cell
    }
}

/// 12345.6 as "12,346".
pub fn count(n: f64) -> String {
    let digits = (n.round().max(0.0) as u64).to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.join(",")
}

/// Bytes/s in MB/s (10^6).
pub fn rate(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

/// Seconds as ms or s, with sensible precision.
pub fn duration(secs: f64) -> String {
    if secs < 0.001 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// Bytes in MB (10^6).
pub fn megabytes(bytes: f64) -> String {
    format!("{:.0} MB", bytes / 1e6)
}
