//! Mutual TLS for cluster links (rustls with the ring provider).
//!
//! Both ends of a link present a certificate, and both check the other's twice:
//! 1. it chains to this cluster's CA (`cluster.ca`), is within its validity period and is meant
//!    for TLS (webpki's checks);
//! 2. it names a node this node has in `[[peers]]` as a DNS subject alternative name. A dialled
//!    peer must be the very node dialled; an inbound one may be any configured peer, and which
//!    one it is becomes the link's identity.
//!
//! A refusal is logged here, where the reason is known, as `peer certificate refused` with a
//! `check` field that says which check failed: `unknown CA`, `wrong name`, `expired`, ...

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailmesh_protocol::ids::NodeId;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DistinguishedName, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tracing::warn;

/// The ALPN protocol of a cluster link: a peer speaking anything else is not a mailmesh node.
pub const ALPN: &[u8] = b"mailmesh/1";

/// The files of `[cluster]` that make this node's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS file that cannot be used, with the configuration key that names it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct TlsError {
    pub key: &'static str,
    pub problem: String,
}

fn problem(key: &'static str, path: &Path, what: impl fmt::Display) -> TlsError {
    TlsError {
        key,
        problem: format!("{}: {what}", path.display()),
    }
}

/// This node's CA, certificate chain and key, read and checked.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl TlsIdentity {
    /// Reads the three files and checks that they fit together: the CA parses, the certificate
    /// chains to it and names `node`, and the key is a private key.
    pub fn load(files: &TlsFiles, node: &NodeId) -> Result<TlsIdentity, TlsError> {
        let ca = read_certs("cluster.ca", &files.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| {
                problem(
                    "cluster.ca",
                    &files.ca,
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        let chain = read_certs("cluster.cert", &files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| problem("cluster.key", &files.key, format!("no private key in PEM: {e}")))?;
        warn_if_readable_by_others(&files.key);
        let identity = TlsIdentity {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        };
        // Our own certificate must pass the checks our peers will make.
        let verifier = WebPkiServerVerifier::builder_with_provider(identity.roots.clone(), provider())
            .build()
            .map_err(|e| problem("cluster.ca", &files.ca, e))?;
        let name = server_name(node);
        verifier
            .verify_server_cert(
                &identity.chain[0],
                &identity.chain[1..],
                &name,
                &[],
                UnixTime::now(),
            )
            .map_err(|e| {
                problem(
                    "cluster.cert",
                    &files.cert,
                    format!(
                        "not a certificate of node {node} from the CA in cluster.ca: {}",
                        check_failed(&e)
                    ),
                )
            })?;
        Ok(identity)
    }

    /// The cluster CA, which the IMAP proxy trusts for the primaries' IMAP certificates unless
    /// `[imap] proxy_ca` names another.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The TLS server side: requires a client certificate from the CA naming one of `peers`.
    pub fn server_config(&self, peers: BTreeSet<NodeId>) -> Result<rustls::ServerConfig, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError {
                key: "cluster.ca",
                problem: e.to_string(),
            })?;
        let verifier = Arc::new(PeerClientVerifier { inner, peers });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("cluster.cert", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error("cluster.key", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The TLS client side: presents our certificate, accepts a server certificate from the CA
    /// naming the node dialled (which is always a configured peer).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError {
                key: "cluster.ca",
                problem: e.to_string(),
            })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("cluster.cert", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerServerVerifier { inner }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error("cluster.key", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

fn tls_error(key: &'static str, e: rustls::Error) -> TlsError {
    TlsError {
        key,
        problem: e.to_string(),
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's name as the TLS server name it is dialled by. Node ids are lowercase DNS labels.
pub fn server_name(node: &NodeId) -> ServerName<'static> {
    ServerName::try_from(node.to_string()).unwrap_or_else(|_| {
        // A name of digits only is not a DNS name; no certificate can name it, so the dial fails
        // with "wrong name" rather than here.
        ServerName::try_from("invalid.node.name").expect("a valid DNS name")
    })
}

/// Which configured peer, if any, a verified certificate names.
pub fn named_peer<'a>(
    cert: &CertificateDer<'_>,
    peers: impl IntoIterator<Item = &'a NodeId>,
) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    peers
        .into_iter()
        .find(|peer| cert.verify_is_valid_for_subject_name(&server_name(peer)).is_ok())
        .cloned()
}

/// The check a TLS error says failed, in an operator's words.
pub fn check_failed(e: &rustls::Error) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown CA (the certificate does not chain to this cluster's CA)".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "wrong name (the certificate names another node)".into()
            }
            C::Expired | C::ExpiredContext { .. } => "expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
            C::BadSignature => {
                "unknown CA (signed by another CA of the same name, or forged: the signature does not verify)"
                    .into()
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "wrong purpose (not a TLS client and server certificate)".into()
            }
            other => format!("invalid certificate ({other:?})"),
        },
        rustls::Error::NoCertificatesPresented => "no certificate presented".into(),
        other => other.to_string(),
    }
}

/// The three methods of a certificate verifier that only check the handshake's signatures,
/// handed to the webpki verifier in the struct's `inner`: every verifier here adds checks (and
/// log lines) to the certificate itself, never to the signatures.
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}
pub(crate) use delegate_signature_checks;

/// The server side's check of a dialling peer.
#[derive(Debug)]
struct PeerClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    peers: BTreeSet<NodeId>,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.inner.verify_client_cert(end_entity, intermediates, now) {
            warn!(side = "inbound", check = %check_failed(&e), "peer certificate refused");
            return Err(e);
        }
        if named_peer(end_entity, &self.peers).is_none() {
            let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
            warn!(
                side = "inbound",
                check = %check_failed(&e),
                configured = ?self.peers.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "peer certificate refused"
            );
            return Err(e);
        }
        Ok(ClientCertVerified::assertion())
    }

    delegate_signature_checks!();
}

/// The dialling side's check of the peer it dialled: webpki checks the chain and that the
/// certificate names the server name, which is the dialled peer's node id.
#[derive(Debug)]
struct PeerServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                warn!(
                    side = "outbound",
                    peer = %server_name.to_str(),
                    check = %check_failed(e),
                    "peer certificate refused"
                );
            })
    }

    delegate_signature_checks!();
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| problem(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(key, path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(problem(key, path, "no certificate in it"));
    }
    Ok(certs)
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                file = %path.display(),
                mode = format!("{mode:o}"),
                "cluster.key is readable by other users; chmod 600 it"
            );
        }
    }
}
