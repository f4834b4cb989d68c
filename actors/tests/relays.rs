//! Relays (issue 9 item 5): a mailbox placed on nodes that reach each other only through nodes
//! outside its locations is still replicated between them. Every node publishes its configured
//! peers; from that link graph each node computes the same relays (the nodes on shortest paths
//! joining the locations), which keep a copy and replicate it like a holder, take no client
//! write, and let their copy go when the graph no longer needs them.

mod common;

use common::cluster::*;
use common::message;
use mailmesh_actors::directory::*;
use mailmesh_actors::error::MailError;
use mailmesh_actors::mailbox::*;
use mailmesh_actors::node::PeerOptions;
use mailmesh_actors::store::Table;
use mailmesh_actors::uid_set::UidSet;
use mailmesh_protocol::ids::Uid;

async fn open(cluster: &Cluster, node: &str) -> actix::Addr<Mailbox> {
    cluster
        .node(node)
        .directory
        .send(OpenMailbox {
            user: "alice".into(),
            name: "INBOX".into(),
        })
        .await
        .unwrap()
        .unwrap()
        .addr
}

async fn append(mb: &actix::Addr<Mailbox>, i: usize) -> Result<AppendOutcome, MailError> {
    mb.send(Append {
        body: message(i).into_bytes(),
        flags: Vec::new(),
        internaldate: Some(1_600_000_000),
    })
    .await
    .unwrap()
}

/// Creates alice's INBOX on `node`.
async fn create_inbox(cluster: &Cluster, node: &str) {
    cluster
        .node(node)
        .directory
        .send(CreateMailbox {
            user: "alice".into(),
            name: "INBOX".into(),
        })
        .await
        .unwrap()
        .unwrap();
}

async fn place_on(cluster: &Cluster, node: &str, locations: &[&str]) {
    cluster
        .node(node)
        .directory
        .send(SetLocations {
            user: "alice".into(),
            name: "INBOX".into(),
            locations: locations.iter().map(|s| n(s)).collect(),
            primary: Some(n(locations[0])),
        })
        .await
        .unwrap()
        .unwrap();
}

async fn count(cluster: &Cluster, node: &str) -> usize {
    let dump = cluster.dump(node).await;
    // A node that does not know the mailbox yet (just wiped) shows nothing of it.
    dump.mailboxes
        .get(&("alice".to_string(), "INBOX".to_string()))
        .map_or(0, |mb| mb.messages.len())
}

/// Waits (virtual time) until `node` shows `want` messages in alice's INBOX.
async fn wait_for_count(cluster: &Cluster, node: &str, want: usize, what: &str) {
    let mut waited = 0;
    while count(cluster, node).await != want {
        waited += 1;
        assert!(
            waited < 120,
            "{what}: {node} shows {} messages, not {want}",
            count(cluster, node).await
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn holders(cluster: &Cluster, node: &str) -> Vec<String> {
    let opened = cluster
        .node(node)
        .directory
        .send(OpenMailbox {
            user: "alice".into(),
            name: "INBOX".into(),
        })
        .await
        .unwrap()
        .unwrap();
    opened.info.holders.iter().map(|n| n.to_string()).collect()
}

/// A config reload on `node` that leaves it with `peers`.
fn reconfigure(cluster: &mut Cluster, node: &str, peers: &[&str]) {
    let peers = peers.iter().map(|s| PeerOptions::new(n(s))).collect();
    cluster.nodes.get_mut(&n(node)).unwrap().set_peers(peers);
}

/// Chain a-b-c, mailbox on {a, c}: b relays, so an append on a reaches c and one on c reaches a;
/// b refuses client writes. Then a and c are linked directly: b is no longer needed, lets its
/// copy go, and replication between a and c goes on without it. Before relays, c never got a
/// single message (b, outside the locations, was skipped by every sync log).
#[test]
fn holders_linked_only_through_a_non_holder_replicate_through_it_as_a_relay() {
    run_virtual(|| async {
        let mut cluster = Cluster::chain(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        place_on(&cluster, "a", &["a", "c"]).await;
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            assert_eq!(
                holders(&cluster, node).await,
                ["a", "b", "c"],
                "b relays, as {node} sees it"
            );
        }
        let on_a = open(&cluster, "a").await;
        for i in 0..5 {
            append(&on_a, i).await.unwrap();
        }
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 5, "a's appends reached c through b");
        assert_eq!(count(&cluster, "b").await, 5, "the relay keeps a copy");
        let on_c = open(&cluster, "c").await;
        append(&on_c, 5).await.unwrap();
        let on_b = open(&cluster, "b").await;
        match append(&on_b, 6).await {
            Err(MailError::NotHeldHere { .. }) => {}
            other => panic!("a relay took a client write: {other:?}"),
        }
        drop(on_b);
        cluster.settle().await;
        assert_eq!(count(&cluster, "a").await, 6, "c's append reached a through b");

        // The operator links a and c directly: b is not needed any more.
        reconfigure(&mut cluster, "a", &["b", "c"]);
        reconfigure(&mut cluster, "c", &["a", "b"]);
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            assert_eq!(
                holders(&cluster, node).await,
                ["a", "c"],
                "no relay, as {node} sees it"
            );
        }
        wait_for_count(&cluster, "b", 0, "the former relay lets its copy go").await;
        append(&on_a, 7).await.unwrap();
        drop((on_a, on_c));
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 7);
        assert_eq!(count(&cluster, "a").await, 7);
        assert_eq!(count(&cluster, "b").await, 0, "nothing comes back to b");
        cluster.assert_quiet().await;
    });
}

