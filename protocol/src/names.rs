//! Validation of the names users and operators choose: user names, mailbox names, IMAP flags,
//! sieve script names, annotation entries. Each check returns a [`NameError`] that says what is
//! wrong in words an operator can act on.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The hierarchy separator of mailbox names.
pub const HIERARCHY_SEPARATOR: char = '/';
/// Longest mailbox name, in bytes (Cyrus allows about 490; IMAP clients cope with this).
pub const MAX_MAILBOX_NAME: usize = 490;
/// Longest user name, in bytes.
pub const MAX_USER_NAME: usize = 128;
/// Longest flag, in bytes.
pub const MAX_FLAG: usize = 128;
/// Longest sieve script name, in bytes (RFC 5804 leaves it to the server).
pub const MAX_SCRIPT_NAME: usize = 128;
/// Longest annotation entry name, in bytes.
pub const MAX_ANNOTATION_ENTRY: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid node id {name:?}: {reason}")]
    NodeId { name: String, reason: &'static str },
    #[error("invalid user name {name:?}: {reason}")]
    User { name: String, reason: &'static str },
    #[error("invalid mailbox name {name:?}: {reason}")]
    Mailbox { name: String, reason: &'static str },
    #[error("invalid flag {flag:?}: {reason}")]
    Flag { flag: String, reason: &'static str },
    #[error("invalid sieve script name {name:?}: {reason}")]
    Script { name: String, reason: &'static str },
    #[error("invalid annotation entry {entry:?}: {reason}")]
    Annotation { entry: String, reason: &'static str },
}

/// A user name: 1 to 128 bytes of `a-z 0-9 . _ - + @`. Lower case only, so that two spellings of
/// one user can never become two users on two nodes.
pub fn validate_user(name: &str) -> Result<(), NameError> {
    let err = |reason| NameError::User {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_USER_NAME {
        return Err(err("must be 1 to 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-+@".contains(&b))
    {
        return Err(err("may contain only a-z, 0-9 and . _ - + @"));
    }
    Ok(())
}

/// Normalises and checks a mailbox name. `INBOX` is case-insensitive in IMAP, as is its first
/// component (`inbox/Work` is `INBOX/Work`); everything else is case-sensitive UTF-8.
pub fn normalize_mailbox_name(name: &str) -> Result<String, NameError> {
    let err = |reason| NameError::Mailbox {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(err("is empty"));
    }
    if name.len() > MAX_MAILBOX_NAME {
        return Err(err("is longer than 490 bytes"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(err("contains a control character"));
    }
    if name.contains(['*', '%']) {
        return Err(err("contains an IMAP wildcard (* or %)"));
    }
    let mut parts = Vec::new();
    for (i, part) in name.split(HIERARCHY_SEPARATOR).enumerate() {
        if part.is_empty() {
            return Err(err(
                "has an empty hierarchy level (leading, trailing or doubled '/')",
            ));
        }
        if part == "." || part == ".." {
            return Err(err("has a '.' or '..' hierarchy level"));
        }
        if i == 0 && part.eq_ignore_ascii_case("INBOX") {
            parts.push("INBOX");
        } else {
            parts.push(part);
        }
    }
    Ok(parts.join("/"))
}

/// An IMAP flag: a system flag (`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`), stored
/// in its canonical case, or a keyword made of IMAP atom characters.
///
/// Shared, not copied, like [`crate::ids::NodeId`]: a record's flags are cloned at every merge.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flag(Arc<str>);

impl Flag {
    pub const SYSTEM: [&'static str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

    pub fn new(flag: &str) -> Result<Self, NameError> {
        let err = |reason| NameError::Flag {
            flag: flag.to_string(),
            reason,
        };
        // The canonical spelling of a system flag, as every record stores it: no check needed.
        if let Some(at) = Self::SYSTEM.iter().position(|s| *s == flag) {
            return Ok(system_flags()[at].clone());
        }
        if flag.is_empty() || flag.len() > MAX_FLAG {
            return Err(err("must be 1 to 128 bytes"));
        }
        if let Some(rest) = flag.strip_prefix('\\') {
            if rest.eq_ignore_ascii_case("Recent") {
                return Err(err("\\Recent is session state and cannot be stored"));
            }
            return match Self::SYSTEM
                .iter()
                .position(|s| s[1..].eq_ignore_ascii_case(rest))
            {
                Some(at) => Ok(system_flags()[at].clone()),
                None => Err(err(
                    "is not a system flag (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                )),
            };
        }
        if !flag.bytes().all(is_atom_char) {
            return Err(err(
                "is not an IMAP atom (no spaces, controls, non-ASCII or ( ) { % * \" \\ ])",
            ));
        }
        Ok(Flag(flag.into()))
    }

    pub fn seen() -> Self {
        system_flags()[3].clone()
    }

    pub fn deleted() -> Self {
        system_flags()[2].clone()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The system flags, in [`Flag::SYSTEM`]'s order, made once: every record read from the store or
/// the wire names some, and a shared copy is a reference count where a new one was an
/// allocation (and later a free) per flag per record.
fn system_flags() -> &'static [Flag; 5] {
    static SYSTEM: OnceLock<[Flag; 5]> = OnceLock::new();
    SYSTEM.get_or_init(|| Flag::SYSTEM.map(|name| Flag(name.into())))
}

impl TryFrom<String> for Flag {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Flag::new(&value)
    }
}

impl From<Flag> for String {
    fn from(value: Flag) -> Self {
        value.0.to_string()
    }
}

impl Serialize for Flag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "an IMAP flag", |s: &str| Flag::new(s))
    }
}

/// Deserializes a string (borrowed when the input allows, as text or as UTF-8 bytes, which is
/// what `String` accepts) and checks it with `check`: the encoding is a plain string either way,
/// with no copy before the check.
pub(crate) fn checked_str<'de, D, T, S>(deserializer: D, what: &'static str, check: S) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    S: Fn(&str) -> Result<T, NameError>,
{
    struct Checked<S> {
        what: &'static str,
        check: S,
    }
    impl<T, S: Fn(&str) -> Result<T, NameError>> de::Visitor<'_> for Checked<S> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.what)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.check)(v).map_err(E::custom)
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<T, E> {
            match std::str::from_utf8(v) {
                Ok(s) => self.visit_str(s),
                Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(v), &self)),
            }
        }
    }
    deserializer.deserialize_str(Checked { what, check })
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flag({})", self.0)
    }
}

/// RFC 3501 ATOM-CHAR: any CHAR except atom-specials.
fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b)
}

/// A sieve script name: 1 to 128 bytes of UTF-8 without control characters or '/'.
pub fn validate_script_name(name: &str) -> Result<(), NameError> {
    let err = |reason| NameError::Script {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_SCRIPT_NAME {
        return Err(err("must be 1 to 128 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(err("contains a control character or '/'"));
    }
    Ok(())
}

/// An annotation entry (RFC 5464): `/shared/...` or `/private/...`, levels of atom characters.
pub fn validate_annotation_entry(entry: &str) -> Result<(), NameError> {
    let err = |reason| NameError::Annotation {
        entry: entry.to_string(),
        reason,
    };
    if entry.len() > MAX_ANNOTATION_ENTRY {
        return Err(err("is longer than 256 bytes"));
    }
    let rest = entry
        .strip_prefix("/shared/")
        .or_else(|| entry.strip_prefix("/private/"))
        .ok_or_else(|| err("must start with /shared/ or /private/"))?;
    if rest
        .split('/')
        .any(|level| level.is_empty() || !level.bytes().all(is_atom_char))
    {
        return Err(err(
            "has an empty level or a character that is not an atom character",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_flags_are_canonical_shared_copies() {
        for (at, name) in Flag::SYSTEM.iter().enumerate() {
            let lower = Flag::new(&name.to_ascii_lowercase()).unwrap();
            assert_eq!(lower.as_str(), *name);
            assert!(Arc::ptr_eq(&lower.0, &system_flags()[at].0));
        }
        assert_eq!(Flag::seen().as_str(), "\\Seen");
        assert_eq!(Flag::deleted().as_str(), "\\Deleted");
    }

    #[test]
    fn names_travel_as_plain_strings_and_are_checked_when_read() {
        // The encoding a store or a peer of an earlier version wrote: a MessagePack string.
        let flag = rmp_serde::to_vec(&Flag::new("\\seen").unwrap()).unwrap();
        assert_eq!(flag, rmp_serde::to_vec("\\Seen").unwrap());
        let node = rmp_serde::to_vec(&crate::ids::NodeId::new("n-1").unwrap()).unwrap();
        assert_eq!(node, rmp_serde::to_vec("n-1").unwrap());
        assert_eq!(
            rmp_serde::from_slice::<Flag>(&rmp_serde::to_vec("\\flagged").unwrap()).unwrap(),
            Flag::new("\\Flagged").unwrap()
        );
        // Bytes that are UTF-8 are read as the string, as `String` reads them.
        let bytes = rmp_serde::to_vec(&serde_bytes::Bytes::new(b"n2")).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<crate::ids::NodeId>(&bytes).unwrap(),
            crate::ids::NodeId::new("n2").unwrap()
        );
        // What the constructors refuse, the decoder refuses too.
        for bad in ["", "N1", "a b"] {
            let encoded = rmp_serde::to_vec(bad).unwrap();
            assert!(
                rmp_serde::from_slice::<crate::ids::NodeId>(&encoded).is_err(),
                "{bad:?}"
            );
        }
        for bad in ["\\Recent", "a b", "\\Nope", ""] {
            let encoded = rmp_serde::to_vec(bad).unwrap();
            assert!(rmp_serde::from_slice::<Flag>(&encoded).is_err(), "{bad:?}");
        }
        let not_utf8 = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[0xff, 0xfe])).unwrap();
        assert!(rmp_serde::from_slice::<Flag>(&not_utf8).is_err());
        assert!(rmp_serde::from_slice::<Flag>(&rmp_serde::to_vec(&7u32).unwrap()).is_err());
    }

    #[test]
    fn mailbox_names() {
        assert_eq!(normalize_mailbox_name("inbox").unwrap(), "INBOX");
        assert_eq!(normalize_mailbox_name("Inbox/Work").unwrap(), "INBOX/Work");
        assert_eq!(normalize_mailbox_name("Archive/2024").unwrap(), "Archive/2024");
        assert_eq!(normalize_mailbox_name("Entwürfe").unwrap(), "Entwürfe");
        for bad in ["", "/a", "a/", "a//b", "a/*", "a%", "a\nb", "a/../b"] {
            assert!(normalize_mailbox_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_mailbox_name(&"x".repeat(491)).is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(Flag::new("\\seen").unwrap().as_str(), "\\Seen");
        assert_eq!(Flag::new("$Junk").unwrap().as_str(), "$Junk");
        for bad in ["", "\\Recent", "\\Bogus", "a b", "a(b", "ä", "a]"] {
            assert!(Flag::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn users_scripts_annotations() {
        assert!(validate_user("alice@example.org").is_ok());
        assert!(validate_user("Alice").is_err());
        assert!(validate_user("").is_err());
        assert!(validate_script_name("vacation").is_ok());
        assert!(validate_script_name("a/b").is_err());
        assert!(validate_annotation_entry("/shared/comment").is_ok());
        assert!(validate_annotation_entry("/private/vendor/x").is_ok());
        assert!(validate_annotation_entry("/other/x").is_err());
        assert!(validate_annotation_entry("/shared/").is_err());
    }
}
