//! LMTP against a real `mailmesh run`: Python's standard `smtplib.LMTP` (a client no one here
//! wrote) for deliveries, STARTTLS and the Unix socket; a raw socket for what smtplib does not
//! do (pipelining a whole transaction, bad commands, a client that vanishes mid-DATA); the
//! operator commands to set sieve scripts and to read what was stored.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{mailmesh, op, password_hash, start_node, Running, DEADLINE};

/// The Python side: one scenario per call, results as one JSON object on stdout.
const CLIENT: &str = r#"
import json, smtplib, ssl, sys

target, scenario = sys.argv[1], sys.argv[2]
if scenario == 'implicit':
    # TLS from the first byte: smtplib.LMTP has no such mode, so a raw TLS socket speaks it.
    import socket
    host, port = target.rsplit(':', 1)
    context = ssl.create_default_context(cafile=sys.argv[3])
    context.check_hostname = False
    sock = context.wrap_socket(socket.create_connection((host, int(port)), timeout=30))
    stream = sock.makefile('rwb')
    def finals(count):
        got = []
        while len(got) < count:
            line = stream.readline().decode()
            if len(line) > 3 and line[3] == ' ':
                got.append(int(line[:3]))
        return got
    out = {'greeting': finals(1)}
    stream.write(b'LHLO mta.example\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: implicit\r\n\r\nhi\r\n.\r\nQUIT\r\n')
    stream.flush()
    out['replies'] = finals(6)
    out['version'] = sock.version()
    print(json.dumps(out))
    sys.exit(0)
if target.startswith('/'):
    lmtp = smtplib.LMTP(target, timeout=30)
else:
    host, port = target.rsplit(':', 1)
    lmtp = smtplib.LMTP(host, int(port), timeout=30)
out = {}

def deliver(sender, recipients, message):
    """MAIL, RCPTs, DATA; smtplib's data() reads one reply, LMTP sends one per accepted RCPT."""
    lmtp.mail(sender)
    rcpt = [lmtp.rcpt(r)[0] for r in recipients]
    accepted = sum(1 for c in rcpt if c == 250)
    data = []
    if accepted:
        code, _ = lmtp.data(message)
        data.append(code)
        for _ in range(accepted - 1):
            data.append(lmtp.getreply()[0])
    else:
        lmtp.rset()
    return {'rcpt': rcpt, 'data': data}

if scenario == 'basic':
    code, _ = lmtp.ehlo('mta.example')
    out['lhlo'] = code
    out['features'] = sorted(lmtp.esmtp_features.keys())
    body = 'Subject: caf\xe9\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nna\xefve \xfcber 8-bit\r\n.leading dot\r\n'.encode('utf-8')
    out['first'] = deliver('sender@ext.example', ['alice@example.org', 'nobody@example.org', 'Bob+Lists@example.org'], body)
elif scenario == 'sieve':
    lmtp.ehlo('mta.example')
    for subject in ['junk offer', 'drop me', 'refuse this', 'flag me', 'plain']:
        out[subject] = deliver('s@ext.example', ['alice@example.org'], ('Subject: %s\r\n\r\nbody\r\n' % subject).encode())
elif scenario == 'size':
    lmtp.ehlo('mta.example')
    out['declared'] = lmtp.mail('s@ext.example', ['SIZE=100000'])[0]
    lmtp.rset()
    out['sent'] = deliver('s@ext.example', ['alice@example.org'], b'Subject: big\r\n\r\n' + b'x' * 20000 + b'\r\n')
    out['after'] = deliver('s@ext.example', ['alice@example.org'], b'Subject: small\r\n\r\nok\r\n')
elif scenario == 'starttls':
    lmtp.ehlo('mta.example')
    out['offered'] = lmtp.has_extn('starttls')
    context = ssl.create_default_context(cafile=sys.argv[3])
    context.check_hostname = False
    out['starttls'] = lmtp.starttls(context=context)[0]
    lmtp.ehlo('mta.example')
    out['offered_after'] = lmtp.has_extn('starttls')
    out['tls'] = deliver('s@ext.example', ['alice@example.org'], b'Subject: secret\r\n\r\nover TLS\r\n')
