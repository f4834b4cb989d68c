//! ESEARCH (RFC 4731), sans-IO: what `SEARCH RETURN (...)` answers instead of `* SEARCH`. The
//! search itself is the usual one (`messages::search`); this module turns the numbers it found
//! into `* ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 4 ALL 2,4:5,9`, which imap-codec does not
//! encode, with CONDSTORE's `MODSEQ` (RFC 7162 3.1.5) when the search had a MODSEQ key.

/// The result options of `RETURN (...)`; `RETURN ()` means ALL (RFC 4731 3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
}

/// One message found: its number (uid or sequence number, as the command asked) and modseq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub number: u32,
    pub modseq: u64,
}

/// The `* ESEARCH` line, CRLF included. `found` is in ascending order of number; `with_modseq`:
/// the search had a MODSEQ key. `tag` is a command tag (no `"` or `\` can be in one).
pub fn answer(tag: &str, uid: bool, returns: SearchReturn, found: &[Found], with_modseq: bool) -> Vec<u8> {
    let mut line = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    // RFC 4731 3.1: MIN, MAX and ALL are left out when nothing matched; COUNT 0 is said.
    if let (Some(first), Some(last)) = (found.first(), found.last()) {
        if returns.min {
            line.push_str(&format!(" MIN {}", first.number));
        }
        if returns.max {
            line.push_str(&format!(" MAX {}", last.number));
        }
    }
    if returns.count {
        line.push_str(&format!(" COUNT {}", found.len()));
    }
    if returns.all && !found.is_empty() {
        line.push_str(" ALL ");
        line.push_str(&sequence_set(found));
    }
    if with_modseq {
        // RFC 7162 3.1.5: the highest modseq of the messages returned: all of them for ALL or
        // COUNT, else only the MIN and MAX ones.
        let returned: Box<dyn Iterator<Item = &Found>> = if returns.all || returns.count {
            Box::new(found.iter())
        } else {
            Box::new(
                found
                    .first()
                    .into_iter()
                    .filter(|_| returns.min)
                    .chain(found.last().into_iter().filter(|_| returns.max)),
            )
        };
        if let Some(highest) = returned.map(|f| f.modseq).max() {
            line.push_str(&format!(" MODSEQ {highest}"));
        }
    }
    line.push_str("\r\n");
    line.into_bytes()
}

/// `2,4:5,9`: ascending numbers with consecutive ones as ranges.
fn sequence_set(found: &[Found]) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for f in found {
        match ranges.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(f.number) => *hi = f.number,
            _ => ranges.push((f.number, f.number)),
        }
    }
    ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(numbers: &[(u32, u64)]) -> Vec<Found> {
        numbers
            .iter()
            .map(|&(number, modseq)| Found { number, modseq })
            .collect()
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_rfc_4731_answer_names_each_option_asked() {
        let all = SearchReturn {
            min: true,
            max: true,
            count: true,
            all: true,
        };
        let f = found(&[(2, 5), (4, 9), (5, 1), (9, 3)]);
        assert_eq!(
            text(answer("a1", true, all, &f, false)),
            "* ESEARCH (TAG \"a1\") UID MIN 2 MAX 9 COUNT 4 ALL 2,4:5,9\r\n"
        );
        let only_count = SearchReturn {
            count: true,
            ..Default::default()
        };
        assert_eq!(
            text(answer("t", false, only_count, &f, false)),
            "* ESEARCH (TAG \"t\") COUNT 4\r\n"
        );
    }

    #[test]
    fn nothing_found_leaves_out_min_max_all_and_modseq() {
        let all = SearchReturn {
            min: true,
            max: true,
            count: true,
            all: true,
        };
        assert_eq!(
            text(answer("a", true, all, &[], true)),
            "* ESEARCH (TAG \"a\") UID COUNT 0\r\n"
        );
    }

    #[test]
    fn modseq_is_the_highest_of_the_messages_returned() {
        let f = found(&[(1, 7), (2, 40), (3, 9)]);
        let min_max = SearchReturn {
            min: true,
            max: true,
            ..Default::default()
        };
        assert_eq!(
            text(answer("a", false, min_max, &f, true)),
            "* ESEARCH (TAG \"a\") MIN 1 MAX 3 MODSEQ 9\r\n"
        );
        let all = SearchReturn {
            all: true,
            ..Default::default()
        };
        assert_eq!(
            text(answer("a", false, all, &f, true)),
            "* ESEARCH (TAG \"a\") ALL 1:3 MODSEQ 40\r\n"
        );
    }
}
