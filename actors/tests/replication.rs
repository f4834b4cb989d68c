//! Replication between nodes over the in-process network: real actors, real storage, virtual time.

mod common;

use common::cluster::*;
use common::message;
use mailmesh_actors::directory::*;
use mailmesh_actors::mailbox::*;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::Uid;

async fn open(cluster: &Cluster, node: &str, user: &str, name: &str) -> actix::Addr<Mailbox> {
    cluster
        .node(node)
        .directory
        .send(OpenMailbox {
            user: user.into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .unwrap()
        .addr
}

async fn create(cluster: &Cluster, node: &str, user: &str, name: &str) {
    cluster
        .node(node)
        .directory
        .send(CreateMailbox {
            user: user.into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .unwrap();
}

async fn append_to(mb: &actix::Addr<Mailbox>, body: &str, flags: &[&str]) -> AppendOutcome {
    mb.send(Append {
        body: body.as_bytes().to_vec(),
        flags: flags.iter().map(|s| s.to_string()).collect(),
        internaldate: Some(1_600_000_000),
    })
    .await
    .unwrap()
    .unwrap()
}

#[test]
fn two_nodes_replicate_both_ways_and_go_quiet() {
    run_virtual(|| async {
        let cluster = Cluster::chain(&["a", "b"]);
        create(&cluster, "a", "alice", "INBOX").await;
        let inbox_a = open(&cluster, "a", "alice", "INBOX").await;
        for i in 0..3 {
            append_to(&inbox_a, &message(i), &[]).await;
        }
        cluster.settle().await;
        let dump = cluster.assert_converged().await;
        assert_eq!(
            dump.mailboxes[&("alice".into(), "INBOX".into())].messages.len(),
            3
        );

        let inbox_b = open(&cluster, "b", "alice", "INBOX").await;
        append_to(&inbox_b, &message(10), &["\\Seen"]).await;
        inbox_b
            .send(StoreFlags {
                uids: UidSet::single(Uid(1)),
                action: FlagAction::Add,
                flags: vec!["\\Flagged".into()],
                unchanged_since: None,
            })
            .await
            .unwrap()
            .unwrap();
        cluster.settle().await;
        let dump = cluster.assert_converged().await;
        let messages = &dump.mailboxes[&("alice".into(), "INBOX".into())].messages;
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0].2, vec!["\\Flagged".to_string()]);
        let body = inbox_a.send(FetchBody { uid: Uid(4) }).await.unwrap().unwrap();
        assert_eq!(body, message(10).into_bytes());
        cluster.assert_quiet().await;
        eprintln!("{:#?}", cluster.net.stats());
    });
}
