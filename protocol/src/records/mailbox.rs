//! The mailboxes.db entry: a mailbox's name, where it lives, and its DELETED tombstone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{MailboxId, NodeId, Uid, UidValidity};
use crate::merge::{merge_option, Lww, Merge};
use crate::version::Version;

/// Who owns a mailbox and what it is called. One register, so a move to another user and a
/// rename are the same operation and resolve together.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct MailboxPath {
    pub user: String,
    pub name: String,
}

/// Left behind by a delete: the mailbox id never comes back, and its uidvalidity is remembered so
/// a stale peer's records for it are recognised and refused (seed item b).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct MailboxTombstone {
    pub version: Version,
    pub uidvalidity: UidValidity,
}

impl Merge for MailboxTombstone {
    fn merge(&self, other: &Self) -> Self {
        self.max(other).clone()
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MailboxEntry {
    pub id: MailboxId,
    /// Fixed at creation; a re-created name gets a new id and a new uidvalidity.
    pub uidvalidity: UidValidity,
    /// The creating write, fixed at creation.
    pub created: Version,
    pub path: Lww<MailboxPath>,
    /// Nodes holding a replica; empty means every node.
    pub locations: Lww<BTreeSet<NodeId>>,
    /// The preferred primary: clients are directed here, and it alone promotes conflicting UIDs.
    pub primary: Lww<Option<NodeId>>,
    pub deleted: Option<MailboxTombstone>,
    /// Nodes letting their copy go, each register written only by its own node: `true` from
    /// when the node, holding a copy, found itself no longer needed (outside the locations and
    /// not a relay), `false` once its changes have reached the others and the copy is gone.
    /// While a node is leaving, the relays between it and the holders stay (so a move to a node
    /// it has no link to still reaches it): see `LinkGraph::holders_of`.
    #[serde(default)]
    pub leaving: BTreeMap<NodeId, Lww<bool>>,
}

impl MailboxEntry {
    pub fn new(id: MailboxId, uidvalidity: UidValidity, path: MailboxPath, created: Version) -> Self {
        MailboxEntry {
            id,
            uidvalidity,
            path: Lww::new(path, created.clone()),
            locations: Lww::new(BTreeSet::new(), created.clone()),
            primary: Lww::new(None, created.clone()),
            created,
            deleted: None,
            leaving: BTreeMap::new(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }

    /// Whether `node` holds a replica of this mailbox.
    pub fn located_on(&self, node: &NodeId) -> bool {
        self.locations.value.is_empty() || self.locations.value.contains(node)
    }

    /// The nodes letting their copy go (see the field).
    pub fn leaving_nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.leaving.iter().filter(|(_, l)| l.value).map(|(n, _)| n)
    }

    /// Whether `node` is letting its copy go.
    pub fn is_leaving(&self, node: &NodeId) -> bool {
        self.leaving.get(node).is_some_and(|l| l.value)
    }

    /// Whether `node` wrote its leaving register back to `false` (it let its copy go, or is
    /// needed again) since `before`: the register is `false` here and was not this one there.
    pub fn let_go_since(&self, before: &MailboxEntry, node: &NodeId) -> bool {
        match self.leaving.get(node) {
            Some(now) if !now.value => before.leaving.get(node) != Some(now),
            _ => false,
        }
    }

    /// Marks `node` as leaving (`true`) or gone (`false`) at `version`; returns whether that
    /// changed anything.
    pub fn set_leaving(&mut self, node: &NodeId, leaving: bool, version: Version) -> bool {
        if self.is_leaving(node) == leaving {
            return false;
        }
        match self.leaving.get_mut(node) {
            Some(register) => register.set(leaving, version),
            None => {
                self.leaving.insert(node.clone(), Lww::new(leaving, version));
                true
            }
        }
    }

    /// The node that settles this mailbox's uid conflicts: always one that holds a replica (a
    /// node without one never sees the conflicting records, and its conflicts would stay
    /// hidden for good). The named primary if it holds one, else the creator if it does, else
    /// the lowest-named holder. Every node with the same entry picks the same node.
    pub fn effective_primary(&self) -> NodeId {
        if let Some(named) = self.primary.value.as_ref().filter(|p| self.located_on(p)) {
            return named.clone();
        }
        if self.located_on(&self.created.node) {
            return self.created.node.clone();
        }
        self.locations
            .value
            .first()
            .cloned()
            .expect("a non-empty location set: the creator is in every empty one")
    }

    /// The newest version anywhere in the entry; a node's Lamport clock observes it.
    pub fn max_version(&self) -> &Version {
        let mut max = &self.created;
        for v in [&self.path.version, &self.locations.version, &self.primary.version] {
            max = max.max(v);
        }
        if let Some(t) = &self.deleted {
            max = max.max(&t.version);
        }
        for l in self.leaving.values() {
            max = max.max(&l.version);
        }
        max
    }
}

impl Merge for MailboxEntry {
    fn merge(&self, other: &Self) -> Self {
        // id, uidvalidity and created never change after creation. Should two replicas disagree
        // (only corruption can do that) the smaller triple wins on both, keeping merge
        // commutative.
        let base =
            if (&self.created, self.uidvalidity, self.id) <= (&other.created, other.uidvalidity, other.id) {
                self
            } else {
                other
            };
        MailboxEntry {
            id: base.id,
            uidvalidity: base.uidvalidity,
            created: base.created.clone(),
            path: self.path.merge(&other.path),
            locations: self.locations.merge(&other.locations),
            primary: self.primary.merge(&other.primary),
            deleted: merge_option(&self.deleted, &other.deleted),
            leaving: merge_registers(&self.leaving, &other.leaving),
        }
    }
}

/// Merges two maps of registers key by key (a key on one side only is kept as it is).
fn merge_registers(
    a: &BTreeMap<NodeId, Lww<bool>>,
    b: &BTreeMap<NodeId, Lww<bool>>,
) -> BTreeMap<NodeId, Lww<bool>> {
    let mut out = a.clone();
    for (k, theirs) in b {
        out.entry(k.clone())
            .and_modify(|ours| *ours = ours.merge(theirs))
            .or_insert_with(|| theirs.clone());
    }
    out
}

/// UIDNEXT of one mailbox. Merges by max, so a UID below it is never handed out again.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct UidNext(pub Uid);

impl Default for UidNext {
    fn default() -> Self {
        UidNext(Uid(1))
    }
}

impl Merge for UidNext {
    fn merge(&self, other: &Self) -> Self {
        *self.max(other)
    }
}

/// The name a live mailbox is shown under.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResolvedName {
    pub id: MailboxId,
    pub path: MailboxPath,
    /// True when this mailbox lost a name collision and shows a derived name.
    pub renamed: bool,
}

/// Resolves name collisions among live mailboxes deterministically: when two ids (created
/// concurrently on two nodes) claim one name, the lower id keeps it and each other one is shown
/// as `name.conflict-<first 8 hex digits of its id>` (with more digits if that is taken too).
/// Nothing is lost, nothing needs an operator, and every node computes the same names because the
/// rule depends only on the merged entries.
pub fn resolve_names<'a>(entries: impl IntoIterator<Item = &'a MailboxEntry>) -> Vec<ResolvedName> {
    let mut by_path: BTreeMap<&MailboxPath, Vec<MailboxId>> = BTreeMap::new();
    for entry in entries.into_iter().filter(|e| !e.is_deleted()) {
        by_path.entry(&entry.path.value).or_default().push(entry.id);
    }
    let taken: BTreeSet<MailboxPath> = by_path.keys().map(|p| (*p).clone()).collect();
    let mut out = Vec::new();
    let mut derived_taken: BTreeSet<MailboxPath> = BTreeSet::new();
    for (path, mut ids) in by_path {
        ids.sort();
        out.push(ResolvedName {
            id: ids[0],
            path: path.clone(),
            renamed: false,
        });
        for id in &ids[1..] {
            let hex = format!("{:032x}", id.0);
            let mut digits = 8;
            let derived = loop {
                let candidate = MailboxPath {
                    user: path.user.clone(),
                    name: format!("{}.conflict-{}", path.name, &hex[..digits]),
                };
                if digits == 32 || (!taken.contains(&candidate) && !derived_taken.contains(&candidate)) {
                    break candidate;
                }
                digits += 4;
            };
            derived_taken.insert(derived.clone());
            out.push(ResolvedName {
                id: *id,
                path: derived,
                renamed: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::version_at as v;

    fn entry(id: u128, name: &str, ver: Version) -> MailboxEntry {
        MailboxEntry::new(
            MailboxId(id),
            UidValidity(1),
            MailboxPath {
                user: "u".into(),
                name: name.into(),
            },
            ver,
        )
    }

    /// A node's leaving register: set while it lets its copy go, written back to false once it
    /// has (or is needed again); `let_go_since` tells a later entry from an earlier one by that
    /// write-back alone (cargo-mutants found both answers uncaught by protocol tests).
    #[test]
    fn leaving_and_letting_go_are_read_from_the_register() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let never = entry(1, "A", v(1, "n1"));
        assert!(!never.is_leaving(&n("n2")));
        let mut leaving = never.clone();
        assert!(leaving.set_leaving(&n("n2"), true, v(2, "n2")));
        assert!(
            !leaving.set_leaving(&n("n2"), true, v(3, "n2")),
            "already leaving"
        );
        assert!(leaving.is_leaving(&n("n2")) && !leaving.is_leaving(&n("n1")));
        assert_eq!(leaving.leaving_nodes().collect::<Vec<_>>(), vec![&n("n2")]);
        assert!(!leaving.let_go_since(&never, &n("n2")), "leaving is not gone");

        let mut gone = leaving.clone();
        assert!(gone.set_leaving(&n("n2"), false, v(4, "n2")));
        assert!(!gone.is_leaving(&n("n2")));
        assert!(gone.let_go_since(&leaving, &n("n2")));
        assert!(gone.let_go_since(&never, &n("n2")));
        assert!(
            !gone.let_go_since(&gone, &n("n2")),
            "the same write-back is not a new one"
        );
        assert!(!gone.let_go_since(&leaving, &n("n1")), "another node's register");

        // Leaving and gone again: a later write-back than the one before.
        let mut again = gone.clone();
        assert!(again.set_leaving(&n("n2"), true, v(5, "n2")));
        assert!(again.set_leaving(&n("n2"), false, v(6, "n2")));
        assert!(again.let_go_since(&gone, &n("n2")));
    }

    #[test]
    fn rename_is_last_writer_wins_and_delete_sticks() {
        let a = entry(1, "A", v(1, "n1"));
        let mut b = a.clone();
        b.path.set(
            MailboxPath {
                user: "u".into(),
                name: "B".into(),
            },
            v(5, "n2"),
        );
        let mut c = a.clone();
        c.deleted = Some(MailboxTombstone {
            version: v(2, "n3"),
            uidvalidity: UidValidity(1),
        });
        let m = a.merge(&b).merge(&c);
        assert_eq!(m.path.value.name, "B");
        assert!(m.is_deleted());
    }

    #[test]
    fn concurrent_same_name_lower_id_keeps_it() {
        let a = entry(0x20, "Work", v(1, "n1"));
        let b = entry(0x10, "Work", v(1, "n2"));
        let names = resolve_names([&a, &b]);
        assert_eq!(names.len(), 2);
        let keep = names.iter().find(|r| !r.renamed).unwrap();
        assert_eq!(keep.id, MailboxId(0x10));
        let other = names.iter().find(|r| r.renamed).unwrap();
        assert_eq!(other.id, MailboxId(0x20));
        assert_eq!(other.path.name, "Work.conflict-00000000");
        // Same answer whatever the order of the input.
        assert_eq!(resolve_names([&b, &a]), names);
    }

    /// A derived name that is itself taken (by a real mailbox, or by another derived name)
    /// takes four more digits of the id, until it is free (cargo mutants found this untested).
    #[test]
    fn a_taken_conflict_name_takes_more_digits() {
        // Two losers whose ids share their first 8 hex digits, and a real mailbox already named
        // as the first loser's short derived name.
        let keeper = entry(0x1, "Work", v(1, "n1"));
        let loser_a = entry(0xabcd_ef01_0000_0000_0000_0000_0000_0002, "Work", v(1, "n2"));
        let loser_b = entry(0xabcd_ef01_1234_0000_0000_0000_0000_0003, "Work", v(1, "n3"));
        let squatter = entry(0x5, "Work.conflict-abcdef01", v(1, "n4"));
        let names = resolve_names([&keeper, &loser_a, &loser_b, &squatter]);
        let name_of = |id: u128| {
            names
                .iter()
                .find(|r| r.id == MailboxId(id))
                .map(|r| r.path.name.clone())
                .unwrap()
        };
        assert_eq!(name_of(0x1), "Work");
        assert_eq!(
            name_of(0x5),
            "Work.conflict-abcdef01",
            "a real name is never derived away"
        );
        assert_eq!(
            name_of(0xabcd_ef01_0000_0000_0000_0000_0000_0002),
            "Work.conflict-abcdef010000"
        );
        assert_eq!(
            name_of(0xabcd_ef01_1234_0000_0000_0000_0000_0003),
            "Work.conflict-abcdef011234"
        );
        let distinct: BTreeSet<String> = names.iter().map(|r| r.path.name.clone()).collect();
        assert_eq!(
            distinct.len(),
            names.len(),
            "every mailbox keeps a name of its own"
        );
    }

    /// Two copies that disagree on what never changes (only corruption does that): the smaller
    /// (created, uidvalidity, id) wins on both sides, as documented.
    #[test]
    fn disagreeing_immutable_fields_resolve_to_the_smaller_triple() {
        let a = entry(0x10, "A", v(1, "n1"));
        let mut b = a.clone();
        b.uidvalidity = UidValidity(7);
        assert_eq!(a.merge(&b).uidvalidity, UidValidity(1));
        assert_eq!(b.merge(&a).uidvalidity, UidValidity(1));
    }

    #[test]
    fn the_effective_primary_is_always_a_holder() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let set = |names: &[&str]| names.iter().map(|s| n(s)).collect::<BTreeSet<_>>();
        let mut e = entry(1, "A", v(1, "creator"));
        assert_eq!(e.effective_primary(), n("creator"), "everyone holds it");
        e.locations.set(set(&["y", "x"]), v(2, "creator"));
        assert_eq!(
            e.effective_primary(),
            n("x"),
            "the creator holds none: the lowest holder"
        );
        e.primary.set(Some(n("y")), v(3, "x"));
        assert_eq!(e.effective_primary(), n("y"), "the named primary holds one");
        e.locations.set(set(&["x", "creator"]), v(4, "x"));
        assert_eq!(
            e.effective_primary(),
            n("creator"),
            "the named one left: the creator"
        );
        e.locations.set(BTreeSet::new(), v(5, "x"));
        assert_eq!(
            e.effective_primary(),
            n("y"),
            "everyone holds it, the named one too"
        );
    }
}
