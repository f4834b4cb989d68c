//! `mailmesh bench --quick` runs its reduced set on real nodes and prints every row with a
//! figure. Nothing about speed is asserted: the figures depend on the machine, and the table
//! itself says which targets are met.

mod support;

use std::time::Duration;

use support::{mailmesh, Running};
use tempfile::TempDir;

/// The rows `mailmesh bench` prints (node/src/bench/table.rs), and the machine limits.
const ROWS: [&str; 20] = [
    "fdatasyncs/s of the data disk",
    "raw QUIC bytes/s between two processes",
    "QUIC request round trips/s, one at a time",
    "QUIC request round trips/s, 32 in flight",
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

#[test]
fn bench_quick_prints_every_row_with_a_figure_and_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let run = Running::start(mailmesh(&["bench", "--quick", "--dir"]).arg(tmp.path()));
    // A generous bound for a loaded CI machine; the run itself takes well under a minute.
    let done = run.wait_within(Duration::from_secs(600));
    done.expect_code(0).expect_no_panic();
    for row in ROWS {
        let line = done
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{}", done.stdout));
        let figure = line.split('|').nth(2).unwrap_or("");
        assert!(
            figure.chars().any(|c| c.is_ascii_digit()),
            "row {row:?} has no number: {line:?}"
        );
    }
    // The LMTP row says how many deliveries shared a commit group (read from the node's metrics):
    // at least one, since every delivery is in some group.
    let lmtp = done
        .stdout
        .lines()
        .find(|l| l.starts_with("| LMTP durable deliveries"))
        .unwrap();
    let per_group: f64 = lmtp
        .split("; ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deliveries per commit group in {lmtp:?}"));
    assert!(per_group >= 1.0, "{lmtp}");
    // Targets are judged, one way or the other, on every figure row.
    let judged = done
        .stdout
        .lines()
        .filter(|l| l.ends_with("| yes |") || l.ends_with("| NO |"))
        .count();
    assert_eq!(judged, 16, "{}", done.stdout);
    // The run's directory (nodes' data, certificates, logs) is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
