//! The commands on messages: FETCH, STORE, EXPUNGE (and UID EXPUNGE, CLOSE's expunge), APPEND,
//! COPY and MOVE, SEARCH, and the untagged EXISTS/EXPUNGE (VANISHED with QRESYNC) and FETCH
//! FLAGS that keep the session's [`SequenceMap`] and the client's view in step.
//!
//! Everything goes through Mailbox actor messages: `ListUids` (the map at SELECT), `GetState`
//! and `FetchFlags` (what is new), `ChangedSince` (flag changes to tell, QRESYNC's resync),
//! `WatchChanges` (what an IDLE waits on), `FetchFlags` (uids, flags and modseqs from the uid
//! index alone: FETCH of UID, FLAGS and MODSEQ, SEARCH over flags, a full resync), `Fetch` (the
//! records, for the other items and keys), `FetchBody` (one message's bytes at a time: a FETCH
//! or SEARCH of many bodies holds one), `StoreFlags`, `Expunge`, `Append`, `Transfer`. A FETCH
//! walks the messages in chunks of [`FLAGS_CHUNK`] or [`FETCH_CHUNK`] and writes what it
//! gathered once it passes the session's flush size, so its memory does not grow with the
//! mailbox.

use std::num::{NonZeroU32, NonZeroU64};

use actix::Addr;
use imap_codec::imap_types::command::{FetchModifier, StoreModifier};
use imap_codec::imap_types::core::{Charset, IString, Literal, LiteralMode, NString, NString8, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet as ImapUidSet};
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{Flag as ImapFlag, FlagFetch, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox as ImapMailbox;
use imap_codec::imap_types::response::{Code, Data, StatusKind};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::IntoStatic;
use mailmesh_actors::flag_set::{self, FlagSet};
use mailmesh_actors::mailbox::{
    Append, ChangedSince, Expunge, ExpungeMode, Fetch, FetchBody, FetchFlags, FlagAction, GetState, ListUids,
    Mailbox, MailboxState, MessageFlags, MessageView, StoreFlags, Transfer, WatchChanges,
};
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::{Guid, MailboxId, ModSeq, Uid};
use mailmesh_protocol::names::Flag;
use tracing::warn;

use super::esearch::{self, Found, SearchReturn};
use super::message;
use super::mime;
use super::protocol::{encode, status};
use super::search;
use super::sequence::SequenceMap;
use super::session::{open_mailbox, untagged, write, Outcome, FLUSH_AT};
use super::ImapContext;
use crate::client_tls::Connection;

/// Messages whose records a FETCH asks the actor for at once.
pub const FETCH_CHUNK: usize = 512;
/// Messages whose flags (a few bytes each, from the uid index) a FETCH FLAGS or a SEARCH over
/// flags asks the actor for at once: fewer round trips, still a bounded answer.
pub const FLAGS_CHUNK: usize = 4096;
/// Messages a STORE changes with one actor message (one commit).
pub const STORE_CHUNK: usize = 4096;
/// Changed records read at once when a session looks for other sessions' flag changes.
const CHANGES_CHUNK: usize = 1024;

/// The selected mailbox and what the session has told the client of it.
pub struct Selected {
    pub name: String,
    pub read_only: bool,
    pub id: MailboxId,
    pub addr: Addr<Mailbox>,
    /// The messages the client knows, by sequence number.
    pub map: SequenceMap,
    /// The mailbox's UIDNEXT when the map was last brought up to date: a message with a uid at
    /// or above it is new to the session.
    pub uidnext: u32,
    /// The mailbox's count and HIGHESTMODSEQ when the map last matched the store: every change
    /// raises the modseq, so while both are the same there is nothing to look for.
    pub checked: Option<(u64, ModSeq)>,
    /// Raised by the Mailbox actor after each committed change ([`WatchChanges`]): what an IDLE
    /// waits on. `None` once the actor is gone (the mailbox was deleted).
    pub changes: Option<tokio::sync::watch::Receiver<u64>>,
    /// Flag changes up to this modseq have been told (or were in the state at SELECT).
    flags_told: ModSeq,
    /// Flag changes this session's own commands made and answered since the last refresh, by
    /// uid, at the modseq they wrote: the refresh does not tell them again (a `.SILENT` STORE
    /// stays silent).
    own_flags: std::collections::BTreeMap<u32, ModSeq>,
    /// CONDSTORE is on for the session: told flag changes carry MODSEQ (RFC 7162 3.2).
    pub condstore: bool,
    /// QRESYNC is on: messages gone are told with VANISHED (by uid) instead of EXPUNGE.
    pub qresync: bool,
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected")
            .field("name", &self.name)
            .field("read_only", &self.read_only)
            .field("id", &self.id)
            .field("exists", &self.map.len())
            .field("uidnext", &self.uidnext)
            .finish()
    }
}

impl Selected {
    /// The map as the store has it now (SELECT and EXAMINE), with the mailbox's state.
    pub async fn open(
        ctx: &ImapContext,
        user: &str,
        name: String,
        read_only: bool,
    ) -> Result<(Selected, MailboxState), MailError> {
        let opened = open_mailbox(ctx, user, &name).await?;
        let addr = opened.addr;
        // Watched before the state is read: a change committed in between wakes an IDLE and is
        // found by the refresh, never lost.
        let changes = addr.send(WatchChanges).await??;
        let state = addr.send(GetState).await??;
        let uids: Vec<u32> = addr.send(ListUids).await??.into_iter().map(|u| u.0).collect();
        let map = SequenceMap::new(uids);
        // A message committed between the two reads is listed and counted: either way it is in
        // the map once, and later uids are new.
        let uidnext = state.uidnext.0.max(map.last_uid().saturating_add(1));
        let selected = Selected {
            name,
            read_only,
            id: opened.info.id,
            addr,
            map,
            uidnext,
            checked: Some((state.exists, state.highestmodseq)),
            changes: Some(changes),
            flags_told: state.highestmodseq,
            own_flags: Default::default(),
            condstore: false,
            qresync: false,
        };
        Ok((selected, state))
    }

    /// The sequence number of the first message without `\Seen`, for SELECT's `[UNSEEN n]`
    /// (RFC 3501 6.3.1 lists it among the required answers). `unseen` is the mailbox's count
    /// of them: with none, nothing is read; otherwise the flags are read in chunks from the
    /// start and the scan stops at the first one found.
    pub async fn first_unseen(&self, unseen: u64) -> Result<Option<u32>, MailError> {
        if unseen == 0 {
            return Ok(None);
        }
        // The uid index alone (`FetchFlags`), not the records: a SELECT decoded 512 of them.
        for chunk in self.map.uids().chunks(FETCH_CHUNK) {
            let messages = self
                .addr
                .send(FetchFlags {
                    uids: actor_uids(chunk),
                })
                .await??;
            let seen = |message: &MessageFlags| message.flags.has(flag_set::SEEN);
            // They come in uid order, as the map: the first unseen one is the lowest number (a
            // message expunged since the listing is not there and has no say).
            if let Some(message) = messages.iter().find(|message| !seen(message)) {
                return Ok(self.map.seq(message.uid.0));
            }
        }
        Ok(None)
    }

