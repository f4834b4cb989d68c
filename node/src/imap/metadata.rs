//! METADATA (RFC 5464) over the Mailbox actor's annotations: which entry names a client may
//! use, which stored annotations a GETMETADATA answers with, and the values on the wire.
//! Sans-IO; the session sends `GetAnnotations` and `SetAnnotations` and writes what this
//! module decides.
//!
//! Entry names: RFC 5464 3.2 makes them case-insensitive, so the store keeps them in lower
//! case (a client's `/Shared/Comment` and `/shared/comment` are one annotation), and reads
//! compare in lower case too.
//!
//! `/private/...` and `/shared/...`: both are stored under the mailbox with their prefix, as
//! the client names them. A mailbox here belongs to one user and no other user can reach it
//! (no ACL, no shared namespace), so a private entry is already per-user: the owner is the
//! only user who can read it. Keeping the prefix in the stored name keeps the two apart, so an
//! ACL added later can key private entries by user without touching the shared ones, and no
//! `[METADATA NOPRIVATE]` is needed.
//!
//! Server annotations (mailbox `""`): advertising METADATA means server and mailbox
//! annotations (RFC 5464 1; METADATA-SERVER is server-only, there is no mailbox-only
//! capability). This server keeps no server annotations and does not let clients create any,
//! which RFC 5464 3.3 allows ("Servers MAY restrict the creation of ... server annotations";
//! SETMETADATA then answers NO): GETMETADATA on `""` answers that none exist.

use std::borrow::Cow;

use imap_codec::imap_types::core::{AString, IString, LiteralMode, NString, NString8, Vec1};
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::extensions::metadata::{Depth, Entry, EntryValue, GetMetadataOption};

/// `[imap]`'s limits on annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Annotations with a value one mailbox may hold (`[imap] metadata_max_entries`).
    pub max_entries: usize,
    /// The largest value (`[limits] max_annotation_bytes`, which the store enforces).
    pub max_value_bytes: usize,
}

/// RFC 5464 4.1: at least 10 annotations per mailbox must be accepted.
pub const MIN_ENTRIES: u64 = 10;

/// What an entry name is used for: SETMETADATA names one annotation; GETMETADATA may also name
/// a scope alone (`/shared`, `/private`), the root of a DEPTH search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Set,
    Get,
}

/// An entry name as the store keeps it (lower case), or why RFC 5464 3.2 refuses it (the
/// command then gets BAD).
pub fn entry_name(entry: &Entry<'_>, purpose: Use) -> Result<String, String> {
    let bytes = entry.as_ref();
    let shown = String::from_utf8_lossy(bytes);
    if let Some(&b) = bytes
        .iter()
        .find(|&&b| !b.is_ascii() || b < 0x20 || b == 0x7f || b == b'*' || b == b'%')
    {
        return Err(format!(
            "entry {shown:?} holds {:?}, which an entry name may not",
            b as char
        ));
    }
    let name = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let Some(rest) = name.strip_prefix('/') else {
        return Err(format!("entry {shown:?} does not start with /"));
    };
    let components: Vec<&str> = rest.split('/').collect();
    if components.iter().any(|c| c.is_empty()) {
        return Err(format!(
            "entry {shown:?} has an empty component (// or a trailing /)"
        ));
    }
    if !matches!(components[0], "shared" | "private") {
        return Err(format!("entry {shown:?} is neither /shared/... nor /private/..."));
    }
    if purpose == Use::Set {
        // RFC 5464 3.2: two components at least, four under a vendor prefix.
        let least = if components.get(1) == Some(&"vendor") {
            4
        } else {
            2
        };
        if components.len() < least {
            return Err(format!(
                "entry {shown:?} names a scope or vendor prefix, not an annotation"
            ));
        }
    }
    Ok(name)
}

/// GETMETADATA's options: DEPTH (default 0) and MAXSIZE (default none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetOptions {
    pub depth: Depth,
    pub max_size: Option<u32>,
}

impl GetOptions {
    pub fn from_command(options: &[GetMetadataOption]) -> GetOptions {
        let mut out = GetOptions {
            depth: Depth::Null,
            max_size: None,
        };
        for option in options {
            match option {
                GetMetadataOption::Depth(depth) => out.depth = depth.clone(),
                GetMetadataOption::MaxSize(max) => out.max_size = Some(*max),
            }
        }
        out
    }
}

