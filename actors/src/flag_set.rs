//! A message's flags as the uid index holds them (`store::uid_row`): the five system flags as
//! bits, the keywords apart by name.
//!
//! FETCH FLAGS and a SEARCH over flags read every message of a mailbox: as a `Vec<Flag>` each,
//! a message with `\Seen` cost an allocation and a shared flag's reference count, and a search
//! compared names again to learn what the row's bits had already said. Here a message without
//! keywords (nearly all of them) is a byte and nothing allocated.

use std::sync::{Arc, OnceLock};

use mailmesh_protocol::names::Flag;

use crate::store::uid_row::SYSTEM_BITS;

/// The bit of each system flag in [`FlagSet::system`] (its place in [`SYSTEM_BITS`]).
pub const ANSWERED: u8 = 1 << 0;
pub const FLAGGED: u8 = 1 << 1;
pub const DELETED: u8 = 1 << 2;
pub const SEEN: u8 = 1 << 3;
pub const DRAFT: u8 = 1 << 4;

/// The system flags' places in [`SYSTEM_BITS`] in the order of their names (`\Answered`,
/// `\Deleted`, `\Draft`, `\Flagged`, `\Seen`: how `Flag` sorts them, and so a record's flag
/// list; a test checks it).
const BY_NAME: [usize; 5] = [0, 2, 4, 1, 3];

/// The flags set on a message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlagSet {
    /// One bit per system flag set ([`SYSTEM_BITS`]; [`SEEN`] and the others).
    pub system: u8,
    /// The keywords set, sorted by name; `None` (nothing allocated) for most messages, and
    /// shared, not copied, by the copies of a set (the Mailbox's `ShownIndex` and each answer
    /// made from it).
    keywords: Option<Arc<[Flag]>>,
}

impl FlagSet {
    /// Just the system flags `system` ([`SYSTEM_BITS`]; bits above them are ignored).
    pub fn system(system: u8) -> Self {
        FlagSet {
            system: system & ALL,
            keywords: None,
        }
    }

    /// The system flags `system` and the keywords (anything not a system flag) `keywords`.
    pub fn with_keywords(system: u8, keywords: Vec<Flag>) -> Self {
        let mut set = FlagSet::system(system);
        let mut list = Vec::new();
        for flag in keywords {
            set.insert(flag, &mut list);
        }
        set.with_list(list)
    }

    /// Whether every system flag of `bits` is set.
    pub fn has(&self, bits: u8) -> bool {
        self.system & bits == bits
    }

    /// Whether `flag` (exactly as named: system flags are stored in their canonical case) is set.
    pub fn contains(&self, flag: &Flag) -> bool {
        match system_bit(flag.as_str()) {
            Some(bit) => self.has(bit),
            None => self.keywords().binary_search(flag).is_ok(),
        }
    }

    /// The keywords set, sorted by name.
    pub fn keywords(&self) -> &[Flag] {
        self.keywords.as_deref().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.system == 0 && self.keywords.is_none()
    }

    /// The names of the flags set, in the order of a record's flags (`MessageRecord::set_flags`,
    /// sorted by name): keywords before `\` (`$Junk`, capitals), the system flags, the others.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        let (before, after) = self.keywords_around_system();
        before
            .iter()
            .map(Flag::as_str)
            .chain(system_names(self.system).iter().copied())
            .chain(after.iter().map(Flag::as_str))
    }

    /// The flags set, in the order of a record's flags: shared copies of the system flags made
    /// once, not a new `Flag` per message.
    pub fn to_vec(&self) -> Vec<Flag> {
        let system = system_flags();
        let (before, after) = self.keywords_around_system();
        let mut flags = Vec::with_capacity(self.system.count_ones() as usize + before.len() + after.len());
        flags.extend_from_slice(before);
        flags.extend(
            BY_NAME
                .iter()
                .filter(|&&bit| self.system & (1 << bit) != 0)
                .map(|&bit| system[bit].clone()),
        );
        flags.extend_from_slice(after);
        flags
    }

    /// The keywords that sort before the system flags and those after. No keyword starts with
    /// `\` (`Flag::new`), so the system flags sit in one block between them.
    fn keywords_around_system(&self) -> (&[Flag], &[Flag]) {
        let keywords = self.keywords();
        keywords.split_at(keywords.partition_point(|k| k.as_str() < "\\"))
    }

    fn insert(&mut self, flag: Flag, keywords: &mut Vec<Flag>) {
        match system_bit(flag.as_str()) {
            Some(bit) => self.system |= bit,
            None => keywords.push(flag),
        }
    }

    fn with_list(mut self, mut keywords: Vec<Flag>) -> Self {
        if !keywords.is_sorted() {
            keywords.sort_unstable();
        }
        keywords.dedup();
        self.keywords = (!keywords.is_empty()).then(|| keywords.into());
        self
    }
}

impl FromIterator<Flag> for FlagSet {
    /// The set of `flags`, in any order.
    fn from_iter<I: IntoIterator<Item = Flag>>(flags: I) -> Self {
        let mut set = FlagSet::default();
        let mut keywords = Vec::new();
        for flag in flags {
            set.insert(flag, &mut keywords);
        }
        set.with_list(keywords)
    }
}

