//! Running scripts on messages: the RFCs' examples, with the actions they must give.

use std::collections::{BTreeMap, BTreeSet};

use super::compile::RFC5228_EXAMPLE;
use crate::sieve::{compile, evaluate, Action, Envelope, Environment, Message, Outcome, RuntimeError};

/// A user's store as the interpreter sees it: mailbox names and personal scripts.
#[derive(Default)]
struct Store {
    mailboxes: BTreeSet<String>,
    scripts: BTreeMap<String, String>,
}

impl Store {
    fn with_mailboxes(names: &[&str]) -> Self {
        Self {
            mailboxes: names.iter().map(|n| n.to_string()).collect(),
            scripts: BTreeMap::new(),
        }
    }

    fn script(mut self, name: &str, source: &str) -> Self {
        self.scripts.insert(name.to_string(), source.to_string());
        self
    }
}

impl Environment for Store {
    fn mailbox_exists(&self, name: &str) -> bool {
        self.mailboxes.contains(name)
    }

    fn personal_script(&self, name: &str) -> Option<Vec<u8>> {
        self.scripts.get(name).map(|s| s.clone().into_bytes())
    }
}

const TO: &str = "ken@example.com";

fn run_in(
    store: &Store,
    script: &str,
    message: &str,
    envelope: Envelope<'_>,
) -> Result<Outcome, RuntimeError> {
    let script = compile(script.as_bytes()).unwrap_or_else(|e| panic!("script does not compile: {e}"));
    let raw = message.replace('\n', "\r\n");
    evaluate(
        &script,
        "active",
        &Message::parse(raw.as_bytes()),
        &envelope,
        store,
    )
}

/// Runs with every mailbox the scripts file into existing.
fn run(script: &str, message: &str) -> Vec<Action> {
    let store = Store::with_mailboxes(&[
        "filter",
        "spam",
        "personal",
        "secrets",
        "jukebox",
        "project/schedule",
        "Partners",
        "incoming",
        "Big messages",
        "GrandMa",
        "INBOX.From Boss",
        "mailbox for ken",
        "inbox.postmaster",
        "inbox.ietf-mta-filters",
        "lists",
        "INBOX.lists.sieve",
        "INBOX.lists.acme-users",
        "INBOX.business.ACME.Example",
        "Low",
        "spam-Make money",
        "spam-$$",
    ]);
    run_in(
        &store,
        script,
        message,
        Envelope {
            from: "sender@example.org",
            to: TO,
        },
    )
    .unwrap()
    .actions
}

fn keep() -> Action {
    Action::Keep { flags: vec![] }
}

fn keep_flagged(flags: &[&str]) -> Action {
    Action::Keep {
        flags: flags.iter().map(|f| f.to_string()).collect(),
    }
}

fn fileinto(mailbox: &str) -> Action {
    Action::FileInto {
        mailbox: mailbox.into(),
        create: false,
        copy: false,
        flags: vec![],
    }
}

#[test]
fn an_empty_script_keeps() {
    assert_eq!(run("", "Subject: x\n\nbody\n"), vec![keep()]);
    assert_eq!(run("# only a comment\n", "Subject: x\n\nbody\n"), vec![keep()]);
}

#[test]
fn rfc_5228_example_files_each_kind_of_message_where_it_says() {
    let list = "Sender: owner-ietf-mta-filters@imc.org\nTo: me@example.com\nSubject: x\n\nbody\n";
    assert_eq!(run(RFC5228_EXAMPLE, list), vec![fileinto("filter")]);
    let company = "From: Boss <boss@EXAMPLE.com>\nTo: someone@else.net\nSubject: x\n\nbody\n";
    assert_eq!(run(RFC5228_EXAMPLE, company), vec![keep()]);
    let not_to_me = "From: a@b.org\nTo: someone@else.net\nSubject: hello\n\nbody\n";
    assert_eq!(run(RFC5228_EXAMPLE, not_to_me), vec![fileinto("spam")]);
    let spam_subject = "From: a@b.org\nTo: list@lists.org\nCc: me@example.com\nSubject: MAKE lots of MONEY really FAST\n\nbody\n";
    assert_eq!(run(RFC5228_EXAMPLE, spam_subject), vec![fileinto("spam")]);
    let personal = "From: a@b.org\nCc: Me <me@example.com>\nSubject: hello\n\nbody\n";
    assert_eq!(run(RFC5228_EXAMPLE, personal), vec![fileinto("personal")]);
}

