//! The node's configuration: where it comes from, what it may contain, and how it becomes the
//! [`NodeOptions`] the actors start with.
//!
//! Three layers, each overriding the one before (the `config` crate merges them):
//! 1. the built-in defaults, `defaults.toml` next to this file, compiled into the binary;
//! 2. the TOML file given with `--config`, if any;
//! 3. environment variables `MAILMESH_<SECTION>__<KEY>` (`__` separates the levels, because
//!    keys themselves contain `_`): `MAILMESH_STORAGE__DATA_DIR=/x` sets `storage.data_dir`.
//!
//! Every struct denies unknown fields, so a misspelt key (in the file or in a `MAILMESH_`
//! variable) is an error instead of a silently ignored setting. Values are then checked as a
//! whole by [`Config::validate`], whose errors name the key at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat};
use mailmesh_actors::directory::ActivationPolicy;
use mailmesh_actors::mailbox::Limits;
use mailmesh_actors::node::NodeOptions;
use mailmesh_protocol::ids::NodeId;
use mailmesh_protocol::names::normalize_mailbox_name;
use serde::{Deserialize, Serialize};

use crate::auth::UserTable;
use crate::client_tls::{plaintext_auth_default, ListenAddress, ListenerTlsOptions, ServerTls, TlsFiles};
use crate::cluster::tls::TlsIdentity;
use crate::cluster::{ClusterOptions, PeerAddress};
use crate::imap::direct::Direct;
use crate::imap::special_use::{SpecialUses, USES};
use crate::imap::{ImapListenerOptions, ImapOptions};
use crate::listener::ConnectionLimits;
use crate::lmtp::LmtpOptions;
use crate::managesieve::ManageSieveOptions;

/// The defaults, as TOML: one place that both the loader and an operator reading the source see.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MAILMESH";

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub mailboxes: MailboxesSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Absent: the node runs alone, as a single store with no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
    /// `[lmtp]`: the LMTP listener MTAs deliver to. Absent: no LMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lmtp: Option<LmtpSection>,
    /// `[managesieve]`: the ManageSieve listener users manage their sieve scripts with. Absent:
    /// no ManageSieve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managesieve: Option<ManageSieveSection>,
    /// `[imap]`: the IMAP listeners mail clients read mail with. Absent: no IMAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<ImapSection>,
    /// `[[peers]]`, the nodes this node replicates with (needs `[cluster]`). Last, because TOML
    /// prints arrays of tables after every plain table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerSection>,
    /// `[[users]]`: who may log in, and whom LMTP delivers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSection>,
}

/// One `[[users]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// The user's name, as mailboxes are owned (`a-z 0-9 . _ - + @`).
    pub name: String,
    /// An argon2 PHC string (`mailmesh user hash` makes one).
    pub password_hash: String,
}

/// `[lmtp]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpSection {
    /// `ip:port` (e.g. "127.0.0.1:2424") or a Unix socket path (anything with a `/`).
    pub listen: String,
    /// For a Unix socket `listen`: the socket file's permissions, octal (e.g. "0660" so that an
    /// MTA in the node's group may connect); unset: as the process's umask leaves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// PEM certificate chain offered with STARTTLS (or from the first byte with
    /// `implicit_tls`); with `tls_key`. Read again on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// TLS from the first byte instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
    /// Whether a password may cross a connection without TLS; unset: only on loopback addresses
    /// and Unix sockets. (LMTP itself has no login; the key is here for every listener alike.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_plaintext_auth: Option<bool>,
    /// Connections one IP address may hold open at once.
    #[serde(default = "default_per_address")]
    pub max_connections_per_address: u64,
    /// Connections held open at once in all.
    #[serde(default = "default_connections")]
    pub max_connections: u64,
    /// Message data all sessions together may hold while reading DATA; unset: four times
    /// `limits.max_message_bytes`. Over it, a message is refused with 452 (try later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_bytes: Option<u64>,
}

/// `[managesieve]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManageSieveSection {
    /// `ip:port` (RFC 5804's port is 4190, e.g. "0.0.0.0:4190") or a Unix socket path.
    pub listen: String,
    /// For a Unix socket `listen`: the socket file's permissions, octal (e.g. "0660" so that an
    /// MTA in the node's group may connect); unset: as the process's umask leaves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// PEM certificate chain offered with STARTTLS (or from the first byte with
    /// `implicit_tls`); with `tls_key`. Read again on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// TLS from the first byte instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
    /// Whether a password may cross a connection without TLS; unset: only on loopback addresses
    /// and Unix sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_plaintext_auth: Option<bool>,
    /// Connections one IP address may hold open at once.
    #[serde(default = "default_per_address")]
    pub max_connections_per_address: u64,
    /// Connections held open at once in all.
    #[serde(default = "default_connections")]
    pub max_connections: u64,
}

