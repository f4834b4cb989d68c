//! Crashes on the simulated disk, and what a failed group leaves in a segment: the storage bugs of
//! issue 9 item 6, each reproduced.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use mailmesh_actors::commit_group::FlushMode;
use mailmesh_actors::disk::CrashPoint;
use mailmesh_actors::mailbox::*;
use mailmesh_actors::node::{LocalNode, NodeOptions};
use mailmesh_actors::sim_disk::{CrashModel, CrashTrigger, SimDisk};
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::Guid;

fn start_on(disk: &SimDisk, dir: &Path) -> LocalNode {
    let mut options = NodeOptions::new(node_id(), dir);
    options.disk = Arc::new(disk.clone());
    options.flush_mode = FlushMode::Inline;
    LocalNode::start(options, env(7)).expect("node starts")
}

/// Appends a message and returns its Guid once it is acknowledged.
async fn append_acked(node: &LocalNode, body: &str) -> Guid {
    let mb = mailbox(node, "alice", "INBOX").await;
    append(&mb, body, &[]).await;
    Guid::of(body.as_bytes())
}

/// The bodies directory, the first segment file and the store file were created without a sync
/// of the directory holding them: their data was fdatasynced, but a crash could undo their
/// directory entries and take every acknowledged write with them. On a disk that loses every
/// unsynced directory entry, an acknowledged append must survive.
#[test]
fn an_acknowledged_append_survives_a_crash_that_loses_unsynced_directory_entries() {
    let disk = SimDisk::new(1, CrashModel::LOSE_ALL);
    let dir = Path::new("/data/node");
    let body = "Subject: durable\r\n\r\nsynced, and its file is found again\r\n";
    let guid = run(|| async {
        let node = start_on(&disk, dir);
        let guid = append_acked(&node, body).await;
        disk.crash();
        node.shutdown().await;
        guid
    });
    assert!(
        disk.durable_file(&dir.join("bodies").join("00000001.seg"))
            .is_some(),
        "the first segment's directory entry is not durable"
    );
    disk.restart();
    run(|| async {
        let node = start_on(&disk, dir);
        let mb = open(&node, "alice", "INBOX").await;
        let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
        assert_eq!(views.len(), 1, "the acknowledged append is gone after the crash");
        assert_eq!(node.store.read_body(&guid).unwrap(), body.as_bytes());
        drop(mb);
        node.shutdown().await;
    });
}

/// A crash at each point of the commit path (before the segment sync, between the segment's
/// fdatasync and the store commit, between the commit and the answer), on a disk that keeps or
/// tears unsynced writes as its seed says: the store opens again, and everything acknowledged
/// before the crash is there.
#[test]
fn the_store_opens_after_a_crash_at_every_commit_point_and_keeps_what_was_acknowledged() {
    let model = CrashModel {
        keep_unsynced: 0.5,
        tear_last: 0.5,
    };
    for seed in 0..12u64 {
        let disk = SimDisk::new(seed, model);
        let dir = Path::new("/data/node");
        let mut acked = Vec::new();
        for (round, point) in CrashPoint::ALL.iter().enumerate() {
            let trigger = if seed % 2 == 0 {
                CrashTrigger::At(*point)
            } else {
                CrashTrigger::Sync(1 + (seed as u32 + round as u32) % 4)
            };
            let got = run(|| async {
                let node = start_on(&disk, dir);
                let mb = mailbox_or_open(&node).await;
                let mut got = Vec::new();
                for i in 0..3 {
                    let body = format!("Subject: seed {seed} round {round} before {i}\r\n\r\nx\r\n");
                    append(&mb, &body, &[]).await;
                    got.push(body);
                }
                disk.arm(trigger);
                // Appends until the trigger fires: only answered ones count as acknowledged.
                for i in 0..20 {
                    let body = format!("Subject: seed {seed} round {round} after {i}\r\n\r\ny\r\n");
                    let sent = mb
                        .send(Append {
                            body: body.clone().into_bytes(),
                            flags: vec![],
                            internaldate: None,
                        })
                        .await;
                    match sent {
                        Ok(Ok(_)) => got.push(body),
                        _ => break,
                    }
                    if disk.crashed() {
                        break;
                    }
                }
                disk.crash();
                drop(mb);
                node.shutdown().await;
                got
            });
            acked.extend(got);
            disk.restart();
            run(|| async {
                let node = start_on(&disk, dir);
                let mb = open(&node, "alice", "INBOX").await;
                let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
                for body in &acked {
                    let guid = Guid::of(body.as_bytes());
                    assert!(
                        views.iter().any(|v| v.guid == guid),
                        "seed {seed}, crash {trigger:?}: acknowledged {body:?} is lost"
                    );
                    assert_eq!(node.store.read_body(&guid).unwrap(), body.as_bytes());
                }
                drop(mb);
                node.shutdown().await;
            });
        }
    }
}

