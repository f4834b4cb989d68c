//! Durability and bad storage: restart after the actor system is dropped mid-work, corrupt and
//! truncated files, a data dir in use, a store of another node, corrupt bodies, compaction.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use mailmesh_actors::commit_group::Compact;
use mailmesh_actors::directory::{DeleteMailbox, ListMailboxes};
use mailmesh_actors::mailbox::*;
use mailmesh_actors::node::LocalNode;
use mailmesh_actors::store::{Store, STORE_FORMAT};
use mailmesh_actors::uid_set::UidSet;
use mailmesh_actors::{MailError, StoreError};
use mailmesh_protocol::ids::{NodeId, Uid};

/// Appends from many clients, then drops the whole actor system while appends are still arriving
/// and committing. Every acknowledged append must come back after a restart, and the mailbox
/// counters must agree with the records.
#[test]
fn restart_after_drop_mid_work_keeps_exactly_the_acknowledged_state() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Vec<(u32, String)> = {
        let system = actix::System::new();
        let acked = system.block_on(async {
            let node = start(dir.path());
            let mb = mailbox(&node, "alice", "INBOX").await;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for client in 0..8 {
                let mb = mb.clone();
                let tx = tx.clone();
                actix::spawn(async move {
                    for i in 0..1000 {
                        let body = format!("client {client} message {i}\r\n");
                        let sent = mb.send(Append {
                            body: body.clone().into_bytes(),
                            flags: vec![],
                            internaldate: None,
                        });
                        if let Ok(Ok(outcome)) = sent.await {
                            let _ = tx.send((outcome.uid.0, body));
                        }
                    }
                });
            }
            drop(tx);
            // Collect acknowledgements for a while, then walk away mid-stream.
            let mut acked = Vec::new();
            while acked.len() < 1500 {
                acked.push(rx.recv().await.expect("appends keep coming"));
            }
            acked
        });
        // Dropping the System drops every actor and pending future without a clean stop.
        drop(system);
        acked
    };
    assert!(acked.len() >= 1500);

    run(|| async {
        let node = start(dir.path());
        let mb = open(&node, "alice", "INBOX").await;
        let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        let by_uid: BTreeMap<u32, &MessageView> = views.iter().map(|v| (v.uid.0, v)).collect();
        for (uid, body) in &acked {
            assert!(by_uid.contains_key(uid), "acknowledged uid {uid} lost");
            let stored = mb.send(FetchBody { uid: Uid(*uid) }).await.unwrap().unwrap();
            assert_eq!(&stored, body.as_bytes());
        }
        let state = mb.send(GetState).await.unwrap().unwrap();
        assert_eq!(
            state.exists as usize,
            views.len(),
            "counters agree with the records"
        );
        let max_uid = views.iter().map(|v| v.uid.0).max().unwrap();
        assert!(state.uidnext.0 > max_uid);
        // New appends continue above everything seen before the crash.
        assert!(append(&mb, "after restart", &[]).await.uid.0 >= state.uidnext.0);
    });
}

#[test]
fn everything_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (id, uidvalidity) = run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "Work").await;
        append(&mb, &message(1), &["\\Seen"]).await;
        append(&mb, &message(2), &["$Label"]).await;
        mb.send(SetAnnotation {
            entry: "/shared/comment".into(),
            value: Some(b"c".to_vec()),
        })
        .await
        .unwrap()
        .unwrap();
        let state = mb.send(GetState).await.unwrap().unwrap();
        (state.id, state.uidvalidity)
    });
    run(|| async {
        let node = start(dir.path());
        let list = node
            .directory
            .send(ListMailboxes { user: "alice".into() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((list[0].id, list[0].uidvalidity), (id, uidvalidity));
        let mb = open(&node, "alice", "Work").await;
        let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(views[1].flags[0].as_str(), "$Label");
        assert_eq!(mb.send(GetAnnotations).await.unwrap().unwrap().len(), 1);
        assert_eq!(append(&mb, &message(3), &[]).await.uid, Uid(3));
    });
}

#[test]
fn a_truncated_or_garbage_store_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        append(&mb, &message(1), &[]).await;
    });
    let db = dir.path().join("store.redb");
    let original = std::fs::read(&db).unwrap();
    let node = NodeId::new("test-node").unwrap();

    std::fs::write(&db, &original[..original.len() / 3]).unwrap();
    let truncated = Store::open(dir.path(), &node);
    assert!(
        matches!(truncated, Err(StoreError::Corrupt { .. })),
        "{:?}",
        truncated.err()
    );
    let message = truncated.err().unwrap().to_string();
    assert!(
        message.contains("store.redb") && message.contains("corrupt"),
        "{message}"
    );

    std::fs::write(&db, b"this is not a database at all, just some bytes").unwrap();
    let garbage = Store::open(dir.path(), &node);
    assert!(
        matches!(garbage, Err(StoreError::Corrupt { .. })),
        "{:?}",
        garbage.err()
    );

    // Nothing was written over: restoring the file restores the data.
    std::fs::write(&db, &original).unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = open(&node, "alice", "INBOX").await;
        assert_eq!(mb.send(GetState).await.unwrap().unwrap().exists, 1);
    });
}

