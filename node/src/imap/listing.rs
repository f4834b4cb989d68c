//! What a LIST answers (RFC 3501 6.3.8, RFC 5258, RFC 5819, RFC 6154), sans-IO: from the user's mailbox
//! names and subscriptions and the command's options, the names listed in order with their
//! attributes, whether each carries `CHILDINFO` and whether a STATUS follows it. The session
//! reads the names from the Directory and writes the lines.

use std::collections::BTreeSet;

use super::extensions::ListCommand;
use super::session::list_matches;
use super::special_use::SpecialUses;

const SEPARATOR: char = mailmesh_protocol::names::HIERARCHY_SEPARATOR;

/// One line of a LIST answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Name attributes without their backslash (`HasChildren`, `Subscribed`, `NonExistent`).
    pub attributes: Vec<&'static str>,
    /// RFC 5258's `("CHILDINFO" ("SUBSCRIBED"))`: an inferior is subscribed (RECURSIVEMATCH).
    pub subscribed_child: bool,
    /// A STATUS answer follows (RETURN (STATUS ...) and the mailbox exists).
    pub status: bool,
}

/// The names `command` lists, sorted, each once however many patterns match it. `existing`
/// holds every mailbox of the user (INBOX included), `subscribed` the subscribed names. An
/// existing mailbox with a special use shows it in every LIST (RFC 6154 allows it without the
/// return option, and clients that never ask still find their Sent folder).
pub fn list(
    command: &ListCommand,
    existing: &[String],
    subscribed: &[String],
    special_use: &SpecialUses,
) -> Vec<Listed> {
    let selection = &command.selection;
    let existing: BTreeSet<&str> = existing.iter().map(String::as_str).collect();
    let subscribed: BTreeSet<&str> = subscribed.iter().map(String::as_str).collect();
    let mut candidates = existing.clone();
    // RFC 3501 6.3.8: a level of hierarchy that "%" matches is listed even when it is no
    // mailbox, as \Noselect, so that a client walking the tree finds what is below it (a
    // mailbox deleted while it had inferiors leaves such a level).
    let levels: BTreeSet<&str> = existing
        .iter()
        .flat_map(|name| superiors(name))
        .filter(|level| !existing.contains(level))
        .collect();
    if !selection.subscribed {
        candidates.extend(levels.iter().copied());
    }
    if selection.subscribed {
        candidates.extend(subscribed.iter().copied());
        if selection.recursive_match {
            // A name none made may still be an inferior subscription's parent.
            candidates.extend(subscribed.iter().flat_map(|name| superiors(name)));
        }
    }
    let patterns: Vec<String> = command
        .patterns
        .iter()
        .map(|pattern| format!("{}{pattern}", command.reference))
        .collect();
    let mut listed = Vec::new();
    for name in candidates {
        if !patterns.iter().any(|pattern| list_matches(pattern, name)) {
            continue;
        }
        let exists = existing.contains(name);
        let is_level = !exists && levels.contains(name);
        if is_level
            && !selection.subscribed
            && !patterns
                .iter()
                .any(|pattern| pattern.ends_with('%') && list_matches(pattern, name))
        {
            // "*" matches the mailboxes below it themselves; only "%" stops at the level.
            continue;
        }
        let is_subscribed = subscribed.contains(name);
        let uses: Vec<&'static str> = if exists {
            special_use.of(name).collect()
        } else {
            Vec::new()
        };
        let meets = (if selection.subscribed {
            is_subscribed
        } else {
            exists || is_level
        }) && (!selection.special_use || !uses.is_empty());
        let prefix = format!("{name}{SEPARATOR}");
        // Sorted: the first name from the prefix on starts with it if any does.
        let first_under = |names: &BTreeSet<&str>| {
            names
                .range(prefix.as_str()..)
                .next()
                .is_some_and(|next| next.starts_with(&prefix))
        };
        let subscribed_child = selection.recursive_match && first_under(&subscribed);
        if !meets && !subscribed_child {
            continue;
        }
        let mut attributes = Vec::new();
        if is_level && !selection.subscribed {
            attributes.push("Noselect");
        } else if !exists {
            attributes.push("NonExistent");
        }
        attributes.push(if first_under(&existing) {
            "HasChildren"
        } else {
            "HasNoChildren"
        });
        attributes.extend(uses);
        if command.returns.subscribed && is_subscribed {
            attributes.push("Subscribed");
        }
        listed.push(Listed {
            name: name.to_string(),
            attributes,
            subscribed_child,
            status: command.returns.status.is_some() && exists,
        });
    }
    listed
}

/// `a/b/c` → `a`, `a/b`.
fn superiors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(SEPARATOR).map(move |(at, _)| &name[..at])
}

#[cfg(test)]
mod tests {
    use super::super::extensions::{ListReturn, ListSelection};
    use super::*;

