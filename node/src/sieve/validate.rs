//! Gives the generic syntax tree its meaning: checks each command and test name, its tagged and
//! positional arguments, that every extension used was `require`d, and refuses what a mailmesh
//! node cannot do (redirect, vacation: they send mail) with the reason.

use std::collections::BTreeSet;

use super::ast::{
    AddressPart, BodyTransform, Command, Comparator, Comparison, Extension, FlagChange, MatchType, Relation,
    Script, SetModifier, Test,
};
use super::error::ParseError;
use super::lexer::Position;
use super::parser::{Argument, GenericCommand, GenericTest};

/// Extensions other implementations offer that a mailmesh node refuses, with the reason.
fn refused_extension(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    Some(match lower.as_str() {
        "vacation" | "vacation-seconds" => {
            "vacation needs outgoing mail, which a mailmesh node does not send"
        }
        "redirect" | "enotify" | "notify" => {
            "sending mail (redirect, notifications) needs outgoing mail, which a mailmesh node does not send"
        }
        "regex" => "the regex match type is not supported (use :matches)",
        _ => return None,
    })
}

pub fn validate(commands: &[GenericCommand]) -> Result<Script, ParseError> {
    let mut validator = Validator {
        extensions: BTreeSet::new(),
    };
    let mut index = 0;
    while let Some(command) = commands.get(index).filter(|c| c.name == "require") {
        validator.require(command)?;
        index += 1;
    }
    let commands = validator.block(&commands[index..])?;
    Ok(Script {
        extensions: validator.extensions,
        commands,
    })
}

struct Validator {
    extensions: BTreeSet<Extension>,
}

/// The tagged arguments of one command or test, collected and checked against what it accepts.
#[derive(Default)]
struct Tags {
    comparator: Option<Comparator>,
    match_type: Option<MatchType>,
    address_part: Option<AddressPart>,
    transform: Option<BodyTransform>,
    flags: Option<Vec<String>>,
    modifiers: Vec<SetModifier>,
    plain: BTreeSet<String>,
}

/// Which tags a command or test accepts.
#[derive(Clone, Copy, Default)]
struct Accepts {
    comparison: bool,
    address_part: bool,
    transform: bool,
    flags: bool,
    modifiers: bool,
    plain: &'static [&'static str],
}

impl Validator {
    fn need(&self, extension: Extension, at: Position, what: &str) -> Result<(), ParseError> {
        if self.extensions.contains(&extension) {
            Ok(())
        } else {
            Err(ParseError::at(
                at,
                format!("{what} requires \"{}\" (add it to require)", extension.name()),
            ))
        }
    }

    fn require(&mut self, command: &GenericCommand) -> Result<(), ParseError> {
        if command.block.is_some() || !command.tests.is_empty() {
            return Err(ParseError::at(command.at, "require takes only a string list"));
        }
        let [Argument::Strings { values, .. }] = command.arguments.as_slice() else {
            return Err(ParseError::at(command.at, "require takes one string list"));
        };
        for name in values {
            if let Some(reason) = refused_extension(name) {
                return Err(ParseError::at(
                    command.at,
                    format!("require \"{name}\": {reason}"),
                ));
            }
            if name.eq_ignore_ascii_case("comparator-i;octet")
                || name.eq_ignore_ascii_case("comparator-i;ascii-casemap")
            {
                continue;
            }
            match Extension::from_name(name) {
                Some(extension) => {
                    self.extensions.insert(extension);
                }
                None => {
                    return Err(ParseError::at(
                        command.at,
                        format!("unsupported extension \"{name}\""),
                    ));
                }
            }
        }
        Ok(())
    }

    fn block(&self, commands: &[GenericCommand]) -> Result<Vec<Command>, ParseError> {
        let mut out = Vec::new();
        let mut index = 0;
        while index < commands.len() {
            let command = &commands[index];
            index += 1;
            match command.name.as_str() {
                "if" => {
                    let mut branches = vec![self.branch(command)?];
                    let mut otherwise = None;
                    while let Some(next) = commands.get(index) {
                        match next.name.as_str() {
                            "elsif" => branches.push(self.branch(next)?),
                            "else" => {
                                self.no_arguments(next)?;
                                otherwise = Some(self.body(next)?);
                                index += 1;
                                break;
                            }
                            _ => break,
                        }
                        index += 1;
                    }
                    out.push(Command::If { branches, otherwise });
                }
                "elsif" | "else" => {
                    return Err(ParseError::at(
                        command.at,
                        format!("{} without a preceding if", command.name),
                    ));
                }
                "require" => {
                    return Err(ParseError::at(
                        command.at,
                        "require must come before any other command",
                    ));
                }
                _ => out.push(self.simple(command)?),
            }
        }
        Ok(out)
    }

