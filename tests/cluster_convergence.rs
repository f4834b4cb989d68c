//! Real clusters converge: processes linked by QUIC and TLS on loopback, written to through each
//! node's operator socket, checked on every node through the same socket.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::cluster::{
    append, cluster_specs, converged, converged_with, create_everywhere, eventually, has_flag, listing,
    mailboxes_converged, op_ok, set_flags, stop_all, try_append, wait_for_mailbox, write_chain_configs,
    write_mesh_configs, NodeSpec,
};
use support::Running;
use tempfile::TempDir;

const USER: &str = "alice";

/// Which node (by index) makes each kind of change in [`every_kind_of_change`]: all different
/// where the cluster has enough nodes, so every change has to travel.
struct Roles {
    flags_seen: usize,
    flags_deleted: usize,
    expunges: usize,
    creates: usize,
    renames: usize,
    creates_trash: usize,
    deletes_trash: usize,
}

/// Appends on every node, a flag set on one node, \Deleted set on another and the expunge on a
/// third, a mailbox created on one and renamed on another, a mailbox created on one and deleted
/// on another; after each step every node must show the same messages (uids, flags, hashes) and
/// in the end the same mailbox list (every column), all read through each node's operator
/// socket.
fn every_kind_of_change(specs: &[NodeSpec], roles: &Roles) {
    let all: Vec<&NodeSpec> = specs.iter().collect();
    create_everywhere(&specs[0], &all, USER, "INBOX");
    for (i, spec) in specs.iter().enumerate() {
        for j in 0..2 {
            append(spec, USER, "INBOX", &format!("from-{i}-{j}"));
        }
    }
    let total = 2 * specs.len();
    let first = converged(&all, USER, "INBOX", total);
    let uid = |i: usize| first[i].split('\t').next().unwrap().to_string();
    let (seen, gone1, gone2) = (uid(0), uid(1), uid(total - 1));

    set_flags(&specs[roles.flags_seen], USER, "INBOX", &seen, "+\\Seen");
    set_flags(&specs[roles.flags_deleted], USER, "INBOX", &gone1, "+\\Deleted");
    set_flags(&specs[roles.flags_deleted], USER, "INBOX", &gone2, "+\\Deleted");
    converged_with(&all, USER, "INBOX", total, |l| {
        has_flag(l, &seen, "\\Seen") && has_flag(l, &gone1, "\\Deleted") && has_flag(l, &gone2, "\\Deleted")
    });

    // The expunging node saw the \Deleted flags arrive; it expunges exactly those two.
    let expunged = op_ok(
        &specs[roles.expunges],
        &["expunge", "--user", USER, "--mailbox", "INBOX"],
    );
    let mut want: Vec<u32> = vec![gone1.parse().unwrap(), gone2.parse().unwrap()];
    want.sort_unstable();
    let got: Vec<u32> = expunged.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, want, "expunged uids");
    let after = converged(&all, USER, "INBOX", total - 2);
    assert!(has_flag(&after, &seen, "\\Seen"), "{after:#?}");
    let uids: Vec<&str> = after.iter().map(|l| l.split('\t').next().unwrap()).collect();
    assert!(
        !uids.contains(&gone1.as_str()) && !uids.contains(&gone2.as_str()),
        "{after:#?}"
    );

    // A mailbox with a message, created on one node and renamed on another: the message goes
    // with the new name everywhere.
    let creator = &specs[roles.creates];
    op_ok(
        creator,
        &["mailbox", "create", "--user", USER, "--name", "Projects"],
    );
    append(creator, USER, "Projects", "project-plan");
    let renamer = &specs[roles.renames];
    eventually(
        &format!("Projects with its message on {}", renamer.name),
        || match listing(renamer, USER, "Projects") {
            Some(l) if l.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    op_ok(
        renamer,
        &[
            "mailbox", "rename", "--user", USER, "--name", "Projects", "--to", "Done",
        ],
    );

    // A mailbox created on one node and deleted on another.
    op_ok(
        &specs[roles.creates_trash],
        &["mailbox", "create", "--user", USER, "--name", "Trash"],
    );
    append(&specs[roles.creates_trash], USER, "Trash", "junk");
    wait_for_mailbox(&specs[roles.deletes_trash], USER, "Trash");
    op_ok(
        &specs[roles.deletes_trash],
        &["mailbox", "delete", "--user", USER, "--name", "Trash"],
    );

    let lists = mailboxes_converged(&all, USER, &["Done", "INBOX"]);
    assert!(lists[0].starts_with("Done\t1\t"), "{lists:#?}");
    let moved = converged(&all, USER, "Done", 1);
    let body = op_ok(
        &specs[roles.flags_seen],
        &[
            "fetch",
            "--user",
            USER,
            "--mailbox",
            "Done",
            "--uid",
            moved[0].split('\t').next().unwrap(),
        ],
    );
    assert!(body.contains("Subject: project-plan\r\n"), "{body}");
    for node in &all {
        assert_eq!(
            listing(node, USER, "Projects"),
            None,
            "old name still on {}",
            node.name
        );
        assert_eq!(
            listing(node, USER, "Trash"),
            None,
            "deleted mailbox still on {}",
            node.name
        );
    }
}

#[test]
fn a_three_node_mesh_converges_after_every_kind_of_change_on_different_nodes() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2", "n3"]);
    write_mesh_configs(&specs);
    let nodes: Vec<Running> = specs.iter().map(NodeSpec::start).collect();

    every_kind_of_change(
        &specs,
        &Roles {
            flags_seen: 1,
            flags_deleted: 2,
            expunges: 0,
            creates: 1,
            renames: 2,
            creates_trash: 0,
            deletes_trash: 1,
        },
    );

    // `mailmesh status --json` shows each peer's link as the QUIC transport sees it.
    let status: serde_json::Value = serde_json::from_str(&op_ok(&specs[0], &["status", "--json"])).unwrap();
    let peers = status["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{status:#}");
    for peer in peers {
        assert_eq!(peer["connected"], serde_json::json!(true), "{status:#}");
        assert!(peer["bytes_sent"].as_u64().unwrap_or(0) > 0, "{status:#}");
        assert!(
            peer["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{status:#}"
        );
    }
    stop_all(nodes);
}

#[test]
fn a_five_node_chain_converges_after_every_kind_of_change_on_different_nodes() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2", "n3", "n4", "n5"]);
    write_chain_configs(&specs);
    let nodes: Vec<Running> = specs.iter().map(NodeSpec::start).collect();

    // Changes at both ends and in the middle: each crosses up to four links.
    every_kind_of_change(
        &specs,
        &Roles {
            flags_seen: 4,
            flags_deleted: 1,
            expunges: 3,
            creates: 0,
            renames: 4,
            creates_trash: 4,
            deletes_trash: 0,
        },
    );
    stop_all(nodes);
}

