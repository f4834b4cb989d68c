//! The LMTP state machine on its own: replies, ordering errors, dot-unstuffing, bounds, and
//! arbitrary bytes.

use proptest::prelude::*;

use super::protocol::{parse_command, split_address, Command, Event, Machine, Reply, MAX_LINE};
use super::{DataBudget, Reservation};

type M = Machine<String>;

/// Feeds `input` and answers every RCPT by accepting it; returns the events in order.
fn run(machine: &mut M, input: &[u8]) -> Vec<Event<String>> {
    machine.feed(input);
    let mut events = Vec::new();
    while let Some(event) = machine.next_event() {
        if let Event::Recipient(to) = &event {
            machine.accept_recipient(to.clone());
        }
        events.push(event);
    }
    events
}

fn codes(events: &[Event<String>]) -> Vec<u16> {
    events
        .iter()
        .map(|e| match e {
            Event::Reply(r) | Event::Quit(r) => r.code,
            Event::Recipient(_) => 250,
            Event::Message { .. } => 1,
            Event::MessageTooLarge { .. } => 552,
            Event::MessageDropped { .. } => 452,
            Event::StartTls => 220,
        })
        .collect()
}

#[test]
fn a_pipelined_transaction_gives_one_event_per_command_in_order() {
    let mut m = M::new(1000, false);
    let events = run(
        &mut m,
        b"LHLO mta\r\nMAIL FROM:<a@x> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\nhi\r\n..dot\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(codes(&events), vec![250, 250, 250, 250, 354, 1, 221]);
    let Event::Message {
        from,
        recipients,
        body,
    } = &events[5]
    else {
        panic!("{events:?}")
    };
    assert_eq!(from, "a@x");
    assert_eq!(recipients, &vec!["b@y".to_string(), "c@y".to_string()]);
    assert_eq!(body, b"hi\r\n.dot\r\n");
}

#[test]
fn lhlo_lists_the_extensions() {
    let mut m = M::new(5000, true);
    let events = run(&mut m, b"LHLO mta\r\n");
    let Event::Reply(reply) = &events[0] else { panic!() };
    let mut wire = Vec::new();
    reply.encode(&mut wire);
    let text = String::from_utf8(wire).unwrap();
    for ext in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SIZE 5000",
        "STARTTLS",
    ] {
        assert!(
            text.contains(&format!("250-{ext}")) || text.contains(&format!("250 {ext}")),
            "{text}"
        );
    }
    assert!(text.ends_with("250 STARTTLS\r\n"), "{text}");
}

#[test]
fn commands_out_of_order_get_503() {
    let mut m = M::new(1000, false);
    let events = run(&mut m, b"MAIL FROM:<a@x>\r\nLHLO h\r\nDATA\r\nRCPT TO:<b@y>\r\nMAIL FROM:<a@x>\r\nDATA\r\nMAIL FROM:<a@x>\r\n");
    assert_eq!(codes(&events), vec![503, 250, 503, 503, 250, 503, 503]);
    let events = run(&mut m, b"HELO x\r\nEHLO x\r\nFOO\r\nSTARTTLS\r\n");
    assert_eq!(codes(&events), vec![500, 500, 500, 502]);
}

#[test]
fn a_declared_size_over_the_limit_is_refused_at_mail() {
    let mut m = M::new(100, false);
    let events = run(
        &mut m,
        b"LHLO h\r\nMAIL FROM:<a@x> SIZE=101\r\nMAIL FROM:<a@x> SIZE=100\r\n",
    );
    assert_eq!(codes(&events), vec![250, 552, 250]);
}

#[test]
fn data_over_the_limit_is_dropped_and_refused_once_it_ends() {
    let mut m = M::new(10, false);
    let mut input = b"LHLO h\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&b"0123456789\r\n".repeat(100));
    input.extend_from_slice(b".\r\nNOOP\r\n");
    let events = run(&mut m, &input);
    assert_eq!(codes(&events), vec![250, 250, 250, 354, 552, 250]);
}

#[test]
fn dropped_data_is_freed_and_refused_for_now_once_it_ends() {
    let mut m = M::new(1000, false);
    let events = run(
        &mut m,
        b"LHLO h\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\nsome data\r\n",
    );
    assert_eq!(codes(&events), vec![250, 250, 250, 250, 354]);
    assert_eq!(m.data_bytes(), 11);
    m.drop_data();
    assert_eq!(m.data_bytes(), 0);
    let events = run(&mut m, b"more\r\n.\r\nNOOP\r\n");
    assert_eq!(m.data_bytes(), 0);
    assert_eq!(events[0], Event::MessageDropped { recipients: 2 });
    assert_eq!(codes(&events), vec![452, 250]);
}

#[test]
fn sessions_share_the_data_budget_and_give_it_back() {
    let budget = DataBudget::new(100);
    let mut a = Reservation::new(&budget);
    let mut b = Reservation::new(&budget);
    assert!(a.resize(60));
    assert!(!b.resize(50), "over the budget together");
    assert_eq!(budget.used(), 60, "a refused resize holds what it held");
    assert!(b.resize(40));
    assert!(a.resize(10), "shrinking always works");
    assert!(b.resize(90));
    drop(b);
    assert_eq!(budget.used(), 10, "a session's end gives its part back");
    drop(a);
    assert_eq!(budget.used(), 0);
}

