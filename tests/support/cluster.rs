//! Clusters of real `mailmesh run` processes on loopback: certificates made with `mailmesh
//! certs`, one directory per node (config, data), QUIC ports picked free.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{finish, mailmesh, Running};

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, read, released).
pub fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    socket.local_addr().expect("local address").port()
}

/// Makes a CA in `dir` with `mailmesh certs ca`.
pub fn make_ca(dir: &Path) {
    finish(mailmesh(&["certs", "ca", "--out"]).arg(dir)).expect_code(0);
}

/// Makes `name`'s certificate signed by the CA in `ca` into `out` with `mailmesh certs node`.
pub fn make_node_cert(name: &str, ca: &Path, out: &Path) {
    finish(
        mailmesh(&["certs", "node", name, "--ca"])
            .arg(ca)
            .arg("--out")
            .arg(out),
    )
    .expect_code(0);
}

/// One node's files: `<root>/<name>/node.toml` and `<root>/<name>/data`.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    /// Directory of the CA this node trusts (`ca.pem`).
    pub ca: PathBuf,
    /// Directory holding `<cert_name>.pem` and `.key`.
    pub certs: PathBuf,
    /// Whose certificate the node presents (its own name, unless a test lies).
    pub cert_name: String,
}

impl NodeSpec {
    /// A node whose certificate is its own, from the CA in `ca`, kept in `certs`.
    pub fn new(root: &Path, name: &str, ca: &Path, certs: &Path) -> NodeSpec {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        NodeSpec {
            name: name.to_string(),
            dir,
            port: free_udp_port(),
            ca: ca.to_path_buf(),
            certs: certs.to_path_buf(),
            cert_name: name.to_string(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The node's configuration text with `peers` as its `[[peers]]`.
    pub fn config_text(&self, peers: &[&NodeSpec]) -> String {
        let path = |p: PathBuf| p.to_str().expect("UTF-8 temp paths").to_string();
        let mut text = format!(
            "[node]\nname = {:?}\n\n[storage]\ndata_dir = {:?}\n\n[cluster]\nlisten = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.name,
            path(self.data_dir()),
            self.address(),
            path(self.ca.join("ca.pem")),
            path(self.certs.join(format!("{}.pem", self.cert_name))),
            path(self.certs.join(format!("{}.key", self.cert_name))),
        );
        for peer in peers {
            write!(
                text,
                "\n[[peers]]\nname = {:?}\naddress = {:?}\n",
                peer.name,
                peer.address()
            )
            .unwrap();
        }
        text
    }

    /// Writes the configuration with `peers` (atomically: a watcher never sees half a file).
    pub fn write_config(&self, peers: &[&NodeSpec]) {
        write_atomically(&self.config_path(), &self.config_text(peers));
    }

    /// Starts `mailmesh run` on this node's configuration and waits until it is ready.
    pub fn start(&self) -> Running {
        let mut node = Running::start(
            mailmesh(&["run", "--config"])
                .arg(self.config_path())
                .current_dir(&self.dir),
        );
        node.wait_for_stderr("node ready");
        node
    }
}

/// Replaces `path` with `text` by renaming a complete new file over it, as editors do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

/// `nodes` of one cluster with certificates from one CA, all in `root`.
pub fn cluster_specs(root: &Path, names: &[&str]) -> Vec<NodeSpec> {
    let ca = root.join("ca");
    let certs = root.join("certs");
    make_ca(&ca);
    names
        .iter()
        .map(|name| {
            make_node_cert(name, &ca, &certs);
            NodeSpec::new(root, name, &ca, &certs)
        })
        .collect()
}

/// Runs the operator command `args` against `node`'s running process (through its socket).
pub fn op(node: &NodeSpec, args: &[&str]) -> super::Finished {
    super::op(&node.config_path(), args)
}

/// Like [`op`], and the command must succeed; returns its stdout.
pub fn op_ok(node: &NodeSpec, args: &[&str]) -> String {
    let done = op(node, args);
    done.expect_code(0);
    done.stdout
}

/// Appends a message with a unique `subject` to `user`'s `mailbox` on `node`; returns its uid.
pub fn append(node: &NodeSpec, user: &str, mailbox: &str, subject: &str) -> String {
    let done = try_append(node, user, mailbox, subject);
    done.expect_code(0);
    done.stdout.trim().to_string()
}

/// Runs `mailmesh append` of a message with a unique `subject`, whatever the outcome: for tests
/// that count what the node acknowledged while it may be killed or moving the mailbox.
pub fn try_append(node: &NodeSpec, user: &str, mailbox: &str, subject: &str) -> super::Finished {
    let file = node.dir.join(format!("{subject}.eml"));
    std::fs::write(&file, format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n")).expect("write message");
    op(
        node,
        &[
            "append",
            "--user",
            user,
            "--mailbox",
            mailbox,
            "--file",
            file.to_str().unwrap(),
        ],
    )
}

/// The mailbox's messages on `node` as `fetch` lists them (uid, flags, size, hash), or `None` if
/// the node does not have the mailbox (yet).
pub fn listing(node: &NodeSpec, user: &str, mailbox: &str) -> Option<Vec<String>> {
    let done = op(node, &["fetch", "--user", user, "--mailbox", mailbox]);
    if done.status.code() != Some(0) {
        return None;
    }
    let mut lines: Vec<String> = done.stdout.lines().map(str::to_string).collect();
    lines.sort();
    Some(lines)
}

/// Polls `check` until it holds, at most [`super::DEADLINE`] times four (replication across a
/// chain of processes on a busy machine); panics with `what` and the last observation.
pub fn eventually<T: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + super::DEADLINE * 4;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: not within {:?}; last seen: {last}",
                    super::DEADLINE * 4
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

/// Waits until every node lists the same `count` messages (uids, flags, hashes) in the mailbox.
pub fn converged(nodes: &[&NodeSpec], user: &str, mailbox: &str, count: usize) -> Vec<String> {
    converged_with(nodes, user, mailbox, count, |_| true)
}

/// Like [`converged`], and the common listing must also satisfy `check` (flags that must have
/// arrived, say).
pub fn converged_with(
    nodes: &[&NodeSpec],
    user: &str,
    mailbox: &str,
    count: usize,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    eventually(
        &format!("{user}/{mailbox} converged with {count} messages"),
        || {
            let listings: Vec<Option<Vec<String>>> =
                nodes.iter().map(|n| listing(n, user, mailbox)).collect();
            let first = listings[0].clone().unwrap_or_default();
            let same = listings.iter().all(|l| l.as_ref() == Some(&first));
            if same && first.len() == count && check(&first) {
                Ok(first)
            } else {
                Err(format!("{listings:#?}"))
            }
        },
    )
}

/// Writes each node's configuration so that every node peers with every other.
pub fn write_mesh_configs(specs: &[NodeSpec]) {
    for spec in specs {
        let peers: Vec<&NodeSpec> = specs.iter().filter(|p| p.name != spec.name).collect();
        spec.write_config(&peers);
    }
}

/// Writes each node's configuration so that the nodes form a chain in order: each peers with its
/// neighbours only.
pub fn write_chain_configs(specs: &[NodeSpec]) {
    for (i, spec) in specs.iter().enumerate() {
        let mut peers = Vec::new();
        if i > 0 {
            peers.push(&specs[i - 1]);
        }
        if i + 1 < specs.len() {
            peers.push(&specs[i + 1]);
        }
        spec.write_config(&peers);
    }
}

/// Stops every node with SIGTERM; each must exit 0 without a panic.
pub fn stop_all(nodes: Vec<Running>) {
    for node in nodes {
        node.signal(libc::SIGTERM);
        node.wait().expect_code(0).expect_no_panic();
    }
}

/// `user`'s mailboxes on `node` as `mailbox list` prints them (name, messages, uidnext,
/// uidvalidity, id, locations, primary), or `None` if the command failed.
pub fn mailbox_lines(node: &NodeSpec, user: &str) -> Option<Vec<String>> {
    let done = op(node, &["mailbox", "list", "--user", user]);
    if done.status.code() != Some(0) {
        return None;
    }
    Some(done.stdout.lines().map(str::to_string).collect())
}

/// Waits until every node lists the same mailboxes for `user` (every column), named `names` in
/// order; returns the list.
pub fn mailboxes_converged(nodes: &[&NodeSpec], user: &str, names: &[&str]) -> Vec<String> {
    eventually(&format!("{user}'s mailboxes converged to {names:?}"), || {
        let lists: Vec<Option<Vec<String>>> = nodes.iter().map(|n| mailbox_lines(n, user)).collect();
        let first = lists[0].clone().unwrap_or_default();
        let shown: Vec<&str> = first.iter().map(|l| l.split('\t').next().unwrap_or("")).collect();
        if shown == names && lists.iter().all(|l| l.as_ref() == Some(&first)) {
            Ok(first)
        } else {
            Err(format!("{lists:#?}"))
        }
    })
}

/// Waits until `node` has `user`'s `mailbox`.
pub fn wait_for_mailbox(node: &NodeSpec, user: &str, mailbox: &str) {
    eventually(&format!("{user}/{mailbox} on {}", node.name), || {
        listing(node, user, mailbox).ok_or_else(|| "absent".to_string())
    });
}

/// Creates `mailbox` on `origin` and waits until every node in `nodes` has it.
pub fn create_everywhere(origin: &NodeSpec, nodes: &[&NodeSpec], user: &str, mailbox: &str) {
    op_ok(origin, &["mailbox", "create", "--user", user, "--name", mailbox]);
    for node in nodes {
        wait_for_mailbox(node, user, mailbox);
    }
}

/// Changes the flags of message `uid` on `node` (`change` as `mailmesh flags` takes it).
pub fn set_flags(node: &NodeSpec, user: &str, mailbox: &str, uid: &str, change: &str) {
    super::store_flags(&node.config_path(), user, mailbox, uid, change).expect_code(0);
}

/// Whether the message `uid` has `flag` in a listing from [`listing`].
pub fn has_flag(listing: &[String], uid: &str, flag: &str) -> bool {
    listing.iter().any(|l| {
        let mut cols = l.split('\t');
        cols.next() == Some(uid) && cols.next().is_some_and(|f| f.split(' ').any(|x| x == flag))
    })
}