#[test]
fn rfc_5228_discard_size_stop_and_exists() {
    let script = "if header :contains \"subject\" \"ivnten\" { discard; }";
    assert_eq!(run(script, "Subject: Ivnten stuff\n\nx\n"), vec![Action::Discard]);
    assert_eq!(run(script, "Subject: other\n\nx\n"), vec![keep()]);
    let big = format!("Subject: x\n\n{}\n", "y".repeat(2000));
    assert_eq!(run("if size :over 1K { discard; }", &big), vec![Action::Discard]);
    assert_eq!(run("if size :under 1K { discard; }", &big), vec![keep()]);
    assert_eq!(
        run("if size :under 1K { discard; }", "Subject: x\n\ny\n"),
        vec![Action::Discard]
    );
    let script = "if not exists [\"From\",\"Date\"] { discard; stop; } keep;";
    assert_eq!(run(script, "From: a@b\n\nx\n"), vec![Action::Discard]);
    assert_eq!(run(script, "From: a@b\nDate: today\n\nx\n"), vec![keep()]);
    // stop ends the script; the implicit keep still applies when nothing cancelled it.
    assert_eq!(
        run("require \"fileinto\"; stop; fileinto \"spam\";", "S: x\n\nb\n"),
        vec![keep()]
    );
}

#[test]
fn discard_then_explicit_keep_delivers_and_keep_twice_delivers_once() {
    assert_eq!(
        run("discard; keep; keep;", "S: x\n\nb\n"),
        vec![Action::Discard, keep()]
    );
    assert_eq!(
        run(
            "require \"fileinto\"; fileinto \"spam\"; fileinto \"spam\";",
            "S: x\n\nb\n"
        ),
        vec![fileinto("spam")]
    );
    // fileinto "INBOX" is keep.
    assert_eq!(
        run("require \"fileinto\"; fileinto \"INBOX\"; keep;", "S: x\n\nb\n"),
        vec![keep()]
    );
}

#[test]
fn allof_anyof_not_true_false_and_elsif_chains() {
    let script = r#"require "fileinto";
if allof (header :is "X-A" "1", not header :is "X-B" "1") { fileinto "spam"; }
elsif anyof (false, header :contains "Subject" "report") { fileinto "filter"; }
elsif true { fileinto "personal"; }
else { discard; }"#;
    assert_eq!(run(script, "X-A: 1\nX-B: 2\n\nb\n"), vec![fileinto("spam")]);
    assert_eq!(
        run(script, "X-A: 1\nX-B: 1\nSubject: The Report\n\nb\n"),
        vec![fileinto("filter")]
    );
    assert_eq!(run(script, "X-A: 1\nX-B: 1\n\nb\n"), vec![fileinto("personal")]);
}

#[test]
fn comparators_octet_casemap_and_numeric() {
    let message = "Subject: Hello\nX-Spam-Score: 0012\n\nb\n";
    assert_eq!(
        run("if header :is \"subject\" \"HELLO\" { discard; }", message),
        vec![Action::Discard]
    );
    assert_eq!(
        run(
            "if header :is :comparator \"i;octet\" \"subject\" \"HELLO\" { discard; }",
            message
        ),
        vec![keep()]
    );
    assert_eq!(
        run(
            "if header :is :comparator \"i;octet\" \"subject\" \"Hello\" { discard; }",
            message
        ),
        vec![Action::Discard]
    );
    let numeric = "require \"comparator-i;ascii-numeric\";\nif header :is :comparator \"i;ascii-numeric\" \"X-Spam-Score\" \"12\" { discard; }";
    assert_eq!(run(numeric, message), vec![Action::Discard]);
    assert_eq!(
        run("if header :matches \"subject\" \"h?l*\" { discard; }", message),
        vec![Action::Discard]
    );
    assert_eq!(
        run(
            "if header :matches :comparator \"i;octet\" \"subject\" \"h*\" { discard; }",
            message
        ),
        vec![keep()]
    );
    assert_eq!(
        run(
            "if header :matches \"subject\" \"\\\\*\" { discard; }",
            "Subject: *\n\nb\n"
        ),
        vec![Action::Discard]
    );
    assert_eq!(
        run(
            "if header :matches \"subject\" \"\\\\*\" { discard; }",
            "Subject: x\n\nb\n"
        ),
        vec![keep()]
    );
}