    fn branch(&self, command: &GenericCommand) -> Result<(Test, Vec<Command>), ParseError> {
        if !command.arguments.is_empty() {
            return Err(ParseError::at(
                command.at,
                format!("{} takes a test, not arguments", command.name),
            ));
        }
        let test = match command.tests.as_slice() {
            [test] if !command.test_list => self.test(test)?,
            _ => {
                return Err(ParseError::at(
                    command.at,
                    format!("{} takes exactly one test", command.name),
                ))
            }
        };
        Ok((test, self.body(command)?))
    }

    fn body(&self, command: &GenericCommand) -> Result<Vec<Command>, ParseError> {
        match &command.block {
            Some(block) => self.block(block),
            None => Err(ParseError::at(
                command.at,
                format!("{} needs a block {{ ... }}", command.name),
            )),
        }
    }

    fn no_arguments(&self, command: &GenericCommand) -> Result<(), ParseError> {
        if command.arguments.is_empty() && command.tests.is_empty() {
            Ok(())
        } else {
            Err(ParseError::at(
                command.at,
                format!("{} takes no arguments", command.name),
            ))
        }
    }

    /// A command that ends with `;`.
    fn simple(&self, command: &GenericCommand) -> Result<Command, ParseError> {
        let name = command.name.as_str();
        let at = command.at;
        if command.block.is_some() {
            return Err(ParseError::at(at, format!("{name} does not take a block")));
        }
        if !command.tests.is_empty() {
            return Err(ParseError::at(at, format!("{name} does not take a test")));
        }
        let args = command.arguments.as_slice();
        Ok(match name {
            "stop" => {
                self.no_arguments(command)?;
                Command::Stop
            }
            "keep" => {
                let (tags, positional) = self.tags(
                    args,
                    Accepts {
                        flags: true,
                        ..Accepts::default()
                    },
                )?;
                expect_count(name, at, &positional, 0)?;
                Command::Keep { flags: tags.flags }
            }
            "discard" => {
                self.no_arguments(command)?;
                Command::Discard
            }
            "fileinto" => {
                self.need(Extension::FileInto, at, "fileinto")?;
                let accepts = Accepts {
                    flags: true,
                    plain: &["copy", "create"],
                    ..Accepts::default()
                };
                let (tags, positional) = self.tags(args, accepts)?;
                expect_count(name, at, &positional, 1)?;
                Command::FileInto {
                    mailbox: single_string(name, positional[0])?,
                    copy: tags.plain.contains("copy"),
                    create: tags.plain.contains("create"),
                    flags: tags.flags,
                }
            }
            "reject" | "ereject" => {
                let extension = if name == "reject" {
                    Extension::Reject
                } else {
                    Extension::Ereject
                };
                self.need(extension, at, name)?;
                let (_, positional) = self.tags(args, Accepts::default())?;
                expect_count(name, at, &positional, 1)?;
                Command::Reject {
                    reason: single_string(name, positional[0])?,
                    extended: name == "ereject",
                }
            }
            "set" => {
                self.need(Extension::Variables, at, "set")?;
                let (tags, positional) = self.tags(
                    args,
                    Accepts {
                        modifiers: true,
                        ..Accepts::default()
                    },
                )?;
                expect_count(name, at, &positional, 2)?;
                let variable = single_string(name, positional[0])?;
                check_settable_name(&variable, positional[0].at())?;
                let mut modifiers = tags.modifiers;
                modifiers.sort_by_key(|m| std::cmp::Reverse(m.precedence()));
                Command::Set {
                    name: variable.to_ascii_lowercase(),
                    value: single_string(name, positional[1])?,
                    modifiers,
                }
            }
            "setflag" | "addflag" | "removeflag" => {
                self.need(Extension::Imap4Flags, at, name)?;
                let change = match name {
                    "setflag" => FlagChange::Set,
                    "addflag" => FlagChange::Add,
                    _ => FlagChange::Remove,
                };
                let (_, positional) = self.tags(args, Accepts::default())?;
                let (variable, flags) = match positional.as_slice() {
                    [flags] => (None, strings(name, flags)?),
                    [variable, flags] => {
                        self.need(Extension::Variables, variable.at(), "a flag variable")?;
                        let variable_name = single_string(name, variable)?;
                        check_settable_name(&variable_name, variable.at())?;
                        (Some(variable_name.to_ascii_lowercase()), strings(name, flags)?)
                    }
                    _ => return Err(ParseError::at(at, format!("{name} takes [variable] flags"))),
                };
                Command::Flags {
                    change,
                    variable,
                    flags,
                }
            }
            "include" => {
                self.need(Extension::Include, at, "include")?;
                let accepts = Accepts {
                    plain: &["personal", "global", "once", "optional"],
                    ..Accepts::default()
                };
                let (tags, positional) = self.tags(args, accepts)?;
                if tags.plain.contains("global") {
                    return Err(ParseError::at(
                        at,
                        "include :global is not supported: only personal scripts can be included",
                    ));
                }
                expect_count(name, at, &positional, 1)?;
                let script = single_string(name, positional[0])?;
                if script.is_empty() || script.contains('/') {
                    return Err(ParseError::at(
                        positional[0].at(),
                        format!("invalid script name {script:?}"),
                    ));
                }
                Command::Include {
                    name: script,
                    once: tags.plain.contains("once"),
                    optional: tags.plain.contains("optional"),
                }
            }
            "return" => {
                self.need(Extension::Include, at, "return")?;
                self.no_arguments(command)?;
                Command::Return
            }
            "global" => {
                self.need(Extension::Include, at, "global")?;
                self.need(Extension::Variables, at, "global")?;
                let (_, positional) = self.tags(args, Accepts::default())?;
                expect_count(name, at, &positional, 1)?;
                let names = strings(name, positional[0])?;
                for variable in &names {
                    check_variable_name(variable, positional[0].at())?;
                }
                Command::Global {
                    names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                }
            }
            "redirect" => {
                return Err(ParseError::at(
                    at,
                    "redirect needs outgoing mail, which a mailmesh node does not send",
                ));
            }
            "vacation" => {
                return Err(ParseError::at(
                    at,
                    "vacation needs outgoing mail, which a mailmesh node does not send",
                ));
            }
            _ => return Err(ParseError::at(at, format!("unknown command \"{name}\""))),
        })
    }

