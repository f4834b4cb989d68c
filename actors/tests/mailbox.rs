//! The Mailbox actor on real storage: appends, flags, expunge, copy and move, annotations,
//! state and changes since a modseq.

mod common;

use common::*;
use mailmesh_actors::commit_group::GetCommitStats;
use mailmesh_actors::mailbox::*;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::{ModSeq, Uid};

#[test]
fn appends_get_increasing_uids_and_bodies_come_back() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let a = append(&mb, &message(1), &[]).await;
        let b = append(&mb, &message(2), &["\\Seen"]).await;
        assert_eq!((a.uid, b.uid), (Uid(1), Uid(2)));
        assert!(b.modseq > a.modseq);
        assert_ne!(a.append_id, b.append_id);
        let state = mb.send(GetState).await.unwrap().unwrap();
        assert_eq!(state.uidnext, Uid(3));
        assert_eq!((state.exists, state.unseen), (2, 1));
        assert_eq!(state.highestmodseq, b.modseq);
        let body = mb.send(FetchBody { uid: Uid(2) }).await.unwrap().unwrap();
        assert_eq!(body, message(2).into_bytes());
        let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(views[1].flags.len(), 1);
        assert_eq!(views[1].flags[0].as_str(), "\\Seen");
        assert_eq!(views[0].internaldate, 1_600_000_000);
    });
}

#[test]
fn appends_that_arrive_together_share_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let before = node.commit.send(GetCommitStats).await.unwrap();
        let futures: Vec<_> = (0..100)
            .map(|i| {
                mb.send(Append {
                    body: message(i).into_bytes(),
                    flags: vec![],
                    internaldate: None,
                })
            })
            .collect();
        let mut uids: Vec<u32> = Vec::new();
        for f in futures {
            uids.push(f.await.unwrap().unwrap().uid.0);
        }
        uids.sort();
        assert_eq!(uids, (1..=100).collect::<Vec<_>>());
        let after = node.commit.send(GetCommitStats).await.unwrap();
        assert_eq!(after.batches - before.batches, 100);
        assert!(
            after.groups - before.groups <= 5,
            "100 appends took {} commits",
            after.groups - before.groups
        );
    });
}

