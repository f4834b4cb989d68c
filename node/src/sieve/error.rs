//! The two ways a script fails: it does not compile (refused at upload, with where and why), or
//! it fails while running on a message (the caller keeps the message in INBOX and logs it).

use std::fmt;

use super::lexer::Position;

/// A script that does not parse or validate: ManageSieve PUTSCRIPT and CHECKSCRIPT show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the offending token (0 when the error is about the whole script).
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    pub reason: String,
}

impl ParseError {
    pub fn at(at: Position, reason: impl Into<String>) -> Self {
        Self {
            line: at.line,
            column: at.column,
            reason: reason.into(),
        }
    }

    pub fn whole(reason: impl Into<String>) -> Self {
        Self {
            line: 0,
            column: 0,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "line {}, column {}: {}", self.line, self.column, self.reason)
        }
    }
}

impl std::error::Error for ParseError {}

/// A failure while a script runs on a message. RFC 5228 2.10.6: the message is then kept as if
/// the script had not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// `include` of a personal script that does not exist (and was not `:optional`).
    IncludeMissing(String),
    /// An included script that does not compile.
    IncludeInvalid {
        name: String,
        error: ParseError,
    },
    /// A script includes itself, directly or through others.
    IncludeLoop(String),
    IncludeTooDeep {
        limit: usize,
    },
    TooManyIncludes {
        limit: usize,
    },
    TooManyActions {
        limit: usize,
    },
    TooManyVariables {
        limit: usize,
    },
    /// The comparisons went over [`super::limits::MAX_MATCH_WORK`].
    TooMuchWork {
        limit: u64,
    },
    /// RFC 5429: reject cannot be combined with keep or fileinto, nor used twice.
    RejectConflict,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IncludeMissing(name) => write!(f, "included script {name:?} does not exist"),
            Self::IncludeInvalid { name, error } => {
                write!(f, "included script {name:?} does not compile: {error}")
            }
            Self::IncludeLoop(name) => write!(f, "script {name:?} includes itself"),
            Self::IncludeTooDeep { limit } => write!(f, "includes nested deeper than {limit}"),
            Self::TooManyIncludes { limit } => write!(f, "more than {limit} includes"),
            Self::TooManyActions { limit } => write!(f, "more than {limit} actions"),
            Self::TooManyVariables { limit } => write!(f, "more than {limit} variables"),
            Self::TooMuchWork { limit } => {
                write!(f, "comparisons over the work limit of {limit} characters")
            }
            Self::RejectConflict => {
                write!(
                    f,
                    "reject cannot be combined with keep, fileinto or another reject"
                )
            }
        }
    }
}

impl std::error::Error for RuntimeError {}