#[test]
fn address_parts_and_rfc_5233_subaddress() {
    let message = "From: \"Ken\" <Ken+Lists@Example.COM>\nTo: undisclosed-recipients:;\n\nb\n";
    assert_eq!(
        run(
            "if address :localpart \"from\" \"ken+lists\" { discard; }",
            message
        ),
        vec![Action::Discard]
    );
    assert_eq!(
        run(
            "if address :domain \"from\" \"example.com\" { discard; }",
            message
        ),
        vec![Action::Discard]
    );
    assert_eq!(
        run(
            "if address :all \"from\" \"ken+lists@example.com\" { discard; }",
            message
        ),
        vec![Action::Discard]
    );
    assert_eq!(run("if address \"to\" \"\" { discard; }", message), vec![keep()]);
    let sub = "require \"subaddress\";\nif address :user \"from\" \"ken\" { discard; }";
    assert_eq!(run(sub, message), vec![Action::Discard]);
    let detail = "require \"subaddress\";\nif address :detail \"from\" \"lists\" { discard; }";
    assert_eq!(run(detail, message), vec![Action::Discard]);
    // No "+": :detail has nothing to compare, even with "*".
    let none = "require \"subaddress\";\nif address :detail :matches \"from\" \"*\" { discard; }";
    assert_eq!(run(none, "From: ken@example.com\n\nb\n"), vec![keep()]);
}

/// RFC 5233 section 6's example, on the envelope recipient.
#[test]
fn rfc_5233_envelope_user_and_detail() {
    let script = r#"require ["envelope", "subaddress", "fileinto"];
if envelope :user "to" "postmaster" { fileinto "inbox.postmaster"; stop; }
if envelope :detail "to" "mta-filters" { fileinto "inbox.ietf-mta-filters"; }
"#;
    let store = Store::with_mailboxes(&["inbox.postmaster", "inbox.ietf-mta-filters"]);
    let at = |to| {
        run_in(&store, script, "S: x\n\nb\n", Envelope { from: "a@b.c", to })
            .unwrap()
            .actions
    };
    assert_eq!(at("postmaster+x@example.com"), vec![fileinto("inbox.postmaster")]);
    assert_eq!(
        at("ken+mta-filters@example.com"),
        vec![fileinto("inbox.ietf-mta-filters")]
    );
    assert_eq!(at("ken@example.com"), vec![keep()]);
}

#[test]
fn envelope_from_null_sender_is_the_empty_string() {
    let script = "require \"envelope\";\nif envelope :domain \"from\" \"\" { discard; }";
    let store = Store::default();
    let bounce = run_in(&store, script, "S: x\n\nb\n", Envelope { from: "", to: TO }).unwrap();
    assert_eq!(bounce.actions, vec![Action::Discard]);
    let normal = run_in(
        &store,
        script,
        "S: x\n\nb\n",
        Envelope {
            from: "a@b.c",
            to: TO,
        },
    )
    .unwrap();
    assert_eq!(normal.actions, vec![keep()]);
    let script = "require \"envelope\";\nif envelope :all :is \"from\" \"a@b.c\" { discard; }";
    let angle = run_in(
        &store,
        script,
        "S: x\n\nb\n",
        Envelope {
            from: "<a@b.c>",
            to: TO,
        },
    )
    .unwrap();
    assert_eq!(angle.actions, vec![Action::Discard]);
}

/// RFC 5229 sections 3 and 4's examples.
#[test]
fn rfc_5229_match_variables_and_modifiers() {
    let script = r#"require ["variables", "fileinto"];
if header :matches "List-ID" "*<*@*" {
    fileinto "INBOX.lists.${2}"; stop;
}
if header :matches "Subject" "[*] *" {
    fileinto "INBOX.lists.${1}"; stop;
}
if address :matches ["To", "Cc"] ["coyote@**.com", "wile@**.com"] {
    fileinto "INBOX.business.${2}"; stop;
}
"#;
    assert_eq!(
        run(script, "List-ID: Sieve list <sieve@example.com>\n\nb\n"),
        vec![fileinto("INBOX.lists.sieve")]
    );
    assert_eq!(
        run(script, "Subject: [acme-users] [fwd] version 1.0 is out\n\nb\n"),
        vec![fileinto("INBOX.lists.acme-users")]
    );
    assert_eq!(
        run(script, "To: coyote@ACME.Example.COM\n\nb\n"),
        vec![fileinto("INBOX.business.ACME.Example")]
    );

    let modifiers = r#"require ["variables", "reject"];
set "a" "juMBlEd lETters";
set :length "b" "${a}";
set :lower "c" "${a}";
set :upperfirst "d" "${a}";
set :upperfirst :lower "e" "${a}";
set :quotewildcard "f" "Rock*";
set "unknown" "[${nothere}] [${bad name}] [${1}]";
reject "${b}|${c}|${d}|${e}|${f}|${unknown}|${A}";
"#;
    assert_eq!(run(modifiers, "S: x\n\nb\n"), vec![Action::Reject {
        reason: "15|jumbled letters|JuMBlEd lETters|Jumbled letters|Rock\\*|[] [${bad name}] []|juMBlEd lETters"
            .into(),
        extended: false
    }]);
}