    fn test(&self, test: &GenericTest) -> Result<Test, ParseError> {
        let name = test.name.as_str();
        let at = test.at;
        let args = test.arguments.as_slice();
        if !matches!(name, "not" | "allof" | "anyof") && !test.tests.is_empty() {
            return Err(ParseError::at(at, format!("test {name} does not take tests")));
        }
        let comparison_only = Accepts {
            comparison: true,
            ..Accepts::default()
        };
        Ok(match name {
            "true" | "false" => {
                if !args.is_empty() {
                    return Err(ParseError::at(at, format!("{name} takes no arguments")));
                }
                if name == "true" {
                    Test::True
                } else {
                    Test::False
                }
            }
            "not" => match (args, test.tests.as_slice()) {
                ([], [inner]) if !test.test_list => Test::Not(Box::new(self.test(inner)?)),
                _ => return Err(ParseError::at(at, "not takes exactly one test")),
            },
            "allof" | "anyof" => {
                if !args.is_empty() || !test.test_list {
                    return Err(ParseError::at(at, format!("{name} takes a test list ( ... )")));
                }
                let tests = test
                    .tests
                    .iter()
                    .map(|t| self.test(t))
                    .collect::<Result<Vec<_>, _>>()?;
                if name == "allof" {
                    Test::AllOf(tests)
                } else {
                    Test::AnyOf(tests)
                }
            }
            "header" => {
                let (tags, positional) = self.tags(args, comparison_only)?;
                expect_count(name, at, &positional, 2)?;
                Test::Header {
                    comparison: comparison(&tags),
                    names: strings(name, positional[0])?,
                    keys: strings(name, positional[1])?,
                }
            }
            "address" | "envelope" => {
                if name == "envelope" {
                    self.need(Extension::Envelope, at, "envelope")?;
                }
                let (tags, positional) = self.tags(
                    args,
                    Accepts {
                        comparison: true,
                        address_part: true,
                        ..Accepts::default()
                    },
                )?;
                expect_count(name, at, &positional, 2)?;
                let names = strings(name, positional[0])?;
                let keys = strings(name, positional[1])?;
                let part = tags.address_part.unwrap_or(AddressPart::All);
                if name == "envelope" {
                    for part_name in &names {
                        let known =
                            part_name.eq_ignore_ascii_case("from") || part_name.eq_ignore_ascii_case("to");
                        if !known && !part_name.contains("${") {
                            return Err(ParseError::at(
                                positional[0].at(),
                                format!("unknown envelope part \"{part_name}\" (from and to are known)"),
                            ));
                        }
                    }
                    Test::Envelope {
                        comparison: comparison(&tags),
                        part,
                        names,
                        keys,
                    }
                } else {
                    Test::Address {
                        comparison: comparison(&tags),
                        part,
                        names,
                        keys,
                    }
                }
            }
            "exists" => {
                let (_, positional) = self.tags(args, Accepts::default())?;
                expect_count(name, at, &positional, 1)?;
                Test::Exists {
                    names: strings(name, positional[0])?,
                }
            }
            "size" => {
                let (tags, positional) = self.tags(
                    args,
                    Accepts {
                        plain: &["over", "under"],
                        ..Accepts::default()
                    },
                )?;
                let over = tags.plain.contains("over");
                if over == tags.plain.contains("under") {
                    return Err(ParseError::at(at, "size takes exactly one of :over and :under"));
                }
                match positional.as_slice() {
                    [Argument::Number { value, .. }] => Test::Size { over, limit: *value },
                    _ => return Err(ParseError::at(at, "size takes :over or :under and a number")),
                }
            }
            "body" => {
                self.need(Extension::Body, at, "body")?;
                let (tags, positional) = self.tags(
                    args,
                    Accepts {
                        comparison: true,
                        transform: true,
                        ..Accepts::default()
                    },
                )?;
                expect_count(name, at, &positional, 1)?;
                Test::Body {
                    comparison: comparison(&tags),
                    transform: tags.transform.clone().unwrap_or(BodyTransform::Text),
                    keys: strings(name, positional[0])?,
                }
            }
            "string" => {
                self.need(Extension::Variables, at, "string")?;
                let (tags, positional) = self.tags(args, comparison_only)?;
                expect_count(name, at, &positional, 2)?;
                Test::String {
                    comparison: comparison(&tags),
                    sources: strings(name, positional[0])?,
                    keys: strings(name, positional[1])?,
                }
            }
            "mailboxexists" => {
                self.need(Extension::Mailbox, at, "mailboxexists")?;
                let (_, positional) = self.tags(args, Accepts::default())?;
                expect_count(name, at, &positional, 1)?;
                Test::MailboxExists {
                    names: strings(name, positional[0])?,
                }
            }
            "hasflag" => {
                self.need(Extension::Imap4Flags, at, "hasflag")?;
                let (tags, positional) = self.tags(args, comparison_only)?;
                let (variables, keys) = match positional.as_slice() {
                    [keys] => (Vec::new(), strings(name, keys)?),
                    [variables, keys] => {
                        self.need(Extension::Variables, variables.at(), "hasflag with variables")?;
                        let variables = strings(name, variables)?;
                        for variable in &variables {
                            check_settable_name(variable, at)?;
                        }
                        (
                            variables.iter().map(|v| v.to_ascii_lowercase()).collect(),
                            strings(name, keys)?,
                        )
                    }
                    _ => return Err(ParseError::at(at, "hasflag takes [variables] flags")),
                };
                Test::HasFlag {
                    comparison: comparison(&tags),
                    variables,
                    keys,
                }
            }
            _ => return Err(ParseError::at(at, format!("unknown test \"{name}\""))),
        })
    }

