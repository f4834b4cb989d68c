//! ManageSieve against a real `mailmesh run`: a Python client (standard library socket and ssl,
//! nothing of ours) speaks RFC 5804 line by line, as the RFC's examples do; a client library no
//! one here wrote (sievelib) manages scripts its way; Python's
//! `smtplib.LMTP` delivers through the script it uploaded; the operator commands and the metrics
//! endpoint show what the node did.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{address, mailmesh, op, password_hash, start_node, Running};

/// The Python side: one scenario per call, results as one JSON object on stdout.
const CLIENT: &str = r#"
import base64, json, smtplib, socket, ssl, sys, urllib.request

target, scenario = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
host, port = target.rsplit(':', 1)

class Sieve:
    """A ManageSieve connection: sends lines, reads the server's lines as tokens (atoms as str,
    strings and literals as bytes, parentheses as '(' and ')')."""
    def __init__(self, source=None):
        self.sock = socket.create_connection((host, int(port)), timeout=30,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile('rb')

    def starttls(self, cafile):
        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
        self.sock = context.wrap_socket(self.sock)
        self.file = self.sock.makefile('rb')
        return self.sock.version()

    def send(self, data):
        self.sock.sendall(data)

    def tokens(self):
        line = self.file.readline()
        if not line:
            raise EOFError('the server closed the connection')
        out, i = [], 0
        while True:
            if i >= len(line) or line[i:i+2] == b'\r\n':
                return out
            c = line[i:i+1]
            if c == b' ':
                i += 1
            elif c in (b'(', b')'):
                out.append(c.decode())
                i += 1
            elif c == b'"':
                j, buf = i + 1, bytearray()
                while line[j:j+1] != b'"':
                    if line[j:j+1] == b'\\':
                        j += 1
                    buf += line[j:j+1]
                    j += 1
                out.append(bytes(buf))
                i = j + 1
            elif c == b'{':
                j = line.index(b'}', i)
                out.append(self.file.read(int(line[i+1:j].rstrip(b'+'))))
                line, i = self.file.readline(), 0
            else:
                j = i
                while j < len(line) and line[j:j+1] not in (b' ', b'\r', b'\n', b'(', b')'):
                    j += 1
                out.append(line[i:j].decode())
                i = j

    def response(self):
        """Lines up to OK, NO or BYE: {'status', 'code', 'text', 'data': [[str...]...]}."""
        data = []
        while True:
            t = self.tokens()
            if t and isinstance(t[0], str) and t[0].upper() in ('OK', 'NO', 'BYE'):
                code, text = None, None
                rest = t[1:]
                if rest and rest[0] == '(':
                    end = rest.index(')')
                    code = ' '.join(x if isinstance(x, str) else x.decode() for x in rest[1:end])
                    rest = rest[end+1:]
                if rest:
                    text = rest[0].decode('utf-8', 'replace')
                return {'status': t[0].upper(), 'code': code, 'text': text,
                        'data': [[x if isinstance(x, str) else x.decode('utf-8', 'replace') for x in d] for d in data]}
            data.append(t)

    def command(self, line):
        self.send(line)
        return self.response()

def literal(text):
    data = text.encode()
    return b'{%d+}\r\n' % len(data) + data

def plain(user, password):
    return base64.b64encode(b'\0' + user.encode() + b'\0' + password.encode())

def metrics():
    text = urllib.request.urlopen('http://%s/metrics' % args[0], timeout=30).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            name, value = line.rsplit(' ', 1)
            values[name] = float(value)
    return {k: values.get(k, 0.0) for k in ('mailmesh_failed_logins_total', 'mailmesh_delayed_logins_total')}

out = {}
if scenario == 'scripts':
    s = Sieve()
    out['greeting'] = s.response()
    out['before_login'] = s.command(b'LISTSCRIPTS\r\n')
    # Before a login no command needs a large string: a literal over 8 KiB is refused.
    out['big_before_login'] = s.command(b'CHECKSCRIPT {10000+}\r\n' + b'#' * 10000 + b'\r\n')
    out['login'] = s.command(b'AUTHENTICATE "PLAIN" "' + plain('alice', 'secret') + b'"\r\n')
    rules = ('require ["fileinto", "mailbox"];\r\n'
             'if header :contains "subject" "report" { fileinto :create "Reports"; }\r\n')
    out['put'] = s.command(b'PUTSCRIPT "rules" ' + literal(rules) + b'\r\n')
    out['put_bad'] = s.command(b'PUTSCRIPT "bad" ' + literal('require "fileinto";\r\nif true {\r\n  fileinto "x"\r\n}\r\n') + b'\r\n')
    out['put_redirect'] = s.command(b'PUTSCRIPT "fwd" ' + literal('redirect "elsewhere@example.org";\r\n') + b'\r\n')
    out['put_latin1'] = s.command(b'PUTSCRIPT "latin1" {9+}\r\n# caf\xe9 \r\n\r\n')
    out['check_good'] = s.command(b'CHECKSCRIPT ' + literal('keep;\r\n') + b'\r\n')
    out['check_bad'] = s.command(b'CHECKSCRIPT {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n')
    out['put_warn'] = s.command(b'PUTSCRIPT "warn" ' + literal('require ["fileinto", "include"];\r\nfileinto "Archive";\r\nfileinto "INBOX";\r\ninclude "helper";\r\n') + b'\r\n')
    out['check_warn'] = s.command(b'CHECKSCRIPT ' + literal('require "fileinto";\r\nfileinto "Reports";\r\n') + b'\r\n')
    out['put_spare'] = s.command(b'PUTSCRIPT "spare" "keep;"\r\n')
    out['activate'] = s.command(b'SETACTIVE "rules"\r\n')
    out['activate_missing'] = s.command(b'SETACTIVE "nope"\r\n')
    out['delete_active'] = s.command(b'DELETESCRIPT "rules"\r\n')
    out['rename_taken'] = s.command(b'RENAMESCRIPT "rules" "spare"\r\n')
    out['rename'] = s.command(b'RENAMESCRIPT "rules" "filters"\r\n')
    out['delete_spare'] = s.command(b'DELETESCRIPT "spare"\r\n')
    out['delete_missing'] = s.command(b'DELETESCRIPT "spare"\r\n')
    out['list'] = s.command(b'LISTSCRIPTS\r\n')
    out['get'] = s.command(b'GETSCRIPT "filters"\r\n')
    out['get_missing'] = s.command(b'GETSCRIPT "rules"\r\n')
    out['havespace_small'] = s.command(b'HAVESPACE "x" 1000\r\n')
    out['havespace_big'] = s.command(b'HAVESPACE "x" 999999999\r\n')
    # A literal over the limit: refused, read and dropped, and the connection still serves.
    out['put_huge'] = s.command(b'PUTSCRIPT "huge" {300000+}\r\n' + b'#' * 300000 + b'\r\n')
    out['unknown'] = s.command(b'FROBNICATE\r\n')
    out['noop'] = s.command(b'NOOP "STARTTLS-SYNC-42"\r\n')
    out['capability'] = s.command(b'CAPABILITY\r\n')
    out['logout'] = s.command(b'LOGOUT\r\n')
    # LMTP delivery runs the script uploaded above.
    lmtp_host, lmtp_port = args[0].rsplit(':', 1)
    lmtp = smtplib.LMTP(lmtp_host, int(lmtp_port), timeout=30)
    lmtp.ehlo('mta.example')
    for subject in ['weekly report', 'hello']:
        lmtp.mail('s@ext.example')
        lmtp.rcpt('alice@example.org')
        out['lmtp ' + subject] = lmtp.data(('Subject: %s\r\n\r\nbody\r\n' % subject).encode())[0]
    lmtp.quit()
elif scenario == 'starttls':
    s = Sieve()
    out['greeting'] = s.response()
    out['plain_auth'] = s.command(b'AUTHENTICATE "PLAIN" "' + plain('alice', 'secret') + b'"\r\n')
    out['starttls'] = s.command(b'STARTTLS\r\n')
    out['tls_version'] = s.starttls(args[0])
    out['capabilities_after'] = s.response()
    # LOGIN, its challenges answered one by one.
    s.send(b'AUTHENTICATE "LOGIN"\r\n')
    out['challenge1'] = base64.b64decode(s.tokens()[0]).decode()
    s.send(b'"' + base64.b64encode(b'alice') + b'"\r\n')
    out['challenge2'] = base64.b64decode(s.tokens()[0]).decode()
    s.send(b'{%d+}\r\n' % len(base64.b64encode(b'secret')) + base64.b64encode(b'secret') + b'\r\n')
    out['login'] = s.response()
    out['list'] = s.command(b'LISTSCRIPTS\r\n')
    out['unauthenticate'] = s.command(b'UNAUTHENTICATE\r\n')
    out['after_unauthenticate'] = s.command(b'LISTSCRIPTS\r\n')
    # PLAIN without an initial response: an empty challenge, then the response; then "*".
    s.send(b'AUTHENTICATE "PLAIN"\r\n')
    out['plain_challenge'] = s.tokens()
    s.send(b'"*"\r\n')
    out['cancelled'] = s.response()
    s.send(b'AUTHENTICATE "PLAIN"\r\n')
    s.tokens()
    s.send(b'"' + plain('alice', 'secret') + b'"\r\n')
    out['plain_continued'] = s.response()
    out['logout'] = s.command(b'LOGOUT\r\n')
    out['plain_challenge'] = [x.decode() for x in out['plain_challenge']]
elif scenario == 'implicit':
    # TLS from the first byte (the listener's implicit_tls), then RFC 5804 as usual.
    s = Sieve()
    context = ssl.create_default_context(cafile=args[0])
    context.check_hostname = False
    s.sock = context.wrap_socket(s.sock)
    s.file = s.sock.makefile('rb')
    out['tls_version'] = s.sock.version()
    out['greeting'] = s.response()
    out['login'] = s.command(b'AUTHENTICATE "PLAIN" "' + plain('alice', 'secret') + b'"\r\n')
    out['starttls'] = s.command(b'STARTTLS\r\n')
    out['logout'] = s.command(b'LOGOUT\r\n')
elif scenario == 'sievelib':
    # A ManageSieve client library no one here wrote (sievelib, MIT; .ci/run installs it).
    import warnings
    warnings.simplefilter('ignore')  # it warns about a password over plaintext: loopback here
    from sievelib.managesieve import Client
    c = Client(host, int(port))
    out['connect'] = c.connect('alice', 'secret', starttls=False, authmech='PLAIN')
    out['implementation'] = c.get_implementation()
    out['sasl'] = c.get_sasl_mechanisms()
    out['sieve'] = c.get_sieve_capabilities()
    out['havespace'] = c.havespace('rules', 100)
    out['put'] = c.putscript('rules', 'require ["fileinto"];\nif header :contains "subject" "x" { fileinto "X"; }\n')
    out['put_bad'] = c.putscript('bad', 'if true {\n')
    out['put_bad_error'] = c.errmsg.decode()
    out['check'] = c.checkscript('keep;\n')
    out['activate'] = c.setactive('rules')
    out['list'] = list(c.listscripts())
    out['get'] = c.getscript('rules')
    out['rename'] = c.renamescript('rules', 'filters')
    out['delete_active'] = c.deletescript('filters')
    out['deactivate'] = c.setactive('')
    out['list_inactive'] = list(c.listscripts())
    out['delete'] = c.deletescript('filters')
    out['list_empty'] = list(c.listscripts())
    c.logout()
    out['login_mechanism'] = Client(host, int(port)).connect('alice', 'secret', starttls=False, authmech='LOGIN')
    out['wrong_password'] = Client(host, int(port)).connect('alice', 'nope', starttls=False, authmech='PLAIN')
elif scenario == 'delay':
    # Two wrong passwords from 127.0.0.1, then the right one from 127.0.0.2.
    out['start'] = metrics()
    s = Sieve('127.0.0.1')
    s.response()
    out['first'] = s.command(b'AUTHENTICATE "PLAIN" "' + plain('alice', 'wrong') + b'"\r\n')
    out['after_first'] = metrics()
    out['second'] = s.command(b'AUTHENTICATE "PLAIN" "' + plain('alice', 'wrong') + b'"\r\n')
    out['after_second'] = metrics()
    other = Sieve('127.0.0.2')
    other.response()
    out['other'] = other.command(b'AUTHENTICATE "PLAIN" "' + plain('alice', 'secret') + b'"\r\n')
    out['after_other'] = metrics()
print(json.dumps(out))
"#;

struct SieveNode {
    tmp: tempfile::TempDir,
    config: PathBuf,
    _node: Running,
    managesieve: String,
    lmtp: String,
    metrics: String,
}

/// A node `n1` with user alice (password "secret"), `[lmtp]`, `[managesieve]` (plus
/// `extra`) and `[metrics]`, each on a port the kernel picks (read back from the log).
fn sieve_node(extra: &str) -> SieveNode {
    let tmp = tempfile::TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let hash = password_hash("secret");
    let text = format!(
        "[node]\nname = \"n1\"\n\n[storage]\ndata_dir = {:?}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [lmtp]\nlisten = \"127.0.0.1:0\"\n\n[managesieve]\nlisten = \"127.0.0.1:0\"\n{extra}\n\n\
         [[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n",
        data.to_str().unwrap()
    );
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, text).unwrap();
    let mut node = start_node(&config);
    let lmtp = address(&node.wait_for_stderr("protocol=\"lmtp\""));
    let managesieve = address(&node.wait_for_stderr("protocol=\"managesieve\""));
    let metrics = address(&node.wait_for_stderr("metrics endpoint ready"));
    SieveNode {
        tmp,
        config,
        _node: node,
        managesieve,
        lmtp,
        metrics,
    }
}