/// Full mesh a-b-c, mailbox on {a, c}; then the a-c link is removed (a reload on both ends): b
/// becomes a relay and is sent everything, and changes keep flowing between a and c.
#[test]
fn a_link_removed_after_the_placement_makes_a_relay_that_gets_everything() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        place_on(&cluster, "a", &["a", "c"]).await;
        let on_a = open(&cluster, "a").await;
        for i in 0..4 {
            append(&on_a, i).await.unwrap();
        }
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 4);
        assert_eq!(count(&cluster, "b").await, 0, "b is not among the locations");

        reconfigure(&mut cluster, "a", &["b"]);
        reconfigure(&mut cluster, "c", &["b"]);
        cluster.settle().await;
        assert_eq!(count(&cluster, "b").await, 4, "the new relay was sent everything");
        for i in 4..6 {
            append(&on_a, i).await.unwrap();
        }
        let on_c = open(&cluster, "c").await;
        append(&on_c, 6).await.unwrap();
        drop((on_a, on_c));
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            assert_eq!(count(&cluster, node).await, 7, "on {node}");
        }
        cluster.assert_quiet().await;
    });
}

/// Engine bug 24 (simulator --locations, seed 34): chain a-b-c, mailbox on {a} only, moved to
/// {c}. a has no link to c and, outside the new locations, was no holder any more: nothing it
/// held was ever sent (its only neighbour b was no holder either), and it let its copy go, so c
/// got an empty mailbox. Now a marks itself as leaving in the entry, which keeps b as a relay
/// until a's changes have gone through it; then a and, after it, b let their copies go.
#[test]
fn a_move_to_a_node_with_no_link_to_the_old_holder_drains_through_a_relay() {
    run_virtual(|| async {
        let cluster = Cluster::chain(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        place_on(&cluster, "a", &["a"]).await;
        cluster.settle().await;
        let on_a = open(&cluster, "a").await;
        for i in 0..5 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        cluster.settle().await;
        assert_eq!(count(&cluster, "b").await, 0, "b is not among the locations");

        place_on(&cluster, "a", &["c"]).await;
        cluster.settle().await;
        wait_for_count(&cluster, "c", 5, "the new location gets the old one's messages").await;
        wait_for_count(&cluster, "a", 0, "the old location lets its copy go").await;
        wait_for_count(&cluster, "b", 0, "the relay it needed lets its copy go").await;
        for node in ["a", "b", "c"] {
            assert_eq!(holders(&cluster, node).await, ["c"], "as {node} sees it");
        }
        let on_c = open(&cluster, "c").await;
        append(&on_c, 5).await.unwrap();
        drop(on_c);
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 6);
        cluster.assert_quiet().await;
    });
}

/// A node that stops while it is letting a copy go (its changes not yet handed on: the holder
/// was down) resumes after a restart: its changes reach the holder and its copy goes. Before,
/// nothing resumed a release at start, and the copy stayed for good.
#[test]
fn a_release_interrupted_by_a_restart_is_resumed() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        cluster.stop("b").await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        // a lets its copy go, but b, the only holder left, is down: a's changes wait.
        place_on(&cluster, "a", &["b"]).await;
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        assert_eq!(count(&cluster, "a").await, 3, "nothing handed on yet");
        cluster.stop("a").await;
        cluster.restart("b");
        cluster.restart("a");
        cluster.settle().await;
        wait_for_count(&cluster, "b", 3, "the restarted node's changes reach the holder").await;
        wait_for_count(&cluster, "a", 0, "and its copy goes").await;
        cluster.assert_quiet().await;
    });
}