    /// Splits tagged from positional arguments (tags come first, RFC 5228 2.6.2).
    fn tags<'a>(
        &self,
        args: &'a [Argument],
        accepts: Accepts,
    ) -> Result<(Tags, Vec<&'a Argument>), ParseError> {
        let mut tags = Tags::default();
        let mut index = 0;
        while let Some(Argument::Tag { name, at }) = args.get(index) {
            let at = *at;
            index += 1;
            let mut take = |what: &str| -> Result<&'a Argument, ParseError> {
                let value = args.get(index).filter(|a| !matches!(a, Argument::Tag { .. }));
                index += 1;
                value.ok_or_else(|| ParseError::at(at, format!(":{name} must be followed by {what}")))
            };
            let set_match = |tags: &mut Tags, match_type: MatchType| {
                if tags.match_type.replace(match_type).is_some() {
                    Err(ParseError::at(at, "more than one match type"))
                } else {
                    Ok(())
                }
            };
            let set_part = |tags: &mut Tags, part: AddressPart| {
                if tags.address_part.replace(part).is_some() {
                    Err(ParseError::at(at, "more than one address part"))
                } else {
                    Ok(())
                }
            };
            match name.as_str() {
                "comparator" if accepts.comparison => {
                    let value = take("a comparator name")?;
                    let comparator_name = single_string("comparator", value)?;
                    let comparator = match comparator_name.to_ascii_lowercase().as_str() {
                        "i;octet" => Comparator::Octet,
                        "i;ascii-casemap" => Comparator::AsciiCasemap,
                        "i;ascii-numeric" => {
                            self.need(
                                Extension::ComparatorAsciiNumeric,
                                at,
                                "comparator i;ascii-numeric",
                            )?;
                            Comparator::AsciiNumeric
                        }
                        _ => {
                            return Err(ParseError::at(
                                at,
                                format!("unknown comparator \"{comparator_name}\""),
                            ))
                        }
                    };
                    if tags.comparator.replace(comparator).is_some() {
                        return Err(ParseError::at(at, "more than one comparator"));
                    }
                }
                "is" if accepts.comparison => set_match(&mut tags, MatchType::Is)?,
                "contains" if accepts.comparison => set_match(&mut tags, MatchType::Contains)?,
                "matches" if accepts.comparison => set_match(&mut tags, MatchType::Matches)?,
                "regex" if accepts.comparison => {
                    return Err(ParseError::at(
                        at,
                        "the regex match type is not supported (use :matches)",
                    ))
                }
                "count" | "value" if accepts.comparison => {
                    self.need(Extension::Relational, at, &format!(":{name}"))?;
                    let value = take("a relational operator")?;
                    let operator = single_string(name, value)?;
                    let relation = match operator.to_ascii_lowercase().as_str() {
                        "gt" => Relation::Greater,
                        "ge" => Relation::GreaterOrEqual,
                        "lt" => Relation::Less,
                        "le" => Relation::LessOrEqual,
                        "eq" => Relation::Equal,
                        "ne" => Relation::NotEqual,
                        _ => {
                            return Err(ParseError::at(
                                value.at(),
                                format!(
                                    "unknown relational operator \"{operator}\" (gt, ge, lt, le, eq, ne)"
                                ),
                            ))
                        }
                    };
                    let match_type = if name == "count" {
                        MatchType::Count(relation)
                    } else {
                        MatchType::Value(relation)
                    };
                    set_match(&mut tags, match_type)?;
                }
                "all" if accepts.address_part => set_part(&mut tags, AddressPart::All)?,
                "localpart" if accepts.address_part => set_part(&mut tags, AddressPart::LocalPart)?,
                "domain" if accepts.address_part => set_part(&mut tags, AddressPart::Domain)?,
                "user" | "detail" if accepts.address_part => {
                    self.need(Extension::Subaddress, at, &format!(":{name}"))?;
                    set_part(
                        &mut tags,
                        if name == "user" {
                            AddressPart::User
                        } else {
                            AddressPart::Detail
                        },
                    )?;
                }
                "raw" | "text" | "content" if accepts.transform => {
                    let transform = match name.as_str() {
                        "raw" => BodyTransform::Raw,
                        "text" => BodyTransform::Text,
                        _ => BodyTransform::Content(strings("content", take("a list of content types")?)?),
                    };
                    if tags.transform.replace(transform).is_some() {
                        return Err(ParseError::at(at, "more than one body transform"));
                    }
                }
                "flags" if accepts.flags => {
                    self.need(Extension::Imap4Flags, at, ":flags")?;
                    let flags = strings("flags", take("a list of flags")?)?;
                    if tags.flags.replace(flags).is_some() {
                        return Err(ParseError::at(at, ":flags given twice"));
                    }
                }
                "lower" | "upper" | "lowerfirst" | "upperfirst" | "quotewildcard" | "length"
                    if accepts.modifiers =>
                {
                    let modifier = match name.as_str() {
                        "lower" => SetModifier::Lower,
                        "upper" => SetModifier::Upper,
                        "lowerfirst" => SetModifier::LowerFirst,
                        "upperfirst" => SetModifier::UpperFirst,
                        "quotewildcard" => SetModifier::QuoteWildcard,
                        _ => SetModifier::Length,
                    };
                    if tags
                        .modifiers
                        .iter()
                        .any(|m| m.precedence() == modifier.precedence())
                    {
                        return Err(ParseError::at(
                            at,
                            format!(":{name} conflicts with another modifier of the same kind"),
                        ));
                    }
                    tags.modifiers.push(modifier);
                }
                other if accepts.plain.contains(&other) => {
                    match other {
                        "copy" => self.need(Extension::Copy, at, ":copy")?,
                        "create" => self.need(Extension::Mailbox, at, ":create")?,
                        _ => {}
                    }
                    if !tags.plain.insert(other.to_string()) {
                        return Err(ParseError::at(at, format!(":{other} given twice")));
                    }
                }
                other => return Err(ParseError::at(at, format!("unexpected tag :{other}"))),
            }
        }
        let positional: Vec<&Argument> = args[index.min(args.len())..].iter().collect();
        if let Some(tag) = positional.iter().find(|a| matches!(a, Argument::Tag { .. })) {
            return Err(ParseError::at(
                tag.at(),
                "tagged arguments must come before the others",
            ));
        }
        if tags.comparator == Some(Comparator::AsciiNumeric)
            && matches!(tags.match_type, Some(MatchType::Contains | MatchType::Matches))
        {
            return Err(ParseError::at(
                args[0].at(),
                "i;ascii-numeric cannot be used with :contains or :matches",
            ));
        }
        Ok((tags, positional))
    }
}

