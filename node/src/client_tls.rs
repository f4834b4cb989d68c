//! TLS for client listeners (LMTP, ManageSieve, IMAP): a certificate and key per listener, read
//! from PEM files and read again on every reload, STARTTLS and implicit TLS over the same
//! [`Connection`] type.
//!
//! Unlike cluster links (`cluster::tls`, mutual TLS with the cluster CA), clients are not asked
//! for a certificate: they authenticate with a password, which is why a listener refuses
//! plaintext authentication without TLS unless told otherwise ([`plaintext_auth_default`]).
//!
//! Nothing here knows a protocol: a listener's session calls [`Connection::start_tls`] when its
//! protocol's STARTTLS says so, or the listener wraps each accepted connection at once
//! (`implicit`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::cluster::tls::provider;

/// A listener's TLS settings, validated (paths not yet read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTlsOptions {
    /// Certificate chain and key (PEM); `None`: no TLS on this listener.
    pub files: Option<TlsFiles>,
    /// TLS from the first byte (LMTPS/IMAPS style) instead of STARTTLS.
    pub implicit: bool,
    /// Whether a password may be sent over a connection without TLS.
    pub allow_plaintext_auth: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ListenerTlsOptions {
    /// Whether a listener may take a password on a connection in this state: always under TLS,
    /// without it only if `allow_plaintext_auth`. A listener that refuses says so in its
    /// protocol's words (e.g. ManageSieve's `NO (ENCRYPT-NEEDED)`).
    pub fn password_allowed(&self, connection_is_tls: bool) -> bool {
        connection_is_tls || self.allow_plaintext_auth
    }
}

/// Loopback listeners (and Unix sockets) allow plaintext authentication by default: nothing
/// crosses a network, and the README's first command works with no certificate. Any other
/// address needs TLS or an explicit `allow_plaintext_auth = true`.
pub fn plaintext_auth_default(listen: &ListenAddress) -> bool {
    match listen {
        ListenAddress::Tcp(addr) => addr.ip().is_loopback(),
        ListenAddress::Unix(_) => true,
    }
}

/// Where a client listener listens: `ip:port`, or a Unix socket path (anything with a `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddress {
    pub fn parse(text: &str) -> Result<ListenAddress, String> {
        if text.contains('/') {
            return Ok(ListenAddress::Unix(PathBuf::from(text)));
        }
        text.parse()
            .map(ListenAddress::Tcp)
            .map_err(|_| format!("{text:?} is neither ip:port nor a Unix socket path (which contains a '/')"))
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A TLS file that cannot be used, with the configuration key naming it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ClientTlsError {
    pub key: String,
    pub problem: String,
}

/// The TLS server side of one listener, replaceable while connections use the old one.
#[derive(Clone)]
pub struct ServerTls {
    /// `section` is the configuration section, for error messages (`lmtp`, `managesieve`).
    section: &'static str,
    acceptor: Arc<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("section", &self.section)
            .finish()
    }
}

impl ServerTls {
    /// Reads and checks the files of `[section]`.
    pub fn load(section: &'static str, files: &TlsFiles) -> Result<ServerTls, ClientTlsError> {
        Ok(ServerTls {
            section,
            acceptor: Arc::new(RwLock::new(acceptor(section, files)?)),
        })
    }

