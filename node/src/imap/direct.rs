//! `[imap] direct`: a client whose INBOX has its preferred primary on another node is sent there
//! (issue 12, item 5), so that its writes land where they need no promotion.
//!
//! - `local`: this node serves every login (the replica is complete; the primary's promotion
//!   settles what a write here conflicts with).
//! - `referral`: the login is answered `NO [REFERRAL imap://user@host:port/]` (RFC 2221's home
//!   server referral; the URL's form is RFC 5092's) and the client logs in there itself.
//! - `proxy`: the password is checked here, then this node logs in at the primary with the same
//!   credentials and relays bytes both ways for the rest of the session. The password crosses
//!   to the primary under TLS only: TLS from the first byte when its `[[peers]] imap_tls` says
//!   the address is its `listen_tls`, else STARTTLS before the login. The primary's
//!   certificate must chain to `[imap] proxy_ca`, or without it to the cluster CA (so that
//!   `mailmesh certs node` makes IMAP certificates too), and name the primary's node name or
//!   its address's host. With no CA to check against the session stays here, logged.
//!
//! The primary is the Directory's ([`PrimaryOf`]): none (no INBOX yet) or this node means the
//! session stays here. A primary without a `[[peers]] imap` address, or one that cannot be
//! reached (connect refused or timed out, its login refused), leaves the session here too, with
//! a log line saying why: a replica that serves beats a client that cannot read its mail.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use base64::Engine;
use mailmesh_actors::directory::{Directory, PrimaryOf};
use mailmesh_protocol::ids::NodeId;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::ImapOptions;
use crate::client_tls::Connection;
use crate::cluster::tls::{check_failed, delegate_signature_checks, provider, server_name};
use crate::cluster::ClusterOptions;

/// How long connecting to the primary and its answers to the login may take before the local
/// replica serves instead.
pub const PRIMARY_TIMEOUT: Duration = Duration::from_secs(5);
/// Each direction of a proxied session reads at most this much before it writes it on.
const RELAY_BUFFER: usize = 16 * 1024;
/// The primary's greeting and its answer to the login, together, fit in this.
const MAX_LOGIN_ANSWER: usize = 64 * 1024;

/// `[imap] direct`, validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direct {
    #[default]
    Local,
    Referral,
    Proxy,
}

impl FromStr for Direct {
    type Err = String;

    fn from_str(text: &str) -> Result<Direct, String> {
        match text {
            "local" => Ok(Direct::Local),
            "referral" => Ok(Direct::Referral),
            "proxy" => Ok(Direct::Proxy),
            other => Err(format!(
                "{other:?} is not one of \"local\", \"referral\", \"proxy\""
            )),
        }
    }
}

/// A peer's client-facing IMAP listener (`[[peers]] imap`, `imap_tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryImap {
    /// `host:port`.
    pub address: String,
    /// TLS from the first byte; else STARTTLS.
    pub implicit_tls: bool,
}

/// What every listener's sessions direct clients with; a reload replaces it.
#[derive(Clone, Debug)]
pub struct Directing {
    pub mode: Direct,
    /// This node: a user whose INBOX has its primary here stays.
    pub node: NodeId,
    /// The peers' client-facing IMAP listeners.
    pub peers: BTreeMap<NodeId, PrimaryImap>,
    /// The check of a primary's IMAP certificate (from `[imap] proxy_ca` or the cluster CA), or
    /// why there is none, for the log line of a proxy that cannot be made.
    pub trust: Result<Arc<WebPkiServerVerifier>, String>,
}