/// `[imap]`: `listen` (STARTTLS offered when a certificate is set), `listen_tls` (implicit TLS,
/// RFC 8314's port 993), or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapSection {
    /// `ip:port` (RFC 3501's port is 143, e.g. "0.0.0.0:143") or a Unix socket path; STARTTLS
    /// with `tls_cert`/`tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `ip:port` with TLS from the first byte (e.g. "0.0.0.0:993"); needs `tls_cert`/`tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_tls: Option<String>,
    /// For a Unix socket `listen`: the socket file's permissions, octal; unset: as the process's
    /// umask leaves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// PEM certificate chain for STARTTLS on `listen` and for `listen_tls`; with `tls_key`. Read
    /// again on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Whether a password may cross `listen` without TLS; unset: only on loopback addresses and
    /// Unix sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_plaintext_auth: Option<bool>,
    /// Connections one IP address may hold open at once (on each listener).
    #[serde(default = "default_per_address")]
    pub max_connections_per_address: u64,
    /// Connections held open at once in all (on each listener).
    #[serde(default = "default_connections")]
    pub max_connections: u64,
    /// `[imap.special_use]`: the mailbox of each RFC 6154 special use.
    #[serde(default)]
    pub special_use: SpecialUseSection,
    /// What a login on a node that is not the primary of the user's INBOX gets: `"local"` (this
    /// node serves it), `"referral"` (an RFC 2221 referral to the primary's `[[peers]] imap`) or
    /// `"proxy"` (this node relays the session to the primary). Reloaded live.
    #[serde(default = "default_direct")]
    pub direct: String,
    /// METADATA (RFC 5464): annotations with a value one mailbox may hold; at least 10 (RFC
    /// 5464 4.1). The size of one value is `[limits] max_annotation_bytes`.
    #[serde(default = "default_metadata_max_entries")]
    pub metadata_max_entries: u64,
    /// PEM CA certificate(s) the `"proxy"` direct trusts for the primaries' IMAP certificates;
    /// unset: the cluster CA (`cluster.ca`), for IMAP certificates made by `mailmesh certs
    /// node`. A certificate must name the primary (its node name) or the host of its `[[peers]]
    /// imap` address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_ca: Option<PathBuf>,
}

fn default_direct() -> String {
    "local".into()
}

fn default_metadata_max_entries() -> u64 {
    100
}

/// `[imap.special_use]`: the mailbox LIST marks `\Drafts`, `\Sent`, `\Trash`, `\Junk` and
/// `\Archive` (RFC 6154); `""` gives that use to no mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialUseSection {
    #[serde(default = "default_drafts")]
    pub drafts: String,
    #[serde(default = "default_sent")]
    pub sent: String,
    #[serde(default = "default_trash")]
    pub trash: String,
    #[serde(default = "default_junk")]
    pub junk: String,
    #[serde(default = "default_archive")]
    pub archive: String,
}

impl Default for SpecialUseSection {
    fn default() -> SpecialUseSection {
        SpecialUseSection {
            drafts: default_drafts(),
            sent: default_sent(),
            trash: default_trash(),
            junk: default_junk(),
            archive: default_archive(),
        }
    }
}

impl SpecialUseSection {
    /// (key, value) in [`crate::imap::special_use::USES`]' order.
    fn entries(&self) -> [(&'static str, &str); 5] {
        [
            ("drafts", &self.drafts),
            ("sent", &self.sent),
            ("trash", &self.trash),
            ("junk", &self.junk),
            ("archive", &self.archive),
        ]
    }

    /// Each name checked as a mailbox name (INBOX in any case is INBOX), errors naming the key.
    pub fn validate(&self) -> Result<SpecialUses, ConfigError> {
        let mut uses = Vec::new();
        for ((key, value), (use_key, attribute, _)) in self.entries().into_iter().zip(USES) {
            debug_assert_eq!(key, use_key);
            let name = if value.is_empty() {
                String::new()
            } else {
                normalize_mailbox_name(value)
                    .map_err(|e| ConfigError::invalid(format!("imap.special_use.{key}"), e.to_string()))?
            };
            uses.push((attribute, name));
        }
        Ok(SpecialUses::new(uses))
    }
}

fn default_drafts() -> String {
    "Drafts".into()
}

fn default_sent() -> String {
    "Sent".into()
}

fn default_trash() -> String {
    "Trash".into()
}

fn default_junk() -> String {
    "Junk".into()
}

fn default_archive() -> String {
    "Archive".into()
}

fn default_per_address() -> u64 {
    64
}

fn default_connections() -> u64 {
    1024
}

/// `[cluster]`: where this node listens for its peers (QUIC over UDP) and its TLS identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `ip:port`, e.g. `0.0.0.0:7100`.
    pub listen: String,
    /// PEM certificate of the cluster CA (`mailmesh certs ca`).
    pub ca: PathBuf,
    /// PEM certificate of this node, naming it (`mailmesh certs node NAME`).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// The largest difference between two nodes' wall clocks, in milliseconds. A node starting
    /// on a new data directory (first start, or a lost disk replaced) waits this long first, so
    /// it never mints a message or change identity its lost store minted.
    #[serde(default = "default_max_clock_skew_ms")]
    pub max_clock_skew_ms: u64,
}

fn default_max_clock_skew_ms() -> u64 {
    1000
}