elif scenario == 'implicit':
    pass
elif scenario == 'plain':
    lmtp.ehlo('mta.example')
    out['plain'] = deliver('s@ext.example', ['alice@example.org'], b'Subject: via socket\r\n\r\nhi\r\n')
lmtp.quit()
print(json.dumps(out))
"#;

struct LmtpNode {
    tmp: tempfile::TempDir,
    config: PathBuf,
    node: Running,
    /// `ip:port` or the Unix socket path.
    target: String,
}

/// A node `n1` with users alice and bob and `[lmtp]` on a port the kernel picks (read back from
/// the node's log), plus `extra` configuration lines for `[lmtp]` and `[limits]`.
fn lmtp_node(lmtp_extra: &str, limits: &str, unix: bool) -> LmtpNode {
    let tmp = tempfile::TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let hash = password_hash("secret");
    let listen = if unix {
        tmp.path().join("lmtp.sock").to_str().unwrap().to_string()
    } else {
        "127.0.0.1:0".to_string()
    };
    let text = format!(
        "[node]\nname = \"n1\"\n\n[storage]\ndata_dir = {:?}\n\n{limits}\n[lmtp]\nlisten = {listen:?}\n{lmtp_extra}\n\n\
         [[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n\n[[users]]\nname = \"bob\"\npassword_hash = {hash:?}\n",
        data.to_str().unwrap()
    );
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, text).unwrap();
    let mut node = start_node(&config);
    let line = node.wait_for_stderr("protocol=\"lmtp\"");
    let target = if unix {
        listen
    } else {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string()
    };
    LmtpNode {
        tmp,
        config,
        node,
        target,
    }
}

/// Runs the Python client's `scenario` against `target`.
fn python(dir: &Path, target: &str, scenario: &str, extra: &[&str]) -> serde_json::Value {
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(target)
        .arg(scenario)
        .args(extra)
        .output()
        .expect("python3 runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "python {scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `mailmesh fetch` listing: (uid, flags, size) per message of `user`'s `mailbox`.
fn messages(config: &Path, user: &str, mailbox: &str) -> Vec<(String, String)> {
    let done = op(config, &["fetch", "--user", user, "--mailbox", mailbox]);
    done.expect_code(0);
    done.stdout
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_string(), cols[1].to_string())
        })
        .collect()
}

