//! Property tests for the merge rules of every replicated record (DESIGN.md, "Replicated state and
//! merge rules"): each merge is commutative, associative and idempotent, plus the record-specific
//! laws (sticky expunge and delete, per-flag versions never go backwards, UIDNEXT never goes
//! backwards, no AppendId is ever dropped, UID conflicts are found and promotion resolves them).
//!
//! Generators draw versions from a small pool (counters 0..4 on nodes a, b, c) so equal versions
//! are common. In the real system a version is minted once for one write, so two replicas never
//! hold one version with two values: the "realistic" generators derive every register's value from
//! its version (`minted`). The "arbitrary" generators break that rule on purpose, to check the
//! tie-breaks that keep the merge a join even on corrupt input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use mailmesh_protocol::merge::{Lww, Merge, MergeEffect};
use mailmesh_protocol::names::Flag;
use mailmesh_protocol::records::{
    Annotation, LinkGraph, MailboxEntry, MailboxPath, MailboxTombstone, MessageRecord, ScriptContent,
    UidNext, UserSieve, UserSubscriptions,
};
use mailmesh_protocol::{AppendId, Guid, MailboxId, NodeId, Uid, UidValidity, Version};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_bytes::ByteBuf;

// ---------------------------------------------------------------------------------------------
// Pools and derivation of values from versions.

const NODES: [&str; 3] = ["a", "b", "c"];
const COUNTERS: u64 = 4;
const FLAGS: [&str; 5] = ["\\Seen", "\\Flagged", "\\Deleted", "$Junk", "work"];
const MAILBOX_NAMES: [&str; 4] = ["INBOX", "Work", "Trash", "Lists/rust"];
const SCRIPT_NAMES: [&str; 3] = ["main", "vacation", "spam"];

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn flag(name: &str) -> Flag {
    Flag::new(name).unwrap()
}

