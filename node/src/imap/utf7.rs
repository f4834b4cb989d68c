//! Modified UTF-7 (RFC 3501 5.1.3), how IMAP4rev1 carries a mailbox name that is not plain
//! ASCII. The store keeps names in UTF-8 (LMTP's and sieve's `fileinto`, the operator CLI and
//! every other front end use them so); the IMAP session decodes each name a client sends with
//! [`decode`] and encodes each name it sends with [`encode`].
//!
//! Printable ASCII stands for itself, except `&`, written `&-`. Anything else is a run of
//! UTF-16 (big-endian) in base64 with `,` for `/` and no padding, between `&` and `-`.
//!
//! Written here rather than taken from a crate: the one crate for it (utf7-imap, MIT, last
//! released 2022) decodes without reporting invalid input, and a client's invalid name must be
//! refused, not guessed at. [`decode`] takes only the one spelling [`encode`] gives (no base64
//! for a printable ASCII character, no two runs side by side, no stray bits), so a name has
//! exactly one form on the wire and two spellings never reach one mailbox.

/// The base64 alphabet of modified UTF-7: RFC 2045's with `,` for `/`.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Whether `c` stands for itself in modified UTF-7 (printable ASCII but `&`).
fn is_direct(c: char) -> bool {
    (' '..='~').contains(&c) && c != '&'
}

/// `name` (UTF-8) in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if is_direct(c) {
            flush(&mut run, &mut out);
            out.push(c);
        } else if c == '&' && run.is_empty() {
            out.push_str("&-");
        } else if c == '&' {
            flush(&mut run, &mut out);
            out.push_str("&-");
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Writes a run of UTF-16 units as `&base64-` and empties it.
fn flush(run: &mut Vec<u16>, out: &mut String) {
    if run.is_empty() {
        return;
    }
    out.push('&');
    let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // 3 bytes give 4 characters; 2 give 3 and 1 gives 2 (no padding).
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out.push('-');
    run.clear();
}

/// Why a name is not modified UTF-7 (`reason` says so in its first words).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid mailbox name {name:?}: {reason}")]
pub struct Invalid {
    pub name: String,
    pub reason: &'static str,
}

/// The UTF-8 name a modified UTF-7 `name` stands for.
pub fn decode(name: &str) -> Result<String, Invalid> {
    let invalid = |reason| Invalid {
        name: name.to_string(),
        reason,
    };
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if c != '&' {
            if !is_direct(c) {
                return Err(invalid(
                    "not modified UTF-7 (RFC 3501 5.1.3): a character other than printable ASCII outside an &...- run",
                ));
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let Some(end) = rest.find('-') else {
            return Err(invalid(
                "not modified UTF-7 (RFC 3501 5.1.3): an & without its closing -",
            ));
        };
        let run = &rest[1..end];
        rest = &rest[end + 1..];
        if run.is_empty() {
            out.push('&');
            continue;
        }
        out.push_str(&decode_run(run).map_err(invalid)?);
    }
    // One spelling per name: what does not come back the same from `encode` is refused
    // (base64 for a printable character, two runs side by side, nonzero padding bits).
    if encode(&out) != name {
        return Err(invalid(
            "not modified UTF-7 (RFC 3501 5.1.3): not the one spelling of the name it stands for",
        ));
    }
    Ok(out)
}

/// The characters of one base64 run (between `&` and `-`).
fn decode_run(run: &str) -> Result<String, &'static str> {
    let mut bits: u32 = 0;
    let mut held = 0;
    let mut units = Vec::with_capacity(run.len() * 3 / 8);
    for b in run.bytes() {
        let value = ALPHABET.iter().position(|&a| a == b).ok_or(
            "not modified UTF-7 (RFC 3501 5.1.3): a character outside modified base64 in an &...- run",
        )?;
        bits = (bits << 6) | value as u32;
        held += 6;
        if held >= 16 {
            held -= 16;
            units.push((bits >> held) as u16);
            bits &= (1 << held) - 1;
        }
    }
    if held >= 6 || bits != 0 {
        return Err(
            "not modified UTF-7 (RFC 3501 5.1.3): an &...- run that does not end on whole UTF-16 units",
        );
    }
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| "not modified UTF-7 (RFC 3501 5.1.3): an unpaired UTF-16 surrogate")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_rfc_examples_and_common_names_encode_and_decode() {
        for (utf8, wire) in [
            // RFC 3501 5.1.3's example, and RFC 2152's with the modified alphabet.
            (
                "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}",
                "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
            ),
            ("Entw\u{fc}rfe", "Entw&APw-rfe"),
            ("Bo\u{ee}te de r\u{e9}ception", "Bo&AO4-te de r&AOk-ception"),
            ("\u{41f}\u{43e}\u{447}\u{442}\u{430}", "&BB8EPgRHBEIEMA-"),
            ("Q&A", "Q&-A"),
            ("&", "&-"),
            ("&&", "&-&-"),
            ("\u{e9}&", "&AOk-&-"),
            ("INBOX", "INBOX"),
            ("", ""),
            // Outside the basic plane: a surrogate pair.
            ("\u{1f4e7} mail", "&2D3c5w- mail"),
        ] {
            assert_eq!(encode(utf8), wire, "{utf8:?}");
            assert_eq!(decode(wire).as_deref(), Ok(utf8), "{wire:?}");
        }
    }

    #[test]
    fn invalid_names_are_refused_with_a_reason() {
        for bad in [
            // Raw 8-bit text, an unterminated run, a character outside the alphabet.
            "Entw\u{fc}rfe",
            "&AOk",
            "&AO/-",
            // Base64 for what stands for itself ("A"), two runs side by side, stray bits.
            "&AEE-",
            "&AOk-&AOk-",
            "&AOl-",
            // Half a UTF-16 unit; an unpaired surrogate.
            "&AO-",
            "&2D0-",
            // A control character.
            "a\tb",
        ] {
            let err = decode(bad).unwrap_err();
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains("modified UTF-7"), "{err}");
        }
    }

    proptest! {
        /// Any UTF-8 name comes back whole, and its encoding is printable ASCII.
        #[test]
        fn every_name_round_trips(name in "\\PC{0,24}") {
            let wire = encode(&name);
            prop_assert!(wire.bytes().all(|b| (0x20..0x7f).contains(&b)), "{wire:?}");
            prop_assert_eq!(decode(&wire), Ok(name));
        }

        /// Whatever a client sends, decoding answers without a panic, and what it accepts
        /// encodes back to exactly what was sent.
        #[test]
        fn arbitrary_input_decodes_or_is_refused(wire in "[&\\-A-Za-z0-9+,/ ~\u{e9}]{0,24}") {
            if let Ok(name) = decode(&wire) {
                prop_assert_eq!(encode(&name), wire);
            }
        }
    }
}