impl Directing {
    pub fn new(options: &ImapOptions, node: NodeId, cluster: Option<&ClusterOptions>) -> Directing {
        let peers = cluster.map_or(&[][..], |c| &c.peers[..]);
        let roots = match (&options.proxy_ca, cluster) {
            (Some(path), _) => read_trust(path).map_err(|e| format!("imap.proxy_ca: {e}")),
            (None, Some(cluster)) => Ok(cluster.tls.roots()),
            (None, None) => Err("neither imap.proxy_ca nor cluster.ca names a CA".to_string()),
        };
        let trust = roots.and_then(|roots| {
            WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("the CA for the primaries' IMAP certificates: {e}"))
        });
        Directing {
            mode: options.direct,
            node,
            peers: peers
                .iter()
                .filter_map(|p| {
                    let imap = PrimaryImap {
                        address: p.imap.clone()?,
                        implicit_tls: p.imap_tls,
                    };
                    Some((p.node.clone(), imap))
                })
                .collect(),
            trust,
        }
    }
}

/// Reads the PEM CA certificates in `path` (`[imap] proxy_ca`); `Err` says what is wrong.
pub fn read_trust(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
        let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(Arc::new(roots))
}

/// Where a login goes.
#[derive(Clone, Debug)]
pub enum Route {
    /// This node serves the session.
    Here,
    Referral(String),
    /// Relay to the primary's IMAP listener, whose certificate `trust` checks.
    Proxy {
        primary: NodeId,
        imap: PrimaryImap,
        trust: Arc<WebPkiServerVerifier>,
    },
}

/// Where `user`'s session goes. A directory error keeps it here (and is logged): a login that
/// succeeded is not refused for a lookup of where it would be best served.
pub async fn route(
    directing: &RefCell<Directing>,
    directory: &Addr<Directory>,
    user: &str,
    mechanism: Option<&str>,
) -> Route {
    let (mode, node) = {
        let d = directing.borrow();
        (d.mode, d.node.clone())
    };
    if mode == Direct::Local {
        return Route::Here;
    }
    let primary = directory
        .send(PrimaryOf {
            user: user.to_string(),
            name: "INBOX".into(),
        })
        .await;
    let primary = match primary {
        Ok(Ok(Some(primary))) => primary,
        // No INBOX yet: this node will create it and be its primary.
        Ok(Ok(None)) => return Route::Here,
        Ok(Err(e)) => {
            warn!(%user, error = %e, "imap: the INBOX's primary is unknown; served here");
            return Route::Here;
        }
        Err(e) => {
            warn!(%user, error = %e, "imap: the directory did not answer; served here");
            return Route::Here;
        }
    };
    if primary == node {
        return Route::Here;
    }
    let Some(imap) = directing.borrow().peers.get(&primary).cloned() else {
        warn!(%user, %primary, "imap: the INBOX's primary has no [[peers]] imap address; served here");
        return Route::Here;
    };
    let address = imap.address.clone();
    match mode {
        Direct::Local => Route::Here,
        Direct::Referral => {
            // A referral to a node that is down would leave the client with no server at all.
            match tokio::time::timeout(PRIMARY_TIMEOUT, TcpStream::connect(address.as_str())).await {
                Ok(Ok(_)) => Route::Referral(referral_url(user, mechanism, &address)),
                Ok(Err(e)) => {
                    warn!(%user, %primary, %address, error = %e, "imap: the primary is unreachable; served here");
                    Route::Here
                }
                Err(_) => {
                    warn!(%user, %primary, %address, "imap: connecting to the primary timed out; served here");
                    Route::Here
                }
            }
        }
        Direct::Proxy => match directing.borrow().trust.clone() {
            Ok(trust) => Route::Proxy { primary, imap, trust },
            Err(why) => {
                // The password would cross to the primary unchecked: never.
                warn!(%user, %primary, %address, why, "imap: no TLS to the primary is possible; served here");
                Route::Here
            }
        },
    }
}

/// RFC 2221's home server referral URL for `user` at `address` (`host:port`): RFC 5092's
/// `imap://enc-user[;AUTH=mechanism]@host:port/`, the user name percent-encoded where it has
/// characters outside `achar`. `mechanism` is the one the client used (AUTHENTICATE), `None`
/// after LOGIN.
pub fn referral_url(user: &str, mechanism: Option<&str>, address: &str) -> String {
    let mut url = String::from("imap://");
    for byte in user.bytes() {
        // RFC 5092's achar: unreserved, sub-delims without ';', '&' and '='.
        if byte.is_ascii_alphanumeric() || b"-._~!$'()*+,&=".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    if let Some(mechanism) = mechanism {
        url.push_str(";AUTH=");
        url.push_str(mechanism);
    }
    url.push('@');
    // An IPv6 address gets its brackets (a SocketAddr's Display has them).
    match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => url.push_str(&socket.to_string()),
        Err(_) => url.push_str(address),
    }
    url.push('/');
    url
}