    /// Brings the map up to date with the store after a command (and during IDLE, when the
    /// mailbox changed) and tells the client: EXPUNGE for each message gone (only where
    /// `expunges_allowed`: RFC 3501 7.4.1 forbids them during FETCH, STORE and SEARCH), then
    /// EXISTS when messages came, then FETCH FLAGS for the flags changed by others.
    pub async fn refresh(&mut self, expunges_allowed: bool, out: &mut Vec<u8>) -> Result<(), MailError> {
        if let Some(changes) = &mut self.changes {
            // Seen from here: a commit after this point wakes an IDLE again.
            changes.borrow_and_update();
        }
        let own = std::mem::take(&mut self.own_flags);
        let state = self.addr.send(GetState).await??;
        if self.checked == Some((state.exists, state.highestmodseq)) {
            return Ok(());
        }
        let mut fresh: Vec<u32> = Vec::new();
        if state.uidnext.0 > self.uidnext {
            let range = UidSet::range(Uid(self.uidnext), Uid(state.uidnext.0 - 1));
            // The uid index alone: only the new uids are needed.
            fresh = self
                .addr
                .send(FetchFlags { uids: range })
                .await??
                .into_iter()
                .map(|v| v.uid.0)
                .collect();
            self.uidnext = state.uidnext.0;
        }
        let mismatch = state.exists != u64::from(self.map.len()) + fresh.len() as u64;
        if expunges_allowed && mismatch {
            // Some message the session knows is gone (another session's expunge or move, or
            // replication's): the listing says which.
            let listed: Vec<u32> = self
                .addr
                .send(ListUids)
                .await??
                .into_iter()
                .map(|u| u.0)
                .collect();
            let gone: Vec<u32> = self
                .map
                .uids()
                .iter()
                .copied()
                .filter(|u| listed.binary_search(u).is_err())
                .collect();
            self.forget(&gone, out);
            let last = self.map.last_uid();
            fresh = listed.into_iter().filter(|&u| u > last).collect();
            self.uidnext = self.uidnext.max(fresh.last().map_or(0, |u| u + 1));
        }
        // Messages up to here were known before this refresh: their flag changes are news.
        let known_last = self.map.last_uid();
        let mut grew = false;
        for uid in fresh {
            grew |= self.map.push(uid);
        }
        if grew {
            untagged(Data::Exists(self.map.len()), out);
        }
        if state.highestmodseq > self.flags_told {
            self.tell_flag_changes(known_last, &own, state.highestmodseq, out)
                .await?;
        }
        // Looked at fully (a listing, or nothing to list): no need to look again until the
        // mailbox changes. A count left unexplained (an expunge not yet told) is looked at again.
        if expunges_allowed || !mismatch {
            self.checked = Some((state.exists, state.highestmodseq));
        }
        Ok(())
    }

    /// The untagged FETCH (UID FLAGS [MODSEQ]) telling a message's flags, if the session knows
    /// the message (has a sequence number for it).
    fn tell_flags(&self, message: Head<'_>, with_modseq: bool, out: &mut Vec<u8>) {
        let Some(seq) = self.map.seq(message.uid) else {
            return;
        };
        let mut items = vec![
            MessageDataItem::Uid(nonzero(message.uid)),
            MessageDataItem::Flags(flag_fetch(message.flags.names())),
        ];
        if let Some(modseq) = NonZeroU64::new(message.modseq.0).filter(|_| with_modseq) {
            items.push(MessageDataItem::ModSeq(modseq));
        }
        untagged(
            Data::Fetch {
                seq: nonzero(seq),
                items: Vec1::try_from(items).expect("UID and FLAGS"),
            },
            out,
        );
    }

    /// FETCH (UID FLAGS) for each known message whose flags changed after `flags_told`, read
    /// from the modseq index a chunk at a time (what changed, not the mailbox), except those this
    /// session changed itself and answered.
    async fn tell_flag_changes(
        &mut self,
        known_last: u32,
        own: &std::collections::BTreeMap<u32, ModSeq>,
        upto: ModSeq,
        out: &mut Vec<u8>,
    ) -> Result<(), MailError> {
        let mut since = self.flags_told;
        loop {
            let changed = self
                .addr
                .send(ChangedSince {
                    since,
                    limit: CHANGES_CHUNK,
                })
                .await??;
            for stored in &changed {
                since = since.max(stored.modseq);
                // Expunges are told by the listing, new messages by EXISTS.
                if stored.hidden || stored.record.is_expunged() {
                    continue;
                }
                let view = MessageView::of(stored);
                if view.uid.0 > known_last || own.get(&view.uid.0) == Some(&view.modseq) {
                    continue;
                }
                self.tell_flags(Head::of(&view), self.condstore, out);
            }
            if changed.len() < CHANGES_CHUNK {
                break;
            }
        }
        self.flags_told = since.max(upto);
        Ok(())
    }

    /// Takes the `gone` uids out of the map and tells the client: an EXPUNGE per message, or
    /// with QRESYNC one VANISHED of their uids (RFC 7162 3.2.10).
    pub fn forget(&mut self, gone: &[u32], out: &mut Vec<u8>) {
        if self.qresync {
            let known: Vec<u32> = gone
                .iter()
                .copied()
                .filter(|&u| self.map.seq(u).is_some())
                .collect();
            self.map.remove_all(&known);
            if let Some(set) = sequence_set(&known) {
                untagged(
                    Data::Vanished {
                        earlier: false,
                        known_uids: set,
                    },
                    out,
                );
            }
        } else {
            for seq in self.map.remove_all(gone) {
                untagged(Data::Expunge(nonzero(seq)), out);
            }
        }
    }

    /// The uids named by `set` (clipped to those this mailbox has handed out) that it no longer
    /// has: `VANISHED (EARLIER)` for them. A superset of what went since any modseq, so it is
    /// right whatever node minted the client's modseq and whatever tombstones were compacted
    /// (RFC 7162 3.2.5.2 lets a server name uids the client does not know).
    fn vanished_in(&self, set: &SequenceSet) -> Vec<u32> {
        let last = self.uidnext.saturating_sub(1);
        let mut gone = Vec::new();
        for sequence in set.0.as_ref() {
            let value = |v: &SeqOrUid| match v {
                SeqOrUid::Value(v) => v.get().min(last),
                SeqOrUid::Asterisk => last,
            };
            let (a, b) = match sequence {
                Sequence::Single(v) => (value(v), value(v)),
                Sequence::Range(a, b) => (value(a).min(value(b)), value(a).max(value(b))),
            };
            gone.extend((a.max(1)..=b).filter(|&u| self.map.seq(u).is_none()));
        }
        gone.sort_unstable();
        gone.dedup();
        gone
    }

    /// SELECT ... (QRESYNC (uidvalidity modseq [known-uids])) with a matching UIDVALIDITY:
    /// `VANISHED (EARLIER)` for the known uids gone, then FETCH (UID FLAGS MODSEQ) for every
    /// message changed after `since`. A modseq this node did not mint (the client failed over
    /// from another node) or one above this node's highest says nothing about this copy: then
    /// every message's flags are sent, a full resync rather than a silently incomplete one.
    pub async fn resync(
        &mut self,
        since: u64,
        known: Option<&SequenceSet>,
        out: &mut Vec<u8>,
    ) -> Result<(), MailError> {
        let all = SequenceSet::try_from("1:*").expect("a valid set");
        let vanished = self.vanished_in(known.unwrap_or(&all));
        if let Some(set) = sequence_set(&vanished) {
            untagged(
                Data::Vanished {
                    earlier: true,
                    known_uids: set,
                },
                out,
            );
        }
        let highest = self.addr.send(GetState).await??.highestmodseq;
        let since = ModSeq(since);
        let ours = since.tag() == highest.tag() && since <= highest;
        let tell = |message: Head<'_>, out: &mut Vec<u8>| self.tell_flags(message, true, out);
        if ours {
            let mut from = since;
            loop {
                let changed = self
                    .addr
                    .send(ChangedSince {
                        since: from,
                        limit: CHANGES_CHUNK,
                    })
                    .await??;
                for stored in &changed {
                    from = from.max(stored.modseq);
                    if !stored.hidden && !stored.record.is_expunged() {
                        tell(Head::of(&MessageView::of(stored)), out);
                    }
                }
                if changed.len() < CHANGES_CHUNK {
                    break;
                }
            }
        } else {
            // Every message's flags, from the uid index alone.
            for chunk in self.map.uids().chunks(FLAGS_CHUNK) {
                let messages = self
                    .addr
                    .send(FetchFlags {
                        uids: actor_uids(chunk),
                    })
                    .await??;
                for message in &messages {
                    tell(Head::from_index(message), out);
                }
            }
        }
        self.flags_told = self.flags_told.max(highest);
        Ok(())
    }

