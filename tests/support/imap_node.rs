//! A node with `[imap]` and `[lmtp]` on ports the kernel picks, and users alice and bob (password
//! "secret"), for the IMAP process tests.

use std::path::{Path, PathBuf};

use super::{address, mailmesh, password_hash, start_node, Running};

pub struct ImapNode {
    pub tmp: tempfile::TempDir,
    pub node: Running,
    pub lmtp: String,
}

impl ImapNode {
    /// A node `n1` whose `[imap]` section's body is `imap`; `extra` adds whole sections.
    pub fn start(imap: &str, extra: &str) -> ImapNode {
        let tmp = tempfile::TempDir::new().unwrap();
        let data = tmp.path().join("data");
        let hash = password_hash("secret");
        let text = format!(
            "[node]\nname = \"n1\"\n\n[storage]\ndata_dir = {:?}\n\n[lmtp]\nlisten = \"127.0.0.1:0\"\n\n\
             [imap]\n{imap}\n\n[[users]]\nname = \"alice\"\npassword_hash = {hash:?}\n\n\
             [[users]]\nname = \"bob\"\npassword_hash = {hash:?}\n\n{extra}\n",
            data.to_str().unwrap()
        );
        let config = tmp.path().join("node.toml");
        std::fs::write(&config, text).unwrap();
        let mut node = start_node(&config);
        let lmtp = address(&node.wait_for_stderr("protocol=\"lmtp\""));
        ImapNode { tmp, node, lmtp }
    }

    /// The address of the `n`-th IMAP listener (1: `listen`, 2: `listen_tls` when both are set).
    pub fn imap(&mut self, n: usize) -> String {
        address(&self.node.wait_for_stderr_count("protocol=\"imap\"", n))
    }

    /// The node's configuration file.
    pub fn config(&self) -> PathBuf {
        self.tmp.path().join("node.toml")
    }
}

/// A CA (`dir/ca/ca.pem`) and a certificate for `n1` signed by it (`dir/n1.pem`, `dir/n1.key`),
/// made by the node's own `mailmesh certs`. Returns the `[imap]` lines that serve it on `listen`
/// (STARTTLS) and `listen_tls` (implicit TLS).
pub fn tls_section(dir: &Path) -> String {
    let ca = dir.join("ca");
    for args in [
        vec!["certs", "ca", "--out", ca.to_str().unwrap()],
        vec![
            "certs",
            "node",
            "n1",
            "--ca",
            ca.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ],
    ] {
        let done = mailmesh(&args).output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    format!(
        "listen = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("n1.pem").to_str().unwrap(),
        dir.join("n1.key").to_str().unwrap()
    )
}
