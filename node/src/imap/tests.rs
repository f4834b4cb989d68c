//! The sans-IO core: the machine's literal policy and bounds, the LIST wildcards, arbitrary
//! bytes on the command path, and command-shaped lines of IMAP tokens and literals (the
//! in-process half of the fuzzing; tests/imap_fuzz.rs sends such input to a real node).

use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::response::{Code, StatusKind};
use proptest::prelude::*;

use super::protocol::{encode, other_code, status, Event, Expect, Machine};
use super::session::list_matches;

fn events(machine: &mut Machine) -> Vec<Event> {
    std::iter::from_fn(|| machine.next_event()).collect()
}

fn wire(event: &Event) -> String {
    match event {
        Event::Refused(response) => {
            let mut out = Vec::new();
            encode(response, &mut out);
            String::from_utf8(out).unwrap()
        }
        other => format!("{other:?}"),
    }
}

#[test]
fn a_command_split_across_reads_and_pipelined_commands_decode_in_order() {
    let mut machine = Machine::new(1024);
    machine.feed(b"a1 NO");
    assert!(events(&mut machine).is_empty(), "half a command is not one");
    machine.feed(b"OP\r\na2 CAPABILITY\r\na3 LOGIN alice \"se cret\"\r\n");
    let got = events(&mut machine);
    assert_eq!(got.len(), 3, "{got:?}");
    match &got[0] {
        Event::Command(c) => assert_eq!((c.tag.as_ref(), &c.body), ("a1", &CommandBody::Noop)),
        other => panic!("{other:?}"),
    }
    match &got[2] {
        Event::Command(c) => match &c.body {
            CommandBody::Login { username, password } => {
                assert_eq!(username.as_ref(), b"alice");
                assert_eq!(password.declassify().as_ref(), b"se cret");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_synchronizing_literal_waits_for_the_continuation_and_one_over_the_limit_is_refused_unread() {
    let mut machine = Machine::new(64);
    machine.feed(b"a1 LOGIN {5}\r\n");
    let got = events(&mut machine);
    assert!(matches!(got.as_slice(), [Event::ContinueLiteral]), "{got:?}");
    machine.feed(b"alice x\r\n");
    let got = events(&mut machine);
    assert!(
        matches!(&got[..], [Event::Command(c)] if matches!(c.body, CommandBody::Login { .. })),
        "{got:?}"
    );

    // Over the limit: refused at once; the client sends nothing of it, and the next line is a
    // new command.
    machine.feed(b"a2 LOGIN {100}\r\na3 NOOP\r\n");
    let got = events(&mut machine);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(wire(&got[0]).starts_with("a2 BAD [TOOBIG]"), "{}", wire(&got[0]));
    assert!(
        matches!(&got[1], Event::Command(c) if c.tag.as_ref() == "a3"),
        "{got:?}"
    );
}

#[test]
fn a_non_synchronizing_literal_over_the_limit_is_read_thrown_away_and_refused() {
    let mut machine = Machine::new(64);
    let mut input = b"a1 LOGIN {200+}\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 200));
    input.extend_from_slice(b" pw\r\na2 NOOP\r\n");
    let mut got = Vec::new();
    for chunk in input.chunks(7) {
        machine.feed(chunk);
        got.extend(events(&mut machine));
        assert!(machine.held() <= 64, "held {} bytes", machine.held());
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(wire(&got[0]).starts_with("a1 BAD [TOOBIG]"), "{}", wire(&got[0]));
    assert!(
        matches!(&got[1], Event::Command(c) if c.tag.as_ref() == "a2"),
        "{got:?}"
    );
}

#[test]
fn malformed_and_overlong_lines_are_refused_with_their_tag() {
    let mut machine = Machine::new(64);
    machine.feed(b"a1 FROB\r\n\r\nzzz\r\n");
    machine.feed(&[b'y'; 200]);
    machine.feed(b"\r\na4 NOOP\r\n");
    let got: Vec<String> = events(&mut machine).iter().map(wire).collect();
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got[0].starts_with("a1 BAD"), "{got:?}");
    assert!(got[1].starts_with("* BAD"), "an empty line has no tag: {got:?}");
    assert!(got[2].starts_with("* BAD"), "{got:?}");
    assert!(got[3].starts_with("* BAD [TOOBIG]"), "{got:?}");
    assert!(got[4].contains("a4"), "{got:?}");
}

#[test]
fn a_new_limit_takes_over_without_losing_pipelined_input() {
    let mut machine = Machine::new(64);
    machine.feed(b"a1 NOOP\r\na2 NOOP\r\n");
    let first = machine.next_event();
    assert!(matches!(&first, Some(Event::Command(c)) if c.tag.as_ref() == "a1"));
    // As after a login: a larger limit, while a2 still waits unread.
    machine.set_max_message(1024);
    let got = events(&mut machine);
    assert!(
        matches!(&got[..], [Event::Command(c)] if c.tag.as_ref() == "a2"),
        "{got:?}"
    );
    // A 200-byte command now fits (it is still an unknown one: BAD, not TOOBIG).
    machine.feed(format!("a3 {}\r\n", "X".repeat(200)).as_bytes());
    let got: Vec<String> = events(&mut machine).iter().map(wire).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("a3 BAD") && !got[0].contains("TOOBIG"),
        "{got:?}"
    );
    // A literal of 500 bytes is accepted with a continuation request.
    machine.feed(b"a4 LOGIN {500}\r\n");
    assert!(matches!(
        events(&mut machine).as_slice(),
        [Event::ContinueLiteral]
    ));
}

#[test]
fn authenticate_lines_decode_as_sasl_data_and_star_cancels() {
    let mut machine = Machine::new(1024);
    machine.expect(Expect::AuthenticateData);
    machine.feed(b"AGFsaWNlAHNlY3JldA==\r\n");
    match events(&mut machine).as_slice() {
        [Event::AuthenticateData(imap_codec::imap_types::auth::AuthenticateData::Continue(data))] => {
            assert_eq!(data.declassify().as_ref(), b"\0alice\0secret")
        }
        other => panic!("{other:?}"),
    }
    machine.feed(b"*\r\n");
    assert!(matches!(
        events(&mut machine).as_slice(),
        [Event::AuthenticateData(
            imap_codec::imap_types::auth::AuthenticateData::Cancel
        )]
    ));
}

#[test]
fn idle_ends_with_done_in_any_case_and_anything_else_ends_it_as_bad() {
    let mut machine = Machine::new(1024);
    machine.expect(Expect::IdleDone);
    machine.feed(b"done\r\n");
    assert!(matches!(events(&mut machine).as_slice(), [Event::IdleDone(true)]));
    machine.feed(b"DONE\r\nDONE now\r\n");
    assert!(matches!(
        events(&mut machine).as_slice(),
        [Event::IdleDone(true), Event::IdleDone(false)]
    ));
    machine.expect(Expect::Command);
    machine.feed(b"a1 NOOP\r\n");
    assert!(matches!(events(&mut machine).as_slice(), [Event::Command(_)]));
}

#[test]
fn input_received_before_starttls_is_discarded() {
    let mut machine = Machine::new(1024);
    machine.feed(b"a1 STARTTLS\r\na2 LOGIN injected x\r\n");
    let first = machine.next_event();
    assert!(matches!(&first, Some(Event::Command(c)) if c.body == CommandBody::StartTLS));
    machine.discard_input();
    assert!(events(&mut machine).is_empty());
}

#[test]
fn responses_are_encoded_by_the_codec() {
    let mut out = Vec::new();
    let tag = imap_codec::imap_types::core::Tag::try_from("a1").unwrap();
    encode(
        &status(
            Some(tag),
            StatusKind::No,
            Some(other_code("AUTHENTICATIONFAILED")),
            "no".into(),
        ),
        &mut out,
    );
    encode(
        &status(None, StatusKind::Ok, Some(Code::ReadOnly), "bad\r\ntext".into()),
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "a1 NO [AUTHENTICATIONFAILED] no\r\n* OK [READ-ONLY] (no text)\r\n"
    );
}

#[test]
fn list_wildcards_follow_rfc_3501() {
    assert!(list_matches("*", "Work/Reports"));
    assert!(list_matches("%", "Work"));
    assert!(!list_matches("%", "Work/Reports"));
    assert!(list_matches("Work/%", "Work/Reports"));
    assert!(!list_matches("Work/%", "Work"));
    assert!(list_matches("W*s", "Work/Reports"));
    assert!(list_matches("inbox", "INBOX"));
    assert!(!list_matches("work", "Work"), "only INBOX is case-insensitive");
    assert!(list_matches("", ""));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes in arbitrary chunks: no panic, every call returns, and the machine never
    /// holds more than its limit of a message.
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
        auth in any::<bool>(),
    ) {
        let mut machine = Machine::new(256);
        if auth {
            machine.expect(Expect::AuthenticateData);
        }
        for chunk in &chunks {
            machine.feed(chunk);
            // Each event consumes input, so this ends.
            let mut count = 0;
            while machine.next_event().is_some() {
                count += 1;
                prop_assert!(count <= chunk.len() + 1);
            }
            prop_assert!(machine.held() <= 256);
        }
    }

    /// Arbitrary printable command lines: decoded or refused, never dropped silently; the
    /// machine answers each complete line.
    #[test]
    fn every_complete_line_gets_an_event(
        lines in proptest::collection::vec("[ -~&&[^{}]]{0,80}", 1..10),
    ) {
        let mut machine = Machine::new(256);
        for line in &lines {
            machine.feed(line.as_bytes());
            machine.feed(b"\r\n");
        }
        let got = events(&mut machine);
        prop_assert_eq!(got.len(), lines.len());
    }
}

/// One argument of a command-shaped line: the IMAP tokens a client sends, valid or slightly
/// wrong (bad escapes, unbalanced parentheses, stray brackets), and literals whose bytes may be
/// anything, CR and LF included.
fn argument() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[A-Za-z0-9$\\\\.:*%-]{1,12}".prop_map(String::into_bytes),
        "[0-9]{1,3}(:[0-9*]{1,3})?(,[0-9]{1,3})?".prop_map(String::into_bytes),
        "\"([ -!#-\\[\\]-~]|\\\\\"|\\\\\\\\|\\\\x){0,12}\"".prop_map(String::into_bytes),
        proptest::collection::vec("[A-Za-z0-9\\\\]{1,8}", 0..4).prop_map(|atoms| format!(
            "({})",
            atoms.join(" ")
        )
        .into_bytes()),
        "(BODY|BODY\\.PEEK|BINARY)\\[[0-9.A-Z ()]{0,16}\\](<[0-9]{1,3}(\\.[0-9]{1,3})?>)?"
            .prop_map(String::into_bytes),
        "[()\\[\\]<>]{1,3}".prop_map(String::into_bytes),
        (proptest::collection::vec(any::<u8>(), 0..40), any::<bool>()).prop_map(|(bytes, plus)| {
            let mut out = format!("{{{}{}}}\r\n", bytes.len(), if plus { "+" } else { "" }).into_bytes();
            out.extend(bytes);
            out
        }),
    ]
}