#[test]
fn an_overlong_line_is_refused_and_skipped_without_buffering_it() {
    let mut m = M::new(1000, false);
    let events = run(&mut m, &vec![b'A'; MAX_LINE * 3]);
    assert_eq!(codes(&events), vec![500]);
    assert!(!m.has_pending_input(), "the long line was kept");
    let events = run(&mut m, b"AAAA\r\nNOOP\r\n");
    assert_eq!(codes(&events), vec![250]);
    let mut long = vec![b'N'; MAX_LINE + 5];
    long.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(codes(&run(&mut m, &long)), vec![500, 250]);
}

#[test]
fn data_split_anywhere_gives_the_same_message() {
    let input = b"LHLO h\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n.a\r\n\r\n..\r\nb\r\n.\r\n";
    let whole = run(&mut M::new(1000, false), input);
    for split in 0..input.len() {
        let mut m = M::new(1000, false);
        let mut events = run(&mut m, &input[..split]);
        events.extend(run(&mut m, &input[split..]));
        assert_eq!(events, whole, "split at {split}");
    }
    let Event::Message { body, .. } = &whole[4] else {
        panic!()
    };
    assert_eq!(body, b"a\r\n\r\n.\r\nb\r\n");
}

#[test]
fn starttls_waits_and_forgets_what_was_pipelined_after_it() {
    let mut m = M::new(1000, true);
    m.feed(b"LHLO h\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n");
    assert!(matches!(m.next_event(), Some(Event::Reply(_))));
    assert_eq!(m.next_event(), Some(Event::StartTls));
    assert_eq!(
        m.next_event(),
        None,
        "nothing after STARTTLS before the handshake"
    );
    m.tls_started();
    let events = run(&mut m, b"MAIL FROM:<a@x>\r\n");
    assert_eq!(codes(&events), vec![503], "the greeting is needed again");
}

#[test]
fn paths_and_parameters_parse() {
    assert_eq!(
        parse_command(b"mail from: <a@b> size=5").unwrap(),
        Command::Mail {
            from: "a@b".into(),
            size: Some(5)
        }
    );
    assert_eq!(
        parse_command(b"RCPT TO:<@relay,@r2:u@d>").unwrap(),
        Command::Rcpt { to: "u@d".into() }
    );
    assert_eq!(
        parse_command(b"RCPT TO:<\"a>b\"@d>").unwrap(),
        Command::Rcpt {
            to: "\"a>b\"@d".into()
        }
    );
    assert_eq!(
        parse_command(b"MAIL FROM:<>").unwrap(),
        Command::Mail {
            from: "".into(),
            size: None
        }
    );
    assert_eq!(parse_command(b"RCPT TO:<>").unwrap_err().code, 501);
    assert_eq!(parse_command(b"MAIL FROM:<a@b> SMTPUTF8").unwrap_err().code, 555);
    assert_eq!(parse_command(b"MAIL FROM:a@b").unwrap_err().code, 501);
    assert_eq!(parse_command(b"MAIL FROM:<a@b> SIZE=x").unwrap_err().code, 501);
    assert_eq!(parse_command(b"DATA now").unwrap_err().code, 501);
    let address = split_address("\"john\\\"doe\"@example.org").unwrap();
    assert_eq!(address.local, "john\"doe");
    assert_eq!(address.domain, "example.org");
    assert!(split_address("@x").is_err());
}

#[test]
fn reply_text_cannot_break_the_line_structure() {
    let mut out = Vec::new();
    Reply::new(550, "5.7.1", "a\r\n250 fake").encode(&mut out);
    assert_eq!(out, b"550 5.7.1 a  250 fake\r\n");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, in arbitrary pieces, never panic the parser, and its buffered input
    /// stays bounded in command mode.
    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..8)) {
        let mut m = M::new(4096, true);
        for chunk in &chunks {
            let _ = run(&mut m, chunk);
        }
        let _ = parse_command(&chunks.concat());
    }

    /// Command-shaped input (real verbs with arbitrary arguments) reaches every branch.
    #[test]
    fn command_shaped_input_never_panics(lines in proptest::collection::vec(
        ("(LHLO|MAIL FROM:|RCPT TO:|DATA|RSET|NOOP|QUIT|STARTTLS|\\.|VRFY|HELP|EHLO)", "[ -~\u{80}-\u{ff}]{0,40}"), 0..40)
    ) {
        let mut m = M::new(64, true);
        let mut input = Vec::new();
        for (verb, rest) in &lines {
            input.extend_from_slice(verb.as_bytes());
            input.extend_from_slice(rest.as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        let events = run(&mut m, &input);
        for event in events {
            if let Event::StartTls = event {
                m.tls_started();
            }
        }
    }
}