#[test]
fn string_test_counts_non_empty_strings() {
    let script = r#"require ["variables", "relational", "comparator-i;ascii-numeric", "fileinto"];
set "state" "${state} pending";
if string :matches " ${state} " "* pending *" { set "x" "yes"; }
if string :count "eq" :comparator "i;ascii-numeric" ["${x}", "", "${nothere}"] "1" { fileinto "spam"; }
"#;
    assert_eq!(run(script, "S: x\n\nb\n"), vec![fileinto("spam")]);
}

/// RFC 5231's examples.
#[test]
fn rfc_5231_relational_value_and_count() {
    let script = r#"require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "lt" :comparator "i;ascii-numeric" ["x-priority"] ["3"] { fileinto "Low"; }
elsif address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"] { fileinto "spam"; }
"#;
    assert_eq!(
        run(script, "X-Priority: 1 (Highest)\n\nb\n"),
        vec![fileinto("Low")]
    );
    assert_eq!(
        run(script, "X-Priority: 5\nTo: a@x, b@x\nCc: c@x\n\nb\n"),
        vec![fileinto("spam")]
    );
    assert_eq!(run(script, "X-Priority: 5\nTo: a@x, b@x\n\nb\n"), vec![keep()]);
    // A value that is not a number is positive infinity for i;ascii-numeric.
    assert_eq!(run(script, "X-Priority: high\n\nb\n"), vec![keep()]);
    let count_headers = "require \"relational\";\nif header :count \"gt\" :comparator \"i;ascii-numeric\" \"received\" \"2\" { discard; }";
    let _ = compile(count_headers.as_bytes()).unwrap_err();
    let count_headers = "require [\"relational\", \"comparator-i;ascii-numeric\"];\nif header :count \"gt\" :comparator \"i;ascii-numeric\" \"received\" \"2\" { discard; }";
    assert_eq!(
        run(count_headers, "Received: a\nReceived: b\nReceived: c\n\nb\n"),
        vec![Action::Discard]
    );
    assert_eq!(
        run(count_headers, "Received: a\nReceived: b\n\nb\n"),
        vec![keep()]
    );
}

/// RFC 5232's examples, and the internal variable carried to the implicit keep.
#[test]
fn rfc_5232_flags_on_fileinto_and_the_implicit_keep() {
    let script = r#"require ["imap4flags", "fileinto"];
if header :contains "from" "boss@frobnitzm.example.edu" {
    setflag "\\Flagged";
    fileinto "INBOX.From Boss";
}
"#;
    assert_eq!(
        run(script, "From: boss@frobnitzm.example.edu\n\nb\n"),
        vec![Action::FileInto {
            mailbox: "INBOX.From Boss".into(),
            create: false,
            copy: false,
            flags: vec!["\\Flagged".into()]
        }]
    );
    let script = r#"require ["fileinto", "imap4flags", "variables"];
if size :over 1K {
    addflag "MyFlags" "Big";
    if header :is "From" "boss@company.example.com" {
        addflag "MyFlags" "\\Flagged";
    }
    fileinto :flags "${MyFlags}" "Big messages";
}
if header :is "From" "grandma@example.net" {
    addflag "MyFlags" ["\\Answered", "$MDNSent"];
    fileinto :flags "${MyFlags}" "GrandMa";
}
if header :is "From" "boss@company.example.com" {
    addflag "\\Seen \\Flagged";
    removeflag "\\SEEN";
    if hasflag :contains "flag" { keep :flags "${MyFlags} $Kept"; }
}
"#;
    let big = format!("From: boss@company.example.com\n\n{}\n", "y".repeat(1500));
    assert_eq!(
        run(script, &big),
        vec![
            Action::FileInto {
                mailbox: "Big messages".into(),
                create: false,
                copy: false,
                flags: vec!["Big".into(), "\\Flagged".into()]
            },
            keep_flagged(&["Big", "\\Flagged", "$Kept"]),
        ]
    );
    let grandma = format!("From: grandma@example.net\n\n{}\n", "y".repeat(1500));
    assert_eq!(
        run(script, &grandma),
        vec![
            Action::FileInto {
                mailbox: "Big messages".into(),
                create: false,
                copy: false,
                flags: vec!["Big".into()]
            },
            Action::FileInto {
                mailbox: "GrandMa".into(),
                create: false,
                copy: false,
                flags: vec!["Big".into(), "\\Answered".into(), "$MDNSent".into()]
            },
        ]
    );
    // The internal variable's flags go with the implicit keep.
    let implicit =
        "require \"imap4flags\";\nsetflag [\"\\\\Seen\", \"$a $b\"];\naddflag \"$A\";\nremoveflag \"$b\";";
    assert_eq!(
        run(implicit, "S: x\n\nb\n"),
        vec![keep_flagged(&["\\Seen", "$a"])]
    );
    let count = "require [\"imap4flags\", \"relational\", \"comparator-i;ascii-numeric\"];\nsetflag \"a b c\";\nif hasflag :count \"eq\" :comparator \"i;ascii-numeric\" \"3\" { discard; }";
    assert_eq!(run(count, "S: x\n\nb\n"), vec![Action::Discard]);
}

