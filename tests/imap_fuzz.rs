//! Fuzzing the whole IMAP command path of a real `mailmesh run`: a seeded generator (splitmix64,
//! no wall clock, so a seed is a replayable run) sends malformed and random command lines and
//! literals over raw sockets, one session and several at once: random bytes (non-UTF-8 too), bad
//! tags, unknown commands, known commands with random arguments, well-formed commands with odd
//! values (extreme sequence sets and partials, sections that do not exist, search keys nested a
//! thousand deep, patterns of many wildcards, odd names), commands in the wrong state,
//! lines over the limit, literals over the limit (synchronizing: refused unread; LITERAL+: read
//! and thrown away), absurd literal sizes, literals cut by a disconnect, lines cut by a
//! disconnect, IDLE ended by garbage, AUTHENTICATE answered with garbage; and good APPENDs among
//! them.
//!
//! Every command must get its answer within the deadline (a sentinel NOOP after each unit proves
//! the session still reads commands), every answer line must be untagged, a continuation or
//! `tag OK|NO|BAD`; what is malformed or in the wrong state gets NO or BAD (never OK), and a
//! closed connection must have said BYE first. After the run the node still runs, a good
//! session works, and INBOX holds exactly the messages whose APPEND was acknowledged, each at the
//! uid its APPENDUID named (nothing cut or refused was partly stored).

mod support;

use std::thread;

use support::imap_lines::{Answer, Conn};
use support::imap_node::ImapNode;

/// `[limits] max_message_bytes` of the node under test: small, so that a line over the limit
/// after a login is cheap to send. A logged-in session takes a command of this plus 64 KiB
/// (`session::COMMAND_ROOM`); before a login, 8 KiB (`MAX_MESSAGE_BEFORE_LOGIN`).
const MAX_MESSAGE: usize = 4096;
const LIMIT_BEFORE_LOGIN: usize = 8 * 1024;
const LIMIT_AFTER_LOGIN: usize = MAX_MESSAGE + 64 * 1024;