#[test]
fn a_link_removed_and_re_added_by_reload_delivers_what_was_written_meanwhile() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let (n1, n2) = (&specs[0], &specs[1]);
    let mut node1 = n1.start();
    let mut node2 = n2.start();
    create_everywhere(n1, &[n1, n2], USER, "INBOX");
    append(n1, USER, "INBOX", "before");
    converged(&[n1, n2], USER, "INBOX", 1);

    // The link goes: n1 by an edit of its file, n2 by an edit and SIGHUP.
    n1.write_config(&[]);
    node1.wait_for_stderr_count("configuration reloaded", 1);
    n2.write_config(&[]);
    node2.signal(libc::SIGHUP);
    node2.wait_for_stderr("configuration reloaded");
    node2.wait_for_link("link down", "n1");

    // Both sides write while apart.
    append(n1, USER, "INBOX", "while-apart-on-n1");
    append(n2, USER, "INBOX", "while-apart-on-n2");
    assert_eq!(listing(n2, USER, "INBOX").unwrap().len(), 2);

    // The link comes back the same two ways; what was written meanwhile arrives.
    n1.write_config(&[n2]);
    node1.wait_for_stderr_count("configuration reloaded", 2);
    n2.write_config(&[n1]);
    node2.signal(libc::SIGHUP);
    converged(&[n1, n2], USER, "INBOX", 3);
    stop_all(vec![node1, node2]);
}

