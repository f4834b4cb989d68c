//! `[imap] direct`: a login on a node that is not the primary of the user's INBOX is referred
//! (RFC 2221) or proxied to the primary, and served by the local replica when the primary is
//! down. Two real nodes over QUIC; alice's INBOX is created on n1, so n1 is its primary. n2 learns
//! n1's IMAP address (a free port, known once n1 runs) from its `[[peers]] imap`. The referral is
//! read on a raw socket (the exact line matters); the proxied session is Python's `imaplib`.
//! Every wait is a condition with a generous deadline, never a sleep.

mod support;

use std::process::Command;

use support::cluster::{
    cluster_specs, converged, listing, op_ok, write_atomically, write_mesh_configs, NodeSpec,
};
use support::imap_lines::Conn;
use support::{address, lmtp_deliver, password_hash, Running};

/// The Python side of a proxied session: LOGIN, SELECT, FETCH of the subjects, APPEND, LOGOUT;
/// the answers as one JSON object on stdout.
const CLIENT: &str = r#"
import imaplib, json, sys

host, port = sys.argv[1].rsplit(':', 1)

def text(value):
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    if isinstance(value, (list, tuple)):
        return [text(v) for v in value]
    return value

m = imaplib.IMAP4(host, int(port), timeout=30)
out = {}
out['login'] = text(m.login('alice', 'pw'))
out['select'] = text(m.select('INBOX'))
out['fetch'] = text(m.fetch('1:*', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])'))
out['append'] = text(m.append('INBOX', None, None, b'Subject: ' + sys.argv[2].encode() + b'\r\n\r\nhello\r\n'))
out['logout'] = text(m.logout())
print(json.dumps(out))
"#;

