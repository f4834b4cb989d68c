//! Comparators (RFC 4790: i;octet, i;ascii-casemap, i;ascii-numeric) and match types (RFC 5228
//! 2.7: :is, :contains, :matches; RFC 5231: :value, :count). `:matches` also yields the match
//! variables of RFC 5229 3.2: `${0}` the whole value, then what each wildcard matched, each `*`
//! matching as little as possible from the left.

use std::cmp::Ordering;

use super::ast::{Comparator, Comparison, MatchType, Relation};

/// The comparison work one delivery may still do, in characters compared (for `:matches`,
/// pattern x value states). A hostile script cannot make a delivery slow or large: past the
/// budget the run fails and the message is kept.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    remaining: u64,
}

/// The budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Budget {
    pub fn new(units: u64) -> Self {
        Self { remaining: units }
    }

    pub fn charge(&mut self, units: u64) -> Result<(), OverBudget> {
        self.remaining = self.remaining.checked_sub(units).ok_or(OverBudget)?;
        Ok(())
    }
}

fn cost(value: &str, key: &str) -> u64 {
    value.len() as u64 + key.len() as u64 + 1
}

/// Whether any of `values` matches any of `keys`. On a `:matches` success, `captures` (when
/// given) receives the match variables. `:count` counts `values`.
pub fn test_values(
    comparison: Comparison,
    values: &[String],
    keys: &[String],
    mut captures: Option<&mut Vec<String>>,
    budget: &mut Budget,
) -> Result<bool, OverBudget> {
    let comparator = comparison.comparator;
    if let MatchType::Count(relation) = comparison.match_type {
        let count = values.len().to_string();
        for key in keys {
            budget.charge(cost(&count, key))?;
            if relation.holds(order(comparator, &count, key)) {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    for value in values {
        for key in keys {
            let matched = match comparison.match_type {
                MatchType::Value(relation) => {
                    budget.charge(cost(value, key))?;
                    relation.holds(order(comparator, value, key))
                }
                MatchType::Is => {
                    budget.charge(cost(value, key))?;
                    equal(comparator, value, key)
                }
                MatchType::Contains => {
                    budget.charge(cost(value, key))?;
                    contains(comparator, value, key)
                }
                MatchType::Matches => match wildcard_match(comparator, value, key, budget)? {
                    Some(found) => {
                        if let Some(captures) = captures.as_deref_mut() {
                            *captures = found;
                        }
                        true
                    }
                    None => false,
                },
                MatchType::Count(_) => unreachable!("handled above"),
            };
            if matched {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

impl Relation {
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            Self::Greater => ordering == Ordering::Greater,
            Self::GreaterOrEqual => ordering != Ordering::Less,
            Self::Less => ordering == Ordering::Less,
            Self::LessOrEqual => ordering != Ordering::Greater,
            Self::Equal => ordering == Ordering::Equal,
            Self::NotEqual => ordering != Ordering::Equal,
        }
    }
}

fn equal(comparator: Comparator, value: &str, key: &str) -> bool {
    match comparator {
        Comparator::Octet => value == key,
        Comparator::AsciiCasemap => value.eq_ignore_ascii_case(key),
        Comparator::AsciiNumeric => numeric_order(value, key) == Ordering::Equal,
    }
}

fn order(comparator: Comparator, value: &str, key: &str) -> Ordering {
    match comparator {
        Comparator::Octet => value.as_bytes().cmp(key.as_bytes()),
        Comparator::AsciiCasemap => value
            .bytes()
            .map(|b| b.to_ascii_uppercase())
            .cmp(key.bytes().map(|b| b.to_ascii_uppercase())),
        Comparator::AsciiNumeric => numeric_order(value, key),
    }
}

/// RFC 4790 9.1: the value of the leading digits; a string that does not start with a digit is
/// positive infinity (equal to any other such string). Arbitrarily long numbers compare right.
fn numeric_order(a: &str, b: &str) -> Ordering {
    fn digits(s: &str) -> Option<&str> {
        let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        let number = &s[..end];
        Some(number.trim_start_matches('0'))
    }
    match (digits(a), digits(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
    }
}

fn contains(comparator: Comparator, value: &str, key: &str) -> bool {
    match comparator {
        Comparator::AsciiCasemap => value.to_ascii_lowercase().contains(&key.to_ascii_lowercase()),
        // i;ascii-numeric has no substring operation; validation refuses the combination.
        Comparator::Octet | Comparator::AsciiNumeric => value.contains(key),
    }
}

#[derive(Clone, Copy)]
enum Piece {
    Literal(char),
    One,
    Any,
}

fn pattern_pieces(pattern: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pieces.push(match c {
            '*' => Piece::Any,
            '?' => Piece::One,
            '\\' => match chars.next() {
                Some(escaped) => Piece::Literal(escaped),
                None => Piece::Literal('\\'),
            },
            other => Piece::Literal(other),
        });
    }
    pieces
}

/// `:matches`: `*` any sequence, `?` one character, `\` escapes the next character. Returns the
/// match variables on success. Runs in time and memory proportional to pattern x value (each
/// (pattern position, value position) state is explored at most once), on an explicit stack;
/// that product is charged to `budget` before any work.
pub fn wildcard_match(
    comparator: Comparator,
    value: &str,
    pattern: &str,
    budget: &mut Budget,
) -> Result<Option<Vec<String>>, OverBudget> {
    budget.charge((pattern.len() as u64 + 1).saturating_mul(value.len() as u64 + 1))?;
    let pieces = pattern_pieces(pattern);
    let text: Vec<char> = value.chars().collect();
    let same = |a: char, b: char| match comparator {
        Comparator::AsciiCasemap => a.eq_ignore_ascii_case(&b),
        _ => a == b,
    };
    let (m, n) = (pieces.len(), text.len());
    let width = n + 1;
    let mut failed = vec![0u64; ((m + 1) * width).div_ceil(64)];
    let is_failed = |failed: &[u64], p: usize, s: usize| {
        let bit = p * width + s;
        failed[bit / 64] & (1 << (bit % 64)) != 0
    };
    // Each frame: pattern position, text position, next alternative to try.
    let mut stack: Vec<(usize, usize, u8)> = vec![(0, 0, 0)];
    while let Some(&mut (p, s, ref mut alternative)) = stack.last_mut() {
        if p == m {
            if s == n {
                return Ok(Some(captures(&pieces, &text, &stack)));
            }
        } else {
            let next = match (pieces[p], *alternative) {
                (Piece::Literal(c), 0) if s < n && same(text[s], c) => Some((p + 1, s + 1)),
                (Piece::One, 0) if s < n => Some((p + 1, s + 1)),
                // Shortest first: the star ends here, else it takes one more character.
                (Piece::Any, 0) => Some((p + 1, s)),
                (Piece::Any, 1) if s < n => Some((p, s + 1)),
                _ => None,
            };
            if let Some((np, ns)) = next {
                *alternative += 1;
                if !is_failed(&failed, np, ns) {
                    stack.push((np, ns, 0));
                }
                continue;
            }
        }
        let bit = p * width + s;
        failed[bit / 64] |= 1 << (bit % 64);
        stack.pop();
    }
    Ok(None)
}

/// Reads the match variables off the successful path through the states.
fn captures(pieces: &[Piece], text: &[char], path: &[(usize, usize, u8)]) -> Vec<String> {
    let mut found = vec![text.iter().collect::<String>()];
    let mut starts = vec![None; pieces.len() + 1];
    for &(p, s, _) in path {
        starts[p].get_or_insert(s);
    }
    for (index, piece) in pieces.iter().enumerate() {
        if matches!(piece, Piece::One | Piece::Any) {
            let start = starts[index].unwrap_or(0);
            let end = starts[index + 1].unwrap_or(start);
            found.push(text[start..end].iter().collect());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(value: &str, pattern: &str) -> Option<Vec<String>> {
        wildcard_match(
            Comparator::AsciiCasemap,
            value,
            pattern,
            &mut Budget::new(u64::MAX),
        )
        .unwrap()
    }

    #[test]
    fn wildcards_match_leftmost_shortest_as_rfc_5229_shows() {
        // RFC 5229 3.2's examples.
        assert_eq!(
            captured("[acme-users] [fwd] version 1.0 is out", "[*] *").unwrap()[1..],
            ["acme-users".to_string(), "[fwd] version 1.0 is out".to_string()]
        );
        let list = captured("Sieve mailing list <sieve@example.com>", "*<*@*").unwrap();
        assert_eq!(
            list[1..],
            [
                "Sieve mailing list ".to_string(),
                "sieve".into(),
                "example.com>".into()
            ]
        );
        assert_eq!(
            captured("abc", "a?c").unwrap(),
            vec!["abc".to_string(), "b".into()]
        );
        assert!(captured("abc", "a?").is_none());
        assert!(captured("", "*").is_some());
        assert!(captured("a*b", "a\\*b").is_some());
        assert!(captured("axb", "a\\*b").is_none());
        assert!(captured("a?b", "a\\?b").is_some());
        assert!(captured("ABC", "a*").is_some());
        assert!(
            wildcard_match(Comparator::Octet, "ABC", "a*", &mut Budget::new(100))
                .unwrap()
                .is_none()
        );
        // The pattern x value product is charged before the work: 4 x 4 here.
        assert_eq!(
            wildcard_match(Comparator::Octet, "ABC", "a*b", &mut Budget::new(15)),
            Err(OverBudget)
        );
    }

    #[test]
    fn many_stars_on_a_long_value_finish() {
        let value = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(200));
        assert!(captured(&value, &pattern).is_none());
        let pattern = "*".repeat(100_000);
        assert!(captured(&value, &pattern).is_some());
    }

    #[test]
    fn comparators_order_as_rfc_4790_says() {
        assert_eq!(numeric_order("0010", "10"), Ordering::Equal);
        assert_eq!(numeric_order("9", "10"), Ordering::Less);
        assert_eq!(numeric_order("abc", "99999999999999999999999"), Ordering::Greater);
        assert_eq!(numeric_order("abc", "x"), Ordering::Equal);
        assert_eq!(numeric_order("12abc", "12"), Ordering::Equal);
        assert_eq!(order(Comparator::AsciiCasemap, "abc", "ABD"), Ordering::Less);
        assert!(contains(Comparator::AsciiCasemap, "Hello World", "WORLD"));
        assert!(!contains(Comparator::Octet, "Hello World", "WORLD"));
        assert!(contains(Comparator::Octet, "x", ""));
    }

    #[test]
    fn count_and_value_relations() {
        let comparison = |match_type| Comparison {
            comparator: Comparator::AsciiNumeric,
            match_type,
        };
        let values = vec!["a".to_string(), "b".into(), "c".into()];
        assert!(test_values(
            comparison(MatchType::Count(Relation::Equal)),
            &values,
            &["3".to_string()],
            None,
            &mut Budget::new(1000)
        )
        .unwrap());
        assert!(test_values(
            comparison(MatchType::Count(Relation::Greater)),
            &values,
            &["2".to_string()],
            None,
            &mut Budget::new(1000)
        )
        .unwrap());
        assert!(!test_values(
            comparison(MatchType::Count(Relation::Less)),
            &values,
            &["3".to_string()],
            None,
            &mut Budget::new(1000)
        )
        .unwrap());
        let numbers = vec!["5".to_string()];
        assert!(test_values(
            comparison(MatchType::Value(Relation::GreaterOrEqual)),
            &numbers,
            &["5".to_string()],
            None,
            &mut Budget::new(1000)
        )
        .unwrap());
        assert!(test_values(
            comparison(MatchType::Value(Relation::NotEqual)),
            &numbers,
            &["4".to_string()],
            None,
            &mut Budget::new(1000)
        )
        .unwrap());
    }
}