async fn mailbox_or_open(node: &LocalNode) -> actix::Addr<Mailbox> {
    let _ = node
        .directory
        .send(mailmesh_actors::directory::CreateMailbox {
            user: "alice".into(),
            name: "INBOX".into(),
        })
        .await;
    open(node, "alice", "INBOX").await
}

/// A group that fails after one of its batches queued a body (here: another batch of the group
/// meets a corrupt index row) left the body's bytes queued in the segment writer, and the next
/// group wrote them in front of its own: dead bytes no index names, in every segment after such
/// a failure. Only live entries may reach the file.
#[test]
fn a_failed_group_leaves_no_dead_bytes_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let failing = "Subject: its index row is corrupt\r\n\r\nbroken\r\n";
    run(|| async {
        let node = start(dir.path());
        mailbox(&node, "alice", "INBOX").await;
        mailbox(&node, "alice", "Work").await;
        node.shutdown().await;
    });
    {
        // A bodies row of the wrong size for the second append's body.
        let db = redb::Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let bodies: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bodies");
            let mut table = txn.open_table(bodies).unwrap();
            table
                .insert(Guid::of(failing.as_bytes()).0.as_slice(), [1u8, 2, 3].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let later = "Subject: after the failure\r\n\r\nlive\r\n";
    run(|| async {
        let mut options = options(dir.path());
        options.flush_mode = FlushMode::Inline;
        let node = LocalNode::start(options, env(7)).unwrap();
        let inbox = open(&node, "alice", "INBOX").await;
        let work = open(&node, "alice", "Work").await;
        // Both sent before the commit group flushes: one group, whose second batch fails.
        let first = inbox.send(Append {
            body: b"Subject: queued in a failing group\r\n\r\nlost\r\n".to_vec(),
            flags: vec![],
            internaldate: None,
        });
        let second = work.send(Append {
            body: failing.as_bytes().to_vec(),
            flags: vec![],
            internaldate: None,
        });
        let (first, second) = futures_join(first, second).await;
        assert!(
            first.unwrap().is_err() && second.unwrap().is_err(),
            "the group fails"
        );
        append(&inbox, later, &[]).await;
        assert_eq!(
            node.store.read_body(&Guid::of(later.as_bytes())).unwrap(),
            later.as_bytes()
        );
        drop((inbox, work));
        node.shutdown().await;
    });
    // The segment holds the later body (and group records, see store/journal.rs), but nothing
    // of the failed group: neither its bodies nor its record.
    let segment = std::fs::read(dir.path().join("bodies").join("00000001.seg")).unwrap();
    let holds = |needle: &[u8]| segment.windows(needle.len()).any(|w| w == needle);
    assert!(holds(later.as_bytes()));
    assert!(
        !holds(b"queued in a failing group") && !holds(failing.as_bytes()),
        "the segment holds bytes of the failed group"
    );
}

async fn futures_join<A: std::future::Future, B: std::future::Future>(a: A, b: B) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// The image of a disk holds what the disk holds durably (the simulator reads a running node's
/// durable state through it when another node is wiped), and taking it leaves the disk as it was.
#[test]
fn a_durable_image_holds_what_is_synced_and_leaves_the_disk_alone() {
    use mailmesh_actors::disk::Disk;
    let disk = SimDisk::new(3, CrashModel::LOSE_ALL);
    let dir = Path::new("/data");
    disk.create_dir_all(dir).unwrap();
    disk.sync_dir(Path::new("/")).unwrap();
    let synced = dir.join("synced");
    let file = disk.open(&synced, true).unwrap();
    file.write_all_at(b"durable", 0).unwrap();
    file.sync_data().unwrap();
    disk.sync_dir(dir).unwrap();
    file.write_all_at(b" and more", 7).unwrap();
    let unsynced = disk.open(&dir.join("unsynced"), true).unwrap();
    unsynced.write_all_at(b"never synced", 0).unwrap();
    let image = disk.durable_image();
    let mut buf = vec![0; 7];
    let in_image = image.open(&synced, false).unwrap();
    assert_eq!(
        in_image.len().unwrap(),
        7,
        "the unsynced tail is not in the image"
    );
    in_image.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"durable");
    assert!(
        image.open(&dir.join("unsynced"), false).is_err(),
        "a file whose entry was never synced is not in the image"
    );
    let mut all = vec![0; 16];
    file.read_exact_at(&mut all, 0).unwrap();
    assert_eq!(&all, b"durable and more", "the disk itself is unchanged");
    assert_eq!(disk.list_dir(dir).unwrap().len(), 2);
}