    /// A flag change this session's command made and answered (see `own_flags`).
    fn answered_flags(&mut self, view: &MessageView) {
        self.own_flags.insert(view.uid.0, view.modseq);
    }

    fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<u32>, Outcome> {
        self.map
            .resolve(set, uid)
            .map_err(|e| Outcome::bad(e.to_string()))
    }

    fn writable(&self) -> Result<(), Outcome> {
        if self.read_only {
            Err(
                Outcome::no(format!("{} is selected read-only (EXAMINE)", self.name))
                    .with_code(Code::ReadOnly),
            )
        } else {
            Ok(())
        }
    }
}

/// Which part of a message a body item sends.
#[derive(Clone, Debug)]
enum Part {
    /// `BODY[]`, `RFC822`.
    Whole,
    Header,
    Text,
    HeaderFields {
        names: Vec<Vec<u8>>,
        not: bool,
    },
    /// A numbered part (`1.2`, `2.HEADER`, `1.MIME`, `2.HEADER.FIELDS (...)`), found in the
    /// message's MIME structure ([`mime::part_bytes`]); `fields` picks header fields of it.
    Numbered {
        path: Vec<NonZeroU32>,
        section: mime::PartSection,
        fields: Option<(Vec<Vec<u8>>, bool)>,
    },
    /// `BINARY[path]`, `BINARY.SIZE[path]` (RFC 3516): the part with its
    /// content-transfer-encoding undone ([`mime::binary_part`]); no path: the whole message.
    Binary {
        path: Vec<NonZeroU32>,
    },
}

#[derive(Clone, Debug)]
enum BodyReply {
    /// `BODY[section]<origin>`.
    Body {
        section: Option<Section<'static>>,
        partial: Option<(u32, NonZeroU32)>,
    },
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    /// `BINARY[section]` (a partial counts decoded bytes; the answer has no origin, RFC 3516's
    /// grammar has none).
    Binary {
        section: Vec<NonZeroU32>,
        partial: Option<(u32, NonZeroU32)>,
    },
    /// `BINARY.SIZE[section]`: the decoded size.
    BinarySize {
        section: Vec<NonZeroU32>,
    },
}

#[derive(Clone, Debug)]
struct BodyItem {
    part: Part,
    reply: BodyReply,
}

/// What a FETCH asks for, checked before any of it is answered.
#[derive(Default)]
struct FetchPlan {
    uid: bool,
    flags: bool,
    internaldate: bool,
    size: bool,
    modseq: bool,
    bodies: Vec<BodyItem>,
    /// A body item without PEEK: the messages get \Seen (RFC 3501 6.4.5).
    sets_seen: bool,
    changed_since: Option<u64>,
    envelope: bool,
    /// UID FETCH ... (CHANGEDSINCE n VANISHED): the uids of the set gone come first.
    vanished: bool,
    /// BODY (false) or BODYSTRUCTURE (true, with extension data).
    structures: Vec<bool>,
}

impl FetchPlan {
    /// Whether the message's bytes are read (bodies, or the MIME structure).
    fn reads_body(&self) -> bool {
        !self.bodies.is_empty() || self.parses()
    }

    /// Whether every item asked is one the uid index holds (UID, FLAGS, MODSEQ): then no
    /// record is decoded ([`FetchFlags`]).
    fn answered_by_index(&self, object_ids: ObjectIds) -> bool {
        !self.internaldate && !self.size && !self.reads_body() && !object_ids.email_id
    }

    /// Whether the message is parsed for its MIME structure.
    fn parses(&self) -> bool {
        self.envelope
            || !self.structures.is_empty()
            || self.bodies.iter().any(|b| match &b.part {
                Part::Numbered { .. } => true,
                Part::Binary { path } => !path.is_empty(),
                _ => false,
            })
    }
}