/// More than this is a mistake (a value in microseconds, say): a new node would wait that long.
const MAX_CLOCK_SKEW_MS_LIMIT: u64 = 600_000;

/// One `[[peers]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub name: String,
    /// `host:port` of the peer's `cluster.listen`.
    pub address: String,
    /// The peer mounts this node's `storage.shared_spool`: bodies are not sent to it.
    #[serde(default)]
    pub shared_bodies: bool,
    /// `host:port` of the peer's IMAP listener as clients reach it: where `[imap] direct` sends a
    /// client whose INBOX has its primary there (a referral names it, a proxy connects to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<String>,
    /// `imap` is the peer's `listen_tls` (TLS from the first byte); unset or false: its
    /// `listen`, where a proxy says STARTTLS before it logs in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imap_tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Kept as text until [`Config::validate`], so a bad name is reported with its key.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub data_dir: PathBuf,
    pub segment_bytes: u64,
    /// A body spool shared with some peers (see `peers.shared_bodies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_spool: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_message_bytes: u64,
    pub max_annotation_bytes: u64,
    pub max_script_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxesSection {
    pub max_active: u64,
    pub idle_after_secs: u64,
}

/// The Prometheus endpoint: off unless `listen` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `host:port` to serve `GET /metrics` on, e.g. "127.0.0.1:9464".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// Why a configuration was refused. Each variant says which key or which source is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, a key is unknown, or a value has the wrong type.
    /// The `config` crate's message names the file (with line and column for syntax errors) or
    /// the key.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A key that no section has (a typo, or a setting of a later version).
    #[error("{key}: unknown key {origin}; {expected}")]
    UnknownKey {
        key: String,
        origin: String,
        expected: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A configuration that passed validation, with the options derived from it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// What was configured, as the layers merged it (printed by `check-config`).
    pub config: Config,
    /// What the actors are started with.
    pub options: NodeOptions,
    /// The cluster transport's settings, with the TLS files read; `None` for a node alone.
    pub cluster: Option<ClusterOptions>,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `[[users]]`, validated.
    pub users: UserTable,
    /// `[lmtp]`, validated (its TLS files read once to check them); `None`: no LMTP.
    pub lmtp: Option<LmtpOptions>,
    /// `[managesieve]`, validated; `None`: no ManageSieve.
    pub managesieve: Option<ManageSieveOptions>,
    /// `[imap]`, validated; `None`: no IMAP.
    pub imap: Option<ImapOptions>,
}

