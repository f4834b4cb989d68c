//! A message's MIME structure for FETCH: ENVELOPE, BODY and BODYSTRUCTURE (RFC 3501 7.4.2), and
//! the bytes of a numbered part (`BODY[1.2]`, `BODY[2.HEADER]`, `BODY[1.MIME]`, ...). Sans-IO:
//! the message is parsed by mail-parser (Apache-2.0 OR MIT), never by hand; what is sent of a
//! part is its bytes as stored (sizes and line counts are of the encoded body, as RFC 3501 asks).
//!
//! ENVELOPE strings are the header fields as written (clients decode RFC 2047 themselves);
//! address display names come from mail-parser decoded, so a non-ASCII one is encoded again as
//! an RFC 2047 word (IMAP4rev1 strings are 7-bit).

use std::num::NonZeroU32;

use base64::Engine;
use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{IString, NString, Vec1};
use imap_codec::imap_types::envelope::{Address as ImapAddress, Envelope};
use mail_parser::{Addr, Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Parses a stored message (mail-parser gives a best effort for any bytes).
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(raw)
}

/// The ENVELOPE of a message.
pub fn envelope(message: &Message<'_>) -> Envelope<'static> {
    let raw = |name: &str| -> NString<'static> {
        message
            .header_raw(name)
            .map(|v| nstring_text(unfold(v).trim()))
            .unwrap_or(NString(None))
    };
    let addresses = |name: &str| -> Vec<ImapAddress<'static>> {
        match message.header(name) {
            Some(HeaderValue::Address(address)) => imap_addresses(address),
            _ => Vec::new(),
        }
    };
    let from = addresses("From");
    let sender = addresses("Sender");
    let reply_to = addresses("Reply-To");
    Envelope {
        date: raw("Date"),
        subject: raw("Subject"),
        // RFC 3501 7.4.2: sender and reply-to default to from.
        sender: if sender.is_empty() { from.clone() } else { sender },
        reply_to: if reply_to.is_empty() {
            from.clone()
        } else {
            reply_to
        },
        from,
        to: addresses("To"),
        cc: addresses("Cc"),
        bcc: addresses("Bcc"),
        in_reply_to: raw("In-Reply-To"),
        message_id: raw("Message-ID"),
    }
}

/// BODYSTRUCTURE (`extended`) or BODY of a message.
pub fn structure(message: &Message<'_>, extended: bool) -> BodyStructure<'static> {
    part_structure(message, 0, extended)
}

fn part_structure(message: &Message<'_>, id: usize, extended: bool) -> BodyStructure<'static> {
    let Some(part) = message.parts.get(id) else {
        return empty_text();
    };
    let (ctype, subtype, parameters) = content_type(part);
    if let PartType::Multipart(children) = &part.body {
        let bodies: Vec<BodyStructure<'static>> = children
            .iter()
            .map(|&child| part_structure(message, child as usize, extended))
            .collect();
        // A multipart with no part at all (malformed) is shown as an empty text part.
        let Ok(bodies) = Vec1::try_from(bodies) else {
            return empty_text();
        };
        return BodyStructure::Multi {
            bodies,
            subtype: istring(&subtype),
            extension_data: extended.then(|| MultiPartExtensionData {
                parameter_list: parameters,
                tail: Some(disposition(part)),
            }),
        };
    }
    let encoded = body_bytes(message, part);
    let lines = lines(encoded);
    let specific = match &part.body {
        PartType::Message(nested) if ctype.eq_ignore_ascii_case("message") => SpecificFields::Message {
            envelope: Box::new(envelope(nested)),
            body_structure: Box::new(structure(nested, extended)),
            number_of_lines: lines,
        },
        _ if ctype.eq_ignore_ascii_case("text") => SpecificFields::Text {
            subtype: istring(&subtype),
            number_of_lines: lines,
        },
        _ => SpecificFields::Basic {
            r#type: istring(&ctype),
            subtype: istring(&subtype),
        },
    };
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: parameters,
                id: nstring_opt(part.content_id().map(|id| format!("<{id}>"))),
                description: nstring_opt(part.content_description().map(str::to_string)),
                content_transfer_encoding: istring(part.content_transfer_encoding().unwrap_or("7bit")),
                size: u32::try_from(encoded.len()).unwrap_or(u32::MAX),
            },
            specific,
        },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: Some(disposition(part)),
        }),
    }
}