    /// Reads the files again (a reload: the certificate may have been renewed). On an error the
    /// listener keeps the certificate it had.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), ClientTlsError> {
        let fresh = acceptor(self.section, files)?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn acceptor(section: &'static str, files: &TlsFiles) -> Result<TlsAcceptor, ClientTlsError> {
    let problem = |field: &str, path: &Path, what: String| ClientTlsError {
        key: format!("{section}.{field}"),
        problem: format!("{}: {what}", path.display()),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| problem("tls_cert", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| problem("tls_cert", &files.cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(problem("tls_cert", &files.cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| problem("tls_key", &files.key, format!("no private key in PEM: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("tls_cert", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            problem(
                "tls_key",
                &files.key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A byte stream a listener accepted: TCP or a Unix socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client connection, before or after TLS.
pub enum Connection {
    Plain(Box<dyn Io>),
    Tls(Box<TlsStream<Box<dyn Io>>>),
}

impl Connection {
    pub fn plain(io: impl Io + 'static) -> Connection {
        Connection::Plain(Box::new(io))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Connection::Tls(_))
    }

    /// The TLS handshake over this (plain) connection. A connection already under TLS is
    /// refused: TLS inside TLS is a client's mistake.
    pub async fn start_tls(self, acceptor: TlsAcceptor) -> io::Result<Connection> {
        match self {
            Connection::Plain(io) => Ok(Connection::Tls(Box::new(acceptor.accept(io).await?))),
            Connection::Tls(_) => Err(io::Error::other("TLS is already active")),
        }
    }
}

/// How long a client has to finish the TLS handshake after STARTTLS: a client that stalls
/// half way holds a session and its socket, and nothing else ends it.
const STARTTLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(30);

impl Connection {
    /// STARTTLS, once the server's go-ahead is written: the handshake, within a deadline.
    /// `None` when it failed or stalled (logged for the peer `peer`): the session ends, as
    /// nothing sent in plain text after the go-ahead may be trusted.
    pub async fn upgrade(self, tls: &ServerTls, peer: &str) -> Option<Connection> {
        match tokio::time::timeout(STARTTLS_HANDSHAKE, self.start_tls(tls.acceptor())).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                tracing::debug!(peer, error = %e, "STARTTLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer, "STARTTLS handshake not finished in time");
                None
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Connection::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Connection::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_flush(cx),
            Connection::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Connection::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn write_cert(dir: &Path) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn listen_addresses_parse_and_loopback_allows_plaintext_by_default() {
        let tcp = ListenAddress::parse("127.0.0.1:24").unwrap();
        assert!(plaintext_auth_default(&tcp));
        let any = ListenAddress::parse("0.0.0.0:24").unwrap();
        assert!(!plaintext_auth_default(&any));
        let v6 = ListenAddress::parse("[::1]:24").unwrap();
        assert!(plaintext_auth_default(&v6));
        let unix = ListenAddress::parse("/run/mailmesh/lmtp.sock").unwrap();
        assert_eq!(unix, ListenAddress::Unix("/run/mailmesh/lmtp.sock".into()));
        assert!(ListenAddress::parse("localhost").is_err());
    }

    #[test]
    fn bad_files_are_refused_with_their_key() {
        let dir = tempfile::TempDir::new().unwrap();
        let files = write_cert(dir.path());
        ServerTls::load("lmtp", &files).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let err = ServerTls::load(
            "lmtp",
            &TlsFiles {
                cert: dir.path().join("junk.pem"),
                key: files.key.clone(),
            },
        )
        .unwrap_err();
        assert_eq!(err.key, "lmtp.tls_cert");
        let other = write_cert(&{
            let d = dir.path().join("other");
            std::fs::create_dir(&d).unwrap();
            d
        });
        let err = ServerTls::load(
            "lmtp",
            &TlsFiles {
                cert: files.cert.clone(),
                key: other.key,
            },
        )
        .unwrap_err();
        assert_eq!(err.key, "lmtp.tls_key");
    }

    #[test]
    fn passwords_need_tls_unless_plaintext_is_allowed() {
        let strict = ListenerTlsOptions {
            files: None,
            implicit: false,
            allow_plaintext_auth: false,
        };
        assert!(!strict.password_allowed(false));
        assert!(strict.password_allowed(true));
        let lax = ListenerTlsOptions {
            allow_plaintext_auth: true,
            ..strict
        };
        assert!(lax.password_allowed(false));
    }

    /// The certificate a client is shown by `server` in a handshake.
    async fn presented(server: &ServerTls) -> CertificateDer<'static> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = server.acceptor();
        let accept = tokio::spawn(async move {
            let _ = Connection::plain(server_io).start_tls(acceptor).await;
        });
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let client = connector.connect(name, client_io).await.unwrap();
        let cert = client.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned();
        drop(client);
        let _ = accept.await;
        cert
    }

    /// Accepts any certificate: the test only looks at which one is presented.
    #[derive(Debug)]
    struct AcceptAny;

    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            provider().signature_verification_algorithms.supported_schemes()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_presents_the_new_certificate_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::TempDir::new().unwrap();
        let files = write_cert(dir.path());
        let first = CertificateDer::from_pem_file(&files.cert).unwrap();
        let server = ServerTls::load("lmtp", &files).unwrap();
        assert_eq!(presented(&server).await, first);
        // Renewed in place, as a certificate manager does.
        let renewed = write_cert(dir.path());
        let second = CertificateDer::from_pem_file(&renewed.cert).unwrap();
        assert_ne!(first, second);
        server.reload(&renewed).unwrap();
        assert_eq!(presented(&server).await, second);
        std::fs::write(&files.key, "garbage").unwrap();
        assert!(server.reload(&files).is_err());
        assert_eq!(
            presented(&server).await,
            second,
            "a failed reload keeps the certificate"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_tls_upgrades_a_plain_connection() {
        let dir = tempfile::TempDir::new().unwrap();
        let files = write_cert(dir.path());
        let server = ServerTls::load("lmtp", &files).unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let server_side = tokio::spawn(async move {
            let mut conn = Connection::plain(server_io)
                .start_tls(server.acceptor())
                .await
                .unwrap();
            assert!(conn.is_tls());
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf).await.unwrap();
            conn.flush().await.unwrap();
        });
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = connector.connect(name, client_io).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        server_side.await.unwrap();
    }
}
