//! The mailbox digest keeps its value across the change of the Guid's wire encoding: a record's
//! digest is BLAKE3 of its protocol-version-2 MessagePack encoding (struct fields in an array,
//! the Guid as an array of 32 numbers), which stores and peers have summed into their digests.
//! The digest writes that encoding by hand; this checks it byte for byte against serde's
//! encoding of the version-2 layout, over the whole range of every integer and string.

use std::collections::BTreeMap;

use mailmesh_protocol::ids::{AppendId, Guid, NodeId, Uid};
use mailmesh_protocol::merge::Lww;
use mailmesh_protocol::names::Flag;
use mailmesh_protocol::records::MessageRecord;
use mailmesh_protocol::version::Version;
use proptest::collection::btree_map;
use proptest::option;
use proptest::prelude::*;
use serde::Serialize;

/// A record as protocol version 2 encoded it.
#[derive(Serialize)]
struct RecordV2<'a> {
    append_id: &'a AppendId,
    uid: &'a Lww<Uid>,
    guid: [u8; 32],
    size: u64,
    internaldate: i64,
    flags: &'a BTreeMap<Flag, Lww<bool>>,
    expunged: &'a Option<Version>,
}

fn node() -> impl Strategy<Value = NodeId> {
    "[a-z0-9-]{1,63}".prop_map(|s| NodeId::new(s).unwrap())
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u64>(), node()).prop_map(|(counter, node)| Version { counter, node })
}

fn flag() -> impl Strategy<Value = Flag> {
    prop_oneof![
        proptest::sample::select(&Flag::SYSTEM[..]).prop_map(|f| Flag::new(f).unwrap()),
        "[A-Za-z$][A-Za-z0-9_.-]{0,40}".prop_map(|f| Flag::new(&f).unwrap()),
    ]
}

fn record() -> impl Strategy<Value = MessageRecord> {
    (
        (node(), any::<u64>()),
        (any::<u32>(), version()),
        (any::<[u8; 32]>(), any::<u64>(), any::<i64>()),
        btree_map(flag(), (any::<bool>(), version()), 0..20),
        option::of(version()),
    )
        .prop_map(
            |((origin, counter), (uid, uv), (guid, size, internaldate), flags, expunged)| MessageRecord {
                append_id: AppendId { origin, counter },
                uid: Lww::new(Uid(uid), uv),
                guid: Guid(guid),
                size,
                internaldate,
                flags: flags
                    .into_iter()
                    .map(|(f, (set, v))| (f, Lww::new(set, v)))
                    .collect(),
                expunged,
            },
        )
}

fn digest_v2(r: &MessageRecord) -> [u8; 32] {
    let v2 = RecordV2 {
        append_id: &r.append_id,
        uid: &r.uid,
        guid: r.guid.0,
        size: r.size,
        internaldate: r.internaldate,
        flags: &r.flags,
        expunged: &None,
    };
    *blake3::hash(&rmp_serde::to_vec(&v2).unwrap()).as_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn live_record_digest_is_blake3_of_the_v2_encoding(mut r in record()) {
        r.expunged = None;
        prop_assert_eq!(r.digest(), digest_v2(&r));
    }

    #[test]
    fn guid_round_trips_and_reads_the_v2_array(guid in any::<[u8; 32]>()) {
        let g = Guid(guid);
        let encoded = rmp_serde::to_vec(&g).unwrap();
        // bin 8 of 32 bytes: the marker, the length, the bytes.
        prop_assert_eq!(encoded.len(), 34);
        prop_assert_eq!(rmp_serde::from_slice::<Guid>(&encoded).unwrap(), g);
        let v2 = rmp_serde::to_vec(&guid).unwrap();
        prop_assert_eq!(rmp_serde::from_slice::<Guid>(&v2).unwrap(), g);
    }
}

#[test]
fn guid_of_the_wrong_length_is_refused() {
    for len in [0usize, 31, 33] {
        let bytes = rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![7u8; len])).unwrap();
        assert!(
            rmp_serde::from_slice::<Guid>(&bytes).is_err(),
            "bin of {len} bytes"
        );
        let array = rmp_serde::to_vec(&vec![7u8; len]).unwrap();
        assert!(
            rmp_serde::from_slice::<Guid>(&array).is_err(),
            "array of {len} numbers"
        );
    }
}

/// A record stored by version 2 (its Guid as an array) still decodes, to the same record.
#[test]
fn record_stored_by_version_2_still_decodes() {
    let r = MessageRecord {
        append_id: AppendId {
            origin: NodeId::new("n1").unwrap(),
            counter: 7,
        },
        uid: Lww::new(
            Uid(3),
            Version {
                counter: 9,
                node: NodeId::new("n1").unwrap(),
            },
        ),
        guid: Guid::of(b"a message"),
        size: 9,
        internaldate: 1_700_000_000,
        flags: BTreeMap::new(),
        expunged: None,
    };
    let v2 = rmp_serde::to_vec(&RecordV2 {
        append_id: &r.append_id,
        uid: &r.uid,
        guid: r.guid.0,
        size: r.size,
        internaldate: r.internaldate,
        flags: &r.flags,
        expunged: &r.expunged,
    })
    .unwrap();
    assert_eq!(rmp_serde::from_slice::<MessageRecord>(&v2).unwrap(), r);
    assert!(rmp_serde::to_vec(&r).unwrap().len() < v2.len());
}