impl Config {
    /// Merges defaults, the file at `path` (required if given) and the `MAILMESH_` environment,
    /// then validates the result.
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let mut builder = config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = path {
            // The format is fixed rather than guessed from the extension: `node.conf` is TOML too.
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let merged = builder
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator("__"),
            )
            .build()?;
        let config: Config = merged
            .clone()
            .try_deserialize()
            .map_err(|e| locate_unknown_key(e, &merged))?;
        let options = config.validate()?;
        let cluster = config.validate_cluster(&options.node)?;
        let metrics_listen = config.metrics_listen()?;
        let users = config.users()?;
        let lmtp = config.lmtp(options.limits.max_message_bytes)?;
        let managesieve = config.managesieve()?;
        let imap = config.imap()?;
        Ok(Loaded {
            config,
            options: with_peers(options, cluster.as_ref()),
            cluster,
            metrics_listen,
            users,
            lmtp,
            managesieve,
            imap,
        })
    }

    /// Checks every value and builds the actors' options from them.
    pub fn validate(&self) -> Result<NodeOptions, ConfigError> {
        let node = NodeId::new(self.node.name.as_str())
            .map_err(|e| ConfigError::invalid("node.name", e.to_string()))?;

        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("storage.data_dir", "must not be empty"));
        }
        let segment_bytes = positive("storage.segment_bytes", self.storage.segment_bytes)?;

        let max_message_bytes = positive("limits.max_message_bytes", self.limits.max_message_bytes)?;
        // A body's length is stored in 32 bits in its segment entry; a larger message could not
        // be stored faithfully, so it is refused here rather than at the first big append.
        if max_message_bytes > u64::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                format!(
                    "{max_message_bytes} is larger than {}, the largest body the store can hold",
                    u32::MAX
                ),
            ));
        }
        let max_annotation_bytes =
            positive_usize("limits.max_annotation_bytes", self.limits.max_annotation_bytes)?;
        let max_script_bytes = positive_usize("limits.max_script_bytes", self.limits.max_script_bytes)?;

        let max_active = positive_usize("mailboxes.max_active", self.mailboxes.max_active)?;
        let idle_after_secs = positive("mailboxes.idle_after_secs", self.mailboxes.idle_after_secs)?;

        let mut options = NodeOptions::new(node, self.storage.data_dir.clone());
        options.shared_spool = self.storage.shared_spool.clone();
        options.segment_bytes = segment_bytes;
        options.limits = Limits {
            max_message_bytes,
            max_annotation_bytes,
            max_script_bytes,
        };
        options.activation = ActivationPolicy {
            max_active,
            idle_after: Duration::from_secs(idle_after_secs),
        };
        // A node alone has no peer holding what a lost store of its minted: it need not wait.
        if let Some(cluster) = &self.cluster {
            if cluster.max_clock_skew_ms > MAX_CLOCK_SKEW_MS_LIMIT {
                return Err(ConfigError::invalid(
                    "cluster.max_clock_skew_ms",
                    format!(
                        "{} ms is more than {MAX_CLOCK_SKEW_MS_LIMIT} ms (a new node waits this long before it starts)",
                        cluster.max_clock_skew_ms
                    ),
                ));
            }
            options.max_clock_skew = Duration::from_millis(cluster.max_clock_skew_ms);
        }
        Ok(options)
    }

    /// Checks `[cluster]` and `[[peers]]` as a whole and reads the TLS files; `None` when there is
    /// no `[cluster]` (and then there may be no peers).
    pub fn validate_cluster(&self, node: &NodeId) -> Result<Option<ClusterOptions>, ConfigError> {
        let Some(cluster) = &self.cluster else {
            if !self.peers.is_empty() {
                return Err(ConfigError::invalid(
                    "peers",
                    "peers need a [cluster] section (listen address, CA, certificate and key)",
                ));
            }
            return Ok(None);
        };
        let listen: SocketAddr = cluster.listen.parse().map_err(|e| {
            ConfigError::invalid(
                "cluster.listen",
                format!("{:?} is not an ip:port address: {e}", cluster.listen),
            )
        })?;
        for (key, path) in [
            ("cluster.ca", &cluster.ca),
            ("cluster.cert", &cluster.cert),
            ("cluster.key", &cluster.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        let mut peers: Vec<PeerAddress> = Vec::with_capacity(self.peers.len());
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("peers[{i}].{field}");
            let name = NodeId::new(peer.name.as_str())
                .map_err(|e| ConfigError::invalid(key("name"), e.to_string()))?;
            if &name == node {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("{name} is this node's own name"),
                ));
            }
            if let Some(j) = peers.iter().position(|p| p.node == name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("{name} is configured twice (also peers[{j}])"),
                ));
            }
            check_address(&peer.address).map_err(|problem| ConfigError::invalid(key("address"), problem))?;
            if peer.shared_bodies && self.storage.shared_spool.is_none() {
                return Err(ConfigError::invalid(
                    key("shared_bodies"),
                    "needs storage.shared_spool, the spool this peer shares",
                ));
            }
            if let Some(imap) = &peer.imap {
                check_address(imap).map_err(|problem| ConfigError::invalid(key("imap"), problem))?;
            }
            peers.push(PeerAddress {
                node: name,
                address: peer.address.clone(),
                shared_bodies: peer.shared_bodies,
                imap: peer.imap.clone(),
                imap_tls: peer.imap_tls,
            });
        }
        let files = crate::cluster::tls::TlsFiles {
            ca: cluster.ca.clone(),
            cert: cluster.cert.clone(),
            key: cluster.key.clone(),
        };
        let tls = TlsIdentity::load(&files, node).map_err(|e| ConfigError::invalid(e.key, e.problem))?;
        Ok(Some(ClusterOptions { listen, tls, peers }))
    }

    /// The metrics endpoint's address, checked.
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = &self.metrics.listen else {
            return Ok(None);
        };
        listen.parse().map(Some).map_err(|_| {
            ConfigError::invalid(
                "metrics.listen",
                format!("{listen:?} is not an address and port, e.g. \"127.0.0.1:9464\""),
            )
        })
    }

    /// `[[users]]`, checked.
    pub fn users(&self) -> Result<UserTable, ConfigError> {
        let entries: Vec<(String, String)> = self
            .users
            .iter()
            .map(|u| (u.name.clone(), u.password_hash.clone()))
            .collect();
        UserTable::new(&entries).map_err(|(key, problem)| ConfigError::invalid(key, problem))
    }

    /// `[lmtp]`, checked, with its TLS files read once so that a bad one is reported now.
    pub fn lmtp(&self, max_message_bytes: u64) -> Result<Option<LmtpOptions>, ConfigError> {
        let Some(lmtp) = &self.lmtp else {
            return Ok(None);
        };
        let listen =
            ListenAddress::parse(&lmtp.listen).map_err(|p| ConfigError::invalid("lmtp.listen", p))?;
        let socket_mode = socket_mode("lmtp", &listen, &lmtp.socket_mode)?;
        let tls = listener_tls(
            "lmtp",
            &listen,
            &lmtp.tls_cert,
            &lmtp.tls_key,
            lmtp.implicit_tls,
            lmtp.allow_plaintext_auth,
        )?;
        let limits = ConnectionLimits {
            per_address: positive_usize(
                "lmtp.max_connections_per_address",
                lmtp.max_connections_per_address,
            )?,
            total: positive_usize("lmtp.max_connections", lmtp.max_connections)?,
        };
        let max_data_bytes = lmtp.max_data_bytes.unwrap_or(max_message_bytes.saturating_mul(4));
        if max_data_bytes < max_message_bytes {
            return Err(ConfigError::invalid(
                "lmtp.max_data_bytes",
                format!(
                    "{max_data_bytes} is less than limits.max_message_bytes ({max_message_bytes}): a message of the largest size could never be taken"
                ),
            ));
        }
        Ok(Some(LmtpOptions {
            listen,
            socket_mode,
            tls,
            limits,
            max_message_bytes,
            max_data_bytes,
        }))
    }

    /// `[managesieve]`, checked, with its TLS files read once so that a bad one is reported now.
    pub fn managesieve(&self) -> Result<Option<ManageSieveOptions>, ConfigError> {
        let Some(section) = &self.managesieve else {
            return Ok(None);
        };
        let listen = ListenAddress::parse(&section.listen)
            .map_err(|p| ConfigError::invalid("managesieve.listen", p))?;
        let socket_mode = socket_mode("managesieve", &listen, &section.socket_mode)?;
        let tls = listener_tls(
            "managesieve",
            &listen,
            &section.tls_cert,
            &section.tls_key,
            section.implicit_tls,
            section.allow_plaintext_auth,
        )?;
        let limits = ConnectionLimits {
            per_address: positive_usize(
                "managesieve.max_connections_per_address",
                section.max_connections_per_address,
            )?,
            total: positive_usize("managesieve.max_connections", section.max_connections)?,
        };
        Ok(Some(ManageSieveOptions {
            listen,
            socket_mode,
            tls,
            limits,
        }))
    }

    /// `[imap]`, checked, with its TLS files read once so that a bad one is reported now.
    pub fn imap(&self) -> Result<Option<ImapOptions>, ConfigError> {
        let Some(section) = &self.imap else {
            return Ok(None);
        };
        let mut listeners = Vec::new();
        if let Some(listen) = &section.listen {
            let listen = ListenAddress::parse(listen).map_err(|p| ConfigError::invalid("imap.listen", p))?;
            let socket_mode = socket_mode("imap", &listen, &section.socket_mode)?;
            let tls = listener_tls(
                "imap",
                &listen,
                &section.tls_cert,
                &section.tls_key,
                false,
                section.allow_plaintext_auth,
            )?;
            listeners.push(ImapListenerOptions {
                listen,
                socket_mode,
                tls,
            });
        }
        if let Some(listen_tls) = &section.listen_tls {
            let listen =
                ListenAddress::parse(listen_tls).map_err(|p| ConfigError::invalid("imap.listen_tls", p))?;
            if section.tls_cert.is_none() || section.tls_key.is_none() {
                return Err(ConfigError::invalid(
                    "imap.listen_tls",
                    "needs tls_cert and tls_key",
                ));
            }
            let tls = listener_tls(
                "imap",
                &listen,
                &section.tls_cert,
                &section.tls_key,
                true,
                section.allow_plaintext_auth,
            )?;
            listeners.push(ImapListenerOptions {
                listen,
                socket_mode: None,
                tls,
            });
        }
        if listeners.is_empty() {
            return Err(ConfigError::invalid(
                "imap.listen",
                "set listen, listen_tls or both",
            ));
        }
        let limits = ConnectionLimits {
            per_address: positive_usize(
                "imap.max_connections_per_address",
                section.max_connections_per_address,
            )?,
            total: positive_usize("imap.max_connections", section.max_connections)?,
        };
        let special_use = section.special_use.validate()?;
        let direct = section
            .direct
            .parse::<Direct>()
            .map_err(|problem| ConfigError::invalid("imap.direct", problem))?;
        let metadata_max_entries = positive_usize("imap.metadata_max_entries", section.metadata_max_entries)?;
        if section.metadata_max_entries < crate::imap::metadata::MIN_ENTRIES {
            return Err(ConfigError::invalid(
                "imap.metadata_max_entries",
                format!(
                    "{} is below the {} annotations per mailbox RFC 5464 asks a server to take",
                    section.metadata_max_entries,
                    crate::imap::metadata::MIN_ENTRIES
                ),
            ));
        }
        if let Some(path) = &section.proxy_ca {
            crate::imap::direct::read_trust(path)
                .map_err(|problem| ConfigError::invalid("imap.proxy_ca", problem))?;
        }
        Ok(Some(ImapOptions {
            listeners,
            limits,
            special_use,
            direct,
            metadata_max_entries,
            proxy_ca: section.proxy_ca.clone(),
        }))
    }

    /// The configuration as TOML, as `check-config` prints it.
    pub fn to_toml(&self) -> String {
        // Serializing plain strings and integers into TOML cannot fail.
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# cannot print the configuration as TOML: {e}\n{self:#?}\n"))
    }
}