/// A session logged in at the primary, under TLS: the stream and what it answered to the login
/// (its untagged lines and the tagged OK, under the client's tag), which the client gets as the
/// answer to its own login.
pub struct Backend {
    pub primary: NodeId,
    pub address: String,
    pub stream: TlsStream<TcpStream>,
    pub answer: Vec<u8>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("primary", &self.primary)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The tag of the proxy's own STARTTLS at the primary, before the client's login.
const STARTTLS_TAG: &str = "mailmesh-proxy";

/// Connects to the primary, makes the connection TLS (from the first byte, or STARTTLS) and
/// logs in there as `user` (AUTHENTICATE PLAIN with its initial response, under the client's
/// `tag`); `Err` says why not, for the log. Nothing of the password is sent before the
/// primary's certificate has been checked against `trust`.
pub async fn login_at_primary(
    primary: NodeId,
    imap: PrimaryImap,
    trust: Arc<WebPkiServerVerifier>,
    tag: &str,
    user: &str,
    password: &[u8],
) -> Result<Backend, String> {
    let address = imap.address.clone();
    let login = async {
        let mut tcp = TcpStream::connect(address.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let connector = connector(&primary, trust);
        let name = tls_name(&address, &primary);
        let handshake = |tcp| async {
            connector.connect(name.clone(), tcp).await.map_err(|e| {
                match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    Some(e) => format!("TLS: the primary's certificate: {}", check_failed(e)),
                    None => format!("TLS: {e}"),
                }
            })
        };
        let mut lines = LineReader::default();
        let mut stream = if imap.implicit_tls {
            let mut stream = handshake(tcp).await?;
            greeting(&mut lines, &mut stream).await?;
            stream
        } else {
            greeting(&mut lines, &mut tcp).await?;
            tcp.write_all(format!("{STARTTLS_TAG} STARTTLS\r\n").as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let tagged = format!("{STARTTLS_TAG} ");
            loop {
                let line = lines.line(&mut tcp).await?;
                if let Some(status) = line.strip_prefix(tagged.as_bytes()) {
                    if !status.starts_with(b"OK") {
                        return Err(format!(
                            "the primary offers no STARTTLS: {:?}",
                            String::from_utf8_lossy(status).trim_end()
                        ));
                    }
                    break;
                }
            }
            // RFC 3501 11.1: nothing sent in plain text behind the go-ahead counts.
            if !lines.rest.is_empty() {
                return Err("the primary sent bytes behind its STARTTLS go-ahead".into());
            }
            handshake(tcp).await?
        };
        let mut plain = Vec::with_capacity(user.len() + password.len() + 2);
        plain.push(0);
        plain.extend_from_slice(user.as_bytes());
        plain.push(0);
        plain.extend_from_slice(password);
        let command = format!(
            "{tag} AUTHENTICATE PLAIN {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(&plain)
        );
        stream
            .write_all(command.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let tagged = format!("{tag} ");
        loop {
            let line = lines.line(&mut stream).await?;
            answer.extend_from_slice(&line);
            if let Some(status) = line.strip_prefix(tagged.as_bytes()) {
                if !status.starts_with(b"OK") {
                    return Err(format!(
                        "login refused: {:?}",
                        String::from_utf8_lossy(status).trim_end()
                    ));
                }
                // Whatever came behind the tagged line belongs to the session.
                answer.extend_from_slice(&lines.rest);
                return Ok((stream, answer));
            }
        }
    };
    match tokio::time::timeout(PRIMARY_TIMEOUT, login).await {
        Ok(Ok((stream, answer))) => Ok(Backend {
            primary,
            address,
            stream,
            answer,
        }),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no login within {} s", PRIMARY_TIMEOUT.as_secs())),
    }
}

/// Reads the primary's greeting, which must be `* OK`.
async fn greeting<S: AsyncRead + Unpin>(lines: &mut LineReader, stream: &mut S) -> Result<(), String> {
    let greeting = lines.line(stream).await?;
    if !greeting.starts_with(b"* OK") {
        return Err(format!(
            "greeting {:?}",
            String::from_utf8_lossy(&greeting).trim_end()
        ));
    }
    Ok(())
}

/// The name the primary's certificate is asked for: its address's host (a DNS name or an IP
/// address), or the node name when the host is neither; [`PrimaryVerifier`] takes the node
/// name as well.
fn tls_name(address: &str, primary: &NodeId) -> ServerName<'static> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| server_name(primary))
}

fn connector(primary: &NodeId, trust: Arc<WebPkiServerVerifier>) -> TlsConnector {
    let verifier = PrimaryVerifier {
        inner: trust,
        node: server_name(primary),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider has the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// webpki's checks (chain to the trusted CA, validity, purpose), with the name either the one
/// dialled (the address's host) or the primary's node name: a certificate from `mailmesh certs
/// node` names the node, one from a public CA the host.
#[derive(Debug)]
struct PrimaryVerifier {
    inner: Arc<WebPkiServerVerifier>,
    node: ServerName<'static>,
}

impl ServerCertVerifier for PrimaryVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => self
                .inner
                .verify_server_cert(end_entity, intermediates, &self.node, ocsp, now),
            other => other,
        }
    }

    delegate_signature_checks!();
}

/// Reads CRLF-terminated lines, bounded by [`MAX_LOGIN_ANSWER`] in all.
#[derive(Default)]
struct LineReader {
    rest: Vec<u8>,
    taken: usize,
}

impl LineReader {
    async fn line<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<Vec<u8>, String> {
        loop {
            if let Some(end) = self.rest.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.rest.drain(..end + 2).collect();
                self.taken += line.len();
                return Ok(line);
            }
            if self.taken + self.rest.len() >= MAX_LOGIN_ANSWER {
                return Err(format!("answer longer than {MAX_LOGIN_ANSWER} bytes"));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed the connection".into());
            }
            self.rest.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Relays the rest of the session between the client and the primary, after giving the client
/// the primary's answer to the login and the primary what the client `pipelined` behind its
/// login (read here before the login was answered). Either side closing (or failing) closes
/// both. Answers the bytes relayed (client to primary, primary to client) and which side ended
/// it.
pub async fn relay(client: Connection, backend: Backend, pipelined: Vec<u8>) -> (u64, u64, &'static str) {
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut primary_read, mut primary_write) = tokio::io::split(backend.stream);
    if client_write.write_all(&backend.answer).await.is_err() {
        return (0, 0, "client");
    }
    down.set(backend.answer.len() as u64);
    if !pipelined.is_empty() {
        if primary_write.write_all(&pipelined).await.is_err() || primary_write.flush().await.is_err() {
            return (0, down.get(), "primary");
        }
        up.set(pipelined.len() as u64);
    }
    let ended = tokio::select! {
        _ = pump(&mut client_read, &mut primary_write, &up) => "client",
        _ = pump(&mut primary_read, &mut client_write, &down) => "primary",
    };
    let _ = primary_write.shutdown().await;
    let _ = client_write.shutdown().await;
    (up.get(), down.get(), ended)
}

/// Copies until end of input or an error, through one bounded buffer.
async fn pump<R, W>(from: &mut R, to: &mut W, count: &Cell<u64>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
        count.set(count.get() + n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_referral_url_has_the_user_and_the_address() {
        assert_eq!(
            referral_url("alice", None, "n1.example:143"),
            "imap://alice@n1.example:143/"
        );
        assert_eq!(
            referral_url("alice", Some("PLAIN"), "127.0.0.1:1143"),
            "imap://alice;AUTH=PLAIN@127.0.0.1:1143/"
        );
        assert_eq!(
            referral_url("a b;c@d%", None, "[::1]:143"),
            "imap://a%20b%3Bc%40d%25@[::1]:143/"
        );
    }

    #[test]
    fn direct_is_one_of_three_words() {
        assert_eq!("local".parse::<Direct>(), Ok(Direct::Local));
        assert_eq!("referral".parse::<Direct>(), Ok(Direct::Referral));
        assert_eq!("proxy".parse::<Direct>(), Ok(Direct::Proxy));
        let e = "Proxy".parse::<Direct>().unwrap_err();
        assert!(e.contains("\"local\", \"referral\", \"proxy\""), "{e}");
    }

    /// A cluster CA and n1's certificate from it (`mailmesh certs`), and the check a proxy
    /// makes with the CA.
    struct Certs {
        _dir: tempfile::TempDir,
        n1: crate::client_tls::ServerTls,
        trust: Arc<WebPkiServerVerifier>,
    }

    fn make_certs() -> Certs {
        let dir = tempfile::TempDir::new().unwrap();
        let ca = crate::cluster::certs::make_ca(&dir.path().join("ca"), 30).unwrap();
        let n1 = crate::cluster::certs::make_node("n1", &dir.path().join("ca"), dir.path(), 30).unwrap();
        let n1 = crate::client_tls::ServerTls::load(
            "imap",
            &crate::client_tls::TlsFiles {
                cert: n1.cert,
                key: n1.key,
            },
        )
        .unwrap();
        let roots = read_trust(&ca.cert).unwrap();
        let trust = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .unwrap();
        Certs { _dir: dir, n1, trust }
    }

    fn starttls_at(address: &str) -> PrimaryImap {
        PrimaryImap {
            address: address.to_string(),
            implicit_tls: false,
        }
    }

    /// A scripted primary's side up to the login: greeting and STARTTLS in plain text, then
    /// TLS, where the login line is read.
    async fn primary_side(
        listener: &tokio::net::TcpListener,
        tls: &crate::client_tls::ServerTls,
    ) -> (tokio_rustls::server::TlsStream<TcpStream>, LineReader, Vec<u8>) {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"* OK ready\r\n").await.unwrap();
        let mut lines = LineReader::default();
        assert_eq!(
            lines.line(&mut stream).await.unwrap(),
            b"mailmesh-proxy STARTTLS\r\n"
        );
        stream
            .write_all(b"mailmesh-proxy OK begin TLS now\r\n")
            .await
            .unwrap();
        let mut stream = tls.acceptor().accept(stream).await.unwrap();
        let mut lines = LineReader::default();
        let login = lines.line(&mut stream).await.unwrap();
        (stream, lines, login)
    }

    /// A scripted primary: STARTTLS, then it checks the login, answers one pipelined command
    /// and closes. The client (a duplex pipe) gets the primary's answer to the login under its
    /// own tag, then the relayed bytes; the primary closing ends the relay and closes the
    /// client.
    #[tokio::test(flavor = "current_thread")]
    async fn a_proxied_login_is_the_primarys_under_tls_and_either_side_closing_ends_the_relay() {
        let certs = make_certs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let tls = certs.n1.clone();
        let primary = tokio::spawn(async move {
            let (mut stream, mut lines, login) = primary_side(&listener, &tls).await;
            // "alice\0pw" after an empty authorization identity.
            assert_eq!(login, b"x7 AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n");
            stream
                .write_all(b"x7 OK [CAPABILITY IMAP4rev1] logged in\r\n")
                .await
                .unwrap();
            stream.flush().await.unwrap();
            // Sent by the client behind its login, before the login was answered.
            let noop = lines.line(&mut stream).await.unwrap();
            assert_eq!(noop, b"x8 NOOP\r\n");
            let noop = lines.line(&mut stream).await.unwrap();
            assert_eq!(noop, b"x9 NOOP\r\n");
            stream.write_all(b"x8 OK done\r\nx9 OK done\r\n").await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let node = NodeId::new("n1").unwrap();
        let backend = login_at_primary(
            node,
            starttls_at(&address),
            certs.trust.clone(),
            "x7",
            "alice",
            b"pw",
        )
        .await
        .unwrap();
        assert_eq!(backend.answer, b"x7 OK [CAPABILITY IMAP4rev1] logged in\r\n");
        let (client, mut user) = tokio::io::duplex(1024);
        let client_side = async {
            user.write_all(b"x9 NOOP\r\n").await.unwrap();
            let mut seen = Vec::new();
            user.read_to_end(&mut seen).await.unwrap();
            seen
        };
        let (seen, counts) = tokio::join!(
            client_side,
            relay(Connection::plain(client), backend, b"x8 NOOP\r\n".to_vec())
        );
        assert_eq!(
            seen,
            b"x7 OK [CAPABILITY IMAP4rev1] logged in\r\nx8 OK done\r\nx9 OK done\r\n"
        );
        assert_eq!(counts, (18, 64, "primary"));
        primary.await.unwrap();

        // The client closing ends it too.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let tls = certs.n1.clone();
        let primary = tokio::spawn(async move {
            let (mut stream, _, _) = primary_side(&listener, &tls).await;
            stream.write_all(b"y1 OK logged in\r\n").await.unwrap();
            stream.flush().await.unwrap();
            // Waits for the proxy to close the connection.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            assert!(rest.is_empty());
        });
        let node = NodeId::new("n1").unwrap();
        let backend = login_at_primary(
            node,
            starttls_at(&address),
            certs.trust.clone(),
            "y1",
            "alice",
            b"pw",
        )
        .await
        .unwrap();
        let (client, user) = tokio::io::duplex(1024);
        drop(user);
        assert_eq!(
            relay(Connection::plain(client), backend, Vec::new()).await.2,
            "client"
        );
        primary.await.unwrap();
    }

    /// Each refusal is an error that says why, and the password never crosses in plain text:
    /// a primary that refuses the login, one without STARTTLS, one whose certificate is not
    /// from the trusted CA; and TLS from the first byte when the address is a `listen_tls`.
    #[tokio::test(flavor = "current_thread")]
    async fn a_proxy_without_a_checked_tls_link_sends_no_password() {
        let certs = make_certs();
        let n1 = || NodeId::new("n1").unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let tls = certs.n1.clone();
        let primary = tokio::spawn(async move {
            let (mut stream, _, _) = primary_side(&listener, &tls).await;
            stream
                .write_all(b"z1 NO [AUTHENTICATIONFAILED] authentication failed\r\n")
                .await
                .unwrap();
            stream.flush().await.unwrap();
        });
        let refused = login_at_primary(
            n1(),
            starttls_at(&address),
            certs.trust.clone(),
            "z1",
            "alice",
            b"pw",
        )
        .await
        .unwrap_err();
        assert!(refused.starts_with("login refused: "), "{refused}");
        primary.await.unwrap();

        // No STARTTLS there: the proxy stops before its login.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let primary = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"* OK ready\r\n").await.unwrap();
            let mut lines = LineReader::default();
            lines.line(&mut stream).await.unwrap();
            stream
                .write_all(b"mailmesh-proxy BAD unknown command\r\n")
                .await
                .unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "nothing after the refused STARTTLS: {rest:?}");
        });
        let refused = login_at_primary(
            n1(),
            starttls_at(&address),
            certs.trust.clone(),
            "z2",
            "alice",
            b"pw",
        )
        .await
        .unwrap_err();
        assert!(refused.starts_with("the primary offers no STARTTLS"), "{refused}");
        primary.await.unwrap();

        // A certificate of another CA: the handshake fails, nothing more is sent.
        let other = make_certs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let tls = other.n1.clone();
        let primary = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let handshake = tls.acceptor().accept(stream).await;
            assert!(handshake.is_err(), "the proxy refuses the certificate");
        });
        let implicit = PrimaryImap {
            address,
            implicit_tls: true,
        };
        let refused = login_at_primary(n1(), implicit, certs.trust.clone(), "z3", "alice", b"pw")
            .await
            .unwrap_err();
        assert!(refused.contains("unknown CA"), "{refused}");
        primary.await.unwrap();