/// A node letting a copy go waited for every sync log row of the mailbox, those of a peer
/// removed from its configuration too, which no channel ever drains: the copy stayed for good
/// (simulator --locations, seed 214, after a topology edit).
#[test]
fn a_release_does_not_wait_for_a_peer_no_longer_configured() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        cluster.stop("c").await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        // The operator takes c out of the cluster: a keeps its log rows for c.
        reconfigure(&mut cluster, "a", &["b"]);
        reconfigure(&mut cluster, "b", &["a"]);
        cluster.settle().await;
        place_on(&cluster, "a", &["b"]).await;
        cluster.settle().await;
        wait_for_count(&cluster, "b", 3, "the holder has everything").await;
        wait_for_count(&cluster, "a", 0, "the old holder lets its copy go").await;
    });
}

/// Chain a-b-c with alice's INBOX everywhere, then moved to {b, c}: a lets its copy go. Then a
/// and c are linked: a queues for its new peer everything c holds, this mailbox among them.
/// Before the fix a's channel pulled c's records into a copy a no longer holds, which nothing
/// ever let go again (engine bug 25, simulator seed 83 with --locations: c had been down since
/// before a conflict was settled, and the copy rebuilt from its stale state showed a uid as
/// another message than a had shown there before letting go).
#[test]
fn a_node_that_let_its_copy_go_takes_nothing_back_from_a_new_peer() {
    run_virtual(|| async {
        let mut cluster = Cluster::chain(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 3);
        place_on(&cluster, "b", &["b", "c"]).await;
        cluster.settle().await;
        wait_for_count(&cluster, "a", 0, "a lets its copy go").await;

        reconfigure(&mut cluster, "a", &["b", "c"]);
        reconfigure(&mut cluster, "c", &["a", "b"]);
        cluster.settle().await;
        assert_eq!(holders(&cluster, "a").await, ["b", "c"]);
        assert_eq!(
            count(&cluster, "a").await,
            0,
            "a, outside the holders, rebuilt a copy from its new peer"
        );
        let on_b = open(&cluster, "b").await;
        append(&on_b, 3).await.unwrap();
        drop(on_b);
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 4);
        assert_eq!(count(&cluster, "a").await, 0, "nothing comes back to a");
        cluster.assert_quiet().await;
    });
}

async fn annotations(cluster: &Cluster, node: &str) -> Vec<(String, Vec<u8>)> {
    let dump = cluster.dump(node).await;
    dump.mailboxes[&("alice".to_string(), "INBOX".to_string())]
        .annotations
        .clone()
}