fn plan(
    names: MacroOrMessageDataItemNames<'static>,
    uid: bool,
    modifiers: Vec<FetchModifier>,
    qresync: bool,
) -> Result<FetchPlan, Outcome> {
    let names = match names {
        MacroOrMessageDataItemNames::Macro(Macro::Fast) => vec![
            MessageDataItemName::Flags,
            MessageDataItemName::InternalDate,
            MessageDataItemName::Rfc822Size,
        ],
        MacroOrMessageDataItemNames::Macro(m) => {
            m.expand().into_iter().map(IntoStatic::into_static).collect()
        }
        MacroOrMessageDataItemNames::MessageDataItemNames(names) => names,
    };
    let mut plan = FetchPlan {
        // RFC 3501 6.4.8: a UID FETCH answers with UID whether or not it was asked.
        uid,
        ..FetchPlan::default()
    };
    for modifier in modifiers {
        match modifier {
            FetchModifier::ChangedSince(since) => {
                plan.changed_since = Some(since.get());
                // RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ.
                plan.modseq = true;
            }
            FetchModifier::Vanished if !qresync => {
                return Err(Outcome::bad("VANISHED needs QRESYNC: ENABLE QRESYNC first"))
            }
            FetchModifier::Vanished => plan.vanished = true,
        }
    }
    // RFC 7162 3.2.6: VANISHED only in a UID FETCH, with CHANGEDSINCE.
    if plan.vanished && !(uid && plan.changed_since.is_some()) {
        return Err(Outcome::bad("VANISHED goes with UID FETCH and CHANGEDSINCE"));
    }
    for name in names {
        match name {
            MessageDataItemName::Uid => plan.uid = true,
            MessageDataItemName::Flags => plan.flags = true,
            MessageDataItemName::InternalDate => plan.internaldate = true,
            MessageDataItemName::Rfc822Size => plan.size = true,
            MessageDataItemName::ModSeq => plan.modseq = true,
            MessageDataItemName::Rfc822 => {
                plan.sets_seen = true;
                plan.bodies.push(BodyItem {
                    part: Part::Whole,
                    reply: BodyReply::Rfc822,
                });
            }
            MessageDataItemName::Rfc822Header => plan.bodies.push(BodyItem {
                part: Part::Header,
                reply: BodyReply::Rfc822Header,
            }),
            MessageDataItemName::Rfc822Text => {
                plan.sets_seen = true;
                plan.bodies.push(BodyItem {
                    part: Part::Text,
                    reply: BodyReply::Rfc822Text,
                });
            }
            MessageDataItemName::BodyExt {
                section,
                partial,
                peek,
            } => {
                let part = match &section {
                    None => Part::Whole,
                    Some(Section::Header(None)) => Part::Header,
                    Some(Section::Text(None)) => Part::Text,
                    Some(Section::HeaderFields(None, names)) => Part::HeaderFields {
                        names: names.as_ref().iter().map(|n| n.as_ref().to_vec()).collect(),
                        not: false,
                    },
                    Some(Section::HeaderFieldsNot(None, names)) => Part::HeaderFields {
                        names: names.as_ref().iter().map(|n| n.as_ref().to_vec()).collect(),
                        not: true,
                    },
                    Some(numbered) => {
                        let names = |names: &Vec1<_>| -> Vec<Vec<u8>> {
                            names
                                .as_ref()
                                .iter()
                                .map(|n: &imap_codec::imap_types::core::AString<'_>| n.as_ref().to_vec())
                                .collect()
                        };
                        let (path, section, fields) = match numbered {
                            Section::Part(p) => (p, mime::PartSection::Body, None),
                            Section::Mime(p) => (p, mime::PartSection::Mime, None),
                            Section::Header(Some(p)) => (p, mime::PartSection::Header, None),
                            Section::Text(Some(p)) => (p, mime::PartSection::Text, None),
                            Section::HeaderFields(Some(p), n) => {
                                (p, mime::PartSection::Header, Some((names(n), false)))
                            }
                            Section::HeaderFieldsNot(Some(p), n) => {
                                (p, mime::PartSection::Header, Some((names(n), true)))
                            }
                            _ => unreachable!("the sections without a part number are matched above"),
                        };
                        Part::Numbered {
                            path: path.0.as_ref().to_vec(),
                            section,
                            fields,
                        }
                    }
                };
                plan.sets_seen |= !peek;
                plan.bodies.push(BodyItem {
                    part,
                    reply: BodyReply::Body { section, partial },
                });
            }
            MessageDataItemName::Envelope => plan.envelope = true,
            MessageDataItemName::Body => plan.structures.push(false),
            MessageDataItemName::BodyStructure => plan.structures.push(true),
            MessageDataItemName::Binary {
                section,
                partial,
                peek,
            } => {
                plan.sets_seen |= !peek;
                plan.bodies.push(BodyItem {
                    part: Part::Binary {
                        path: section.clone(),
                    },
                    reply: BodyReply::Binary { section, partial },
                });
            }
            MessageDataItemName::BinarySize { section } => plan.bodies.push(BodyItem {
                part: Part::Binary {
                    path: section.clone(),
                },
                reply: BodyReply::BinarySize { section },
            }),
        }
    }
    Ok(plan)
}

/// FETCH and UID FETCH.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch(
    conn: &mut Connection,
    selected: &mut Selected,
    set: &SequenceSet,
    names: MacroOrMessageDataItemNames<'static>,
    uid: bool,
    modifiers: Vec<FetchModifier>,
    object_ids: ObjectIds,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    let mut plan = match plan(names, uid, modifiers, selected.qresync) {
        Ok(plan) => plan,
        Err(refused) => return Ok(refused),
    };
    plan.sets_seen &= !selected.read_only;
    let uids = match selected.resolve(set, uid) {
        Ok(uids) => uids,
        Err(refused) => return Ok(refused),
    };
    if plan.vanished {
        if let Some(gone) = sequence_set(&selected.vanished_in(set)) {
            untagged(
                Data::Vanished {
                    earlier: true,
                    known_uids: gone,
                },
                out,
            );
        }
    }
    let done = Outcome::ok(if uid {
        "UID FETCH completed"
    } else {
        "FETCH completed"
    });
    if plan.answered_by_index(object_ids) {
        return fetch_from_index(conn, selected, &uids, &plan, object_ids, out)
            .await
            .map(|gone| gone.unwrap_or(done));
    }
    let seen = Flag::seen();
    for chunk in uids.chunks(FETCH_CHUNK) {
        let mut views = selected
            .addr
            .send(Fetch {
                uids: actor_uids(chunk),
            })
            .await??;
        if let Some(since) = plan.changed_since {
            views.retain(|v| v.modseq.0 > since);
        }
        // Messages whose flags this FETCH changed: their FLAGS go with the answer.
        let mut flagged: Vec<u32> = Vec::new();
        if plan.sets_seen && !plan.bodies.is_empty() {
            let unseen: Vec<Uid> = views
                .iter()
                .filter(|v| !v.flags.contains(&seen))
                .map(|v| v.uid)
                .collect();
            if !unseen.is_empty() {
                let stored = selected
                    .addr
                    .send(StoreFlags {
                        uids: UidSet::from_uids(unseen),
                        action: FlagAction::Add,
                        flags: vec![seen.to_string()],
                        unchanged_since: None,
                    })
                    .await?;
                match stored {
                    Ok(stored) => {
                        for update in stored.updated {
                            if let Some(view) = views.iter_mut().find(|v| v.uid == update.uid) {
                                flagged.push(update.uid.0);
                                selected.answered_flags(&update);
                                *view = update;
                            }
                        }
                    }
                    // \Seen is a side effect: where this node may not write the mailbox (not
                    // one of its locations) the bodies are still sent, unmarked.
                    Err(e @ (MailError::NotHeldHere { .. } | MailError::NotAllowed(_))) => {
                        warn!(mailbox = %selected.name, error = %e, "FETCH could not set \\Seen");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for view in views {
            let Some(seq) = selected.map.seq(view.uid.0) else {
                continue;
            };
            let body = if !plan.reads_body() {
                None
            } else {
                match selected.addr.send(FetchBody { uid: view.uid }).await? {
                    Ok(body) => Some(body),
                    // Expunged since the listing (by another session): nothing to send for it.
                    Err(MailError::NoSuchMessage(_)) => continue,
                    Err(e) => return Err(e),
                }
            };
            let items = match fetch_items(
                &plan,
                Head::of(&view),
                Some(&view),
                flagged.contains(&view.uid.0),
                selected.condstore,
                body.as_deref(),
            ) {
                Ok(items) => items,
                // RFC 3516 4.2: a part this server cannot decode fails the FETCH.
                Err(mime::UnknownCte(encoding)) => {
                    return Ok(Outcome::no(format!(
                        "message {seq} has a part in the content-transfer-encoding {encoding:?}, which this server cannot decode"
                    ))
                    .with_code(Code::UnknownCte))
                }
            };
            if let Ok(items) = Vec1::try_from(items) {
                untagged(
                    Data::Fetch {
                        seq: nonzero(seq),
                        items,
                    },
                    out,
                );
                object_ids.append(Some(&view.guid), out);
            }
            if out.len() >= FLUSH_AT && write(conn, out).await.is_err() {
                // The client is gone; the session ends at its next read.
                return Ok(Outcome::no("the connection failed during FETCH"));
            }
        }
    }
    Ok(done)
}

/// A FETCH of items the uid index holds (UID, FLAGS, MODSEQ; THREADID): the flags a chunk at a
/// time, no record decoded, the answer written each time it passes the flush size. `Some` is
/// the outcome to send when the client went away.
async fn fetch_from_index(
    conn: &mut Connection,
    selected: &Selected,
    uids: &[u32],
    plan: &FetchPlan,
    object_ids: ObjectIds,
    out: &mut Vec<u8>,
) -> Result<Option<Outcome>, MailError> {
    let mut numbering = selected.map.numbering();
    for chunk in uids.chunks(FLAGS_CHUNK) {
        let mut messages = selected
            .addr
            .send(FetchFlags {
                uids: actor_uids(chunk),
            })
            .await??;
        if let Some(since) = plan.changed_since {
            messages.retain(|m| m.modseq.0 > since);
        }
        for message in &messages {
            let Some(seq) = numbering.seq(message.uid.0) else {
                continue;
            };
            if encode_index_fetch(seq, plan, Head::from_index(message), out) {
                object_ids.append(None, out);
            }
            if out.len() >= FLUSH_AT && write(conn, out).await.is_err() {
                // The client is gone; the session ends at its next read.
                return Ok(Some(Outcome::no("the connection failed during FETCH")));
            }
        }
    }
    Ok(None)
}

/// Appends the FETCH response of one message for a plan the uid index answers (UID, FLAGS,
/// MODSEQ, in that order), byte for byte what imap-codec encodes for the same items
/// (`fetch_items`; a test compares them), written directly: encoding 100,000 of them through
/// imap-codec's general encoder took a third of a `UID FETCH 1:* (FLAGS)`. Answers whether
/// there was an item to send.
fn encode_index_fetch(seq: u32, plan: &FetchPlan, head: Head<'_>, out: &mut Vec<u8>) -> bool {
    let modseq = NonZeroU64::new(head.modseq.0).filter(|_| plan.modseq);
    if !plan.uid && !plan.flags && modseq.is_none() {
        return false;
    }
    out.extend_from_slice(b"* ");
    decimal(u64::from(seq), out);
    out.extend_from_slice(b" FETCH (");
    let mut first = true;
    let mut separate = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b' ');
        }
    };
    if plan.uid {
        separate(out);
        out.extend_from_slice(b"UID ");
        decimal(u64::from(head.uid), out);
    }
    if plan.flags {
        separate(out);
        out.extend_from_slice(b"FLAGS (");
        // The flags imap-codec takes (`flag_fetch`): every stored flag is one (`Flag::new`), and
        // a system flag (the only names with a `\`) is not parsed again for each message.
        let mut sent = head
            .flags
            .names()
            .filter(|name| name.starts_with('\\') || ImapFlag::try_from(*name).is_ok());
        if let Some(name) = sent.next() {
            out.extend_from_slice(name.as_bytes());
            for name in sent {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
            }
        }
        out.push(b')');
    }
    if let Some(modseq) = modseq {
        separate(out);
        out.extend_from_slice(b"MODSEQ (");
        decimal(modseq.get(), out);
        out.push(b')');
    }
    out.extend_from_slice(b")\r\n");
    true
}

/// Appends `n` in decimal: what `write!` does, without going through `fmt` for each of the
/// 100,000 numbers of a large FETCH or SEARCH answer (a fifth of its time).
fn decimal(mut n: u64, out: &mut Vec<u8>) {
    // The digits are written in place, last first, into room made for them: copying them in
    // from a scratch array was a call to memmove per number.
    let mut width = 1;
    let mut rest = n / 10;
    while rest > 0 {
        width += 1;
        rest /= 10;
    }
    let end = out.len() + width;
    out.resize(end, b'0');
    for digit in out[end - width..].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// What any FETCH answer may carry of a message, from its record or the uid index alone.
#[derive(Clone, Copy)]
struct Head<'a> {
    uid: u32,
    flags: HeadFlags<'a>,
    modseq: ModSeq,
}

impl<'a> Head<'a> {
    fn of(view: &'a MessageView) -> Self {
        Head {
            uid: view.uid.0,
            flags: HeadFlags::Listed(&view.flags),
            modseq: view.modseq,
        }
    }

    fn from_index(message: &'a MessageFlags) -> Self {
        Head {
            uid: message.uid.0,
            flags: HeadFlags::Indexed(&message.flags),
            modseq: message.modseq,
        }
    }
}

/// A message's flags as its source holds them: a record's list, or the uid index's bits and
/// keywords (written from as they are, no list made for each message).
#[derive(Clone, Copy)]
enum HeadFlags<'a> {
    Listed(&'a [Flag]),
    Indexed(&'a FlagSet),
}

impl<'a> HeadFlags<'a> {
    /// The names of the flags, sorted as a record lists them, either way.
    fn names(self) -> impl Iterator<Item = &'a str> {
        let (listed, indexed) = match self {
            HeadFlags::Listed(flags) => (flags, None),
            HeadFlags::Indexed(set) => (&[][..], Some(set)),
        };
        listed
            .iter()
            .map(Flag::as_str)
            .chain(indexed.into_iter().flat_map(FlagSet::names))
    }
}

/// RFC 8474's FETCH items, which imap-codec does not encode: EMAILID is [`email_id`], from the
/// message's content (so a COPY or MOVE, whose new record shares the body, keeps it), THREADID
/// is NIL (no threading).
#[derive(Clone, Copy, Debug, Default)]
pub struct ObjectIds {
    pub email_id: bool,
    pub thread_id: bool,
}

impl ObjectIds {
    /// Adds the items asked to the FETCH response just encoded at the end of `out`, before its
    /// closing `)` and CRLF. EMAILID needs the message's Guid (its record was read).
    fn append(self, guid: Option<&Guid>, out: &mut Vec<u8>) {
        if !self.email_id && !self.thread_id {
            return;
        }
        debug_assert!(out.ends_with(b")\r\n"));
        out.truncate(out.len() - 3);
        if let Some(guid) = guid.filter(|_| self.email_id) {
            out.extend_from_slice(format!(" EMAILID ({})", email_id(guid)).as_bytes());
        }
        if self.thread_id {
            out.extend_from_slice(b" THREADID NIL");
        }
        out.extend_from_slice(b")\r\n");
    }
}

/// A message's EMAILID (RFC 8474 5.1): `M` and the first 128 bits of its Guid (BLAKE3 of the
/// raw bytes) in hex. A COPY or MOVE makes a new record with a new AppendId but the same body,
/// so the id survives both, on every node, with nothing added to the replicated record. Its
/// cost: two appends of the same bytes share one EMAILID (they are the same immutable
/// content, which is what an EMAILID names). 128 bits: two different messages colliding is
/// out of reach. The `M` makes it start with a letter whatever the hash.
pub fn email_id(guid: &Guid) -> String {
    let mut id = format!("M{guid}");
    id.truncate(1 + 32);
    id
}

/// The items of one message's FETCH answer: `head` from the record or the uid index, `view`
/// (the record's other parts) when the plan asks for them.
fn fetch_items(
    plan: &FetchPlan,
    head: Head<'_>,
    view: Option<&MessageView>,
    flags_changed: bool,
    condstore: bool,
    body: Option<&[u8]>,
) -> Result<Vec<MessageDataItem<'static>>, mime::UnknownCte> {
    let mut items = Vec::new();
    // RFC 7162 3.1: with CONDSTORE on, a FETCH response that tells of a flag change carries
    // UID and MODSEQ.
    if plan.uid || flags_changed && condstore {
        items.push(MessageDataItem::Uid(nonzero(head.uid)));
    }
    if plan.flags || flags_changed {
        items.push(MessageDataItem::Flags(flag_fetch(head.flags.names())));
    }
    if let Some(view) = view {
        if plan.internaldate {
            items.push(MessageDataItem::InternalDate(internaldate(view.internaldate)));
        }
        if plan.size {
            items.push(MessageDataItem::Rfc822Size(
                u32::try_from(view.size).unwrap_or(u32::MAX),
            ));
        }
    }
    // RFC 7162 3.2: with CONDSTORE on, flags this FETCH changed (\Seen) go with their MODSEQ.
    if plan.modseq || flags_changed && (plan.changed_since.is_some() || condstore) {
        if let Some(modseq) = NonZeroU64::new(head.modseq.0) {
            items.push(MessageDataItem::ModSeq(modseq));
        }
    }
    if let Some(body) = body {
        let parsed = if plan.parses() { mime::parse(body) } else { None };
        if plan.envelope {
            if let Some(parsed) = &parsed {
                items.push(MessageDataItem::Envelope(mime::envelope(parsed)));
            }
        }
        for &extended in &plan.structures {
            if let Some(parsed) = &parsed {
                let structure = mime::structure(parsed, extended);
                items.push(if extended {
                    MessageDataItem::BodyStructure(structure)
                } else {
                    MessageDataItem::Body(structure)
                });
            }
        }
        for item in &plan.bodies {
            let fields;
            let numbered;
            let data: &[u8] = match &item.part {
                Part::Whole => body,
                Part::Header => message::header(body),
                Part::Text => message::text(body),
                Part::HeaderFields { names, not } => {
                    let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
                    fields = message::header_fields(body, &names, *not);
                    &fields
                }
                Part::Numbered {
                    path,
                    section,
                    fields: picked,
                } => {
                    // RFC 3501 6.4.5: a part that does not exist is sent empty.
                    let bytes = parsed
                        .as_ref()
                        .and_then(|p| mime::part_bytes(p, path, section))
                        .unwrap_or_default();
                    numbered = match picked {
                        Some((names, not)) => {
                            let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
                            message::header_fields(&bytes, &names, *not).to_vec()
                        }
                        None => bytes,
                    };
                    &numbered
                }
                Part::Binary { path } if path.is_empty() => body,
                Part::Binary { path } => {
                    // A part that does not exist is sent empty, as for BODY.
                    numbered = match &parsed {
                        Some(p) => mime::binary_part(p, path)?.unwrap_or_default(),
                        None => Vec::new(),
                    };
                    &numbered
                }
            };
            items.push(match &item.reply {
                BodyReply::Body { section, partial } => {
                    let (data, origin) = match partial {
                        Some((origin, count)) => {
                            (message::partial(data, *origin, count.get()), Some(*origin))
                        }
                        None => (data, None),
                    };
                    MessageDataItem::BodyExt {
                        section: section.clone(),
                        origin,
                        data: nstring(data),
                    }
                }
                BodyReply::Rfc822 => MessageDataItem::Rfc822(nstring(data)),
                BodyReply::Rfc822Header => MessageDataItem::Rfc822Header(nstring(data)),
                BodyReply::Rfc822Text => MessageDataItem::Rfc822Text(nstring(data)),
                BodyReply::Binary { section, partial } => {
                    let data = match partial {
                        Some((origin, count)) => message::partial(data, *origin, count.get()),
                        None => data,
                    };
                    MessageDataItem::Binary {
                        section: section.clone(),
                        value: nstring8(data),
                    }
                }
                BodyReply::BinarySize { section } => MessageDataItem::BinarySize {
                    section: section.clone(),
                    size: u32::try_from(data.len()).unwrap_or(u32::MAX),
                },
            });
        }
    }
    Ok(items)
}

