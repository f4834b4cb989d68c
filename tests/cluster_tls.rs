//! Mutual TLS between real nodes: a peer is admitted only with a certificate from the cluster's
//! CA that names a configured peer; every refusal is logged with the check that failed, and the
//! node keeps serving its good peers.

mod support;

use support::cluster::{cluster_specs, make_ca, make_node_cert, NodeSpec};
use tempfile::TempDir;

#[test]
fn certificates_from_another_ca_or_for_another_name_are_refused_and_good_peers_still_link() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2", "n9"]);
    let (n1, n2, n9) = (&specs[0], &specs[1], &specs[2]);

    // "n3" is configured on n1, but the node that answers as n3 has a certificate from another
    // CA (and trusts only that CA).
    let rogue_ca = tmp.path().join("rogue-ca");
    let rogue_certs = tmp.path().join("rogue-certs");
    make_ca(&rogue_ca);
    make_node_cert("n3", &rogue_ca, &rogue_certs);
    let n3 = NodeSpec::new(tmp.path(), "n3", &rogue_ca, &rogue_certs);

    n1.write_config(&[n2, &n3]);
    n2.write_config(&[n1]);
    n3.write_config(&[n1]);
    // n9 has a valid certificate of this cluster, for its own name, which n1 does not list.
    n9.write_config(&[n1]);

    let mut node1 = n1.start();
    let mut node3 = n3.start();
    let unknown_ca = node1.wait_for_stderr("peer certificate refused");
    assert!(unknown_ca.contains("unknown CA"), "{unknown_ca}");
    // n3 refuses n1's certificate for the same reason, seen from its side.
    let seen_by_rogue = node3.wait_for_stderr("peer certificate refused");
    assert!(seen_by_rogue.contains("unknown CA"), "{seen_by_rogue}");

    let mut node9 = n9.start();
    let wrong_name = node1.wait_for_stderr("wrong name");
    assert!(wrong_name.contains("peer certificate refused"), "{wrong_name}");
    assert!(wrong_name.contains("side=\"inbound\""), "{wrong_name}");
    // n9 learns that n1 would not have it; it never gets a link.
    node9.wait_for_stderr("cannot reach peer");

    // The good peer links up, in spite of the refused ones around it.
    let mut node2 = n2.start();
    node1.wait_for_link("link up", "n2");
    node2.wait_for_link("link up", "n1");
    assert!(node1
        .stderr_lines("link up")
        .iter()
        .all(|l| l.contains("peer=n2")));
    assert!(node3.stderr_lines("link up").is_empty());
    assert!(node9.stderr_lines("link up").is_empty());

    for mut node in [node1, node2, node3, node9] {
        assert!(node.is_running());
        node.signal(libc::SIGTERM);
        node.wait().expect_code(0).expect_no_panic();
    }
}