/// Engine bug 27 (simulator --wipes --locations, seeds 262 and 276): chain a-b-c; c writes an
/// annotation, which reaches b and a; the mailbox moves to {a}, so b and c let their copies go
/// (the purge deletes the annotation there). With a down, it moves to {a, c}: c holds it again, b
/// relays, and they have nothing to send each other. When a is back, b takes the annotation from
/// it, but skipped c, the node that made it, as already having it: c's own acknowledged write was
/// gone on c for good. Now a node's leaving register written back to false dates its let-go, and
/// an older state is sent to it again.
#[test]
fn a_node_holding_a_mailbox_again_gets_back_its_own_writes_it_let_go() {
    run_virtual(|| async {
        let mut cluster = Cluster::chain(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        let on_c = open(&cluster, "c").await;
        on_c.send(SetAnnotation {
            entry: "/shared/comment".into(),
            value: Some(b"from c".to_vec()),
        })
        .await
        .unwrap()
        .unwrap();
        drop(on_c);
        cluster.settle().await;
        let written = vec![("/shared/comment".to_string(), b"from c".to_vec())];
        for node in ["a", "b", "c"] {
            assert_eq!(annotations(&cluster, node).await, written, "on {node}");
        }

        place_on(&cluster, "a", &["a"]).await;
        cluster.settle().await;
        for node in ["b", "c"] {
            let mut waited = 0;
            while !annotations(&cluster, node).await.is_empty() {
                waited += 1;
                assert!(waited < 120, "{node} never let its copy go");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }

        cluster.stop("a").await;
        place_on(&cluster, "c", &["a", "c"]).await;
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        cluster.restart("a");
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            let mut waited = 0;
            while annotations(&cluster, node).await != written {
                waited += 1;
                assert!(
                    waited < 120,
                    "{node}, holding the mailbox again, lacks the annotation"
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        cluster.assert_quiet().await;
    });
}

/// Engine bug 28 (simulator --wipes --locations, seed 267; --locations, seed 909): a and b hold
/// alice's INBOX; it is moved to c, which neither has a link to yet. Both old holders are
/// leaving, each counted the other as a holder, drained its sync log to it and purged: the
/// message was gone from every node. Now a copy goes only once a peer that keeps the mailbox (a
/// holder not itself leaving) has acknowledged all of it, so both copies wait for c; when a
/// gets a link to c it sends the mailbox there, and only then do a and b let go.
#[test]
fn old_holders_leaving_together_keep_their_copies_until_a_staying_holder_has_them() {
    run_virtual(|| async {
        let mut cluster = Cluster::start(&["a", "b", "c"], &[("a", "b")]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        place_on(&cluster, "a", &["a", "b"]).await;
        cluster.settle().await;
        wait_for_count(&cluster, "b", 3, "b holds the messages").await;

        place_on(&cluster, "a", &["c"]).await;
        // Not `settle`: both copies are being let go, and wait for c for as long as it takes.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            count(&cluster, "a").await,
            3,
            "a keeps its copy: no one that stays has it"
        );
        assert_eq!(
            count(&cluster, "b").await,
            3,
            "b keeps its copy: no one that stays has it"
        );

        reconfigure(&mut cluster, "a", &["b", "c"]);
        reconfigure(&mut cluster, "c", &["a"]);
        cluster.settle().await;
        wait_for_count(&cluster, "c", 3, "the new location gets the messages").await;
        wait_for_count(&cluster, "a", 0, "a lets its copy go").await;
        wait_for_count(&cluster, "b", 0, "b lets its copy go").await;
        cluster.assert_quiet().await;
    });
}

/// Engine bug 29 (simulator, seed 1651): a, b and c hold alice's INBOX; it moves to b while c is
/// down. a hands everything to b (b's cache on a says so) but waits for its rows for c. a stops;
/// b loses its disk and comes back empty; a restarts without c in its configuration. Before
/// the fix a let its copy go at once on the strength of b's cache, from before b's wipe, and
/// the messages were gone from every node. Now a trusts a peer's cache only after that peer's
/// Hello since a started: b's new store is seen, everything is queued for it again, and a lets
/// go only once b has it.
#[test]
fn a_copy_is_not_let_go_on_the_cache_of_a_peer_wiped_while_this_node_was_down() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        cluster.stop("c").await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        place_on(&cluster, "a", &["b"]).await;
        wait_for_count(&cluster, "b", 3, "b, the new location, has the messages").await;
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        assert_eq!(count(&cluster, "a").await, 3, "a waits for its rows for c");

        cluster.stop("a").await;
        cluster.stop("b").await;
        cluster.wipe("b");
        cluster.neighbours.insert(n("a"), vec![n("b")]);
        cluster.neighbours.insert(n("b"), vec![n("a")]);
        cluster.restart("b");
        cluster.restart("a");
        cluster.settle().await;
        wait_for_count(
            &cluster,
            "b",
            3,
            "the wiped location gets the messages back from a",
        )
        .await;
        wait_for_count(&cluster, "a", 0, "and only then does a let its copy go").await;
    });
}

/// Engine bug 30 (simulator --locations, seed 150): b shows a's message X at uid 1; c, cut off,
/// appends Y, also at uid 1. b lets its copy go (moved to {a, c}), then, with a (the primary)
/// down, holds it again and gets the mailbox from c: only Y, at uid 1. Before the fix b showed
/// Y at uid 1, where its clients had seen X. Now a copy let go remembers what it showed at each
/// uid: held again it shows nothing at uid 1 until X is back or the primary settles the uid;
/// when a is back it promotes both messages and every node shows both.
#[test]
fn a_copy_held_again_shows_no_other_message_at_a_uid_it_showed_before() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        reconfigure(&mut cluster, "a", &["b"]);
        reconfigure(&mut cluster, "b", &["a"]);
        reconfigure(&mut cluster, "c", &[]);
        cluster.settle().await;
        let x = append(&open(&cluster, "a").await, 0).await.unwrap();
        let y = append(&open(&cluster, "c").await, 1).await.unwrap();
        assert_eq!((x.uid, y.uid), (Uid(1), Uid(1)), "both at uid 1");
        cluster.settle().await;
        let on_b = cluster.dump("b").await;
        let shown = &on_b.mailboxes[&("alice".to_string(), "INBOX".to_string())].messages;
        assert_eq!(
            shown.iter().map(|m| (m.0, m.1.clone())).collect::<Vec<_>>(),
            [(Uid(1), x.append_id.clone())]
        );

        place_on(&cluster, "a", &["a", "c"]).await;
        wait_for_count(&cluster, "b", 0, "b lets its copy go").await;
        cluster.stop("a").await;
        reconfigure(&mut cluster, "b", &["c"]);
        reconfigure(&mut cluster, "c", &["b"]);
        cluster.settle().await;
        place_on(&cluster, "b", &["a", "b", "c"]).await;
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 1, "c holds Y");
        let on_b = cluster.dump("b").await;
        let shown = &on_b.mailboxes[&("alice".to_string(), "INBOX".to_string())].messages;
        assert!(
            !shown.iter().any(|m| m.0 == Uid(1) && m.1 != x.append_id),
            "b shows another message at uid 1 than the one it showed there: {shown:?}"
        );

        cluster.neighbours.insert(n("a"), vec![n("b"), n("c")]);
        cluster.restart("a");
        reconfigure(&mut cluster, "b", &["a", "c"]);
        reconfigure(&mut cluster, "c", &["a", "b"]);
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            wait_for_count(&cluster, node, 2, "the primary settles uid 1: both messages show").await;
        }
        cluster.assert_converged().await;
    });
}

