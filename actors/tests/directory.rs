//! The Directory actor: names, ids, tombstones, subscriptions, sieve scripts, activation.

mod common;

use std::time::Duration;

use common::*;
use mailmesh_actors::directory::*;
use mailmesh_actors::mailbox::{GetState, Mailbox};
use mailmesh_actors::MailError;
use mailmesh_protocol::ids::Uid;

fn create(user: &str, name: &str) -> CreateMailbox {
    CreateMailbox {
        user: user.into(),
        name: name.into(),
    }
}

async fn names(node: &mailmesh_actors::node::LocalNode, user: &str) -> Vec<String> {
    node.directory
        .send(ListMailboxes { user: user.into() })
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect()
}

#[test]
fn create_list_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let d = &node.directory;
        d.send(create("alice", "inbox")).await.unwrap().unwrap();
        let work = d
            .send(create("alice", "Projects/2026/Work"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(work.name, "Projects/2026/Work");
        assert_eq!(
            names(&node, "alice").await,
            vec!["INBOX", "Projects", "Projects/2026", "Projects/2026/Work"]
        );
        assert!(names(&node, "bob").await.is_empty());

        let dup = d.send(create("alice", "INBOX")).await.unwrap();
        assert_eq!(
            dup.unwrap_err().to_string(),
            "user \"alice\" already has a mailbox named \"INBOX\""
        );
        for bad in ["", "a//b", "/a", "x*", &"n".repeat(491)] {
            let r = d.send(create("alice", bad)).await.unwrap();
            assert!(matches!(r, Err(MailError::InvalidName(_))), "{bad:?}: {r:?}");
        }
        let r = d.send(create("Not A User", "INBOX")).await.unwrap();
        assert!(matches!(r, Err(MailError::InvalidName(_))));
        let unknown = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "Nope".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            unknown.unwrap_err().to_string(),
            "user \"alice\" has no mailbox named \"Nope\""
        );
    });
}

#[test]
fn rename_keeps_the_id_and_moves_inferiors() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let d = &node.directory;
        let a = d.send(create("alice", "A/B")).await.unwrap().unwrap();
        let mb = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "A/B".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .addr;
        append(&mb, &message(1), &[]).await;
        d.send(RenameMailbox {
            user: "alice".into(),
            from: "A".into(),
            to_user: None,
            to: "Z".into(),
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(names(&node, "alice").await, vec!["Z", "Z/B"]);
        let moved = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "Z/B".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved.info.id, a.id);
        assert_eq!(moved.info.uidvalidity, a.uidvalidity);
        assert_eq!(moved.addr.send(GetState).await.unwrap().unwrap().exists, 1);

        // Move to another user: same id, messages kept.
        d.send(RenameMailbox {
            user: "alice".into(),
            from: "Z/B".into(),
            to_user: Some("bob".into()),
            to: "FromAlice".into(),
        })
        .await
        .unwrap()
        .unwrap();
        let at_bob = d
            .send(OpenMailbox {
                user: "bob".into(),
                name: "FromAlice".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at_bob.info.id, a.id);
        assert_eq!(names(&node, "alice").await, vec!["Z"]);

        let into_self = d.send(RenameMailbox {
            user: "alice".into(),
            from: "Z".into(),
            to_user: None,
            to: "Z/Q".into(),
        });
        assert!(matches!(into_self.await.unwrap(), Err(MailError::NotAllowed(_))));
        d.send(create("alice", "Y")).await.unwrap().unwrap();
        let taken = d.send(RenameMailbox {
            user: "alice".into(),
            from: "Z".into(),
            to_user: None,
            to: "Y".into(),
        });
        assert!(matches!(
            taken.await.unwrap(),
            Err(MailError::MailboxExists { .. })
        ));
        let missing = d.send(RenameMailbox {
            user: "alice".into(),
            from: "Nope".into(),
            to_user: None,
            to: "W".into(),
        });
        assert!(matches!(
            missing.await.unwrap(),
            Err(MailError::UnknownMailbox { .. })
        ));
    });
}

