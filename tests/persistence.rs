//! Data written through the operator commands survives a node's run and stop: mailboxes stay,
//! uids continue where they left off, bodies are in the segment files.

use std::path::Path;

mod support;

use support::{append_file, finish, mailmesh, op, start_node, NodeDir};

/// The `mailbox list` line of `name`, split into its tab-separated columns.
fn listed(config: &Path, user: &str, name: &str) -> Vec<String> {
    let done = op(config, &["mailbox", "list", "--user", user]);
    done.expect_code(0);
    done.stdout
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols[0] == name)
        .unwrap_or_else(|| panic!("{name} not listed:\n{}", done.stdout))
}

#[test]
fn mailboxes_and_uids_survive_a_node_run_and_stop() {
    let node = NodeDir::new("persisted-4711");
    let (config, data) = (&node.config, &node.data);

    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    let first = append_file(
        config,
        "alice",
        "INBOX",
        &node.message,
        &["--flags", "\\Seen,$Junk"],
    );
    assert_eq!(first.expect_code(0).stdout, "1\n");
    let before = listed(config, "alice", "INBOX");
    assert_eq!(before[1..3], ["1", "2"], "messages and uidnext: {before:?}");

    let running = start_node(config);
    running.signal(libc::SIGINT);
    running
        .wait()
        .expect_code(0)
        .expect_stderr(&["signal=\"SIGINT\"", "node stopped"]);

    let after = listed(config, "alice", "INBOX");
    assert_eq!(after, before, "INBOX changed across a run");
    let second = append_file(config, "alice", "INBOX", &node.message, &[]);
    assert_eq!(second.expect_code(0).stdout, "2\n");
    let last = listed(config, "alice", "INBOX");
    assert_eq!(last[1..3], ["2", "3"], "messages and uidnext: {last:?}");
    // Same mailbox (id and uidvalidity), not a re-created one.
    assert_eq!(last[3..], before[3..]);

    // One body stored once: both appends carry the same bytes, and bodies are kept by content.
    let segment = std::fs::read(data.join("bodies").join("00000001.seg")).unwrap();
    let needle = b"persisted-4711";
    let copies = segment.windows(needle.len()).filter(|w| w == needle).count();
    assert_eq!(copies, 1, "the body should be in the first segment exactly once");
}

#[test]
fn refused_operations_exit_1_with_the_reason_and_change_nothing() {
    let node = NodeDir::new("x");
    let config = &node.config;
    let file = node.message.to_str().unwrap();
    let append = |mailbox: &str, extra: &[&str]| append_file(config, "alice", mailbox, &node.message, extra);

    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(1)
    .expect_stderr(&["already has a mailbox named \"INBOX\""]);
    op(config, &["mailbox", "list", "--user", "Not A User"])
        .expect_code(1)
        .expect_stderr(&["invalid user name \"Not A User\""]);
    append("Nope", &[])
        .expect_code(1)
        .expect_stderr(&["has no mailbox named \"Nope\""]);
    append("INBOX", &["--flags", "bad flag"])
        .expect_code(1)
        .expect_stderr(&["invalid flag \"bad flag\""]);
    let mut too_big = mailmesh(&["append", "--user", "alice", "--mailbox", "INBOX", "--file", file]);
    too_big
        .arg("--config")
        .arg(config)
        .env("MAILMESH_LIMITS__MAX_MESSAGE_BYTES", "8");
    finish(&mut too_big)
        .expect_code(1)
        .expect_stderr(&["exceeds the maximum message size of 8 bytes"]);
    op(
        config,
        &[
            "append",
            "--user",
            "alice",
            "--mailbox",
            "INBOX",
            "--file",
            "/nonexistent/m.eml",
        ],
    )
    .expect_code(1)
    .expect_stderr(&["cannot read /nonexistent/m.eml"]);

    // None of the refusals used up a uid or left a message behind.
    assert_eq!(append("INBOX", &[]).expect_code(0).stdout, "1\n");
    assert_eq!(listed(config, "alice", "INBOX")[1], "1");
}

/// A one-shot command whose reader has gone (`mailmesh mailbox list | head -1` on many
/// mailboxes) ends as command-line tools do, by SIGPIPE, not with a panic and its backtrace.
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let node = NodeDir::new("x");
    let config = &node.config;
    op(
        config,
        &["mailbox", "create", "--user", "alice", "--name", "INBOX"],
    )
    .expect_code(0);
    // The reading end is closed before the command starts: its first line hits a closed pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = mailmesh(&["mailbox", "list", "--user", "alice"]);
    cmd.arg("--config").arg(config);
    let out = cmd
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