/// Runs the Python client's `scenario` against `target`.
fn python(dir: &Path, target: &str, scenario: &str, extra: &[&str]) -> serde_json::Value {
    let script = dir.join("sieve_client.py");
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

/// Asserts a response's status and code, and that its text contains `text`.
#[track_caller]
fn expect(response: &serde_json::Value, status: &str, code: Option<&str>, text: &str) {
    assert_eq!(response["status"], status, "{response}");
    assert_eq!(response["code"].as_str(), code, "{response}");
    if !text.is_empty() {
        assert!(
            response["text"].as_str().unwrap_or("").contains(text),
            "{response} lacks {text:?}"
        );
    }
}

/// The capability lines of a response, as `NAME value` strings.
fn capabilities(response: &serde_json::Value) -> Vec<String> {
    response["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            line.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn messages(config: &Path, user: &str, mailbox: &str) -> Vec<String> {
    let done = op(config, &["fetch", "--user", user, "--mailbox", mailbox]);
    done.expect_code(0);
    done.stdout.lines().map(str::to_string).collect()
}

#[test]
fn scripts_are_managed_over_managesieve_and_filter_lmtp_deliveries() {
    let n = sieve_node("");
    let out = python(n.tmp.path(), &n.managesieve, "scripts", &[&n.lmtp]);
    let greeting = capabilities(&out["greeting"]);
    expect(&out["greeting"], "OK", None, "");
    assert!(greeting[0].starts_with("IMPLEMENTATION mailmesh"), "{greeting:?}");
    // Loopback: a password may be sent in plaintext, no certificate, so no STARTTLS.
    assert!(greeting.contains(&"SASL PLAIN LOGIN".to_string()), "{greeting:?}");
    assert!(greeting.contains(&"VERSION 1.0".to_string()), "{greeting:?}");
    assert!(!greeting.iter().any(|c| c == "STARTTLS"), "{greeting:?}");
    let sieve = greeting.iter().find(|c| c.starts_with("SIEVE ")).unwrap();
    for extension in ["fileinto", "imap4flags", "variables", "body", "include"] {
        assert!(sieve.split(' ').any(|e| e == extension), "{sieve}");
    }
    for absent in ["redirect", "vacation", "enotify"] {
        assert!(!sieve.split(' ').any(|e| e == absent), "{sieve}");
    }

    expect(&out["before_login"], "NO", None, "authenticate first");
    expect(&out["big_before_login"], "NO", Some("QUOTA/MAXSIZE"), "8192");
    expect(&out["login"], "OK", None, "");
    expect(&out["put"], "OK", None, "");
    // Refused with the compiler's line and reason; nothing stored.
    expect(&out["put_bad"], "NO", None, "line 4");
    expect(&out["put_redirect"], "NO", None, "outgoing mail");
    expect(&out["put_latin1"], "NO", None, "not valid UTF-8");
    expect(&out["check_good"], "OK", None, "");
    expect(&out["check_bad"], "NO", None, "line 2");
    // Stored, and told what will not work as written: a missing mailbox without :create, a
    // missing include. ("Reports" does not exist yet either: only a delivery's :create makes it.)
    expect(&out["put_warn"], "OK", Some("WARNINGS"), "fileinto \"Archive\"");
    let warned = out["put_warn"]["text"].as_str().unwrap();
    assert!(warned.contains("include \"helper\""), "{warned}");
    assert!(!warned.contains("INBOX\":"), "INBOX always exists: {warned}");
    expect(&out["check_warn"], "OK", Some("WARNINGS"), "fileinto \"Reports\"");
    expect(&out["put_spare"], "OK", None, "");
    expect(&out["activate"], "OK", None, "");
    expect(&out["activate_missing"], "NO", Some("NONEXISTENT"), "");
    expect(&out["delete_active"], "NO", Some("ACTIVE"), "");
    expect(&out["rename_taken"], "NO", Some("ALREADYEXISTS"), "");
    expect(&out["rename"], "OK", None, "");
    expect(&out["delete_spare"], "OK", None, "");
    expect(&out["delete_missing"], "NO", Some("NONEXISTENT"), "");
    expect(&out["list"], "OK", None, "");
    assert_eq!(
        out["list"]["data"],
        serde_json::json!([["filters", "ACTIVE"], ["warn"]]),
        "{}",
        out["list"]
    );
    expect(&out["get"], "OK", None, "");
    let got = out["get"]["data"][0][0].as_str().unwrap();
    assert!(got.contains("fileinto :create \"Reports\""), "{got}");
    expect(&out["get_missing"], "NO", Some("NONEXISTENT"), "");
    expect(&out["havespace_small"], "OK", None, "");
    expect(&out["havespace_big"], "NO", Some("QUOTA/MAXSIZE"), "");
    expect(&out["put_huge"], "NO", Some("QUOTA/MAXSIZE"), "");
    expect(&out["unknown"], "NO", None, "unknown command FROBNICATE");
    expect(&out["noop"], "OK", Some("TAG STARTTLS-SYNC-42"), "");
    let after = capabilities(&out["capability"]);
    assert!(after.contains(&"OWNER alice".to_string()), "{after:?}");
    assert!(after.contains(&"SASL ".to_string()), "{after:?}");
    expect(&out["logout"], "OK", None, "");

    // The listener is in the status with its connections.
    let status = op(&n.config, &["status"]);
    status.expect_code(0);
    assert!(
        status.stdout.contains("managesieve 127.0.0.1:"),
        "{}",
        status.stdout
    );

    // The same replicated state the operator commands read.
    let listed = op(&n.config, &["sieve", "list", "--user", "alice"]);
    listed.expect_code(0);
    assert_eq!(
        listed.stdout.lines().collect::<Vec<_>>(),
        vec!["filters (active)", "warn"],
        "{}",
        listed.stdout
    );

    // The uploaded script ran on the LMTP deliveries.
    assert_eq!(out["lmtp weekly report"], 250);
    assert_eq!(out["lmtp hello"], 250);
    assert_eq!(messages(&n.config, "alice", "Reports").len(), 1);
    assert_eq!(messages(&n.config, "alice", "INBOX").len(), 1);
}

#[test]
fn authentication_needs_starttls_where_plaintext_is_not_allowed() {
    // Certificates from the node's own `mailmesh certs` (the CA signs one naming n1).
    let certs = tempfile::TempDir::new().unwrap();
    let ca = certs.path().join("ca");
    for args in [
        vec!["certs", "ca", "--out", ca.to_str().unwrap()],
        vec![
            "certs",
            "node",
            "n1",
            "--ca",
            ca.to_str().unwrap(),
            "--out",
            certs.path().to_str().unwrap(),
        ],
    ] {
        let done = mailmesh(&args).output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\nallow_plaintext_auth = false\n",
        certs.path().join("n1.pem").to_str().unwrap(),
        certs.path().join("n1.key").to_str().unwrap()
    );
    let n = sieve_node(&extra);
    let ca_pem = ca.join("ca.pem");
    let out = python(
        n.tmp.path(),
        &n.managesieve,
        "starttls",
        &[ca_pem.to_str().unwrap()],
    );
    let before = capabilities(&out["greeting"]);
    assert!(before.contains(&"STARTTLS".to_string()), "{before:?}");
    assert!(
        before.contains(&"SASL ".to_string()),
        "no mechanism before TLS: {before:?}"
    );
    expect(&out["plain_auth"], "NO", Some("ENCRYPT-NEEDED"), "");
    expect(&out["starttls"], "OK", None, "");
    assert!(out["tls_version"].as_str().unwrap().starts_with("TLS"), "{out}");
    // RFC 5804 2.2: the capabilities again, under TLS.
    let after = capabilities(&out["capabilities_after"]);
    expect(&out["capabilities_after"], "OK", None, "");
    assert!(after.contains(&"SASL PLAIN LOGIN".to_string()), "{after:?}");
    assert!(!after.contains(&"STARTTLS".to_string()), "{after:?}");
    assert_eq!(out["challenge1"], "Username:");
    assert_eq!(out["challenge2"], "Password:");
    expect(&out["login"], "OK", None, "");
    expect(&out["list"], "OK", None, "");
    expect(&out["unauthenticate"], "OK", None, "");
    expect(&out["after_unauthenticate"], "NO", None, "authenticate first");
    assert_eq!(out["plain_challenge"], serde_json::json!([""]));
    expect(&out["cancelled"], "NO", None, "cancelled");
    expect(&out["plain_continued"], "OK", None, "");
    expect(&out["logout"], "OK", None, "");

    // The same certificate from the first byte: the greeting comes under TLS, a password is
    // taken, and STARTTLS is neither offered nor accepted.
    let implicit = sieve_node(&format!(
        "tls_cert = {:?}\ntls_key = {:?}\nallow_plaintext_auth = false\nimplicit_tls = true\n",
        certs.path().join("n1.pem").to_str().unwrap(),
        certs.path().join("n1.key").to_str().unwrap()
    ));
    let out = python(
        implicit.tmp.path(),
        &implicit.managesieve,
        "implicit",
        &[ca_pem.to_str().unwrap()],
    );
    assert!(out["tls_version"].as_str().unwrap().starts_with("TLS"), "{out}");
    let greeting = capabilities(&out["greeting"]);
    assert!(greeting.contains(&"SASL PLAIN LOGIN".to_string()), "{greeting:?}");
    assert!(!greeting.contains(&"STARTTLS".to_string()), "{greeting:?}");
    expect(&out["login"], "OK", None, "");
    expect(&out["starttls"], "NO", None, "");
    expect(&out["logout"], "OK", None, "");
}

#[test]
fn a_third_party_client_library_manages_scripts() {
    let n = sieve_node("");
    let out = python(n.tmp.path(), &n.managesieve, "sievelib", &[]);
    assert_eq!(out["connect"], true, "{out}");
    assert!(
        out["implementation"].as_str().unwrap().starts_with("mailmesh"),
        "{out}"
    );
    assert_eq!(out["sasl"], serde_json::json!(["PLAIN", "LOGIN"]));
    assert!(
        out["sieve"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("fileinto")),
        "{out}"
    );
    assert_eq!(out["havespace"], true);
    assert_eq!(out["put"], true);
    assert_eq!(out["put_bad"], false);
    assert!(out["put_bad_error"].as_str().unwrap().contains("line 1"), "{out}");
    assert_eq!(out["check"], true);
    assert_eq!(out["activate"], true);
    assert_eq!(out["list"], serde_json::json!(["rules", []]));
    assert!(out["get"].as_str().unwrap().contains("fileinto \"X\""), "{out}");
    assert_eq!(out["rename"], true);
    assert_eq!(out["delete_active"], false, "the active script stays");
    assert_eq!(out["deactivate"], true);
    assert_eq!(out["list_inactive"], serde_json::json!([null, ["filters"]]));
    assert_eq!(out["delete"], true);
    assert_eq!(out["list_empty"], serde_json::json!([null, []]));
    assert_eq!(out["login_mechanism"], true);
    assert_eq!(out["wrong_password"], false);
}

#[test]
fn failed_logins_delay_the_failing_address_only() {
    let n = sieve_node("");
    let out = python(n.tmp.path(), &n.managesieve, "delay", &[&n.metrics]);
    let value = |at: &str, name: &str| out[at][name].as_f64().unwrap();
    let (failed, delayed) = ("mailmesh_failed_logins_total", "mailmesh_delayed_logins_total");
    assert_eq!(value("start", failed), 0.0);
    expect(&out["first"], "NO", None, "authentication failed");
    assert_eq!(value("after_first", failed), 1.0);
    assert_eq!(
        value("after_first", delayed),
        0.0,
        "a first failure is answered at once"
    );
    expect(&out["second"], "NO", None, "authentication failed");
    assert_eq!(value("after_second", failed), 2.0);
    // The server counts an attempt as delayed once it has waited out the delay, before it checks
    // the password and answers: the second failure's answer came after the delay.
    assert_eq!(value("after_second", delayed), 1.0);
    // Another address logs in without waiting for the first address's delay.
    expect(&out["other"], "OK", None, "");
    assert_eq!(value("after_other", delayed), 1.0);
    assert_eq!(value("after_other", failed), 2.0);
}

#[test]
fn connections_over_the_limit_get_bye_and_the_others_are_served() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;

    let n = sieve_node("max_connections_per_address = 1\n");
    let first_line = |stream: &TcpStream| {
        stream.set_read_timeout(Some(support::DEADLINE)).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    };
    let held = TcpStream::connect(&n.managesieve).unwrap();
    assert!(first_line(&held).starts_with("\"IMPLEMENTATION\""));
    let refused = TcpStream::connect(&n.managesieve).unwrap();
    assert_eq!(
        first_line(&refused),
        "BYE \"too many connections; try again later\"\r\n"
    );
    // Once the first goes, a new connection is greeted again (the slot is freed when the server
    // sees the close, so this waits for it with a deadline).
    drop(held);
    support::cluster::eventually("a freed slot greets a new connection", || {
        let again = TcpStream::connect(&n.managesieve).unwrap();
        let line = first_line(&again);
        if line.starts_with("\"IMPLEMENTATION\"") {
            Ok(())
        } else {
            Err(line)
        }
    });
}