/// RFC 5173's examples.
#[test]
fn rfc_5173_body_raw_content_and_text() {
    let script = r#"require ["body", "fileinto"];
if body :raw :contains "MAKE MONEY FAST" { discard; }
if body :content "text" :contains ["missile", "coordinates"] { fileinto "secrets"; }
if body :content "audio/mp3" :contains "" { fileinto "jukebox"; }
if body :text :contains "project schedule" { fileinto "project/schedule"; }
"#;
    assert_eq!(
        run(script, "Subject: x\n\nplease MAKE MONEY FAST\n"),
        vec![Action::Discard]
    );
    let secret = "Content-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nVGhlIE1pc3NpbGUgaXMgcmVhZHk=\n--zz\nContent-Type: audio/mp3\n\nID3...\n--zz--\n";
    assert_eq!(
        run(script, secret),
        vec![fileinto("secrets"), fileinto("jukebox")]
    );
    // Encoded text is not seen by :raw but is by :text.
    let encoded = "Content-Transfer-Encoding: quoted-printable\n\nthe project=20schedule\n";
    assert_eq!(run(script, encoded), vec![fileinto("project/schedule")]);
}

#[test]
fn copy_keeps_the_implicit_keep_and_mailbox_create_and_exists() {
    let script = "require [\"fileinto\", \"copy\"];\nfileinto :copy \"incoming\";";
    assert_eq!(
        run(script, "S: x\n\nb\n"),
        vec![
            Action::FileInto {
                mailbox: "incoming".into(),
                create: false,
                copy: true,
                flags: vec![]
            },
            keep()
        ]
    );
    let script = r#"require ["fileinto", "mailbox"];
if mailboxexists "Partners" { fileinto "Partners"; } else { fileinto :create "Unknown"; }"#;
    assert_eq!(run(script, "S: x\n\nb\n"), vec![fileinto("Partners")]);
    let store = Store::default();
    let outcome = run_in(&store, script, "S: x\n\nb\n", Envelope { from: "", to: TO }).unwrap();
    assert_eq!(
        outcome.actions,
        vec![Action::FileInto {
            mailbox: "Unknown".into(),
            create: true,
            copy: false,
            flags: vec![]
        }]
    );
}

#[test]
fn fileinto_a_missing_mailbox_without_create_keeps_and_notes_it() {
    let store = Store::default();
    let outcome = run_in(
        &store,
        "require \"fileinto\";\nfileinto \"Nowhere\";",
        "S: x\n\nb\n",
        Envelope { from: "", to: TO },
    )
    .unwrap();
    assert_eq!(outcome.actions, vec![keep()]);
    assert_eq!(outcome.notes.len(), 1);
    assert!(outcome.notes[0].contains("Nowhere"));
}

#[test]
fn reject_and_ereject_cancel_keep_and_refuse_other_deliveries() {
    let script =
        "require \"reject\";\nif header :contains \"subject\" \"spam\" { reject \"I do not want it\"; }";
    assert_eq!(
        run(script, "Subject: spam!\n\nb\n"),
        vec![Action::Reject {
            reason: "I do not want it".into(),
            extended: false
        }]
    );
    let script = "require \"ereject\";\nereject text:\nNo thanks.\n.\n;";
    assert_eq!(
        run(script, "S: x\n\nb\n"),
        vec![Action::Reject {
            reason: "No thanks.\n".into(),
            extended: true
        }]
    );
    let store = Store::default();
    let conflict = "require [\"reject\"];\nkeep;\nreject \"no\";";
    assert_eq!(
        run_in(&store, conflict, "S: x\n\nb\n", Envelope { from: "", to: TO }),
        Err(RuntimeError::RejectConflict)
    );
    let twice = "require [\"reject\"];\nreject \"no\";\nreject \"no\";";
    assert_eq!(
        run_in(&store, twice, "S: x\n\nb\n", Envelope { from: "", to: TO }),
        Err(RuntimeError::RejectConflict)
    );
}

