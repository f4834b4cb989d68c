//! `[imap] direct`: a client whose INBOX has its preferred primary on another node is sent there
//! (issue 12, item 5), so that its writes land where they need no promotion.
//!
//! - `local`: this node serves every login (the replica is complete; the primary's promotion
//!   settles what a write here conflicts with).
//! - `referral`: the login is answered `NO [REFERRAL imap://user@host:port/]` (RFC 2221's home
//!   server referral; the URL's form is RFC 5092's) and the client logs in there itself.
//! - `proxy`: the password is checked here, then this node logs in at the primary with the same
//!   credentials and relays bytes both ways for the rest of the session.
//!
//! The primary is the Directory's ([`PrimaryOf`]): none (no INBOX yet) or this node means the
//! session stays here. A primary without a `[[peers]] imap` address, or one that cannot be
//! reached (connect refused or timed out, its login refused), leaves the session here too, with
//! a log line saying why: a replica that serves beats a client that cannot read its mail.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use actix::Addr;
use base64::Engine;
use mailmesh_actors::directory::{Directory, PrimaryOf};
use mailmesh_protocol::ids::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use crate::client_tls::Connection;
use crate::cluster::PeerAddress;

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

/// What every listener's sessions direct clients with; a reload replaces it.
#[derive(Clone, Debug)]
pub struct Directing {
    pub mode: Direct,
    /// This node: a user whose INBOX has its primary here stays.
    pub node: NodeId,
    /// The peers' client-facing IMAP addresses (`[[peers]] imap`).
    pub peers: BTreeMap<NodeId, String>,
}

impl Directing {
    pub fn new(mode: Direct, node: NodeId, peers: &[PeerAddress]) -> Directing {
        Directing {
            mode,
            node,
            peers: peers
                .iter()
                .filter_map(|p| Some((p.node.clone(), p.imap.clone()?)))
                .collect(),
        }
    }
}

/// Where a login goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node serves the session.
    Here,
    Referral(String),
    /// Relay to the primary at this `host:port`.
    Proxy {
        primary: NodeId,
        address: String,
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
    let Some(address) = directing.borrow().peers.get(&primary).cloned() else {
        warn!(%user, %primary, "imap: the INBOX's primary has no [[peers]] imap address; served here");
        return Route::Here;
    };
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
        Direct::Proxy => Route::Proxy { primary, address },
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

/// A session logged in at the primary: the stream and what it answered to the login (its
/// untagged lines and the tagged OK, under the client's tag), which the client gets as the
/// answer to its own login.
pub struct Backend {
    pub primary: NodeId,
    pub address: String,
    pub stream: TcpStream,
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

/// Connects to the primary and logs in there as `user` (AUTHENTICATE PLAIN with its initial
/// response, under the client's `tag`); `Err` says why not, for the log.
pub async fn login_at_primary(
    primary: NodeId,
    address: String,
    tag: &str,
    user: &str,
    password: &[u8],
) -> Result<Backend, String> {
    let login = async {
        let mut stream = TcpStream::connect(address.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut lines = LineReader::default();
        let greeting = lines.line(&mut stream).await?;
        if !greeting.starts_with(b"* OK") {
            return Err(format!(
                "greeting {:?}",
                String::from_utf8_lossy(&greeting).trim_end()
            ));
        }
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

/// Reads CRLF-terminated lines, bounded by [`MAX_LOGIN_ANSWER`] in all.
#[derive(Default)]
struct LineReader {
    rest: Vec<u8>,
    taken: usize,
}

impl LineReader {
    async fn line(&mut self, stream: &mut TcpStream) -> Result<Vec<u8>, String> {
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
/// the primary's answer to the login. Either side closing (or failing) closes both. Answers the
/// bytes relayed (client to primary, primary to client) and which side ended it.
pub async fn relay(client: Connection, backend: Backend) -> (u64, u64, &'static str) {
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut primary_read, mut primary_write) = backend.stream.into_split();
    if client_write.write_all(&backend.answer).await.is_err() {
        return (0, 0, "client");
    }
    down.set(backend.answer.len() as u64);
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

    /// A scripted primary: it checks the login, then answers one command and closes. The
    /// client (a duplex pipe) gets the primary's answer to the login under its own tag, then
    /// the relayed bytes; the primary closing ends the relay and closes the client.
    #[tokio::test(flavor = "current_thread")]
    async fn a_proxied_login_is_the_primarys_and_either_side_closing_ends_the_relay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let primary = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"* OK ready\r\n").await.unwrap();
            let mut lines = LineReader::default();
            let login = lines.line(&mut stream).await.unwrap();
            // "alice\0pw" after an empty authorization identity.
            assert_eq!(login, b"x7 AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n");
            stream
                .write_all(b"x7 OK [CAPABILITY IMAP4rev1] logged in\r\n")
                .await
                .unwrap();
            let noop = lines.line(&mut stream).await.unwrap();
            assert_eq!(noop, b"x8 NOOP\r\n");
            stream.write_all(b"x8 OK done\r\n").await.unwrap();
        });
        let node = NodeId::new("n1").unwrap();
        let backend = login_at_primary(node, address, "x7", "alice", b"pw")
            .await
            .unwrap();
        assert_eq!(backend.answer, b"x7 OK [CAPABILITY IMAP4rev1] logged in\r\n");
        let (client, mut user) = tokio::io::duplex(1024);
        let client_side = async {
            user.write_all(b"x8 NOOP\r\n").await.unwrap();
            let mut seen = Vec::new();
            user.read_to_end(&mut seen).await.unwrap();
            seen
        };
        let (seen, counts) = tokio::join!(client_side, relay(Connection::plain(client), backend));
        assert_eq!(seen, b"x7 OK [CAPABILITY IMAP4rev1] logged in\r\nx8 OK done\r\n");
        assert_eq!(counts, (9, 52, "primary"));
        primary.await.unwrap();

        // The client closing ends it too; a primary that refuses the login is an error.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let primary = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"* OK ready\r\n").await.unwrap();
            let mut lines = LineReader::default();
            lines.line(&mut stream).await.unwrap();
            stream.write_all(b"y1 OK logged in\r\n").await.unwrap();
            // Waits for the proxy to close the connection.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
        let node = NodeId::new("n1").unwrap();
        let backend = login_at_primary(node, address, "y1", "alice", b"pw")
            .await
            .unwrap();
        let (client, user) = tokio::io::duplex(1024);
        drop(user);
        assert_eq!(relay(Connection::plain(client), backend).await.2, "client");
        primary.await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let primary = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"* OK ready\r\n").await.unwrap();
            LineReader::default().line(&mut stream).await.unwrap();
            stream
                .write_all(b"z1 NO [AUTHENTICATIONFAILED] authentication failed\r\n")
                .await
                .unwrap();
        });
        let node = NodeId::new("n1").unwrap();
        let refused = login_at_primary(node, address, "z1", "alice", b"pw")
            .await
            .unwrap_err();
        assert!(refused.starts_with("login refused: "), "{refused}");
        primary.await.unwrap();
    }

    #[test]
    fn only_peers_with_an_imap_address_are_directed_to() {
        let n = |s: &str| NodeId::new(s).unwrap();
        let peer = |name: &str, imap: Option<&str>| PeerAddress {
            node: n(name),
            address: "127.0.0.1:7100".into(),
            shared_bodies: false,
            imap: imap.map(String::from),
        };
        let d = Directing::new(
            Direct::Proxy,
            n("n2"),
            &[peer("n1", Some("127.0.0.1:1143")), peer("n3", None)],
        );
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[&n("n1")], "127.0.0.1:1143");
    }
}
