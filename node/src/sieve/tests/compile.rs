//! Compiling: what is accepted, and the line, column and reason of what is refused.

use crate::sieve::ast::{AddressPart, Command, Comparator, MatchType, Relation, Test};
use crate::sieve::{compile, Extension, ParseError};

#[test]
fn fileinto_targets_and_includes_are_listed_for_upload_warnings() {
    let script = compile(
        br#"require ["fileinto", "include", "mailbox", "variables"];
        fileinto "Top";
        if header :contains "subject" "a" { fileinto "Lists/a"; fileinto :create "Made"; }
        elsif true { include "helper"; include :optional "maybe"; }
        else { if true { fileinto "Deep"; fileinto "Top"; fileinto "${1}"; } }
        "#,
    )
    .unwrap();
    assert_eq!(script.fileinto_without_create(), vec!["Top", "Lists/a", "Deep"]);
    assert_eq!(script.required_includes(), vec!["helper"]);
}

fn refused(source: &str) -> ParseError {
    compile(source.as_bytes()).expect_err("the script should be refused")
}

/// RFC 5228 section 9.1, the example filter, as printed (upper-case `:DOMAIN` and `NOT`).
pub const RFC5228_EXAMPLE: &str = r#"#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"#;

#[test]
fn the_rfc_5228_example_compiles_into_one_if_with_three_branches_and_an_else() {
    let script = compile(RFC5228_EXAMPLE.as_bytes()).unwrap();
    assert!(script.requires(Extension::FileInto));
    let [Command::If {
        branches,
        otherwise: Some(otherwise),
    }] = script.commands.as_slice()
    else {
        panic!("expected one if: {:?}", script.commands);
    };
    assert_eq!(branches.len(), 3);
    assert_eq!(
        branches[1].0,
        Test::Address {
            comparison: crate::sieve::ast::Comparison {
                comparator: Comparator::AsciiCasemap,
                match_type: MatchType::Is
            },
            part: AddressPart::Domain,
            names: vec!["From".into(), "To".into()],
            keys: vec!["example.com".into()],
        }
    );
    assert!(
        matches!(&branches[2].0, Test::AnyOf(tests) if tests.len() == 2 && matches!(tests[0], Test::Not(_)))
    );
    assert_eq!(
        otherwise,
        &vec![Command::FileInto {
            mailbox: "personal".into(),
            copy: false,
            create: false,
            flags: None
        }]
    );
}

#[test]
fn redirect_and_vacation_are_refused_because_a_node_sends_no_mail() {
    let error = refused("require \"vacation\";\nvacation \"away\";");
    assert_eq!((error.line, error.column), (1, 1));
    assert!(
        error
            .reason
            .contains("vacation needs outgoing mail, which a mailmesh node does not send"),
        "{error}"
    );
    let error = refused("if true {\n  redirect \"a@example.com\";\n}");
    assert_eq!((error.line, error.column), (2, 3));
    assert!(error.reason.contains("redirect needs outgoing mail"), "{error}");
    assert!(refused("require [\"fileinto\", \"enotify\"];")
        .reason
        .contains("outgoing mail"));
}

#[test]
fn unknown_extensions_commands_and_tests_are_refused_by_name() {
    assert!(refused("require \"foo\";")
        .reason
        .contains("unsupported extension \"foo\""));
    assert!(refused("require \"regex\";").reason.contains("regex"));
    assert!(refused("frobnicate;")
        .reason
        .contains("unknown command \"frobnicate\""));
    assert!(refused("if frob { keep; }")
        .reason
        .contains("unknown test \"frob\""));
    assert!(refused("if header :regex \"a\" \"b\" { keep; }")
        .reason
        .contains("regex"));
}

#[test]
fn an_extension_used_without_require_is_an_error_naming_it() {
    let error = refused("fileinto \"x\";");
    assert!(error.reason.contains("requires \"fileinto\""), "{error}");
    let error = refused("require \"fileinto\";\nfileinto :copy \"x\";");
    assert_eq!(error.line, 2);
    assert!(error.reason.contains("requires \"copy\""), "{error}");
    assert!(refused("if envelope \"to\" \"a\" { keep; }")
        .reason
        .contains("\"envelope\""));
    assert!(refused("if address :detail \"to\" \"a\" { keep; }")
        .reason
        .contains("\"subaddress\""));
    assert!(refused("if header :count \"gt\" \"to\" \"1\" { keep; }")
        .reason
        .contains("\"relational\""));
    assert!(
        refused("if header :comparator \"i;ascii-numeric\" \"x\" \"1\" { keep; }")
            .reason
            .contains("comparator-i;ascii-numeric")
    );
    assert!(refused("keep :flags \"\\\\Seen\";")
        .reason
        .contains("\"imap4flags\""));
    assert!(refused("set \"a\" \"b\";").reason.contains("\"variables\""));
}

#[test]
fn require_comes_first_and_else_needs_an_if() {
    assert!(refused("keep;\nrequire \"fileinto\";")
        .reason
        .contains("require must come before"));
    assert!(refused("else { keep; }")
        .reason
        .contains("else without a preceding if"));
    assert!(refused("if true { keep; }\nstop;\nelsif true { keep; }")
        .reason
        .contains("elsif without"));
}