/// splitmix64: a tiny, fixed generator, so a seed means the same run with any crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `len` random bytes, any value.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `len` random bytes that keep a line one line: no CR or LF, and no `}` last (which
    /// could announce a literal). Non-ASCII and NUL bytes are in.
    fn line_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out: Vec<u8> = (0..len)
            .map(|_| match self.next() as u8 {
                b'\r' | b'\n' => b' ',
                b => b,
            })
            .collect();
        if out.last() == Some(&b'}') {
            out.pop();
        }
        out
    }

    /// A tag: usually valid, sometimes with bytes RFC 3501 does not allow in one.
    fn tag(&mut self) -> Vec<u8> {
        const ODD: &[&[u8]] = &[
            b"*",
            b"+",
            b"a+b",
            b"(x",
            b"\"q\"",
            b"a{1}",
            b"%",
            b"\\s",
            b"\xff\xfe",
        ];
        if self.below(5) == 0 {
            self.pick(ODD).to_vec()
        } else {
            format!("t{}", self.below(100_000)).into_bytes()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated,
    Selected,
}

/// A well-formed command, the states it belongs to and the state it leads to when answered OK.
struct Template {
    text: &'static str,
    states: &'static [State],
    then: Option<State>,
}

use State::{Authenticated as A, NotAuthenticated as N, Selected as S};

const ANY: &[State] = &[N, A, S];
const LOGGED_IN: &[State] = &[A, S];

/// Commands that neither delete nor expunge: every acknowledged APPEND must still be there at
/// the end. In a state not listed, each must be refused.
const TEMPLATES: &[Template] = &[
    Template {
        text: "LOGIN alice secret",
        states: &[N],
        then: Some(A),
    },
    Template {
        text: "LOGIN alice wrong",
        states: &[],
        then: None,
    },
    Template {
        text: "LOGIN {5}\r\nalice {6}\r\nsecret",
        states: &[N],
        then: Some(A),
    },
    Template {
        text: "SELECT INBOX",
        states: LOGGED_IN,
        then: Some(S),
    },
    Template {
        text: "EXAMINE INBOX",
        states: LOGGED_IN,
        then: Some(S),
    },
    Template {
        text: "SELECT Nope",
        states: &[],
        then: None,
    },
    Template {
        text: "UNSELECT",
        states: &[S],
        then: Some(A),
    },
    Template {
        text: "CLOSE",
        states: &[S],
        then: Some(A),
    },
    Template {
        text: "NOOP",
        states: ANY,
        then: None,
    },
    Template {
        text: "CAPABILITY",
        states: ANY,
        then: None,
    },
    Template {
        text: "ID NIL",
        states: ANY,
        then: None,
    },
    Template {
        text: "LIST \"\" *",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "LIST (SUBSCRIBED) \"\" * RETURN (STATUS (MESSAGES))",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "LSUB \"\" *",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "STATUS INBOX (MESSAGES UIDNEXT UNSEEN)",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "NAMESPACE",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "ENABLE CONDSTORE QRESYNC",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "CREATE Fuzz/Box",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "SUBSCRIBE Fuzz/Box",
        states: LOGGED_IN,
        then: None,
    },
    Template {
        text: "FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE)",
        states: &[S],
        then: None,
    },
    Template {
        text: "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
        states: &[S],
        then: None,
    },
    Template {
        text: "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>",
        states: &[S],
        then: None,
    },
    Template {
        text: "SEARCH OR SEEN SUBJECT fuzz",
        states: &[S],
        then: None,
    },
    Template {
        text: "UID SEARCH RETURN (MIN MAX COUNT) ALL",
        states: &[S],
        then: None,
    },
    Template {
        text: "STORE 1:* +FLAGS.SILENT (\\Seen $Fuzz)",
        states: &[S],
        then: None,
    },
    Template {
        text: "UID COPY 1:* Fuzz/Box",
        states: &[S],
        then: None,
    },
    Template {
        text: "CHECK",
        states: &[S],
        then: None,
    },
    Template {
        text: "DONE",
        states: &[],
        then: None,
    },
    Template {
        text: "STARTTLS",
        states: &[],
        then: None,
    },
    Template {
        text: "LOGOUT",
        states: ANY,
        then: Some(N),
    },
];

/// Command names a client may send, given random arguments; none of them changes the session's
/// state or removes a message.
const NAMES: &[&str] = &[
    "NOOP",
    "CAPABILITY",
    "LIST",
    "LSUB",
    "STATUS",
    "CREATE",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "FETCH",
    "UID FETCH",
    "SEARCH",
    "UID SEARCH",
    "STORE",
    "COPY",
    "UID COPY",
    "ENABLE",
    "ID",
    "NAMESPACE",
    "CHECK",
    "GETQUOTA",
    "XYZZY",
    "FROBNICATE",
    "",
];

struct Fuzzer {
    rng: Rng,
    seed: u64,
    address: String,
    conn: Conn,
    state: State,
    units: usize,
    /// `(uid, subject)` of each APPEND answered OK.
    acked: Vec<(u32, String)>,
    /// The unit and what was sent, for a failure's message.
    last: String,
    /// Untagged lines read while waiting for a continuation request.
    pending: Vec<String>,
    /// Units sent in each state (not authenticated, authenticated, selected): a run that never
    /// got past the login would prove little.
    per_state: [usize; 3],
}

impl Fuzzer {
    fn new(address: &str, seed: u64) -> Fuzzer {
        Fuzzer {
            rng: Rng(seed),
            seed,
            address: address.to_string(),
            conn: Conn::open(address),
            state: State::NotAuthenticated,
            units: 0,
            acked: Vec::new(),
            last: String::new(),
            pending: Vec::new(),
            per_state: [0; 3],
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {} unit {}: {what}\nsent: {}",
            self.seed, self.units, self.last
        )
    }

    fn reconnect(&mut self) {
        self.conn = Conn::open(&self.address);
        self.state = State::NotAuthenticated;
    }

    fn limit(&self) -> usize {
        match self.state {
            State::NotAuthenticated => LIMIT_BEFORE_LOGIN,
            _ => LIMIT_AFTER_LOGIN,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.last
            .push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
        // A failed send is judged by `finish`: the connection must have ended with a BYE.
        let _ = self.conn.send(bytes);
    }

    /// Lines up to a continuation request (true), or up to an answer that refuses the command
    /// first (false, the answer left to be read again). Untagged data before it is kept.
    fn continuation(&mut self) -> bool {
        loop {
            let line = match self.conn.line() {
                Ok(Some(line)) => line,
                Ok(None) => return false,
                Err(e) => self.fail(&e),
            };
            if line.starts_with('+') {
                return true;
            }
            if line.starts_with("* ") && !line.starts_with("* BAD") && !line.starts_with("* BYE") {
                self.pending.push(line);
                continue;
            }
            self.conn.buf.splice(0..0, format!("{line}\r\n").into_bytes());
            return false;
        }
    }

    /// Sends the sentinel NOOP behind the unit and reads every line up to its answer, which
    /// must be OK: the session still reads commands. Every line must be untagged, a
    /// continuation or `tag OK|NO|BAD`; a connection that ended must have said BYE.
    fn finish(&mut self) -> Answer {
        let sentinel = format!("z{}", self.units).into_bytes();
        self.last.push_str(" | sentinel");
        let _ = self.conn.send(&[&sentinel[..], b" NOOP\r\n"].concat());
        let mut answer = match self.conn.until_tagged(&sentinel) {
            Ok(answer) => answer,
            Err(e) => self.fail(&e),
        };
        answer.lines.splice(0..0, self.pending.drain(..));
        for line in &answer.lines {
            let well_formed = line.starts_with("* ")
                || line.starts_with('+')
                || line
                    .split_once(' ')
                    .is_some_and(|(_, rest)| ["OK", "NO", "BAD"].iter().any(|s| rest.starts_with(s)));
            if !well_formed {
                self.fail(&format!(
                    "answer line {line:?} is neither untagged nor tag OK/NO/BAD"
                ));
            }
        }
        if answer.closed {
            if !answer.said_bye() {
                self.fail(&format!("closed without BYE after {:?}", answer.lines));
            }
        } else if answer.status_of(&sentinel) != Some("OK") {
            self.fail(&format!("sentinel NOOP not answered OK: {:?}", answer.lines));
        }
        answer
    }

    /// One unit, then the sentinel; a new connection when the unit ended this one.
    fn step(&mut self) {
        self.units += 1;
        self.last.clear();
        self.per_state[self.state as usize] += 1;
        let open = match self.rng.below(100) {
            0..=9 => self.random_line(),
            10..=19 => self.named_garbage(),
            20..=34 => self.well_formed(),
            35..=59 => self.template(),
            60..=69 => self.append(),
            70..=77 => self.literal_over_the_limit(),
            78..=82 => self.line_over_the_limit(),
            83..=87 => self.random_literal(),
            88..=91 => self.idle(),
            92..=94 => self.authenticate(),
            _ => {
                self.cut();
                false
            }
        };
        if !open {
            self.reconnect();
        }
    }

    /// Sends `tag SP rest CRLF` and finishes the unit.
    fn command(&mut self, tag: &[u8], rest: &[u8]) -> Answer {
        self.send(&[tag, b" ", rest, b"\r\n"].concat());
        self.finish()
    }

    fn random_tag(&mut self) -> Vec<u8> {
        format!("t{}", self.rng.below(100_000)).into_bytes()
    }

    fn random_line(&mut self) -> bool {
        let len = 1 + self.rng.below(200);
        let line = self.rng.line_bytes(len);
        self.send(&[&line[..], b"\r\n"].concat());
        let answer = self.finish();
        // The tag is whatever the server makes of the first word: refused, by tag or untagged.
        let tag: Vec<u8> = line.split(|&b| b == b' ').next().unwrap_or_default().to_vec();
        let blank = line.iter().all(|&b| b == b' ');
        if !blank && !answer.refused(&tag) {
            self.fail(&format!("random bytes not refused: {:?}", answer.lines));
        }
        !answer.closed
    }

    /// A command built from the grammar's own tokens, so that it decodes and reaches the
    /// command's handler with odd values: extreme sequence sets and partial ranges, sections
    /// that do not exist, deep nesting, patterns of many wildcards, names of every kind. None
    /// removes or adds an INBOX message (no EXPUNGE, MOVE, `\Deleted`, COPY to INBOX).
    fn well_formed(&mut self) -> bool {
        const SETS: &[&str] = &[
            "1",
            "*",
            "1:*",
            "0",
            "4294967295",
            "4294967296",
            "1:4294967295",
            "2,4:7,*",
            "*:1",
            "5:3",
            "1,1,1,1",
            "$",
            "1:0",
        ];
        const ITEMS: &[&str] = &[
            "FLAGS",
            "UID",
            "ENVELOPE",
            "BODYSTRUCTURE",
            "BODY",
            "RFC822.SIZE",
            "INTERNALDATE",
            "MODSEQ",
            "EMAILID",
            "THREADID",
            "BODY.PEEK[]",
            "BODY.PEEK[1]",
            "BODY.PEEK[1.2.3.4.5.6.7.8]",
            "BODY.PEEK[0]",
            "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
            "BODY.PEEK[HEADER.FIELDS.NOT ()]",
            "BODY.PEEK[]<0.0>",
            "BODY.PEEK[]<4294967295.10>",
            "BODY.PEEK[TEXT]<5.4294967295>",
            "BINARY.PEEK[1]",
            "BINARY.SIZE[1]",
            "RFC822.HEADER",
            "BODY[1.MIME]",
            "BODY.PEEK[99999999]",
            "BODY.PEEK[2.HEADER]",
            "RFC822",
        ];
        const MACROS: &[&str] = &["FAST", "ALL", "FULL"];
        const MODIFIERS: &[&str] = &[
            "",
            " (CHANGEDSINCE 1)",
            " (CHANGEDSINCE 18446744073709551615)",
            " (VANISHED)",
            " (CHANGEDSINCE 1 VANISHED)",
            " (CHANGEDSINCE 0)",
        ];
        const KEYS: &[&str] = &[
            "ALL",
            "SEEN",
            "UNSEEN",
            "LARGER 4294967295",
            "SMALLER 0",
            "UID 1:*",
            "SINCE 1-Jan-1900",
            "BEFORE 31-Dec-9999",
            "HEADER Subject fuzz",
            "BODY x",
            "TEXT \"\"",
            "MODSEQ 1",
            "MODSEQ \"/flags/\\\\seen\" all 5",
            "KEYWORD $Fuzz",
            "NEW",
            "OLD",
            "RECENT",
            "SENTON 29-Feb-2024",
            "ON 30-Feb-2024",
            "1:*",
            "*",
            "FROM \"\"",
            "HEADER \"\" \"\"",
        ];
        const FLAGS: &[&str] = &[
            "\\Seen",
            "\\Flagged",
            "\\Answered",
            "\\Draft",
            "$Fuzz",
            "\\Recent",
            "\\*",
            "\\Bogus",
            "NIL",
        ];
        const NAMES: &[&str] = &[
            "Fuzz/Box",
            "Nope",
            "\"\"",
            "&AGE-",
            "&-",
            "a/../b",
            "a//b",
            "/lead",
            "trail/",
            "\"a\\\"b\"",
            "{3}\r\nabc",
            "%",
            "*",
            "Fuzz/Box/Deeper/Still/Deeper",
        ];
        let tag = self.random_tag();
        let uid = if self.rng.below(2) == 0 { "UID " } else { "" };
        let set = *self.rng.pick(SETS);
        let name = *self.rng.pick(NAMES);
        let command = match self.rng.below(9) {
            0 => {
                let items = if self.rng.below(4) == 0 {
                    self.rng.pick(MACROS).to_string()
                } else {
                    let n = 1 + self.rng.below(6);
                    let items: Vec<&str> = (0..n).map(|_| *self.rng.pick(ITEMS)).collect();
                    format!("({})", items.join(" "))
                };
                let modifier = *self.rng.pick(MODIFIERS);
                format!("{uid}FETCH {set} {items}{modifier}")
            }
            1 => {
                let depth = *self.rng.pick(&[1, 2, 8, 100, 1000]);
                let key = self.search_key(KEYS, depth);
                let returns =
                    *self
                        .rng
                        .pick(&["", "RETURN () ", "RETURN (MIN MAX COUNT ALL) ", "RETURN (SAVE) "]);
                let charset = *self
                    .rng
                    .pick(&["", "CHARSET UTF-8 ", "CHARSET KOI8-R ", "CHARSET \"\" "]);
                format!("{uid}SEARCH {returns}{charset}{key}")
            }
            2 => {
                let n = self.rng.below(4);
                let flags: Vec<&str> = (0..n).map(|_| *self.rng.pick(FLAGS)).collect();
                let how = *self
                    .rng
                    .pick(&["+FLAGS", "-FLAGS", "+FLAGS.SILENT", "-FLAGS.SILENT", "FLAGS"]);
                let unchanged = *self.rng.pick(&[
                    "",
                    "(UNCHANGEDSINCE 0) ",
                    "(UNCHANGEDSINCE 18446744073709551615) ",
                ]);
                format!("{uid}STORE {set} {unchanged}{how} ({})", flags.join(" "))
            }
            3 => format!("{uid}COPY {set} {name}"),
            4 => {
                let items = *self.rng.pick(&[
                    "(MESSAGES)",
                    "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT HIGHESTMODSEQ MAILBOXID)",
                    "()",
                    "(SIZE)",
                    "(BOGUS)",
                ]);
                format!("STATUS {name} {items}")
            }
            5 => {
                let stars = self.rng.below(24);
                let pattern: String = (0..stars).map(|i| if i % 2 == 0 { '*' } else { '%' }).collect();
                let pattern = *self.rng.pick(&[pattern.as_str(), "*", "%/%", "Fuzz/*x", "\"\""]);
                let pattern = pattern.to_string();
                let select = *self.rng.pick(&[
                    "",
                    "(SUBSCRIBED) ",
                    "(RECURSIVEMATCH) ",
                    "(SUBSCRIBED RECURSIVEMATCH) ",
                    "(SPECIAL-USE) ",
                ]);
                let returns = *self.rng.pick(&[
                    "",
                    " RETURN (CHILDREN)",
                    " RETURN (STATUS (MESSAGES UNSEEN))",
                    " RETURN (SUBSCRIBED SPECIAL-USE)",
                ]);
                format!("LIST {select}\"\" \"{pattern}\"{returns}")
            }
            6 => {
                let long = "x".repeat(*self.rng.pick(&[1, 200, 2000]));
                let name = *self.rng.pick(&[name, long.as_str()]);
                format!(
                    "{} {name}",
                    self.rng.pick(&["CREATE", "SUBSCRIBE", "UNSUBSCRIBE", "EXAMINE"])
                )
            }
            7 => format!(
                "ENABLE {}",
                self.rng.pick(&[
                    "CONDSTORE",
                    "QRESYNC",
                    "UTF8=ACCEPT",
                    "BOGUS",
                    "CONDSTORE QRESYNC IMAP4rev2"
                ])
            ),
            _ => format!(
                "ID {}",
                self.rng
                    .pick(&["NIL", "()", "(\"name\" \"fuzz\" \"version\" NIL)", "(\"a\")"])
            ),
        };
        // An EXAMINE leaves the session with INBOX no longer selected when it fails, or
        // another mailbox selected read-only when it works: either way not INBOX read-write.
        let examine = command.starts_with("EXAMINE");
        let answer = self.command(&tag, command.as_bytes());
        if answer.status_of(&tag).is_none() && !answer.refused(&tag) {
            self.fail(&format!("no status for {command:?}: {:?}", answer.lines));
        }
        if examine && self.state != State::NotAuthenticated {
            self.state = match answer.status_of(&tag) {
                Some("OK") => State::Selected,
                Some("NO") => State::Authenticated,
                _ => self.state,
            };
        }
        !answer.closed
    }

    /// A search key `depth` levels deep at most (NOT, OR and parenthesised lists).
    fn search_key(&mut self, keys: &[&str], depth: usize) -> String {
        if depth <= 1 {
            return self.rng.pick(keys).to_string();
        }
        match self.rng.below(4) {
            // A deep chain, built without recursion in the test.
            0 => format!("{}{}", "NOT ".repeat(depth), self.rng.pick(keys)),
            1 => format!(
                "{}{}{}",
                "(".repeat(depth),
                self.rng.pick(keys),
                ")".repeat(depth)
            ),
            2 => {
                let a = self.search_key(keys, depth.min(8) - 1);
                let b = self.search_key(keys, depth.min(8) - 1);
                format!("OR {a} {b}")
            }
            _ => self.rng.pick(keys).to_string(),
        }
    }

    fn named_garbage(&mut self) -> bool {
        let tag = self.rng.tag();
        let name = *self.rng.pick(NAMES);
        let len = 1 + self.rng.below(80);
        let rest = [name.as_bytes(), b" ", &self.rng.line_bytes(len)].concat();
        let answer = self.command(&tag, &rest);
        let odd_tag = !tag.starts_with(b"t");
        if answer.status_of(&tag).is_none() && !answer.refused(&tag) {
            self.fail(&format!("no status for a command: {:?}", answer.lines));
        }
        if odd_tag && !answer.refused(&tag) {
            self.fail(&format!("a bad tag not refused: {:?}", answer.lines));
        }
        !answer.closed
    }

    /// A template at random; one time in three, the one that leads on from where the session
    /// is (a login, a SELECT), so that every state gets its share of the run.
    fn template(&mut self) -> bool {
        let onward = match self.state {
            State::NotAuthenticated => "LOGIN alice secret",
            State::Authenticated => "SELECT INBOX",
            State::Selected => "NOOP",
        };
        let template = if self.rng.below(3) == 0 {
            TEMPLATES.iter().find(|t| t.text == onward).unwrap()
        } else {
            self.rng.pick(TEMPLATES)
        };
        let tag = self.rng.tag();
        let valid_tag = tag.starts_with(b"t");
        // A template with literals: each synchronizing one waits for the continuation.
        let mut pieces = template.text.split("\r\n");
        self.send(&[&tag[..], b" ", pieces.next().unwrap().as_bytes(), b"\r\n"].concat());
        for piece in pieces {
            if !self.continuation() {
                break;
            }
            self.send(format!("{piece}\r\n").as_bytes());
        }
        let answer = self.finish();
        let allowed = template.states.contains(&self.state);
        let must_refuse = !valid_tag || !allowed;
        if must_refuse && !answer.refused(&tag) {
            self.fail(&format!(
                "{:?} (tag {:?}) in state {:?} not refused: {:?}",
                template.text,
                String::from_utf8_lossy(&tag),
                self.state,
                answer.lines
            ));
        }
        if valid_tag && allowed {
            let ok = answer.status_of(&tag) == Some("OK");
            match template.then {
                Some(next) if ok => self.state = next,
                // A failed SELECT or EXAMINE leaves no mailbox selected (RFC 3501 6.3.1).
                Some(State::Selected) => self.state = State::Authenticated,
                _ => {}
            }
        }
        !answer.closed
    }

    fn append(&mut self) -> bool {
        let tag = self.random_tag();
        let subject = format!("fuzz-{}-{}", self.seed, self.units);
        let body = format!(
            "Subject: {subject}\r\n\r\n{}\r\n",
            "x".repeat(self.rng.below(200))
        );
        let synchronizing = self.rng.below(2) == 0;
        let plus = if synchronizing { "" } else { "+" };
        self.send(
            &[
                &tag[..],
                format!(" APPEND INBOX (\\Seen) {{{}{plus}}}\r\n", body.len()).as_bytes(),
            ]
            .concat(),
        );
        if synchronizing && !self.continuation() {
            self.fail("no continuation for a literal within the limit");
        }
        self.send(body.as_bytes());
        self.send(b"\r\n");
        let answer = self.finish();
        match (self.state, answer.status_of(&tag)) {
            (State::NotAuthenticated, Some("OK")) => self.fail("APPEND before a login answered OK"),
            (State::NotAuthenticated, _) => {}
            (_, Some("OK")) => {
                let uid = answer
                    .lines
                    .iter()
                    .find_map(|line| {
                        let code = line.split("[APPENDUID ").nth(1)?.split(']').next()?;
                        code.split(' ').nth(1)?.parse().ok()
                    })
                    .unwrap_or_else(|| self.fail(&format!("no APPENDUID in {:?}", answer.lines)));
                self.acked.push((uid, subject));
            }
            (_, other) => self.fail(&format!("a good APPEND answered {other:?}: {:?}", answer.lines)),
        }
        !answer.closed
    }

    /// A literal announced over the limit: synchronizing, refused before a byte is sent (the
    /// client sends none); LITERAL+, sent whole, read and thrown away, then refused.
    fn literal_over_the_limit(&mut self) -> bool {
        let tag = self.random_tag();
        let command = *self
            .rng
            .pick(&["APPEND INBOX", "LOGIN alice", "SEARCH TEXT", "CREATE"]);
        let limit = self.limit();
        if self.rng.below(3) == 0 {
            let size = self
                .rng
                .pick(&[
                    (limit + 1).to_string(),
                    u32::MAX.to_string(),
                    "18446744073709551616".to_string(),
                    "99999999999999999999999999".to_string(),
                ])
                .clone();
            let answer = self.command(&tag, format!("{command} {{{size}}}").as_bytes());
            if answer.lines.iter().any(|l| l.starts_with('+')) {
                self.fail(&format!(
                    "a continuation for a literal over the limit: {:?}",
                    answer.lines
                ));
            }
            if !answer.refused(&tag) {
                self.fail(&format!(
                    "a literal over the limit not refused: {:?}",
                    answer.lines
                ));
            }
            !answer.closed
        } else {
            let size = limit + 1 + self.rng.below(5000);
            let literal = self.rng.bytes(size);
            self.send(
                &[
                    &tag[..],
                    format!(" {command} {{{size}+}}\r\n").as_bytes(),
                    &literal,
                    b" tail\r\n",
                ]
                .concat(),
            );
            let answer = self.finish();
            if answer.status_of(&tag) != Some("BAD") {
                self.fail(&format!(
                    "a LITERAL+ over the limit not refused BAD: {:?}",
                    answer.lines
                ));
            }
            !answer.closed
        }
    }

    fn line_over_the_limit(&mut self) -> bool {
        let tag = self.random_tag();
        let len = self.limit() + 1 + self.rng.below(3000);
        let rest = [&b"LOGIN "[..], &self.rng.line_bytes(len)].concat();
        let answer = self.command(&tag, &rest);
        if !answer.refused(&tag) {
            self.fail(&format!("a line over the limit not refused: {:?}", answer.lines));
        }
        !answer.closed
    }

    /// A synchronizing literal of random bytes (CR, LF and all) inside a command, within the
    /// limit, and random bytes after it.
    fn random_literal(&mut self) -> bool {
        let tag = self.random_tag();
        let command = *self
            .rng
            .pick(&["SEARCH TEXT", "LOGIN", "STATUS", "LIST \"\"", "CREATE", "XYZZY"]);
        let content_len = self.rng.below(300);
        let content = self.rng.bytes(content_len);
        self.send(&[&tag[..], format!(" {command} {{{content_len}}}\r\n").as_bytes()].concat());
        if !self.continuation() {
            self.fail("no continuation for a literal within the limit");
        }
        let tail = self.rng.line_bytes(20);
        self.send(&[&content[..], &tail, b"\r\n"].concat());
        let answer = self.finish();
        if answer.status_of(&tag).is_none() && !answer.refused(&tag) {
            self.fail(&format!(
                "no status for a command with a literal: {:?}",
                answer.lines
            ));
        }
        !answer.closed
    }

    /// IDLE (refused before a login), ended by DONE (OK) or by anything else (BAD).
    fn idle(&mut self) -> bool {
        let tag = self.random_tag();
        self.send(&[&tag[..], b" IDLE\r\n"].concat());
        let idling = self.continuation();
        if idling == (self.state == State::NotAuthenticated) {
            self.fail(&format!(
                "IDLE {} in state {:?}",
                if idling { "accepted" } else { "refused" },
                self.state
            ));
        }
        let done = self.rng.below(2) == 0;
        if idling {
            let len = 1 + self.rng.below(30);
            let end = if done {
                b"DONE".to_vec()
            } else {
                self.rng.line_bytes(len)
            };
            self.send(&[&end[..], b"\r\n"].concat());
        }
        let answer = self.finish();
        let expected = if !idling || !done { "BAD" } else { "OK" };
        if answer.status_of(&tag) != Some(expected) && !answer.closed {
            self.fail(&format!("IDLE answered {:?}, not {expected}", answer.lines));
        }
        !answer.closed
    }

    /// AUTHENTICATE PLAIN answered with garbage: the exchange ends NO or BAD.
    fn authenticate(&mut self) -> bool {
        let tag = self.random_tag();
        self.send(&[&tag[..], b" AUTHENTICATE PLAIN\r\n"].concat());
        if self.continuation() {
            let len = self.rng.below(60);
            let garbage = self.rng.line_bytes(len);
            self.send(&[&garbage[..], b"\r\n"].concat());
        }
        let answer = self.finish();
        if !answer.refused(&tag) {
            self.fail(&format!(
                "AUTHENTICATE with garbage not refused: {:?}",
                answer.lines
            ));
        }
        !answer.closed
    }

    /// The client goes away in the middle of a line, of a literal or of an APPEND.
    fn cut(&mut self) {
        let tag = format!("t{}", self.rng.below(100_000)).into_bytes();
        let mut bytes = tag;
        match self.rng.below(3) {
            0 => bytes.extend_from_slice(b" LOGIN alice sec"),
            1 => {
                bytes.extend_from_slice(b" APPEND INBOX {200+}\r\nSubject: cut\r\n\r\nhalf a mess");
            }
            _ => {
                bytes.extend_from_slice(format!(" APPEND INBOX {{{}+}}\r\n", u32::MAX).as_bytes());
                let len = self.rng.below(3000);
                bytes.extend(self.rng.bytes(len));
            }
        }
        self.send(&bytes);
        let _ = self.conn.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Runs `units` units of the generator seeded `seed` against `address`; returns the appends
/// acknowledged.
fn fuzz(address: &str, seed: u64, units: usize) -> Vec<(u32, String)> {
    let mut fuzzer = Fuzzer::new(address, seed);
    for _ in 0..units {
        fuzzer.step();
    }
    assert!(
        fuzzer.per_state.iter().all(|&n| n >= units / 20),
        "seed {seed}: units per state {:?}",
        fuzzer.per_state
    );
    fuzzer.acked
}

/// A good session after the fuzzing: LOGIN, SELECT, UID FETCH of every message's subject.
fn good_session(address: &str) -> Vec<String> {
    let mut conn = Conn::open(address);
    let mut lines = Vec::new();
    for (tag, command) in [
        ("g1", "LOGIN alice secret"),
        ("g2", "SELECT INBOX"),
        ("g3", "UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
        ("g4", "LOGOUT"),
    ] {
        assert!(conn.send(format!("{tag} {command}\r\n").as_bytes()));
        let answer = conn.until_tagged(tag.as_bytes()).unwrap();
        assert_eq!(
            answer.status_of(tag.as_bytes()),
            Some("OK"),
            "{command}: {:?}",
            answer.lines
        );
        lines.extend(answer.lines);
    }
    lines
}

/// The acknowledged appends are all in INBOX at their uids, and nothing else is.
fn assert_store_holds(lines: &[String], acked: &[(u32, String)]) {
    let exists = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("* ")?
                .strip_suffix(" EXISTS")?
                .parse::<usize>()
                .ok()
        })
        .expect("an EXISTS line");
    assert_eq!(exists, acked.len(), "INBOX holds only acknowledged appends");
    for (uid, subject) in acked {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("UID {uid} ")) && l.contains(&format!("Subject: {subject}\r\n"))),
            "uid {uid} ({subject}) missing"
        );
    }
}

