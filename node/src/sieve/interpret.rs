//! Runs a compiled script on one message for one recipient and returns the actions to carry
//! out. Pure: the mailbox list and the user's other scripts come through [`Environment`]; the
//! caller stores, files, rejects. RFC 5228 2.10.2's implicit keep is made explicit: when no
//! fileinto (without :copy), discard, reject or keep cancelled it, the last action is a keep with
//! the flags of imap4flags' internal variable as the script left it.

use std::collections::{BTreeMap, BTreeSet};

use super::ast::{
    AddressPart, BodyTransform, Command, Extension, FlagChange, MatchType, Script, SetModifier, Test,
};
use super::compare::{test_values, Budget, OverBudget};
use super::error::RuntimeError;
use super::limits::{
    MAX_ACTIONS, MAX_INCLUDES, MAX_INCLUDE_DEPTH, MAX_MATCH_WORK, MAX_VARIABLES, MAX_VARIABLE_BYTES,
};
use super::message::Message;

/// The SMTP envelope of the delivery (RFC 5228 5.4): the reverse path (empty for the null
/// sender `<>`) and this recipient's address, with its `+detail` if it had one.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub from: &'a str,
    pub to: &'a str,
}

/// What the interpreter asks of the store, for the recipient whose script runs.
pub trait Environment {
    /// Whether the recipient has a mailbox of this name (`mailboxexists`; fileinto without
    /// `:create` to a missing mailbox keeps the message instead).
    fn mailbox_exists(&self, name: &str) -> bool;
    /// The source of the recipient's personal script of this name (`include`).
    fn personal_script(&self, name: &str) -> Option<Vec<u8>>;
}

/// An action for the caller to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver into INBOX with these flags (explicit keep, or the implicit keep).
    Keep { flags: Vec<String> },
    /// Deliver into `mailbox`, creating it first when `create` (RFC 5490 :create).
    FileInto {
        mailbox: String,
        create: bool,
        copy: bool,
        flags: Vec<String>,
    },
    /// The script discarded the message (it is delivered nowhere unless another action says so).
    Discard,
    /// Refuse the message for this recipient (LMTP 550 with `reason`); `extended` for ereject.
    Reject { reason: String, extended: bool },
}

/// What a run decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub actions: Vec<Action>,
    /// Things worth logging that did not stop the script (a fileinto to a missing mailbox).
    pub notes: Vec<String>,
}

/// Runs `script` (the recipient's active script, named `name`) on `message`.
pub fn evaluate(
    script: &Script,
    name: &str,
    message: &Message<'_>,
    envelope: &Envelope<'_>,
    environment: &dyn Environment,
) -> Result<Outcome, RuntimeError> {
    let mut run = Run {
        message,
        envelope,
        environment,
        actions: Vec::new(),
        notes: Vec::new(),
        implicit_keep: true,
        internal_flags: Vec::new(),
        imap4flags: script.requires(Extension::Imap4Flags),
        globals: BTreeMap::new(),
        include_stack: vec![name.to_string()],
        included: BTreeSet::new(),
        includes: 0,
        budget: Budget::new(MAX_MATCH_WORK),
        bodies: BTreeMap::new(),
    };
    let mut frame = Frame::new(script);
    run.block(&mut frame, &script.commands)?;
    if run.implicit_keep {
        let flags = run.internal_flags.clone();
        run.add(Action::Keep { flags })?;
    }
    Ok(Outcome {
        actions: run.actions,
        notes: run.notes,
    })
}

/// Whether the script goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Next,
    /// `stop`: ends every script.
    Stop,
    /// `return`: ends the current script (RFC 6609).
    Return,
}

/// One script being run: its local variables and match variables.
struct Frame<'s> {
    script: &'s Script,
    variables: BTreeMap<String, String>,
    global_names: BTreeSet<String>,
    matched: Vec<String>,
}

impl<'s> Frame<'s> {
    fn new(script: &'s Script) -> Self {
        Self {
            script,
            variables: BTreeMap::new(),
            global_names: BTreeSet::new(),
            matched: Vec::new(),
        }
    }

    fn has_variables(&self) -> bool {
        self.script.requires(Extension::Variables)
    }
}

