//! SEARCH keys (RFC 3501 6.4.4, RFC 7162's MODSEQ) evaluated against one message at a time:
//! sans-IO. The session walks the selected mailbox in chunks of flags (uid, modseq, flags: read
//! from the uid index alone), of views (size and dates too) when a key needs the record
//! ([`needs_record`]), and reads a message's bytes only when a key needs them ([`needs_body`]),
//! so a search holds one message at a time, never the mailbox's bodies.
//!
//! Header and body keys match case-insensitively on the decoded text: each header field as
//! mail-parser decodes it (RFC 2047 words, addresses as name and address) and as it is written,
//! and every text part's decoded contents. The sent date is the Date header's own calendar day
//! (RFC 3501: time and zone disregarded); a message without a readable one is dated by its
//! INTERNALDATE. INTERNALDATE keys use the UTC day.

use chrono::NaiveDate;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::{Address, HeaderValue, Message, MessageParser, PartType};
use mailmesh_actors::flag_set::{self, FlagSet};
use mailmesh_actors::mailbox::MessageView;
use mailmesh_actors::store::uid_row::SYSTEM_BITS;

/// The charsets a SEARCH may name (RFC 3501 6.4.4: US-ASCII must be supported); others get
/// `NO [BADCHARSET]`.
pub const CHARSETS: [&str; 2] = ["UTF-8", "US-ASCII"];

/// Whether `charset` is one this server searches in.
pub fn charset_supported(charset: &str) -> bool {
    CHARSETS.iter().any(|c| c.eq_ignore_ascii_case(charset))
}

/// Whether any key needs the message's bytes (headers, bodies, the sent date).
pub fn needs_body(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_body),
        SearchKey::Not(key) => needs_body(key),
        SearchKey::Or(a, b) => needs_body(a) || needs_body(b),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        _ => false,
    }
}

/// Whether any key needs more of the record than its uid, flags and modseq (its size or dates),
/// or the message's bytes.
pub fn needs_record(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_record),
        SearchKey::Not(key) => needs_record(key),
        SearchKey::Or(a, b) => needs_record(a) || needs_record(b),
        SearchKey::Larger(_)
        | SearchKey::Smaller(_)
        | SearchKey::Before(_)
        | SearchKey::On(_)
        | SearchKey::Since(_) => true,
        other => needs_body(other),
    }
}

/// Whether the search has a MODSEQ key (its answer then carries the highest modseq of the
/// messages found, RFC 7162 3.1.5).
pub fn has_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(has_modseq),
        SearchKey::Not(key) => has_modseq(key),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::ModSequence { .. } => true,
        _ => false,
    }
}

/// One message as a search sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub modseq: u64,
    /// The system flags as bits, the keywords by name: from the uid index as it is, or from a
    /// view's flag list.
    pub flags: &'a FlagSet,
    /// The record's view, when [`needs_record`] asked for it.
    pub view: Option<&'a MessageView>,
    /// The parsed message, when [`needs_body`] asked for it (and it parses).
    pub parsed: Option<&'a Message<'a>>,
}

/// What `*` stands for: the number of messages and the highest uid the session knows.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub exists: u32,
    pub last_uid: u32,
}

/// Parses a message for the header and body keys.
pub fn parse(body: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(body)
}

