//! `mailmesh certs`: the cluster's certificate authority and each node's certificate (rcgen).
//!
//! A cluster trusts exactly one CA. `certs ca` makes it (`ca.pem`, `ca.key`); `certs node NAME`
//! signs a certificate for one node whose only subject alternative name is the node's name as a
//! DNS name, usable both as a TLS server and as a TLS client (every link is mutual TLS, and either
//! side may dial). Keys are written with mode 0600 and existing files are never overwritten: a
//! lost CA key means reissuing every node's certificate, so replacing one must be deliberate.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mailmesh_protocol::ids::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// File names inside a CA directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} already exists; remove it first to replace it")]
    Exists(PathBuf),
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    BadName(String),
    #[error("--days must be between 1 and 36500, not {0}")]
    BadDays(u32),
}

/// What a command wrote.
#[derive(Debug)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a new cluster CA in `out` (created if missing): `ca.pem` and `ca.key`.
pub fn make_ca(out: &Path, days: u32) -> Result<Written, CertError> {
    let (not_before, not_after) = validity(days)?;
    let cert_path = out.join(CA_CERT);
    let key_path = out.join(CA_KEY);
    refuse_existing(&[&cert_path, &key_path])?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own: a certificate of another cluster's CA is then "unknown CA" (no issuer
    // of that name), not a signature that fails against a namesake.
    let id: [u8; 6] = rand::random();
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mailmesh cluster CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;

    create_dir(out)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
    })
}

/// Signs a certificate for node `name` with the CA in `ca_dir`; writes `NAME.pem` and `NAME.key`
/// in `out`.
pub fn make_node(name: &str, ca_dir: &Path, out: &Path, days: u32) -> Result<Written, CertError> {
    let node = NodeId::new(name).map_err(|e| CertError::BadName(e.to_string()))?;
    let (not_before, not_after) = validity(days)?;
    let cert_path = out.join(format!("{node}.pem"));
    let key_path = out.join(format!("{node}.key"));
    refuse_existing(&[&cert_path, &key_path])?;

    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_cert = read_text(&ca_cert_path)?;
    let ca_key = KeyPair::from_pem(&read_text(&ca_key_path)?)
        .map_err(|e| CertError::Parse(ca_key_path.clone(), e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
        .map_err(|e| CertError::Parse(ca_cert_path.clone(), e.to_string()))?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node.to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, node.to_string());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer)?;

    create_dir(out)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
    })
}

/// Valid from a day ago (clocks of a cluster's machines differ a little) for `days` days.
fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    if !(1..=36500).contains(&days) {
        return Err(CertError::BadDays(days));
    }
    let now = OffsetDateTime::now_utc();
    Ok((now - Duration::days(1), now + Duration::days(i64::from(days))))
}

fn random_serial() -> SerialNumber {
    // Positive (high bit clear) and 16 bytes, as RFC 5280 asks.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|e| CertError::Io(dir.to_path_buf(), e))
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::Io(path.to_path_buf(), e))
}

/// Creates `path` with `mode` (never replacing a file) and writes `bytes` durably.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |e| CertError::Io(path.to_path_buf(), e);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
            _ => io(e),
        })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn ca_and_node_files_have_private_keys_and_refuse_overwrite() {
        let tmp = tempfile::TempDir::new().unwrap();
        let ca = make_ca(&tmp.path().join("ca"), 30).unwrap();
        let node = make_node("n1", &tmp.path().join("ca"), &tmp.path().join("n1"), 30).unwrap();
        for key in [&ca.key, &node.key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert!(matches!(
            make_ca(&tmp.path().join("ca"), 30),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            make_node("n1", &tmp.path().join("ca"), &tmp.path().join("n1"), 30),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            make_node("Bad Name", &tmp.path().join("ca"), tmp.path(), 30),
            Err(CertError::BadName(_))
        ));
    }
}