struct Run<'r, 'm> {
    message: &'r Message<'m>,
    envelope: &'r Envelope<'r>,
    environment: &'r dyn Environment,
    actions: Vec<Action>,
    notes: Vec<String>,
    implicit_keep: bool,
    /// RFC 5232's internal variable: the flags keep and fileinto use when they have no :flags.
    internal_flags: Vec<String>,
    /// Whether the top-level script uses imap4flags (the implicit keep then carries the flags).
    imap4flags: bool,
    globals: BTreeMap<String, String>,
    include_stack: Vec<String>,
    included: BTreeSet<String>,
    includes: usize,
    budget: Budget,
    /// The body as each transform gave it, decoded once per delivery.
    bodies: BTreeMap<String, Vec<String>>,
}

impl Run<'_, '_> {
    fn block(&mut self, frame: &mut Frame<'_>, commands: &[Command]) -> Result<Flow, RuntimeError> {
        for command in commands {
            let flow = self.command(frame, command)?;
            if flow != Flow::Next {
                return Ok(flow);
            }
        }
        Ok(Flow::Next)
    }

    fn command(&mut self, frame: &mut Frame<'_>, command: &Command) -> Result<Flow, RuntimeError> {
        match command {
            Command::If { branches, otherwise } => {
                for (test, block) in branches {
                    if self.test(frame, test)? {
                        return self.block(frame, block);
                    }
                }
                if let Some(block) = otherwise {
                    return self.block(frame, block);
                }
            }
            Command::Stop => return Ok(Flow::Stop),
            Command::Return => return Ok(Flow::Return),
            Command::Keep { flags } => {
                let flags = self.flags_for(frame, flags.as_deref());
                self.implicit_keep = false;
                self.add(Action::Keep { flags })?;
            }
            Command::Discard => {
                self.implicit_keep = false;
                if !self.actions.contains(&Action::Discard) {
                    self.add(Action::Discard)?;
                }
            }
            Command::FileInto {
                mailbox,
                copy,
                create,
                flags,
            } => {
                let mailbox = self.expand(frame, mailbox);
                let flags = self.flags_for(frame, flags.as_deref());
                if !copy {
                    self.implicit_keep = false;
                }
                if mailbox.eq_ignore_ascii_case("INBOX") {
                    self.add(Action::Keep { flags })?;
                } else if mailbox.is_empty() {
                    self.notes
                        .push("fileinto an empty mailbox name: kept in INBOX instead".to_string());
                    self.add(Action::Keep { flags })?;
                } else if *create || self.environment.mailbox_exists(&mailbox) {
                    self.add(Action::FileInto {
                        mailbox,
                        create: *create,
                        copy: *copy,
                        flags,
                    })?;
                } else {
                    self.notes.push(format!(
                        "fileinto {mailbox:?}: no such mailbox, kept in INBOX instead"
                    ));
                    self.add(Action::Keep { flags })?;
                }
            }
            Command::Reject { reason, extended } => {
                let reason = self.expand(frame, reason);
                self.implicit_keep = false;
                self.add(Action::Reject {
                    reason,
                    extended: *extended,
                })?;
            }
            Command::Set {
                name,
                value,
                modifiers,
            } => {
                let mut value = self.expand(frame, value);
                for modifier in modifiers {
                    value = apply_modifier(*modifier, &value);
                }
                self.set_variable(frame, name, value)?;
            }
            Command::Flags {
                change,
                variable,
                flags,
            } => {
                let given = normalize_flags(flags.iter().map(|f| self.expand(frame, f)));
                let current = match variable {
                    Some(name) => split_flags(&self.variable(frame, name)),
                    None => self.internal_flags.clone(),
                };
                let updated = match change {
                    FlagChange::Set => given,
                    FlagChange::Add => normalize_flags(current.into_iter().chain(given)),
                    FlagChange::Remove => current
                        .into_iter()
                        .filter(|flag| !given.iter().any(|g| g.eq_ignore_ascii_case(flag)))
                        .collect(),
                };
                match variable {
                    Some(name) => self.set_variable(frame, name, updated.join(" "))?,
                    None => self.internal_flags = updated,
                }
            }
            Command::Include { name, once, optional } => return self.include(name, *once, *optional),
            Command::Global { names } => {
                for name in names {
                    frame.global_names.insert(name.clone());
                }
            }
        }
        Ok(Flow::Next)
    }