/// Whether the message matches `key`.
pub fn matches(key: &SearchKey<'_>, m: &Candidate<'_>, bounds: Bounds) -> bool {
    // A system flag is a bit of the row (no name compared for each of a mailbox's messages).
    let has = |bit: u8| m.flags.has(bit);
    // Keys of the record's size and dates: the session read the view for them (`needs_record`).
    let view = |test: &dyn Fn(&MessageView) -> bool| m.view.is_some_and(test);
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches(k, m, bounds)),
        SearchKey::Not(key) => !matches(key, m, bounds),
        SearchKey::Or(a, b) => matches(a, m, bounds) || matches(b, m, bounds),
        SearchKey::SequenceSet(set) => in_set(set, m.seq, bounds.exists),
        SearchKey::Uid(set) => in_set(set, m.uid, bounds.last_uid),
        SearchKey::All => true,
        SearchKey::Answered => has(flag_set::ANSWERED),
        SearchKey::Deleted => has(flag_set::DELETED),
        SearchKey::Draft => has(flag_set::DRAFT),
        SearchKey::Flagged => has(flag_set::FLAGGED),
        SearchKey::Seen => has(flag_set::SEEN),
        SearchKey::Unanswered => !has(flag_set::ANSWERED),
        SearchKey::Undeleted => !has(flag_set::DELETED),
        SearchKey::Undraft => !has(flag_set::DRAFT),
        SearchKey::Unflagged => !has(flag_set::FLAGGED),
        SearchKey::Unseen => !has(flag_set::SEEN),
        SearchKey::Keyword(atom) => has_named(m.flags, atom.as_ref()),
        SearchKey::Unkeyword(atom) => !has_named(m.flags, atom.as_ref()),
        // No message is \Recent on this server (the flag has no replicated meaning; RFC 9051
        // dropped it): NEW (RECENT UNSEEN) and RECENT find nothing, OLD (NOT RECENT) everything.
        SearchKey::Recent | SearchKey::New => false,
        SearchKey::Old => true,
        SearchKey::Larger(n) => view(&|v| v.size > u64::from(*n)),
        SearchKey::Smaller(n) => view(&|v| v.size < u64::from(*n)),
        SearchKey::Before(date) => view(&|v| internal_day(v) < *date.as_ref()),
        SearchKey::On(date) => view(&|v| internal_day(v) == *date.as_ref()),
        SearchKey::Since(date) => view(&|v| internal_day(v) >= *date.as_ref()),
        SearchKey::SentBefore(date) => sent_day(m) < *date.as_ref(),
        SearchKey::SentOn(date) => sent_day(m) == *date.as_ref(),
        SearchKey::SentSince(date) => sent_day(m) >= *date.as_ref(),
        SearchKey::ModSequence { modseq, .. } => m.modseq >= *modseq,
        SearchKey::From(s) => header_contains(m, "From", s.as_ref()),
        SearchKey::To(s) => header_contains(m, "To", s.as_ref()),
        SearchKey::Cc(s) => header_contains(m, "Cc", s.as_ref()),
        SearchKey::Bcc(s) => header_contains(m, "Bcc", s.as_ref()),
        SearchKey::Subject(s) => header_contains(m, "Subject", s.as_ref()),
        SearchKey::Header(name, s) => match std::str::from_utf8(name.as_ref()) {
            Ok(name) => header_contains(m, name, s.as_ref()),
            Err(_) => false,
        },
        SearchKey::Body(s) => body_contains(m, s.as_ref()),
        SearchKey::Text(s) => {
            let needle = folded(s.as_ref());
            // The header as written (field names too) and as decoded, then the body.
            m.parsed.is_some_and(|p| {
                contains(
                    &String::from_utf8_lossy(super::message::header(p.raw_message())),
                    &needle,
                ) || p
                    .headers()
                    .iter()
                    .any(|h| field_texts(p, h).iter().any(|t| contains(t, &needle)))
            }) || body_contains(m, s.as_ref())
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Whether a search key is one [`matches`] knows (the rest are refused before searching).
pub fn supported(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(supported),
        SearchKey::Not(key) => supported(key),
        SearchKey::Or(a, b) => supported(a) && supported(b),
        SearchKey::ModSequence { .. } => true,
        #[allow(unreachable_patterns)]
        SearchKey::SequenceSet(_)
        | SearchKey::Uid(_)
        | SearchKey::All
        | SearchKey::Answered
        | SearchKey::Deleted
        | SearchKey::Draft
        | SearchKey::Flagged
        | SearchKey::Seen
        | SearchKey::Unanswered
        | SearchKey::Undeleted
        | SearchKey::Undraft
        | SearchKey::Unflagged
        | SearchKey::Unseen
        | SearchKey::Keyword(_)
        | SearchKey::Unkeyword(_)
        | SearchKey::Recent
        | SearchKey::New
        | SearchKey::Old
        | SearchKey::Larger(_)
        | SearchKey::Smaller(_)
        | SearchKey::Before(_)
        | SearchKey::On(_)
        | SearchKey::Since(_)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Cc(_)
        | SearchKey::Bcc(_)
        | SearchKey::Subject(_)
        | SearchKey::Header(..)
        | SearchKey::Body(_)
        | SearchKey::Text(_) => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Whether a flag named `name` is set, in any case (flag names are case-insensitive): a system
/// flag by its bit, a keyword by name. No keyword starts with `\` and every system flag does,
/// so this is the same as comparing `name` with every flag set.
fn has_named(flags: &FlagSet, name: &str) -> bool {
    if name.starts_with('\\') {
        SYSTEM_BITS
            .iter()
            .position(|system| system.eq_ignore_ascii_case(name))
            .is_some_and(|bit| flags.has(1 << bit))
    } else {
        flags
            .keywords()
            .iter()
            .any(|k| k.as_str().eq_ignore_ascii_case(name))
    }
}

/// Whether `n` is in `set`, `*` being `last` (RFC 3501 9: a range matches either way round).
fn in_set(set: &SequenceSet, n: u32, last: u32) -> bool {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => last,
    };
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(v) => value(v) == n,
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            a.min(b) <= n && n <= a.max(b)
        }
    })
}

