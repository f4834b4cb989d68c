//! Sieve state is replicated: a script set on one node (by the operator command, or uploaded over
//! ManageSieve) runs on deliveries to another, and the message delivered there replicates back.
//! Two real nodes over QUIC; LMTP spoken on the second.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use support::cluster::{
    cluster_specs, converged, create_everywhere, eventually, listing, mailbox_lines, op_ok,
    write_mesh_configs,
};
use support::{lmtp_deliver, password_hash, DEADLINE};

#[test]
fn a_script_set_on_one_node_files_deliveries_on_another() {
    let tmp = tempfile::TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let hash = password_hash("pw");
    for spec in &specs {
        let mut text = std::fs::read_to_string(spec.config_path()).unwrap();
        text.push_str(&format!(
            "\n[lmtp]\nlisten = \"127.0.0.1:0\"\n\n[[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n"
        ));
        std::fs::write(spec.config_path(), text).unwrap();
    }
    let (n1, n2) = (&specs[0], &specs[1]);
    let _r1 = n1.start();
    let mut r2 = n2.start();
    let line = r2.wait_for_stderr("protocol=\"lmtp\"");
    let target = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap()
        .to_string();

    let script = tmp.path().join("s.sieve");
    std::fs::write(
        &script,
        "require [\"fileinto\", \"mailbox\"];\nif header :contains \"subject\" \"report\" { fileinto :create \"Reports\"; }\n",
    )
    .unwrap();
    op_ok(
        n1,
        &[
            "sieve",
            "put",
            "--user",
            "alice",
            "--name",
            "s",
            "--file",
            script.to_str().unwrap(),
        ],
    );
    op_ok(n1, &["sieve", "activate", "--user", "alice", "--name", "s"]);
    // The script arrives on n2 by replication.
    eventually("the active script replicated to n2", || {
        let listed = op_ok(n2, &["sieve", "list", "--user", "alice"]);
        if listed.trim() == "s (active)" {
            Ok(())
        } else {
            Err(listed)
        }
    });
    let reply = lmtp_deliver(&target, "alice@example.org", "weekly report");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    // Filed on n2 by n1's script, and replicated back to n1.
    let listing = converged(&[n1, n2], "alice", "Reports", 1);
    assert_eq!(listing.len(), 1);
}

/// Reads ManageSieve lines up to the final `OK`, `NO` or `BYE` line, which it answers.
fn sieve_response(reader: &mut BufReader<TcpStream>) -> String {
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the server closed the connection"
        );
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("OK") || upper.starts_with("NO") || upper.starts_with("BYE") {
            return line.trim_end().to_string();
        }
    }
}