fn empty_text() -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: Vec::new(),
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring("7bit"),
                size: 0,
            },
            specific: SpecificFields::Text {
                subtype: istring("plain"),
                number_of_lines: 0,
            },
        },
        extension_data: None,
    }
}

/// Type, subtype and parameters; RFC 2045's default (text/plain; charset=us-ascii) when the part
/// has no Content-Type.
fn content_type(part: &MessagePart<'_>) -> (String, String, Vec<(IString<'static>, IString<'static>)>) {
    match part.content_type() {
        Some(ct) => {
            let multipart = ct.ctype().eq_ignore_ascii_case("multipart");
            let subtype = ct
                .subtype()
                .map(str::to_string)
                .unwrap_or_else(|| if multipart { "mixed" } else { "plain" }.to_string());
            let parameters = ct
                .attributes()
                .unwrap_or_default()
                .iter()
                .map(|a| (istring(&a.name), istring_text(&a.value)))
                .collect();
            (ct.ctype().to_string(), subtype, parameters)
        }
        None => (
            "text".to_string(),
            "plain".to_string(),
            vec![(istring("charset"), istring("us-ascii"))],
        ),
    }
}

fn disposition(part: &MessagePart<'_>) -> Disposition<'static> {
    let disposition = part.content_disposition().map(|d| {
        let parameters = d
            .attributes()
            .unwrap_or_default()
            .iter()
            .map(|a| (istring(&a.name), istring_text(&a.value)))
            .collect();
        (istring(d.ctype()), parameters)
    });
    let language = match part.content_language() {
        HeaderValue::Text(text) => vec![istring(text)],
        HeaderValue::TextList(list) => list.iter().map(|l| istring(l)).collect(),
        _ => Vec::new(),
    };
    Disposition {
        disposition,
        tail: Some(Language {
            language,
            tail: Some(Location {
                location: nstring_opt(part.content_location().map(str::to_string)),
                extensions: Vec::new(),
            }),
        }),
    }
}

/// A part's body as stored (still transfer-encoded).
fn body_bytes<'m>(message: &'m Message<'_>, part: &MessagePart<'_>) -> &'m [u8] {
    // The whole buffer: a nested message's part offsets count from the start of the outermost
    // message (`raw_message()` is only the nested message's own span).
    let raw: &[u8] = message.raw_message.as_ref();
    let start = (part.offset_body as usize).min(raw.len());
    let end = (part.offset_end as usize).clamp(start, raw.len());
    &raw[start..end]
}

fn lines(bytes: &[u8]) -> u32 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    let unterminated = usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
    u32::try_from(newlines + unterminated).unwrap_or(u32::MAX)
}

/// What of a numbered part a section names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartSection {
    /// `BODY[1.2]`: the part's body (for a message/rfc822 part, the whole nested message).
    Body,
    /// `BODY[1.MIME]`: the part's own MIME header.
    Mime,
    /// `BODY[2.HEADER]`, `BODY[2.TEXT]`: of the message/rfc822 part's nested message.
    Header,
    Text,
}

/// The bytes of `section` of the part at `path` (RFC 3501 6.4.5's numbering: in a message that
/// is not multipart, part 1 is its body; a message/rfc822 part's numbers go on into its
/// message). `None`: no such part, or a HEADER/TEXT of a part that is not a message.
pub fn part_bytes(message: &Message<'_>, path: &[NonZeroU32], section: &PartSection) -> Option<Vec<u8>> {
    let (owner, id) = locate(message, path)?;
    let part = owner.parts.get(id)?;
    let raw: &[u8] = owner.raw_message.as_ref();
    match section {
        PartSection::Body => Some(body_bytes(owner, part).to_vec()),
        PartSection::Mime => {
            let start = (part.offset_header as usize).min(raw.len());
            let end = (part.offset_body as usize).clamp(start, raw.len());
            Some(raw[start..end].to_vec())
        }
        PartSection::Header | PartSection::Text => match &part.body {
            PartType::Message(nested) => {
                let raw = nested.raw_message();
                Some(if *section == PartSection::Header {
                    super::message::header(raw).to_vec()
                } else {
                    super::message::text(raw).to_vec()
                })
            }
            _ => None,
        },
    }
}