/// Runs [`CLIENT`] against `target`, appending a message with `subject`; its JSON answer.
fn imaplib_session(target: &str, subject: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", CLIENT, target, subject])
        .output()
        .expect("python3 runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "the imaplib session failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Two nodes n1 and n2 in a mesh, each with LMTP and IMAP on free loopback ports and the user
/// alice (password "pw"). Each IMAP listener offers STARTTLS with its node's certificate from the
/// cluster CA (`mailmesh certs node`), which a proxy trusts by default; `listen_tls` adds a
/// listener with TLS from the first byte. Only n1 is written: n2's configuration needs n1's
/// IMAP address.
fn two_mail_nodes(root: &std::path::Path, listen_tls: bool) -> Vec<NodeSpec> {
    let specs = cluster_specs(root, &["n1", "n2"]);
    write_mesh_configs(&specs);
    let hash = password_hash("pw");
    for spec in &specs {
        let mut text = std::fs::read_to_string(spec.config_path()).unwrap();
        let cert = spec.certs.join(format!("{}.pem", spec.cert_name));
        let key = spec.certs.join(format!("{}.key", spec.cert_name));
        let tls_listener = if listen_tls {
            "listen_tls = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "\n[lmtp]\nlisten = \"127.0.0.1:0\"\n\n[imap]\nlisten = \"127.0.0.1:0\"\n\
             {tls_listener}tls_cert = {cert:?}\ntls_key = {key:?}\n\n\
             [[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n"
        ));
        std::fs::write(spec.config_path(), text).unwrap();
    }
    specs
}

/// Sets `[imap] direct` in n2's configuration.
fn set_direct(n2: &NodeSpec, direct: &str) {
    let text = std::fs::read_to_string(n2.config_path()).unwrap();
    let listen = "[imap]\nlisten = \"127.0.0.1:0\"\n";
    assert!(text.contains(listen));
    let text = text.replace(listen, &format!("{listen}direct = {direct:?}\n"));
    write_atomically(&n2.config_path(), &text);
}

/// Gives n2's `[[peers]]` entry of n1 n1's IMAP address.
fn set_peer_imap(n1: &NodeSpec, n2: &NodeSpec, imap1: &str) {
    let text = std::fs::read_to_string(n2.config_path()).unwrap();
    let peer = format!("address = {:?}\n", n1.address());
    assert!(text.contains(&peer));
    let text = text.replace(&peer, &format!("{peer}imap = {imap1:?}\n"));
    write_atomically(&n2.config_path(), &text);
}

/// Gives n2's `[[peers]]` entry of n1 n1's `listen_tls` address (`imap_tls`).
fn set_peer_imap_tls(n1: &NodeSpec, n2: &NodeSpec, imaps1: &str) {
    let text = std::fs::read_to_string(n2.config_path()).unwrap();
    let peer = format!("address = {:?}\n", n1.address());
    assert!(text.contains(&peer));
    let text = text.replace(&peer, &format!("{peer}imap = {imaps1:?}\nimap_tls = true\n"));
    write_atomically(&n2.config_path(), &text);
}

/// Starts n1, gives it alice's INBOX (so n1 is its primary) with one delivered message, and
/// answers n1's process, its IMAP address and its LMTP address.
fn n1_with_the_inbox(n1: &NodeSpec) -> (Running, String, String) {
    let mut r1 = n1.start();
    let lmtp1 = address(&r1.wait_for_stderr("protocol=\"lmtp\""));
    let imap1 = address(&r1.wait_for_stderr("protocol=\"imap\""));
    op_ok(n1, &["mailbox", "create", "--user", "alice", "--name", "INBOX"]);
    assert!(lmtp_deliver(&lmtp1, "alice@example.org", "on n1").starts_with("250"));
    (r1, imap1, lmtp1)
}

#[test]
fn a_login_on_a_replica_is_referred_to_the_primary() {
    let tmp = tempfile::TempDir::new().unwrap();
    let specs = two_mail_nodes(tmp.path(), false);
    let (n1, n2) = (&specs[0], &specs[1]);
    let (_r1, imap1, _) = n1_with_the_inbox(n1);
    // First without n1's IMAP address: nowhere to refer to, so n2 serves.
    set_direct(n2, "referral");
    let mut r2 = n2.start();
    let imap2 = address(&r2.wait_for_stderr("protocol=\"imap\""));
    converged(&[n1, n2], "alice", "INBOX", 1);

    let mut imap = Conn::open(&imap2);
    let caps = imap.command("a0", "CAPABILITY");
    assert!(caps[0].contains(" LOGIN-REFERRALS"), "{caps:?}");
    let login = imap.command("a1", "LOGIN alice pw");
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    r2.wait_for_stderr("has no [[peers]] imap address; served here");

    // The address arrives by a live reload: the next login is referred, with its mechanism.
    set_peer_imap(n1, n2, &imap1);
    let reloaded = r2.wait_for_stderr_count("configuration reloaded", 1);
    assert!(reloaded.contains("repointed=[] imap=[\"n1\"]"), "{reloaded}");
    let mut imap = Conn::open(&imap2);
    assert_eq!(
        imap.command("b1", "LOGIN alice pw"),
        [format!(
            "b1 NO [REFERRAL imap://alice@{imap1}/] log in at the primary of your INBOX"
        )]
    );
    // "alice\0alice\0pw"
    assert_eq!(
        imap.command("b2", "AUTHENTICATE PLAIN YWxpY2UAYWxpY2UAcHc="),
        [format!(
            "b2 NO [REFERRAL imap://alice;AUTH=PLAIN@{imap1}/] log in at the primary of your INBOX"
        )]
    );
    // A wrong password learns nothing of where alice's mail is.
    let wrong = imap.command("b3", "LOGIN alice nope");
    assert!(
        wrong.last().unwrap().starts_with("b3 NO [AUTHENTICATIONFAILED]"),
        "{wrong:?}"
    );
    // The referred client logs in at n1, the primary, and is served there.
    let mut on1 = Conn::open(&imap1);
    let login = on1.command("c1", "LOGIN alice pw");
    assert!(login.last().unwrap().starts_with("c1 OK"), "{login:?}");
    let select = on1.command("c2", "SELECT INBOX");
    assert!(select.contains(&"* 1 EXISTS".to_string()), "{select:?}");
}

#[test]
fn a_proxied_session_reads_and_writes_on_the_primary_and_falls_back_when_it_is_down() {
    let tmp = tempfile::TempDir::new().unwrap();
    let specs = two_mail_nodes(tmp.path(), false);
    let (n1, n2) = (&specs[0], &specs[1]);
    let (mut r1, imap1, _) = n1_with_the_inbox(n1);
    set_direct(n2, "proxy");
    set_peer_imap(n1, n2, &imap1);
    let mut r2 = n2.start();
    let imap2 = address(&r2.wait_for_stderr("protocol=\"imap\""));
    converged(&[n1, n2], "alice", "INBOX", 1);

    // Through n2 the session is n1's: the login happens there, the APPEND lands there.
    let answers = imaplib_session(&imap2, "through the proxy");
    assert!(answers.contains("\"login\": [\"OK\""), "{answers}");
    assert!(answers.contains("\"select\": [\"OK\", [\"1\"]]"), "{answers}");
    assert!(answers.contains("Subject: on n1"), "{answers}");
    assert!(
        answers.contains("\"append\": [\"OK\", [\"[APPENDUID "),
        "{answers}"
    );
    assert!(answers.contains("\"logout\": [\"BYE\""), "{answers}");
    r2.wait_for_stderr("imap login proxied to the INBOX's primary");
    // n2 said STARTTLS to n1 before the login: the password crossed under TLS.
    let login_on_n1 = r1.wait_for_stderr("imap login");
    assert!(login_on_n1.contains("user=alice"), "{login_on_n1}");
    r2.wait_for_stderr("imap proxied session ended");
    assert_eq!(listing(n1, "alice", "INBOX").unwrap().len(), 2);
    converged(&[n1, n2], "alice", "INBOX", 2);

    // With n1 stopped the proxy has nowhere to go: n2's replica serves.
    r1.signal(libc::SIGTERM);
    r1.wait().expect_code(0);
    let answers = imaplib_session(&imap2, "while n1 is down");
    assert!(answers.contains("\"select\": [\"OK\", [\"2\"]]"), "{answers}");
    assert!(answers.contains("Subject: through the proxy"), "{answers}");
    assert!(answers.contains("\"append\": [\"OK\""), "{answers}");
    r2.wait_for_stderr("the INBOX's primary is unreachable; served here");
    assert_eq!(listing(n2, "alice", "INBOX").unwrap().len(), 3);
}

/// A client that sends its LOGIN, a SELECT and a FETCH in one write gets all three answered by
/// the primary: the bytes behind the login, read by n2 before it knew the session would be
/// proxied, reach n1. The link is TLS from the first byte (n1's `listen_tls`, `[[peers]]
/// imap_tls`). Then n2 is told to trust another CA (`[imap] proxy_ca`): n1's certificate is
/// refused, so no password goes there and n2 serves the session itself.
#[test]
fn pipelined_commands_behind_a_proxied_login_reach_the_primary_and_only_over_checked_tls() {
    let tmp = tempfile::TempDir::new().unwrap();
    let specs = two_mail_nodes(tmp.path(), true);
    let (n1, n2) = (&specs[0], &specs[1]);
    let (mut r1, _, _) = n1_with_the_inbox(n1);
    let imaps1 = address(&r1.wait_for_stderr_count("protocol=\"imap\"", 2));
    set_direct(n2, "proxy");
    set_peer_imap_tls(n1, n2, &imaps1);
    let mut r2 = n2.start();
    let imap2 = address(&r2.wait_for_stderr("protocol=\"imap\""));
    converged(&[n1, n2], "alice", "INBOX", 1);

    let pipelined = "p1 LOGIN alice pw\r\np2 SELECT INBOX\r\n\
                     p3 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n";
    let mut imap = Conn::open(&imap2);
    assert!(imap.send(pipelined.as_bytes()));
    let mut lines = Vec::new();
    while !lines.last().is_some_and(|l: &String| l.starts_with("p3 ")) {
        lines.push(imap.next_line());
    }
    let tagged: Vec<&String> = lines.iter().filter(|l| l.starts_with('p')).collect();
    assert_eq!(tagged.len(), 3, "{lines:?}");
    assert!(tagged[0].starts_with("p1 OK"), "{lines:?}");
    assert!(tagged[1].starts_with("p2 OK [READ-WRITE]"), "{lines:?}");
    assert!(tagged[2].starts_with("p3 OK"), "{lines:?}");
    assert!(lines.contains(&"* 1 EXISTS".to_string()), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("Subject: on n1")), "{lines:?}");
    r2.wait_for_stderr("imap login proxied to the INBOX's primary");
    let selected_on_n1 = r1.wait_for_stderr("imap login");
    assert!(selected_on_n1.contains("user=alice"), "{selected_on_n1}");
    drop(imap);

    // Another CA: n1's certificate is refused before any password is sent; n2 serves.
    let other = tmp.path().join("other-ca");
    support::cluster::make_ca(&other);
    let text = std::fs::read_to_string(n2.config_path()).unwrap();
    let text = text.replace(
        "direct = \"proxy\"\n",
        &format!("direct = \"proxy\"\nproxy_ca = {:?}\n", other.join("ca.pem")),
    );
    write_atomically(&n2.config_path(), &text);
    r2.wait_for_stderr_count("configuration reloaded", 1);
    let logins_on_n1 = r1.stderr_lines("imap login").len();
    let mut imap = Conn::open(&imap2);
    let login = imap.command("q1", "LOGIN alice pw");
    assert!(login.last().unwrap().starts_with("q1 OK"), "{login:?}");
    let refused = r2.wait_for_stderr("the INBOX's primary is unreachable; served here");
    assert!(refused.contains("unknown CA"), "{refused}");
    let select = imap.command("q2", "SELECT INBOX");
    assert!(select.contains(&"* 1 EXISTS".to_string()), "{select:?}");
    assert_eq!(
        r1.stderr_lines("imap login").len(),
        logins_on_n1,
        "no login reached n1"
    );
}