/// Engine bug 37 (simulator seeds 14875, 16184): as in bug 30, b shows a's message X at uid 1
/// and c, cut off, appends Y at uid 1; b lets its copy go. Then a, the only disk holding X, is
/// wiped. Held again, b remembers X at uid 1 and hides Y there, waiting for the primary to
/// settle the uid; but the primary (a, wiped) sees no conflict, since no disk holds X any more,
/// and never did: Y stayed hidden on b for good. Now such a copy, not the primary, retires the
/// uid, so the primary promotes Y to a fresh uid that every node shows.
#[test]
fn a_copy_held_again_remembering_a_message_lost_to_wipes_gets_the_live_one_promoted() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        reconfigure(&mut cluster, "a", &["b"]);
        reconfigure(&mut cluster, "b", &["a"]);
        reconfigure(&mut cluster, "c", &[]);
        cluster.settle().await;
        let x = append(&open(&cluster, "a").await, 0).await.unwrap();
        let y = append(&open(&cluster, "c").await, 1).await.unwrap();
        assert_eq!((x.uid, y.uid), (Uid(1), Uid(1)), "both at uid 1");
        cluster.settle().await;
        wait_for_count(&cluster, "b", 1, "b shows X").await;

        place_on(&cluster, "a", &["a", "c"]).await;
        wait_for_count(&cluster, "b", 0, "b lets its copy go").await;
        // a, the only disk holding X, is lost and comes back empty.
        cluster.stop("a").await;
        cluster.wipe("a");
        cluster.neighbours.insert(n("a"), vec![n("b"), n("c")]);
        cluster.restart("a");
        reconfigure(&mut cluster, "b", &["a", "c"]);
        reconfigure(&mut cluster, "c", &["a", "b"]);
        cluster.settle().await;
        place_on(&cluster, "b", &["a", "b", "c"]).await;
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            wait_for_count(&cluster, node, 1, "Y shows everywhere, b included").await;
        }
        let dump = cluster.assert_converged().await;
        let shown = &dump.mailboxes[&("alice".to_string(), "INBOX".to_string())].messages;
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].1, y.append_id, "the live message is Y");
        assert_ne!(shown[0].0, Uid(1), "promoted: b's clients saw X at uid 1");
    });
}

