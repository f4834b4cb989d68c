//! SPECIAL-USE (RFC 6154): which mailbox a client should use for drafts, sent mail, the trash,
//! junk and the archive. `[imap.special_use]` names them; LIST shows each use as an attribute
//! of its mailbox (`\Sent`), and its `SPECIAL-USE` selection option lists only those.
//!
//! CREATE-SPECIAL-USE (RFC 6154 3): `CREATE name (USE (\Sent))` records the use as the new
//! mailbox's `/private/specialuse` annotation ([`ANNOTATION`]: the METADATA entry RFC 6154 4
//! defines for it, its value the attributes separated by spaces). An annotation, not a node
//! setting, because it must hold on every node: it replicates with the mailbox, follows it
//! through RENAME, goes with it on DELETE, and GETMETADATA shows it; SETMETADATA may change it,
//! within the uses offered ([`checked_value`]). LIST shows the uses of `[imap.special_use]` (the
//! node's defaults) and those annotations together.

/// The uses this server knows: the `[imap.special_use]` key, the attribute (without its
/// backslash), and the mailbox it names unless the configuration says another.
pub const USES: [(&str, &str, &str); 5] = [
    ("drafts", "Drafts", "Drafts"),
    ("sent", "Sent", "Sent"),
    ("trash", "Trash", "Trash"),
    ("junk", "Junk", "Junk"),
    ("archive", "Archive", "Archive"),
];

/// The annotation entry holding a mailbox's uses (RFC 6154 4).
pub const ANNOTATION: &str = "/private/specialuse";

/// The attribute this server knows for `written` (`Sent`, `sent`: [`USES`]' spelling), or
/// `None` for one it does not offer (`\All`, `\Flagged`: no virtual mailboxes here).
pub fn known_use(written: &str) -> Option<&'static str> {
    USES.iter()
        .map(|&(_, attribute, _)| attribute)
        .find(|attribute| attribute.eq_ignore_ascii_case(written))
}

/// The annotation value of `uses`: `\Sent \Archive`.
pub fn annotation_value(uses: &[&str]) -> Vec<u8> {
    uses.iter()
        .map(|u| format!("\\{u}"))
        .collect::<Vec<_>>()
        .join(" ")
        .into_bytes()
}

/// A `/private/specialuse` value a client sets with SETMETADATA, checked (RFC 6154 4 asks that
/// it not be taken blindly): attributes this server offers, separated by spaces; the stored
/// value is their canonical spelling (`None`: no use left, the entry is removed). `Err` names
/// the first word that is not such an attribute (`NO [USEATTR]`).
pub fn checked_value(value: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut uses = Vec::new();
    for word in value.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let attribute = word
            .strip_prefix(b"\\")
            .and_then(|name| std::str::from_utf8(name).ok())
            .and_then(known_use)
            .ok_or_else(|| String::from_utf8_lossy(word).into_owned())?;
        if !uses.contains(&attribute) {
            uses.push(attribute);
        }
    }
    Ok((!uses.is_empty()).then(|| annotation_value(&uses)))
}

/// The uses an annotation value names that this server knows; others are left out.
fn annotated_uses(value: &[u8]) -> impl Iterator<Item = &'static str> + '_ {
    value
        .split(|&b| b == b' ')
        .filter_map(|word| std::str::from_utf8(word.strip_prefix(b"\\")?).ok())
        .filter_map(known_use)
}

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

    /// These uses and those the mailboxes' `/private/specialuse` annotations (mailbox name,
    /// value) give, each (mailbox, use) once.
    pub fn with_annotated(&self, annotated: &[(String, Vec<u8>)]) -> SpecialUses {
        let mut uses = self.uses.clone();
        for (mailbox, value) in annotated {
            for attribute in annotated_uses(value) {
                if !uses.iter().any(|(m, a)| m == mailbox && *a == attribute) {
                    uses.push((mailbox.clone(), attribute));
                }
            }
        }
        SpecialUses { uses }
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

    #[test]
    fn annotated_uses_join_the_configured_ones_once() {
        assert_eq!(known_use("sent"), Some("Sent"));
        assert_eq!(known_use("All"), None);
        assert_eq!(annotation_value(&["Sent", "Archive"]), b"\\Sent \\Archive");
        let uses = SpecialUses::default().with_annotated(&[
            ("Sent".into(), b"\\Sent".to_vec()),
            ("Outbox".into(), b"\\Sent \\Flagged junk \\junk".to_vec()),
        ]);
        assert_eq!(uses.of("Sent").collect::<Vec<_>>(), ["Sent"]);
        assert_eq!(uses.of("Outbox").collect::<Vec<_>>(), ["Sent", "Junk"]);
    }

    #[test]
    fn a_value_set_by_a_client_is_checked_and_spelled_canonically() {
        assert_eq!(
            checked_value(b"\\sent  \\Archive \\Sent"),
            Ok(Some(b"\\Sent \\Archive".to_vec()))
        );
        assert_eq!(checked_value(b""), Ok(None));
        assert_eq!(checked_value(b"\\Sent \\All"), Err("\\All".to_string()));
        assert_eq!(checked_value(b"Sent"), Err("Sent".to_string()));
    }
}