#[test]
fn delete_leaves_a_tombstone_and_recreate_gets_new_id_and_higher_uidvalidity() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let d = &node.directory;
        let old = d.send(create("alice", "Trash")).await.unwrap().unwrap();
        let old_addr = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "Trash".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .addr;
        for i in 0..5 {
            append(&old_addr, &message(i), &[]).await;
        }
        d.send(DeleteMailbox {
            user: "alice".into(),
            name: "Trash".into(),
        })
        .await
        .unwrap()
        .unwrap();
        assert!(names(&node, "alice").await.is_empty());
        let by_id = d.send(OpenMailboxById { id: old.id }).await.unwrap();
        assert!(matches!(by_id, Err(MailError::MailboxDeleted(id)) if id == old.id));

        let new = d.send(create("alice", "Trash")).await.unwrap().unwrap();
        assert_ne!(new.id, old.id);
        assert!(new.uidvalidity > old.uidvalidity);
        let new_addr = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "Trash".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .addr;
        assert_eq!(new_addr.send(GetState).await.unwrap().unwrap().exists, 0);
        assert_eq!(append(&new_addr, "fresh", &[]).await.uid, Uid(1));

        // The purge runs in the background; once done, the old bodies are unreferenced.
        let mut waited = 0;
        loop {
            let left = node
                .store
                .body_location(&mailmesh_protocol::ids::Guid::of(message(0).as_bytes()))
                .unwrap();
            if left.is_none() {
                break;
            }
            waited += 1;
            assert!(waited < 200, "purge never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let inbox = d
            .send(DeleteMailbox {
                user: "alice".into(),
                name: "INBOX".into(),
            })
            .await
            .unwrap();
        assert!(matches!(
            inbox,
            Err(MailError::NotAllowed(_)) | Err(MailError::UnknownMailbox { .. })
        ));
    });
}