/// Engine bug 31 (simulator --wipes --locations, seed 80): ring a-b-c-d-e-f-a with alice's INBOX
/// on every node, then placed on {b, c, e}: d relays between c and e, and a and f let their
/// copies go. The relays used to be computed from the locations and the leaving nodes together,
/// so a leaving node changed the locations' own relays: with f leaving, the group {b, c} reached
/// {e, f} through a (d not needed); with a leaving, {a, b, c} reached e through f. Whichever of a
/// and f let go first became, by that very write, the relay the other's leaving needed: it got
/// the mailbox back, and once the other had let go it was not needed, left, and made the other a
/// relay again, each release poll (seed 80 never went quiet; here, with f's link to e down so
/// that a lets go first, a held the mailbox again and let it go three times in the first two
/// minutes). Now the locations' relays are fixed by the locations alone, and a leaving node only
/// adds a path of its own to them, through nodes nearer to them than itself.
#[test]
fn copies_let_go_on_a_ring_do_not_make_each_other_relays_for_ever() {
    run_virtual(|| async {
        let names = ["a", "b", "c", "d", "e", "f"];
        let ring = [
            ("a", "b"),
            ("b", "c"),
            ("c", "d"),
            ("d", "e"),
            ("e", "f"),
            ("f", "a"),
        ];
        let cluster = Cluster::start(&names, &ring);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        cluster.settle().await;
        for node in names {
            assert_eq!(count(&cluster, node).await, 3, "on {node} before the move");
        }

        // f hears of the move only through a, so a lets go first and f is still leaving after.
        cluster.net.set_link(&n("e"), &n("f"), false);
        place_on(&cluster, "b", &["b", "c", "e"]).await;
        // Not `settle`: f may wait for e to have its copy for as long as the link is down.
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
        let seen = holders(&cluster, "b").await;
        assert!(
            !seen.contains(&"a".to_string()) && seen.contains(&"d".to_string()),
            "a let its copy go and is no relay of f's; d stays the locations' relay: {seen:?}"
        );
        assert_eq!(count(&cluster, "a").await, 0, "a got the mailbox back");
        assert_eq!(count(&cluster, "d").await, 3, "d relays between c and e");

        cluster.net.set_link(&n("e"), &n("f"), true);
        // `settle` counts a channel waiting for its link as idle: first let e and f see the
        // link back (their channels retry with backoff).
        for (from, to) in [("e", "f"), ("f", "e")] {
            let mut waited = 0;
            while !cluster.node(from).channel_stats().await[&n(to)].link_up {
                waited += 1;
                assert!(waited < 600, "{from} never saw its link to {to} back");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        cluster.settle().await;
        for node in names {
            assert_eq!(
                holders(&cluster, node).await,
                ["b", "c", "d", "e"],
                "as {node} sees it: the locations and d, their relay"
            );
        }
        for node in ["b", "c", "d", "e"] {
            assert_eq!(count(&cluster, node).await, 3, "on {node}");
        }
        for node in ["a", "f"] {
            assert_eq!(count(&cluster, node).await, 0, "{node} let its copy go");
        }
        cluster.assert_quiet().await;
    });
}

/// Engine bug 36 (simulator, seed 8921): a and b hold alice's INBOX, each has acknowledged all
/// of the other's copy, and the link between them goes down. On a the mailbox is placed on
/// {b}; on b, at the same time, on {a}. Each let its copy go on the strength of the other's
/// replication cache (a keeper, by its own entry), and the messages were gone from every node
/// once the link came back. Now a copy goes only after the keeper itself answers, after this
/// node started leaving, that it still holds a copy and is not letting it go: with the link
/// down neither gets that answer, so both keep their copies, and when the link is back the
/// entries merge and the mailbox stays where the winning placement says, messages and all.
#[test]
fn two_holders_placing_the_mailbox_on_each_other_while_cut_off_keep_it() {
    run_virtual(|| async {
        let cluster = Cluster::full_mesh(&["a", "b"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        let on_a = open(&cluster, "a").await;
        for i in 0..3 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        cluster.settle().await;
        wait_for_count(&cluster, "b", 3, "b holds the messages").await;

        cluster.net.set_link(&n("a"), &n("b"), false);
        place_on(&cluster, "a", &["b"]).await;
        place_on(&cluster, "b", &["a"]).await;
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            count(&cluster, "a").await,
            3,
            "a keeps its copy: b has not said it keeps one"
        );
        assert_eq!(
            count(&cluster, "b").await,
            3,
            "b keeps its copy: a has not said it keeps one"
        );

        cluster.net.set_link(&n("a"), &n("b"), true);
        cluster.settle().await;
        let held: usize = count(&cluster, "a").await + count(&cluster, "b").await;
        assert_eq!(held, 3, "one node holds the messages, the other let its copy go");
        cluster.assert_quiet().await;
    });
}

/// Engine bug 34 (simulator, seed 5990): a and b hold alice's INBOX, and a has everything b
/// has (b's replication cache of a says so). The link between them is cut; a loses its disk and
/// comes back empty behind the cut, so b hears nothing of it. The INBOX then moves to a alone.
/// Before the fix b let its copy go at once on the strength of a's cache, from before a's wipe,
/// and the message and the annotation, which only b still held, were gone from every node once
/// the link was back. Now (engine bug 36's change) b lets go only once a itself answers that it
/// keeps the mailbox, with the store incarnation b greeted: none answers while the link is cut,
/// and after the heal a's Hello shows a new store, so everything is sent to a again first.
#[test]
fn a_copy_is_not_let_go_on_the_cache_of_a_peer_wiped_behind_a_cut_link() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b"]);
        create_inbox(&cluster, "a").await;
        cluster.settle().await;
        let on_b = open(&cluster, "b").await;
        append(&on_b, 0).await.unwrap();
        on_b.send(SetAnnotation {
            entry: "/private/color".into(),
            value: Some(b"blue".to_vec()),
        })
        .await
        .unwrap()
        .unwrap();
        drop(on_b);
        cluster.settle().await;
        wait_for_count(&cluster, "a", 1, "a has b's message").await;

        cluster.net.set_link(&n("a"), &n("b"), false);
        cluster.stop("a").await;
        cluster.wipe("a");
        cluster.restart("a");
        place_on(&cluster, "b", &["a"]).await;
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            count(&cluster, "b").await,
            1,
            "b keeps its copy while it cannot hear from a"
        );

        cluster.net.set_link(&n("a"), &n("b"), true);
        cluster.settle().await;
        wait_for_count(
            &cluster,
            "a",
            1,
            "the wiped location gets the message back from b",
        )
        .await;
        wait_for_count(&cluster, "b", 0, "and only then does b let its copy go").await;
        let on_a = cluster.dump("a").await;
        assert_eq!(
            on_a.mailboxes[&("alice".to_string(), "INBOX".to_string())].annotations,
            [("/private/color".to_string(), b"blue".to_vec())],
            "the annotation is back on a"
        );
        cluster.assert_quiet().await;
    });
}

