//! A mail client's whole session against a real `mailmesh run`, driven by a Rust IMAP client no
//! one here wrote (`async-imap`, over implicit TLS with `tokio-rustls` trusting the node's test
//! CA): LOGIN, CAPABILITY, LIST, CREATE, SELECT, APPEND of a multipart message, FETCH of flags,
//! envelope, body structure and parts, STORE, SEARCH, COPY, MOVE, EXPUNGE, IDLE told of an LMTP
//! delivery and of another session's APPEND, LOGOUT. Each answer is checked for its exact value,
//! as the client library parsed it.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use async_imap::imap_proto::{BodyStructure, MailboxDatum, NameAttribute, Response, SectionPath};
use async_imap::types::Flag;
use async_imap::{Client, Session};
use futures_util::TryStreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use support::imap_node::{tls_section, ImapNode};
use support::{lmtp_deliver, DEADLINE};

type Tls = TlsStream<TcpStream>;

/// A multipart message with a non-ASCII subject (RFC 2047) and a PDF attachment.
const MULTIPART: &str = "From: =?UTF-8?B?SsO8cmdlbg==?= <jm@example.org>\r\n\
To: alice@example.org\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\
Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\
Message-ID: <m1@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Gr=C3=BC=C3=9Fe\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"r.pdf\"\r\n\
Content-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--outer--\r\n";

/// A TLS connection to `target` trusting only the CA in `ca_pem`, the node's name (`n1`) checked.
async fn connect(target: &str, ca_pem: &std::path::Path) -> Client<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(target).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("n1").unwrap(), tcp)
        .await
        .unwrap();
    let mut client = Client::new(tls);
    // async-imap leaves the greeting to its caller.
    let greeting = client.read_response().await.unwrap().unwrap();
    assert!(
        matches!(greeting.parsed(), Response::Data { .. }),
        "{:?}",
        greeting.parsed()
    );
    client
}

async fn login(target: &str, ca_pem: &std::path::Path) -> Session<Tls> {
    connect(target, ca_pem)
        .await
        .login("alice", "secret")
        .await
        .map_err(|(e, _)| e)
        .unwrap()
}

/// The flags of a FETCH answer as their IMAP text.
fn flag_names(fetch: &async_imap::types::Fetch) -> Vec<String> {
    fetch
        .flags()
        .map(|flag| match flag {
            Flag::Seen => "\\Seen".to_string(),
            Flag::Answered => "\\Answered".to_string(),
            Flag::Flagged => "\\Flagged".to_string(),
            Flag::Deleted => "\\Deleted".to_string(),
            Flag::Draft => "\\Draft".to_string(),
            Flag::Recent => "\\Recent".to_string(),
            Flag::MayCreate => "\\*".to_string(),
            Flag::Custom(name) => name.to_string(),
        })
        .collect()
}

fn set<T: std::hash::Hash + Eq + Copy>(items: &[T]) -> HashSet<T> {
    items.iter().copied().collect()
}

/// Waits, idling, for the first untagged answer the server pushes, and returns it as text.
async fn next_push(idle: &mut async_imap::extensions::idle::Handle<Tls>) -> String {
    let (wait, _stop) = idle.wait_with_timeout(DEADLINE);
    match wait.await.unwrap() {
        async_imap::extensions::idle::IdleResponse::NewData(data) => match data.parsed() {
            Response::MailboxData(MailboxDatum::Exists(n)) => format!("EXISTS {n}"),
            other => format!("{other:?}"),
        },
        other => panic!("no push within the deadline: {other:?}"),
    }
}