#[test]
fn subscriptions_and_sieve_scripts() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let d = &node.directory;
        let sub = |name: &str, on| Subscribe {
            user: "alice".into(),
            name: name.into(),
            subscribed: on,
        };
        d.send(sub("INBOX", true)).await.unwrap().unwrap();
        d.send(sub("Lists/rust", true)).await.unwrap().unwrap();
        d.send(sub("Old", true)).await.unwrap().unwrap();
        d.send(sub("Old", false)).await.unwrap().unwrap();
        let subs = d
            .send(ListSubscriptions { user: "alice".into() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(subs, vec!["INBOX", "Lists/rust"]);

        let put = |name: &str, body: &str| PutScript {
            user: "alice".into(),
            name: name.into(),
            content: body.into(),
        };
        d.send(put("vacation", "require \"vacation\";"))
            .await
            .unwrap()
            .unwrap();
        d.send(put("spam", "require \"fileinto\";"))
            .await
            .unwrap()
            .unwrap();
        d.send(SetActiveScript {
            user: "alice".into(),
            name: Some("spam".into()),
        })
        .await
        .unwrap()
        .unwrap();
        let list = d
            .send(ListScripts { user: "alice".into() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            list,
            vec![("spam".to_string(), true), ("vacation".to_string(), false)]
        );
        let active_delete = d
            .send(DeleteScript {
                user: "alice".into(),
                name: "spam".into(),
            })
            .await
            .unwrap();
        assert!(matches!(active_delete, Err(MailError::NotAllowed(_))));
        d.send(DeleteScript {
            user: "alice".into(),
            name: "vacation".into(),
        })
        .await
        .unwrap()
        .unwrap();
        let gone = d
            .send(GetScript {
                user: "alice".into(),
                name: "vacation".into(),
            })
            .await
            .unwrap();
        assert!(matches!(gone, Err(MailError::UnknownScript { .. })));
        d.send(put("vacation", "v2")).await.unwrap().unwrap();
        let back = d
            .send(GetScript {
                user: "alice".into(),
                name: "vacation".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"v2");
        let missing = d
            .send(SetActiveScript {
                user: "alice".into(),
                name: Some("nope".into()),
            })
            .await
            .unwrap();
        assert!(matches!(missing, Err(MailError::UnknownScript { .. })));
        let big = d
            .send(PutScript {
                user: "alice".into(),
                name: "big".into(),
                content: vec![b'x'; 2 << 20],
            })
            .await;
        assert!(matches!(big.unwrap(), Err(MailError::ScriptTooLarge { .. })));
        let bad_name = d.send(put("a/b", "x")).await.unwrap();
        assert!(matches!(bad_name, Err(MailError::InvalidName(_))));

        // A rename moves the content and, for the active script, the active register with it.
        let rename = |from: &str, to: &str| RenameScript {
            user: "alice".into(),
            from: from.into(),
            to: to.into(),
        };
        d.send(rename("spam", "junk")).await.unwrap().unwrap();
        let list = d
            .send(ListScripts { user: "alice".into() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            list,
            vec![("junk".to_string(), true), ("vacation".to_string(), false)]
        );
        let moved = d
            .send(GetScript {
                user: "alice".into(),
                name: "junk".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved, b"require \"fileinto\";");
        let taken = d.send(rename("vacation", "junk")).await.unwrap();
        assert!(matches!(taken, Err(MailError::ScriptExists { .. })));
        let absent = d.send(rename("spam", "other")).await.unwrap();
        assert!(matches!(absent, Err(MailError::UnknownScript { .. })));
        let bad_target = d.send(rename("vacation", "a/b")).await.unwrap();
        assert!(matches!(bad_target, Err(MailError::InvalidName(_))));
    });
}

#[test]
fn idle_mailbox_actors_are_let_go_and_never_doubled() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let mut opts = options(dir.path());
        opts.activation = ActivationPolicy {
            max_active: 4,
            idle_after: Duration::from_secs(3600),
        };
        let node = mailmesh_actors::node::LocalNode::start(opts, env(3)).unwrap();
        let d = &node.directory;
        // Hold on to the first mailbox's address, as a client session would.
        d.send(create("alice", "M0")).await.unwrap().unwrap();
        let held: actix::Addr<Mailbox> = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "M0".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .addr;
        append(&held, "kept", &[]).await;
        for i in 1..20 {
            let name = format!("M{i}");
            d.send(create("alice", &name)).await.unwrap().unwrap();
            let mb = d
                .send(OpenMailbox {
                    user: "alice".into(),
                    name,
                })
                .await
                .unwrap()
                .unwrap()
                .addr;
            append(&mb, &message(i), &[]).await;
        }
        let stats = d.send(GetDirectoryStats).await.unwrap();
        assert!(stats.active <= 4, "{stats:?}");
        // M0 was let go but is still running (we hold it): reopening must give the same actor,
        // so its uid counter continues instead of a second actor starting from the store.
        let again = d
            .send(OpenMailbox {
                user: "alice".into(),
                name: "M0".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .addr;
        assert_eq!(again, held);
        assert_eq!(append(&again, "second", &[]).await.uid, Uid(2));
        drop((held, again));
        // Let go actors stop once nobody holds them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = d.send(GetDirectoryStats).await.unwrap();
        assert!(stats.dormant_running <= 1, "{stats:?}");
    });
}

#[test]
fn primary_of_names_the_effective_primary() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let d = &node.directory;
        let primary_of = || PrimaryOf {
            user: "alice".into(),
            name: "inbox".into(),
        };
        assert_eq!(d.send(primary_of()).await.unwrap().unwrap(), None, "no INBOX yet");
        d.send(create("alice", "INBOX")).await.unwrap().unwrap();
        assert_eq!(
            d.send(primary_of()).await.unwrap().unwrap(),
            Some(node.node.clone()),
            "no primary named: the creator"
        );
        let other = mailmesh_protocol::ids::NodeId::new("other").unwrap();
        d.send(SetLocations {
            user: "alice".into(),
            name: "INBOX".into(),
            locations: Vec::new(),
            primary: Some(other.clone()),
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(d.send(primary_of()).await.unwrap().unwrap(), Some(other));
        let bad = d
            .send(PrimaryOf {
                user: "Not A User".into(),
                name: "INBOX".into(),
            })
            .await
            .unwrap();
        assert!(matches!(bad, Err(MailError::InvalidName(_))), "{bad:?}");
    });
}

#[test]
fn one_annotation_of_every_live_mailbox_is_listed_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    run(|| async {
        let node = start(dir.path());
        let set = |entry: &str, value: &str| mailmesh_actors::mailbox::SetAnnotation {
            entry: entry.into(),
            value: Some(value.as_bytes().to_vec()),
        };
        let sent = mailbox(&node, "alice", "Sent").await;
        let work = mailbox(&node, "alice", "Work").await;
        let old = mailbox(&node, "alice", "Old").await;
        sent.send(set("/private/specialuse", "\\Sent"))
            .await
            .unwrap()
            .unwrap();
        work.send(set("/shared/comment", "not this one"))
            .await
            .unwrap()
            .unwrap();
        old.send(set("/private/specialuse", "\\Archive"))
            .await
            .unwrap()
            .unwrap();
        node.directory
            .send(DeleteMailbox {
                user: "alice".into(),
                name: "Old".into(),
            })
            .await
            .unwrap()
            .unwrap();
        let listed = node
            .directory
            .send(ListAnnotation {
                user: "alice".into(),
                entry: "/private/specialuse".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(listed, vec![("Sent".to_string(), b"\\Sent".to_vec())]);
    });
}