/// What a GETMETADATA answers: entries in answer order with their values (`None`: the entry
/// asked for does not exist, sent as NIL), and the size of the largest value MAXSIZE left out
/// (`[METADATA LONGENTRIES n]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub entries: Vec<(String, Option<Vec<u8>>)>,
    pub longest_left_out: Option<usize>,
}

/// The answer to a GETMETADATA of `requested` (names from [`entry_name`]) over `stored` (the
/// mailbox's annotations with a value, in entry order, as `GetAnnotations` gives them). For
/// each entry asked for: its value, then the entries below it down to DEPTH, in entry order,
/// each once; an entry asked for that has no value and nothing returned below it is sent as
/// NIL (so every entry asked for gets an answer). A value over MAXSIZE is left out.
pub fn select(stored: &[(String, Vec<u8>)], requested: &[String], options: GetOptions) -> Answer {
    let mut answer = Answer::default();
    let mut taken = vec![false; stored.len()];
    for wanted in requested {
        let mut found = false;
        for (at, (name, value)) in stored.iter().enumerate() {
            let name = name.to_ascii_lowercase();
            if !within(&name, wanted, &options.depth) {
                continue;
            }
            found = true;
            if std::mem::replace(&mut taken[at], true) {
                continue;
            }
            match options.max_size {
                Some(max) if value.len() > max as usize => {
                    answer.longest_left_out = answer.longest_left_out.max(Some(value.len()));
                }
                _ => answer.entries.push((name, Some(value.clone()))),
            }
        }
        if !found && !answer.entries.iter().any(|(name, _)| name == wanted) {
            answer.entries.push((wanted.clone(), None));
        }
    }
    answer
}

/// Whether `name` is `wanted` or below it within `depth` (RFC 5464 4.2.2: DEPTH 1 of `/a`
/// takes `/a/b`, not `/a/b/c`).
fn within(name: &str, wanted: &str, depth: &Depth) -> bool {
    if name == wanted {
        return true;
    }
    let Some(below) = name.strip_prefix(wanted).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    match depth {
        Depth::Null => false,
        Depth::One => !below.contains('/'),
        Depth::Infinity => true,
    }
}

/// The METADATA response's list: `entry value` pairs (empty: nothing to send).
pub fn entry_values(answer: Answer) -> Option<Vec1<EntryValue<'static>>> {
    let values: Vec<EntryValue<'static>> = answer
        .entries
        .into_iter()
        .map(|(name, value)| EntryValue {
            entry: entry(name),
            value: wire_value(value),
        })
        .collect();
    Vec1::try_from(values).ok()
}

fn entry(name: String) -> Entry<'static> {
    let name = AString::try_from(name).expect("a checked entry name is an astring");
    Entry::try_from(name).expect("imap-codec takes any astring as an entry")
}

/// A value as RFC 5464 5's `value = nstring / literal8`: a quoted string or a literal where
/// one can carry it, `~{n}` for bytes a literal may not hold (NUL).
fn wire_value(value: Option<Vec<u8>>) -> NString8<'static> {
    let Some(value) = value else {
        return NString8::NString(NString(None));
    };
    match IString::try_from(value.clone()) {
        Ok(string) => NString8::NString(NString(Some(string))),
        Err(_) => NString8::Literal8(Literal8 {
            data: Cow::Owned(value),
            mode: LiteralMode::Sync,
        }),
    }
}

