//! Arbitrary input never panics the compiler or the interpreter, and each finishes promptly on
//! it (bounded work: no test here measures time, the bounds are in the code and `limits`).

use proptest::prelude::*;

use crate::sieve::{compile, evaluate, Envelope, Environment, Message};

struct Nothing;

impl Environment for Nothing {
    fn mailbox_exists(&self, _name: &str) -> bool {
        false
    }

    fn personal_script(&self, name: &str) -> Option<Vec<u8>> {
        // Every include finds a script that includes another one, to exercise the limits.
        Some(format!("require \"include\";\ninclude \"{name}x\";").into_bytes())
    }
}

/// Pieces of Sieve syntax, so that arbitrary scripts get past the lexer often.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("require [\"fileinto\", \"variables\", \"imap4flags\", \"include\", \"body\", \"relational\", \"envelope\", \"subaddress\", \"copy\", \"mailbox\", \"reject\"];".to_string()),
        Just("if ".to_string()),
        Just("elsif ".to_string()),
        Just("else ".to_string()),
        Just("{ ".to_string()),
        Just("} ".to_string()),
        Just("( ".to_string()),
        Just(") ".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("; ".to_string()),
        Just("header ".to_string()),
        Just("address :detail ".to_string()),
        Just("envelope :user \"to\" ".to_string()),
        Just("body :text ".to_string()),
        Just(":matches ".to_string()),
        Just(":count \"gt\" ".to_string()),
        Just("not ".to_string()),
        Just("anyof ".to_string()),
        Just("true".to_string()),
        Just("fileinto :copy ".to_string()),
        Just("set ".to_string()),
        Just("addflag ".to_string()),
        Just("include \"a\"; ".to_string()),
        Just("keep; ".to_string()),
        Just("stop; ".to_string()),
        Just("text:\n.\n".to_string()),
        Just("\"${1}*?\\\\\" ".to_string()),
        Just("\"subject\" ".to_string()),
        Just("100K ".to_string()),
        "[ -~]{0,12}".prop_map(|s| s),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_do_not_panic_the_compiler(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = compile(&bytes);
    }

    #[test]
    fn arbitrary_token_soup_compiles_or_is_refused_and_runs_without_panic(
        pieces in proptest::collection::vec(fragment(), 0..40),
        message in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let source = pieces.concat();
        match compile(source.as_bytes()) {
            Ok(script) => {
                let message = Message::parse(&message);
                let envelope = Envelope { from: "a+b@c.d", to: "e+f@g.h" };
                let _ = evaluate(&script, "active", &message, &envelope, &Nothing);
            }
            Err(error) => prop_assert!(!error.reason.is_empty()),
        }
    }

    #[test]
    fn arbitrary_messages_parse_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let message = Message::parse(&raw);
        let _ = message.header_values("subject");
        let _ = message.addresses("to");
        let _ = message.body_parts(&[String::new()]);
    }
}