/// A crash after a MOVE's copies are durable and before its source is expunged (step 2 done,
/// step 3 not) left the message in both mailboxes for good. The copies are written with a `moves`
/// row, and the next start finishes the expunge: the message is in the target once, and gone
/// from the source.
#[test]
fn a_move_interrupted_by_a_crash_after_its_copies_is_finished_at_start() {
    let disk = SimDisk::new(3, CrashModel::LOSE_ALL);
    let dir = Path::new("/data/node");
    let moved = "Subject: moved when the node crashed\r\n\r\nonce\r\n";
    let stays = "Subject: stays in the inbox\r\n\r\nhere\r\n";
    run(|| async {
        let node = start_on(&disk, dir);
        let inbox = mailbox(&node, "alice", "INBOX").await;
        let archive = mailbox(&node, "alice", "Archive").await;
        append(&inbox, stays, &[]).await;
        append(&inbox, moved, &["\\Seen"]).await;
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
        // The next commit (the copies, step 2) is durable; the node dies before answering.
        disk.arm(CrashTrigger::At(CrashPoint::AfterCommit));
        let answer = inbox
            .send(Transfer {
                uids: UidSet::single(mailmesh_protocol::ids::Uid(2)),
                target_id: archive_id,
                target: archive.clone(),
                remove_source: true,
            })
            .await;
        assert!(disk.crashed(), "the crash fired: {answer:?}");
        assert!(
            !matches!(answer, Ok(Ok(_))),
            "no client was told the move succeeded"
        );
        drop((inbox, archive));
        node.shutdown().await;
    });
    disk.restart();
    run(|| async {
        let node = start_on(&disk, dir);
        let inbox = open(&node, "alice", "INBOX").await;
        let archive = open(&node, "alice", "Archive").await;
        let guid = Guid::of(moved.as_bytes());
        // The Directory finishes the move as it starts; wait for it by the source's contents.
        let mut in_inbox = Vec::new();
        for _ in 0..1000 {
            in_inbox = inbox.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
            if in_inbox.iter().all(|v| v.guid != guid) {
                break;
            }
            actix::clock::sleep(std::time::Duration::from_millis(10)).await;
        }
        let in_archive = archive
            .send(Fetch { uids: UidSet::all() })
            .await
            .unwrap()
            .unwrap();
        let guids = |views: &[MessageView]| views.iter().map(|v| v.guid).collect::<Vec<_>>();
        assert_eq!(
            guids(&in_archive),
            vec![guid],
            "the copy was durable: the message is in the target once"
        );
        assert_eq!(
            guids(&in_inbox),
            vec![Guid::of(stays.as_bytes())],
            "the interrupted move was finished: the source is expunged, the other message stays"
        );
        assert_eq!(
            moves_rows(&node),
            0,
            "the finished move's row is deleted with the expunge"
        );
        drop((inbox, archive));
        node.shutdown().await;
    });
}

/// How many `moves` rows (moves whose source is not expunged yet) the node's store holds.
fn moves_rows(node: &LocalNode) -> usize {
    let mut rows = 0;
    node.store
        .scan_prefix(mailmesh_actors::store::Table::Moves, &[], None, |_, _| {
            rows += 1;
            Ok(true)
        })
        .unwrap();
    rows
}

/// Group commits are durable through their journal records (store/journal.rs): redb commits
/// without a sync between checkpoints, so a crash takes those commits back and the next start
/// replays the records. Every acknowledged append is there once, with its uid, its flags and its
/// body's reference count, however many times the node starts again; a clean stop between
/// checkpoints (redb keeps its commits then) replays nothing twice.
#[test]
fn acknowledged_groups_come_back_from_the_journal_after_a_crash_and_only_once() {
    use mailmesh_actors::commit_group::Compact;
    let disk = SimDisk::new(5, CrashModel::LOSE_ALL);
    let dir = Path::new("/data/node");
    // Fewer groups than a checkpoint takes, and one body shared by every message.
    let body = "Subject: the same bytes\r\n\r\nshared by every message\r\n";
    run(|| async {
        let node = start_on(&disk, dir);
        let mb = mailbox_or_open(&node).await;
        for _ in 0..10 {
            append(&mb, body, &[]).await;
        }
        disk.crash();
        drop(mb);
        node.shutdown().await;
    });
    disk.restart();
    for start in 0..3 {
        run(|| async {
            let node = start_on(&disk, dir);
            let mb = open(&node, "alice", "INBOX").await;
            let views = mb.send(Fetch { uids: UidSet::all() }).await.unwrap().unwrap();
            let uids: Vec<u32> = views.iter().map(|v| v.uid.0).collect();
            let expected: Vec<u32> = (1..=10 + start).collect();
            assert_eq!(uids, expected, "start {start}");
            // One more on each start, ended by a clean stop between checkpoints.
            append(&mb, body, &[]).await;
            drop(mb);
            node.shutdown().await;
        });
    }
    // The body's reference count is exact: expunging every message but one keeps it, and
    // compaction keeps it.
    run(|| async {
        let node = start_on(&disk, dir);
        let mb = open(&node, "alice", "INBOX").await;
        let removed = mb
            .send(Expunge {
                mode: ExpungeMode::Uids(UidSet::range(
                    mailmesh_protocol::ids::Uid(2),
                    mailmesh_protocol::ids::Uid(13),
                )),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(removed.len(), 12);
        node.commit
            .send(Compact { max_live_ratio: 1.0 })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            node.store.read_body(&Guid::of(body.as_bytes())).unwrap(),
            body.as_bytes()
        );
        drop(mb);
        node.shutdown().await;
    });
}
