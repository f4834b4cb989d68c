//! SPECIAL-USE (RFC 6154): which mailbox a client should use for drafts, sent mail, the trash,
//! junk and the archive. `[imap.special_use]` names them; LIST shows each use as an attribute
//! of its mailbox (`\Sent`), and its `SPECIAL-USE` selection option lists only those.

/// The uses this server knows: the `[imap.special_use]` key, the attribute (without its
/// backslash), and the mailbox it names unless the configuration says another.
pub const USES: [(&str, &str, &str); 5] = [
    ("drafts", "Drafts", "Drafts"),
    ("sent", "Sent", "Sent"),
    ("trash", "Trash", "Trash"),
    ("junk", "Junk", "Junk"),
    ("archive", "Archive", "Archive"),
];

/// The mailboxes with a special use, validated (`[imap.special_use]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialUses {
    /// (mailbox name, attribute); one mailbox may have several uses.
    uses: Vec<(String, &'static str)>,
}

impl Default for SpecialUses {
    fn default() -> SpecialUses {
        SpecialUses {
            uses: USES
                .iter()
                .map(|&(_, attribute, mailbox)| (mailbox.to_string(), attribute))
                .collect(),
        }
    }
}

impl SpecialUses {
    /// From each use's attribute and mailbox name (already validated); an empty name gives that
    /// use to no mailbox.
    pub fn new(uses: impl IntoIterator<Item = (&'static str, String)>) -> SpecialUses {
        SpecialUses {
            uses: uses
                .into_iter()
                .filter(|(_, mailbox)| !mailbox.is_empty())
                .map(|(attribute, mailbox)| (mailbox, attribute))
                .collect(),
        }
    }

    /// The attributes of the mailbox `name`, in [`USES`]' order.
    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'static str> + 'a {
        self.uses
            .iter()
            .filter(move |(mailbox, _)| mailbox == name)
            .map(|&(_, attribute)| attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_name_the_usual_mailboxes_and_an_empty_name_turns_a_use_off() {
        let uses = SpecialUses::default();
        assert_eq!(uses.of("Sent").collect::<Vec<_>>(), ["Sent"]);
        assert_eq!(uses.of("INBOX").count(), 0);
        let uses = SpecialUses::new([
            ("Sent", "Outbox".to_string()),
            ("Archive", "Outbox".to_string()),
            ("Junk", String::new()),
        ]);
        assert_eq!(uses.of("Outbox").collect::<Vec<_>>(), ["Sent", "Archive"]);
        assert_eq!(uses.of("Junk").count(), 0);
        assert_eq!(uses.of("").count(), 0);
    }
}