    fn include(&mut self, name: &str, once: bool, optional: bool) -> Result<Flow, RuntimeError> {
        if once && self.included.contains(name) {
            return Ok(Flow::Next);
        }
        if self.include_stack.iter().any(|running| running == name) {
            return Err(RuntimeError::IncludeLoop(name.to_string()));
        }
        if self.include_stack.len() > MAX_INCLUDE_DEPTH {
            return Err(RuntimeError::IncludeTooDeep {
                limit: MAX_INCLUDE_DEPTH,
            });
        }
        self.includes += 1;
        if self.includes > MAX_INCLUDES {
            return Err(RuntimeError::TooManyIncludes { limit: MAX_INCLUDES });
        }
        let Some(source) = self.environment.personal_script(name) else {
            if optional {
                return Ok(Flow::Next);
            }
            return Err(RuntimeError::IncludeMissing(name.to_string()));
        };
        let script = super::compile(&source).map_err(|error| RuntimeError::IncludeInvalid {
            name: name.to_string(),
            error,
        })?;
        self.included.insert(name.to_string());
        self.include_stack.push(name.to_string());
        let mut frame = Frame::new(&script);
        let flow = self.block(&mut frame, &script.commands);
        self.include_stack.pop();
        Ok(match flow? {
            Flow::Stop => Flow::Stop,
            Flow::Next | Flow::Return => Flow::Next,
        })
    }

    /// Records an action, checking RFC 5429's rule that reject goes with no delivery, and
    /// dropping a second delivery to the same mailbox (RFC 5228 4.2: one copy per mailbox).
    fn add(&mut self, action: Action) -> Result<(), RuntimeError> {
        let delivers = |a: &Action| matches!(a, Action::Keep { .. } | Action::FileInto { .. });
        let rejects = |a: &Action| matches!(a, Action::Reject { .. });
        if (rejects(&action) && self.actions.iter().any(|a| delivers(a) || rejects(a)))
            || (delivers(&action) && self.actions.iter().any(rejects))
        {
            return Err(RuntimeError::RejectConflict);
        }
        let duplicate = self.actions.iter().any(|existing| match (existing, &action) {
            (Action::Keep { .. }, Action::Keep { .. }) => true,
            (Action::FileInto { mailbox: a, .. }, Action::FileInto { mailbox: b, .. }) => a == b,
            _ => false,
        });
        if duplicate {
            return Ok(());
        }
        if self.actions.len() >= MAX_ACTIONS {
            return Err(RuntimeError::TooManyActions { limit: MAX_ACTIONS });
        }
        self.actions.push(action);
        Ok(())
    }

    /// The flags of a keep or fileinto: its `:flags`, else the internal variable (RFC 5232 5).
    fn flags_for(&self, frame: &Frame<'_>, flags: Option<&[String]>) -> Vec<String> {
        match flags {
            Some(flags) => normalize_flags(flags.iter().map(|f| self.expand(frame, f))),
            None if self.imap4flags || frame.script.requires(Extension::Imap4Flags) => {
                self.internal_flags.clone()
            }
            None => Vec::new(),
        }
    }

