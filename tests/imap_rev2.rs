//! IMAP4rev2 (RFC 9051) against a real `mailmesh run`, with exact answers: the capability, what
//! `ENABLE IMAP4rev2` changes (SELECT without RECENT and UNSEEN but with a LIST of the mailbox,
//! SEARCH answered as ESEARCH) and what it leaves as in rev1 (the response codes RFC 5530 gave
//! rev1 already). The same commands on a session that did not enable it answer as before.

mod support;

use support::imap_lines::{Answer, Conn};
use support::imap_node::ImapNode;

/// Sends `command` as tag `tag` and reads its answer.
fn ask(conn: &mut Conn, tag: &str, command: &str) -> Answer {
    assert!(conn.send(format!("{tag} {command}\r\n").as_bytes()));
    conn.until_tagged(tag.as_bytes()).unwrap()
}

/// A logged-in connection as alice.
fn login(address: &str) -> Conn {
    let mut conn = Conn::open(address);
    let answer = ask(&mut conn, "l", "LOGIN alice secret");
    assert_eq!(answer.status_of(b"l"), Some("OK"), "{:?}", answer.lines);
    conn
}

/// Appends a small message to `mailbox` with LITERAL+.
fn append(conn: &mut Conn, mailbox: &str, subject: &str) {
    let message = format!("From: a@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n");
    let command = format!("APPEND {mailbox} {{{}+}}\r\n{message}", message.len());
    let answer = ask(conn, "p", &command);
    assert_eq!(answer.status_of(b"p"), Some("OK"), "{:?}", answer.lines);
}

/// The lines of a SELECT answer whose values this test cannot know (UIDVALIDITY, MAILBOXID,
/// HIGHESTMODSEQ, UIDNEXT), with the value cut off after the code's name.
fn shapes(answer: &Answer) -> Vec<String> {
    answer
        .lines
        .iter()
        .map(|l| {
            for code in ["UIDVALIDITY", "UIDNEXT", "MAILBOXID", "HIGHESTMODSEQ"] {
                if let Some(at) = l.find(&format!("[{code} ")) {
                    return format!("{}[{code} ...", &l[..at]);
                }
            }
            l.clone()
        })
        .collect()
}

#[test]
fn imap4rev2_is_advertised_enabled_and_changes_select_and_search() {
    let mut n = ImapNode::start("listen = \"127.0.0.1:0\"", "");
    let address = n.imap(1);

    let mut rev1 = login(&address);
    let caps = ask(&mut rev1, "c", "CAPABILITY");
    assert!(
        caps.lines[0]
            .to_ascii_uppercase()
            .starts_with("* CAPABILITY IMAP4REV1 IMAP4REV2 "),
        "{:?}",
        caps.lines
    );
    append(&mut rev1, "INBOX", "one");
    append(&mut rev1, "INBOX", "two");
    append(&mut rev1, "INBOX", "three");
    assert_eq!(
        ask(&mut rev1, "k", "CREATE Work/Sub").lines,
        ["k OK CREATE completed"]
    );

    let mut rev2 = login(&address);
    assert_eq!(
        ask(&mut rev2, "e", "ENABLE IMAP4rev2").lines,
        ["* ENABLED IMAP4rev2", "e OK ENABLE completed"]
    );

    // RFC 9051 6.3.2: FLAGS, EXISTS, LIST; no RECENT and no [UNSEEN n].
    let selected = ask(&mut rev2, "s", "SELECT INBOX");
    assert_eq!(
        shapes(&selected),
        [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
            "* 3 EXISTS",
            "* LIST () \"/\" INBOX",
            "* OK [UIDVALIDITY ...",
            "* OK [UIDNEXT ...",
            "* OK [HIGHESTMODSEQ ...",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] mailbox state",
            "* OK [MAILBOXID ...",
            "s OK [READ-WRITE] SELECT completed",
        ]
    );
    // The same SELECT in rev1 keeps RECENT and UNSEEN.
    let selected = ask(&mut rev1, "s", "SELECT INBOX");
    assert_eq!(
        shapes(&selected),
        [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
            "* 3 EXISTS",
            "* 0 RECENT",
            "* OK [UNSEEN 1] mailbox state",
            "* OK [UIDVALIDITY ...",
            "* OK [UIDNEXT ...",
            "* OK [HIGHESTMODSEQ ...",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] mailbox state",
            "* OK [MAILBOXID ...",
            "s OK [READ-WRITE] SELECT completed",
        ]
    );

    // RFC 9051 6.4.4: SEARCH answers ESEARCH, as if with RETURN (ALL); nothing found, no ALL.
    assert_eq!(
        ask(&mut rev2, "f1", "SEARCH ALL").lines,
        ["* ESEARCH (TAG \"f1\") ALL 1:3", "f1 OK SEARCH completed"]
    );
    assert_eq!(
        ask(&mut rev2, "f2", "SEARCH SUBJECT two").lines,
        ["* ESEARCH (TAG \"f2\") ALL 2", "f2 OK SEARCH completed"]
    );
    assert_eq!(
        ask(&mut rev2, "f3", "UID SEARCH SUBJECT nowhere").lines,
        ["* ESEARCH (TAG \"f3\") UID", "f3 OK UID SEARCH completed"]
    );
    assert_eq!(
        ask(&mut rev2, "f4", "SEARCH RETURN (COUNT) ALL").lines,
        ["* ESEARCH (TAG \"f4\") COUNT 3", "f4 OK SEARCH completed"]
    );
    assert_eq!(
        ask(&mut rev1, "f1", "SEARCH ALL").lines,
        ["* SEARCH 1 2 3", "f1 OK SEARCH completed"]
    );

    // Response codes: the same in both (RFC 5530's codes are rev1's too).
    for conn in [&mut rev1, &mut rev2] {
        let missing = ask(conn, "m", "SELECT Nowhere");
        assert!(
            missing.lines.last().unwrap().starts_with("m NO [NONEXISTENT] "),
            "{:?}",
            missing.lines
        );
        let twice = ask(conn, "d", "CREATE Work");
        assert!(
            twice.lines.last().unwrap().starts_with("d NO [ALREADYEXISTS] "),
            "{:?}",
            twice.lines
        );
        // A failed SELECT left the session unselected: back to INBOX for the next round.
        assert_eq!(ask(conn, "b", "EXAMINE INBOX").status_of(b"b"), Some("OK"));
    }

    // LIST is the same in both: child information always, \NonExistent for a subscribed name
    // with no mailbox (RFC 9051 6.3.9's table).
    assert_eq!(ask(&mut rev2, "u", "SUBSCRIBE Gone").status_of(b"u"), Some("OK"));
    for conn in [&mut rev1, &mut rev2] {
        assert_eq!(
            ask(conn, "t", "LIST \"\" Work*").lines,
            [
                "* LIST (\\HasChildren) \"/\" Work",
                "* LIST (\\HasNoChildren) \"/\" Work/Sub",
                "t OK LIST completed",
            ]
        );
        assert_eq!(
            ask(conn, "v", "LIST (SUBSCRIBED) \"\" Gone").lines,
            [
                "* LIST (\\NonExistent \\HasNoChildren \\Subscribed) \"/\" Gone",
                "v OK LIST completed",
            ]
        );
    }
    assert!(n.node.is_running());
}
