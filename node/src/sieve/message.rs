//! The message as the tests see it (RFC 5228 2.7.1-2.7.4, RFC 5173): header fields unfolded and
//! with RFC 2047 encoded words decoded, addresses split from address headers, and body parts
//! decoded from base64 or quoted-printable into text. Tolerant: malformed input gives what can be
//! read, never an error.

use base64::Engine;

use super::limits::{MAX_BODY_BYTES, MAX_MIME_DEPTH};

/// A message to filter: its header fields and body, as delivered.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    /// (name, raw unfolded value) in order.
    fields: Vec<(String, String)>,
    body: &'a [u8],
}

impl<'a> Message<'a> {
    /// Splits a message (RFC 5322, CRLF or LF line ends) into header fields and body.
    pub fn parse(raw: &'a [u8]) -> Self {
        let (fields, body) = split_header(raw);
        Self { raw, fields, body }
    }

    /// The size the `size` test compares: the whole message in octets.
    pub fn size(&self) -> u64 {
        self.raw.len() as u64
    }

    /// The decoded values of every field named `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| decode_encoded_words(value.trim()))
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|(field, _)| field.eq_ignore_ascii_case(name))
    }

    /// The addresses in every field named `name`: `local@domain`, or a bare name when there is
    /// no `@`.
    pub fn addresses(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(field, _)| field.eq_ignore_ascii_case(name))
            .flat_map(|(_, value)| parse_address_list(value))
            .collect()
    }

    /// The undecoded body (`body :raw`).
    pub fn raw_body(&self) -> String {
        let body = &self.body[..self.body.len().min(MAX_BODY_BYTES)];
        String::from_utf8_lossy(body).into_owned()
    }

    /// The decoded parts whose content type matches one of `types` (RFC 5173 5.2: "text"
    /// matches text/*, "text/plain" that type only, "" every part). Multipart containers are
    /// descended into, not matched themselves (except by their own type names, for which their
    /// prologue/epilogue would be tested; those are not kept).
    pub fn body_parts(&self, types: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut budget = MAX_BODY_BYTES;
        collect_parts(&self.fields, self.body, types, 0, &mut budget, &mut out);
        out
    }
}

fn split_header(raw: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut position = 0;
    while position < raw.len() {
        let end = raw[position..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| position + i + 1);
        let line = &raw[position..end];
        let content = trim_line_end(line);
        if content.is_empty() {
            return (fields, &raw[end..]);
        }
        let text = String::from_utf8_lossy(content);
        if content[0] == b' ' || content[0] == b'\t' {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(&text);
            }
        } else if let Some((name, value)) = text.split_once(':') {
            fields.push((name.trim_end().to_string(), value.to_string()));
        } else {
            // Not a header line: the header ended without the empty line.
            return (fields, &raw[position..]);
        }
        position = end;
    }
    (fields, &raw[raw.len()..])
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// RFC 2047 encoded words (`=?charset?B|Q?text?=`) in UTF-8, US-ASCII or ISO-8859-1 (others are
/// left as written). White space between two adjacent encoded words is dropped.
pub fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut pending_space = String::new();
    let mut after_word = false;
    while !rest.is_empty() {
        if let Some((decoded, consumed)) = rest.strip_prefix("=?").and_then(|_| decode_one_word(rest)) {
            if !after_word {
                out.push_str(&pending_space);
            }
            pending_space.clear();
            out.push_str(&decoded);
            rest = &rest[consumed..];
            after_word = true;
            continue;
        }
        let c = rest.chars().next().expect("rest is not empty");
        rest = &rest[c.len_utf8()..];
        if c == ' ' || c == '\t' {
            pending_space.push(c);
            continue;
        }
        out.push_str(&pending_space);
        pending_space.clear();
        out.push(c);
        after_word = false;
    }
    out.push_str(&pending_space);
    out
}

fn decode_one_word(text: &str) -> Option<(String, usize)> {
    let inner = text.strip_prefix("=?")?;
    let (charset, rest) = inner.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let encoded = &rest[..end];
    if encoded.contains(' ') {
        return None;
    }
    let consumed = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD.decode(encoded).ok()?,
        "Q" | "q" => decode_quoted_printable(encoded.as_bytes(), true),
        _ => return None,
    };
    // RFC 2231 allows a language after '*'.
    let charset = charset.split('*').next().unwrap_or(charset);
    Some((decode_charset(charset, &bytes)?, consumed))
}

fn decode_charset(charset: &str, bytes: &[u8]) -> Option<String> {
    match charset.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => Some(String::from_utf8_lossy(bytes).into_owned()),
        "iso-8859-1" | "latin1" | "iso8859-1" => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        _ => None,
    }
}