#[test]
fn flags_add_remove_replace_and_unchanged_since() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        for i in 0..3 {
            append(&mb, &message(i), &[]).await;
        }
        let store = |action, flags: &[&str], uids| StoreFlags {
            uids,
            action,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            unchanged_since: None,
        };
        let out = mb
            .send(store(FlagAction::Add, &["\\Seen", "$Work"], UidSet::all()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.updated.len(), 3);
        let out = mb
            .send(store(FlagAction::Remove, &["$Work"], UidSet::single(Uid(2))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            out.updated[0]
                .flags
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>(),
            vec!["\\Seen"]
        );
        let out = mb
            .send(store(FlagAction::Replace, &["\\Flagged"], UidSet::single(Uid(3))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            out.updated[0]
                .flags
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>(),
            vec!["\\Flagged"]
        );
        let state = mb.send(GetState).await.unwrap().unwrap();
        assert_eq!(state.unseen, 1, "uid 3 lost \\Seen by the replace");

        // CONDSTORE: uid 1 has not changed since its last modseq, uid 3 has.
        let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        let since = views[0].modseq;
        let out = mb
            .send(StoreFlags {
                uids: UidSet::from_uids([Uid(1), Uid(3)]),
                action: FlagAction::Add,
                flags: vec!["$Later".into()],
                unchanged_since: Some(since),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.modified, vec![Uid(3)]);
        assert_eq!(out.updated.len(), 1);

        let bad = mb
            .send(store(FlagAction::Add, &["not an atom"], UidSet::all()))
            .await
            .unwrap();
        assert!(matches!(bad, Err(MailError::InvalidName(_))), "{bad:?}");
        let recent = mb
            .send(store(FlagAction::Add, &["\\Recent"], UidSet::all()))
            .await
            .unwrap();
        assert!(recent.is_err());
    });
}

#[test]
fn expunge_is_sticky_and_reported_in_changes() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        for i in 0..4 {
            append(&mb, &message(i), if i % 2 == 0 { &["\\Deleted"] } else { &[] }).await;
        }
        let start = mb.send(GetState).await.unwrap().unwrap().highestmodseq;
        let gone = mb
            .send(Expunge {
                mode: ExpungeMode::Deleted,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gone, vec![Uid(1), Uid(3)]);
        // An IMAP session's sequence map: the visible uids only, in order.
        let listed = mb.send(ListUids).await.unwrap().unwrap();
        assert_eq!(listed, vec![Uid(2), Uid(4)]);
        let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        assert_eq!(
            views.iter().map(|v| v.uid).collect::<Vec<_>>(),
            vec![Uid(2), Uid(4)]
        );
        let changed = mb
            .send(ChangedSince {
                since: start,
                limit: 100,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(changed.len(), 2);
        assert!(changed.iter().all(|s| s.record.is_expunged()));
        let err = mb.send(FetchBody { uid: Uid(1) }).await.unwrap();
        assert!(matches!(err, Err(MailError::NoSuchMessage(Uid(1)))));
        // UID EXPUNGE only takes flagged messages; a plain uid set takes any.
        let none = mb
            .send(Expunge {
                mode: ExpungeMode::DeletedIn(UidSet::single(Uid(2))),
            })
            .await
            .unwrap()
            .unwrap();
        assert!(none.is_empty());
        let two = mb
            .send(Expunge {
                mode: ExpungeMode::Uids(UidSet::single(Uid(2))),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(two, vec![Uid(2)]);
        let state = mb.send(GetState).await.unwrap().unwrap();
        assert_eq!(state.exists, 1);
        assert_eq!(state.uidnext, Uid(5), "expunge never lowers uidnext");
    });
}

#[test]
fn changed_since_lists_each_record_once_at_its_latest_modseq() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        for i in 0..5 {
            append(&mb, &message(i), &[]).await;
        }
        let mid = mb.send(GetState).await.unwrap().unwrap().highestmodseq;
        mb.send(StoreFlags {
            uids: UidSet::single(Uid(2)),
            action: FlagAction::Add,
            flags: vec!["\\Seen".into()],
            unchanged_since: None,
        })
        .await
        .unwrap()
        .unwrap();
        let all = mb
            .send(ChangedSince {
                since: ModSeq::ZERO,
                limit: 1000,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all.len(), 5);
        let uids: Vec<u32> = all.iter().map(|s| s.record.uid.value.0).collect();
        assert_eq!(
            uids,
            vec![1, 3, 4, 5, 2],
            "uid 2 moved to the end by its flag change"
        );
        let since = mb
            .send(ChangedSince {
                since: mid,
                limit: 1000,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(since.len(), 1);
        assert_eq!(since[0].record.uid.value, Uid(2));
        let limited = mb
            .send(ChangedSince {
                since: ModSeq::ZERO,
                limit: 2,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(limited.len(), 2);
    });
}

#[test]
fn copy_and_move_share_bodies_and_keep_messages() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let inbox = mailbox(&node, "alice", "INBOX").await;
        let archive = mailbox(&node, "alice", "Archive").await;
        let archive_id = node
            .directory
            .send(mailmesh_actors::directory::OpenMailbox {
                user: "alice".into(),
                name: "Archive".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .info
            .id;
        let inbox_id = node
            .directory
            .send(mailmesh_actors::directory::OpenMailbox {
                user: "alice".into(),
                name: "INBOX".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .info
            .id;
        for i in 0..3 {
            append(&inbox, &message(i), &["\\Flagged"]).await;
        }
        let copied = inbox
            .send(Transfer {
                uids: UidSet::range(Uid(1), Uid(2)),
                target_id: archive_id,
                target: archive.clone(),
                remove_source: false,
            })
            .await
            .unwrap()
            .unwrap();
        let pairs: Vec<(Uid, Uid)> = copied.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(pairs, vec![(Uid(1), Uid(1)), (Uid(2), Uid(2))]);
        let moved = inbox
            .send(Transfer {
                uids: UidSet::single(Uid(3)),
                target_id: archive_id,
                target: archive.clone(),
                remove_source: true,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((moved[0].from, moved[0].to, moved.len()), (Uid(3), Uid(3), 1));
        let mut intents = 0;
        node.store
            .scan_prefix(mailmesh_actors::store::Table::Moves, &[], None, |_, _| {
                intents += 1;
                Ok(true)
            })
            .unwrap();
        assert_eq!(intents, 0, "a finished move leaves no row to resume");
        let in_inbox = inbox.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        assert_eq!(in_inbox.len(), 2);
        let in_archive = archive
            .send(Fetch { uids: UidSet::all() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(in_archive.len(), 3);
        assert!(in_archive
            .iter()
            .all(|v| v.flags.iter().any(|f| f.as_str() == "\\Flagged")));
        assert_ne!(
            in_archive[0].append_id, in_inbox[0].append_id,
            "a copy is a new message"
        );
        // The answer names each source and its copy by AppendId.
        assert_eq!(copied[0].source, in_inbox[0].append_id);
        assert_eq!(copied[0].copy, in_archive[0].append_id);
        assert_eq!(moved[0].copy, in_archive[2].append_id);
        assert_eq!(in_archive[0].guid, in_inbox[0].guid, "and shares the body");
        let body = archive.send(FetchBody { uid: Uid(3) }).await.unwrap().unwrap();
        assert_eq!(body, message(2).into_bytes());
        // Moving within one mailbox gives the message a new uid.
        let same = inbox
            .send(Transfer {
                uids: UidSet::single(Uid(1)),
                target_id: inbox_id,
                target: inbox.clone(),
                remove_source: true,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((same[0].from, same[0].to, same.len()), (Uid(1), Uid(4), 1));
        assert_eq!(same[0].source, in_inbox[0].append_id);
        let uids: Vec<Uid> = inbox
            .send(Fetch { uids: UidSet::all() })
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|v| v.uid)
            .collect();
        assert_eq!(uids, vec![Uid(2), Uid(4)]);
    });
}

#[test]
fn annotations_set_replace_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let set = |entry: &str, value: Option<&str>| SetAnnotation {
            entry: entry.into(),
            value: value.map(|v| v.as_bytes().to_vec()),
        };
        let m0 = mb.send(GetState).await.unwrap().unwrap().highestmodseq;
        mb.send(set("/shared/comment", Some("hello")))
            .await
            .unwrap()
            .unwrap();
        mb.send(set("/private/color", Some("red")))
            .await
            .unwrap()
            .unwrap();
        mb.send(set("/shared/comment", Some("bye")))
            .await
            .unwrap()
            .unwrap();
        let m1 = mb.send(GetState).await.unwrap().unwrap().highestmodseq;
        assert!(m1 > m0, "annotations carry modseqs");
        let all = mb.send(GetAnnotations).await.unwrap().unwrap();
        assert_eq!(
            all,
            vec![
                ("/private/color".to_string(), b"red".to_vec()),
                ("/shared/comment".to_string(), b"bye".to_vec())
            ]
        );
        mb.send(set("/private/color", None)).await.unwrap().unwrap();
        assert_eq!(mb.send(GetAnnotations).await.unwrap().unwrap().len(), 1);
        let bad = mb.send(set("/elsewhere/x", Some("v"))).await.unwrap();
        assert!(matches!(bad, Err(MailError::InvalidName(_))));
        let big = mb
            .send(SetAnnotation {
                entry: "/shared/big".into(),
                value: Some(vec![0; 70_000]),
            })
            .await
            .unwrap();
        assert!(matches!(big, Err(MailError::AnnotationTooLarge { .. })));
    });
}

#[test]
fn several_annotations_are_written_all_or_none_within_the_entry_limit() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let set = |entries: &[(&str, Option<&str>)], max_entries: usize| SetAnnotations {
            entries: entries
                .iter()
                .map(|(e, v)| (e.to_string(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
            max_entries,
        };
        let all = || async { mb.send(GetAnnotations).await.unwrap().unwrap() };
        // Two set at once; an entry named twice keeps its last value.
        let versions = mb
            .send(set(
                &[
                    ("/shared/comment", Some("one")),
                    ("/private/comment", Some("mine")),
                    ("/shared/comment", Some("two")),
                ],
                3,
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(versions.len(), 2);
        assert!(versions.iter().all(|(_, v)| v.is_some()));
        assert_eq!(
            all().await,
            vec![
                ("/private/comment".to_string(), b"mine".to_vec()),
                ("/shared/comment".to_string(), b"two".to_vec())
            ]
        );
        // One bad entry or one value over the size limit: nothing of the command is written.
        for bad in [
            set(&[("/shared/a", Some("x")), ("/nowhere/b", Some("y"))], 10),
            SetAnnotations {
                entries: vec![
                    ("/shared/a".into(), Some(b"x".to_vec())),
                    ("/shared/b".into(), Some(vec![0; 70_000])),
                ],
                max_entries: 10,
            },
        ] {
            assert!(mb.send(bad).await.unwrap().is_err());
        }
        assert_eq!(all().await.len(), 2);
        // Over the limit: refused whole, even the replacement that came with the new entries.
        let over = mb
            .send(set(
                &[
                    ("/shared/comment", Some("three")),
                    ("/shared/a", Some("x")),
                    ("/shared/b", Some("y")),
                ],
                3,
            ))
            .await
            .unwrap();
        assert!(
            matches!(over, Err(MailError::TooManyAnnotations { max: 3 })),
            "{over:?}"
        );
        assert_eq!(all().await[1].1, b"two".to_vec());
        // A removal and a new entry in one command stay within it; removing a missing entry
        // writes nothing.
        let swapped = mb
            .send(set(
                &[
                    ("/private/comment", None),
                    ("/shared/a", Some("x")),
                    ("/shared/gone", None),
                ],
                2,
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            swapped
                .iter()
                .map(|(e, v)| (e.as_str(), v.is_some()))
                .collect::<Vec<_>>(),
            [
                ("/private/comment", true),
                ("/shared/a", true),
                ("/shared/gone", false)
            ]
        );
        assert_eq!(
            all().await.into_iter().map(|(e, _)| e).collect::<Vec<_>>(),
            ["/shared/a", "/shared/comment"]
        );
        // Already over a lowered limit: replacing a value is still allowed, adding one is not.
        mb.send(set(&[("/shared/a", Some("y"))], 1))
            .await
            .unwrap()
            .unwrap();
        let added = mb.send(set(&[("/shared/c", Some("z"))], 1)).await.unwrap();
        assert!(matches!(added, Err(MailError::TooManyAnnotations { max: 1 })));
    });
}

#[test]
fn bad_messages_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let mut options = options(dir.path());
        options.limits.max_message_bytes = 1000;
        let node = mailmesh_actors::node::LocalNode::start(options, env(1)).unwrap();
        let mb = mailbox(&node, "alice", "INBOX").await;
        let big = mb
            .send(Append {
                body: vec![b'x'; 1001],
                flags: vec![],
                internaldate: None,
            })
            .await
            .unwrap();
        match big {
            Err(e @ MailError::MessageTooLarge { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "message of 1001 bytes exceeds the maximum message size of 1000 bytes"
                )
            }
            other => panic!("{other:?}"),
        }
        let empty = mb
            .send(Append {
                body: vec![],
                flags: vec![],
                internaldate: None,
            })
            .await
            .unwrap();
        assert!(matches!(empty, Err(MailError::EmptyMessage)));
        let flag = mb
            .send(Append {
                body: b"x".to_vec(),
                flags: vec!["a b".into()],
                internaldate: None,
            })
            .await
            .unwrap();
        assert!(matches!(flag, Err(MailError::InvalidName(_))));
        // None of that consumed a uid.
        assert_eq!(append(&mb, "ok", &[]).await.uid, Uid(1));
        let missing = mb.send(FetchBody { uid: Uid(99) }).await.unwrap();
        assert!(matches!(missing, Err(MailError::NoSuchMessage(Uid(99)))));
    });
}

/// Engine bug 18 (issue 9, item 6): a peer's UIDNEXT above this node's, with nothing else new,
/// was raised in memory only; the store (and so a restart, and every reader of committed state)
/// kept the old value.
#[test]
fn an_incoming_uidnext_raise_alone_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        append(&mb, &message(1), &[]).await;
        mb.send(mailmesh_actors::mailbox_sync::MergeRemote {
            from: mailmesh_protocol::ids::NodeId::new("peer").unwrap(),
            pruned: None,
            records: Vec::new(),
            annotations: Vec::new(),
            uidnext: mailmesh_protocol::records::UidNext(Uid(50)),
            bodies: Default::default(),
        })
        .await
        .unwrap()
        .unwrap();
        let state = mb.send(GetState).await.unwrap().unwrap();
        assert_eq!(state.uidnext, Uid(50), "the committed UIDNEXT");
    });
    run(|| async {
        let node = start(dir.path());
        let mb = open(&node, "alice", "INBOX").await;
        assert_eq!(
            append(&mb, &message(2), &[]).await.uid,
            Uid(50),
            "after a restart too"
        );
    });
}

/// Engine bug 19 (issue 9, item 6): clearing a flag the message never had recorded nothing, so a
/// set made elsewhere with an older version, arriving afterwards, survived the later clear. Each
/// flag is a last-writer-wins register (ARCHITECTURE.md, "Flags"): the later clear wins.
#[test]
fn clearing_a_flag_never_set_wins_over_an_older_concurrent_set() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        append(&mb, &message(1), &[]).await;
        mb.send(StoreFlags {
            uids: UidSet::single(Uid(1)),
            action: FlagAction::Remove,
            flags: vec!["\\Flagged".into()],
            unchanged_since: None,
        })
        .await
        .unwrap()
        .unwrap();
        let mine = mb
            .send(ChangedSince {
                since: ModSeq::ZERO,
                limit: 10,
            })
            .await
            .unwrap()
            .unwrap()
            .remove(0)
            .record;
        let cleared_at = mine.max_version().clone();
        // A peer set \Flagged concurrently, at an older version; its record arrives now.
        let peer = mailmesh_protocol::ids::NodeId::new("peer").unwrap();
        let mut theirs = mine.clone();
        theirs.flags.clear();
        theirs.write_flag(
            mailmesh_protocol::names::Flag::new("\\Flagged").unwrap(),
            true,
            mailmesh_protocol::version::Version {
                counter: cleared_at.counter - 1,
                node: peer.clone(),
            },
        );
        mb.send(mailmesh_actors::mailbox_sync::MergeRemote {
            from: peer.clone(),
            pruned: None,
            records: vec![mailmesh_protocol::wire::Change {
                origin: peer,
                item: theirs,
            }],
            annotations: Vec::new(),
            uidnext: Default::default(),
            bodies: Default::default(),
        })
        .await
        .unwrap()
        .unwrap();
        let shown = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        assert!(
            shown[0].flags.is_empty(),
            "the later clear wins: {:?}",
            shown[0].flags
        );
    });
}

/// Pages of records for a peer are cut by bytes as well as by count: by the bodies they bring
/// along and by the records' own bytes, whichever bound comes first, and paging by either still
/// covers every record exactly once.
#[test]
fn pages_for_a_peer_are_cut_by_bytes_and_by_count() {
    use mailmesh_actors::mailbox_sync::{PageBudget, PlanFullPush, PlanSync};
    use mailmesh_protocol::ids::NodeId;
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let mut appended = Vec::new();
        for i in 0..10 {
            appended.push(append(&mb, &message(i), &[]).await.append_id);
        }
        let body = message(0).len();
        let budgets = [
            // Bodies: the third body reaches the bound, so three records a page.
            (
                PageBudget {
                    records: 1000,
                    record_bytes: usize::MAX,
                    body_bytes: 3 * body - 1,
                },
                3,
            ),
            // Records' bytes: a one-byte bound still puts one record in each page.
            (
                PageBudget {
                    records: 1000,
                    record_bytes: 1,
                    body_bytes: usize::MAX,
                },
                1,
            ),
            // The count, when it comes first.
            (
                PageBudget {
                    records: 4,
                    ..PageBudget::records(4)
                },
                4,
            ),
        ];
        for (budget, per_page) in budgets {
            let mut after = None;
            let mut seen = Vec::new();
            loop {
                let page = mb
                    .send(PlanFullPush {
                        after: after.clone(),
                        page: budget,
                    })
                    .await
                    .unwrap()
                    .unwrap();
                assert!(
                    page.records.len() <= per_page,
                    "{budget:?}: a page of {}",
                    page.records.len()
                );
                seen.extend(page.records.iter().map(|c| c.item.append_id.clone()));
                if page.next.is_none() {
                    break;
                }
                assert_eq!(page.records.len(), per_page, "{budget:?}: a page cut early");
                after = page.next;
            }
            let mut expected = appended.clone();
            expected.sort();
            assert_eq!(seen, expected, "{budget:?}: every record exactly once");

            let plan = mb
                .send(PlanSync {
                    peer: NodeId::new("peer").unwrap(),
                    page: budget,
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(plan.records.len(), per_page, "{budget:?}");
            assert!(plan.more, "{budget:?}: the rest follows in later pages");
            let first: Vec<_> = plan.records.iter().map(|c| c.item.append_id.clone()).collect();
            assert_eq!(first, appended[..per_page], "{budget:?}: oldest changes first");
        }
        let whole = mb
            .send(PlanSync {
                peer: NodeId::new("peer").unwrap(),
                page: PageBudget::records(5000),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((whole.records.len(), whole.more), (10, false));
    });
}

#[test]
fn watchers_are_told_of_each_committed_change_and_of_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let mut watch = mb.send(WatchChanges).await.unwrap().unwrap();
        assert!(!watch.has_changed().unwrap());
        append(&mb, &message(1), &[]).await;
        // Told by the time the append is answered (the commit is durable then).
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        mb.send(StoreFlags {
            uids: UidSet::all(),
            action: FlagAction::Add,
            flags: vec!["\\Deleted".into()],
            unchanged_since: None,
        })
        .await
        .unwrap()
        .unwrap();
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        // Reads change nothing.
        mb.send(GetState).await.unwrap().unwrap();
        mb.send(ListUids).await.unwrap().unwrap();
        assert!(!watch.has_changed().unwrap());
        mb.send(Expunge {
            mode: ExpungeMode::Deleted,
        })
        .await
        .unwrap()
        .unwrap();
        assert!(watch.has_changed().unwrap());
        // A watcher that goes away costs the mailbox nothing: writes go on.
        drop(watch);
        append(&mb, &message(2), &[]).await;
        assert_eq!(mb.send(ListUids).await.unwrap().unwrap(), vec![Uid(2)]);
    });
}

/// A replication cache describes one copy of the peer's. Once the peer lets its copy go (its
/// leaving register written back to false, and it may hold the mailbox again, empty), a cache
/// saved before is not used, nor one that an exchange begun before saves late, and the next sync
/// is a whole one (simulator, seed 100602: a late save claimed "the peer has everything" for the
/// peer's empty new copy, and four messages were never sent to it again).
#[test]
fn a_cache_from_before_the_peer_let_its_copy_go_is_not_used() {
    use mailmesh_actors::directory_sync::EntriesFor;
    use mailmesh_actors::mailbox_sync::{
        EntryUpdated, PageBudget, PlanSync, ReplicationCache, SaveCache, SyncPlan,
    };
    use mailmesh_protocol::ids::NodeId;
    use mailmesh_protocol::version::Version;
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        append(&mb, &message(1), &[]).await;
        let peer = NodeId::new("peer").unwrap();
        let plan = |mb: actix::Addr<Mailbox>, peer: NodeId| async move {
            let plan: SyncPlan = mb
                .send(PlanSync {
                    peer,
                    page: PageBudget::records(100),
                })
                .await
                .unwrap()
                .unwrap();
            plan
        };
        let save = |mb: actix::Addr<Mailbox>, peer: NodeId, cache: ReplicationCache| async move {
            mb.send(SaveCache { peer, cache }).await.unwrap().unwrap();
        };
        let first = plan(mb.clone(), peer.clone()).await;
        assert_eq!((first.cache.as_ref(), first.peer_let_go), (None, 0));
        // The exchange this cache comes from began before the peer let its copy go.
        let acknowledged = ReplicationCache {
            uidvalidity: first.uidvalidity,
            acked: first.upto,
            peer_modseq: ModSeq::ZERO,
            complete: first.upto,
            peer_let_go: first.peer_let_go,
        };
        save(mb.clone(), peer.clone(), acknowledged.clone()).await;
        let used = plan(mb.clone(), peer.clone()).await;
        assert_eq!(used.cache.as_ref(), Some(&acknowledged));
        assert!(used.records.is_empty(), "the peer has the message");

        // The peer leaves and lets its copy go.
        let entries = node
            .directory
            .send(EntriesFor {
                peer: peer.clone(),
                user: "alice".into(),
                whole: true,
            })
            .await
            .unwrap()
            .unwrap();
        let mut entry = entries[0].item.clone();
        let at = |counter| Version {
            counter,
            node: peer.clone(),
        };
        assert!(entry.set_leaving(&peer, true, at(1_000)));
        assert!(entry.set_leaving(&peer, false, at(1_001)));
        mb.send(EntryUpdated {
            entry,
            holders: Default::default(),
        })
        .await
        .unwrap();
        let after = plan(mb.clone(), peer.clone()).await;
        assert_eq!((after.cache.as_ref(), after.peer_let_go), (None, 1_001));
        assert_eq!(after.records.len(), 1, "the message goes again");

        // The late save of the exchange begun before is dropped.
        save(mb.clone(), peer.clone(), acknowledged.clone()).await;
        assert_eq!(plan(mb.clone(), peer.clone()).await.cache, None);

        // A cache of the new copy is used.
        let fresh = ReplicationCache {
            peer_let_go: 1_001,
            ..acknowledged
        };
        save(mb.clone(), peer.clone(), fresh.clone()).await;
        assert_eq!(plan(mb.clone(), peer.clone()).await.cache, Some(fresh));
    });
}

