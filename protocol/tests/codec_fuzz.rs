//! Property tests for the frame codec: the decoder never panics on any bytes, in any chunking,
//! and answers only `Ok(None)`, `Ok(Some(frame))` or a typed `CodecError`; every frame survives
//! `encode_frame` and decoding in arbitrary pieces; an oversize length prefix is refused before
//! the body arrives.

use std::collections::BTreeMap;

use mailmesh_protocol::codec::{encode_frame, CodecError, FrameDecoder, DEFAULT_MAX_FRAME};
use mailmesh_protocol::merge::Lww;
use mailmesh_protocol::names::Flag;
use mailmesh_protocol::records::{
    Annotation, LinkGraph, MailboxDigest, MailboxEntry, MailboxPath, MailboxTombstone, MessageRecord,
    PrunedSet, UidNext, UserSieve, UserSubscriptions,
};
use mailmesh_protocol::wire::{
    BodyPart, Change, ChangePage, ChangeRequest, ErrorCode, Frame, Hello, Request, Response,
};
use mailmesh_protocol::{AppendId, Guid, MailboxId, ModSeq, NodeId, Uid, UidValidity, Version};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_bytes::ByteBuf;

// ---------------------------------------------------------------------------------------------
// Decoding harness.

/// Everything a decoder said about one byte stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    /// The first error, after which the stream is abandoned.
    error: Option<CodecError>,
}

/// Feeds `bytes` to a fresh decoder in pieces of the sizes in `chunks` (cycled), taking out every
/// frame after each piece, and checks the decoder's invariants along the way.
fn decode(bytes: &[u8], chunks: &[usize], max: u32) -> Result<Outcome, TestCaseError> {
    let mut dec = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut pushed = 0;
    let mut sizes = chunks.iter().cycle();
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    // Ok(None) only while the buffered bytes are not yet a whole frame.
                    let buffered = dec.buffered();
                    let rest = &bytes[pushed - buffered..pushed];
                    if buffered >= 4 {
                        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                        prop_assert!(len > 0 && len <= max as usize, "Ok(None) on a bad prefix");
                        prop_assert!(buffered < 4 + len, "Ok(None) with a whole frame buffered");
                    }
                    break;
                }
                Err(error) => {
                    let buffered = dec.buffered();
                    let rest = &bytes[pushed - buffered..pushed];
                    prop_assert!(buffered >= 4, "an error before a length prefix arrived");
                    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    match &error {
                        CodecError::Oversize { len: l, max: m } => {
                            prop_assert_eq!((*l, *m), (len, max as usize));
                            prop_assert!(len > max as usize);
                        }
                        CodecError::Empty => prop_assert_eq!(len, 0),
                        CodecError::Malformed(_) => {
                            prop_assert!(len > 0 && len <= max as usize && buffered >= 4 + len)
                        }
                        CodecError::Encode(_) => prop_assert!(false, "decoder reported {:?}", error),
                    }
                    // The decoder stays put on an error: asking again gives the same answer.
                    let again = dec.next_frame();
                    prop_assert!(again.as_ref().err() == Some(&error), "then {:?}", again);
                    return Ok(Outcome {
                        frames,
                        error: Some(error),
                    });
                }
            }
        }
        if pushed == bytes.len() {
            return Ok(Outcome { frames, error: None });
        }
        let n = (*sizes.next().unwrap()).min(bytes.len() - pushed);
        dec.push(&bytes[pushed..pushed + n]);
        pushed += n;
    }
}

/// Decodes `bytes` in `chunks` and whole, checks both agree, and that every decoded frame
/// re-encodes to a frame that decodes to itself.
fn decode_any(bytes: &[u8], chunks: &[usize], max: u32) -> Result<Outcome, TestCaseError> {
    let chunked = decode(bytes, chunks, max)?;
    let whole = decode(bytes, &[bytes.len().max(1)], max)?;
    prop_assert_eq!(&chunked, &whole, "the chunking changed the decoding");
    for frame in &chunked.frames {
        let again = encode_frame(frame, DEFAULT_MAX_FRAME).expect("a decoded frame encodes");
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(&again);
        prop_assert_eq!(dec.next_frame(), Ok(Some(frame.clone())));
        prop_assert_eq!(dec.buffered(), 0);
    }
    Ok(chunked)
}

