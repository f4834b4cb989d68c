//! The operator socket: one-shot commands work on a running node through
//! `<data_dir>/mailmesh.sock`, on a stopped node's data directory without it, and bad input on the
//! socket closes that connection only.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use support::{append_file, op, start_node, store_flags, NodeDir};

/// `mailmesh fetch` without --uid: one line per message (uid, flags, size, hash).
fn messages(config: &Path) -> Vec<Vec<String>> {
    let done = op(config, &["fetch", "--user", "alice", "--mailbox", "INBOX"]);
    done.expect_code(0);
    done.stdout
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn node_files() -> NodeDir {
    NodeDir::new("socket-31337")
}

#[test]
fn commands_work_on_a_running_node_and_on_its_stopped_data() {
    let node = node_files();
    let config = &node.config;
    let running = start_node(&node.config);

    let socket = node.data.join("mailmesh.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    let appended = append_file(config, "alice", "INBOX", &node.message, &["--flags", "\\Seen"]);
    assert_eq!(appended.expect_code(0).stdout, "1\n");
    let add = store_flags(config, "alice", "INBOX", "1", "+$Junk,\\Flagged");
    assert_eq!(add.expect_code(0).stdout, "1\t$Junk \\Flagged \\Seen\n");
    let remove = store_flags(config, "alice", "INBOX", "1", "-\\Seen");
    assert_eq!(remove.expect_code(0).stdout, "1\t$Junk \\Flagged\n");
    let replace = store_flags(config, "alice", "INBOX", "1", "\\Answered");
    assert_eq!(replace.expect_code(0).stdout, "1\t\\Answered\n");
    store_flags(config, "alice", "INBOX", "7", "+\\Seen")
        .expect_code(1)
        .expect_stderr(&["no message with uid 7"]);

    let fetched = op(
        config,
        &["fetch", "--user", "alice", "--mailbox", "INBOX", "--uid", "1"],
    );
    assert_eq!(
        fetched.expect_code(0).stdout,
        "Subject: socket-31337\r\n\r\nHello\r\n"
    );
    let listed = messages(config);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0][..3], ["1", "\\Answered", "32"]);

    let status = op(config, &["status"]);
    assert!(
        status
            .expect_code(0)
            .stdout
            .starts_with("node n1: 0 peer(s), 1 active mailbox(es)"),
        "{}",
        status.stdout
    );
    let json = op(config, &["status", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json.expect_code(0).stdout).unwrap();
    assert_eq!(parsed["node"], "n1");
    assert_eq!(parsed["peers"], serde_json::json!([]));

    running.signal(libc::SIGTERM);
    running.wait().expect_code(0);
    assert!(!socket.exists(), "the socket outlived the node");

    // Stopped: the same commands open the data directory, and find what the node wrote.
    assert_eq!(messages(config), listed);
    let appended = append_file(config, "alice", "INBOX", &node.message, &[]);
    assert_eq!(appended.expect_code(0).stdout, "2\n");
    op(config, &["status"])
        .expect_code(1)
        .expect_stderr(&["no node is running on", "mailmesh run"]);
}

/// Sends `bytes` on a fresh connection and returns whatever the node answers before closing it.
fn send_raw(socket: &Path, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(bytes).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    stream.set_read_timeout(Some(support::DEADLINE)).unwrap();
    let mut answer = Vec::new();
    // The node closes the connection after answering a bad request: read_to_end returns.
    stream.read_to_end(&mut answer).unwrap();
    answer
}

#[test]
fn bad_requests_close_their_connection_only() {
    let node = node_files();
    let config = &node.config;
    let mut running = start_node(&node.config);
    let socket = node.data.join("mailmesh.sock");
    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);

    // A connection opened before the bad ones stays usable after them.
    let mut bystander = UnixStream::connect(&socket).unwrap();

    let mut garbage = vec![0, 0, 0, 64];
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    let answer = send_raw(&socket, &garbage, false);
    assert!(contains(&answer, b"undecodable request"), "{answer:?}");

    let answer = send_raw(&socket, &[0xff, 0xff, 0xff, 0xff], false);
    assert!(contains(&answer, b"exceeds the limit"), "{answer:?}");

    let answer = send_raw(&socket, &[0, 0, 1, 0, 1, 2, 3], true);
    assert!(contains(&answer, b"truncated request"), "{answer:?}");

    // A request of a protocol version this node does not speak: {version: 99, request: "Status"}.
    let mut other_version = vec![0x82, 0xa7];
    other_version.extend_from_slice(b"version");
    other_version.push(99);
    other_version.push(0xa7);
    other_version.extend_from_slice(b"request");
    other_version.push(0xa6);
    other_version.extend_from_slice(b"Status");
    let mut framed = (other_version.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&other_version);
    let answer = send_raw(&socket, &framed, false);
    assert!(
        contains(&answer, b"operator protocol version 99 is not supported"),
        "{answer:?}"
    );

    // The same request at version 1 on the bystander connection gets a status.
    other_version[9] = 1;
    let mut framed = (other_version.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&other_version);
    bystander.write_all(&framed).unwrap();
    let mut length = [0u8; 4];
    bystander.read_exact(&mut length).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    bystander.read_exact(&mut body).unwrap();
    assert!(contains(&body, b"Ok") && contains(&body, b"n1"), "{body:?}");

    // Each bad request was logged, and the node still serves commands.
    running.wait_for_stderr("operator protocol version 99 is not supported");
    op(config, &["status"]).expect_code(0);
    let appended = append_file(config, "alice", "INBOX", &node.message, &[]);
    assert_eq!(appended.expect_code(0).stdout, "1\n");

    running.signal(libc::SIGTERM);
    running.wait().expect_code(0).expect_no_panic();
}

