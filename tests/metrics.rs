//! The Prometheus endpoint, scraped from a real node over HTTP: off unless configured, the
//! node's counters and the flush-duration histogram as appends happen, and bad requests answered
//! without disturbing the node.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{append_file, finish, mailmesh, op, start_node, write_config, DEADLINE};
use tempfile::TempDir;

/// Sends `request` to the endpoint and returns the whole response.
fn http(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn scrape(addr: &str) -> String {
    let response = http(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    response
}

/// The value of the sample named exactly `series` (name and labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn append(config: &Path, message: &Path) {
    append_file(config, "alice", "INBOX", message, &[]).expect_code(0);
}

#[test]
fn a_scrape_shows_appends_commits_and_flush_durations() {
    let tmp = TempDir::new().unwrap();
    let config = write_config(tmp.path(), "n1", &tmp.path().join("data"));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();

    let mut node = start_node(&config);
    let line = node.wait_for_stderr("metrics endpoint ready");
    let addr = line.rsplit("addr=").next().unwrap().trim().to_string();

    op(
        &config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    for i in 0..3 {
        let message = tmp.path().join(format!("m{i}.eml"));
        std::fs::write(&message, format!("Subject: metrics {i}\r\n\r\nbody {i}\r\n")).unwrap();
        append(&config, &message);
    }

    let text = scrape(&addr);
    assert_eq!(sample(&text, "mailmesh_appends_total"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "mailmesh_active_mailboxes"), Some(1.0), "{text}");
    let groups = sample(&text, "mailmesh_commit_groups_total").unwrap();
    // The mailbox and each append were committed, together or apart.
    assert!(groups >= 1.0, "{text}");
    assert!(
        sample(&text, "mailmesh_commit_batches_total").unwrap() >= 4.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "mailmesh_commit_flush_seconds_count"),
        Some(groups),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mailmesh_commit_flush_seconds_bucket{le=\"+Inf\"}"),
        Some(groups),
        "{text}"
    );
    assert!(
        sample(&text, "mailmesh_commit_flush_seconds_sum").unwrap() > 0.0,
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // Bad requests get an HTTP error; the node goes on serving both the endpoint and commands.
    assert!(http(&addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(&addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(http(&addr, &huge).starts_with("HTTP/1.1 400"));
    let mut cut = TcpStream::connect(&addr).unwrap();
    cut.write_all(b"GET /met").unwrap();
    drop(cut);
    let message = tmp.path().join("m3.eml");
    std::fs::write(&message, "Subject: metrics 3\r\n\r\nbody 3\r\n").unwrap();
    append(&config, &message);
    let deadline = Instant::now() + DEADLINE;
    while sample(&scrape(&addr), "mailmesh_appends_total") != Some(4.0) {
        assert!(Instant::now() < deadline, "the fourth append never showed");
        std::thread::sleep(Duration::from_millis(20));
    }

    node.signal(libc::SIGTERM);
    node.wait().expect_code(0).expect_no_panic();
}

#[test]
fn metrics_are_off_unless_configured_and_a_bad_address_is_a_config_error() {
    let tmp = TempDir::new().unwrap();
    let config = write_config(tmp.path(), "n1", &tmp.path().join("data"));
    let node = start_node(&config);
    node.signal(libc::SIGTERM);
    let done = node.wait();
    assert!(!done.stderr.contains("metrics endpoint"), "{}", done.stderr);

    let mut bad = mailmesh(&["run", "--config", config.to_str().unwrap()]);
    bad.env("MAILMESH_METRICS__LISTEN", "localhost");
    finish(&mut bad)
        .expect_code(2)
        .expect_stderr(&["metrics.listen", "\"localhost\" is not an address and port"]);
}