fn encode_all(frames: &[Frame], max: u32) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| encode_frame(f, max).expect("frame fits"))
        .collect()
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![vec(1usize..8, 1..16), vec(1usize..300, 1..8)]
}

fn max_frame() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..64, 64u32..4096, Just(DEFAULT_MAX_FRAME)]
}

// ---------------------------------------------------------------------------------------------
// Frame generators.

const FLAGS: [&str; 6] = [
    "\\Seen",
    "\\Answered",
    "\\Flagged",
    "\\Deleted",
    "\\Draft",
    "$Junk",
];

fn node_id() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        select(&["a", "b", "node-1"][..]).prop_map(|n| NodeId::new(n).unwrap()),
        "[a-z0-9-]{1,63}".prop_map(|n| NodeId::new(n).unwrap()),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u64>(), node_id()).prop_map(|(counter, node)| Version { counter, node })
}

fn guid() -> impl Strategy<Value = Guid> {
    any::<[u8; 32]>().prop_map(Guid)
}

fn bytes(max: usize) -> impl Strategy<Value = ByteBuf> {
    vec(any::<u8>(), 0..max).prop_map(ByteBuf::from)
}

fn flag() -> impl Strategy<Value = Flag> {
    prop_oneof![
        select(&FLAGS[..]).prop_map(|f| Flag::new(f).unwrap()),
        "[a-zA-Z0-9$_.-]{1,16}".prop_map(|f| Flag::new(&f).unwrap()),
    ]
}