#[test]
fn in_use_and_wrong_node_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeId::new("test-node").unwrap();
    let first = Store::open(dir.path(), &node).unwrap();
    let second = Store::open(dir.path(), &node);
    assert!(
        matches!(second, Err(StoreError::InUse { .. })),
        "{:?}",
        second.err()
    );
    drop(first);
    let other = Store::open(dir.path(), &NodeId::new("other-node").unwrap());
    let err = other.err().unwrap();
    assert!(matches!(err, StoreError::WrongNode { .. }));
    assert!(
        err.to_string().contains("test-node") && err.to_string().contains("other-node"),
        "{err}"
    );
}

/// Sets (or, with `None`, removes) the format key of the store in `dir`, as another build would
/// have left it.
fn set_store_format(dir: &std::path::Path, format: Option<u32>) {
    let meta: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("meta");
    let db = redb::Database::open(dir.join("store.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(meta).unwrap();
        match format {
            Some(format) => {
                table
                    .insert(b"format".as_slice(), format.to_be_bytes().as_slice())
                    .unwrap();
            }
            None => {
                table.remove(b"format".as_slice()).unwrap();
            }
        }
    }
    txn.commit().unwrap();
}

fn store_format(dir: &std::path::Path) -> Option<u32> {
    use redb::ReadableDatabase;
    let meta: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("meta");
    let db = redb::Database::open(dir.join("store.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(meta).unwrap();
    let found = table.get(b"format".as_slice()).unwrap();
    found.map(|v| u32::from_be_bytes(v.value().try_into().unwrap()))
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_an_older_one_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeId::new("test-node").unwrap();
    drop(Store::open(dir.path(), &node).unwrap());
    assert_eq!(store_format(dir.path()), Some(STORE_FORMAT));

    // A newer build wrote it: refused, saying which formats, and left as it was.
    set_store_format(dir.path(), Some(STORE_FORMAT + 1));
    let err = Store::open(dir.path(), &node).err().unwrap();
    assert!(matches!(err, StoreError::NewerFormat { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("format {}", STORE_FORMAT + 1))
            && text.contains(&format!("up to {STORE_FORMAT}")),
        "{text}"
    );
    assert_eq!(store_format(dir.path()), Some(STORE_FORMAT + 1));

    // A store from before formats were recorded (format 1) opens and is marked as this one's.
    set_store_format(dir.path(), None);
    drop(Store::open(dir.path(), &node).unwrap());
    assert_eq!(store_format(dir.path()), Some(STORE_FORMAT));

    // A format-2 store kept a reverse index of each segment's bodies; this format finds them by
    // the body index, so opening one drops the old table (nothing would keep it true).
    set_store_format(dir.path(), Some(2));
    let segment_bodies: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("segment_bodies");
    {
        let db = redb::Database::open(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(segment_bodies)
            .unwrap()
            .insert(b"row".as_slice(), b"guid".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    drop(Store::open(dir.path(), &node).unwrap());
    assert_eq!(store_format(dir.path()), Some(STORE_FORMAT));
    let db = redb::Database::open(dir.path().join("store.redb")).unwrap();
    let tables: Vec<String> = {
        use redb::{ReadableDatabase, TableHandle};
        let txn = db.begin_read().unwrap();
        txn.list_tables().unwrap().map(|t| t.name().to_string()).collect()
    };
    assert!(!tables.iter().any(|t| t == "segment_bodies"), "{tables:?}");
}

#[test]
fn a_corrupt_body_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = mailbox(&node, "alice", "INBOX").await;
        append(&mb, "Subject: one\r\n\r\nhello world\r\n", &[]).await;
    });
    let segment = dir.path().join("bodies").join("00000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    // The body's own bytes (the segment also holds group records: store/journal.rs).
    let at = bytes.windows(11).position(|w| w == b"hello world").unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    run(|| async {
        let node = start(dir.path());
        let mb = open(&node, "alice", "INBOX").await;
        let err = mb.send(FetchBody { uid: Uid(1) }).await.unwrap().unwrap_err();
        assert!(
            matches!(err, MailError::Store(StoreError::BodyCorrupt { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("does not hash to its Guid"), "{err}");
        // The node keeps working.
        assert_eq!(append(&mb, "next", &[]).await.uid, Uid(2));
    });
}

#[test]
fn bodies_are_stored_once_and_compaction_reclaims_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let mut opts = options(dir.path());
        opts.segment_bytes = 16 * 1024;
        let node = LocalNode::start(opts, env(5)).unwrap();
        let a = mailbox(&node, "alice", "A").await;
        let b = mailbox(&node, "alice", "B").await;
        let body = |i: usize| format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(1000));
        // The same bytes appended twice are two messages and one body.
        let one = a
            .send(Append {
                body: body(0).into_bytes(),
                flags: vec![],
                internaldate: None,
            })
            .await
            .unwrap()
            .unwrap();
        let two = b
            .send(Append {
                body: body(0).into_bytes(),
                flags: vec![],
                internaldate: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert_ne!(one.append_id, two.append_id);
        let guid = mailmesh_protocol::ids::Guid::of(body(0).as_bytes());
        assert_eq!(node.store.body_location(&guid).unwrap().unwrap().refs, 2);
        for i in 1..60 {
            a.send(Append {
                body: body(i).into_bytes(),
                flags: vec!["\\Deleted".into()],
                internaldate: None,
            })
            .await
            .unwrap()
            .unwrap();
        }
        let segments_before = std::fs::read_dir(dir.path().join("bodies")).unwrap().count();
        assert!(segments_before > 3, "{segments_before} segments");
        a.send(Expunge {
            mode: ExpungeMode::Deleted,
        })
        .await
        .unwrap()
        .unwrap();
        // Deleting B drops the last reference to body 0's second message, but A still has it.
        node.directory
            .send(DeleteMailbox {
                user: "alice".into(),
                name: "B".into(),
            })
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(node.store.body_location(&guid).unwrap().unwrap().refs, 1);
        let report = node
            .commit
            .send(Compact { max_live_ratio: 0.5 })
            .await
            .unwrap()
            .unwrap();
        assert!(report.segments_removed >= 2, "{report:?}");
        assert!(report.bytes_reclaimed > 30_000, "{report:?}");
        let segments_after = std::fs::read_dir(dir.path().join("bodies")).unwrap().count();
        assert!(segments_after < segments_before);
        // The live body still reads back, wherever compaction put it.
        let back = a.send(FetchBody { uid: Uid(1) }).await.unwrap().unwrap();
        assert_eq!(back, body(0).into_bytes());
    });
    // And after a restart.
    run(|| async {
        let node = start(dir.path());
        let a = open(&node, "alice", "A").await;
        let expected = format!("Subject: 0\r\n\r\n{}\r\n", "x".repeat(1000));
        assert_eq!(
            a.send(FetchBody { uid: Uid(1) }).await.unwrap().unwrap(),
            expected.into_bytes()
        );
    });
}

/// A new store waits out the clock skew before its node starts, so that it mints nothing its lost
/// predecessor minted (engine bug 41); a store that started before keeps its counters and does
/// not wait, and neither does a node told of no skew (one alone).
#[test]
fn only_a_new_store_waits_out_the_clock_skew() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.max_clock_skew = Duration::from_millis(1500);
    assert_eq!(
        LocalNode::fresh_store_wait(&options).unwrap(),
        Duration::from_millis(1501),
        "a new store waits just over the skew"
    );
    assert_eq!(
        LocalNode::fresh_store_wait(&options).unwrap(),
        Duration::from_millis(1501),
        "looking does not make the store started"
    );
    let started = options.clone();
    run(|| async move {
        let node = LocalNode::start(started, env(1)).unwrap();
        mailbox(&node, "alice", "INBOX").await;
        node.shutdown().await;
    });
    assert_eq!(LocalNode::fresh_store_wait(&options).unwrap(), Duration::ZERO);

    let alone = tempfile::tempdir().unwrap();
    let options = common::options(alone.path());
    assert_eq!(options.max_clock_skew, Duration::ZERO);
    assert_eq!(LocalNode::fresh_store_wait(&options).unwrap(), Duration::ZERO);
}