    /// With no special uses configured.
    fn list(command: &ListCommand, existing: &[String], subscribed: &[String]) -> Vec<Listed> {
        super::list(command, existing, subscribed, &SpecialUses::new([]))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn command(selection: ListSelection, patterns: &[&str], returns: ListReturn) -> ListCommand {
        ListCommand {
            selection,
            reference: String::new(),
            patterns: names(patterns),
            returns,
        }
    }

    fn lines(listed: &[Listed]) -> Vec<String> {
        listed
            .iter()
            .map(|l| {
                format!(
                    "{} ({}){}{}",
                    l.name,
                    l.attributes.join(" "),
                    if l.subscribed_child { " CHILDINFO" } else { "" },
                    if l.status { " STATUS" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn a_level_that_is_no_mailbox_is_listed_noselect_where_percent_stops_at_it() {
        // foo was deleted while foo/bar existed (RFC 3501 6.3.4); Mail is a level only.
        let existing = names(&["INBOX", "foo/bar", "Mail/meetings"]);
        let got = list(
            &command(Default::default(), &["%"], Default::default()),
            &existing,
            &[],
        );
        assert_eq!(
            lines(&got),
            [
                "INBOX (HasNoChildren)",
                "Mail (Noselect HasChildren)",
                "foo (Noselect HasChildren)"
            ]
        );
        let got = list(
            &command(Default::default(), &["Mail/%"], Default::default()),
            &existing,
            &[],
        );
        assert_eq!(lines(&got), ["Mail/meetings (HasNoChildren)"]);
        // "*" reaches the mailboxes themselves and lists no level.
        let got = list(
            &command(Default::default(), &["*"], Default::default()),
            &existing,
            &[],
        );
        assert_eq!(
            lines(&got),
            [
                "INBOX (HasNoChildren)",
                "Mail/meetings (HasNoChildren)",
                "foo/bar (HasNoChildren)"
            ]
        );
    }

    #[test]
    fn several_patterns_list_each_name_once_with_its_children() {
        let existing = names(&["INBOX", "Sent", "Work", "Work/Reports"]);
        let got = list(
            &command(Default::default(), &["INBOX", "Work*", "*"], Default::default()),
            &existing,
            &[],
        );
        assert_eq!(
            lines(&got),
            [
                "INBOX (HasNoChildren)",
                "Sent (HasNoChildren)",
                "Work (HasChildren)",
                "Work/Reports (HasNoChildren)"
            ]
        );
    }

    #[test]
    fn subscribed_selection_lists_missing_subscriptions_as_nonexistent() {
        // RFC 5258 5's example, with this server's children attributes.
        let existing = names(&["INBOX", "Fruit", "Fruit/Apple", "Tofu"]);
        let subscribed = names(&["Fruit/Banana", "Fruit/Apple", "Vegetable/Broccoli", "INBOX"]);
        let selection = ListSelection {
            subscribed: true,
            ..Default::default()
        };
        let returns = ListReturn {
            subscribed: true,
            ..Default::default()
        };
        let got = list(
            &command(selection.clone(), &["*"], returns.clone()),
            &existing,
            &subscribed,
        );
        assert_eq!(
            lines(&got),
            [
                "Fruit/Apple (HasNoChildren Subscribed)",
                "Fruit/Banana (NonExistent HasNoChildren Subscribed)",
                "INBOX (HasNoChildren Subscribed)",
                "Vegetable/Broccoli (NonExistent HasNoChildren Subscribed)"
            ]
        );
        let recursive = ListSelection {
            recursive_match: true,
            ..selection
        };
        let got = list(&command(recursive, &["%"], returns), &existing, &subscribed);
        assert_eq!(
            lines(&got),
            [
                "Fruit (HasChildren) CHILDINFO",
                "INBOX (HasNoChildren Subscribed)",
                "Vegetable (NonExistent HasNoChildren) CHILDINFO"
            ]
        );
    }

    #[test]
    fn status_follows_existing_mailboxes_only() {
        let existing = names(&["INBOX"]);
        let subscribed = names(&["Gone"]);
        let selection = ListSelection {
            subscribed: true,
            ..Default::default()
        };
        let returns = ListReturn {
            subscribed: true,
            status: Some(Vec::new()),
            ..Default::default()
        };
        let got = list(
            &command(selection, &["*"], returns.clone()),
            &existing,
            &subscribed,
        );
        assert_eq!(lines(&got), ["Gone (NonExistent HasNoChildren Subscribed)"]);
        let got = list(
            &command(Default::default(), &["*"], returns),
            &existing,
            &subscribed,
        );
        assert_eq!(lines(&got), ["INBOX (HasNoChildren) STATUS"]);
    }

    #[test]
    fn special_uses_are_attributes_and_their_selection_lists_only_them() {
        let existing = names(&["INBOX", "Sent", "Trash", "Work"]);
        let uses = SpecialUses::default();
        let all = command(Default::default(), &["*"], Default::default());
        let got = super::list(&all, &existing, &[], &uses);
        assert_eq!(
            lines(&got),
            [
                "INBOX (HasNoChildren)",
                "Sent (HasNoChildren Sent)",
                "Trash (HasNoChildren Trash)",
                "Work (HasNoChildren)"
            ]
        );
        let selection = ListSelection {
            special_use: true,
            ..Default::default()
        };
        let got = super::list(
            &command(selection, &["*"], Default::default()),
            &existing,
            &[],
            &uses,
        );
        assert_eq!(
            lines(&got),
            ["Sent (HasNoChildren Sent)", "Trash (HasNoChildren Trash)"]
        );
        // A use is not shown on a \NonExistent name.
        let selection = ListSelection {
            subscribed: true,
            ..Default::default()
        };
        let subscribed = names(&["Junk"]);
        let got = super::list(
            &command(selection, &["*"], Default::default()),
            &existing,
            &subscribed,
            &uses,
        );
        assert_eq!(lines(&got), ["Junk (NonExistent HasNoChildren)"]);
    }
}