        // TLS from the first byte, with the right certificate: the login goes through.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let tls = certs.n1.clone();
        let primary = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tls.acceptor().accept(stream).await.unwrap();
            stream.write_all(b"* OK ready\r\n").await.unwrap();
            stream.flush().await.unwrap();
            let mut lines = LineReader::default();
            assert_eq!(
                lines.line(&mut stream).await.unwrap(),
                b"z4 AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n"
            );
            stream.write_all(b"z4 OK logged in\r\n").await.unwrap();
            stream.flush().await.unwrap();
        });
        let implicit = PrimaryImap {
            address,
            implicit_tls: true,
        };
        let backend = login_at_primary(n1(), implicit, certs.trust.clone(), "z4", "alice", b"pw")
            .await
            .unwrap();
        assert_eq!(backend.answer, b"z4 OK logged in\r\n");
        primary.await.unwrap();
    }

    #[test]
    fn only_peers_with_an_imap_address_are_directed_to_and_the_cluster_ca_is_trusted() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let peer = |name: &str, imap: Option<&str>, imap_tls: bool| crate::cluster::PeerAddress {
            node: n(name),
            address: "127.0.0.1:7100".into(),
            shared_bodies: false,
            imap: imap.map(String::from),
            imap_tls,
        };
        let mut options = ImapOptions {
            listeners: Vec::new(),
            limits: crate::listener::ConnectionLimits {
                per_address: 1,
                total: 1,
            },
            special_use: Default::default(),
            direct: Direct::Proxy,
            metadata_max_entries: 100,
            proxy_ca: None,
        };
        // Without a cluster there is no CA: a proxy cannot be made, and says why.
        let d = Directing::new(&options, n("n2"), None);
        assert!(d.peers.is_empty());
        let why = d.trust.unwrap_err();
        assert!(why.contains("imap.proxy_ca"), "{why}");

        let dir = tempfile::TempDir::new().unwrap();
        let ca = crate::cluster::certs::make_ca(&dir.path().join("ca"), 30).unwrap();
        let n2 = crate::cluster::certs::make_node("n2", &dir.path().join("ca"), dir.path(), 30).unwrap();
        let files = crate::cluster::tls::TlsFiles {
            ca: ca.cert.clone(),
            cert: n2.cert,
            key: n2.key,
        };
        let cluster = ClusterOptions {
            listen: "127.0.0.1:7100".parse().unwrap(),
            tls: crate::cluster::tls::TlsIdentity::load(&files, &n("n2")).unwrap(),
            peers: vec![
                peer("n1", Some("127.0.0.1:1143"), false),
                peer("n3", None, false),
                peer("n4", Some("n4.example:993"), true),
            ],
        };
        let d = Directing::new(&options, n("n2"), Some(&cluster));
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[&n("n1")], starttls_at("127.0.0.1:1143"));
        assert!(d.peers[&n("n4")].implicit_tls);
        assert!(d.trust.is_ok(), "the cluster CA");
        options.proxy_ca = Some("/nonexistent/ca.pem".into());
        let why = Directing::new(&options, n("n2"), Some(&cluster))
            .trust
            .unwrap_err();
        assert!(why.starts_with("imap.proxy_ca: /nonexistent/ca.pem"), "{why}");
        options.proxy_ca = Some(ca.cert);
        assert!(Directing::new(&options, n("n2"), Some(&cluster)).trust.is_ok());
    }

    #[test]
    fn the_tls_name_is_the_addresss_host() {
        let n1 = NodeId::new("n1").unwrap();
        assert_eq!(
            tls_name("imap.example:993", &n1),
            ServerName::try_from("imap.example").unwrap()
        );
        assert_eq!(tls_name("[::1]:143", &n1), ServerName::try_from("::1").unwrap());
        assert_eq!(
            tls_name("127.0.0.1:143", &n1),
            ServerName::try_from("127.0.0.1").unwrap()
        );
    }
}
