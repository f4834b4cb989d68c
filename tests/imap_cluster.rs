//! IMAP across nodes: a client idling on one node is told of what replication brings from
//! another (an LMTP delivery, a flag change, an expunge) as it arrives, without polling. Two
//! real nodes over QUIC; the IMAP session is a raw socket read line by line, each wait bounded
//! by the socket's read timeout (a generous deadline, never a sleep).

mod support;

use support::cluster::{
    cluster_specs, create_everywhere, eventually, op_ok, set_flags, write_mesh_configs, NodeSpec,
};
use support::imap_lines::Conn;
use support::{address, lmtp_deliver, password_hash, Running};

/// Two nodes n1 and n2 in a mesh, each with LMTP and IMAP on free loopback ports and the user
/// alice (password "pw").
fn two_mail_nodes(root: &std::path::Path) -> Vec<NodeSpec> {
    let specs = cluster_specs(root, &["n1", "n2"]);
    write_mesh_configs(&specs);
    let hash = password_hash("pw");
    for spec in &specs {
        let mut text = std::fs::read_to_string(spec.config_path()).unwrap();
        text.push_str(&format!(
            "\n[lmtp]\nlisten = \"127.0.0.1:0\"\n\n[imap]\nlisten = \"127.0.0.1:0\"\n\n\
             [[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n"
        ));
        std::fs::write(spec.config_path(), text).unwrap();
    }
    specs
}

/// [`two_mail_nodes`] running, with the addresses their listeners logged, and alice's INBOX made
/// on n1 and replicated, so both nodes hold the same mailbox.
struct TwoMailNodes {
    specs: Vec<NodeSpec>,
    /// Kept so that both nodes run until the test ends.
    _running: [Running; 2],
    lmtp1: String,
    imap1: String,
    imap2: String,
}

fn start_two_mail_nodes(root: &std::path::Path) -> TwoMailNodes {
    let specs = two_mail_nodes(root);
    let (n1, n2) = (&specs[0], &specs[1]);
    let mut r1 = n1.start();
    let mut r2 = n2.start();
    let lmtp1 = address(&r1.wait_for_stderr("protocol=\"lmtp\""));
    let imap1 = address(&r1.wait_for_stderr("protocol=\"imap\""));
    let imap2 = address(&r2.wait_for_stderr("protocol=\"imap\""));
    create_everywhere(n1, &[n1, n2], "alice", "INBOX");
    TwoMailNodes {
        specs,
        _running: [r1, r2],
        lmtp1,
        imap1,
        imap2,
    }
}

#[test]
fn a_client_idling_on_one_node_is_told_of_changes_replicated_from_another() {
    let tmp = tempfile::TempDir::new().unwrap();
    let nodes = start_two_mail_nodes(tmp.path());
    let n1 = &nodes.specs[0];
    let lmtp1 = nodes.lmtp1.clone();
    let imap2 = nodes.imap2.clone();

    let mut imap = Conn::open(&imap2);
    assert!(imap
        .command("a1", "LOGIN alice pw")
        .last()
        .unwrap()
        .starts_with("a1 OK"));
    let select = imap.command("a2", "SELECT INBOX");
    assert!(select.contains(&"* 0 EXISTS".to_string()), "{select:?}");
    imap.send_line("a3 IDLE");
    assert_eq!(imap.next_line(), "+ idling");

    // A delivery on n1 reaches the session on n2 by replication.
    let reply = lmtp_deliver(&lmtp1, "alice@example.org", "from n1");
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(imap.until(|l| l.ends_with(" EXISTS")), ["* 1 EXISTS"]);

    // A flag set on n1, then the message expunged there.
    set_flags(n1, "alice", "INBOX", "1", "+\\Deleted");
    assert_eq!(
        imap.until(|l| l.contains(" FETCH ")),
        ["* 1 FETCH (UID 1 FLAGS (\\Deleted))"]
    );
    op_ok(n1, &["expunge", "--user", "alice", "--mailbox", "INBOX"]);
    assert_eq!(imap.until(|l| l.ends_with(" EXPUNGE")), ["* 1 EXPUNGE"]);

    imap.send_line("DONE");
    assert!(imap.next_line().starts_with("a3 OK"));
    assert!(imap.command("a4", "LOGOUT").last().unwrap().starts_with("a4 OK"));
}