/// Quoted-printable (RFC 2045 6.7); in an encoded word (`q_encoding`) `_` stands for a space.
fn decode_quoted_printable(input: &[u8], q_encoding: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        match input[index] {
            b'=' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (input.get(index + 1), input.get(index + 2)) {
                    (Some(&a), Some(&b)) if hex(a).is_some() && hex(b).is_some() => {
                        out.push((hex(a).unwrap() * 16 + hex(b).unwrap()) as u8);
                        index += 3;
                    }
                    (Some(b'\r'), Some(b'\n')) => index += 3,
                    (Some(b'\n'), _) => index += 2,
                    _ => {
                        out.push(b'=');
                        index += 1;
                    }
                }
            }
            b'_' if q_encoding => {
                out.push(b' ');
                index += 1;
            }
            other => {
                out.push(other);
                index += 1;
            }
        }
    }
    out
}

/// `type/subtype` (lower case) and parameters of a Content-Type value; text/plain by default.
fn content_type(fields: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let value = fields
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.as_str())
        .unwrap_or("text/plain");
    let mut pieces = split_parameters(value);
    let media = pieces.next().unwrap_or_default().trim().to_ascii_lowercase();
    let media = if media.contains('/') {
        media
    } else {
        "text/plain".to_string()
    };
    let parameters = pieces
        .filter_map(|piece| {
            let (name, value) = piece.split_once('=')?;
            Some((
                name.trim().to_ascii_lowercase(),
                value.trim().trim_matches('"').to_string(),
            ))
        })
        .collect();
    (media, parameters)
}

/// Splits on `;` outside quoted strings.
fn split_parameters(value: &str) -> impl Iterator<Item = String> + '_ {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => pieces.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    pieces.push(current);
    pieces.into_iter()
}

fn type_wanted(media: &str, types: &[String]) -> bool {
    types.iter().any(|wanted| {
        let wanted = wanted.to_ascii_lowercase();
        wanted.is_empty()
            || wanted == media
            || (!wanted.contains('/') && media.split('/').next() == Some(wanted.as_str()))
    })
}

fn collect_parts(
    fields: &[(String, String)],
    body: &[u8],
    types: &[String],
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<String>,
) {
    if *budget == 0 || depth > MAX_MIME_DEPTH {
        return;
    }
    let (media, parameters) = content_type(fields);
    if media.starts_with("multipart/") {
        let Some(boundary) = parameters
            .iter()
            .find(|(name, _)| name == "boundary")
            .map(|(_, v)| v)
        else {
            return;
        };
        for part in split_multipart(body, boundary.as_bytes()) {
            let (part_fields, part_body) = split_header(part);
            collect_parts(&part_fields, part_body, types, depth + 1, budget, out);
        }
        return;
    }
    if media == "message/rfc822" {
        let (inner_fields, inner_body) = split_header(body);
        if type_wanted(&media, types) {
            let text = String::from_utf8_lossy(&body[..body.len().min(*budget)]).into_owned();
            *budget -= text.len().min(*budget);
            out.push(text);
        }
        collect_parts(&inner_fields, inner_body, types, depth + 1, budget, out);
        return;
    }
    if !type_wanted(&media, types) {
        return;
    }
    let encoding = fields
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-transfer-encoding"))
        .map(|(_, value)| value.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let decoded = match encoding.as_str() {
        "base64" => {
            let compact: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&compact))
                .unwrap_or_else(|_| body.to_vec())
        }
        "quoted-printable" => decode_quoted_printable(body, false),
        _ => body.to_vec(),
    };
    let decoded = &decoded[..decoded.len().min(*budget)];
    let charset = parameters
        .iter()
        .find(|(name, _)| name == "charset")
        .map_or("us-ascii", |(_, v)| v.as_str());
    let text =
        decode_charset(charset, decoded).unwrap_or_else(|| String::from_utf8_lossy(decoded).into_owned());
    *budget -= decoded.len();
    out.push(text);
}

/// The parts between `--boundary` lines, up to `--boundary--`.
fn split_multipart<'b>(body: &'b [u8], boundary: &[u8]) -> Vec<&'b [u8]> {
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut position = 0;
    while position < body.len() {
        let end = body[position..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| position + i + 1);
        let line = trim_line_end(&body[position..end]);
        if let Some(rest) = line.strip_prefix(b"--").and_then(|l| l.strip_prefix(boundary)) {
            let closing = rest.starts_with(b"--");
            if rest.iter().all(|b| b.is_ascii_whitespace()) || closing {
                if let Some(from) = start {
                    // The line break before the delimiter belongs to the delimiter.
                    let mut until = position;
                    if until > from && body[until - 1] == b'\n' {
                        until -= 1;
                        if until > from && body[until - 1] == b'\r' {
                            until -= 1;
                        }
                    }
                    parts.push(&body[from..until]);
                }
                if closing {
                    return parts;
                }
                start = Some(end);
            }
        }
        position = end;
    }
    if let Some(from) = start {
        parts.push(&body[from..]);
    }
    parts
}