#[test]
fn a_rust_imap_client_runs_a_whole_session_over_implicit_tls() {
    let certs = tempfile::TempDir::new().unwrap();
    let mut n = ImapNode::start(&tls_section(certs.path()), "");
    let implicit = n.imap(2);
    let lmtp = n.lmtp.clone();
    let ca_pem = certs.path().join("ca").join("ca.pem");
    // One message waiting in INBOX before the client comes.
    assert!(lmtp_deliver(&lmtp, "alice@example.org", "welcome").starts_with("250"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A wrong password is refused and the same connection can log in after.
        let client = connect(&implicit, &ca_pem).await;
        let (error, client) = client.login("alice", "nope").await.err().unwrap();
        assert!(error.to_string().contains("AUTHENTICATIONFAILED"), "{error}");
        let mut s = client.login("alice", "secret").await.map_err(|(e, _)| e).unwrap();

        let caps = s.capabilities().await.unwrap();
        let names: Vec<String> = caps.iter().map(|c| format!("{c:?}")).collect();
        for cap in [
            "IMAP4rev1",
            "IDLE",
            "MOVE",
            "UIDPLUS",
            "CONDSTORE",
            "QRESYNC",
            "LITERAL+",
            "SPECIAL-USE",
            "ESEARCH",
            "OBJECTID",
        ] {
            assert!(caps.has_str(cap), "no {cap}: {names:?}");
        }
        assert!(!caps.has_str("STARTTLS"), "TLS is already on: {names:?}");

        s.create("Archive").await.unwrap();
        let names: Vec<_> = s
            .list(Some(""), Some("*"))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut listed: Vec<(String, Vec<String>)> = names
            .iter()
            .map(|name| {
                // Names RFC 3501 has no variant for (CHILDREN's) come as their text.
                let attrs = name
                    .attributes()
                    .iter()
                    .map(|a| match a {
                        NameAttribute::Extension(text) => text.to_string(),
                        other => format!("\\{other:?}"),
                    })
                    .collect();
                (name.name().to_string(), attrs)
            })
            .collect();
        listed.sort();
        // Archive is the configured \Archive mailbox (SPECIAL-USE's default names).
        assert_eq!(
            listed,
            vec![
                (
                    "Archive".to_string(),
                    vec!["\\HasNoChildren".to_string(), "\\Archive".to_string()]
                ),
                ("INBOX".to_string(), vec!["\\HasNoChildren".to_string()]),
            ],
        );
        assert!(names.iter().all(|n| n.delimiter() == Some("/")));

        let inbox = s.select("INBOX").await.unwrap();
        assert_eq!(inbox.exists, 1);
        assert_eq!(inbox.uid_next, Some(2));
        // RFC 3501 6.3.1's [UNSEEN n]: the first message without \Seen.
        assert_eq!(inbox.unseen, Some(1));
        assert!(inbox.uid_validity.is_some());

        s.append("INBOX", Some("(\\Flagged)"), None, MULTIPART)
            .await
            .unwrap();
        // The APPEND to the selected mailbox is announced (RFC 3501 6.3.11) with an EXISTS.
        let mut announced = Vec::new();
        while let Ok(push) = s.unsolicited_responses.try_recv() {
            announced.push(format!("{push:?}"));
        }
        assert!(announced.iter().any(|p| p == "Exists(2)"), "{announced:?}");

        let fetched: Vec<_> = s
            .fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(fetched.len(), 2);
        assert_eq!((fetched[0].message, fetched[0].uid), (1, Some(1)));
        assert_eq!((fetched[1].message, fetched[1].uid), (2, Some(2)));
        assert_eq!(flag_names(&fetched[0]), Vec::<String>::new());
        assert_eq!(flag_names(&fetched[1]), vec!["\\Flagged"]);
        assert_eq!(fetched[1].size, Some(MULTIPART.len() as u32));
        let envelope = fetched[1].envelope().unwrap();
        assert_eq!(
            envelope.subject.as_deref(),
            Some(&b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="[..])
        );
        assert_eq!(envelope.message_id.as_deref(), Some(&b"<m1@example.org>"[..]));
        let from = &envelope.from.as_ref().unwrap()[0];
        assert_eq!(from.name.as_deref(), Some(&b"=?UTF-8?B?SsO8cmdlbg==?="[..]));
        assert_eq!(from.mailbox.as_deref(), Some(&b"jm"[..]));
        assert_eq!(from.host.as_deref(), Some(&b"example.org"[..]));
        let first = fetched[0].envelope().unwrap();
        assert_eq!(first.subject.as_deref(), Some(&b"welcome"[..]));

        let parts: Vec<_> = s
            .fetch("2", "(BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2])")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let part = &parts[0];
        match part.bodystructure().unwrap() {
            BodyStructure::Multipart { common, bodies, .. } => {
                assert_eq!(common.ty.subtype.to_ascii_lowercase(), "mixed");
                assert_eq!(bodies.len(), 2);
                match &bodies[0] {
                    BodyStructure::Text {
                        common, other, lines, ..
                    } => {
                        assert_eq!(common.ty.ty.to_ascii_lowercase(), "text");
                        assert_eq!(common.ty.subtype.to_ascii_lowercase(), "plain");
                        assert_eq!(other.octets, 15);
                        assert_eq!(*lines, 1);
                    }
                    other => panic!("part 1: {other:?}"),
                }
                match &bodies[1] {
                    BodyStructure::Basic { common, other, .. } => {
                        assert_eq!(common.ty.ty.to_ascii_lowercase(), "application");
                        assert_eq!(common.ty.subtype.to_ascii_lowercase(), "pdf");
                        assert_eq!(other.octets, 12);
                    }
                    other => panic!("part 2: {other:?}"),
                }
            }
            other => panic!("not multipart: {other:?}"),
        }
        assert_eq!(
            part.section(&SectionPath::Part(vec![1], None)),
            Some(&b"Gr=C3=BC=C3=9Fe"[..])
        );
        assert_eq!(
            part.section(&SectionPath::Part(vec![2], None)),
            Some(&b"JVBERi0xLjQK"[..])
        );
        let mime = String::from_utf8_lossy(
            part.section(&SectionPath::Part(
                vec![2],
                Some(async_imap::imap_proto::MessageSection::Mime),
            ))
            .unwrap(),
        )
        .to_string();
        assert!(
            mime.contains("Content-Disposition: attachment; filename=\"r.pdf\""),
            "{mime}"
        );
        // The fetches peeked: nothing is \Seen yet.
        let seen: HashSet<u32> = s.search("SEEN").await.unwrap();
        assert_eq!(seen, HashSet::new());

        let stored: Vec<_> = s
            .store("1", "+FLAGS (\\Seen)")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(flag_names(&stored[0]), vec!["\\Seen"]);
        assert_eq!(s.search("SEEN").await.unwrap(), set(&[1]));
        assert_eq!(s.uid_search("FLAGGED").await.unwrap(), set(&[2]));
        assert_eq!(s.search("SUBJECT welcome").await.unwrap(), set(&[1]));
        // BODY searches the decoded text (the quoted-printable part says "Grüße").
        assert_eq!(s.search("BODY Gr").await.unwrap(), set(&[2]));
        assert_eq!(s.search("TEXT jm@example.org").await.unwrap(), set(&[2]));
        assert_eq!(s.search("OR SEEN FLAGGED").await.unwrap(), set(&[1, 2]));

        s.uid_copy("1", "Archive").await.unwrap();
        s.uid_mv("2", "Archive").await.unwrap();
        let status = s.status("Archive", "(MESSAGES UIDNEXT)").await.unwrap();
        assert_eq!((status.exists, status.uid_next), (2, Some(3)));
        // The move expunged message 2 of INBOX.
        let mut pushes = Vec::new();
        while let Ok(push) = s.unsolicited_responses.try_recv() {
            pushes.push(format!("{push:?}"));
        }
        assert!(pushes.iter().any(|p| p == "Expunge(2)"), "{pushes:?}");
        assert_eq!(s.search("ALL").await.unwrap(), set(&[1]));

        s.store("1", "+FLAGS.SILENT (\\Deleted)")
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        let expunged: Vec<u32> = s.expunge().await.unwrap().try_collect().await.unwrap();
        assert_eq!(expunged, vec![1]);
        let inbox = s.select("INBOX").await.unwrap();
        assert_eq!((inbox.exists, inbox.uid_next), (0, Some(3)));
        let archive = s.examine("Archive").await.unwrap();
        assert_eq!(archive.exists, 2);
        let archived: Vec<_> = s
            .fetch("1:*", "(UID FLAGS)")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let archived: Vec<_> = archived.iter().map(|f| (f.uid, flag_names(f))).collect();
        assert_eq!(
            archived,
            vec![
                (Some(1), vec!["\\Seen".to_string()]),
                (Some(2), vec!["\\Flagged".to_string()]),
            ]
        );

        // IDLE on INBOX: told of an LMTP delivery, then of another session's APPEND.
        s.select("INBOX").await.unwrap();
        let mut idle = s.idle();
        idle.init().await.unwrap();
        assert!(lmtp_deliver(&lmtp, "alice@example.org", "pushed").starts_with("250"));
        assert_eq!(next_push(&mut idle).await, "EXISTS 1");
        let mut other = login(&implicit, &ca_pem).await;
        other
            .append("INBOX", None, None, "Subject: from another session\r\n\r\nhi\r\n")
            .await
            .unwrap();
        assert_eq!(next_push(&mut idle).await, "EXISTS 2");
        other.logout().await.unwrap();
        let mut s = idle.done().await.unwrap();
        let subjects: Vec<_> = s
            .fetch("1:*", "(UID ENVELOPE)")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let subjects: Vec<_> = subjects
            .iter()
            .map(|f| {
                let subject = f.envelope().unwrap().subject.as_deref().unwrap().to_vec();
                (f.uid, String::from_utf8(subject).unwrap())
            })
            .collect();
        assert_eq!(
            subjects,
            vec![
                (Some(3), "pushed".to_string()),
                (Some(4), "from another session".to_string()),
            ]
        );
        s.logout().await.unwrap();
    });
    assert!(n.node.is_running());
}
