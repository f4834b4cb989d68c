//! Real clusters converge: processes linked by QUIC and TLS on loopback, written to through each
//! node's operator socket, checked on every node through the same socket.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::cluster::{append, cluster_specs, converged, eventually, listing, op, op_ok, NodeSpec};
use support::Running;
use tempfile::TempDir;

const USER: &str = "alice";

fn stop(nodes: Vec<Running>) {
    for node in nodes {
        node.signal(libc::SIGTERM);
        node.wait().expect_code(0).expect_no_panic();
    }
}

/// Creates `mailbox` on `origin` and waits until every node has it.
fn create_everywhere(origin: &NodeSpec, nodes: &[&NodeSpec], mailbox: &str) {
    op_ok(origin, &["mailbox", "create", "--user", USER, "--name", mailbox]);
    for node in nodes {
        eventually(&format!("{mailbox} on {}", node.name), || {
            listing(node, USER, mailbox).ok_or_else(|| "absent".to_string())
        });
    }
}

/// Whether the message with `subject`'s hash has `flag` in a listing.
fn flagged(listing: &[String], uid: &str, flag: &str) -> bool {
    listing
        .iter()
        .any(|l| l.split('\t').next() == Some(uid) && l.split('\t').nth(1).is_some_and(|f| f.contains(flag)))
}

#[test]
fn a_three_node_mesh_converges_after_appends_and_flag_changes_on_every_node() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2", "n3"]);
    let all: Vec<&NodeSpec> = specs.iter().collect();
    for spec in &specs {
        let peers: Vec<&NodeSpec> = specs.iter().filter(|p| p.name != spec.name).collect();
        spec.write_config(&peers);
    }
    let nodes: Vec<Running> = specs.iter().map(NodeSpec::start).collect();

    create_everywhere(&specs[0], &all, "INBOX");
    for (i, spec) in specs.iter().enumerate() {
        for j in 0..3 {
            append(spec, USER, "INBOX", &format!("mesh-{i}-{j}"));
        }
    }
    let listing = converged(&all, USER, "INBOX", 9);
    // A flag set on n2 on the first message reaches the others.
    let uid = listing[0].split('\t').next().unwrap().to_string();
    op_ok(
        &specs[1],
        &[
            "flags",
            "--user",
            USER,
            "--mailbox",
            "INBOX",
            "--uid",
            &uid,
            "+\\Seen",
        ],
    );
    let after = converged(&all, USER, "INBOX", 9);
    assert!(flagged(&after, &uid, "\\Seen"), "{after:#?}");
    stop(nodes);
}

#[test]
fn a_five_node_chain_converges_through_its_middle() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2", "n3", "n4", "n5"]);
    let all: Vec<&NodeSpec> = specs.iter().collect();
    for (i, spec) in specs.iter().enumerate() {
        let mut peers = Vec::new();
        if i > 0 {
            peers.push(&specs[i - 1]);
        }
        if i + 1 < specs.len() {
            peers.push(&specs[i + 1]);
        }
        spec.write_config(&peers);
    }
    let nodes: Vec<Running> = specs.iter().map(NodeSpec::start).collect();

    create_everywhere(&specs[0], &all, "INBOX");
    append(&specs[0], USER, "INBOX", "chain-from-n1");
    append(&specs[4], USER, "INBOX", "chain-from-n5");
    append(&specs[2], USER, "INBOX", "chain-from-n3");
    let listing = converged(&all, USER, "INBOX", 3);
    let uid = listing[0].split('\t').next().unwrap().to_string();
    op_ok(
        &specs[4],
        &[
            "flags",
            "--user",
            USER,
            "--mailbox",
            "INBOX",
            "--uid",
            &uid,
            "+$Chain",
        ],
    );
    let after = converged(&all, USER, "INBOX", 3);
    assert!(flagged(&after, &uid, "$Chain"), "{after:#?}");
    stop(nodes);
}

#[test]
fn a_link_removed_and_re_added_by_reload_delivers_what_was_written_meanwhile() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    let (n1, n2) = (&specs[0], &specs[1]);
    n1.write_config(&[n2]);
    n2.write_config(&[n1]);
    let mut node1 = n1.start();
    let mut node2 = n2.start();
    create_everywhere(n1, &[n1, n2], "INBOX");
    append(n1, USER, "INBOX", "before");
    converged(&[n1, n2], USER, "INBOX", 1);

    // The link goes: n1 by an edit of its file, n2 by an edit and SIGHUP.
    n1.write_config(&[]);
    node1.wait_for_stderr_count("configuration reloaded", 1);
    n2.write_config(&[]);
    node2.signal(libc::SIGHUP);
    node2.wait_for_stderr("configuration reloaded");
    node2.wait_for_stderr("link down");

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
    stop(vec![node1, node2]);
}

#[test]
fn a_node_killed_during_a_stream_of_appends_loses_no_acknowledged_message() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    let (n1, n2) = (&specs[0], &specs[1]);
    n1.write_config(&[n2]);
    n2.write_config(&[n1]);
    let node1 = n1.start();
    let node2 = n2.start();
    create_everywhere(n1, &[n1, n2], "INBOX");

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
                let file = n1.dir.join(format!("{subject}.eml"));
                std::fs::write(&file, format!("Subject: {subject}\r\n\r\nbody {i}\r\n")).unwrap();
                let done = op(
                    &n1,
                    &[
                        "append",
                        "--user",
                        USER,
                        "--mailbox",
                        "INBOX",
                        "--file",
                        file.to_str().unwrap(),
                    ],
                );
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
    stop(vec![node1, node2]);
}