/// RFC 6609's example: globals shared with an included script, included twice.
#[test]
fn rfc_6609_include_with_global_variables() {
    let store = Store::with_mailboxes(&["spam-Make money"]).script(
        "subject_tests",
        r#"require ["variables", "include"];
global ["test", "test_mailbox"];
if header :contains "Subject" "${test}" {
    set "test_mailbox" "spam-${test}";
}
"#,
    );
    let script = r#"require ["variables", "include", "relational", "fileinto"];
global "test";
global "test_mailbox";
set "test" "$$";
include "subject_tests";
set "test" "Make money";
include "subject_tests";
if string :count "eq" "${test_mailbox}" "1" {
    fileinto "${test_mailbox}";
    stop;
}
"#;
    let envelope = Envelope {
        from: "a@b.c",
        to: TO,
    };
    let spam = run_in(&store, script, "Subject: Make money fast\n\nb\n", envelope).unwrap();
    assert_eq!(spam.actions, vec![fileinto("spam-Make money")]);
    let ham = run_in(&store, script, "Subject: lunch\n\nb\n", envelope).unwrap();
    assert_eq!(ham.actions, vec![keep()]);
}

#[test]
fn include_once_optional_return_and_stop() {
    let store = Store::with_mailboxes(&["lists"])
        .script("lists", "require [\"fileinto\", \"include\"];\nif exists \"List-Id\" { fileinto \"lists\"; return; }\ndiscard;")
        .script("halt", "stop;")
        .script("flag", "require \"imap4flags\";\naddflag \"$seen-by-include\";");
    let envelope = Envelope {
        from: "a@b.c",
        to: TO,
    };
    let script = "require [\"include\"];\ninclude :once \"lists\";\ninclude :once \"lists\";\ninclude :optional \"missing\";\nkeep;";
    let outcome = run_in(&store, script, "List-Id: <x>\n\nb\n", envelope).unwrap();
    assert_eq!(outcome.actions, vec![fileinto("lists"), keep()]);
    let outcome = run_in(
        &store,
        "require \"include\";\ninclude \"halt\";\ndiscard;",
        "S: x\n\nb\n",
        envelope,
    )
    .unwrap();
    assert_eq!(
        outcome.actions,
        vec![keep()],
        "stop in an included script ends everything"
    );
    let outcome = run_in(
        &store,
        "require [\"include\", \"imap4flags\"];\ninclude \"flag\";",
        "S: x\n\nb\n",
        envelope,
    )
    .unwrap();
    assert_eq!(outcome.actions, vec![keep_flagged(&["$seen-by-include"])]);
}

#[test]
fn include_errors_are_runtime_errors() {
    let envelope = Envelope {
        from: "a@b.c",
        to: TO,
    };
    let store = Store::default()
        .script("a", "require \"include\";\ninclude \"b\";")
        .script("b", "require \"include\";\ninclude \"a\";")
        .script("broken", "if {")
        .script("self", "require \"include\";\ninclude \"active\";");
    let missing = run_in(
        &store,
        "require \"include\";\ninclude \"nope\";",
        "S: x\n\nb\n",
        envelope,
    );
    assert_eq!(missing, Err(RuntimeError::IncludeMissing("nope".into())));
    let looped = run_in(
        &store,
        "require \"include\";\ninclude \"a\";",
        "S: x\n\nb\n",
        envelope,
    );
    assert_eq!(looped, Err(RuntimeError::IncludeLoop("a".into())));
    let itself = run_in(
        &store,
        "require \"include\";\ninclude \"self\";",
        "S: x\n\nb\n",
        envelope,
    );
    assert_eq!(itself, Err(RuntimeError::IncludeLoop("active".into())));
    let broken = run_in(
        &store,
        "require \"include\";\ninclude \"broken\";",
        "S: x\n\nb\n",
        envelope,
    );
    assert!(
        matches!(broken, Err(RuntimeError::IncludeInvalid { ref name, .. }) if name == "broken"),
        "{broken:?}"
    );
    // A chain deeper than the limit, each script a different name.
    let mut deep = Store::default();
    for level in 0..20 {
        deep = deep.script(
            &format!("s{level}"),
            &format!("require \"include\";\ninclude \"s{}\";", level + 1),
        );
    }
    let too_deep = run_in(
        &deep,
        "require \"include\";\ninclude \"s0\";",
        "S: x\n\nb\n",
        envelope,
    );
    assert!(
        matches!(too_deep, Err(RuntimeError::IncludeTooDeep { .. })),
        "{too_deep:?}"
    );
}