#[test]
fn a_client_failing_over_to_another_node_gets_a_full_qresync() {
    let tmp = tempfile::TempDir::new().unwrap();
    let nodes = start_two_mail_nodes(tmp.path());
    let (n1, n2) = (&nodes.specs[0], &nodes.specs[1]);
    let lmtp1 = nodes.lmtp1.clone();
    let imap1 = nodes.imap1.clone();
    let imap2 = nodes.imap2.clone();
    for subject in ["one", "two", "three"] {
        assert!(lmtp_deliver(&lmtp1, "alice@example.org", subject).starts_with("250"));
    }

    // The client's cache, from n1: three messages, n1's HIGHESTMODSEQ.
    let mut on1 = Conn::open(&imap1);
    on1.command("a1", "LOGIN alice pw");
    on1.command("a2", "ENABLE QRESYNC");
    let select = on1.command("a3", "SELECT INBOX");
    let code = |lines: &[String], name: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("* OK [{name} ")))
            .and_then(|l| l.split(']').next())
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
            .to_string()
    };
    let uidvalidity = code(&select, "UIDVALIDITY");
    let modseq_on_n1 = code(&select, "HIGHESTMODSEQ");
    on1.command("a4", "LOGOUT");

    // Meanwhile on n1: message 2 flagged, message 3 expunged; wait for n2 to have it all.
    set_flags(n1, "alice", "INBOX", "2", "+\\Flagged");
    set_flags(n1, "alice", "INBOX", "3", "+\\Deleted");
    op_ok(n1, &["expunge", "--user", "alice", "--mailbox", "INBOX"]);
    support::cluster::converged_with(&[n1, n2], "alice", "INBOX", 2, |listing| {
        support::cluster::has_flag(listing, "2", "\\Flagged")
    });

    // The client fails over to n2 with n1's modseq: every flag, and uid 3 vanished.
    let mut on2 = Conn::open(&imap2);
    on2.command("b1", "LOGIN alice pw");
    on2.command("b2", "ENABLE QRESYNC");
    let resync = on2.command(
        "b3",
        &format!("SELECT INBOX (QRESYNC ({uidvalidity} {modseq_on_n1} 1:3))"),
    );
    assert_eq!(code(&resync, "UIDVALIDITY"), uidvalidity, "{resync:?}");
    let told: Vec<&String> = resync
        .iter()
        .filter(|l| l.starts_with("* VANISHED") || l.starts_with("* ") && l.contains(" FETCH ("))
        .collect();
    assert_eq!(told.len(), 3, "{resync:?}");
    assert_eq!(told[0], "* VANISHED (EARLIER) 3", "{resync:?}");
    assert!(
        told[1].starts_with("* 1 FETCH (UID 1 FLAGS () MODSEQ ("),
        "{resync:?}"
    );
    assert!(
        told[2].starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
        "{resync:?}"
    );
    on2.command("b4", "LOGOUT");
}