fn internal_day(view: &MessageView) -> NaiveDate {
    chrono::DateTime::from_timestamp(view.internaldate, 0)
        .unwrap_or_default()
        .date_naive()
}

fn sent_day(m: &Candidate<'_>) -> NaiveDate {
    m.parsed
        .and_then(|p| p.date())
        .and_then(|d| NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day)))
        .or_else(|| m.view.map(internal_day))
        .unwrap_or_default()
}

/// Lower case, for case-insensitive matching beyond ASCII.
fn folded(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_lowercase()
}

fn contains(haystack: &str, folded_needle: &str) -> bool {
    haystack.to_lowercase().contains(folded_needle)
}

fn header_contains(m: &Candidate<'_>, name: &str, needle: &[u8]) -> bool {
    let Some(parsed) = m.parsed else {
        return false;
    };
    let needle = folded(needle);
    parsed
        .headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .any(|h| field_texts(parsed, h).iter().any(|t| contains(t, &needle)))
}

/// A header field's texts to match: as written (unfolded) and as decoded.
fn field_texts(parsed: &Message<'_>, header: &mail_parser::Header<'_>) -> Vec<String> {
    let raw = parsed
        .raw_message
        .get(header.offset_start as usize..header.offset_end as usize)
        .map(|raw| String::from_utf8_lossy(raw).replace("\r\n", "").replace('\n', ""))
        .unwrap_or_default();
    let mut texts = vec![raw];
    match &header.value {
        HeaderValue::Text(text) => texts.push(text.to_string()),
        HeaderValue::TextList(list) => texts.push(list.join(" ")),
        HeaderValue::Address(address) => {
            let addrs: Vec<&mail_parser::Addr<'_>> = match address {
                Address::List(list) => list.iter().collect(),
                Address::Group(groups) => groups.iter().flat_map(|g| g.addresses.iter()).collect(),
            };
            for addr in addrs {
                let name = addr.name.as_deref().unwrap_or("");
                let address = addr.address.as_deref().unwrap_or("");
                texts.push(format!("{name} <{address}>"));
            }
        }
        _ => {}
    }
    texts
}

