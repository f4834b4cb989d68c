//! Sieve (RFC 5228) for delivery-time filtering: a pure interpreter, no I/O. The LMTP front end
//! compiles a user's active script and calls [`evaluate`] for each recipient; ManageSieve
//! PUTSCRIPT/CHECKSCRIPT call [`compile`] and show its [`ParseError`] (line, column, reason).
//!
//! - `lexer`: tokens with their line and column;
//! - `parser`: RFC 5228's generic grammar (commands, arguments, tests, blocks);
//! - `validate`: each command's and test's meaning, arguments and `require`d extensions; refuses
//!   redirect and vacation (a node sends no mail) and unknown extensions;
//! - `ast`: the validated script;
//! - `compare`: comparators and match types, with `:matches`' match variables;
//! - `message`: header fields (RFC 2047 decoded), addresses, decoded body parts;
//! - `interpret`: runs a script on a message, giving [`Action`]s and the implicit keep;
//! - `limits`: the bounds a hostile script meets.
//!
//! Supported: exactly [`SIEVE_EXTENSIONS`], the comparators i;octet, i;ascii-casemap and
//! i;ascii-numeric, the match types :is, :contains, :matches and (relational) :count/:value.

mod ast;
mod compare;
mod error;
mod interpret;
mod lexer;
pub mod limits;
mod message;
mod parser;
mod validate;

pub use ast::Script;
pub use error::ParseError;
pub use interpret::{evaluate, Action, Envelope, Environment};
// The interpreter's own tests reach these through the module root; nothing else needs them.
#[cfg(test)]
pub use ast::Extension;
#[cfg(test)]
pub use error::RuntimeError;
#[cfg(test)]
pub use interpret::Outcome;
pub use message::Message;

/// The extensions this interpreter supports, as ManageSieve's CAPABILITY "SIEVE" line lists them.
pub const SIEVE_EXTENSIONS: &[&str] = &[
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "body",
    "variables",
    "copy",
    "mailbox",
    "include",
    "relational",
    "subaddress",
    "imap4flags",
    "comparator-i;ascii-numeric",
];

/// Parses and validates a script. The text must be UTF-8 and at most
/// [`limits::MAX_SCRIPT_BYTES`] long.
pub fn compile(source: &[u8]) -> Result<Script, ParseError> {
    if source.len() > limits::MAX_SCRIPT_BYTES {
        return Err(ParseError::whole(format!(
            "script is {} bytes, over the limit of {}",
            source.len(),
            limits::MAX_SCRIPT_BYTES
        )));
    }
    let text = std::str::from_utf8(source).map_err(|error| {
        let valid = &source[..error.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
        let column = String::from_utf8_lossy(valid.rsplit(|&b| b == b'\n').next().unwrap_or(&[]))
            .chars()
            .count() as u32
            + 1;
        ParseError {
            line,
            column,
            reason: "script is not valid UTF-8".to_string(),
        }
    })?;
    let tokens = lexer::tokenize(text)?;
    let commands = parser::parse(&tokens)?;
    validate::validate(&commands)
}

#[cfg(test)]
mod tests;
