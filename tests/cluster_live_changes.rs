//! Certificates and addresses of running nodes: an expired certificate is refused with a log
//! line saying so, a certificate renewed on disk is taken on reload without a restart, and a
//! changed listen address is applied on reload.

mod support;

use std::path::Path;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use support::cluster::{
    append, cluster_specs, converged, create_everywhere, eventually, free_udp_port, make_node_cert, op_ok,
    stop_all, write_atomically, write_mesh_configs, NodeSpec,
};
use support::quic::{certificate_chain, client_config, runtime};
use tempfile::TempDir;

const USER: &str = "alice";

/// Writes `out/NAME.pem` and `out/NAME.key`: a certificate for `name`, signed by the CA in
/// `ca`, as `mailmesh certs node` makes them, except that it expired yesterday. (The command
/// itself only makes certificates valid from now on, so the test signs this one itself.)
fn expired_node_cert(ca: &Path, name: &str, out: &Path) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca.key")).unwrap()).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(ca.join("ca.pem")).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join(format!("{name}.pem")), cert.pem()).unwrap();
    let key_path = out.join(format!("{name}.key"));
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn an_expired_certificate_is_refused_with_a_log_line_saying_expired() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    let (n1, n2) = (&specs[0], &specs[1]);
    n1.write_config(&[n2]);
    let mut node1 = n1.start();

    // Someone dials n1 as n2, with a certificate of n2 from the right CA that expired yesterday.
    let expired = tmp.path().join("expired");
    expired_node_cert(&n1.ca, "n2", &expired);
    runtime().block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = client_config(&n1.ca, &expired, "n2");
        // TLS 1.3 lets the client finish before the server has judged its certificate: the
        // refusal then shows as n1 closing the connection.
        if let Ok(conn) = endpoint
            .connect_with(config, n1.address().parse().unwrap(), "n1")
            .unwrap()
            .await
        {
            let closed = tokio::time::timeout(support::DEADLINE, conn.closed())
                .await
                .expect("n1 closes a connection whose certificate it refused");
            assert!(
                !matches!(closed, quinn::ConnectionError::LocallyClosed),
                "{closed}"
            );
        }
        endpoint.wait_idle().await;
    });
    let refused = node1.wait_for_stderr("peer certificate refused");
    assert!(refused.contains("check=expired"), "{refused}");
    assert!(refused.contains("side=\"inbound\""), "{refused}");
    assert!(node1.stderr_lines("link up").is_empty(), "{}", node1.stderr());

    // n1 goes on serving: the real n2, with its good certificate, links up.
    n2.write_config(&[n1]);
    let mut node2 = n2.start();
    node1.wait_for_link("link up", "n2");
    node2.wait_for_link("link up", "n1");
    stop_all(vec![node1, node2]);
}

/// The certificate `node` presents to a new connection from a configured peer, `as_peer`, whose
/// certificate is in `certs`.
fn presented_certificate(node: &NodeSpec, as_peer: &str, certs: &Path) -> Vec<u8> {
    runtime().block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = client_config(&node.ca, certs, as_peer);
        let conn = endpoint
            .connect_with(config, node.address().parse().unwrap(), &node.name)
            .unwrap()
            .await
            .expect("a TLS handshake with a configured peer's certificate");
        let chain = conn
            .peer_identity()
            .expect("the node presented a certificate")
            .downcast::<Vec<CertificateDer<'static>>>()
            .expect("rustls certificates");
        conn.close(0u32.into(), b"seen");
        endpoint.wait_idle().await;
        chain[0].as_ref().to_vec()
    })
}

#[test]
fn a_certificate_renewed_on_disk_is_taken_on_reload_without_a_restart() {
    let tmp = TempDir::new().unwrap();
    // n9 is a peer n2 accepts but that never runs: the test presents its certificate to look at
    // the one n2 presents, without taking n1's place.
    let specs = cluster_specs(tmp.path(), &["n1", "n2", "n9"]);
    let (n1, n2, n9) = (&specs[0], &specs[1], &specs[2]);
    n1.write_config(&[n2]);
    n2.write_config(&[n1, n9]);
    let node1 = n1.start();
    let mut node2 = n2.start();
    node2.wait_for_link("link up", "n1");
    let pid = node2.pid();
    let cert_file = n2.certs.join("n2.pem");
    let before = certificate_chain(&cert_file)[0].as_ref().to_vec();
    assert_eq!(presented_certificate(n2, "n9", &n9.certs), before);

    // A new certificate and key for n2 (a fresh key pair, as a renewal makes), put in place of
    // the old files, then SIGHUP.
    let renewed = tmp.path().join("renewed");
    make_node_cert("n2", &n2.ca, &renewed);
    for file in ["n2.key", "n2.pem"] {
        let text = std::fs::read_to_string(renewed.join(file)).unwrap();
        write_atomically(&n2.certs.join(file), &text);
    }
    let after = certificate_chain(&cert_file)[0].as_ref().to_vec();
    assert_ne!(after, before);
    node2.signal(libc::SIGHUP);
    node2.wait_for_stderr("configuration reloaded");
    assert_eq!(
        presented_certificate(n2, "n9", &n9.certs),
        after,
        "n2 still presents its old certificate"
    );
    assert_eq!(node2.pid(), pid);
    assert_eq!(node2.stderr_lines("node ready").len(), 1, "n2 restarted");

    // Replication between n1 and n2 goes on.
    create_everywhere(n1, &[n1, n2], USER, "INBOX");
    append(n2, USER, "INBOX", "after-renewal");
    converged(&[n1, n2], USER, "INBOX", 1);
    stop_all(vec![node1, node2]);
}

#[test]
fn a_changed_listen_address_is_applied_on_reload() {
    let tmp = TempDir::new().unwrap();
    let specs = cluster_specs(tmp.path(), &["n1", "n2"]);
    write_mesh_configs(&specs);
    let (n1, n2) = (&specs[0], &specs[1]);
    let node1 = n1.start();
    let mut node2 = n2.start();
    node2.wait_for_link("link up", "n1");
    create_everywhere(n1, &[n1, n2], USER, "INBOX");

    // n2 moves to another port: its own file says where it listens now, n1's where to find it.
    let old_port = n2.port;
    let mut moved = n2.clone();
    moved.port = free_udp_port();
    write_atomically(&moved.config_path(), &moved.config_text(&[n1]));
    node2.signal(libc::SIGHUP);
    let listening = node2.wait_for_stderr("on the new address");
    assert!(
        listening.contains(&format!("listen=127.0.0.1:{}", moved.port)),
        "{listening}"
    );
    n1.write_config(&[&moved]);

    // n1 reaches n2 at the new port, and n2 lets go of the old one (QUIC keeps it until
    // packets arrive on the new one).
    append(n1, USER, "INBOX", "after-the-move");
    append(&moved, USER, "INBOX", "from-the-new-address");
    converged(&[n1, &moved], USER, "INBOX", 2);
    eventually("n2's old port free again", || {
        std::net::UdpSocket::bind(("127.0.0.1", old_port))
            .map(drop)
            .map_err(|e| e.to_string())
    });
    eventually("n1 shows n2 connected at its new address", || {
        let status: serde_json::Value = serde_json::from_str(&op_ok(n1, &["status", "--json"])).unwrap();
        let row = status["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "n2")
            .cloned()
            .unwrap_or_default();
        if row["connected"] == serde_json::json!(true) && row["address"] == moved.address() {
            Ok(())
        } else {
            Err(format!("{status:#}"))
        }
    });
    assert!(node2.stderr_lines("node ready").len() == 1, "n2 restarted");
    stop_all(vec![node1, node2]);
}