fn version() -> impl Strategy<Value = Version> + Clone {
    (0..COUNTERS, select(&NODES[..])).prop_map(|(counter, n)| Version {
        counter,
        node: node(n),
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic hash of a version and the register it writes (`salt`): the value a write with
/// this version carries. Equal versions of one register therefore always carry equal values.
fn mix(v: &Version, salt: &str) -> u64 {
    let mut h = splitmix(v.counter);
    for b in v.node.as_str().bytes().chain([0xff]).chain(salt.bytes()) {
        h = splitmix(h ^ u64::from(b));
    }
    h
}

/// The register write minted as `version`, its value derived from the version.
fn minted<T>(version: Version, salt: &str, value: impl Fn(u64) -> T) -> Lww<T> {
    Lww::new(value(mix(&version, salt)), version)
}

fn path_from(h: u64) -> MailboxPath {
    MailboxPath {
        user: if h & 1 == 0 { "u" } else { "w" }.to_string(),
        name: MAILBOX_NAMES[(h >> 1) as usize % MAILBOX_NAMES.len()].to_string(),
    }
}

fn locations_from(h: u64) -> BTreeSet<NodeId> {
    NODES
        .iter()
        .enumerate()
        .filter(|(i, _)| h >> i & 1 == 1)
        .map(|(_, n)| node(n))
        .collect()
}

fn primary_from(h: u64) -> Option<NodeId> {
    match h % 4 {
        0 => None,
        i => Some(node(NODES[i as usize - 1])),
    }
}

fn bytes_from(h: u64) -> Option<ByteBuf> {
    match h % 3 {
        0 => None,
        n => Some(ByteBuf::from(vec![(h >> 8) as u8 % 3; n as usize])),
    }
}

fn script_name_from(h: u64) -> Option<String> {
    match h % 4 {
        0 => None,
        i => Some(SCRIPT_NAMES[i as usize - 1].to_string()),
    }
}

fn uid_from(h: u64) -> Uid {
    Uid(1 + (h % 4) as u32)
}

// ---------------------------------------------------------------------------------------------
// Generators: realistic (value derived from version) and arbitrary (anything goes).

fn lww_u8_minted() -> impl Strategy<Value = Lww<u8>> + Clone {
    version().prop_map(|v| minted(v, "u8", |h| (h % 4) as u8))
}

fn lww_u8_arbitrary() -> impl Strategy<Value = Lww<u8>> + Clone {
    (0u8..4, version()).prop_map(|(value, v)| Lww::new(value, v))
}

fn tombstone(uidvalidity: UidValidity) -> impl Strategy<Value = Option<MailboxTombstone>> + Clone {
    option::of(version().prop_map(move |version| MailboxTombstone { version, uidvalidity }))
}

/// One replica of the mailbox entry `(id, uidvalidity, created)`.
fn entry_replica(
    id: MailboxId,
    uidvalidity: UidValidity,
    created: Version,
) -> impl Strategy<Value = MailboxEntry> + Clone {
    (
        version(),
        version(),
        version(),
        tombstone(uidvalidity),
        btree_map(select(&NODES[..]), version(), 0..=NODES.len()),
    )
        .prop_map(move |(p, l, pr, deleted, leaving)| MailboxEntry {
            id,
            uidvalidity,
            created: created.clone(),
            path: minted(p, "path", path_from),
            locations: minted(l, "locations", locations_from),
            primary: minted(pr, "primary", primary_from),
            deleted,
            leaving: leaving
                .into_iter()
                .map(|(n, v)| (node(n), minted(v, n, |h| h % 2 == 0)))
                .collect(),
        })
}

/// Three replicas of one mailbox entry: the realistic case.
fn entry_triple() -> impl Strategy<Value = (MailboxEntry, MailboxEntry, MailboxEntry)> {
    (0u128..3, 1u32..3, version()).prop_flat_map(|(id, uv, created)| {
        let replica = entry_replica(MailboxId(id), UidValidity(uv), created);
        (replica.clone(), replica.clone(), replica)
    })
}

/// An entry where even the fixed-at-creation fields and the registers' values are arbitrary.
fn entry_arbitrary() -> impl Strategy<Value = MailboxEntry> + Clone {
    (
        (0u128..3, 1u32..3, version()),
        (0u64..64, version()),
        (0u64..8, version()),
        (0u64..4, version()),
        option::of((version(), 1u32..3)),
        btree_map(select(&NODES[..]), (any::<bool>(), version()), 0..=NODES.len()),
    )
        .prop_map(
            |((id, uv, created), (p, pv), (l, lv), (pr, prv), deleted, leaving)| MailboxEntry {
                id: MailboxId(id),
                uidvalidity: UidValidity(uv),
                created,
                path: Lww::new(path_from(p), pv),
                locations: Lww::new(locations_from(l), lv),
                primary: Lww::new(primary_from(pr), prv),
                deleted: deleted.map(|(version, uv)| MailboxTombstone {
                    version,
                    uidvalidity: UidValidity(uv),
                }),
                leaving: leaving
                    .into_iter()
                    .map(|(n, (l, v))| (node(n), Lww::new(l, v)))
                    .collect(),
            },
        )
}

fn uidnext() -> impl Strategy<Value = UidNext> + Clone {
    (1u32..20).prop_map(|u| UidNext(Uid(u)))
}

fn append_id() -> impl Strategy<Value = AppendId> + Clone {
    (select(&NODES[..]), 1u64..4).prop_map(|(n, counter)| AppendId {
        origin: node(n),
        counter,
    })
}

/// One replica of the message `id`: guid, size and internaldate fixed by the append; uid, flags
/// and expunge written with minted versions.
fn message_replica(id: AppendId) -> impl Strategy<Value = MessageRecord> + Clone {
    (
        version(),
        btree_map(select(&FLAGS[..]), version(), 0..=FLAGS.len()),
        option::of(version()),
    )
        .prop_map(move |(uid_version, flags, expunged)| {
            let key = id.to_string();
            MessageRecord {
                append_id: id.clone(),
                uid: minted(uid_version, &format!("uid {key}"), uid_from),
                guid: Guid::of(key.as_bytes()),
                size: key.len() as u64,
                internaldate: id.counter as i64 * 1000,
                flags: flags
                    .into_iter()
                    .map(|(name, v)| (flag(name), minted(v, &format!("{key} {name}"), |h| h % 2 == 0)))
                    .collect(),
                expunged,
            }
        })
}

/// Three replicas of one message: the realistic case.
fn message_triple() -> impl Strategy<Value = (MessageRecord, MessageRecord, MessageRecord)> {
    append_id().prop_flat_map(|id| {
        let replica = message_replica(id);
        (replica.clone(), replica.clone(), replica)
    })
}

/// A record where everything is arbitrary, including the fields fixed at append.
fn message_arbitrary() -> impl Strategy<Value = MessageRecord> + Clone {
    (
        append_id(),
        (1u32..5, version()),
        (0u8..2, 0u64..2, -1i64..1),
        btree_map(select(&FLAGS[..]), (any::<bool>(), version()), 0..=FLAGS.len()),
        option::of(version()),
    )
        .prop_map(
            |(append_id, (uid, uv), (g, size, internaldate), flags, expunged)| MessageRecord {
                append_id,
                uid: Lww::new(Uid(uid), uv),
                guid: Guid::of(&[g]),
                size,
                internaldate,
                flags: flags
                    .into_iter()
                    .map(|(name, (set, v))| (flag(name), Lww::new(set, v)))
                    .collect(),
                expunged,
            },
        )
}

fn annotation_minted() -> impl Strategy<Value = Annotation> + Clone {
    version().prop_map(|v| Annotation(minted(v, "annotation", bytes_from)))
}

fn annotation_arbitrary() -> impl Strategy<Value = Annotation> + Clone {
    (option::of(vec(0u8..3, 0..3)), version()).prop_map(|(value, v)| Annotation::new(value, v))
}

fn subscriptions_minted() -> impl Strategy<Value = UserSubscriptions> + Clone {
    btree_map(select(&MAILBOX_NAMES[..]), version(), 0..=MAILBOX_NAMES.len()).prop_map(|names| {
        UserSubscriptions {
            names: names
                .into_iter()
                .map(|(name, v)| (name.to_string(), minted(v, name, |h| h % 2 == 0)))
                .collect(),
        }
    })
}

fn subscriptions_arbitrary() -> impl Strategy<Value = UserSubscriptions> + Clone {
    btree_map(
        select(&MAILBOX_NAMES[..]),
        (any::<bool>(), version()),
        0..=MAILBOX_NAMES.len(),
    )
    .prop_map(|names| UserSubscriptions {
        names: names
            .into_iter()
            .map(|(name, (set, v))| (name.to_string(), Lww::new(set, v)))
            .collect(),
    })
}

/// A link graph: per node, its published peers, minted (one value per version) or arbitrary.
fn links_minted() -> impl Strategy<Value = LinkGraph> + Clone {
    btree_map(select(&NODES[..]), version(), 0..=NODES.len()).prop_map(|peers| LinkGraph {
        peers: peers
            .into_iter()
            .map(|(n, v)| (node(n), minted(v, n, locations_from)))
            .collect(),
    })
}

fn links_arbitrary() -> impl Strategy<Value = LinkGraph> + Clone {
    btree_map(
        select(&NODES[..]),
        (btree_set(select(&NODES[..]), 0..=NODES.len()), version()),
        0..=NODES.len(),
    )
    .prop_map(|peers| LinkGraph {
        peers: peers
            .into_iter()
            .map(|(n, (set, v))| (node(n), Lww::new(set.into_iter().map(node).collect(), v)))
            .collect(),
    })
}

fn sieve_minted() -> impl Strategy<Value = UserSieve> + Clone {
    (
        btree_map(select(&SCRIPT_NAMES[..]), version(), 0..=SCRIPT_NAMES.len()),
        option::of(version()),
    )
        .prop_map(|(scripts, active)| UserSieve {
            scripts: scripts
                .into_iter()
                .map(|(name, v)| (name.to_string(), minted(v, name, bytes_from)))
                .collect(),
            active: active.map(|v| minted(v, "active", script_name_from)),
        })
}

fn sieve_arbitrary() -> impl Strategy<Value = UserSieve> + Clone {
    (
        btree_map(
            select(&SCRIPT_NAMES[..]),
            (0u64..3, version()),
            0..=SCRIPT_NAMES.len(),
        ),
        option::of((0u64..4, version())),
    )
        .prop_map(|(scripts, active)| UserSieve {
            scripts: scripts
                .into_iter()
                .map(|(name, (h, v))| (name.to_string(), Lww::new(bytes_from(h) as ScriptContent, v)))
                .collect(),
            active: active.map(|(h, v)| Lww::new(script_name_from(h), v)),
        })
}

// ---------------------------------------------------------------------------------------------
// The laws every Merge implementation must satisfy.

/// Commutative, associative, idempotent, absorbing, and `merge_from` reports what it did.
fn check_join<T: Merge + Debug>(a: &T, b: &T, c: &T) -> Result<(), TestCaseError> {
    let ab = a.merge(b);
    prop_assert_eq!(&ab, &b.merge(a), "merge is not commutative");
    prop_assert_eq!(a.merge(&b.merge(c)), ab.merge(c), "merge is not associative");
    prop_assert_eq!(&a.merge(a), a, "merge is not idempotent");
    // The join is an upper bound of both sides: merging either input again changes nothing.
    prop_assert_eq!(&ab.merge(a), &ab, "merge result does not absorb its left input");
    prop_assert_eq!(&ab.merge(b), &ab, "merge result does not absorb its right input");
    check_merge_from(a, b)?;
    check_merge_from(b, a)?;
    check_merge_from(a, a)?;
    Ok(())
}

fn check_merge_from<T: Merge + Debug>(local: &T, incoming: &T) -> Result<(), TestCaseError> {
    let merged = local.merge(incoming);
    let mut state = local.clone();
    let effect = state.merge_from(incoming);
    prop_assert_eq!(&state, &merged, "merge_from must store the merge");
    // merged_with is merge_from on a copy: the same result and the same effect.
    let (with, with_effect) = local.merged_with(incoming);
    prop_assert_eq!(&with, &merged, "merged_with must give the merge");
    prop_assert_eq!(
        with_effect,
        effect,
        "merged_with must report what merge_from reports"
    );
    prop_assert_eq!(
        effect == MergeEffect::Unchanged,
        merged == *local,
        "Unchanged iff the merge equals the local state ({:?})",
        effect
    );
    prop_assert_eq!(
        effect == MergeEffect::TookIncoming,
        merged != *local && merged == *incoming,
        "TookIncoming iff the merge is the incoming state and not the local one ({:?})",
        effect
    );
    prop_assert_eq!(
        effect == MergeEffect::Combined,
        merged != *local && merged != *incoming,
        "Combined iff the merge differs from both sides ({:?})",
        effect
    );
    prop_assert_eq!(effect.changed(), merged != *local);
    // Once merged, the same incoming state (or the old local one) is old news.
    prop_assert_eq!(state.merge_from(incoming), MergeEffect::Unchanged);
    prop_assert_eq!(state.merge_from(local), MergeEffect::Unchanged);
    Ok(())
}

/// Generator sanity for the realistic case: one version never carries two values.
fn check_minted<T: PartialEq + Debug>(a: &Lww<T>, b: &Lww<T>) -> Result<(), TestCaseError> {
    if a.version == b.version {
        prop_assert_eq!(&a.value, &b.value, "generator minted one version twice");
    }
    Ok(())
}

fn check_lww<T: Clone + Ord + Debug>(a: &Lww<T>, b: &Lww<T>) -> Result<(), TestCaseError> {
    let m = a.merge(b);
    prop_assert_eq!(
        &m.version,
        (&a.version).max(&b.version),
        "the merged version is the greater one"
    );
    prop_assert!(m == *a || m == *b, "an Lww merge must pick one of its inputs");
    if a.version != b.version {
        let newer = if a.version > b.version { a } else { b };
        prop_assert_eq!(&m, newer, "the newer write must win");
    }
    Ok(())
}

fn check_message_laws(a: &MessageRecord, b: &MessageRecord) -> Result<(), TestCaseError> {
    let m = a.merge(b);
    // Expunge is sticky.
    prop_assert_eq!(
        m.is_expunged(),
        a.is_expunged() || b.is_expunged(),
        "merge changed expunged state"
    );
    for side in [a, b] {
        if let Some(e) = &side.expunged {
            prop_assert!(
                m.expunged.as_ref().is_some_and(|me| me >= e),
                "expunge version went back"
            );
        }
        // Per-flag versions never go backwards, and no flag is dropped.
        for (name, state) in &side.flags {
            let merged = m.flags.get(name);
            prop_assert!(merged.is_some(), "flag {} dropped by merge", name);
            prop_assert!(
                merged.unwrap().version >= state.version,
                "flag {} went back from {:?} to {:?}",
                name,
                state.version,
                merged.unwrap().version
            );
        }
        prop_assert!(m.uid.version >= side.uid.version, "uid version went back");
    }
    let names: BTreeSet<&Flag> = a.flags.keys().chain(b.flags.keys()).collect();
    prop_assert_eq!(
        m.flags.keys().collect::<BTreeSet<_>>(),
        names,
        "merge invented a flag"
    );
    // Each flag and the uid are merged as registers.
    for (name, state) in &m.flags {
        let expected = match (a.flags.get(name), b.flags.get(name)) {
            (Some(x), Some(y)) => x.merge(y),
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => unreachable!("checked above"),
        };
        prop_assert_eq!(state, &expected);
    }
    prop_assert_eq!(&m.uid, &a.uid.merge(&b.uid));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Lww

proptest! {
    #[test]
    fn lww_minted_is_a_join(a in lww_u8_minted(), b in lww_u8_minted(), c in lww_u8_minted()) {
        check_minted(&a, &b)?;
        check_join(&a, &b, &c)?;
        check_lww(&a, &b)?;
    }

    /// Two different values under one version only happen through corruption; the merge must
    /// still be a join so replicas converge on the same (greater) value.
    #[test]
    fn lww_stays_a_join_when_one_version_carries_two_values(
        a in lww_u8_arbitrary(),
        b in lww_u8_arbitrary(),
        c in lww_u8_arbitrary(),
    ) {
        check_join(&a, &b, &c)?;
        check_lww(&a, &b)?;
        if a.version == b.version {
            prop_assert_eq!(a.merge(&b).value, a.value.max(b.value), "the greater value breaks the tie");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MailboxEntry and UidNext

fn check_entry_laws(a: &MailboxEntry, b: &MailboxEntry) -> Result<(), TestCaseError> {
    let m = a.merge(b);
    prop_assert_eq!(
        m.is_deleted(),
        a.is_deleted() || b.is_deleted(),
        "merge un-deleted a mailbox"
    );
    for side in [a, b] {
        if let Some(t) = &side.deleted {
            prop_assert!(m.deleted.as_ref().is_some_and(|mt| mt.version >= t.version));
        }
        prop_assert!(m.path.version >= side.path.version);
        prop_assert!(m.locations.version >= side.locations.version);
        prop_assert!(m.primary.version >= side.primary.version);
    }
    check_lww(&a.path, &b.path)?;
    check_lww(&a.locations, &b.locations)?;
    check_lww(&a.primary, &b.primary)?;
    check_map_registers(&a.leaving, &b.leaving, &m.leaving)?;
    Ok(())
}

proptest! {
    #[test]
    fn mailbox_entry_replicas_join((a, b, c) in entry_triple()) {
        check_minted(&a.path, &b.path)?;
        check_minted(&a.locations, &b.locations)?;
        check_minted(&a.primary, &b.primary)?;
        check_join(&a, &b, &c)?;
        check_entry_laws(&a, &b)?;
        let m = a.merge(&b);
        prop_assert_eq!((m.id, m.uidvalidity, &m.created), (a.id, a.uidvalidity, &a.created));
        // With the creation fixed, the newest version only grows (the Lamport clock observes it).
        prop_assert!(m.max_version() >= a.max_version() && m.max_version() >= b.max_version());
    }

    #[test]
    fn mailbox_entry_arbitrary_join(a in entry_arbitrary(), b in entry_arbitrary(), c in entry_arbitrary()) {
        check_join(&a, &b, &c)?;
        check_entry_laws(&a, &b)?;
        // The identity comes whole from one side.
        let m = a.merge(&b);
        let identity = (m.id, m.uidvalidity, m.created.clone());
        prop_assert!(
            identity == (a.id, a.uidvalidity, a.created.clone())
                || identity == (b.id, b.uidvalidity, b.created.clone())
        );
    }

    #[test]
    fn uidnext_is_a_join_that_never_goes_back(a in uidnext(), b in uidnext(), c in uidnext()) {
        check_join(&a, &b, &c)?;
        let m = a.merge(&b);
        prop_assert!(m >= a && m >= b, "UIDNEXT went backwards");
        prop_assert!(m == a || m == b);
    }
}

// ---------------------------------------------------------------------------------------------
// MessageRecord

proptest! {
    #[test]
    fn message_replicas_join((a, b, c) in message_triple()) {
        check_minted(&a.uid, &b.uid)?;
        for (name, x) in &a.flags {
            if let Some(y) = b.flags.get(name) {
                check_minted(x, y)?;
            }
        }
        check_join(&a, &b, &c)?;
        check_message_laws(&a, &b)?;
        check_message_laws(&a.merge(&b), &c)?;
        let m = a.merge(&b);
        prop_assert_eq!((&m.append_id, m.guid, m.size, m.internaldate), (&a.append_id, a.guid, a.size, a.internaldate));
    }

    /// The update of a record and the record rebuilt from it, taken by value (the sender's plan
    /// and the receiver's merge) or by reference, are the same.
    #[test]
    fn message_update_round_trips((a, b, _) in message_triple()) {
        let update = b.update();
        prop_assert_eq!(&b.clone().into_update(), &update);
        let rebuilt = a.updated_by_owned(update.clone());
        prop_assert_eq!(&rebuilt, &a.updated_by(&update));
        // The fixed parts come from the record here, the changing parts from the update.
        prop_assert_eq!((rebuilt.guid, rebuilt.size, rebuilt.internaldate), (a.guid, a.size, a.internaldate));
        prop_assert_eq!(&rebuilt.update(), &update);
        prop_assert_eq!(&b.updated_by_owned(b.clone().into_update()), &b);
    }

    #[test]
    fn message_arbitrary_join(a in message_arbitrary(), b in message_arbitrary(), c in message_arbitrary()) {
        check_join(&a, &b, &c)?;
        check_message_laws(&a, &b)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Annotation, UserSubscriptions, UserSieve

fn check_map_registers<K: Ord + Debug, T: Clone + Ord + Debug>(
    a: &BTreeMap<K, Lww<T>>,
    b: &BTreeMap<K, Lww<T>>,
    m: &BTreeMap<K, Lww<T>>,
) -> Result<(), TestCaseError> {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    prop_assert_eq!(
        m.keys().collect::<BTreeSet<_>>(),
        keys,
        "key set is not the union"
    );
    for (k, v) in m {
        for side in [a, b] {
            if let Some(s) = side.get(k) {
                prop_assert!(v.version >= s.version, "register {:?} went back", k);
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn annotation_minted_join(a in annotation_minted(), b in annotation_minted(), c in annotation_minted()) {
        check_minted(&a.0, &b.0)?;
        check_join(&a, &b, &c)?;
        check_lww(&a.0, &b.0)?;
        // A newer delete tombstone is never undone by an older write.
        let m = a.merge(&b);
        for (x, y) in [(&a, &b), (&b, &a)] {
            if x.is_tombstone() && x.version() > y.version() {
                prop_assert!(m.is_tombstone());
            }
        }
    }

    #[test]
    fn annotation_arbitrary_join(a in annotation_arbitrary(), b in annotation_arbitrary(), c in annotation_arbitrary()) {
        check_join(&a, &b, &c)?;
        check_lww(&a.0, &b.0)?;
    }

    #[test]
    fn subscriptions_minted_join(
        a in subscriptions_minted(),
        b in subscriptions_minted(),
        c in subscriptions_minted(),
    ) {
        for (name, x) in &a.names {
            if let Some(y) = b.names.get(name) {
                check_minted(x, y)?;
            }
        }
        check_join(&a, &b, &c)?;
        check_map_registers(&a.names, &b.names, &a.merge(&b).names)?;
    }

    #[test]
    fn link_graph_minted_join(a in links_minted(), b in links_minted(), c in links_minted()) {
        check_join(&a, &b, &c)?;
        check_merge_from(&a, &b)?;
        check_map_registers(&a.peers, &b.peers, &a.merge(&b).peers)?;
    }

    #[test]
    fn link_graph_arbitrary_join(a in links_arbitrary(), b in links_arbitrary(), c in links_arbitrary()) {
        check_join(&a, &b, &c)?;
        check_map_registers(&a.peers, &b.peers, &a.merge(&b).peers)?;
    }

    #[test]
    fn subscriptions_arbitrary_join(
        a in subscriptions_arbitrary(),
        b in subscriptions_arbitrary(),
        c in subscriptions_arbitrary(),
    ) {
        check_join(&a, &b, &c)?;
        check_map_registers(&a.names, &b.names, &a.merge(&b).names)?;
    }

    #[test]
    fn sieve_minted_join(a in sieve_minted(), b in sieve_minted(), c in sieve_minted()) {
        for (name, x) in &a.scripts {
            if let Some(y) = b.scripts.get(name) {
                check_minted(x, y)?;
            }
        }
        if let (Some(x), Some(y)) = (&a.active, &b.active) {
            check_minted(x, y)?;
        }
        check_join(&a, &b, &c)?;
        let m = a.merge(&b);
        check_map_registers(&a.scripts, &b.scripts, &m.scripts)?;
        prop_assert_eq!(m.active.is_some(), a.active.is_some() || b.active.is_some());
        for side in [&a, &b] {
            if let Some(active) = &side.active {
                prop_assert!(m.active.as_ref().unwrap().version >= active.version);
            }
        }
        // The active script, if any, always names a script that exists.
        if let Some(name) = m.active_script() {
            prop_assert!(m.script(name).is_some());
        }
    }

    #[test]
    fn sieve_arbitrary_join(a in sieve_arbitrary(), b in sieve_arbitrary(), c in sieve_arbitrary()) {
        check_join(&a, &b, &c)?;
        check_map_registers(&a.scripts, &b.scripts, &a.merge(&b).scripts)?;
    }
}

// ---------------------------------------------------------------------------------------------
// A mailbox: records keyed by AppendId. No AppendId is ever dropped. (How a node settles the
// uid conflicts a merge makes is the subject of settle_laws.rs.)

type Mailbox = BTreeMap<AppendId, MessageRecord>;

/// Key-wise merge of two replicas of one mailbox: the union of the AppendIds, records present on
/// both sides merged.
fn merge_mailboxes(a: &Mailbox, b: &Mailbox) -> Mailbox {
    let mut out = a.clone();
    for (id, theirs) in b {
        out.entry(id.clone())
            .and_modify(|ours| *ours = ours.merge(theirs))
            .or_insert_with(|| theirs.clone());
    }
    out
}

/// One replica of a mailbox: some of the pool's AppendIds, each with a realistic record.
fn mailbox() -> impl Strategy<Value = Mailbox> + Clone {
    btree_set(append_id(), 0..=6).prop_flat_map(|ids| {
        ids.into_iter()
            .map(message_replica)
            .collect::<Vec<_>>()
            .prop_map(|records| records.into_iter().map(|r| (r.append_id.clone(), r)).collect())
    })
}

/// Every uid held by two distinct AppendIds, found by brute force: the generators must make them.
fn conflicts_oracle(records: &Mailbox) -> BTreeMap<Uid, Vec<AppendId>> {
    let mut out: BTreeMap<Uid, Vec<AppendId>> = BTreeMap::new();
    for (x, rx) in records {
        for (y, ry) in records {
            if x != y && rx.uid.value == ry.uid.value {
                let ids = out.entry(rx.uid.value).or_default();
                if !ids.contains(x) {
                    ids.push(x.clone());
                }
            }
        }
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

proptest! {
    #[test]
    fn mailbox_merge_never_drops_an_append_id(a in mailbox(), b in mailbox(), c in mailbox()) {
        let m = merge_mailboxes(&a, &b);
        let union: BTreeSet<&AppendId> = a.keys().chain(b.keys()).collect();
        prop_assert_eq!(m.keys().collect::<BTreeSet<_>>(), union, "an AppendId was dropped or invented");
        for (id, record) in &m {
            prop_assert_eq!(&record.append_id, id);
            let expected = match (a.get(id), b.get(id)) {
                (Some(x), Some(y)) => x.merge(y),
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (None, None) => unreachable!("checked above"),
            };
            prop_assert_eq!(record, &expected);
        }
        // The key-wise merge is itself a join.
        prop_assert_eq!(&m, &merge_mailboxes(&b, &a));
        prop_assert_eq!(merge_mailboxes(&a, &merge_mailboxes(&b, &c)), merge_mailboxes(&m, &c));
        prop_assert_eq!(merge_mailboxes(&a, &a), a.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// The generators exercise what the laws are about: ties, conflicts and every merge effect.

fn sample<S: Strategy>(strategy: &S, runner: &mut TestRunner) -> S::Value {
    strategy.new_tree(runner).unwrap().current()
}

#[test]
fn generators_produce_ties_conflicts_and_every_effect() {
    let mut runner = TestRunner::deterministic();
    let records = message_triple();
    let mut effects = BTreeMap::new();
    let mut uid_ties = 0;
    let mut expunged_one_side = 0;
    for _ in 0..500 {
        let (a, b, _) = sample(&records, &mut runner);
        uid_ties += usize::from(a.uid.version == b.uid.version);
        expunged_one_side += usize::from(a.is_expunged() != b.is_expunged());
        let mut state = a.clone();
        *effects.entry(format!("{:?}", state.merge_from(&b))).or_insert(0) += 1;
    }
    assert!(uid_ties > 10, "too few equal uid versions: {uid_ties}");
    assert!(
        expunged_one_side > 50,
        "too few one-sided expunges: {expunged_one_side}"
    );
    for effect in ["Unchanged", "TookIncoming", "Combined"] {
        assert!(
            effects.get(effect).copied().unwrap_or(0) > 10,
            "too few {effect}: {effects:?}"
        );
    }

    let lww = lww_u8_arbitrary();
    let clashes = (0..500)
        .filter(|_| {
            let (a, b) = (sample(&lww, &mut runner), sample(&lww, &mut runner));
            a.version == b.version && a.value != b.value
        })
        .count();
    assert!(
        clashes > 5,
        "too few equal versions with different values: {clashes}"
    );

    let mailboxes = mailbox();
    let mut conflicted = 0;
    for _ in 0..300 {
        let (a, b) = (sample(&mailboxes, &mut runner), sample(&mailboxes, &mut runner));
        conflicted += usize::from(!conflicts_oracle(&merge_mailboxes(&a, &b)).is_empty());
    }
    assert!(
        conflicted > 50,
        "too few merged mailboxes with uid conflicts: {conflicted}"
    );
}