/// A node killed with SIGKILL leaves its socket file behind: commands then work on the stopped
/// data directory, and the next `run` replaces the stale socket.
#[test]
fn a_stale_socket_of_a_killed_node_is_handled() {
    let node = node_files();
    let config = &node.config;
    let running = start_node(&node.config);
    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    running.signal(libc::SIGKILL);
    let killed = running.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(libc::SIGKILL)
    );
    let socket = node.data.join("mailmesh.sock");
    assert!(socket.exists(), "SIGKILL cannot remove the socket");

    let appended = append_file(config, "alice", "INBOX", &node.message, &[]);
    assert_eq!(appended.expect_code(0).stdout, "1\n");

    let running = start_node(&node.config);
    let appended = append_file(config, "alice", "INBOX", &node.message, &[]);
    assert_eq!(appended.expect_code(0).stdout, "2\n");
    assert_eq!(messages(config).len(), 2);
    running.signal(libc::SIGTERM);
    running.wait().expect_code(0);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Expunge, rename and delete on `config`'s node (running or not): each answers, and the
/// mailbox list and message list show the change. `tag` keeps the names of two runs apart.
fn expunge_rename_delete(config: &Path, message: &Path, tag: &str) {
    let work = format!("Work-{tag}");
    let done = format!("Done-{tag}");
    op(config, &["mailbox", "create", "--user", "alice", "--name", &work]).expect_code(0);
    for _ in 0..3 {
        append_file(config, "alice", &work, message, &[]).expect_code(0);
    }
    for uid in ["1", "3"] {
        store_flags(config, "alice", &work, uid, "+\\Deleted").expect_code(0);
    }
    let expunged = op(config, &["expunge", "--user", "alice", "--mailbox", &work]);
    assert_eq!(expunged.expect_code(0).stdout, "1\n3\n");
    let again = op(config, &["expunge", "--user", "alice", "--mailbox", &work]);
    assert_eq!(again.expect_code(0).stdout, "", "nothing left to expunge");
    let left = op(config, &["fetch", "--user", "alice", "--mailbox", &work]);
    let uids: Vec<&str> = left
        .expect_code(0)
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(uids, ["2"]);

    let renamed = op(
        config,
        &[
            "mailbox", "rename", "--user", "alice", "--name", &work, "--to", &done,
        ],
    );
    assert!(
        renamed
            .expect_code(0)
            .stdout
            .starts_with(&format!("mailbox {done:?}")),
        "{}",
        renamed.stdout
    );
    let listed = op(config, &["mailbox", "list", "--user", "alice"]);
    let names: Vec<&str> = listed
        .expect_code(0)
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert!(
        names.contains(&done.as_str()) && !names.contains(&work.as_str()),
        "{names:?}"
    );
    let row = listed
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{done}\t")))
        .unwrap();
    assert_eq!(
        row.split('\t').nth(1),
        Some("1"),
        "the message moved with the name: {row}"
    );

    let deleted = op(config, &["mailbox", "delete", "--user", "alice", "--name", &done]);
    assert_eq!(
        deleted.expect_code(0).stdout,
        format!("deleted mailbox {done:?} of user \"alice\"\n")
    );
    let listed = op(config, &["mailbox", "list", "--user", "alice"]);
    assert!(!listed.expect_code(0).stdout.contains(&done), "{}", listed.stdout);

    // Unknown mailboxes and users, and what no mailbox may do, are refused by name.
    let no_such = |args: &[&str], needle: &str| {
        op(config, args)
            .expect_code(1)
            .expect_no_panic()
            .expect_stderr(&[needle]);
    };
    no_such(
        &["expunge", "--user", "alice", "--mailbox", &work],
        &format!("user \"alice\" has no mailbox named {work:?}"),
    );
    no_such(
        &["expunge", "--user", "nobody", "--mailbox", "INBOX"],
        "user \"nobody\" has no mailbox named \"INBOX\"",
    );
    no_such(
        &[
            "mailbox", "rename", "--user", "alice", "--name", &done, "--to", "X",
        ],
        &format!("user \"alice\" has no mailbox named {done:?}"),
    );
    no_such(
        &["mailbox", "delete", "--user", "alice", "--name", &done],
        &format!("user \"alice\" has no mailbox named {done:?}"),
    );
    no_such(
        &["mailbox", "delete", "--user", "nobody", "--name", "Foo"],
        "user \"nobody\" has no mailbox named \"Foo\"",
    );
    no_such(
        &[
            "mailbox", "rename", "--user", "alice", "--name", "INBOX", "--to", "Old",
        ],
        "rename INBOX",
    );
    no_such(
        &["mailbox", "delete", "--user", "alice", "--name", "INBOX"],
        "delete INBOX",
    );
}