/// `socket_mode` of `[section]`: octal permission bits for a Unix socket listener.
pub fn socket_mode(
    section: &'static str,
    listen: &ListenAddress,
    mode: &Option<String>,
) -> Result<Option<u32>, ConfigError> {
    let Some(text) = mode else {
        return Ok(None);
    };
    let key = format!("{section}.socket_mode");
    if !matches!(listen, ListenAddress::Unix(_)) {
        return Err(ConfigError::invalid(
            key,
            "applies only when listen is a Unix socket path",
        ));
    }
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(bits) if !digits.is_empty() && digits.len() <= 4 && bits <= 0o777 => Ok(Some(bits)),
        _ => Err(ConfigError::invalid(
            key,
            format!("{text:?} is not octal permission bits such as \"0660\""),
        )),
    }
}

/// A client listener's TLS keys (`tls_cert`, `tls_key`, `implicit_tls`, `allow_plaintext_auth`
/// of `[section]`), checked and the files read once. Every client listener takes these keys.
pub fn listener_tls(
    section: &'static str,
    listen: &ListenAddress,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    implicit: bool,
    allow_plaintext_auth: Option<bool>,
) -> Result<ListenerTlsOptions, ConfigError> {
    let files = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                format!("{section}.tls_key"),
                "tls_cert needs tls_key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{section}.tls_cert"),
                "tls_key needs tls_cert",
            ))
        }
    };
    if implicit && files.is_none() {
        return Err(ConfigError::invalid(
            format!("{section}.implicit_tls"),
            "needs tls_cert and tls_key",
        ));
    }
    if let Some(files) = &files {
        ServerTls::load(section, files).map_err(|e| ConfigError::invalid(e.key, e.problem))?;
    }
    Ok(ListenerTlsOptions {
        files,
        implicit,
        allow_plaintext_auth: allow_plaintext_auth.unwrap_or_else(|| plaintext_auth_default(listen)),
    })
}

