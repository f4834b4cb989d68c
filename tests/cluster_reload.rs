//! Live reload of a running node's configuration, by SIGHUP and by editing the file: peers come
//! and go without a restart, a broken file or a change that needs a restart leaves the node on
//! the configuration it had.

mod support;

use support::cluster::{cluster_specs, stop_all, write_atomically, write_mesh_configs};
use tempfile::TempDir;

#[test]
fn peers_added_and_removed_by_editing_the_file_and_by_sighup() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    let (n1, n2) = (&specs[0], &specs[1]);
    // Both start in a cluster of one.
    n1.write_config(&[]);
    n2.write_config(&[]);
    let mut node1 = n1.start();
    let mut node2 = n2.start();

    // n1 learns of n2 from an edit of its file alone.
    n1.write_config(&[n2]);
    let reloaded = node1.wait_for_stderr("configuration reloaded");
    assert!(reloaded.contains("reason=\"config file changed\""), "{reloaded}");
    assert!(reloaded.contains("added=[\"n2\"]"), "{reloaded}");
    // n2 does not list n1 yet: n1's dials are refused by n2's certificate check.
    let refused = node2.wait_for_stderr("peer certificate refused");
    assert!(refused.contains("wrong name"), "{refused}");

    // n2's file changes, and it is told by SIGHUP as well; either way the link comes up.
    n2.write_config(&[n1]);
    node2.wait_for_stderr("configuration reloaded");
    node2.signal(libc::SIGHUP);
    let by_signal = node2.wait_for_stderr("reason=\"SIGHUP\"");
    assert!(by_signal.contains("configuration reloaded"), "{by_signal}");
    node1.wait_for_link("link up", "n2");
    node2.wait_for_link("link up", "n1");

    // Removing the peer closes the link on both sides.
    n1.write_config(&[]);
    let removed = node1.wait_for_stderr_count("configuration reloaded", 2);
    assert!(removed.contains("removed=[\"n2\"]"), "{removed}");
    node2.wait_for_link("link down", "n1");

    // And adding it back brings it back.
    n1.write_config(&[n2]);
    node1.wait_for_stderr_count("configuration reloaded", 3);
    node1.wait_for_stderr_count("link up", 2);

    stop_all(vec![node1, node2]);
}

#[test]
fn a_broken_file_or_a_change_needing_a_restart_keeps_the_running_configuration() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let (n1, n2) = (&specs[0], &specs[1]);
    let mut node1 = n1.start();
    let mut node2 = n2.start();
    node1.wait_for_link("link up", "n2");

    // A file that does not parse.
    write_atomically(&n1.config_path(), "[node\nname = \"n1\"\n");
    let refused = node1.wait_for_stderr("configuration not reloaded");
    assert!(refused.contains("still running on the previous one"), "{refused}");
    assert!(refused.contains("TOML parse error"), "{refused}");
    // SIGHUP on the same broken file: refused again, the node goes on.
    node1.signal(libc::SIGHUP);
    node1.wait_for_stderr_count("configuration not reloaded", 2);

    // A valid file that moves the data directory: needs a restart.
    let data = n1.data_dir();
    let moved = n1.config_text(&[n2]).replace(
        data.to_str().unwrap(),
        tmp.path().join("elsewhere").to_str().unwrap(),
    );
    write_atomically(&n1.config_path(), &moved);
    let restart = node1.wait_for_stderr_count("configuration not reloaded", 3);
    assert!(
        restart.contains("storage.data_dir changed: a restart is needed"),
        "{restart}"
    );

    // A peer entry with a bad key is refused with the key named.
    let bad_peer = format!(
        "{}\n[[peers]]\nname = \"n3\"\naddres = \"127.0.0.1:1\"\n",
        n1.config_text(&[n2])
    );
    write_atomically(&n1.config_path(), &bad_peer);
    let bad = node1.wait_for_stderr_count("configuration not reloaded", 4);
    assert!(bad.contains("addres"), "{bad}");

    // Through all of that the link stayed up and the node kept running; a good file applies.
    assert!(node1.stderr_lines("link down").is_empty(), "{}", node1.stderr());
    assert!(node1.is_running() && node2.is_running());
    n1.write_config(&[n2]);
    node1.wait_for_stderr("configuration reloaded");

    stop_all(vec![node1, node2]);
}