fn body_contains(m: &Candidate<'_>, needle: &[u8]) -> bool {
    let Some(parsed) = m.parsed else {
        return false;
    };
    let needle = folded(needle);
    parsed.parts.iter().any(|part| match &part.body {
        PartType::Text(text) | PartType::Html(text) => contains(text, &needle),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::CommandBody;
    use imap_codec::CommandCodec;
    use mailmesh_protocol::ids::{AppendId, Guid, ModSeq, NodeId, Uid};
    use mailmesh_protocol::names::Flag;

    const MESSAGE: &[u8] = b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.org>\r\n\
To: alice@example.org, Bob <bob@example.net>\r\n\
Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n\
Date: Tue, 01 Dec 2026 23:30:00 -0800\r\n\
X-Ticket: T-42\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Die Stra=C3=9Fe ist nass.\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"x.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
bmVlZGxl\r\n\
--b--\r\n";

    fn view(uid: u32, size: u64, flags: &[&str]) -> MessageView {
        MessageView {
            uid: Uid(uid),
            append_id: AppendId {
                origin: NodeId::new("n1").unwrap(),
                counter: u64::from(uid),
            },
            guid: Guid::of(MESSAGE),
            size,
            // 2026-12-02 10:00:00 UTC.
            internaldate: 1_796_205_600,
            flags: flags.iter().map(|f| Flag::new(f).unwrap()).collect(),
            modseq: ModSeq(100 + u64::from(uid)),
        }
    }

    /// The key of `SEARCH <criteria>` as imap-codec decodes it.
    fn key(criteria: &str) -> SearchKey<'static> {
        let line = format!("a SEARCH {criteria}\r\n");
        let (_, command) = CommandCodec::default().decode(line.as_bytes()).unwrap();
        let CommandBody::Search { criteria, .. } = command.body else {
            panic!("not a search");
        };
        let criteria = criteria.into_inner();
        match criteria.len() {
            1 => criteria.into_iter().next().unwrap().into_static(),
            _ => SearchKey::And(criteria.try_into().unwrap()).into_static(),
        }
    }

    fn hit(criteria: &str, view: &MessageView, seq: u32) -> bool {
        let parsed = parse(MESSAGE);
        let flags: FlagSet = view.flags.iter().cloned().collect();
        let candidate = Candidate {
            seq,
            uid: view.uid.0,
            modseq: view.modseq.0,
            flags: &flags,
            view: Some(view),
            parsed: parsed.as_ref(),
        };
        let bounds = Bounds {
            exists: 5,
            last_uid: 9,
        };
        matches(&key(criteria), &candidate, bounds)
    }

    use imap_codec::imap_types::IntoStatic;

    #[test]
    fn flag_size_and_set_keys() {
        let v = view(7, 2000, &["\\Seen", "$Work"]);
        for (criteria, expected) in [
            ("ALL", true),
            ("SEEN", true),
            ("UNSEEN", false),
            ("FLAGGED", false),
            ("UNFLAGGED", true),
            ("KEYWORD $work", true),
            ("UNKEYWORD $Work", false),
            ("NEW", false),
            ("RECENT", false),
            ("OLD", true),
            ("LARGER 1999", true),
            ("LARGER 2000", false),
            ("SMALLER 2001", true),
            ("3", true),
            ("1:2,4", false),
            ("4:*", false),
            ("2:*", true),
            ("UID 7", true),
            ("UID 8:*", false),
            ("UID *:5", true),
            ("NOT SEEN", false),
            ("OR FLAGGED KEYWORD $Work", true),
            ("SEEN LARGER 5000", false),
            ("(SEEN UNFLAGGED) UID 1:7", true),
            ("MODSEQ 107", true),
            ("MODSEQ 108", false),
        ] {
            assert_eq!(hit(criteria, &v, 3), expected, "{criteria}");
        }
    }

    #[test]
    fn date_keys_use_the_internal_utc_day_and_the_sent_day_as_written() {
        let v = view(1, 10, &[]);
        for (criteria, expected) in [
            ("ON 2-Dec-2026", true),
            ("BEFORE 2-Dec-2026", false),
            ("BEFORE 3-Dec-2026", true),
            ("SINCE 2-Dec-2026", true),
            ("SINCE 3-Dec-2026", false),
            // The Date header's own day, its zone disregarded.
            ("SENTON 1-Dec-2026", true),
            ("SENTBEFORE 2-Dec-2026", true),
            ("SENTSINCE 2-Dec-2026", false),
        ] {
            assert_eq!(hit(criteria, &v, 1), expected, "{criteria}");
        }
    }

    #[test]
    fn header_and_body_keys_match_decoded_text_in_any_case() {
        let v = view(1, 10, &[]);
        // A non-ASCII string goes as a literal (IMAP4rev1 quoted strings are 7-bit).
        let lit = |s: &str| format!("{{{}+}}\r\n{s}", s.len());
        for (criteria, expected) in [
            ("FROM jm@example.org", true),
            // RFC 2047 words decoded, case folded beyond ASCII.
            (&format!("CHARSET UTF-8 FROM {}", lit("JÜRGEN")), true),
            ("TO bob", true),
            ("TO carol", false),
            ("CC bob", false),
            (&format!("CHARSET UTF-8 SUBJECT {}", lit("GRÜßE")), true),
            (&format!("CHARSET UTF-8 SUBJECT {}", lit("köln")), true),
            ("SUBJECT koln", false),
            ("HEADER X-Ticket t-42", true),
            ("HEADER X-Ticket \"\"", true),
            ("HEADER X-Other \"\"", false),
            // Quoted-printable decoded; an attachment's bytes are not body text.
            (&format!("CHARSET UTF-8 BODY {}", lit("straße")), true),
            ("BODY needle", false),
            ("TEXT x-ticket", true),
            ("TEXT nass", true),
            ("NOT BODY nass", false),
        ] {
            assert_eq!(hit(criteria, &v, 1), expected, "{criteria}");
        }
    }

    #[test]
    fn only_header_and_body_keys_read_the_message() {
        assert!(!needs_body(&key("UNSEEN LARGER 10 UID 1:* OR SEEN NOT DELETED")));
        assert!(needs_body(&key("UNSEEN OR SEEN SUBJECT x")));
        assert!(needs_body(&key("SENTON 1-Jan-2020")));
        assert!(has_modseq(&key("NOT MODSEQ 5")));
    }

    #[test]
    fn flag_keys_read_the_index_alone() {
        assert!(!needs_record(&key(
            "UNSEEN UID 1:* OR SEEN NOT DELETED KEYWORD $Work 2:4 MODSEQ 5"
        )));
        assert!(needs_record(&key("UNSEEN NOT LARGER 10")));
        assert!(needs_record(&key("OR SEEN SINCE 1-Jan-2020")));
        assert!(needs_record(&key("FLAGGED SUBJECT x")));
        // Without the view, a size key matches nothing (the session reads it when asked).
        let v = view(3, 100, &["\\Seen"]);
        let flags: FlagSet = v.flags.iter().cloned().collect();
        let candidate = Candidate {
            seq: 1,
            uid: 3,
            modseq: 103,
            flags: &flags,
            view: None,
            parsed: None,
        };
        let bounds = Bounds {
            exists: 5,
            last_uid: 9,
        };
        assert!(matches(&key("SEEN UID 3 MODSEQ 103"), &candidate, bounds));
        assert!(!matches(&key("UNSEEN"), &candidate, bounds));
        assert!(!has_modseq(&key("ALL")));
        assert!(charset_supported("utf-8") && charset_supported("US-ASCII"));
        assert!(!charset_supported("ISO-8859-1"));
    }

    /// The flag keys by bit and by name answer what comparing the key's name with every flag
    /// set, in any case, answered before (the rule SEARCH followed when flags were a list).
    #[test]
    fn flag_keys_agree_with_comparing_names() {
        let by_names =
            |flags: &[Flag], name: &str| flags.iter().any(|f| f.as_str().eq_ignore_ascii_case(name));
        let system = [
            ("ANSWERED", "\\Answered"),
            ("DELETED", "\\Deleted"),
            ("DRAFT", "\\Draft"),
            ("FLAGGED", "\\Flagged"),
            ("SEEN", "\\Seen"),
        ];
        let keywords = [
            "$Junk", "$junk", "$JUNK", "Work", "work", "seen", "Seen", "flagged", "zeta", "Zeta",
        ];
        let flag_sets: [&[&str]; 9] = [
            &[],
            &["\\Seen"],
            &["\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen"],
            &["$Junk"],
            &["$junk", "\\Flagged"],
            &["Work", "zeta", "\\Draft", "\\Deleted"],
            &["seen"],
            &["Seen", "\\Answered"],
            &["ZETA", "$JUNK", "flagged", "\\Seen", "\\Flagged"],
        ];
        let bounds = Bounds {
            exists: 1,
            last_uid: 1,
        };
        for names in flag_sets {
            let v = view(1, 10, names);
            let set: FlagSet = v.flags.iter().cloned().collect();
            let candidate = Candidate {
                seq: 1,
                uid: 1,
                modseq: 1,
                flags: &set,
                view: None,
                parsed: None,
            };
            for (key_name, flag) in system {
                let expected = by_names(&v.flags, flag);
                assert_eq!(
                    matches(&key(key_name), &candidate, bounds),
                    expected,
                    "{key_name} {names:?}"
                );
                assert_eq!(
                    matches(&key(&format!("UN{key_name}")), &candidate, bounds),
                    !expected,
                    "UN{key_name} {names:?}"
                );
                // A system flag's name in any case (no KEYWORD key can carry a `\`, but the rule
                // is the same).
                for name in [flag.to_string(), flag.to_uppercase(), flag.to_lowercase()] {
                    assert_eq!(has_named(&set, &name), expected, "{name} {names:?}");
                }
            }
            for keyword in keywords {
                let expected = by_names(&v.flags, keyword);
                assert_eq!(
                    matches(&key(&format!("KEYWORD {keyword}")), &candidate, bounds),
                    expected,
                    "KEYWORD {keyword} {names:?}"
                );
                assert_eq!(
                    matches(&key(&format!("UNKEYWORD {keyword}")), &candidate, bounds),
                    !expected,
                    "UNKEYWORD {keyword} {names:?}"
                );
            }
            assert!(!has_named(&set, "\\Recent") && !has_named(&set, "\\"));
        }
    }
}