/// A node that let its copy go, with a uid retired (an expunge compacted) behind it, pulls
/// nothing back into it when a wiped peer returns and it queues the mailbox for it again
/// (engine bug 38, simulator seed 21385: the retired uids a released copy keeps counted as a
/// copy, so the full sync took the peer's records into a copy nobody would purge again, and it
/// went on showing and pushing a message expunged everywhere else).
#[test]
fn a_node_that_let_its_copy_go_pulls_nothing_back_when_a_wiped_peer_returns() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        let on_a = open(&cluster, "a").await;
        for i in 0..4 {
            append(&on_a, i).await.unwrap();
        }
        // An expunge, compacted once every holder has it: its uid stays retired on a.
        on_a.send(Expunge {
            mode: ExpungeMode::Uids(UidSet::single(Uid(4))),
        })
        .await
        .unwrap()
        .unwrap();
        drop(on_a);
        cluster.settle().await;
        place_on(&cluster, "a", &["b", "c"]).await;
        cluster.settle().await;
        wait_for_count(&cluster, "a", 0, "a lets its copy go").await;

        // c is wiped while a cannot reach it, and gets the mailbox back from b.
        cluster.net.set_link(&n("a"), &n("c"), false);
        cluster.stop("c").await;
        cluster.wipe("c");
        cluster.restart("c");
        wait_for_count(&cluster, "c", 3, "b refills the wiped c").await;
        // a meets c's new store and queues everything for it again, this mailbox included.
        cluster.net.set_link(&n("a"), &n("c"), true);
        // The channels retry the link after their backoff (virtual time), then settle.
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
        cluster.settle().await;
        assert_eq!(count(&cluster, "a").await, 0);
        let on_a = open(&cluster, "a").await;
        let state = on_a.send(GetState).await.unwrap().unwrap();
        let kept = on_a.send(GetPruned).await.unwrap().unwrap();
        assert_eq!(kept.iter().count(), 1, "a keeps the expunge it saw");
        assert_eq!(
            state.digest.records, 1,
            "a, outside the holders, pulled c's records back into the copy it let go"
        );
        cluster.assert_quiet().await;
    });
}