#[test]
fn an_annotation_set_on_one_node_is_read_by_getmetadata_on_the_other() {
    let tmp = tempfile::TempDir::new().unwrap();
    let nodes = start_two_mail_nodes(tmp.path());
    let imap1 = nodes.imap1.clone();
    let imap2 = nodes.imap2.clone();

    let mut on1 = Conn::open(&imap1);
    on1.command("a1", "LOGIN alice pw");
    let set = on1.command(
        "a2",
        "SETMETADATA INBOX (/shared/comment \"from n1\" /private/comment \"mine\")",
    );
    assert_eq!(set, ["a2 OK SETMETADATA completed"]);

    // Replication brings both entries to n2, where GETMETADATA reads them.
    let mut on2 = Conn::open(&imap2);
    on2.command("b1", "LOGIN alice pw");
    let mut tries = 0;
    let got = eventually("the annotations replicated to n2", || {
        tries += 1;
        let lines = on2.command(
            &format!("g{tries}"),
            "GETMETADATA INBOX (/private/comment /shared/comment)",
        );
        if lines[0] == "* METADATA INBOX (/private/comment \"mine\" /shared/comment \"from n1\")" {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    });
    assert!(got[1].ends_with(" OK GETMETADATA completed"), "{got:?}");

    // A removal on n2 reaches n1 the same way.
    assert_eq!(
        on2.command("b2", "SETMETADATA INBOX (/shared/comment NIL)"),
        ["b2 OK SETMETADATA completed"]
    );
    let mut tries = 0;
    eventually("the removal replicated to n1", || {
        tries += 1;
        let lines = on1.command(&format!("h{tries}"), "GETMETADATA INBOX /shared/comment");
        if lines[0] == "* METADATA INBOX (/shared/comment NIL)" {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
}

#[test]
fn a_moved_message_keeps_its_emailid_on_its_node_and_on_the_peer() {
    let tmp = tempfile::TempDir::new().unwrap();
    let nodes = start_two_mail_nodes(tmp.path());
    let (n1, n2) = (&nodes.specs[0], &nodes.specs[1]);
    let lmtp1 = nodes.lmtp1.clone();
    let imap1 = nodes.imap1.clone();
    let imap2 = nodes.imap2.clone();
    create_everywhere(n1, &[n1, n2], "alice", "Work");
    assert!(lmtp_deliver(&lmtp1, "alice@example.org", "to be moved").starts_with("250"));

    // The EMAILID on n1 before the move, and the same one on n2 once replication brings it.
    let mut on1 = Conn::open(&imap1);
    on1.command("a1", "LOGIN alice pw");
    on1.command("a2", "SELECT INBOX");
    let before = on1.command("a3", "UID FETCH 1 (EMAILID)");
    assert_eq!(before.len(), 2, "{before:?}");
    let email_id = before[0]
        .split_once("EMAILID (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("no EMAILID in {before:?}"));
    let mut on2 = Conn::open(&imap2);
    on2.command("b1", "LOGIN alice pw");
    let fetched_on_n2 = |on2: &mut Conn, mailbox: &str, tries: &mut u32| -> Vec<String> {
        *tries += 1;
        on2.command(&format!("e{tries}"), &format!("EXAMINE {mailbox}"));
        on2.command(&format!("f{tries}"), "UID FETCH 1:* (EMAILID)")
    };
    let mut tries = 0;
    eventually("the message replicated to n2's INBOX", || {
        let lines = fetched_on_n2(&mut on2, "INBOX", &mut tries);
        match lines[..] {
            [ref one, _] if one == &format!("* 1 FETCH (UID 1 EMAILID ({email_id}))") => Ok(()),
            _ => Err(format!("{lines:?}")),
        }
    });

    // MOVE on n1: the copy in Work has a new uid and AppendId, and the same EMAILID, on n1 ...
    assert!(on1
        .command("a4", "UID MOVE 1 Work")
        .last()
        .unwrap()
        .starts_with("a4 OK"));
    on1.command("a5", "SELECT Work");
    assert_eq!(
        on1.command("a6", "UID FETCH 1:* (EMAILID)"),
        [
            format!("* 1 FETCH (UID 1 EMAILID ({email_id}))"),
            "a6 OK UID FETCH completed".to_string()
        ]
    );
    // ... and on n2, where the move arrives by replication.
    eventually("the moved message replicated to n2's Work", || {
        let lines = fetched_on_n2(&mut on2, "Work", &mut tries);
        match lines[..] {
            [ref one, _] if one == &format!("* 1 FETCH (UID 1 EMAILID ({email_id}))") => Ok(()),
            _ => Err(format!("{lines:?}")),
        }
    });
    on1.command("a7", "LOGOUT");
    on2.command("b2", "LOGOUT");
}