/// The addresses of an RFC 5322 address list, tolerant of what real mail has: display names,
/// quoted strings, comments, groups, angle brackets.
pub fn parse_address_list(value: &str) -> Vec<String> {
    let mut addresses = Vec::new();
    let mut current = String::new();
    let mut angle: Option<String> = None;
    let mut chars = value.chars().peekable();
    let finish = |current: &mut String, angle: &mut Option<String>, addresses: &mut Vec<String>| {
        let address = match angle.take() {
            Some(inside) => inside,
            None => current.trim().to_string(),
        };
        current.clear();
        let address = address.trim().to_string();
        if !address.is_empty() {
            addresses.push(address);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A quoted string: kept (it may be a quoted local part), escapes honoured.
                current.push('"');
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                current.push(escaped);
                            }
                        }
                        '"' => break,
                        other => current.push(other),
                    }
                }
                current.push('"');
            }
            '(' => {
                let mut depth = 1;
                for q in chars.by_ref() {
                    match q {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                current.push(' ');
            }
            '<' => {
                let mut inside = String::new();
                for q in chars.by_ref() {
                    if q == '>' {
                        break;
                    }
                    inside.push(q);
                }
                // A route (<@a,@b:user@host>) is dropped.
                let inside = match inside.rsplit_once(':') {
                    Some((route, address)) if route.starts_with('@') => address.to_string(),
                    _ => inside,
                };
                angle = Some(inside.split_whitespace().collect());
            }
            ':' if angle.is_none() => current.clear(), // a group's name
            ',' | ';' => finish(&mut current, &mut angle, &mut addresses),
            other => current.push(other),
        }
    }
    finish(&mut current, &mut angle, &mut addresses);
    addresses
        .into_iter()
        .map(|address| {
            // The quotes of a quoted local part are not part of its value.
            match address.rsplit_once('@') {
                Some((local, domain)) => format!("{}@{}", local.trim_matches('"'), domain),
                None => address.trim_matches('"').to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_unfold_and_decode_encoded_words() {
        let message = Message::parse(
            b"Subject: =?UTF-8?B?w6lsw6h2ZQ==?=\r\n =?ISO-8859-1?Q?_caf=E9?=\r\nX-A: one\r\nx-a:  two \r\n\r\nbody\r\n",
        );
        assert_eq!(
            message.header_values("subject"),
            vec!["\u{e9}l\u{e8}ve caf\u{e9}".to_string()]
        );
        assert_eq!(
            message.header_values("X-A"),
            vec!["one".to_string(), "two".into()]
        );
        assert!(message.has_header("x-A"));
        assert!(!message.has_header("cc"));
        assert_eq!(message.raw_body(), "body\r\n");
        assert_eq!(
            decode_encoded_words("a =?x-unknown?Q?b?= c"),
            "a =?x-unknown?Q?b?= c"
        );
    }

    #[test]
    fn address_lists_with_names_comments_groups_and_quotes() {
        assert_eq!(
            parse_address_list(
                "\"Doe, John\" <john@example.com>, jane@example.org (Jane), team: a@x.net, <b@y.net>;, \"odd user\"@z.com"
            ),
            vec!["john@example.com", "jane@example.org", "a@x.net", "b@y.net", "odd user@z.com"]
        );
        assert_eq!(parse_address_list("<@route,@r2:user@host>"), vec!["user@host"]);
        assert_eq!(
            parse_address_list("undisclosed-recipients:;"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn body_parts_are_decoded_and_selected_by_type() {
        let raw = b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello =C3=A9t=C3=A9=\r\n!\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--b1--\r\nepilogue\r\n";
        let message = Message::parse(raw);
        assert_eq!(
            message.body_parts(&["text".into()]),
            vec!["Hello \u{e9}t\u{e9}!".to_string(), "<b>hi</b>".into()]
        );
        assert_eq!(
            message.body_parts(&["text/html".into()]),
            vec!["<b>hi</b>".to_string()]
        );
        assert_eq!(message.body_parts(&["application".into()]).len(), 1);
        assert_eq!(message.body_parts(&["".into()]).len(), 3);
        assert!(message.raw_body().contains("PGI+aGk8L2I+"));
    }

    #[test]
    fn a_message_without_a_blank_line_or_with_garbage_still_parses() {
        let message = Message::parse(b"Subject: x\nnot a header\nmore");
        assert_eq!(message.header_values("subject"), vec!["x".to_string()]);
        assert_eq!(message.raw_body(), "not a header\nmore");
        let message = Message::parse(b"");
        assert!(message.header_values("subject").is_empty());
        assert_eq!(message.size(), 0);
    }
}