fn body(config: &Path, user: &str, mailbox: &str, uid: &str) -> Vec<u8> {
    let mut cmd = mailmesh(&["fetch", "--user", user, "--mailbox", mailbox, "--uid", uid]);
    let out = cmd.arg("--config").arg(config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn codes(value: &serde_json::Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn smtplib_delivers_to_known_users_and_is_refused_for_unknown_ones() {
    let n = lmtp_node("", "", false);
    let out = python(n.tmp.path(), &n.target, "basic", &[]);
    assert_eq!(out["lhlo"], 250);
    let features: Vec<&str> = out["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["8bitmime", "enhancedstatuscodes", "pipelining", "size"] {
        assert!(features.contains(&f), "{features:?}");
    }
    assert_eq!(codes(&out["first"]["rcpt"]), vec![250, 550, 250]);
    assert_eq!(codes(&out["first"]["data"]), vec![250, 250]);

    assert_eq!(messages(&n.config, "alice", "INBOX").len(), 1);
    let stored = body(&n.config, "alice", "INBOX", "1");
    let text = String::from_utf8(stored.clone()).expect("the 8-bit body is stored as sent (UTF-8)");
    assert!(
        text.starts_with("Return-Path: <sender@ext.example>\r\nReceived: from mta.example"),
        "{text}"
    );
    assert!(text.contains("by n1 (mailmesh) with LMTP;"), "{text}");
    assert!(
        text.contains("na\u{ef}ve \u{fc}ber 8-bit\r\n.leading dot\r\n"),
        "{text}"
    );
    assert!(text.contains("Subject: caf\u{e9}\r\n"), "{text}");
    // bob+Lists: no mailbox Lists, so INBOX; once it exists, into it.
    assert_eq!(messages(&n.config, "bob", "INBOX").len(), 1);
    op(
        &n.config,
        &["mailbox", "create", "--user", "bob", "--name", "Lists"],
    )
    .expect_code(0);
    let again = python(n.tmp.path(), &n.target, "basic", &[]);
    assert_eq!(codes(&again["first"]["data"]), vec![250, 250]);
    assert_eq!(messages(&n.config, "bob", "Lists").len(), 1);
    assert_eq!(messages(&n.config, "bob", "INBOX").len(), 1);
    assert_eq!(messages(&n.config, "alice", "INBOX").len(), 2);
}

/// A raw connection: writes `input` at once, reads until `replies` final reply lines came.
fn exchange(stream: &mut TcpStream, input: &[u8], replies: usize) -> Vec<String> {
    stream.write_all(input).unwrap();
    read_replies(stream, replies)
}

fn read_replies(stream: &mut TcpStream, replies: usize) -> Vec<String> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let finals = |t: &str| {
        t.lines()
            .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    while finals(&text).len() < replies {
        let n = stream.read(&mut buf).expect("the server answers");
        assert!(n > 0, "connection closed after {text:?}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    finals(&text)
}

fn connect(target: &str) -> TcpStream {
    let mut stream = TcpStream::connect(target).unwrap();
    let greeting = read_replies(&mut stream, 1);
    assert!(greeting[0].starts_with("220 "), "{greeting:?}");
    stream
}

#[test]
fn a_pipelined_transaction_gets_every_reply_in_order() {
    let n = lmtp_node("", "", false);
    let mut s = connect(&n.target);
    let replies = exchange(
        &mut s,
        b"LHLO raw\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<ghost@x>\r\nRCPT TO:<bob@x>\r\nDATA\r\nSubject: p\r\n\r\n..x\r\n.\r\nQUIT\r\n",
        9,
    );
    let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        codes,
        vec!["250", "250", "250", "550", "250", "354", "250", "250", "221"],
        "{replies:?}"
    );
    assert!(replies[3].contains("5.1.1"), "{replies:?}");
    let stored = String::from_utf8(body(&n.config, "bob", "INBOX", "1")).unwrap();
    assert!(stored.ends_with("\r\n\r\n.x\r\n"), "dot-unstuffed: {stored:?}");
}

#[test]
fn bad_commands_get_errors_and_an_interrupted_data_stores_nothing() {
    let n = lmtp_node("", "", false);
    let mut s = connect(&n.target);
    let mut input = b"DATA\r\nLHLO raw\r\nDATA\r\nRCPT TO:<alice@x>\r\nBOGUS\r\nHELO x\r\n".to_vec();
    input.extend_from_slice(&vec![b'A'; 5000]);
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let replies = exchange(&mut s, &input, 8);
    let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        codes,
        vec!["503", "250", "503", "503", "500", "500", "500", "250"],
        "{replies:?}"
    );
    assert!(replies[6].contains("too long"), "{replies:?}");

    // Mid-DATA the client goes away: nothing of that message may be stored.
    let mut cut = connect(&n.target);
    exchange(
        &mut cut,
        b"LHLO raw\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\n",
        4,
    );
    cut.write_all(b"Subject: never\r\n\r\nhalf a message\r\n")
        .unwrap();
    drop(cut);
    // A complete delivery afterwards is the only message there.
    let replies = exchange(
        &mut s,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: whole\r\n\r\nok\r\n.\r\n",
        4,
    );
    assert_eq!(&replies[3][..3], "250", "{replies:?}");
    let listed = messages(&n.config, "alice", "INBOX");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let stored = String::from_utf8(body(&n.config, "alice", "INBOX", &listed[0].0)).unwrap();
    assert!(stored.contains("Subject: whole"), "{stored}");
    assert!(n.node.stderr().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn size_limits_refuse_before_storing() {
    let n = lmtp_node(
        "",
        "[limits]\nmax_message_bytes = 4096\nmax_annotation_bytes = 65536\nmax_script_bytes = 65536\n",
        false,
    );
    let out = python(n.tmp.path(), &n.target, "size", &[]);
    assert_eq!(out["declared"], 552);
    assert_eq!(codes(&out["sent"]["data"]), vec![552]);
    assert_eq!(codes(&out["after"]["data"]), vec![250]);
    assert_eq!(messages(&n.config, "alice", "INBOX").len(), 1);
}

#[test]
fn the_active_sieve_script_files_discards_rejects_and_flags() {
    let n = lmtp_node("", "", false);
    let script = n.tmp.path().join("rules.sieve");
    std::fs::write(
        &script,
        "require [\"fileinto\", \"reject\", \"imap4flags\", \"mailbox\"];\n\
         if header :contains \"subject\" \"junk\" { fileinto :create \"Junk\"; }\n\
         elsif header :contains \"subject\" \"drop\" { discard; }\n\
         elsif header :contains \"subject\" \"refuse\" { reject \"no thanks\"; }\n\
         elsif header :contains \"subject\" \"flag\" { addflag \"\\\\Flagged\"; keep; }\n",
    )
    .unwrap();
    op(
        &n.config,
        &[
            "sieve",
            "put",
            "--user",
            "alice",
            "--name",
            "rules",
            "--file",
            script.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    // A script that does not compile is refused with its line.
    let bad = n.tmp.path().join("bad.sieve");
    std::fs::write(&bad, "if true {\n  keep\n").unwrap();
    op(
        &n.config,
        &[
            "sieve",
            "put",
            "--user",
            "alice",
            "--name",
            "bad",
            "--file",
            bad.to_str().unwrap(),
        ],
    )
    .expect_code(1)
    .expect_stderr(&["does not compile", "line"]);
    op(
        &n.config,
        &["sieve", "activate", "--user", "alice", "--name", "rules"],
    )
    .expect_code(0);

    let out = python(n.tmp.path(), &n.target, "sieve", &[]);
    assert_eq!(codes(&out["junk offer"]["data"]), vec![250]);
    assert_eq!(codes(&out["drop me"]["data"]), vec![250]);
    assert_eq!(codes(&out["refuse this"]["data"]), vec![550]);
    assert_eq!(codes(&out["flag me"]["data"]), vec![250]);
    assert_eq!(codes(&out["plain"]["data"]), vec![250]);

    let junk = messages(&n.config, "alice", "Junk");
    assert_eq!(junk.len(), 1, "{junk:?}");
    assert!(String::from_utf8(body(&n.config, "alice", "Junk", &junk[0].0))
        .unwrap()
        .contains("Subject: junk offer"));
    let inbox = messages(&n.config, "alice", "INBOX");
    assert_eq!(inbox.len(), 2, "flag me and plain only: {inbox:?}");
    let flagged: Vec<_> = inbox
        .iter()
        .filter(|(_, flags)| flags.contains("\\Flagged"))
        .collect();
    assert_eq!(flagged.len(), 1, "{inbox:?}");
    let text = String::from_utf8(body(&n.config, "alice", "INBOX", &flagged[0].0)).unwrap();
    assert!(text.contains("Subject: flag me"), "{text}");
}

#[test]
fn starttls_and_the_unix_socket_deliver_too() {
    // Certificates from the node's own `mailmesh certs` (the CA signs one naming n1).
    let certs = tempfile::TempDir::new().unwrap();
    let ca = certs.path().join("ca");
    op_plain(&["certs", "ca", "--out", ca.to_str().unwrap()]);
    op_plain(&[
        "certs",
        "node",
        "n1",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        certs.path().to_str().unwrap(),
    ]);
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        certs.path().join("n1.pem").to_str().unwrap(),
        certs.path().join("n1.key").to_str().unwrap()
    );
    let n = lmtp_node(&extra, "", false);
    let ca_pem = ca.join("ca.pem");
    let out = python(n.tmp.path(), &n.target, "starttls", &[ca_pem.to_str().unwrap()]);
    assert_eq!(out["offered"], true);
    assert_eq!(out["starttls"], 220);
    assert_eq!(out["offered_after"], false);
    assert_eq!(codes(&out["tls"]["data"]), vec![250]);
    let text = String::from_utf8(body(&n.config, "alice", "INBOX", "1")).unwrap();
    assert!(text.contains("with LMTPS;"), "{text}");

    // The socket gets the configured permissions (an MTA in the node's group may connect).
    let u = lmtp_node("socket_mode = \"0660\"\n", "", true);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&u.target).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    let out = python(u.tmp.path(), &u.target, "plain", &[]);
    assert_eq!(codes(&out["plain"]["data"]), vec![250]);
    let text = String::from_utf8(body(&u.config, "alice", "INBOX", "1")).unwrap();
    assert!(text.contains("Received: from mta.example (unix)"), "{text}");
}

#[test]
fn implicit_tls_speaks_tls_from_the_first_byte() {
    let certs = tempfile::TempDir::new().unwrap();
    let ca = certs.path().join("ca");
    op_plain(&["certs", "ca", "--out", ca.to_str().unwrap()]);
    op_plain(&[
        "certs",
        "node",
        "n1",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        certs.path().to_str().unwrap(),
    ]);
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\nimplicit_tls = true\n",
        certs.path().join("n1.pem").to_str().unwrap(),
        certs.path().join("n1.key").to_str().unwrap()
    );
    let n = lmtp_node(&extra, "", false);
    let out = python(
        n.tmp.path(),
        &n.target,
        "implicit",
        &[ca.join("ca.pem").to_str().unwrap()],
    );
    assert_eq!(codes(&out["greeting"]), vec![220]);
    assert_eq!(codes(&out["replies"]), vec![250, 250, 250, 354, 250, 221]);
    assert!(out["version"].as_str().unwrap().starts_with("TLS"), "{out}");
    let text = String::from_utf8(body(&n.config, "alice", "INBOX", "1")).unwrap();
    assert!(
        text.contains("with LMTPS;") && text.contains("Subject: implicit"),
        "{text}"
    );
    // A plaintext client gets no LMTP greeting: the server waits for a TLS hello.
    let mut plain = TcpStream::connect(&n.target).unwrap();
    plain.write_all(b"LHLO plain\r\n").unwrap();
    plain.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"220"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

fn op_plain(args: &[&str]) {
    let out = mailmesh(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_adds_a_user_without_a_restart() {
    let mut n = lmtp_node("", "", false);
    let mut s = connect(&n.target);
    let replies = exchange(&mut s, b"LHLO raw\r\nMAIL FROM:<a@x>\r\nRCPT TO:<carol@x>\r\n", 3);
    assert!(replies[2].starts_with("550 5.1.1"), "{replies:?}");
    let hash = password_hash("c");
    let mut text = std::fs::read_to_string(&n.config).unwrap();
    text.push_str(&format!(
        "\n[[users]]\nname = \"carol\"\npassword_hash = {hash:?}\n"
    ));
    std::fs::write(&n.config, text).unwrap();
    n.node.wait_for_stderr("configuration reloaded");
    // The reload is logged once applied; a RCPT now finds carol. Poll with a deadline in case
    // the file event came in two parts (the first reload may have read it half written).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let replies = exchange(&mut s, b"RCPT TO:<carol@x>\r\n", 1);
        if replies[0].starts_with("250") {
            break;
        }
        assert!(Instant::now() < deadline, "carol never became known: {replies:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_over_the_per_address_limit_are_refused_and_others_still_served() {
    let n = lmtp_node("max_connections_per_address = 2\n", "", false);
    let first = connect(&n.target);
    let _second = connect(&n.target);
    let mut third = TcpStream::connect(&n.target).unwrap();
    let refused = read_replies(&mut third, 1);
    assert!(refused[0].starts_with("421 4.7.0"), "{refused:?}");
    let mut rest = Vec::new();
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        third.read_to_end(&mut rest).unwrap(),
        0,
        "the refused connection is closed"
    );
    // Once one closes, a new connection is served again.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut s = TcpStream::connect(&n.target).unwrap();
        let greeting = read_replies(&mut s, 1);
        if greeting[0].starts_with("220 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back: {greeting:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = op(&n.config, &["status"]);
    status.expect_code(0);
    assert!(status.stdout.contains("lmtp 127.0.0.1:"), "{}", status.stdout);
    assert!(
        status.stdout.contains(", 1 refused over the limits"),
        "{}",
        status.stdout
    );
}