/// Every system flag's bit.
const ALL: u8 = (1 << SYSTEM_BITS.len()) - 1;

/// The bit of the system flag named `name` (in its canonical case, as `Flag` stores it).
fn system_bit(name: &str) -> Option<u8> {
    SYSTEM_BITS.iter().position(|s| *s == name).map(|bit| 1 << bit)
}

/// The names of the system flags set in `bits`, in the order of their names: a list for each
/// of the 32 combinations, made once, so a FETCH FLAGS of 100,000 messages does not test five
/// bits for each (most have none set).
fn system_names(bits: u8) -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..=ALL)
            .map(|bits| {
                BY_NAME
                    .iter()
                    .filter(|&&bit| bits & (1 << bit) != 0)
                    .map(|&bit| SYSTEM_BITS[bit])
                    .collect()
            })
            .collect()
    });
    &names[usize::from(bits & ALL)]
}

/// The system flags as `Flag`s, in the order of [`SYSTEM_BITS`], made once.
fn system_flags() -> &'static [Flag; 5] {
    static FLAGS: OnceLock<[Flag; 5]> = OnceLock::new();
    FLAGS.get_or_init(|| SYSTEM_BITS.map(|name| Flag::new(name).expect("a system flag")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::uid_row::tests::record_at;

    fn flags(names: &[&str]) -> Vec<Flag> {
        names.iter().map(|n| Flag::new(n).unwrap()).collect()
    }

    #[test]
    fn the_bits_are_the_system_flags_places() {
        for (bit, name) in [
            (ANSWERED, "\\Answered"),
            (FLAGGED, "\\Flagged"),
            (DELETED, "\\Deleted"),
            (SEEN, "\\Seen"),
            (DRAFT, "\\Draft"),
        ] {
            assert_eq!(system_bit(name), Some(bit), "{name}");
        }
        let mut by_name = SYSTEM_BITS;
        by_name.sort_unstable();
        assert_eq!(BY_NAME.map(|bit| SYSTEM_BITS[bit]), by_name);
    }

    /// A message's flags through the set come back as the record lists them: the same flags in
    /// the same order, with keywords sorting before, between and after the system flags.
    #[test]
    fn a_set_gives_back_the_records_flags_in_its_order() {
        let cases: [&[&str]; 8] = [
            &[],
            &["\\Seen"],
            &["\\Seen", "\\Answered", "\\Draft", "\\Flagged", "\\Deleted"],
            &["$Junk", "\\Seen"],
            &[
                "Zeta",
                "lower",
                "\\Draft",
                "$Junk",
                "\\Answered",
                "[x",
                "_y",
                "~z",
                "0",
            ],
            &["lower", "UPPER"],
            &["\\Flagged", "a", "A"],
            &["seen", "Seen", "\\Seen"],
        ];
        for names in cases {
            let record = record_at(1, names);
            let listed: Vec<Flag> = record.set_flags().cloned().collect();
            let set: FlagSet = record.set_flags().cloned().collect();
            assert_eq!(set.to_vec(), listed, "{names:?}");
            assert_eq!(
                set.names().collect::<Vec<_>>(),
                listed.iter().map(Flag::as_str).collect::<Vec<_>>(),
                "{names:?}"
            );
            // In any order, and from the bits and keywords a row holds.
            let reversed: FlagSet = listed.iter().rev().cloned().collect();
            assert_eq!(reversed, set, "{names:?}");
            let keywords = set.keywords().iter().rev().cloned().collect();
            assert_eq!(FlagSet::with_keywords(set.system, keywords), set, "{names:?}");
            assert_eq!(set.is_empty(), names.is_empty());
            for flag in flags(&[
                "\\Seen",
                "\\Answered",
                "\\Draft",
                "\\Flagged",
                "\\Deleted",
                "seen",
                "Zeta",
                "zeta",
            ]) {
                assert_eq!(set.contains(&flag), listed.contains(&flag), "{names:?} {flag}");
            }
        }
    }

    #[test]
    fn system_bits_are_asked_together() {
        let set = FlagSet::system(SEEN | FLAGGED | 0x80);
        assert_eq!(
            set.system,
            SEEN | FLAGGED,
            "bits above the system flags are dropped"
        );
        assert!(set.has(SEEN) && set.has(SEEN | FLAGGED) && set.has(0));
        assert!(!set.has(SEEN | DRAFT) && !set.has(ANSWERED));
        assert!(set.keywords().is_empty());
        assert_eq!(set.to_vec(), flags(&["\\Flagged", "\\Seen"]));
        for bits in 0..=ALL {
            let set = FlagSet::system(bits);
            let listed: Vec<Flag> = SYSTEM_BITS
                .iter()
                .enumerate()
                .filter(|(bit, _)| bits & (1 << bit) != 0)
                .map(|(_, name)| Flag::new(name).unwrap())
                .collect::<FlagSet>()
                .to_vec();
            assert_eq!(set.to_vec(), listed, "{bits:#b}");
            assert!(listed.is_sorted(), "{bits:#b}");
            assert_eq!(
                set.names().collect::<Vec<_>>(),
                listed.iter().map(Flag::as_str).collect::<Vec<_>>()
            );
        }
    }
}
