//! A validated script: every command and test with its arguments checked and typed. Strings
//! stay as written; with `variables` they are expanded when the script runs.

use std::collections::BTreeSet;

/// The extensions a script may `require` (the ManageSieve CAPABILITY lists the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Extension {
    FileInto,
    Reject,
    Ereject,
    Envelope,
    Body,
    Variables,
    Copy,
    Mailbox,
    Include,
    Relational,
    Subaddress,
    Imap4Flags,
    ComparatorAsciiNumeric,
}

impl Extension {
    pub const ALL: [Extension; 13] = [
        Self::FileInto,
        Self::Reject,
        Self::Ereject,
        Self::Envelope,
        Self::Body,
        Self::Variables,
        Self::Copy,
        Self::Mailbox,
        Self::Include,
        Self::Relational,
        Self::Subaddress,
        Self::Imap4Flags,
        Self::ComparatorAsciiNumeric,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::FileInto => "fileinto",
            Self::Reject => "reject",
            Self::Ereject => "ereject",
            Self::Envelope => "envelope",
            Self::Body => "body",
            Self::Variables => "variables",
            Self::Copy => "copy",
            Self::Mailbox => "mailbox",
            Self::Include => "include",
            Self::Relational => "relational",
            Self::Subaddress => "subaddress",
            Self::Imap4Flags => "imap4flags",
            Self::ComparatorAsciiNumeric => "comparator-i;ascii-numeric",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Octet,
    AsciiCasemap,
    AsciiNumeric,
}

/// RFC 5231's relational operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Equal,
    NotEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    Is,
    Contains,
    Matches,
    Count(Relation),
    Value(Relation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPart {
    All,
    LocalPart,
    Domain,
    /// RFC 5233: the local part before the `+`.
    User,
    /// RFC 5233: the local part after the `+`.
    Detail,
}

/// How a test compares: the comparator and match type of RFC 5228 2.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    pub comparator: Comparator,
    pub match_type: MatchType,
}

/// RFC 5173's body transforms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTransform {
    Raw,
    Content(Vec<String>),
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetModifier {
    Lower,
    Upper,
    LowerFirst,
    UpperFirst,
    QuoteWildcard,
    Length,
}

impl SetModifier {
    /// RFC 5229 4.1: modifiers apply from the highest precedence to the lowest.
    pub fn precedence(self) -> u8 {
        match self {
            Self::Length => 10,
            Self::QuoteWildcard => 20,
            Self::LowerFirst | Self::UpperFirst => 30,
            Self::Lower | Self::Upper => 40,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagChange {
    Set,
    Add,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    True,
    False,
    Not(Box<Test>),
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Header {
        comparison: Comparison,
        names: Vec<String>,
        keys: Vec<String>,
    },
    Address {
        comparison: Comparison,
        part: AddressPart,
        names: Vec<String>,
        keys: Vec<String>,
    },
    Envelope {
        comparison: Comparison,
        part: AddressPart,
        names: Vec<String>,
        keys: Vec<String>,
    },
    Exists {
        names: Vec<String>,
    },
    Size {
        over: bool,
        limit: u64,
    },
    Body {
        comparison: Comparison,
        transform: BodyTransform,
        keys: Vec<String>,
    },
    /// RFC 5229 `string`.
    String {
        comparison: Comparison,
        sources: Vec<String>,
        keys: Vec<String>,
    },
    /// RFC 5490 `mailboxexists`.
    MailboxExists {
        names: Vec<String>,
    },
    /// RFC 5232 `hasflag`; no variables means the internal flags variable.
    HasFlag {
        comparison: Comparison,
        variables: Vec<String>,
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    If {
        branches: Vec<(Test, Vec<Command>)>,
        otherwise: Option<Vec<Command>>,
    },
    Stop,
    Keep {
        flags: Option<Vec<String>>,
    },
    Discard,
    FileInto {
        mailbox: String,
        copy: bool,
        create: bool,
        flags: Option<Vec<String>>,
    },
    Reject {
        reason: String,
        extended: bool,
    },
    Set {
        name: String,
        value: String,
        modifiers: Vec<SetModifier>,
    },
    Flags {
        change: FlagChange,
        variable: Option<String>,
        flags: Vec<String>,
    },
    Include {
        name: String,
        once: bool,
        optional: bool,
    },
    Return,
    Global {
        names: Vec<String>,
    },
}

/// A compiled script, ready to run on any number of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub extensions: BTreeSet<Extension>,
    pub commands: Vec<Command>,
}

impl Script {
    pub fn requires(&self, extension: Extension) -> bool {
        self.extensions.contains(&extension)
    }

    /// The mailboxes `fileinto` without `:create` names, each once, in order; names holding a
    /// variable are left out (their value is known only at delivery). A missing one means the
    /// message is kept in INBOX, which ManageSieve warns about at upload.
    pub fn fileinto_without_create(&self) -> Vec<&str> {
        let mut found = Vec::new();
        walk(&self.commands, &mut |command| {
            if let Command::FileInto {
                mailbox,
                create: false,
                ..
            } = command
            {
                if !mailbox.contains("${") && !found.contains(&mailbox.as_str()) {
                    found.push(mailbox.as_str());
                }
            }
        });
        found
    }

    /// The personal scripts `include` without `:optional` names, each once, in order (a missing
    /// one is a run-time error at delivery).
    pub fn required_includes(&self) -> Vec<&str> {
        let mut found = Vec::new();
        walk(&self.commands, &mut |command| {
            if let Command::Include {
                name,
                optional: false,
                ..
            } = command
            {
                if !name.contains("${") && !found.contains(&name.as_str()) {
                    found.push(name.as_str());
                }
            }
        });
        found
    }
}

/// Every command of `commands`, those inside `if` blocks included.
fn walk<'a>(commands: &'a [Command], visit: &mut impl FnMut(&'a Command)) {
    for command in commands {
        visit(command);
        if let Command::If { branches, otherwise } = command {
            for (_, block) in branches {
                walk(block, visit);
            }
            if let Some(block) = otherwise {
                walk(block, visit);
            }
        }
    }
}