#[test]
fn a_node_killed_during_a_stream_of_appends_loses_no_acknowledged_message() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let (n1, n2) = (&specs[0], &specs[1]);
    let node1 = n1.start();
    let node2 = n2.start();
    create_everywhere(n1, &[n1, n2], USER, "INBOX");

    // Another thread appends to n1 without pause, one process per message, and records the
    // subjects n1 acknowledged (printed a uid).
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop_appending = Arc::new(AtomicBool::new(false));
    // While n1 is down an append opens its data directory itself (no socket to talk to), which
    // would hold the store's lock against the restart: the appender pauses for the restart.
    let paused = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicBool::new(false));
    let appender = {
        let (n1, acknowledged, stop_appending) = (n1.clone(), acknowledged.clone(), stop_appending.clone());
        let (paused, idle) = (paused.clone(), idle.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop_appending.load(Ordering::SeqCst) {
                if paused.load(Ordering::SeqCst) {
                    idle.store(true, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                idle.store(false, Ordering::SeqCst);
                let subject = format!("stream-{i}");
                let done = try_append(&n1, USER, "INBOX", &subject);
                if done.status.code() == Some(0) {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push((done.stdout.trim().to_string(), subject));
                }
                i += 1;
            }
        })
    };
    eventually("ten appends acknowledged", || {
        let n = acknowledged.lock().unwrap().len();
        if n >= 10 {
            Ok(n)
        } else {
            Err(format!("{n}"))
        }
    });
    node1.signal(libc::SIGKILL);
    let killed = node1.wait();
    assert_eq!(killed.status.code(), None, "n1 should have died by SIGKILL");
    paused.store(true, Ordering::SeqCst);
    eventually("the appender paused", || {
        if idle.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("appending".into())
        }
    });
    let before_restart = acknowledged.lock().unwrap().len();

    let node1 = n1.start();
    paused.store(false, Ordering::SeqCst);
    eventually("appends acknowledged after the restart", || {
        let n = acknowledged.lock().unwrap().len();
        if n >= before_restart + 5 {
            Ok(n)
        } else {
            Err(format!("{n}"))
        }
    });
    stop_appending.store(true, Ordering::SeqCst);
    appender.join().unwrap();

    let expected = acknowledged.lock().unwrap().len();
    let listing = eventually("every acknowledged message on both nodes", || {
        let l1 = listing(n1, USER, "INBOX").unwrap_or_default();
        let l2 = listing(n2, USER, "INBOX").unwrap_or_default();
        // A message whose append was cut by the kill may exist unacknowledged: at least all the
        // acknowledged ones, and the same on both nodes.
        if l1 == l2 && l1.len() >= expected {
            Ok(l1)
        } else {
            Err(format!("n1 {} n2 {} expected >= {expected}", l1.len(), l2.len()))
        }
    });
    // Each acknowledged message is on n2 under the uid n1 acknowledged it with.
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (uid, subject) in &acknowledged {
        assert!(
            listing.iter().any(|l| l.split('\t').next() == Some(uid.as_str())),
            "uid {uid} ({subject}) missing: {listing:#?}"
        );
        let body = op_ok(n2, &["fetch", "--user", USER, "--mailbox", "INBOX", "--uid", uid]);
        assert!(
            body.contains(&format!("Subject: {subject}\r\n")),
            "uid {uid} is not {subject}: {body}"
        );
    }
    stop_all(vec![node1, node2]);
}