#[test]
fn argument_errors_point_at_the_command() {
    let error = refused("keep;\n  discard \"x\";");
    assert_eq!((error.line, error.column), (2, 3));
    assert!(refused("if size 10 { keep; }").reason.contains(":over"));
    assert!(refused("if size :over :under 10 { keep; }")
        .reason
        .contains("exactly one"));
    assert!(refused("if header :is :contains \"a\" \"b\" { keep; }")
        .reason
        .contains("more than one match type"));
    assert!(refused("if header \"a\" { keep; }")
        .reason
        .contains("2 positional"));
    assert!(refused("if header \"a\" :is \"b\" { keep; }")
        .reason
        .contains("before"));
    assert!(refused("if anyof true { keep; }").reason.contains("test list"));
    assert!(refused("if true keep;")
        .reason
        .contains("true does not take tests"));
    assert!(refused("if true { keep; } keep")
        .reason
        .contains("not ended by ';'"));
    assert!(
        refused("require \"envelope\"; if envelope \"auth\" \"x\" { keep; }")
            .reason
            .contains("envelope part")
    );
    assert!(refused("require \"include\"; include :global \"x\";")
        .reason
        .contains(":global"));
    assert!(refused("require \"variables\"; set \"1\" \"x\";")
        .reason
        .contains("variable name"));
    assert!(refused("require [\"relational\", \"comparator-i;ascii-numeric\"];\nif header :contains :comparator \"i;ascii-numeric\" \"x\" \"1\" { keep; }").reason.contains("ascii-numeric"));
    assert!(
        refused("require \"relational\"; if header :value \"xx\" \"a\" \"1\" { keep; }")
            .reason
            .contains("relational operator")
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let error = refused("if true {\n  keep;\n");
    assert_eq!((error.line, error.column), (1, 9));
    assert!(error.reason.contains("never closed"));
    let error = refused("keep;\n}");
    assert_eq!((error.line, error.column), (2, 1));
    let error = refused("keep");
    assert!(error.reason.contains("not ended by ';'"));
    let error = refused("if header [\"a\" \"b\"] \"c\" { keep; }");
    assert_eq!((error.line, error.column), (1, 16));
    assert_eq!(error.to_string(), format!("line 1, column 16: {}", error.reason));
}

#[test]
fn bad_utf8_oversize_and_deep_nesting_are_refused() {
    let error = compile(b"keep;\n# \xff\n").unwrap_err();
    assert_eq!(
        (error.line, error.column, error.reason.as_str()),
        (2, 3, "script is not valid UTF-8")
    );
    let big = format!("# {}\nkeep;", "x".repeat(crate::sieve::limits::MAX_SCRIPT_BYTES));
    assert!(compile(big.as_bytes())
        .unwrap_err()
        .reason
        .contains("over the limit"));
    let deep_blocks = format!("{}keep;{}", "if true {".repeat(40), "}".repeat(40));
    assert!(refused(&deep_blocks).reason.contains("nested deeper"));
    let deep_tests = format!("if {}true {{ keep; }}", "not ".repeat(40));
    assert!(refused(&deep_tests).reason.contains("nested deeper"));
    let deep_lists = format!("if {}true{} {{ keep; }}", "anyof(".repeat(40), ")".repeat(40));
    assert!(refused(&deep_lists).reason.contains("nested deeper"));
}

#[test]
fn extensions_tags_and_relations_are_typed() {
    let script = compile(
        br#"require ["relational", "comparator-i;ascii-numeric", "imap4flags", "variables", "fileinto", "copy", "mailbox"];
if header :value "ge" :comparator "i;ascii-numeric" "X-Priority" "3" {
  fileinto :copy :create :flags ["\\Seen", "$x"] "Low";
}
set :upper :length "n" "${x}";
addflag "v" "a";
"#,
    )
    .unwrap();
    let Command::If { branches, .. } = &script.commands[0] else {
        panic!()
    };
    let Test::Header { comparison, .. } = &branches[0].0 else {
        panic!()
    };
    assert_eq!(comparison.match_type, MatchType::Value(Relation::GreaterOrEqual));
    assert_eq!(comparison.comparator, Comparator::AsciiNumeric);
    assert_eq!(
        branches[0].1,
        vec![Command::FileInto {
            mailbox: "Low".into(),
            copy: true,
            create: true,
            flags: Some(vec!["\\Seen".into(), "$x".into()])
        }]
    );
    // :length (precedence 10) applies after :upper (40).
    let Command::Set { modifiers, .. } = &script.commands[1] else {
        panic!()
    };
    assert_eq!(
        modifiers,
        &vec![
            crate::sieve::ast::SetModifier::Upper,
            crate::sieve::ast::SetModifier::Length
        ]
    );
    assert_eq!(
        script.commands[2],
        Command::Flags {
            change: crate::sieve::ast::FlagChange::Add,
            variable: Some("v".into()),
            flags: vec!["a".into()]
        }
    );
}

#[test]
fn the_capability_list_names_every_extension_the_validator_accepts() {
    for name in crate::sieve::SIEVE_EXTENSIONS {
        compile(format!("require \"{name}\";").as_bytes()).unwrap();
    }
    assert_eq!(crate::sieve::SIEVE_EXTENSIONS.len(), Extension::ALL.len());
}