fn comparison(tags: &Tags) -> Comparison {
    Comparison {
        comparator: tags.comparator.unwrap_or(Comparator::AsciiCasemap),
        match_type: tags.match_type.unwrap_or(MatchType::Is),
    }
}

fn expect_count(name: &str, at: Position, positional: &[&Argument], count: usize) -> Result<(), ParseError> {
    if positional.len() == count {
        Ok(())
    } else {
        Err(ParseError::at(
            at,
            format!(
                "{name} takes {count} positional argument(s), found {}",
                positional.len()
            ),
        ))
    }
}

fn strings(name: &str, argument: &Argument) -> Result<Vec<String>, ParseError> {
    match argument {
        Argument::Strings { values, .. } => Ok(values.clone()),
        other => Err(ParseError::at(
            other.at(),
            format!("{name} expects a string or string list here"),
        )),
    }
}

fn single_string(name: &str, argument: &Argument) -> Result<String, ParseError> {
    match argument {
        Argument::Strings {
            values, list: false, ..
        } => Ok(values[0].clone()),
        Argument::Strings { values, .. } if values.len() == 1 => Ok(values[0].clone()),
        other => Err(ParseError::at(
            other.at(),
            format!("{name} expects a single string here"),
        )),
    }
}

/// A variable name, or RFC 6609's `global.name` for a global variable.
fn check_settable_name(name: &str, at: Position) -> Result<(), ParseError> {
    match name.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("global.") => check_variable_name(&name[7..], at),
        _ => check_variable_name(name, at),
    }
}

/// RFC 5229 variable names: an identifier (match variables `${1}` cannot be set).
fn check_variable_name(name: &str, at: Position) -> Result<(), ParseError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ParseError::at(at, format!("invalid variable name \"{name}\"")))
    }
}