#[test]
fn expunge_rename_and_delete_work_on_a_running_node_and_on_its_stopped_data() {
    let node = node_files();
    let config = &node.config;
    let running = start_node(&node.config);
    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    expunge_rename_delete(config, &node.message, "running");
    running.signal(libc::SIGTERM);
    running.wait().expect_code(0);

    expunge_rename_delete(config, &node.message, "stopped");
    // What the stopped-directory commands wrote is what the next node starts with.
    let running = start_node(&node.config);
    let listed = op(config, &["mailbox", "list", "--user", "alice"]);
    let names: Vec<&str> = listed
        .expect_code(0)
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, ["INBOX"]);
    running.signal(libc::SIGTERM);
    running.wait().expect_code(0);
}

#[test]
fn flags_over_a_uid_range_change_every_message_in_it_and_refuse_an_empty_range() {
    let node = node_files();
    let config = &node.config;
    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    for _ in 0..4 {
        append_file(config, "alice", "INBOX", &node.message, &[]).expect_code(0);
    }
    let running = start_node(config);
    let changed = store_flags(config, "alice", "INBOX", "2:3", "+\\Seen");
    let uids: Vec<&str> = changed
        .expect_code(0)
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(uids, ["2", "3"]);
    let flagged: Vec<(String, bool)> = messages(config)
        .into_iter()
        .map(|m| (m[0].clone(), m[1].contains("\\Seen")))
        .collect();
    assert_eq!(
        flagged,
        [("1", false), ("2", true), ("3", true), ("4", false)].map(|(u, f)| (u.to_string(), f))
    );
    store_flags(config, "alice", "INBOX", "3:2", "+\\Seen")
        .expect_code(2)
        .expect_stderr(&["empty"]);
    store_flags(config, "alice", "INBOX", "0:2", "+\\Seen")
        .expect_code(2)
        .expect_stderr(&["not a uid"]);
    running.signal(libc::SIGTERM);
    running.wait().expect_code(0);
}