/// A copy let go keeps the expunges it saw, not only the uids they retired: held again while
/// the node that took it over is away, it refuses a stale peer's live record of a message it
/// saw expunged, and tells that peer (simulator seed 1209 with --steps 300: a move's sources,
/// expunged while one node was down, came back on the only holder, a node that had let its copy
/// go and been given the mailbox again, when the node that missed the move returned).
#[test]
fn a_copy_held_again_keeps_the_expunges_it_saw_from_a_stale_peer() {
    run_virtual(|| async {
        let mut cluster = Cluster::full_mesh(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        let on_a = open(&cluster, "a").await;
        for i in 0..2 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        cluster.settle().await;
        wait_for_count(&cluster, "c", 2, "c has both messages").await;

        // c is taken out of the topology and misses the expunge of uid 2, so nobody compacts it.
        reconfigure(&mut cluster, "a", &["b"]);
        reconfigure(&mut cluster, "b", &["a"]);
        reconfigure(&mut cluster, "c", &[]);
        open(&cluster, "a")
            .await
            .send(Expunge {
                mode: ExpungeMode::Uids(UidSet::single(Uid(2))),
            })
            .await
            .unwrap()
            .unwrap();
        cluster.settle().await;
        // a hands the mailbox to b and lets its copy go, expunged record and all.
        place_on(&cluster, "a", &["b"]).await;
        cluster.settle().await;
        wait_for_count(&cluster, "a", 0, "a lets its copy go").await;
        let kept = open(&cluster, "a").await.send(GetPruned).await.unwrap().unwrap();
        assert_eq!(
            kept.iter().count(),
            1,
            "a keeps the expunge it let go with its copy"
        );

        // b goes away with everything it knows; the mailbox is placed back on a alone.
        reconfigure(&mut cluster, "a", &[]);
        reconfigure(&mut cluster, "b", &[]);
        place_on(&cluster, "a", &["a"]).await;
        cluster.settle().await;
        // c returns with its live record of the expunged message.
        reconfigure(&mut cluster, "a", &["c"]);
        reconfigure(&mut cluster, "c", &["a"]);
        cluster.settle().await;
        assert_eq!(
            count(&cluster, "a").await,
            1,
            "a shows the message it saw expunged again, from c's stale record"
        );
        assert_eq!(count(&cluster, "c").await, 0, "c lets its copy go");

        for (node, peers) in [("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"])] {
            reconfigure(&mut cluster, node, &peers);
        }
        cluster.settle().await;
        for node in ["a", "b", "c"] {
            let want = usize::from(node == "a");
            assert_eq!(
                count(&cluster, node).await,
                want,
                "{node} after the partition heals"
            );
        }
        cluster.assert_quiet().await;
    });
}

/// A node outside the holders with no copy refuses what its channel pulls, and its channel then
/// ends the sync with no replication cache: a cache saved after a refused pull says the node has
/// the peer's state, the peer believes it when the node next sends a change, and what the peer
/// had then never reaches the node once it holds or relays the mailbox (simulator seed 2886 with
/// --steps 300: an annotation stopped short of a relay and the holder behind it).
#[test]
fn a_node_without_a_copy_claims_nothing_of_a_peer_state_it_refused() {
    run_virtual(|| async {
        // c hears of the mailbox through b, and meets a only later: its first contact queues
        // for a every mailbox a holds.
        let mut cluster = Cluster::chain(&["a", "b", "c"]);
        create_inbox(&cluster, "a").await;
        place_on(&cluster, "a", &["a", "b"]).await;
        let on_a = open(&cluster, "a").await;
        for i in 0..2 {
            append(&on_a, i).await.unwrap();
        }
        drop(on_a);
        cluster.settle().await;

        reconfigure(&mut cluster, "a", &["b", "c"]);
        reconfigure(&mut cluster, "c", &["b", "a"]);
        cluster.settle().await;
        assert_eq!(
            count(&cluster, "c").await,
            0,
            "c, outside the holders, took a copy"
        );
        let mut caches = Vec::new();
        cluster
            .node("c")
            .store
            .scan_prefix(Table::ReplCache, &[], None, |k, _| {
                caches.push(String::from_utf8_lossy(&k[16..]).into_owned());
                Ok(true)
            })
            .unwrap();
        assert_eq!(
            caches,
            Vec::<String>::new(),
            "c saved a cache of a peer's copy whose records it refused"
        );

        // Placed on c too, c gets every message.
        place_on(&cluster, "a", &["a", "b", "c"]).await;
        cluster.settle().await;
        assert_eq!(count(&cluster, "c").await, 2);
        cluster.assert_quiet().await;
    });
}