    fn test(&mut self, frame: &mut Frame<'_>, test: &Test) -> Result<bool, RuntimeError> {
        Ok(match test {
            Test::True => true,
            Test::False => false,
            Test::Not(inner) => !self.test(frame, inner)?,
            Test::AllOf(tests) => {
                for inner in tests {
                    if !self.test(frame, inner)? {
                        return Ok(false);
                    }
                }
                true
            }
            Test::AnyOf(tests) => {
                for inner in tests {
                    if self.test(frame, inner)? {
                        return Ok(true);
                    }
                }
                false
            }
            Test::Header {
                comparison,
                names,
                keys,
            } => {
                let values: Vec<String> = names
                    .iter()
                    .flat_map(|name| self.message.header_values(&self.expand(frame, name)))
                    .collect();
                self.compare(frame, *comparison, &values, keys)?
            }
            Test::Address {
                comparison,
                part,
                names,
                keys,
            } => {
                let values: Vec<String> = names
                    .iter()
                    .flat_map(|name| self.message.addresses(&self.expand(frame, name)))
                    .filter_map(|address| address_part(&address, *part))
                    .collect();
                self.compare(frame, *comparison, &values, keys)?
            }
            Test::Envelope {
                comparison,
                part,
                names,
                keys,
            } => {
                let mut values = Vec::new();
                for name in names {
                    let name = self.expand(frame, name).to_ascii_lowercase();
                    let address = match name.as_str() {
                        "from" => self.envelope.from,
                        "to" => self.envelope.to,
                        _ => continue,
                    };
                    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
                    if address.is_empty() {
                        // RFC 5228 5.4: the null reverse path is the empty string, whatever the part.
                        values.push(String::new());
                    } else if let Some(value) = address_part(address, *part) {
                        values.push(value);
                    }
                }
                self.compare(frame, *comparison, &values, keys)?
            }
            Test::Exists { names } => names
                .iter()
                .all(|name| self.message.has_header(&self.expand(frame, name))),
            Test::Size { over, limit } => {
                if *over {
                    self.message.size() > *limit
                } else {
                    self.message.size() < *limit
                }
            }
            Test::Body {
                comparison,
                transform,
                keys,
            } => {
                let (cache_key, types) = match transform {
                    BodyTransform::Raw => ("raw".to_string(), None),
                    BodyTransform::Text => ("text".to_string(), Some(vec!["text".to_string()])),
                    BodyTransform::Content(types) => {
                        let types: Vec<String> = types.iter().map(|t| self.expand(frame, t)).collect();
                        (format!("content:{}", types.join("\n")), Some(types))
                    }
                };
                if !self.bodies.contains_key(&cache_key) {
                    let values = match types {
                        None => vec![self.message.raw_body()],
                        Some(types) => self.message.body_parts(&types),
                    };
                    let decoded: u64 = values.iter().map(|v| v.len() as u64).sum();
                    self.budget.charge(decoded.max(1)).map_err(over_budget)?;
                    self.bodies.insert(cache_key.clone(), values);
                }
                let keys: Vec<String> = keys.iter().map(|k| self.expand(frame, k)).collect();
                // The body sets no match variables: bodies are large and RFC 5173 does not ask it.
                test_values(
                    *comparison,
                    &self.bodies[&cache_key],
                    &keys,
                    None,
                    &mut self.budget,
                )
                .map_err(over_budget)?
            }
            Test::String {
                comparison,
                sources,
                keys,
            } => {
                let mut values: Vec<String> = sources.iter().map(|s| self.expand(frame, s)).collect();
                if matches!(comparison.match_type, MatchType::Count(_)) {
                    // RFC 5229 5: :count counts the strings that are not empty.
                    values.retain(|v| !v.is_empty());
                }
                self.compare(frame, *comparison, &values, keys)?
            }
            Test::MailboxExists { names } => names
                .iter()
                .all(|name| self.environment.mailbox_exists(&self.expand(frame, name))),
            Test::HasFlag {
                comparison,
                variables,
                keys,
            } => {
                let values: Vec<String> = if variables.is_empty() {
                    self.internal_flags.clone()
                } else {
                    variables
                        .iter()
                        .flat_map(|name| split_flags(&self.variable(frame, name)))
                        .collect()
                };
                // Each variable's flags once (RFC 5232 3: duplicates are ignored, :count too).
                let values = normalize_flags(values);
                // The keys are lists of flags too: "b A" is the flags b and A.
                let keys: Vec<String> = keys
                    .iter()
                    .flat_map(|k| split_flags(&self.expand(frame, k)))
                    .collect();
                self.compare_expanded(frame, *comparison, &values, keys)?
            }
        })
    }

    /// Compares with the keys expanded, setting the match variables on a `:matches` success.
    fn compare(
        &mut self,
        frame: &mut Frame<'_>,
        comparison: super::ast::Comparison,
        values: &[String],
        keys: &[String],
    ) -> Result<bool, RuntimeError> {
        let keys: Vec<String> = keys.iter().map(|k| self.expand(frame, k)).collect();
        self.compare_expanded(frame, comparison, values, keys)
    }

    fn compare_expanded(
        &mut self,
        frame: &mut Frame<'_>,
        comparison: super::ast::Comparison,
        values: &[String],
        keys: Vec<String>,
    ) -> Result<bool, RuntimeError> {
        if frame.has_variables() && comparison.match_type == MatchType::Matches {
            let mut captured = Vec::new();
            let matched = test_values(comparison, values, &keys, Some(&mut captured), &mut self.budget)
                .map_err(over_budget)?;
            if matched {
                frame.matched = captured.into_iter().map(truncate).collect();
            }
            Ok(matched)
        } else {
            test_values(comparison, values, &keys, None, &mut self.budget).map_err(over_budget)
        }
    }