#[test]
fn a_script_uploaded_over_managesieve_on_one_node_files_deliveries_on_another() {
    use base64::Engine;

    let tmp = tempfile::TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let hash = password_hash("pw");
    for spec in &specs {
        let mut text = std::fs::read_to_string(spec.config_path()).unwrap();
        text.push_str(&format!(
            "\n[lmtp]\nlisten = \"127.0.0.1:0\"\n\n[managesieve]\nlisten = \"127.0.0.1:0\"\n\n\
             [[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n"
        ));
        std::fs::write(spec.config_path(), text).unwrap();
    }
    let (n1, n2) = (&specs[0], &specs[1]);
    let address = |line: String| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap()
            .to_string()
    };
    let mut r1 = n1.start();
    let mut r2 = n2.start();
    let sieve_target = address(r1.wait_for_stderr("protocol=\"managesieve\""));
    let lmtp_target = address(r2.wait_for_stderr("protocol=\"lmtp\""));

    // RFC 5804 line by line on n1: greeting, login, upload, activate.
    let stream = TcpStream::connect(&sieve_target).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(sieve_response(&mut reader), "OK");
    let credentials = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0pw");
    writer
        .write_all(format!("AUTHENTICATE \"PLAIN\" \"{credentials}\"\r\n").as_bytes())
        .unwrap();
    assert!(sieve_response(&mut reader).starts_with("OK"));
    let script = "require [\"fileinto\", \"mailbox\"];\r\nif header :contains \"subject\" \"invoice\" { fileinto :create \"Invoices\"; }\r\n";
    writer
        .write_all(
            format!(
                "PUTSCRIPT \"billing\" {{{}+}}\r\n{script}\r\nSETACTIVE \"billing\"\r\n",
                script.len()
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(sieve_response(&mut reader), "OK");
    assert_eq!(sieve_response(&mut reader), "OK");
    writer.write_all(b"LOGOUT\r\n").unwrap();
    assert!(sieve_response(&mut reader).starts_with("OK"));

    eventually("the script uploaded on n1 replicated to n2", || {
        let listed = op_ok(n2, &["sieve", "list", "--user", "alice"]);
        if listed.trim() == "billing (active)" {
            Ok(())
        } else {
            Err(listed)
        }
    });
    let reply = lmtp_deliver(&lmtp_target, "alice@example.org", "invoice 42");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let listing = converged(&[n1, n2], "alice", "Invoices", 1);
    assert_eq!(listing.len(), 1);
}

/// The locations column of `user`'s `mailbox` in `mailbox list` on `node`.
fn locations_seen(node: &support::cluster::NodeSpec, mailbox: &str) -> Option<String> {
    mailbox_lines(node, "alice")?
        .into_iter()
        .find(|l| l.split('\t').next() == Some(mailbox))
        .and_then(|l| l.split('\t').nth(5).map(str::to_string))
}

/// Places `mailbox` on `to` (from n1) and waits until `seen_on` shows that placement.
fn place(n1: &support::cluster::NodeSpec, seen_on: &support::cluster::NodeSpec, mailbox: &str, to: &str) {
    op_ok(
        n1,
        &[
            "mailbox", "move", "--user", "alice", "--name", mailbox, "--to", to,
        ],
    );
    eventually(
        &format!("{} sees {mailbox} placed on {to}", seen_on.name),
        || match locations_seen(seen_on, mailbox) {
            Some(shown) if shown == to => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// Sieve actions whose target mailbox is held on other nodes only: a fileinto there is kept in
/// INBOX instead (one copy, however many actions name it), and when INBOX itself is elsewhere
/// the delivery is refused with 451 before any copy is written, so the MTA's retry makes no
/// duplicate.
#[test]
fn a_fileinto_to_a_mailbox_held_elsewhere_is_kept_and_a_refused_delivery_writes_nothing() {
    let tmp = tempfile::TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let hash = password_hash("pw");
    for spec in &specs {
        let mut text = std::fs::read_to_string(spec.config_path()).unwrap();
        text.push_str(&format!(
            "\n[lmtp]\nlisten = \"127.0.0.1:0\"\n\n[[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n"
        ));
        std::fs::write(spec.config_path(), text).unwrap();
    }
    let (n1, n2) = (&specs[0], &specs[1]);
    let _r1 = n1.start();
    let mut r2 = n2.start();
    let line = r2.wait_for_stderr("protocol=\"lmtp\"");
    let target = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap()
        .to_string();

    for mailbox in ["INBOX", "Archive", "Local"] {
        create_everywhere(n1, &[n1, n2], "alice", mailbox);
    }
    place(n1, n2, "Archive", "n1");
    let script = tmp.path().join("s.sieve");
    std::fs::write(
        &script,
        "require [\"fileinto\", \"copy\"];\nfileinto :copy \"Archive\";\nfileinto :copy \"Local\";\n",
    )
    .unwrap();
    op_ok(
        n2,
        &[
            "sieve",
            "put",
            "--user",
            "alice",
            "--name",
            "s",
            "--file",
            script.to_str().unwrap(),
        ],
    );
    op_ok(n2, &["sieve", "activate", "--user", "alice", "--name", "s"]);

    // Archive lives on n1 only: its copy goes to INBOX, where the implicit keep already puts
    // one, so INBOX gets one copy and Local one.
    let reply = lmtp_deliver(&target, "alice@example.org", "first");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(listing(n2, "alice", "INBOX").unwrap().len(), 1);
    assert_eq!(listing(n2, "alice", "Local").unwrap().len(), 1);
    assert_eq!(converged(&[n1], "alice", "Archive", 0).len(), 0);

    // INBOX placed on n1 only: the keep (and Archive's fallback) cannot be written on n2, so
    // the delivery is refused for a retry, and Local's copy, writable here, was not written.
    place(n1, n2, "INBOX", "n1");
    let reply = lmtp_deliver(&target, "alice@example.org", "second");
    assert!(reply.starts_with("451 "), "{reply}");
    assert_eq!(
        listing(n2, "alice", "Local").unwrap().len(),
        1,
        "nothing written by a refused delivery"
    );

    // The MTA retries once INBOX is writable on n2 again: exactly one more copy in each.
    place(n1, n2, "INBOX", "n1,n2");
    let reply = lmtp_deliver(&target, "alice@example.org", "second");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(converged(&[n1, n2], "alice", "Local", 2).len(), 2);
    assert_eq!(converged(&[n1, n2], "alice", "INBOX", 2).len(), 2);
    assert_eq!(converged(&[n1], "alice", "Archive", 0).len(), 0);
}