/// Decoded bytes for BINARY: a literal, or a `~{n}` literal8 when they hold a NUL (RFC 3516
/// 4.3), which a plain literal cannot carry.
fn nstring8(data: &[u8]) -> NString8<'static> {
    if data.contains(&0) {
        NString8::Literal8(Literal8 {
            data: std::borrow::Cow::Owned(data.to_vec()),
            mode: LiteralMode::Sync,
        })
    } else {
        NString8::NString(nstring(data))
    }
}

/// Bytes as a literal (a literal carries any byte but NUL; see [`message::without_nul`]).
fn nstring(data: &[u8]) -> NString<'static> {
    let data = message::without_nul(data).into_owned();
    NString(Some(IString::Literal(Literal::unvalidated(data))))
}

fn flag_fetch<'a>(names: impl Iterator<Item = &'a str>) -> Vec<FlagFetch<'static>> {
    names
        .filter_map(|name| ImapFlag::try_from(name).ok().map(IntoStatic::into_static))
        .map(FlagFetch::Flag)
        .collect()
}

/// Seconds since the epoch as an IMAP date-time, in UTC.
fn internaldate(seconds: i64) -> DateTime {
    let utc = chrono::FixedOffset::east_opt(0).expect("UTC is a valid offset");
    let at = chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .with_timezone(&utc);
    DateTime::try_from(at).unwrap_or_else(|_| {
        DateTime::try_from(chrono::DateTime::<chrono::Utc>::default().with_timezone(&utc))
            .expect("the epoch is a valid IMAP date-time")
    })
}

