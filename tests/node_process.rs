//! `mailmesh run` as a process: start-up, clean shutdown on a signal, where the data goes, and
//! the store's refusal of a second process or of another node's data.

mod support;

use support::{finish, mailmesh, write_config, Running};
use tempfile::TempDir;

#[test]
fn run_serves_until_sigterm_then_stops_cleanly() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), "n1", &data);

    let mut node =
        Running::start(mailmesh(&["run", "--config", config.to_str().unwrap()]).current_dir(tmp.path()));
    let ready = node.wait_for_stderr("node ready");
    assert!(
        ready.contains("node{name=n1}"),
        "ready line lacks the node name: {ready}"
    );
    assert!(
        ready.contains(data.to_str().unwrap()),
        "ready line lacks the data dir: {ready}"
    );

    node.signal(libc::SIGTERM);
    let done = node.wait();
    done.expect_code(0)
        .expect_stderr(&["signal=\"SIGTERM\"", "node stopped"]);
    // The node's name is on every line it logged, so lines of many nodes can be told apart.
    for line in done.stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("node{name=n1}"),
            "log line without the node name: {line}"
        );
    }
    assert!(
        data.join("store.redb").is_file(),
        "no store.redb in {}",
        data.display()
    );
    assert!(data.join("bodies").is_dir(), "no bodies/ in {}", data.display());
}

#[test]
fn run_without_config_keeps_its_data_in_the_current_directory() {
    let tmp = TempDir::new().unwrap();
    let mut node = Running::start(mailmesh(&["run"]).current_dir(tmp.path()));
    let ready = node.wait_for_stderr("node ready");
    assert!(ready.contains("node{name=mailmesh-1}"), "{ready}");

    let store = tmp.path().join("mailmesh-data").join("store.redb");
    assert!(
        store.is_file(),
        "the default data dir was not created: {}",
        store.display()
    );

    node.signal(libc::SIGTERM);
    node.wait().expect_code(0).expect_stderr(&["node stopped"]);
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused_while_the_node_runs() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), "n1", &data);
    let config = config.to_str().unwrap();

    let mut node = Running::start(&mut mailmesh(&["run", "--config", config]));
    node.wait_for_stderr("node ready");

    finish(&mut mailmesh(&["run", "--config", config]))
        .expect_code(1)
        .expect_no_panic()
        .expect_stderr(&["in use by another mailmesh process", data.to_str().unwrap()]);
    // Operator commands do not open the store behind the running node's back: they ask the node
    // itself, through its operator socket.
    finish(&mut mailmesh(&[
        "mailbox", "create", "--user", "alice", "--name", "INBOX", "--config", config,
    ]))
    .expect_code(0);

    // The refused attempts did not disturb the running node, and its stop frees the directory.
    node.signal(libc::SIGTERM);
    node.wait().expect_code(0);
    let listed = finish(&mut mailmesh(&[
        "mailbox", "list", "--user", "alice", "--config", config,
    ]));
    assert!(
        listed.expect_code(0).stdout.starts_with("INBOX\t0\t1\t"),
        "{}",
        listed.stdout
    );
}

#[test]
fn the_data_dir_of_another_node_is_refused_with_both_names() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), "alpha-node", &data);
    finish(&mut mailmesh(&[
        "mailbox",
        "create",
        "--user",
        "alice",
        "--name",
        "INBOX",
        "--config",
        config.to_str().unwrap(),
    ]))
    .expect_code(0);

    let config = write_config(tmp.path(), "beta-node", &data);
    finish(&mut mailmesh(&["run", "--config", config.to_str().unwrap()]))
        .expect_code(1)
        .expect_no_panic()
        .expect_stderr(&["\"alpha-node\"", "\"beta-node\"", "store.redb"]);
}