/// A part's content-transfer-encoding this server cannot undo: RFC 3516's `UNKNOWN-CTE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCte(pub String);

/// `BINARY[path]` (RFC 3516) of a numbered part: its body with the content-transfer-encoding
/// undone. base64 and quoted-printable are decoded here (mail-parser's decoded contents would
/// also convert a text part's charset, which BINARY must not); `7bit`, `8bit`, `binary`, no
/// header at all, and multipart and message parts (whose encoding is one of those) are sent as
/// stored. `Ok(None)`: no such part.
pub fn binary_part(message: &Message<'_>, path: &[NonZeroU32]) -> Result<Option<Vec<u8>>, UnknownCte> {
    let Some((owner, id)) = locate(message, path) else {
        return Ok(None);
    };
    let Some(part) = owner.parts.get(id) else {
        return Ok(None);
    };
    let bytes = body_bytes(owner, part);
    if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
        return Ok(Some(bytes.to_vec()));
    }
    let encoding = part
        .content_transfer_encoding()
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "7bit" | "8bit" | "binary" => Ok(Some(bytes.to_vec())),
        "base64" => Ok(Some(decode_base64(bytes))),
        "quoted-printable" => Ok(Some(decode_quoted_printable(bytes))),
        _ => Err(UnknownCte(encoding)),
    }
}

/// RFC 2045 6.8: characters outside the alphabet (line breaks, spaces) are ignored; so are
/// padding and a last lone character, which cannot hold a whole byte.
fn decode_base64(bytes: &[u8]) -> Vec<u8> {
    let mut alphabet: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if alphabet.len() % 4 == 1 {
        alphabet.pop();
    }
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    lenient.decode(&alphabet).unwrap_or_default()
}

/// RFC 2045 6.7: `=XX` is the byte XX, `=` at the end of a line a soft line break, and spaces
/// and tabs at the end of a line transport padding; an `=` followed by anything else is kept.
fn decode_quoted_printable(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut lines = bytes.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        let line = &line[..end];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(line) => (line, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'=' {
                if let (Some(h), Some(l)) = (
                    line.get(i + 1).and_then(|&b| hex(b)),
                    line.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(line[i]);
            i += 1;
        }
        if !soft && !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// The message holding the part at `path`, and the part's index in it.
fn locate<'a>(message: &'a Message<'a>, path: &[NonZeroU32]) -> Option<(&'a Message<'a>, usize)> {
    let mut owner = message;
    let mut id = 0usize;
    // At the root of a message: its numbers are its body's parts.
    let mut at_message = true;
    for n in path {
        let n = n.get() as usize;
        if !at_message {
            if let PartType::Message(nested) = &owner.parts.get(id)?.body {
                owner = nested;
                id = 0;
                at_message = true;
            }
        }
        match &owner.parts.get(id)?.body {
            PartType::Multipart(children) => id = *children.get(n - 1)? as usize,
            // A message that is not multipart: its body is part 1.
            _ if at_message && n == 1 => {}
            _ => return None,
        }
        at_message = false;
    }
    Some((owner, id))
}

fn imap_addresses(address: &Address<'_>) -> Vec<ImapAddress<'static>> {
    match address {
        Address::List(list) => list.iter().map(imap_address).collect(),
        Address::Group(groups) => {
            let mut out = Vec::new();
            for group in groups {
                // RFC 3501 7.4.2: a group is a start marker (mailbox = its name, host NIL), its
                // members, and an end marker (mailbox and host NIL). Ungrouped addresses come as
                // a group without a name.
                match &group.name {
                    Some(name) => {
                        out.push(ImapAddress {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: nstring_text(name),
                            host: NString(None),
                        });
                        out.extend(group.addresses.iter().map(imap_address));
                        out.push(ImapAddress {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: NString(None),
                            host: NString(None),
                        });
                    }
                    None => out.extend(group.addresses.iter().map(imap_address)),
                }
            }
            out
        }
    }
}

fn imap_address(addr: &Addr<'_>) -> ImapAddress<'static> {
    let address = addr.address.as_deref().unwrap_or("");
    let (mailbox, host) = match address.rsplit_once('@') {
        Some((mailbox, host)) => (mailbox, Some(host)),
        None => (address, None),
    };
    ImapAddress {
        name: nstring_opt(addr.name.as_deref().filter(|n| !n.is_empty()).map(encoded_word)),
        adl: NString(None),
        mailbox: nstring_text(mailbox),
        host: host.map(nstring_text).unwrap_or(NString(None)),
    }
}

/// ASCII text as is; anything else as one RFC 2047 base64 word in UTF-8.
fn encoded_word(text: &str) -> String {
    if text.is_ascii() {
        text.to_string()
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
        )
    }
}

fn unfold(value: &str) -> String {
    value.replace("\r\n", "").replace('\n', "")
}

fn istring(text: &str) -> IString<'static> {
    istring_text(text)
}

/// A string IMAP can carry: quoted when it can be, else a literal (8-bit, no NUL).
fn istring_text(text: &str) -> IString<'static> {
    let clean: String = text
        .chars()
        .filter(|&c| c != '\0' && c != '\r' && c != '\n')
        .collect();
    IString::try_from(clean.clone())
        .or_else(|_| IString::try_from(encoded_word(&clean)))
        .unwrap_or_else(|_| IString::try_from("").expect("an empty string is valid"))
}

fn nstring_text(text: &str) -> NString<'static> {
    NString(Some(istring_text(text)))
}