/// STORE and UID STORE.
#[allow(clippy::too_many_arguments)]
pub(super) async fn store(
    conn: &mut Connection,
    selected: &mut Selected,
    set: &SequenceSet,
    kind: StoreType,
    response: StoreResponse,
    flags: &[ImapFlag<'static>],
    uid: bool,
    modifiers: &[StoreModifier],
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    if let Err(refused) = selected.writable() {
        return Ok(refused);
    }
    let uids = match selected.resolve(set, uid) {
        Ok(uids) => uids,
        Err(refused) => return Ok(refused),
    };
    let unchanged_since = modifiers.last().map(|m| match m {
        StoreModifier::UnchangedSince(since) => ModSeq(*since),
    });
    let action = match kind {
        StoreType::Add => FlagAction::Add,
        StoreType::Remove => FlagAction::Remove,
        StoreType::Replace => FlagAction::Replace,
    };
    let done = if uid {
        "UID STORE completed"
    } else {
        "STORE completed"
    };
    if uids.is_empty() {
        return Ok(Outcome::ok(done));
    }
    let flags: Vec<String> = flags.iter().map(ToString::to_string).collect();
    let mut modified: Vec<u32> = Vec::new();
    // In chunks, like FETCH: the answers of a STORE over a whole large mailbox are written as
    // they come instead of gathered. A flag the store refuses is refused in the first chunk,
    // before anything is written.
    for chunk in uids.chunks(STORE_CHUNK) {
        let stored = selected
            .addr
            .send(StoreFlags {
                uids: actor_uids(chunk),
                action,
                flags: flags.clone(),
                unchanged_since,
            })
            .await??;
        for view in &stored.updated {
            // Told with this answer, or not at all (.SILENT): the refresh leaves them out.
            selected.answered_flags(view);
        }
        // RFC 7162 3.1.3 and 3.2: with CONDSTORE on, every message changed is answered with its
        // MODSEQ, even with .SILENT (which then leaves out only FLAGS).
        let with_modseq = unchanged_since.is_some() || selected.condstore;
        if response == StoreResponse::Answer || with_modseq {
            for view in &stored.updated {
                let Some(seq) = selected.map.seq(view.uid.0) else {
                    continue;
                };
                let mut items = Vec::new();
                if response == StoreResponse::Answer {
                    items.push(MessageDataItem::Flags(flag_fetch(
                        view.flags.iter().map(Flag::as_str),
                    )));
                }
                if uid || selected.condstore {
                    items.push(MessageDataItem::Uid(nonzero(view.uid.0)));
                }
                if with_modseq {
                    if let Some(modseq) = NonZeroU64::new(view.modseq.0) {
                        items.push(MessageDataItem::ModSeq(modseq));
                    }
                }
                if let Ok(items) = Vec1::try_from(items) {
                    untagged(
                        Data::Fetch {
                            seq: nonzero(seq),
                            items,
                        },
                        out,
                    );
                }
            }
        }
        // RFC 7162 3.1.3: the messages left alone, by uid for UID STORE, else by number.
        modified.extend((stored.modified.iter()).filter_map(|u| {
            if uid {
                Some(u.0)
            } else {
                selected.map.seq(u.0)
            }
        }));
        if out.len() >= FLUSH_AT && write(conn, out).await.is_err() {
            return Ok(Outcome::no("the connection failed during STORE"));
        }
    }
    match sequence_set(&modified) {
        Some(set) => {
            Ok(Outcome::ok("conditional STORE failed for some messages").with_code(Code::Modified(set)))
        }
        None => Ok(Outcome::ok(done)),
    }
}

/// EXPUNGE (`uids` None) and UID EXPUNGE: the messages go, each announced by its number.
pub(super) async fn expunge(
    selected: &mut Selected,
    set: Option<&SequenceSet>,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    if let Err(refused) = selected.writable() {
        return Ok(refused);
    }
    let mode = match set {
        None => ExpungeMode::Deleted,
        Some(set) => match selected.resolve(set, true) {
            Ok(uids) if uids.is_empty() => return Ok(Outcome::ok("UID EXPUNGE completed")),
            Ok(uids) => ExpungeMode::DeletedIn(UidSet::from_uids(uids.into_iter().map(Uid))),
            Err(refused) => return Ok(refused),
        },
    };
    let gone: Vec<u32> = selected
        .addr
        .send(Expunge { mode })
        .await??
        .into_iter()
        .map(|u| u.0)
        .collect();
    selected.forget(&gone, out);
    Ok(Outcome::ok(if set.is_some() {
        "UID EXPUNGE completed"
    } else {
        "EXPUNGE completed"
    }))
}

/// CLOSE's expunge: the \Deleted messages go, with no untagged response (RFC 3501 6.4.2).
pub(super) async fn expunge_silently(selected: &Selected) -> Result<(), MailError> {
    if selected.read_only {
        return Ok(());
    }
    selected
        .addr
        .send(Expunge {
            mode: ExpungeMode::Deleted,
        })
        .await??;
    Ok(())
}

/// A mailbox named as the target of APPEND, COPY or MOVE: `[TRYCREATE]` when it does not exist
/// (RFC 3501 6.3.11), so the client may create it and try again.
async fn target(
    ctx: &ImapContext,
    user: &str,
    mailbox: &ImapMailbox<'_>,
) -> Result<Result<mailmesh_actors::directory::OpenedMailbox, Outcome>, MailError> {
    let name = super::session::mailbox_name(mailbox)?;
    match open_mailbox(ctx, user, &name).await {
        Ok(opened) => Ok(Ok(opened)),
        Err(MailError::UnknownMailbox { .. }) => Ok(Err(Outcome::no(format!(
            "{name} does not exist; create it first"
        ))
        .with_code(Code::TryCreate))),
        Err(e) => Err(e),
    }
}

/// APPEND: the message is stored whole or not at all; `[APPENDUID]` says where (RFC 4315).
pub(super) async fn append(
    ctx: &ImapContext,
    user: &str,
    mailbox: &ImapMailbox<'_>,
    flags: &[ImapFlag<'static>],
    date: Option<&DateTime>,
    message: LiteralOrLiteral8<'static>,
) -> Result<Outcome, MailError> {
    let opened = match target(ctx, user, mailbox).await? {
        Ok(opened) => opened,
        Err(refused) => return Ok(refused),
    };
    let body = match message {
        LiteralOrLiteral8::Literal(literal) => literal.data().to_vec(),
        LiteralOrLiteral8::Literal8(literal) => literal.data.into_owned(),
    };
    let appended = opened
        .addr
        .send(Append {
            body,
            flags: flags.iter().map(ToString::to_string).collect(),
            internaldate: date.map(|d| d.as_ref().timestamp()),
        })
        .await??;
    let outcome = Outcome::ok("APPEND completed");
    Ok(match NonZeroU32::new(appended.uidvalidity.0) {
        Some(uid_validity) => outcome.with_code(Code::AppendUid {
            uid_validity,
            uid: nonzero(appended.uid.0),
        }),
        None => outcome,
    })
}

/// COPY and MOVE (and their UID forms), through the actor's `Transfer`: `[COPYUID]` pairs each
/// source uid with its copy's (RFC 4315); a MOVE announces it untagged before the EXPUNGEs
/// (RFC 6851 3.3).
#[allow(clippy::too_many_arguments)]
pub(super) async fn transfer(
    ctx: &ImapContext,
    user: &str,
    selected: &mut Selected,
    set: &SequenceSet,
    mailbox: &ImapMailbox<'_>,
    uid: bool,
    remove_source: bool,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    let command = match (uid, remove_source) {
        (false, false) => "COPY",
        (true, false) => "UID COPY",
        (false, true) => "MOVE",
        (true, true) => "UID MOVE",
    };
    if remove_source {
        if let Err(refused) = selected.writable() {
            return Ok(refused);
        }
    }
    let uids = match selected.resolve(set, uid) {
        Ok(uids) => uids,
        Err(refused) => return Ok(refused),
    };
    let opened = match target(ctx, user, mailbox).await? {
        Ok(opened) => opened,
        Err(refused) => return Ok(refused),
    };
    let done = format!("{command} completed");
    if uids.is_empty() {
        return Ok(Outcome::ok(done));
    }
    let pairs = selected
        .addr
        .send(Transfer {
            uids: UidSet::from_uids(uids.into_iter().map(Uid)),
            target_id: opened.info.id,
            target: opened.addr,
            remove_source,
        })
        .await??;
    let from: Vec<u32> = pairs.iter().map(|p| p.from.0).collect();
    let to: Vec<u32> = pairs.iter().map(|p| p.to.0).collect();
    let copyuid = match (
        NonZeroU32::new(opened.info.uidvalidity.0),
        uid_set(&from),
        uid_set(&to),
    ) {
        (Some(uid_validity), Some(source), Some(destination)) => Some(Code::CopyUid {
            uid_validity,
            source,
            destination,
        }),
        _ => None,
    };
    if !remove_source {
        return Ok(match copyuid {
            Some(code) => Outcome::ok(done).with_code(code),
            None => Outcome::ok(done),
        });
    }
    if let Some(code) = copyuid {
        encode(
            &status(None, StatusKind::Ok, Some(code), "moved".to_string()),
            out,
        );
    }
    selected.forget(&from, out);
    Ok(Outcome::ok(done))
}

/// Ascending uids as runs (`1:3,7`); `None` when empty.
fn uid_set(uids: &[u32]) -> Option<ImapUidSet> {
    let elements: Vec<UidElement> = runs(uids)
        .into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                UidElement::Single(nonzero(lo))
            } else {
                UidElement::Range(nonzero(lo), nonzero(hi))
            }
        })
        .collect();
    Vec1::try_from(elements).ok().map(ImapUidSet)
}