/// `options` with a Channel for every configured peer.
fn with_peers(mut options: NodeOptions, cluster: Option<&ClusterOptions>) -> NodeOptions {
    options.peers = cluster.map(ClusterOptions::peer_options).unwrap_or_default();
    options
}

/// A peer address is `host:port`; the host is resolved when the peer is dialled (so a name in
/// DNS may move), the port must be a number.
fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{address:?} is not host:port")),
    }
}

/// serde reports an unknown key as "unknown field `x`, expected ..." under its parent key, but
/// not where it came from. Whether it is a typo in the file or a stray `MAILMESH_` variable
/// changes what the operator must fix, so this looks the value up and says which source set it.
fn locate_unknown_key(error: config::ConfigError, merged: &config::Config) -> ConfigError {
    let (parent, message) = match &error {
        config::ConfigError::At {
            error: inner, key, ..
        } => (key.clone(), inner.to_string()),
        other => (None, other.to_string()),
    };
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return ConfigError::Load(error);
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return ConfigError::Load(error);
    };
    let key = match parent {
        Some(parent) => format!("{parent}.{field}"),
        None => field.to_string(),
    };
    let origin = lookup(merged, &key).and_then(|v| v.origin().map(str::to_string));
    let origin = match origin.as_deref() {
        Some("the environment") => format!(
            "set by the environment variable {ENV_PREFIX}_{} (levels are separated by `__`)",
            key.replace('.', "__").to_uppercase()
        ),
        Some(file) => format!("in {file}"),
        None => "in the configuration".to_string(),
    };
    ConfigError::UnknownKey {
        key,
        origin,
        expected: expected.trim_start_matches(',').trim().to_string(),
    }
}

/// The raw value at a dotted key, with its origin (a typed `get` would drop the origin).
fn lookup(merged: &config::Config, key: &str) -> Option<config::Value> {
    let mut table = config::Source::collect(merged).ok()?;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = table.remove(part)?;
        if parts.peek().is_none() {
            return Some(value);
        }
        table = value.into_table().ok()?;
    }
    None
}

fn positive(key: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be greater than 0"));
    }
    Ok(value)
}