fn nstring_opt(text: Option<String>) -> NString<'static> {
    text.map(|t| nstring_text(&t)).unwrap_or(NString(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::fetch::MessageDataItem;
    use imap_codec::imap_types::response::{Data, Response};

    /// A multipart message with an alternative text part, a PDF attachment and a forwarded
    /// message, non-ASCII (RFC 2047) headers.
    pub const MULTIPART: &[u8] = b"From: =?UTF-8?Q?J=C3=BCrgen?= <jm@example.org>\r\n\
To: Team: ann@example.org, bob@example.net;, carol@example.com\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\
Date: Tue, 01 Dec 2026 10:00:00 +0100\r\n\
Message-ID: <m1@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
preamble\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Gr=C3=BC=C3=9Fe\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>hi</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"r.pdf\"\r\n\
Content-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: ann@example.org\r\n\
Subject: inner\r\n\
\r\n\
inner body\r\n\
--outer--\r\n";

    fn wire(item: MessageDataItem<'static>) -> String {
        let mut out = Vec::new();
        super::super::protocol::encode(
            &Response::Data(Data::Fetch {
                seq: NonZeroU32::new(1).unwrap(),
                items: Vec1::from(item),
            }),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    fn path(p: &[u32]) -> Vec<NonZeroU32> {
        p.iter().map(|&n| NonZeroU32::new(n).unwrap()).collect()
    }

    #[test]
    fn envelope_keeps_header_text_groups_and_encodes_non_ascii_names() {
        let parsed = parse(MULTIPART).unwrap();
        assert_eq!(
            wire(MessageDataItem::Envelope(envelope(&parsed))),
            "* 1 FETCH (ENVELOPE (\"Tue, 01 Dec 2026 10:00:00 +0100\" \"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\" \
             ((\"=?UTF-8?B?SsO8cmdlbg==?=\" NIL \"jm\" \"example.org\")) \
             ((\"=?UTF-8?B?SsO8cmdlbg==?=\" NIL \"jm\" \"example.org\")) \
             ((\"=?UTF-8?B?SsO8cmdlbg==?=\" NIL \"jm\" \"example.org\")) \
             ((NIL NIL \"Team\" NIL)(NIL NIL \"ann\" \"example.org\")(NIL NIL \"bob\" \"example.net\")(NIL NIL NIL NIL)(NIL NIL \"carol\" \"example.com\")) \
             NIL NIL NIL \"<m1@example.org>\"))\r\n"
        );
    }

    #[test]
    fn body_structure_nests_parts_with_sizes_lines_and_dispositions() {
        let parsed = parse(MULTIPART).unwrap();
        let body = wire(MessageDataItem::Body(structure(&parsed, false)));
        assert_eq!(
            body,
            "* 1 FETCH (BODY (((\"TEXT\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 15 1)\
             (\"TEXT\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 9 1) \"alternative\")\
             (\"application\" \"pdf\" (\"name\" \"r.pdf\") NIL NIL \"base64\" 12)\
             (\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7bit\" 51 \
             (NIL \"inner\" ((NIL NIL \"ann\" \"example.org\")) ((NIL NIL \"ann\" \"example.org\")) ((NIL NIL \"ann\" \"example.org\")) NIL NIL NIL NIL NIL) \
             (\"TEXT\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 10 1) 4) \"mixed\"))\r\n"
        );
        let extended = wire(MessageDataItem::BodyStructure(structure(&parsed, true)));
        assert!(
            extended.contains("\"base64\" 12 NIL (\"attachment\" (\"filename\" \"r.pdf\")) NIL NIL)"),
            "{extended}"
        );
    }

    #[test]
    fn numbered_parts_are_cut_from_the_stored_bytes() {
        let parsed = parse(MULTIPART).unwrap();
        let get = |p: &[u32], s: PartSection| {
            part_bytes(&parsed, &path(p), &s).map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(get(&[1, 1], PartSection::Body).unwrap(), "Gr=C3=BC=C3=9Fe");
        assert_eq!(get(&[1, 2], PartSection::Body).unwrap(), "<p>hi</p>");
        assert_eq!(get(&[2], PartSection::Body).unwrap(), "JVBERi0xLjQK");
        assert!(get(&[2], PartSection::Mime)
            .unwrap()
            .starts_with("Content-Type: application/pdf"));
        assert_eq!(
            get(&[3], PartSection::Header).unwrap(),
            "From: ann@example.org\r\nSubject: inner\r\n\r\n"
        );
        assert_eq!(get(&[3], PartSection::Text).unwrap(), "inner body");
        assert_eq!(get(&[3, 1], PartSection::Body).unwrap(), "inner body");
        assert_eq!(get(&[4], PartSection::Body), None);
        assert_eq!(get(&[2], PartSection::Header), None);
        // A message that is not multipart: part 1 is its body.
        let single = parse(b"Subject: x\r\n\r\nhello\r\n").unwrap();
        assert_eq!(
            part_bytes(&single, &path(&[1]), &PartSection::Body).unwrap(),
            b"hello\r\n"
        );
        assert_eq!(part_bytes(&single, &path(&[2]), &PartSection::Body), None);
    }

    #[test]
    fn binary_parts_are_decoded_from_base64_and_quoted_printable() {
        let message = parse(MULTIPART).unwrap();
        let n = |v: &[u32]| -> Vec<NonZeroU32> { v.iter().map(|&n| NonZeroU32::new(n).unwrap()).collect() };
        // Quoted-printable UTF-8 stays UTF-8 bytes (no charset conversion); the CRLF before a
        // boundary is the boundary's.
        assert_eq!(
            binary_part(&message, &n(&[1, 1])).unwrap().unwrap(),
            "Grüße".as_bytes()
        );
        // No encoding header: as stored.
        assert_eq!(binary_part(&message, &n(&[1, 2])).unwrap().unwrap(), b"<p>hi</p>");
        assert_eq!(binary_part(&message, &n(&[2])).unwrap().unwrap(), b"%PDF-1.4\n");
        // A message part: as stored; a part that is not there: none.
        assert!(binary_part(&message, &n(&[3]))
            .unwrap()
            .unwrap()
            .starts_with(b"From: ann@"));
        assert_eq!(binary_part(&message, &n(&[9])), Ok(None));

        let odd = b"Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n";
        let message = parse(odd).unwrap();
        assert_eq!(
            binary_part(&message, &n(&[1])),
            Err(UnknownCte("x-uuencode".into()))
        );
    }

    #[test]
    fn base64_and_quoted_printable_decoding_is_lenient_where_rfc_2045_says() {
        assert_eq!(decode_base64(b"AAEC\r\nA/8=\r\n"), [0, 1, 2, 3, 255]);
        assert_eq!(
            decode_base64(b"AAECA\r\n"),
            [0, 1, 2],
            "a lone last character is dropped"
        );
        assert_eq!(decode_base64(b""), b"");
        assert_eq!(
            decode_quoted_printable(b"a=3Db \t\r\nsoft=\r\nbreak=\nx=ZZ=4"),
            b"a=b\r\nsoftbreakx=ZZ=4"
        );
        assert_eq!(decode_quoted_printable(b"=00=FF\r\n"), [0, 255, b'\r', b'\n']);
    }
}