fn record() -> impl Strategy<Value = MessageRecord> {
    (
        (node_id(), any::<u64>()),
        (any::<u32>(), version()),
        (guid(), any::<u64>(), any::<i64>()),
        btree_map(flag(), (any::<bool>(), version()), 0..4),
        option::of(version()),
    )
        .prop_map(
            |((origin, counter), (uid, uv), (guid, size, internaldate), flags, expunged)| MessageRecord {
                append_id: AppendId { origin, counter },
                uid: Lww::new(Uid(uid), uv),
                guid,
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

fn annotation() -> impl Strategy<Value = Annotation> {
    (option::of(vec(any::<u8>(), 0..16)), version()).prop_map(|(value, v)| Annotation::new(value, v))
}

fn change<T: std::fmt::Debug>(item: impl Strategy<Value = T>) -> impl Strategy<Value = Change<T>> {
    (node_id(), item).prop_map(|(origin, item)| Change { origin, item })
}

fn digest() -> impl Strategy<Value = MailboxDigest> {
    (any::<u64>(), any::<[u8; 32]>()).prop_map(|(records, xor)| MailboxDigest { records, xor })
}

fn uidnext() -> impl Strategy<Value = UidNext> {
    any::<u32>().prop_map(|u| UidNext(Uid(u)))
}

fn modseq() -> impl Strategy<Value = ModSeq> {
    any::<u64>().prop_map(ModSeq)
}

fn mailbox_entry() -> impl Strategy<Value = MailboxEntry> {
    (
        (any::<u128>(), any::<u32>(), version()),
        (any::<String>(), any::<String>(), version()),
        (btree_set(node_id(), 0..3), version()),
        (option::of(node_id()), version()),
        option::of((version(), any::<u32>())),
        btree_map(node_id(), (any::<bool>(), version()), 0..3),
    )
        .prop_map(
            |((id, uv, created), (user, name, pv), (locations, lv), (primary, prv), deleted, leaving)| {
                MailboxEntry {
                    id: MailboxId(id),
                    uidvalidity: UidValidity(uv),
                    created,
                    path: Lww::new(MailboxPath { user, name }, pv),
                    locations: Lww::new(locations, lv),
                    primary: Lww::new(primary, prv),
                    deleted: deleted.map(|(version, uv)| MailboxTombstone {
                        version,
                        uidvalidity: UidValidity(uv),
                    }),
                    leaving: leaving
                        .into_iter()
                        .map(|(n, (l, v))| (n, Lww::new(l, v)))
                        .collect(),
                }
            },
        )
}

fn subscriptions() -> impl Strategy<Value = UserSubscriptions> {
    btree_map(any::<String>(), (any::<bool>(), version()), 0..4).prop_map(|names| UserSubscriptions {
        names: names
            .into_iter()
            .map(|(n, (set, v))| (n, Lww::new(set, v)))
            .collect(),
    })
}

fn links() -> impl Strategy<Value = LinkGraph> {
    btree_map(node_id(), (btree_set(node_id(), 0..4), version()), 0..4).prop_map(|peers| LinkGraph {
        peers: peers
            .into_iter()
            .map(|(n, (set, v))| (n, Lww::new(set, v)))
            .collect(),
    })
}

fn sieve() -> impl Strategy<Value = UserSieve> {
    (
        btree_map(any::<String>(), (option::of(bytes(32)), version()), 0..3),
        option::of((option::of(any::<String>()), version())),
    )
        .prop_map(|(scripts, active)| UserSieve {
            scripts: scripts
                .into_iter()
                .map(|(n, (content, v))| (n, Lww::new(content, v)))
                .collect::<BTreeMap<_, _>>(),
            active: active.map(|(name, v)| Lww::new(name, v)),
        })
}

fn change_request() -> impl Strategy<Value = ChangeRequest> {
    (
        (any::<u128>(), any::<u32>(), modseq(), modseq(), uidnext()),
        vec(change(record()), 0..4),
        vec(change((any::<String>(), annotation())), 0..3),
        digest(),
        any::<bool>(),
        vec(change(record().prop_map(|r| r.update())), 0..3),
        vec((guid(), bytes(64)), 0..3),
    )
        .prop_map(
            |(
                (mailbox, uv, expected, sender, uidnext),
                records,
                annotations,
                digest,
                full,
                updates,
                bodies,
            )| {
                ChangeRequest {
                    mailbox: MailboxId(mailbox),
                    uidvalidity: UidValidity(uv),
                    expected_peer_modseq: expected,
                    sender_modseq: sender,
                    uidnext,
                    records,
                    updates,
                    annotations,
                    digest,
                    pruned: full.then(PrunedSet::default),
                    full,
                    bodies: bodies
                        .into_iter()
                        .map(|(guid, data)| BodyPart {
                            guid,
                            offset: 0,
                            data,
                            last: true,
                        })
                        .collect(),
                }
            },
        )
}

fn change_page() -> impl Strategy<Value = ChangePage> {
    (
        vec(change(record()), 0..3),
        vec(change((any::<String>(), annotation())), 0..3),
        uidnext(),
        option::of(modseq()),
    )
        .prop_map(|(records, annotations, uidnext, next)| ChangePage {
            records,
            annotations,
            uidnext,
            next,
            pruned: None,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        vec(guid(), 0..5).prop_map(|guids| Request::MissingBodies { guids }),
        (any::<u128>(), any::<u32>()).prop_map(|(mailbox, uidvalidity)| Request::Keeps {
            mailbox: MailboxId(mailbox),
            uidvalidity: UidValidity(uidvalidity),
        }),
        (any::<u128>(), any::<u64>()).prop_map(|(incarnation, floor)| Request::Hello { incarnation, floor }),
        (guid(), any::<u64>(), any::<u32>()).prop_map(|(guid, offset, limit)| Request::FetchBody {
            guid,
            offset,
            limit
        }),
        (guid(), any::<u64>(), bytes(512), any::<bool>()).prop_map(|(guid, offset, data, last)| {
            Request::BodyChunk {
                guid,
                offset,
                data,
                last,
            }
        }),
        change_request().prop_map(Request::ChangeRequest),
        vec((guid(), any::<u64>(), bytes(64), any::<bool>()), 0..4).prop_map(|parts| Request::Bodies {
            parts: parts
                .into_iter()
                .map(|(guid, offset, data, last)| BodyPart {
                    guid,
                    offset,
                    data,
                    last
                })
                .collect()
        }),
        (any::<String>(), vec(change(mailbox_entry()), 0..3))
            .prop_map(|(user, entries)| Request::Mailboxes { user, entries }),
        (any::<String>(), change(subscriptions()))
            .prop_map(|(user, subscriptions)| Request::Subscriptions { user, subscriptions }),
        (any::<String>(), change(sieve())).prop_map(|(user, sieve)| Request::Sieve { user, sieve }),
        change(links()).prop_map(|links| Request::Links { links }),
        (any::<u128>(), any::<u32>(), modseq(), any::<u32>()).prop_map(|(m, uv, since, limit)| {
            Request::ChangesSince {
                mailbox: MailboxId(m),
                uidvalidity: UidValidity(uv),
                since,
                limit,
            }
        }),
        (
            any::<u128>(),
            any::<u32>(),
            option::of((node_id(), any::<u64>())),
            any::<u32>()
        )
            .prop_map(|(m, uv, after, limit)| Request::FullState {
                mailbox: MailboxId(m),
                uidvalidity: UidValidity(uv),
                after: after.map(|(origin, counter)| AppendId { origin, counter }),
                limit,
            }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(
        &[
            ErrorCode::UnknownMailbox,
            ErrorCode::MailboxDeleted,
            ErrorCode::UidValidityMismatch,
            ErrorCode::NoHistory,
            ErrorCode::MissingBody,
            ErrorCode::UnknownRecord,
            ErrorCode::Busy,
            ErrorCode::Corrupt,
            ErrorCode::Storage,
            ErrorCode::BadRequest,
        ][..],
    )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Ok),
        (any::<u128>(), any::<u64>()).prop_map(|(incarnation, floor)| Response::Hello { incarnation, floor }),
        (bytes(256), any::<u64>()).prop_map(|(data, total)| Response::Body { data, total }),
        (error_code(), any::<String>(), any::<bool>())
            .prop_map(|(code, message, retry)| { Response::Error { code, message, retry } }),
        (modseq(), digest()).prop_map(|(modseq, digest)| Response::Applied { modseq, digest }),
        (modseq(), change_page()).prop_map(|(modseq, changes)| Response::Mismatch { modseq, changes }),
        change_page().prop_map(Response::Changes),
        (
            vec(change(record()), 0..3),
            vec(change((any::<String>(), annotation())), 0..3),
            uidnext(),
            modseq(),
            option::of((node_id(), any::<u64>())),
        )
            .prop_map(|(records, annotations, uidnext, modseq, next)| Response::Full {
                pruned: next.as_ref().map(|(origin, counter)| {
                    let mut p = PrunedSet::default();
                    p.insert(&AppendId {
                        origin: origin.clone(),
                        counter: *counter,
                    });
                    p
                }),
                records,
                annotations,
                uidnext,
                modseq,
                next: next.map(|(origin, counter)| AppendId { origin, counter }),
            }),
        vec(guid(), 0..5).prop_map(|guids| Response::Missing { guids }),
        (any::<bool>(), any::<u128>())
            .prop_map(|(keeps, incarnation)| Response::Keeps { keeps, incarnation }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), node_id(), any::<u32>()).prop_map(|(protocol, node, max_frame)| Frame::Hello(Hello {
            protocol,
            node,
            max_frame
        })),
        any::<String>().prop_map(|reason| Frame::Refuse { reason }),
        (any::<u64>(), request()).prop_map(|(id, request)| Frame::Request { id, request }),
        (any::<u64>(), response()).prop_map(|(id, response)| Frame::Response { id, response }),
    ]
}

/// Valid encodings of `frames`, then damaged: some bytes overwritten, maybe cut short, and the
/// length prefixes optionally left consistent with the damaged body so the damage reaches the
/// deserializer.
fn damaged_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(frame(), 1..3),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        option::of(any::<prop::sample::Index>()),
        any::<bool>(),
    )
        .prop_map(|(frames, edits, cut, keep_prefixes_consistent)| {
            let mut out = Vec::new();
            for frame in &frames {
                let encoded = encode_frame(frame, DEFAULT_MAX_FRAME).unwrap();
                let mut body = encoded[4..].to_vec();
                for (at, byte) in &edits {
                    let i = at.index(body.len());
                    body[i] = *byte;
                }
                if let Some(cut) = &cut {
                    body.truncate(cut.index(body.len()) + 1);
                }
                if keep_prefixes_consistent {
                    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                } else {
                    out.extend_from_slice(&encoded[..4]);
                }
                out.extend_from_slice(&body);
            }
            out
        })
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..512),
        chunks in chunks(),
        max in max_frame(),
    ) {
        decode_any(&bytes, &chunks, max)?;
    }

    /// Arbitrary bodies behind a length prefix that matches them, so the bytes reach the
    /// deserializer; several such pieces in a row.
    #[test]
    fn arbitrary_bodies_behind_valid_prefixes_never_panic(
        bodies in vec((vec(any::<u8>(), 0..200), -2i64..3), 1..4),
        chunks in chunks(),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME), 0u32..256],
    ) {
        let mut bytes = Vec::new();
        for (body, skew) in &bodies {
            let len = (body.len() as i64 + skew).max(0) as u32;
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(body);
        }
        let outcome = decode_any(&bytes, &chunks, max)?;
        // Each frame needs at least a prefix and one byte.
        prop_assert!(outcome.frames.len() <= bodies.len());
    }

    #[test]
    fn damaged_frames_never_panic(bytes in damaged_stream(), chunks in chunks()) {
        decode_any(&bytes, &chunks, DEFAULT_MAX_FRAME)?;
    }

    #[test]
    fn frames_round_trip_in_any_chunking(frames in vec(frame(), 1..5), chunks in chunks()) {
        let bytes = encode_all(&frames, DEFAULT_MAX_FRAME);
        let outcome = decode_any(&bytes, &chunks, DEFAULT_MAX_FRAME)?;
        prop_assert_eq!(outcome, Outcome { frames, error: None });
    }

    /// A stream cut anywhere yields exactly the frames wholly before the cut, then waits.
    #[test]
    fn cut_streams_yield_the_whole_frames_then_wait(
        frames in vec(frame(), 1..4),
        cut in any::<prop::sample::Index>(),
        chunks in chunks(),
    ) {
        let encoded: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| encode_frame(f, DEFAULT_MAX_FRAME).unwrap())
            .collect();
        let bytes = encoded.concat();
        let cut = cut.index(bytes.len() + 1);
        let mut whole = 0;
        let mut end = 0;
        for e in &encoded {
            if end + e.len() > cut {
                break;
            }
            end += e.len();
            whole += 1;
        }
        let outcome = decode_any(&bytes[..cut], &chunks, DEFAULT_MAX_FRAME)?;
        prop_assert_eq!(outcome, Outcome { frames: frames[..whole].to_vec(), error: None });
    }

    /// A valid frame followed, inside its length prefix, by extra bytes is refused whole.
    #[test]
    fn trailing_bytes_inside_a_frame_are_malformed(
        frame in frame(),
        junk in vec(any::<u8>(), 1..8),
        chunks in chunks(),
    ) {
        let encoded = encode_frame(&frame, DEFAULT_MAX_FRAME).unwrap();
        let mut bytes = ((encoded.len() - 4 + junk.len()) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&encoded[4..]);
        bytes.extend_from_slice(&junk);
        let outcome = decode_any(&bytes, &chunks, DEFAULT_MAX_FRAME)?;
        prop_assert!(outcome.frames.is_empty());
        prop_assert!(matches!(outcome.error, Some(CodecError::Malformed(_))), "{:?}", outcome.error);
    }

    /// A frame exactly `max` long passes both ways; one byte over is refused by the encoder and
    /// by the decoder.
    #[test]
    fn frames_at_the_limit(frame in frame()) {
        let bytes = encode_frame(&frame, DEFAULT_MAX_FRAME).unwrap();
        let len = bytes.len() - 4;
        let exact = len as u32;
        prop_assert_eq!(&encode_frame(&frame, exact).unwrap(), &bytes);
        prop_assert_eq!(
            encode_frame(&frame, exact - 1),
            Err(CodecError::Oversize { len, max: len - 1 })
        );
        let mut dec = FrameDecoder::new(exact);
        dec.push(&bytes);
        prop_assert_eq!(dec.next_frame(), Ok(Some(frame)));
        let mut dec = FrameDecoder::new(exact - 1);
        dec.push(&bytes);
        prop_assert_eq!(dec.next_frame(), Err(CodecError::Oversize { len, max: len - 1 }));
    }

    /// An oversize prefix is refused as soon as its four bytes are in, before any body byte.
    #[test]
    fn oversize_prefix_is_refused_before_the_body(
        max in prop_oneof![0u32..1024, Just(DEFAULT_MAX_FRAME)],
        over in 1u64..=u64::from(u32::MAX),
        split in 0usize..=4,
        body in vec(any::<u8>(), 0..64),
    ) {
        let len = (u64::from(max) + over).min(u64::from(u32::MAX)) as u32;
        prop_assume!(len > max);
        let prefix = len.to_be_bytes();
        let mut dec = FrameDecoder::new(max);
        dec.push(&prefix[..split]);
        if split < 4 {
            prop_assert_eq!(dec.next_frame(), Ok(None));
            dec.push(&prefix[split..]);
        }
        let refused = || Err(CodecError::Oversize { len: len as usize, max: max as usize });
        prop_assert_eq!(dec.next_frame(), refused());
        dec.push(&body);
        prop_assert_eq!(dec.next_frame(), refused());
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made hostile frames.

fn decode_one(body: &[u8]) -> Result<Option<Frame>, CodecError> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.push(&(body.len() as u32).to_be_bytes());
    dec.push(body);
    dec.next_frame()
}