#[test]
fn variables_are_bounded_in_length_and_number() {
    use crate::sieve::limits::{MAX_VARIABLES, MAX_VARIABLE_BYTES};
    let mut script = String::from("require [\"variables\", \"reject\"];\nset \"a\" \"0123456789abcdef\";\n");
    for _ in 0..12 {
        script.push_str("set \"a\" \"${a}${a}\";\n");
    }
    script.push_str("set :length \"n\" \"${a}\";\nreject \"${n}\";");
    assert_eq!(
        run(&script, "S: x\n\nb\n"),
        vec![Action::Reject {
            reason: MAX_VARIABLE_BYTES.to_string(),
            extended: false
        }]
    );
    let mut many = String::from("require \"variables\";\n");
    for index in 0..=MAX_VARIABLES {
        many.push_str(&format!("set \"v{index}\" \"x\";\n"));
    }
    let outcome = run_in(
        &Store::default(),
        &many,
        "S: x\n\nb\n",
        Envelope { from: "", to: TO },
    );
    assert_eq!(
        outcome,
        Err(RuntimeError::TooManyVariables { limit: MAX_VARIABLES })
    );
}

#[test]
fn header_values_are_decoded_before_comparison() {
    let script = "if header :contains \"subject\" \"caf\u{e9}\" { discard; }";
    assert_eq!(
        run(script, "Subject: =?ISO-8859-1?Q?Un_caf=E9?=\n\nb\n"),
        vec![Action::Discard]
    );
    assert_eq!(
        run(script, "Subject: =?utf-8?B?VW4gY2Fmw6k=?=\n\nb\n"),
        vec![Action::Discard]
    );
}

#[test]
fn a_script_that_compares_too_much_fails_instead_of_running_long() {
    // A long pattern on a long body: the pattern x value states are over the work limit.
    let pattern = "*a".repeat(40_000);
    let script = format!("require \"body\";\nif body :raw :matches \"{pattern}\" {{ discard; }}");
    let message = format!("Subject: x\n\n{}\n", "a".repeat(200_000));
    let outcome = run_in(
        &Store::default(),
        &script,
        &message,
        Envelope { from: "", to: TO },
    );
    assert_eq!(
        outcome,
        Err(RuntimeError::TooMuchWork {
            limit: crate::sieve::limits::MAX_MATCH_WORK
        })
    );
    // Many cheap tests add up: each compares the whole 200 KB body again.
    let many = "if body :raw :contains \"zzz\" { discard; }\n".repeat(1000);
    let script = format!("require \"body\";\n{many}");
    let outcome = run_in(
        &Store::default(),
        &script,
        &message,
        Envelope { from: "", to: TO },
    );
    assert_eq!(
        outcome,
        Err(RuntimeError::TooMuchWork {
            limit: crate::sieve::limits::MAX_MATCH_WORK
        })
    );
    // A body test decodes the body once per delivery, however many tests look at it.
    let few = "if body :text :contains \"zzz\" { discard; }\n".repeat(20);
    let script = format!("require \"body\";\n{few}");
    let outcome = run_in(
        &Store::default(),
        &script,
        &message,
        Envelope { from: "", to: TO },
    )
    .unwrap();
    assert_eq!(outcome.actions, vec![keep()]);
}

