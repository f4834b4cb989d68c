//! The ManageSieve parser and encoder on their own: RFC 5804's examples line by line (the
//! client's lines parsed, the server's lines encoded), bounds, and arbitrary bytes.

use proptest::prelude::*;

use super::protocol::{
    encode_string, parse_command, parse_sasl_response, Capabilities, Code, Command, Machine, Parsed,
    Response, SaslResponse, Token, MAX_LINE, MAX_QUOTED,
};

const LIMIT: usize = 4096;

/// Every line `input` holds, parsed to a command (or the answer a bad one gets).
fn commands(input: &[u8]) -> Vec<Result<Command, Response>> {
    let mut machine = Machine::new(LIMIT);
    machine.feed(input);
    let mut out = Vec::new();
    while let Some(parsed) = machine.next_line() {
        out.push(match parsed {
            Parsed::Line(tokens) => parse_command(tokens),
            Parsed::Invalid(response) => Err(response),
        });
    }
    out
}

fn one(input: &[u8]) -> Command {
    let mut all = commands(input);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0).unwrap()
}

fn encoded(response: Response) -> String {
    let mut out = Vec::new();
    response.encode(&mut out);
    String::from_utf8(out).unwrap()
}

fn s(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// RFC 5804 2.1: AUTHENTICATE with and without an initial response, a continuation string, and
/// the cancelling "*".
#[test]
fn rfc_authenticate_examples() {
    assert_eq!(
        one(b"AUTHENTICATE \"PLAIN\" \"QJIrweAPyo6Q1T9xu\"\r\n"),
        Command::Authenticate {
            mechanism: "PLAIN".into(),
            initial: Some(s("QJIrweAPyo6Q1T9xu")),
        }
    );
    assert_eq!(
        one(b"Authenticate \"GSSAPI\" {12+}\r\nYIIE1wYJKoZI\r\n"),
        Command::Authenticate {
            mechanism: "GSSAPI".into(),
            initial: Some(s("YIIE1wYJKoZI")),
        }
    );
    assert_eq!(
        one(b"AUTHENTICATE \"plain\"\r\n"),
        Command::Authenticate {
            mechanism: "PLAIN".into(),
            initial: None,
        }
    );
    // The client's continuation lines: a literal (here the RFC's empty `{0+}`), a quoted string,
    // and the cancel.
    let mut machine = Machine::new(LIMIT);
    machine.feed(b"{0+}\r\n\r\n\"AGpvZQBqb2VwYXNzd29yZA==\"\r\n\"*\"\r\n");
    let mut responses = Vec::new();
    while let Some(Parsed::Line(tokens)) = machine.next_line() {
        responses.push(parse_sasl_response(tokens).unwrap());
    }
    assert_eq!(
        responses,
        vec![
            SaslResponse::Data(Vec::new()),
            SaslResponse::Data(s("AGpvZQBqb2VwYXNzd29yZA==")),
            SaslResponse::Cancel
        ]
    );
    // RFC 5804 2.1's failure: `NO "Error authenticating"`; the empty challenge: `""`.
    assert_eq!(
        encoded(Response::no("Error authenticating")),
        "NO \"Error authenticating\"\r\n"
    );
    let mut challenge = Vec::new();
    encode_string(b"", &mut challenge);
    assert_eq!(challenge, b"\"\"");
}

/// RFC 5804 2.2 (StartTls, Logout) and 1.7's capability response.
#[test]
fn rfc_starttls_logout_and_capability_examples() {
    assert_eq!(one(b"StartTls\r\n"), Command::StartTls);
    assert_eq!(one(b"Logout\r\n"), Command::Logout);
    assert_eq!(one(b"CAPABILITY\r\n"), Command::Capability);
    assert_eq!(one(b"Unauthenticate\r\n"), Command::Unauthenticate);
    let mut out = Vec::new();
    Capabilities {
        implementation: "Example1 ManageSieved v001",
        sasl: &["DIGEST-MD5", "GSSAPI"],
        sieve: &["fileinto", "vacation"],
        starttls: true,
        owner: None,
        unauthenticate: false,
    }
    .encode(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "\"IMPLEMENTATION\" \"Example1 ManageSieved v001\"\r\n\
         \"SASL\" \"DIGEST-MD5 GSSAPI\"\r\n\
         \"SIEVE\" \"fileinto vacation\"\r\n\
         \"STARTTLS\"\r\n\
         \"VERSION\" \"1.0\"\r\n\
         OK\r\n"
    );
}

/// RFC 5804 2.3: HAVESPACE, and its QUOTA/MAXSIZE refusal.
#[test]
fn rfc_havespace_examples() {
    assert_eq!(
        one(b"HAVESPACE \"myscript\" 999999\r\n"),
        Command::HaveSpace {
            name: "myscript".into(),
            size: 999_999
        }
    );
    assert_eq!(
        one(b"HAVESPACE \"foobar\" 435\r\n"),
        Command::HaveSpace {
            name: "foobar".into(),
            size: 435
        }
    );
    assert_eq!(
        encoded(Response::no("Quota exceeded").with_code(Code::QuotaMaxSize)),
        "NO (QUOTA/MAXSIZE) \"Quota exceeded\"\r\n"
    );
    assert!(commands(b"HAVESPACE \"x\" 99999999999\r\n")[0].is_err());
    assert!(commands(b"HAVESPACE \"x\" \"12\"\r\n")[0].is_err());
}

/// RFC 5804 2.6 and 2.12: PUTSCRIPT and CHECKSCRIPT with literals whose lengths the RFC gives.
#[test]
fn rfc_putscript_and_checkscript_examples() {
    assert_eq!(
        one(b"Putscript \"foo\" {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n"),
        Command::PutScript {
            name: "foo".into(),
            script: s("#comment\r\nInvalidSieveCommand\r\n"),
        }
    );
    let script = "require [\"fileinto\"];\r\n\r\nif envelope :contains \"to\" \"tmartin+sent\" {\r\n  fileinto \"INBOX.sent\";\r\n}";
    assert_eq!(script.len(), 97);
    assert_eq!(
        one(format!("Putscript \"mysievescript\" {{97+}}\r\n{script}\r\n").as_bytes()),
        Command::PutScript {
            name: "mysievescript".into(),
            script: s(script),
        }
    );
    assert_eq!(
        one(b"CheckScript {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n"),
        Command::CheckScript {
            script: s("#comment\r\nInvalidSieveCommand\r\n"),
        }
    );
    // A synchronizing literal is taken the same way.
    assert_eq!(
        one(b"PUTSCRIPT \"a\" {4}\r\nkeep\r\n"),
        Command::PutScript {
            name: "a".into(),
            script: s("keep"),
        }
    );
    // 2.6's failure: `NO "line 2: Syntax error"`.
    assert_eq!(
        encoded(Response::no("line 2: Syntax error")),
        "NO \"line 2: Syntax error\"\r\n"
    );
}

/// RFC 5804 2.7: LISTSCRIPTS's answer lines, including a name that must be a literal.
#[test]
fn rfc_listscripts_example() {
    assert_eq!(one(b"Listscripts\r\n"), Command::ListScripts);
    let mut out = Vec::new();
    encode_string(b"summer_script", &mut out);
    out.extend_from_slice(b"\r\n");
    encode_string(b"clever\"script", &mut out);
    out.extend_from_slice(b"\r\n");
    encode_string(b"two\r\nlines", &mut out);
    out.extend_from_slice(b"\r\n");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "\"summer_script\"\r\n\"clever\\\"script\"\r\n{10}\r\ntwo\r\nlines\r\n"
    );
}