fn fuzz_node() -> ImapNode {
    ImapNode::start(
        "listen = \"127.0.0.1:0\"",
        &format!("[limits]\nmax_message_bytes = {MAX_MESSAGE}\n"),
    )
}

#[test]
fn one_session_of_malformed_and_random_input_gets_answers_and_stores_only_what_it_acknowledged() {
    let mut n = fuzz_node();
    let address = n.imap(1);
    let mut acked = Vec::new();
    for seed in 1..=4 {
        acked.extend(fuzz(&address, seed, 500));
    }
    assert!(n.node.is_running(), "the node exited");
    assert!(!acked.is_empty());
    assert_store_holds(&good_session(&address), &acked);
}

#[test]
fn several_sessions_fuzzed_at_once_leave_the_node_serving_and_every_acknowledged_message_stored() {
    let mut n = fuzz_node();
    let address = n.imap(1);
    let runs: Vec<_> = (100..106u64)
        .map(|seed| {
            let address = address.clone();
            thread::spawn(move || fuzz(&address, seed, 300))
        })
        .collect();
    let acked: Vec<(u32, String)> = runs.into_iter().flat_map(|run| run.join().unwrap()).collect();
    assert!(n.node.is_running(), "the node exited");
    assert_store_holds(&good_session(&address), &acked);
}