/// The deepest script the limits allow, included as deep as they allow, runs on a thread with a
/// 2 MiB stack (Rust's default for spawned threads) without overflowing it.
#[test]
fn the_deepest_allowed_nesting_fits_a_small_stack() {
    use crate::sieve::limits::{MAX_INCLUDE_DEPTH, MAX_NESTING};
    // Blocks and tests share the nesting limit: 16 nested ifs, each testing a chain of 17 tests
    // (anyof, not, ..., true), reach it exactly at the innermost if.
    let blocks = MAX_NESTING / 2;
    let pairs = (MAX_NESTING - blocks).div_ceil(2);
    let tests = format!("{}true{}", "anyof(not ".repeat(pairs), ")".repeat(pairs));
    let body = |inner: &str| {
        format!(
            "{}{inner}{}",
            format!("if {tests} {{ ").repeat(blocks),
            " }".repeat(blocks)
        )
    };
    let one_deeper = format!("if true {{ {} }}", body("keep;"));
    assert!(compile(one_deeper.as_bytes())
        .unwrap_err()
        .reason
        .contains("nested deeper"));
    let mut store = Store::default();
    for level in 0..MAX_INCLUDE_DEPTH {
        let source = format!(
            "require \"include\";\n{}",
            body(&format!("include \"s{}\";", level + 1))
        );
        store = store.script(&format!("s{level}"), &source);
    }
    store = store.script(&format!("s{MAX_INCLUDE_DEPTH}"), &body("discard;"));
    let top = format!("require \"include\";\n{}", body("include \"s0\";"));
    compile(top.as_bytes()).expect("the deepest allowed script compiles");
    let outcome = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || run_in(&store, &top, "S: x\n\nb\n", Envelope { from: "", to: TO }))
        .unwrap()
        .join()
        .expect("no stack overflow");
    // One level more than the limit allows: the include depth error, not a crash.
    assert!(
        matches!(outcome, Err(RuntimeError::IncludeTooDeep { .. })),
        "{outcome:?}"
    );
}

/// RFC 5232 3.2's hasflag examples: keys and variables are lists of flags, duplicates ignored.
#[test]
fn rfc_5232_hasflag_examples() {
    let yes = |test: &str| {
        let script = format!(
            "require [\"imap4flags\", \"variables\", \"relational\", \"comparator-i;ascii-numeric\"];\n\
             setflag \"A B\";\n\
             set \"MyVar\" \"NonJunk Junk gnus-forward $Forwarded NotJunk JunkRecorded $Junk $NotJunk\";\n\
             set \"Flags\" \"A B C D E F A B C D E F\";\n\
             if {test} {{ discard; }}"
        );
        run(&script, "S: x\n\nb\n") == vec![Action::Discard]
    };
    assert!(yes("hasflag [\"b\", \"A\"]"));
    assert!(yes("hasflag :is \"b A\""));
    assert!(yes("hasflag :contains \"MyVar\" \"Junk\""));
    assert!(yes("hasflag :contains \"MyVar\" \"forward\""));
    assert!(yes("hasflag :contains \"MyVar\" [\"label\", \"forward\"]"));
    assert!(yes("hasflag :contains \"MyVar\" \"junk forward\""));
    assert!(!yes("hasflag :contains \"MyVar\" \"label\""));
    assert!(!yes("hasflag :contains \"MyVar\" [\"label\", \"logger\"]"));
    assert!(!yes("hasflag \"\""));
    assert!(!yes(
        "hasflag :count \"gt\" :comparator \"i;ascii-numeric\" \"Flags\" \"6\""
    ));
    assert!(yes(
        "hasflag :count \"eq\" :comparator \"i;ascii-numeric\" \"Flags\" \"6\""
    ));
    assert!(yes("hasflag :count \"eq\" :comparator \"i;ascii-numeric\" \"2\""));
}

/// RFC 6609 3.5: the `global.` namespace reaches the globals without a `global` command.
#[test]
fn rfc_6609_global_namespace_and_an_empty_mailbox_name() {
    let store = Store::with_mailboxes(&["away"]).script(
        "check",
        "require [\"variables\", \"include\", \"fileinto\"];\nif string :is \"${global.i_am_on_vacation}\" \"1\" { fileinto \"away\"; }",
    );
    let script =
        "require [\"variables\", \"include\"];\nset \"global.i_am_on_vacation\" \"1\";\ninclude \"check\";";
    let outcome = run_in(&store, script, "S: x\n\nb\n", Envelope { from: "", to: TO }).unwrap();
    assert_eq!(outcome.actions, vec![fileinto("away")]);
    let script = "require [\"variables\", \"include\"];\nset \"i_am_on_vacation\" \"1\";\ninclude \"check\";";
    let outcome = run_in(&store, script, "S: x\n\nb\n", Envelope { from: "", to: TO }).unwrap();
    assert_eq!(outcome.actions, vec![keep()], "a local variable is not global");
    let empty = "require [\"variables\", \"fileinto\", \"mailbox\"];\nfileinto :create \"${nothing}\";";
    let outcome = run_in(&store, empty, "S: x\n\nb\n", Envelope { from: "", to: TO }).unwrap();
    assert_eq!(outcome.actions, vec![keep()]);
    assert!(outcome.notes[0].contains("empty mailbox name"));
}