/// RFC 5804 2.8, 2.9, 2.10, 2.11: SETACTIVE (with "" to deactivate), GETSCRIPT, DELETESCRIPT,
/// RENAMESCRIPT, and their response codes.
#[test]
fn rfc_setactive_getscript_deletescript_renamescript_examples() {
    assert_eq!(
        one(b"Setactive \"vacationscript\"\r\n"),
        Command::SetActive {
            name: "vacationscript".into()
        }
    );
    assert_eq!(one(b"Setactive \"\"\r\n"), Command::SetActive { name: "".into() });
    assert_eq!(
        encoded(Response::no("There is no script by that name").with_code(Code::NonExistent)),
        "NO (NONEXISTENT) \"There is no script by that name\"\r\n"
    );
    assert_eq!(
        one(b"Getscript \"myscript\"\r\n"),
        Command::GetScript {
            name: "myscript".into()
        }
    );
    assert_eq!(
        one(b"Deletescript \"foo\"\r\n"),
        Command::DeleteScript { name: "foo".into() }
    );
    assert_eq!(
        encoded(Response::no("You may not delete an active script").with_code(Code::Active)),
        "NO (ACTIVE) \"You may not delete an active script\"\r\n"
    );
    assert_eq!(
        one(b"Renamescript \"foo\" \"bar\"\r\n"),
        Command::RenameScript {
            from: "foo".into(),
            to: "bar".into()
        }
    );
    assert_eq!(
        encoded(Response::ok_text("line 2: fileinto \"X\": no such mailbox").with_code(Code::Warnings)),
        "OK (WARNINGS) \"line 2: fileinto \\\"X\\\": no such mailbox\"\r\n"
    );
    assert_eq!(
        encoded(Response::no("bar already exists").with_code(Code::AlreadyExists)),
        "NO (ALREADYEXISTS) \"bar already exists\"\r\n"
    );
}