fn msgpack_str(s: &str) -> Vec<u8> {
    assert!(s.len() < 32);
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

#[test]
fn empty_frame_is_an_error() {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.push(&[0, 0, 0]);
    assert_eq!(dec.next_frame(), Ok(None));
    dec.push(&[0, 1, 2, 3]);
    assert_eq!(dec.next_frame(), Err(CodecError::Empty));
}

/// A Hello written as a map, with an unknown field holding 100 000 nested arrays: the
/// deserializer skips unknown fields recursively, and must refuse rather than overflow the stack.
#[test]
fn deeply_nested_unknown_field_is_malformed() {
    let mut body = vec![0x81];
    body.extend(msgpack_str("Hello"));
    body.push(0x84);
    body.extend(msgpack_str("protocol"));
    body.push(1);
    body.extend(msgpack_str("node"));
    body.extend(msgpack_str("a"));
    body.extend(msgpack_str("max_frame"));
    body.push(5);
    body.extend(msgpack_str("x"));
    body.extend(std::iter::repeat_n(0x91, 100_000));
    body.push(0xc0);
    assert!(matches!(decode_one(&body), Err(CodecError::Malformed(_))));

    // The same map without the nesting is a valid Hello, so the error above is the nesting's.
    let valid = &body[..body.len() - 100_001 - 2];
    let mut valid = valid.to_vec();
    valid[7] = 0x83;
    assert_eq!(
        decode_one(&valid),
        Ok(Some(Frame::Hello(Hello {
            protocol: 1,
            node: NodeId::new("a").unwrap(),
            max_frame: 5,
        })))
    );
}

/// Declared lengths far beyond the frame (a 4 GiB string, byte string, array) are refused
/// without allocating them.
#[test]
fn huge_declared_lengths_are_malformed() {
    let mut refuse = vec![0x81];
    refuse.extend(msgpack_str("Refuse"));
    refuse.extend([0x91, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x']);
    assert!(matches!(decode_one(&refuse), Err(CodecError::Malformed(_))));

    let chunk = Frame::Request {
        id: 1,
        request: Request::BodyChunk {
            guid: Guid([7; 32]),
            offset: 0,
            data: ByteBuf::from(vec![1, 2, 3]),
            last: true,
        },
    };
    let mut body = encode_frame(&chunk, DEFAULT_MAX_FRAME).unwrap()[4..].to_vec();
    // The data field is the only bin8 of 3 bytes: make it bin32 of 4 GiB.
    let at = body.windows(5).position(|w| w == [0xc4, 3, 1, 2, 3]).unwrap();
    body.splice(at..at + 2, [0xc6, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(decode_one(&body), Err(CodecError::Malformed(_))));

    let mut missing = vec![0x81];
    missing.extend(msgpack_str("Request"));
    missing.extend([0x92, 0x01, 0x81]);
    missing.extend(msgpack_str("MissingBodies"));
    missing.extend([0x91, 0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(decode_one(&missing), Err(CodecError::Malformed(_))));
}
