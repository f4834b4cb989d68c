//! Configuration as an operator meets it: every mistake is named (file and line, or key) and
//! exits with code 2 before anything starts; environment variables override the file.

use std::path::Path;

mod support;

use support::{finish, mailmesh, write_config, Finished};
use tempfile::TempDir;

/// Runs `args` with `config` (and `env`), once as `check-config` and once as `run`: both must
/// refuse the same way. Returns the `run` result.
fn refused(config: Option<&Path>, env: &[(&str, &str)], expected: &[&str]) -> Finished {
    let mut last = None;
    for command in ["check-config", "run"] {
        let mut cmd = mailmesh(&[command]);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        // A refused run must not have created anything, so it runs where that would show.
        let cwd = TempDir::new().unwrap();
        cmd.current_dir(cwd.path());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let done = finish(&mut cmd);
        done.expect_code(2).expect_no_panic().expect_stderr(expected);
        assert!(done.stderr.starts_with("config error: "), "{}", done.stderr);
        assert!(
            !cwd.path().join("mailmesh-data").exists(),
            "`{command}` created a data dir despite a bad configuration"
        );
        last = Some(done);
    }
    last.unwrap()
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("broken.toml");
    std::fs::write(&path, "[node]\nname = \"n1\"\n[storage\n").unwrap();
    // The config crate names the file relative to the current directory, so match its name.
    refused(Some(&path), &[], &["broken.toml", "line 3"]);
}

#[test]
fn a_missing_config_file_is_named() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("absent.toml");
    refused(Some(&path), &[], &[path.to_str().unwrap(), "not found"]);
}

#[test]
fn an_invalid_node_name_names_node_name() {
    let tmp = TempDir::new().unwrap();
    let path = write_config(tmp.path(), "Bad Name", &tmp.path().join("data"));
    refused(
        Some(&path),
        &[],
        &["node.name: invalid node id \"Bad Name\": may contain only a-z, 0-9 and '-'"],
    );
}

#[test]
fn an_unknown_key_in_the_file_is_named_with_the_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("node.toml");
    std::fs::write(&path, "[storage]\ndatadir = \"/tmp/x\"\n").unwrap();
    refused(
        Some(&path),
        &[],
        &["storage.datadir: unknown key in ", "node.toml", "`data_dir`"],
    );
}

#[test]
fn an_unknown_environment_key_names_the_variable() {
    // One underscore instead of two: a classic slip that must not be silently ignored.
    refused(
        None,
        &[("MAILMESH_NODE_NAME", "n2")],
        &["node_name: unknown key", "MAILMESH_NODE_NAME"],
    );
}

#[test]
fn a_bad_node_name_from_the_environment_names_node_name() {
    let tmp = TempDir::new().unwrap();
    let path = write_config(tmp.path(), "n1", &tmp.path().join("data"));
    refused(
        Some(&path),
        &[("MAILMESH_NODE__NAME", "bad_name")],
        &["node.name: invalid node id \"bad_name\""],
    );
}

#[test]
fn zero_and_oversized_limits_name_their_key() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("node.toml");
    std::fs::write(&path, "[limits]\nmax_message_bytes = 0\n").unwrap();
    refused(
        Some(&path),
        &[],
        &["limits.max_message_bytes: must be greater than 0"],
    );
    refused(
        None,
        &[("MAILMESH_LIMITS__MAX_MESSAGE_BYTES", "4294967296")],
        &["limits.max_message_bytes: 4294967296 is larger than 4294967295"],
    );
    refused(
        None,
        &[("MAILMESH_MAILBOXES__IDLE_AFTER_SECS", "soon")],
        &["mailboxes.idle_after_secs", "the environment"],
    );
}

#[test]
fn a_bad_imap_special_use_names_its_key() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("node.toml");
    let imap = "[imap]\nlisten = \"127.0.0.1:0\"\n\n[imap.special_use]\n";
    std::fs::write(&path, format!("{imap}sent = \"Sent//Mail\"\n")).unwrap();
    refused(
        Some(&path),
        &[],
        &["imap.special_use.sent: ", "empty hierarchy level"],
    );
    std::fs::write(&path, format!("{imap}outbox = \"Outbox\"\n")).unwrap();
    refused(Some(&path), &[], &["outbox", "drafts"]);
}

#[test]
fn the_environment_overrides_the_file() {
    let tmp = TempDir::new().unwrap();
    let path = write_config(tmp.path(), "n1", &tmp.path().join("data"));
    let done = finish(
        mailmesh(&["check-config", "--config", path.to_str().unwrap()])
            .env("MAILMESH_NODE__NAME", "n7")
            .env("MAILMESH_LIMITS__MAX_MESSAGE_BYTES", "1000"),
    );
    done.expect_code(0);
    assert!(done.stdout.contains("name = \"n7\""), "{}", done.stdout);
    assert!(!done.stdout.contains("\"n1\""), "{}", done.stdout);
    assert!(
        done.stdout.contains("max_message_bytes = 1000\n"),
        "{}",
        done.stdout
    );
    // Keys the file and the environment leave alone keep their defaults.
    assert!(
        done.stdout.contains("max_script_bytes = 1048576\n"),
        "{}",
        done.stdout
    );
}

#[test]
fn check_config_prints_the_embedded_defaults() {
    let tmp = TempDir::new().unwrap();
    let done = finish(mailmesh(&["check-config"]).current_dir(tmp.path()));
    done.expect_code(0);
    for line in [
        "name = \"mailmesh-1\"",
        "data_dir = \"./mailmesh-data\"",
        "segment_bytes = 67108864",
        "max_message_bytes = 67108864",
        "max_annotation_bytes = 65536",
        "max_script_bytes = 1048576",
        "max_active = 10000",
        "idle_after_secs = 300",
    ] {
        assert!(
            done.stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{}",
            done.stdout
        );
    }
    assert!(
        !tmp.path().join("mailmesh-data").exists(),
        "check-config must not create the data dir"
    );
}

#[test]
fn a_command_line_mistake_exits_2_too() {
    finish(&mut mailmesh(&["run", "--no-such-flag"]))
        .expect_code(2)
        .expect_stderr(&["--no-such-flag"]);
}