/// RFC 5804 2.13: NOOP, and the tag echoed back as a literal when it must be one.
#[test]
fn rfc_noop_examples() {
    assert_eq!(one(b"NOOP\r\n"), Command::Noop(None));
    assert_eq!(
        one(b"NOOP \"STARTTLS-SYNC-42\"\r\n"),
        Command::Noop(Some(s("STARTTLS-SYNC-42")))
    );
    assert_eq!(
        encoded(Response::ok_text("NOOP completed")),
        "OK \"NOOP completed\"\r\n"
    );
    assert_eq!(
        encoded(Response::ok_text("Done").with_code(Code::Tag(s("STARTTLS-SYNC-42")))),
        "OK (TAG \"STARTTLS-SYNC-42\") \"Done\"\r\n"
    );
    assert_eq!(
        encoded(Response::ok_text("Done").with_code(Code::Tag(s("a\r\nb")))),
        "OK (TAG {4}\r\na\r\nb) \"Done\"\r\n"
    );
}

#[test]
fn pipelined_lines_split_anywhere_give_the_same_commands() {
    let input: &[u8] =
        b"NOOP\r\nPUTSCRIPT \"a b\" {5+}\r\nkeep;\r\nSETACTIVE \"a b\"\r\nGETSCRIPT \"a\\\\b\\\"c\"\r\nLOGOUT\r\n";
    let whole = commands(input);
    assert_eq!(
        whole,
        vec![
            Ok(Command::Noop(None)),
            Ok(Command::PutScript {
                name: "a b".into(),
                script: s("keep;")
            }),
            Ok(Command::SetActive { name: "a b".into() }),
            Ok(Command::GetScript {
                name: "a\\b\"c".into()
            }),
            Ok(Command::Logout),
        ]
    );
    for split in 0..input.len() {
        let mut machine = Machine::new(LIMIT);
        let mut got = Vec::new();
        for part in [&input[..split], &input[split..]] {
            machine.feed(part);
            while let Some(parsed) = machine.next_line() {
                got.push(match parsed {
                    Parsed::Line(tokens) => parse_command(tokens),
                    Parsed::Invalid(response) => Err(response),
                });
            }
        }
        assert_eq!(got, whole, "split at {split}");
    }
}

#[test]
fn bad_lines_are_answered_and_skipped() {
    let got = commands(
        b"BOGUS\r\n\r\nPUTSCRIPT \"a\"\r\nGETSCRIPT foo\r\nNOOP \"unterminated\r\nLISTSCRIPTS extra\r\nNOOP (x)\r\nNOOP \"\\q\"\r\nNOOP\r\n",
    );
    assert_eq!(got.len(), 9, "{got:?}");
    for (i, result) in got[..8].iter().enumerate() {
        let Err(response) = result else {
            panic!("line {i} was accepted: {got:?}")
        };
        assert_eq!(encoded(response.clone())[..3].to_string(), "NO ", "{i}");
    }
    assert_eq!(got[8], Ok(Command::Noop(None)));
    assert!(format!("{:?}", got[0]).contains("unknown command BOGUS"));
    assert!(format!("{:?}", got[2]).contains("PUTSCRIPT takes 2 arguments"));
}

#[test]
fn an_oversized_literal_is_dropped_and_refused_with_maxsize() {
    let mut input = format!("PUTSCRIPT \"big\" {{{}+}}\r\n", LIMIT + 1).into_bytes();
    input.extend_from_slice(&vec![b'\n'; LIMIT + 1]);
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let mut machine = Machine::new(LIMIT);
    let mut got = Vec::new();
    // Fed in small pieces: what is held never grows past a line.
    for chunk in input.chunks(100) {
        machine.feed(chunk);
        while let Some(parsed) = machine.next_line() {
            got.push(parsed);
        }
        assert!(machine.buffered() <= 200, "{}", machine.buffered());
    }
    assert_eq!(got.len(), 2, "{got:?}");
    let Parsed::Invalid(refusal) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(refusal.code, Some(Code::QuotaMaxSize));
    assert_eq!(got[1], Parsed::Line(vec![Token::Atom("NOOP".into())]));
}