/// A store written before the uid index held flags has rows of one byte (shown or not) or
/// empty ones (before it said anything): their records are read, so the flags and the uids
/// listed are what the records say; a flag change writes the row whole.
#[test]
fn uid_index_rows_from_before_flags_fall_back_to_the_records() {
    use mailmesh_actors::store::{keys, Batch, Table};
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        let a = append(&mb, &message(1), &["\\Seen", "$Work"]).await;
        let b = append(&mb, &message(2), &[]).await;
        let c = append(&mb, &message(3), &["\\Flagged"]).await;
        let id = mb.send(GetState).await.unwrap().unwrap().id;
        let expected = mb
            .send(FetchFlags { uids: UidSet::all() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(expected.len(), 3);
        assert_eq!(
            expected[0].flags.names().collect::<Vec<_>>(),
            vec!["$Work", "\\Seen"]
        );
        // Rewritten as an older node left them: empty, shown, shown.
        let mut batch = Batch::new();
        for (outcome, row) in [(&a, vec![]), (&b, vec![1]), (&c, vec![1])] {
            batch.put_raw(Table::Uids, keys::uid(id, outcome.uid, &outcome.append_id), row);
        }
        mailmesh_actors::commit_group::commit(&node.commit, batch, None)
            .await
            .unwrap();
        let read = mb
            .send(FetchFlags { uids: UidSet::all() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, expected);
        let some = mb
            .send(FetchFlags {
                uids: UidSet::range(Uid(2), Uid(3)),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(some, expected[1..]);
        let listed = mb.send(ListUids).await.unwrap().unwrap();
        assert_eq!(listed, vec![Uid(1), Uid(2), Uid(3)]);
        mb.send(StoreFlags {
            uids: UidSet::single(Uid(2)),
            action: FlagAction::Add,
            flags: vec!["\\Answered".into()],
            unchanged_since: None,
        })
        .await
        .unwrap()
        .unwrap();
        assert!(uid_index_disagreements(&node.store, id).unwrap().is_empty());
        let after = mb
            .send(FetchFlags { uids: UidSet::all() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after[1].flags.names().next(), Some("\\Answered"));
        assert_eq!(
            (after[0].clone(), after[2].clone()),
            (expected[0].clone(), expected[2].clone())
        );
    });
}