const COMMAND_NAMES: &[&str] = &[
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "STARTTLS",
    "LOGIN",
    "AUTHENTICATE",
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "STATUS",
    "APPEND",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
    "UID",
    "IDLE",
    "ENABLE",
    "ID",
    "NAMESPACE",
    "DONE",
    "XYZZY",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Command-shaped lines (a tag, a command name in any case, up to eight arguments of IMAP
    /// tokens and literals) fed whole, pipelined: no panic, and each line ends in exactly one
    /// command, extended command or refusal (synchronizing literals within the limit each add
    /// a continuation request first); a refusal encodes as one status line.
    #[test]
    fn command_shaped_lines_each_get_one_answer(
        lines in proptest::collection::vec(
            (
                "[a-zA-Z0-9]{1,6}|\\*|\\+|",
                proptest::sample::select(COMMAND_NAMES),
                any::<bool>(),
                proptest::collection::vec(argument(), 0..8),
            ),
            1..6,
        ),
    ) {
        let mut machine = Machine::new(4096);
        let mut wire_bytes = Vec::new();
        let mut continuations = 0;
        for (tag, name, lower, arguments) in &lines {
            let name = if *lower { name.to_ascii_lowercase() } else { name.to_string() };
            let mut line = format!("{tag} {name}").into_bytes();
            for argument in arguments {
                line.push(b' ');
                if argument.ends_with(b"\r\n") || argument.windows(3).any(|w| w == b"}\r\n") {
                    continuations += usize::from(!argument.windows(3).any(|w| w == b"+}\r"));
                }
                line.extend_from_slice(argument);
            }
            line.extend_from_slice(b"\r\n");
            wire_bytes.extend(line);
        }
        machine.feed(&wire_bytes);
        let got = events(&mut machine);
        let answers = got.iter().filter(|e| !matches!(e, Event::ContinueLiteral)).count();
        let continued = got.iter().filter(|e| matches!(e, Event::ContinueLiteral)).count();
        prop_assert_eq!(answers, lines.len(), "{:?}", got.iter().map(wire).collect::<Vec<_>>());
        prop_assert_eq!(continued, continuations);
        for event in &got {
            if let Event::Refused(_) = event {
                let text = wire(event);
                prop_assert!(text.ends_with("\r\n") && text.matches("\r\n").count() == 1, "{}", text);
            }
        }
    }
}

/// A proxied login passes on what the client pipelined behind it: the machine says how much
/// of the last bytes fed that is, whatever came before (a command split across reads, a
/// literal, a refused one) and however much of it is a partial command.
#[test]
fn the_bytes_behind_a_handed_out_command_are_counted() {
    let mut machine = Machine::new(64);
    machine.feed(b"a1 NOOP\r\na2 LOG");
    assert!(matches!(machine.next_event(), Some(Event::Command(_))));
    assert_eq!(machine.unhandled(), b"a2 LOG".len(), "a2 LOG waits");
    assert!(machine.next_event().is_none());
    let tail = b"IN alice pw\r\na3 SELECT INBOX\r\na4 FETCH 1 (FLAGS";
    machine.feed(tail);
    assert!(matches!(machine.next_event(), Some(Event::Command(_))));
    assert_eq!(machine.unhandled(), b"a3 SELECT INBOX\r\na4 FETCH 1 (FLAGS".len());
    assert!(matches!(machine.next_event(), Some(Event::Command(_))));
    assert_eq!(machine.unhandled(), b"a4 FETCH 1 (FLAGS".len());
    assert!(machine.next_event().is_none());

    // A literal counts whole, also past the limit; a synchronizing one over it is skipped.
    let mut machine = Machine::new(64);
    machine.feed(b"b1 LOGIN {5+}\r\nalice pw\r\nb2 NOOP\r\n");
    assert!(matches!(machine.next_event(), Some(Event::Command(_))));
    assert_eq!(machine.unhandled(), b"b2 NOOP\r\n".len());
    assert!(matches!(machine.next_event(), Some(Event::Command(_))));
    assert_eq!(machine.unhandled(), 0);
    machine.feed(b"b3 APPEND x {100}\r\nb4 NOOP\r\n");
    assert!(matches!(machine.next_event(), Some(Event::Refused(_))));
    assert_eq!(machine.unhandled(), b"b4 NOOP\r\n".len());
    let mut machine = Machine::new(64);
    machine.feed(b"c1 APPEND x {100+}\r\n");
    machine.feed(&[b'x'; 100]);
    machine.feed(b"\r\nc2 LOGIN alice pw\r\nc3 NOOP\r\n");
    assert!(matches!(machine.next_event(), Some(Event::Refused(_))));
    assert!(matches!(machine.next_event(), Some(Event::Command(_))));
    assert_eq!(machine.unhandled(), b"c3 NOOP\r\n".len());
}