#[test]
fn a_raised_literal_limit_applies_to_the_lines_after_it() {
    let mut machine = Machine::new(8);
    machine.feed(b"CHECKSCRIPT {9+}\r\nkeep;\r\n\r\n\r\n");
    let Some(Parsed::Invalid(refusal)) = machine.next_line() else {
        panic!("over the first limit")
    };
    assert_eq!(refusal.code, Some(Code::QuotaMaxSize));
    machine.set_max_literal(16);
    machine.feed(b"CHECKSCRIPT {9+}\r\nkeep;\r\n\r\n\r\n");
    assert_eq!(
        parse_command(match machine.next_line() {
            Some(Parsed::Line(tokens)) => tokens,
            other => panic!("{other:?}"),
        }),
        Ok(Command::CheckScript {
            script: s("keep;\r\n\r\n")
        })
    );
}

#[test]
fn long_lines_and_long_quoted_strings_are_refused_without_buffering() {
    let mut machine = Machine::new(LIMIT);
    let mut got = Vec::new();
    machine.feed(b"NOOP ");
    for _ in 0..10 {
        machine.feed(&[b'x'; MAX_LINE / 4]);
        while let Some(parsed) = machine.next_line() {
            got.push(parsed);
        }
        assert!(machine.buffered() <= MAX_LINE + 8, "{}", machine.buffered());
    }
    machine.feed(b"\r\nNOOP\r\n");
    while let Some(parsed) = machine.next_line() {
        got.push(parsed);
    }
    assert!(
        matches!(&got[0], Parsed::Invalid(r) if r.text.as_deref() == Some("command line too long")),
        "{got:?}"
    );
    assert_eq!(got[1], Parsed::Line(vec![Token::Atom("NOOP".into())]));
    let long_quoted = format!("NOOP \"{}\"\r\n", "q".repeat(MAX_QUOTED + 1));
    assert!(commands(long_quoted.as_bytes())[0].is_err());
    let fits = format!("NOOP \"{}\"\r\n", "q".repeat(MAX_QUOTED));
    assert!(commands(fits.as_bytes())[0].is_ok());
}

#[test]
fn discarded_input_is_not_taken_after_starttls() {
    let mut machine = Machine::new(LIMIT);
    machine.feed(b"STARTTLS\r\nDELETESCRIPT \"x\"\r\n");
    assert!(matches!(machine.next_line(), Some(Parsed::Line(_))));
    machine.discard_input();
    assert_eq!(machine.next_line(), None);
    machine.feed(b"CAPABILITY\r\n");
    assert_eq!(
        machine.next_line(),
        Some(Parsed::Line(vec![Token::Atom("CAPABILITY".into())]))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes, fed in arbitrary pieces: no panic, every line answered, and what the
    /// parser holds stays within a line plus a literal plus one piece.
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)
    ) {
        let mut machine = Machine::new(LIMIT);
        for chunk in &chunks {
            machine.feed(chunk);
            while let Some(parsed) = machine.next_line() {
                if let Parsed::Line(tokens) = parsed {
                    let _ = parse_sasl_response(tokens.clone());
                    if let Err(response) = parse_command(tokens) {
                        let mut out = Vec::new();
                        response.encode(&mut out);
                        prop_assert!(out.ends_with(b"\r\n"));
                    }
                }
            }
            prop_assert!(machine.buffered() <= MAX_LINE + LIMIT + 300);
        }
    }

    /// Lines built from the grammar's pieces (words, quoted strings, literals, spaces) parse to
    /// exactly the tokens they were built from.
    #[test]
    fn built_lines_parse_back_to_their_tokens(
        pieces in proptest::collection::vec(
            prop_oneof![
                "[A-Za-z0-9]{1,12}".prop_map(Token::Atom),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Token::String),
            ],
            1..6
        )
    ) {
        let mut line = Vec::new();
        for (i, token) in pieces.iter().enumerate() {
            if i > 0 {
                line.push(b' ');
            }
            match token {
                Token::Atom(a) => line.extend_from_slice(a.as_bytes()),
                // The server's encoder writes quoted strings or `{n}` literals; both parse back.
                Token::String(bytes) => encode_string(bytes, &mut line),
            }
        }
        line.extend_from_slice(b"\r\n");
        let mut machine = Machine::new(LIMIT);
        machine.feed(&line);
        prop_assert_eq!(machine.next_line(), Some(Parsed::Line(pieces)));
        prop_assert_eq!(machine.next_line(), None);
    }
}