fn positive_usize(key: &'static str, value: u64) -> Result<usize, ConfigError> {
    let value = positive(key, value)?;
    usize::try_from(value)
        .map_err(|_| ConfigError::invalid(key, format!("{value} is too large for this machine")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Config {
        let merged = config::Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .unwrap();
        merged.try_deserialize().unwrap()
    }

    #[test]
    fn defaults_are_valid_and_match_the_actors_defaults() {
        let config = defaults();
        assert_eq!(config.node.name, "mailmesh-1");
        assert_eq!(config.storage.data_dir, PathBuf::from("./mailmesh-data"));
        let options = config.validate().unwrap();
        // The embedded file must not drift from what the actors consider their defaults.
        let reference = NodeOptions::new(NodeId::new("mailmesh-1").unwrap(), "./mailmesh-data");
        assert_eq!(options.limits, reference.limits);
        assert_eq!(options.activation, reference.activation);
        assert_eq!(options.segment_bytes, reference.segment_bytes);
    }

    #[test]
    fn a_special_use_that_is_no_mailbox_name_names_its_key() {
        let section = SpecialUseSection {
            trash: "Old//Trash".into(),
            ..Default::default()
        };
        let message = section.validate().unwrap_err().to_string();
        assert!(message.starts_with("imap.special_use.trash: "), "{message}");
        let section = SpecialUseSection {
            sent: "inbox".into(),
            junk: String::new(),
            ..Default::default()
        };
        let uses = section.validate().unwrap();
        assert_eq!(uses.of("INBOX").collect::<Vec<_>>(), ["Sent"]);
        assert_eq!(uses.of("Junk").count(), 0);
        assert_eq!(uses.of("Trash").collect::<Vec<_>>(), ["Trash"]);
    }

    #[test]
    fn invalid_values_name_their_key() {
        type Spoil = fn(&mut Config);
        let cases: [(&str, Spoil); 7] = [
            ("node.name", |c| c.node.name = "Bad Name".into()),
            ("storage.data_dir", |c| c.storage.data_dir = PathBuf::new()),
            ("storage.segment_bytes", |c| c.storage.segment_bytes = 0),
            ("limits.max_message_bytes", |c| {
                c.limits.max_message_bytes = 1 << 32
            }),
            ("limits.max_annotation_bytes", |c| {
                c.limits.max_annotation_bytes = 0
            }),
            ("limits.max_script_bytes", |c| c.limits.max_script_bytes = 0),
            ("mailboxes.idle_after_secs", |c| c.mailboxes.idle_after_secs = 0),
        ];
        for (key, spoil) in cases {
            let mut config = defaults();
            spoil(&mut config);
            let message = config.validate().unwrap_err().to_string();
            assert!(message.starts_with(&format!("{key}: ")), "{key}: got {message:?}");
        }
    }

    #[test]
    fn a_clustered_node_waits_out_the_configured_clock_skew_and_a_node_alone_does_not() {
        let mut config = defaults();
        assert_eq!(config.validate().unwrap().max_clock_skew, Duration::ZERO);
        let section: ClusterSection = toml::from_str(
            "listen = \"127.0.0.1:7100\"\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n",
        )
        .unwrap();
        assert_eq!(section.max_clock_skew_ms, 1000, "the default");
        config.cluster = Some(section);
        assert_eq!(config.validate().unwrap().max_clock_skew, Duration::from_secs(1));
        config.cluster.as_mut().unwrap().max_clock_skew_ms = 600_001;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.starts_with("cluster.max_clock_skew_ms: "), "{message}");
    }

    #[test]
    fn metrics_are_off_by_default_and_a_bad_address_names_its_key() {
        let mut config = defaults();
        assert_eq!(config.metrics_listen().unwrap(), None);
        config.metrics.listen = Some("127.0.0.1:9464".into());
        assert_eq!(
            config.metrics_listen().unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        config.metrics.listen = Some("localhost".into());
        let message = config.metrics_listen().unwrap_err().to_string();
        assert!(message.starts_with("metrics.listen: "), "{message}");
    }

    #[test]
    fn lmtp_settings_are_checked_and_name_their_key() {
        let mut config = defaults();
        assert_eq!(config.lmtp(1000).unwrap(), None);
        let section = LmtpSection {
            listen: "127.0.0.1:2424".into(),
            socket_mode: None,
            tls_cert: None,
            tls_key: None,
            implicit_tls: false,
            allow_plaintext_auth: None,
            max_connections_per_address: 8,
            max_connections: 100,
            max_data_bytes: None,
        };
        config.lmtp = Some(section.clone());
        let options = config.lmtp(1000).unwrap().unwrap();
        assert_eq!(
            options.max_data_bytes, 4000,
            "four messages of the largest size by default"
        );
        assert!(options.tls.allow_plaintext_auth, "loopback");
        let cases: [(&str, LmtpSection); 4] = [
            (
                "lmtp.listen",
                LmtpSection {
                    listen: "nowhere".into(),
                    ..section.clone()
                },
            ),
            (
                "lmtp.max_data_bytes",
                LmtpSection {
                    max_data_bytes: Some(999),
                    ..section.clone()
                },
            ),
            (
                "lmtp.implicit_tls",
                LmtpSection {
                    implicit_tls: true,
                    ..section.clone()
                },
            ),
            (
                "lmtp.tls_key",
                LmtpSection {
                    tls_cert: Some("c.pem".into()),
                    ..section.clone()
                },
            ),
        ];
        for (key, bad) in cases {
            config.lmtp = Some(bad);
            let message = config.lmtp(1000).unwrap_err().to_string();
            assert!(message.starts_with(&format!("{key}: ")), "{key}: got {message:?}");
        }
        config.lmtp = Some(LmtpSection {
            listen: "0.0.0.0:24".into(),
            ..section
        });
        assert!(!config.lmtp(1000).unwrap().unwrap().tls.allow_plaintext_auth);
    }

    #[test]
    fn imap_settings_are_checked_and_name_their_key() {
        let mut config = defaults();
        assert_eq!(config.imap().unwrap(), None, "off unless configured");
        let section = ImapSection {
            listen: Some("127.0.0.1:143".into()),
            listen_tls: None,
            socket_mode: None,
            tls_cert: None,
            tls_key: None,
            allow_plaintext_auth: None,
            max_connections_per_address: 8,
            max_connections: 100,
            special_use: SpecialUseSection::default(),
            direct: "local".into(),
            metadata_max_entries: 100,
            proxy_ca: None,
        };
        config.imap = Some(section.clone());
        let options = config.imap().unwrap().unwrap();
        assert_eq!(options.listeners.len(), 1);
        assert!(!options.listeners[0].tls.implicit);
        assert!(
            options.listeners[0].tls.allow_plaintext_auth,
            "loopback allows a password by default"
        );
        assert_eq!(options.limits.per_address, 8);
        assert_eq!(options.direct, Direct::Local);
        for (text, direct) in [("referral", Direct::Referral), ("proxy", Direct::Proxy)] {
            config.imap = Some(ImapSection {
                direct: text.into(),
                ..section.clone()
            });
            assert_eq!(config.imap().unwrap().unwrap().direct, direct);
        }
        assert_eq!(options.metadata_max_entries, 100);
        let cases: [(&str, ImapSection); 6] = [
            (
                "imap.metadata_max_entries",
                ImapSection {
                    metadata_max_entries: 9,
                    ..section.clone()
                },
            ),
            (
                "imap.direct",
                ImapSection {
                    direct: "redirect".into(),
                    ..section.clone()
                },
            ),
            (
                "imap.listen",
                ImapSection {
                    listen: None,
                    ..section.clone()
                },
            ),
            (
                "imap.listen_tls",
                ImapSection {
                    listen_tls: Some("127.0.0.1:993".into()),
                    ..section.clone()
                },
            ),
            (
                "imap.listen",
                ImapSection {
                    listen: Some("nowhere".into()),
                    ..section.clone()
                },
            ),
            (
                "imap.max_connections",
                ImapSection {
                    max_connections: 0,
                    ..section.clone()
                },
            ),
        ];
        for (key, bad) in cases {
            config.imap = Some(bad);
            let message = config.imap().unwrap_err().to_string();
            assert!(message.contains(key), "{key}: {message}");
        }
    }

    #[test]
    fn a_peers_imap_address_is_checked_and_names_its_key() {
        let mut config = defaults();
        config.cluster = Some(ClusterSection {
            listen: "127.0.0.1:7100".into(),
            ca: "ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
            max_clock_skew_ms: 1000,
        });
        let peer = |name: &str, imap: Option<&str>| PeerSection {
            name: name.into(),
            address: "127.0.0.1:7101".into(),
            shared_bodies: false,
            imap: imap.map(String::from),
            imap_tls: false,
        };
        let node = NodeId::new("mailmesh-1").unwrap();
        for bad in ["nowhere", "host:", ":143", "host:99999"] {
            config.peers = vec![peer("n2", Some("n2.example:143")), peer("n3", Some(bad))];
            let message = config.validate_cluster(&node).unwrap_err().to_string();
            assert!(message.contains("peers[1].imap: "), "{bad}: {message}");
        }
    }

    #[test]
    fn managesieve_settings_are_checked_and_name_their_key() {
        let mut config = defaults();
        assert_eq!(config.managesieve().unwrap(), None, "off unless configured");
        let section = ManageSieveSection {
            listen: "127.0.0.1:4190".into(),
            socket_mode: None,
            tls_cert: None,
            tls_key: None,
            implicit_tls: false,
            allow_plaintext_auth: None,
            max_connections_per_address: 8,
            max_connections: 100,
        };
        config.managesieve = Some(section.clone());
        let options = config.managesieve().unwrap().unwrap();
        assert!(options.tls.allow_plaintext_auth, "loopback");
        assert_eq!(options.limits.per_address, 8);
        let cases: [(&str, ManageSieveSection); 6] = [
            (
                "managesieve.socket_mode",
                ManageSieveSection {
                    socket_mode: Some("0660".into()),
                    ..section.clone()
                },
            ),
            (
                "managesieve.socket_mode",
                ManageSieveSection {
                    listen: "/run/mailmesh/sieve.sock".into(),
                    socket_mode: Some("rw-rw----".into()),
                    ..section.clone()
                },
            ),
            (
                "managesieve.listen",
                ManageSieveSection {
                    listen: "nowhere".into(),
                    ..section.clone()
                },
            ),
            (
                "managesieve.implicit_tls",
                ManageSieveSection {
                    implicit_tls: true,
                    ..section.clone()
                },
            ),
            (
                "managesieve.tls_cert",
                ManageSieveSection {
                    tls_key: Some("k.pem".into()),
                    ..section.clone()
                },
            ),
            (
                "managesieve.max_connections",
                ManageSieveSection {
                    max_connections: 0,
                    ..section.clone()
                },
            ),
        ];
        for (key, bad) in cases {
            config.managesieve = Some(bad);
            let message = config.managesieve().unwrap_err().to_string();
            assert!(message.starts_with(&format!("{key}: ")), "{key}: got {message:?}");
        }
        config.managesieve = Some(ManageSieveSection {
            listen: "/run/mailmesh/sieve.sock".into(),
            socket_mode: Some("0660".into()),
            ..section.clone()
        });
        assert_eq!(config.managesieve().unwrap().unwrap().socket_mode, Some(0o660));
        config.managesieve = Some(ManageSieveSection {
            listen: "0.0.0.0:4190".into(),
            ..section
        });
        assert!(
            !config.managesieve().unwrap().unwrap().tls.allow_plaintext_auth,
            "a password needs TLS on a network address"
        );
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn printed_toml_reads_back_as_the_same_config() {
        let config = defaults();
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }
}