fn sequence_set(numbers: &[u32]) -> Option<SequenceSet> {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let sequences: Vec<Sequence> = runs(&sorted)
        .into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                Sequence::Single(SeqOrUid::Value(nonzero(lo)))
            } else {
                Sequence::Range(SeqOrUid::Value(nonzero(lo)), SeqOrUid::Value(nonzero(hi)))
            }
        })
        .collect();
    Vec1::try_from(sequences).ok().map(SequenceSet)
}

/// Consecutive numbers grouped, in the order given (COPYUID's two lists must pair up).
fn runs(numbers: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in numbers {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(n) => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// A sequence number or uid (never 0 here: both start at 1).
fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or_else(|| {
        warn!("a zero sequence number or uid reached a response; sent as 1");
        NonZeroU32::MIN
    })
}

/// SEARCH and UID SEARCH: the session's messages walked in chunks of their flags from the uid
/// index when the keys need no more, else of views, a message's bytes read (one at a time) only
/// when a key needs them.
pub(super) async fn search(
    conn: &mut Connection,
    selected: &Selected,
    charset: Option<&str>,
    criteria: Vec1<SearchKey<'static>>,
    uid: bool,
    esearch: Option<(&str, SearchReturn)>,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    if let Some(charset) = charset {
        if !search::charset_supported(charset) {
            let allowed = search::CHARSETS
                .iter()
                .filter_map(|c| Charset::try_from(*c).ok())
                .collect();
            return Ok(Outcome::no(format!("charset {charset} is not supported"))
                .with_code(Code::BadCharset { allowed }));
        }
    }
    // Keys side by side are ANDed (RFC 3501 6.4.4).
    let key = match criteria.as_ref() {
        [one] => one.clone(),
        _ => SearchKey::And(criteria),
    };
    if !search::supported(&key) {
        return Ok(Outcome::bad("a search key this server does not support"));
    }
    let bounds = search::Bounds {
        exists: selected.map.len(),
        last_uid: selected.map.last_uid(),
    };
    let found = if search::needs_record(&key) {
        match search_records(conn, selected, &key, uid, bounds, out).await? {
            Ok(found) => found,
            Err(gone) => return Ok(gone),
        }
    } else {
        search_flags(selected, &key, uid, bounds).await?
    };
    let with_modseq = search::has_modseq(&key);
    if let Some((tag, returns)) = esearch {
        // RFC 4731: the answer names the command's tag and only what RETURN asked.
        out.extend_from_slice(&esearch::answer(tag, uid, returns, &found, with_modseq));
    } else {
        // RFC 7162 3.1.5: with a MODSEQ key, the highest modseq of the messages found.
        let modseq = if with_modseq {
            NonZeroU64::new(found.iter().map(|f| f.modseq).max().unwrap_or(0))
        } else {
            None
        };
        search_answer(&found, modseq, out);
    }
    Ok(Outcome::ok(if uid {
        "UID SEARCH completed"
    } else {
        "SEARCH completed"
    }))
}

/// Appends the `* SEARCH` answer of the messages `found` (numbers or uids), with RFC 7162's
/// `(MODSEQ n)` when given: byte for byte what imap-codec encodes for `Data::Search` (a test
/// compares them), written directly, since 90,000 numbers through its general encoder took a
/// fifth of a `UID SEARCH UNSEEN`.
fn search_answer(found: &[Found], modseq: Option<NonZeroU64>, out: &mut Vec<u8>) {
    // A space and up to 10 digits a message: room made once, not as the answer grows.
    out.reserve(found.len() * 11 + 40);
    out.extend_from_slice(b"* SEARCH");
    for f in found {
        out.push(b' ');
        decimal(u64::from(nonzero(f.number).get()), out);
    }
    if let Some(modseq) = modseq {
        out.extend_from_slice(b" (MODSEQ ");
        decimal(modseq.get(), out);
        out.push(b')');
    }
    out.extend_from_slice(b"\r\n");
}

/// A SEARCH whose keys need only uids, flags, sequence numbers and modseqs: the uid index
/// alone, no record decoded.
async fn search_flags(
    selected: &Selected,
    key: &SearchKey<'static>,
    uid: bool,
    bounds: search::Bounds,
) -> Result<Vec<Found>, MailError> {
    let mut found = Vec::new();
    let mut numbering = selected.map.numbering();
    for chunk in selected.map.uids().chunks(FLAGS_CHUNK) {
        let messages = selected
            .addr
            .send(FetchFlags {
                uids: actor_uids(chunk),
            })
            .await??;
        for message in &messages {
            let Some(seq) = numbering.seq(message.uid.0) else {
                continue;
            };
            let candidate = search::Candidate {
                seq,
                uid: message.uid.0,
                modseq: message.modseq.0,
                flags: &message.flags,
                view: None,
                parsed: None,
            };
            if search::matches(key, &candidate, bounds) {
                found.push(Found {
                    number: if uid { message.uid.0 } else { seq },
                    modseq: message.modseq.0,
                });
            }
        }
    }
    Ok(found)
}

/// A SEARCH with keys of the records (size, dates) or the messages' bytes: views a chunk at a
/// time, a message's bytes (one at a time) only when a key needs them. `Err` is the outcome to
/// send when the client went away.
async fn search_records(
    conn: &mut Connection,
    selected: &Selected,
    key: &SearchKey<'static>,
    uid: bool,
    bounds: search::Bounds,
    out: &mut Vec<u8>,
) -> Result<Result<Vec<Found>, Outcome>, MailError> {
    let needs_body = search::needs_body(key);
    let mut found = Vec::new();
    for chunk in selected.map.uids().chunks(FETCH_CHUNK) {
        let views = selected
            .addr
            .send(Fetch {
                uids: actor_uids(chunk),
            })
            .await??;
        for view in &views {
            let Some(seq) = selected.map.seq(view.uid.0) else {
                continue;
            };
            let body = if needs_body {
                match selected.addr.send(FetchBody { uid: view.uid }).await? {
                    Ok(body) => Some(body),
                    // Expunged since the listing: it matches nothing.
                    Err(MailError::NoSuchMessage(_)) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            let parsed = body.as_deref().and_then(search::parse);
            // The record's list as bits and keywords, as the uid index gives them.
            let flags: FlagSet = view.flags.iter().cloned().collect();
            let candidate = search::Candidate {
                seq,
                uid: view.uid.0,
                modseq: view.modseq.0,
                flags: &flags,
                view: Some(view),
                parsed: parsed.as_ref(),
            };
            if search::matches(key, &candidate, bounds) {
                found.push(Found {
                    number: if uid { view.uid.0 } else { seq },
                    modseq: view.modseq.0,
                });
            }
        }
        if out.len() >= FLUSH_AT && write(conn, out).await.is_err() {
            return Ok(Err(Outcome::no("the connection failed during SEARCH")));
        }
    }
    Ok(Ok(found))
}

/// The uids of a chunk of the session's map (ascending), as the actor takes them: its runs.
fn actor_uids(uids: &[u32]) -> UidSet {
    UidSet::from_ascending(uids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_id_is_m_and_the_first_half_of_the_guid_in_hex() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(email_id(&Guid(bytes)), "M000102030405060708090a0b0c0d0e0f");
    }

    #[test]
    fn runs_keep_the_order_given() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 7), (9, 10)]);
        assert_eq!(runs(&[]), vec![]);
    }

    /// The direct encoding of index-answered FETCH responses is imap-codec's, byte for byte.
    #[test]
    fn index_fetch_responses_are_what_imap_codec_encodes() {
        let flag_sets: Vec<Vec<Flag>> = vec![
            vec![],
            vec![Flag::seen()],
            [
                "$Junk",
                "\\Answered",
                "\\Draft",
                "\\Flagged",
                "\\Seen",
                "Zeta",
                "lower",
            ]
            .iter()
            .map(|f| Flag::new(f).unwrap())
            .collect(),
            ["[x", "\\Deleted", "_y", "~z"]
                .iter()
                .map(|f| Flag::new(f).unwrap())
                .collect(),
        ];
        // Each as a record lists it and as the uid index holds it.
        let sets: Vec<FlagSet> = flag_sets.iter().map(|f| f.iter().cloned().collect()).collect();
        let heads = flag_sets
            .iter()
            .map(|f| HeadFlags::Listed(f))
            .chain(sets.iter().map(HeadFlags::Indexed));
        for flags in heads {
            for (uid, with_flags, modseq) in [
                (true, true, false),
                (false, true, false),
                (true, true, true),
                (true, false, true),
                (false, false, true),
                (true, false, false),
                (false, false, false),
            ] {
                let plan = FetchPlan {
                    uid,
                    flags: with_flags,
                    modseq,
                    ..FetchPlan::default()
                };
                for stored_modseq in [0, 1, 7_130_316_800_000_095_767] {
                    let head = Head {
                        uid: 4_000_000_000,
                        flags,
                        modseq: ModSeq(stored_modseq),
                    };
                    let mut direct = Vec::new();
                    let sent = encode_index_fetch(123_456, &plan, head, &mut direct);
                    let mut codec = Vec::new();
                    let items =
                        fetch_items(&plan, head, None, false, false, None).expect("no BINARY item asked");
                    if let Ok(items) = Vec1::try_from(items) {
                        untagged(
                            Data::Fetch {
                                seq: nonzero(123_456),
                                items,
                            },
                            &mut codec,
                        );
                    }
                    assert_eq!(sent, !codec.is_empty());
                    assert_eq!(
                        String::from_utf8_lossy(&direct),
                        String::from_utf8_lossy(&codec),
                        "uid {uid}, flags {with_flags}, modseq {modseq} ({stored_modseq}), {:?}",
                        flags.names().collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    #[test]
    fn search_answers_are_what_imap_codec_encodes() {
        let found = |numbers: &[u32]| -> Vec<Found> {
            numbers
                .iter()
                .map(|&number| Found { number, modseq: 5 })
                .collect()
        };
        for numbers in [&[][..], &[1], &[1, 9, 10, 99, 4_000_000_000]] {
            for modseq in [
                None,
                NonZeroU64::new(1),
                NonZeroU64::new(7_130_316_800_000_095_767),
            ] {
                let mut direct = Vec::new();
                search_answer(&found(numbers), modseq, &mut direct);
                let mut codec = Vec::new();
                let numbers = numbers.iter().map(|&n| nonzero(n)).collect();
                untagged(Data::Search(numbers, modseq), &mut codec);
                assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&codec));
            }
        }
    }

    #[test]
    fn decimals_are_what_display_writes() {
        // Every width from 1 to 20 digits, at both of its ends and in between, written after
        // what `out` held.
        let mut numbers = vec![0, 1, 9, 10, 99, 100, 4_294_967_295, 4_294_967_296, u64::MAX];
        let mut power: u64 = 1;
        for _ in 0..19 {
            power *= 10;
            numbers.extend([power - 1, power, power + 1, power + power / 2 + 7]);
        }
        numbers.extend((0..1000).chain([12_345, 67_890, 100_001]));
        let widths: std::collections::BTreeSet<usize> = numbers.iter().map(|n| n.to_string().len()).collect();
        assert_eq!(widths, (1..=20).collect());
        for n in numbers {
            let mut out = b"* SEARCH ".to_vec();
            decimal(n, &mut out);
            assert_eq!(out, format!("* SEARCH {n}").into_bytes());
        }
    }

    #[test]
    fn internaldate_is_utc() {
        let date = internaldate(0);
        assert_eq!(date.as_ref().timestamp(), 0);
        assert_eq!(internaldate(1_700_000_000).as_ref().timestamp(), 1_700_000_000);
    }
}
