//! `[imap] direct`: a login on a node that is not the primary of the user's INBOX is referred
//! (RFC 2221) or proxied to the primary, and served by the local replica when the primary is
//! down. Two real nodes over QUIC; alice's INBOX is created on n1, so n1 is its primary. n2 learns
//! n1's IMAP address (a free port, known once n1 runs) from its `[[peers]] imap`. The referral is
//! read on a raw socket (the exact line matters); the proxied session is Python's `imaplib`.
//! Every wait is a condition with a generous deadline, never a sleep.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use support::cluster::{
    cluster_specs, converged, listing, op_ok, write_atomically, write_mesh_configs, NodeSpec,
};
use support::{lmtp_deliver, mailmesh, Running, DEADLINE};

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

fn password_hash() -> String {
    let mut child = mailmesh(&["user", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn address(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// A raw IMAP connection read line by line (the socket's read timeout is the deadline).
struct Imap {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Imap {
    fn connect(target: &str) -> Imap {
        let stream = TcpStream::connect(target).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut imap = Imap {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        };
        imap.line();
        imap
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("no line from the server within {DEADLINE:?}: {e}"));
        assert!(n > 0, "the server closed the connection");
        line.trim_end().to_string()
    }

    fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.writer
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .unwrap();
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            let last = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if last {
                return lines;
            }
        }
    }
}

/// Two nodes n1 and n2 in a mesh, each with LMTP and IMAP on free loopback ports and the user
/// alice (password "pw"). Only n1 is written: n2's configuration needs n1's IMAP address.
fn two_mail_nodes(root: &std::path::Path) -> Vec<NodeSpec> {
    let specs = cluster_specs(root, &["n1", "n2"]);
    write_mesh_configs(&specs);
    let hash = password_hash();
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
    let specs = two_mail_nodes(tmp.path());
    let (n1, n2) = (&specs[0], &specs[1]);
    let (_r1, imap1, _) = n1_with_the_inbox(n1);
    // First without n1's IMAP address: nowhere to refer to, so n2 serves.
    set_direct(n2, "referral");
    let mut r2 = n2.start();
    let imap2 = address(&r2.wait_for_stderr("protocol=\"imap\""));
    converged(&[n1, n2], "alice", "INBOX", 1);

    let mut imap = Imap::connect(&imap2);
    let caps = imap.command("a0", "CAPABILITY");
    assert!(caps[0].contains(" LOGIN-REFERRALS"), "{caps:?}");
    let login = imap.command("a1", "LOGIN alice pw");
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    r2.wait_for_stderr("has no [[peers]] imap address; served here");

    // The address arrives by a live reload: the next login is referred, with its mechanism.
    set_peer_imap(n1, n2, &imap1);
    let reloaded = r2.wait_for_stderr_count("configuration reloaded", 1);
    assert!(reloaded.contains("repointed=[] imap=[\"n1\"]"), "{reloaded}");
    let mut imap = Imap::connect(&imap2);
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
    let mut on1 = Imap::connect(&imap1);
    let login = on1.command("c1", "LOGIN alice pw");
    assert!(login.last().unwrap().starts_with("c1 OK"), "{login:?}");
    let select = on1.command("c2", "SELECT INBOX");
    assert!(select.contains(&"* 1 EXISTS".to_string()), "{select:?}");
}

#[test]
fn a_proxied_session_reads_and_writes_on_the_primary_and_falls_back_when_it_is_down() {
    let tmp = tempfile::TempDir::new().unwrap();
    let specs = two_mail_nodes(tmp.path());
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