    fn variable(&self, frame: &Frame<'_>, name: &str) -> String {
        let name = name.to_ascii_lowercase();
        if let Some(global) = name.strip_prefix("global.") {
            return self.globals.get(global).cloned().unwrap_or_default();
        }
        if frame.global_names.contains(&name) {
            return self.globals.get(&name).cloned().unwrap_or_default();
        }
        frame.variables.get(&name).cloned().unwrap_or_default()
    }

    fn set_variable(&mut self, frame: &mut Frame<'_>, name: &str, value: String) -> Result<(), RuntimeError> {
        let value = truncate(value);
        let (scope, key) = if let Some(global) = name.strip_prefix("global.") {
            (&mut self.globals, global)
        } else if frame.global_names.contains(name) {
            (&mut self.globals, name)
        } else {
            (&mut frame.variables, name)
        };
        if !scope.contains_key(key) && scope.len() >= MAX_VARIABLES {
            return Err(RuntimeError::TooManyVariables { limit: MAX_VARIABLES });
        }
        scope.insert(key.to_string(), value);
        Ok(())
    }

    /// RFC 5229 3: `${name}` and `${N}` are replaced when the script uses variables; a reference
    /// that is not well formed stays as written, an unknown variable is empty.
    fn expand(&self, frame: &Frame<'_>, text: &str) -> String {
        if !frame.has_variables() || !text.contains("${") {
            return text.to_string();
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let reference = after.find('}').map(|end| (&after[..end], end));
            match reference {
                Some((name, end)) if is_reference(name) => {
                    if name.bytes().all(|b| b.is_ascii_digit()) {
                        let index: usize = name.parse().unwrap_or(usize::MAX);
                        out.push_str(frame.matched.get(index).map_or("", String::as_str));
                    } else {
                        out.push_str(&self.variable(frame, name));
                    }
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = after;
                }
            }
            if out.len() > MAX_VARIABLE_BYTES * 16 {
                break;
            }
        }
        out.push_str(rest);
        out
    }
}

fn over_budget(_: OverBudget) -> RuntimeError {
    RuntimeError::TooMuchWork {
        limit: MAX_MATCH_WORK,
    }
}

/// A variable reference's name: digits, or identifiers joined by dots (`global.name`).
fn is_reference(name: &str) -> bool {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    !name.is_empty()
        && name.split('.').all(|piece| {
            let mut chars = piece.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn truncate(mut value: String) -> String {
    if value.len() > MAX_VARIABLE_BYTES {
        let mut end = MAX_VARIABLE_BYTES;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

fn apply_modifier(modifier: SetModifier, value: &str) -> String {
    match modifier {
        SetModifier::Lower => value.to_lowercase(),
        SetModifier::Upper => value.to_uppercase(),
        SetModifier::LowerFirst | SetModifier::UpperFirst => {
            let mut chars = value.chars();
            match chars.next() {
                Some(first) if modifier == SetModifier::LowerFirst => {
                    first.to_lowercase().chain(chars).collect()
                }
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        }
        SetModifier::QuoteWildcard => {
            let mut out = String::with_capacity(value.len());
            for c in value.chars() {
                if matches!(c, '*' | '?' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
        SetModifier::Length => value.chars().count().to_string(),
    }
}

/// RFC 5232 3: a list of flags is the space-separated flags of every string, each once (flag
/// names are case-insensitive; the first spelling is kept).
fn normalize_flags(strings: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut flags: Vec<String> = Vec::new();
    for string in strings {
        for flag in string.split_whitespace() {
            if !flags.iter().any(|f| f.eq_ignore_ascii_case(flag)) {
                flags.push(flag.to_string());
            }
        }
    }
    flags
}

fn split_flags(value: &str) -> Vec<String> {
    normalize_flags([value.to_string()])
}

/// The part of `local@domain` an address test compares; `None` when RFC 5233's `:detail` has
/// nothing to compare (no `+` in the local part).
fn address_part(address: &str, part: AddressPart) -> Option<String> {
    let (local, domain) = match address.rsplit_once('@') {
        Some((local, domain)) => (local, domain),
        None => (address, ""),
    };
    match part {
        AddressPart::All => Some(address.to_string()),
        AddressPart::LocalPart => Some(local.to_string()),
        AddressPart::Domain => Some(domain.to_string()),
        AddressPart::User => Some(local.split_once('+').map_or(local, |(user, _)| user).to_string()),
        AddressPart::Detail => local.split_once('+').map(|(_, detail)| detail.to_string()),
    }
}
