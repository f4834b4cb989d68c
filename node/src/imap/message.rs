//! The parts of a raw message that FETCH names without a MIME parse (RFC 3501 6.4.5): the
//! header (everything up to and including the first empty line), the text (what follows it),
//! the header's fields by name, and `<origin.count>` partials. Sans-IO, on bytes.

/// Where the text starts: just after the first CRLF CRLF (the header keeps the empty line). A
/// message without one is all header (RFC 5322 allows a message with no body).
pub fn text_start(message: &[u8]) -> usize {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .unwrap_or(message.len())
}

pub fn header(message: &[u8]) -> &[u8] {
    &message[..text_start(message)]
}

pub fn text(message: &[u8]) -> &[u8] {
    &message[text_start(message)..]
}

/// HEADER.FIELDS (`not` false) or HEADER.FIELDS.NOT (`not` true): the header's fields whose
/// names are (or are not) in `names`, case-insensitively, each whole with its folded lines, in
/// the message's order, followed by the empty line (RFC 3501 6.4.5: the subset of the header
/// still ends with the blank line).
pub fn header_fields(message: &[u8], names: &[&[u8]], not: bool) -> Vec<u8> {
    let header = header(message);
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or(line);
            let name = name.trim_ascii_end();
            let named = names.iter().any(|n| n.eq_ignore_ascii_case(name));
            keep = named != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `<origin.count>` of `data` (RFC 3501 6.4.5): from `origin`, at most `count` bytes; empty
/// when `origin` is past the end.
pub fn partial(data: &[u8], origin: u32, count: u32) -> &[u8] {
    let start = (origin as usize).min(data.len());
    let end = start.saturating_add(count as usize).min(data.len());
    &data[start..end]
}

/// A message as a literal can carry it: a literal holds no NUL (RFC 3501 4.3, `CHAR8`), so a
/// NUL is sent as 0x80, as other servers do, rather than the message left out.
pub fn without_nul(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if data.contains(&0) {
        std::borrow::Cow::Owned(data.iter().map(|&b| if b == 0 { 0x80 } else { b }).collect())
    } else {
        std::borrow::Cow::Borrowed(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Subject: hi\r\nX-Long: a\r\n folded\r\nfrom: a@b\r\n\r\nbody\r\n\r\nmore\r\n";

    #[test]
    fn the_header_ends_at_the_first_empty_line_and_keeps_it() {
        assert_eq!(
            header(MESSAGE),
            b"Subject: hi\r\nX-Long: a\r\n folded\r\nfrom: a@b\r\n\r\n"
        );
        assert_eq!(text(MESSAGE), b"body\r\n\r\nmore\r\n");
        assert_eq!(header(b"Subject: no body\r\n"), b"Subject: no body\r\n");
        assert_eq!(text(b"Subject: no body\r\n"), b"");
    }

    #[test]
    fn header_fields_match_names_in_any_case_with_folded_lines() {
        assert_eq!(
            header_fields(MESSAGE, &[b"FROM", b"x-long"], false),
            b"X-Long: a\r\n folded\r\nfrom: a@b\r\n\r\n"
        );
        assert_eq!(
            header_fields(MESSAGE, &[b"x-long"], true),
            b"Subject: hi\r\nfrom: a@b\r\n\r\n"
        );
        assert_eq!(header_fields(MESSAGE, &[b"Nope"], false), b"\r\n");
    }

    #[test]
    fn partials_stop_at_the_end() {
        assert_eq!(partial(b"0123456789", 2, 3), b"234");
        assert_eq!(partial(b"0123456789", 8, 100), b"89");
        assert_eq!(partial(b"0123456789", 20, 5), b"");
    }

    #[test]
    fn nul_bytes_are_sent_as_0x80() {
        assert_eq!(without_nul(b"a\0b").as_ref(), b"a\x80b");
        assert!(matches!(without_nul(b"ab"), std::borrow::Cow::Borrowed(_)));
    }
}