/// A SETMETADATA value: `None` removes the entry.
pub fn set_value(value: &NString8<'_>) -> Option<Vec<u8>> {
    match value {
        NString8::NString(NString(None)) => None,
        NString8::NString(NString(Some(string))) => Some(string.as_ref().to_vec()),
        NString8::Literal8(literal) => Some(literal.data.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use imap_codec::imap_types::extensions::metadata::MetadataResponse;
    use imap_codec::imap_types::mailbox::Mailbox;
    use imap_codec::imap_types::response::{Data, Response};

    use super::*;

    fn name(text: &str, purpose: Use) -> Result<String, String> {
        entry_name(&entry(text.to_string()), purpose)
    }

    #[test]
    fn entry_names_follow_rfc_5464_and_are_kept_in_lower_case() {
        assert_eq!(name("/Shared/Comment", Use::Set).unwrap(), "/shared/comment");
        assert_eq!(
            name("/private/vendor/acme/x", Use::Set).unwrap(),
            "/private/vendor/acme/x"
        );
        assert_eq!(name("/shared", Use::Get).unwrap(), "/shared");
        assert_eq!(name("/private/vendor", Use::Get).unwrap(), "/private/vendor");
        for bad in [
            "/shared",
            "/private/vendor/acme",
            "shared/comment",
            "/public/comment",
            "/shared//comment",
            "/shared/comment/",
            "/shared/c*",
            "/shared/c%",
            "/shared/caf\u{e9}",
            "/shared/a\tb",
            "/",
        ] {
            assert!(name(bad, Use::Set).is_err(), "{bad:?}");
        }
        assert!(name("/shared/", Use::Get).is_err());
        assert!(name("/other", Use::Get).is_err());
    }

    fn stored() -> Vec<(String, Vec<u8>)> {
        [
            ("/private/comment", "mine"),
            ("/private/filters/values/boss", "FROM \"boss@example.com\""),
            ("/private/filters/values/small", "SMALLER 5000"),
            ("/private/filters/values/small/deeper", "x"),
            ("/shared/comment", "a longer shared comment"),
        ]
        .iter()
        .map(|(e, v)| (e.to_string(), v.as_bytes().to_vec()))
        .collect()
    }

    fn get(requested: &[&str], depth: Depth, max_size: Option<u32>) -> Answer {
        let requested: Vec<String> = requested.iter().map(|r| r.to_string()).collect();
        select(&stored(), &requested, GetOptions { depth, max_size })
    }

    fn names(answer: &Answer) -> Vec<(&str, bool)> {
        answer
            .entries
            .iter()
            .map(|(n, v)| (n.as_str(), v.is_some()))
            .collect()
    }

    #[test]
    fn depth_takes_the_entry_and_what_lies_below_it_as_far_as_asked() {
        let zero = get(&["/private/comment", "/shared/missing"], Depth::Null, None);
        assert_eq!(
            names(&zero),
            [("/private/comment", true), ("/shared/missing", false)]
        );
        assert_eq!(zero.longest_left_out, None);
        // RFC 5464 4.2.2's example: the two entries right below, not the grandchild, and no
        // NIL for the entry asked for, which has none of its own.
        let one = get(&["/private/filters/values"], Depth::One, None);
        assert_eq!(
            names(&one),
            [
                ("/private/filters/values/boss", true),
                ("/private/filters/values/small", true)
            ]
        );
        let all = get(&["/private", "/private/comment"], Depth::Infinity, None);
        assert_eq!(all.entries.len(), 4, "each entry once: {all:?}");
        assert!(get(&["/private/filters/value"], Depth::Infinity, None).entries[0]
            .1
            .is_none());
    }

    #[test]
    fn maxsize_leaves_long_values_out_and_names_the_longest() {
        let got = get(&["/shared/comment", "/private/comment"], Depth::Null, Some(10));
        assert_eq!(names(&got), [("/private/comment", true)]);
        assert_eq!(got.longest_left_out, Some("a longer shared comment".len()));
    }

    #[test]
    fn values_go_out_quoted_as_literals_or_as_literal8_and_nil() {
        let answer = Answer {
            entries: vec![
                ("/shared/a".into(), Some(b"plain".to_vec())),
                ("/shared/b".into(), Some(b"two\r\nlines".to_vec())),
                ("/shared/c".into(), Some(b"n\0l".to_vec())),
                ("/shared/d".into(), None),
            ],
            longest_left_out: None,
        };
        let data = Data::Metadata {
            mailbox: Mailbox::Inbox,
            items: MetadataResponse::WithValues(entry_values(answer).unwrap()),
        };
        let mut out = Vec::new();
        super::super::protocol::encode(&Response::Data(data), &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "* METADATA INBOX (/shared/a \"plain\" /shared/b {10}\r\ntwo\r\nlines /shared/c ~{3}\r\nn\0l /shared/d NIL)\r\n"
        );
        assert!(entry_values(Answer::default()).is_none());
    }
}
