//! LMTP durable deliveries per second: 16 concurrent sessions, each delivering 2 KB messages
//! with one recipient, a transaction pipelined per write (MAIL, RCPT, DATA and the message), the
//! next sent only after the previous one's final 250, which the node gives once the message is
//! durable. A server that fsynced each message alone would be capped at the disk's
//! fdatasyncs/s; the node's group commit lets concurrent sessions share them. The timed
//! deliveries are driven from one thread ([`driver`]), so the client takes as little of the two
//! cores as it can.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::driver;
use super::nodes::{message, Cluster, CpuTime, DEADLINE};
use crate::error::Error;

/// Concurrent sessions, as the figure asks.
pub const SESSIONS: usize = 16;

pub struct LmtpResult {
    pub deliveries: usize,
    pub secs: f64,
    pub cpu: CpuTime,
    /// Commit groups the node flushed during the timed deliveries (from its metrics): how many
    /// deliveries shared each fdatasync, the figure that says whether group commit works.
    pub commit_groups: f64,
}

/// Starts a node with `[lmtp]` and `SESSIONS` users, delivers `count` messages of `size` bytes.
pub fn deliveries(root: &std::path::Path, count: usize, size: usize) -> Result<LmtpResult, Error> {
    let cluster = Cluster::new(root)?;
    let port = free_tcp_port()?;
    let metrics = format!("127.0.0.1:{}", free_tcp_port()?);
    let hash = crate::auth::hash_password(b"bench").map_err(Error::Bench)?;
    let mut extra = format!("\n[lmtp]\nlisten = \"127.0.0.1:{port}\"\n\n[metrics]\nlisten = \"{metrics}\"\n");
    for user in 0..SESSIONS {
        extra.push_str(&format!(
            "\n[[users]]\nname = \"u{user}\"\npassword_hash = {hash:?}\n"
        ));
    }
    let spec = cluster.node("n1", &extra)?;
    spec.write_config(&[])?;
    let node = spec.start()?;
    let target = format!("127.0.0.1:{port}");
    // Each user's INBOX is made by its first delivery: one warm-up message each, not timed.
    let sessions = (0..SESSIONS)
        .map(|user| Session::open(&target, user))
        .collect::<Result<Vec<_>, _>>()?;
    let sessions = sessions
        .into_iter()
        .map(|mut s| s.deliver(&message(usize::MAX - s.user, size)).map(|()| s))
        .collect::<Result<Vec<_>, _>>()?;
    let groups_before = commit_groups(&metrics)?;
    let cpu_before = CpuTime::of(&[&node])?;
    let start = Instant::now();
    let exchanges = sessions.into_iter().map(|s| s.into_exchange(size)).collect();
    driver::drive(exchanges, count)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = CpuTime::of(&[&node])?.since(cpu_before);
    let commit_groups = commit_groups(&metrics)? - groups_before;
    let stored: u64 = (0..SESSIONS)
        .map(|u| node.message_count(&format!("u{u}"), "INBOX"))
        .sum::<Result<u64, Error>>()?;
    if stored != (count + SESSIONS) as u64 {
        return Err(Error::Bench(format!(
            "LMTP: {stored} messages stored, {} were acknowledged",
            count + SESSIONS
        )));
    }
    node.stop()?;
    Ok(LmtpResult {
        deliveries: count,
        secs,
        cpu,
        commit_groups,
    })
}

/// The node's `mailmesh_commit_groups_total`, read from its metrics endpoint at `address`.
fn commit_groups(address: &str) -> Result<f64, Error> {
    let mut stream = TcpStream::connect(address)
        .map_err(|e| Error::io(format!("cannot connect to metrics on {address}"), e))?;
    stream
        .set_read_timeout(Some(DEADLINE))
        .map_err(|e| Error::io("socket", e))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .map_err(|e| Error::io("metrics write", e))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| Error::io("metrics read", e))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("mailmesh_commit_groups_total ")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| {
            Error::Bench(format!(
                "no mailmesh_commit_groups_total in the node's metrics: {text}"
            ))
        })
}

/// One pipelined LMTP transaction for user `u{user}`: MAIL, RCPT, DATA and the dot-stuffed
/// message, in one write.
fn transaction(user: usize, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("MAIL FROM:<bench@example.org>\r\nRCPT TO:<u{user}@example.org>\r\nDATA\r\n").into_bytes();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The final reply codes of one pipelined transaction, in order: MAIL, RCPT, DATA, and the
/// message's, which comes once it is durable.
const TRANSACTION_REPLIES: [&str; 4] = ["250", "250", "354", "250"];

/// A session's timed deliveries, for [`driver::drive`].
struct LmtpExchange {
    user: usize,
    size: usize,
}

impl driver::Exchange for LmtpExchange {
    fn request(&mut self, i: usize) -> Vec<u8> {
        transaction(self.user, &message(i, self.size))
    }

    fn answered(&mut self, read: &[u8]) -> Result<bool, Error> {
        let finals = driver::complete_lines(read).filter(|l| l.len() >= 4 && l[3] == b' ');
        let mut seen = 0;
        for (line, code) in finals.zip(TRANSACTION_REPLIES) {
            if &line[..3] != code.as_bytes() {
                return Err(Error::Bench(format!(
                    "LMTP answered {:?} where {code} was expected",
                    String::from_utf8_lossy(line)
                )));
            }
            seen += 1;
        }
        Ok(seen == TRANSACTION_REPLIES.len())
    }
}

pub(crate) fn free_tcp_port() -> Result<u16, Error> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("cannot bind a TCP port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("cannot read a TCP port", e))
}

pub(super) struct Session {
    stream: TcpStream,
    user: usize,
    buffer: Vec<u8>,
}

impl Session {
    pub(super) fn open(target: &str, user: usize) -> Result<Session, Error> {
        let stream = TcpStream::connect(target)
            .map_err(|e| Error::io(format!("cannot connect to LMTP on {target}"), e))?;
        stream
            .set_read_timeout(Some(DEADLINE))
            .map_err(|e| Error::io("socket", e))?;
        let _ = stream.set_nodelay(true);
        let mut session = Session {
            stream,
            user,
            buffer: Vec::new(),
        };
        session.expect(&["220"])?;
        session.send(b"LHLO bench\r\n")?;
        session.expect(&["250"])?;
        Ok(session)
    }

    /// One pipelined transaction; returns once the final reply (durable) came.
    pub(super) fn deliver(&mut self, body: &[u8]) -> Result<(), Error> {
        self.send_delivery(body)?;
        self.finish_delivery()
    }

    /// Sends one pipelined transaction without waiting for its replies
    /// ([`Session::finish_delivery`] reads them).
    pub(super) fn send_delivery(&mut self, body: &[u8]) -> Result<(), Error> {
        self.send(&transaction(self.user, body))
    }

    /// The session's socket and protocol for [`driver::drive`], delivering `size`-byte messages.
    fn into_exchange(self, size: usize) -> (TcpStream, LmtpExchange) {
        (
            self.stream,
            LmtpExchange {
                user: self.user,
                size,
            },
        )
    }

    /// Reads the replies of the transaction [`Session::send_delivery`] sent: the last comes once
    /// the message is durable.
    pub(super) fn finish_delivery(&mut self) -> Result<(), Error> {
        self.expect(&TRANSACTION_REPLIES)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io("LMTP write", e))
    }

    /// Reads final reply lines until one per code in `codes` came, each with that code.
    fn expect(&mut self, codes: &[&str]) -> Result<(), Error> {
        let mut seen = 0;
        let mut chunk = [0u8; 4096];
        while seen < codes.len() {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.len() >= 4 && line[3] == b' ' {
                    if &line[..3] != codes[seen].as_bytes() {
                        return Err(Error::Bench(format!(
                            "LMTP answered {:?} where {} was expected",
                            String::from_utf8_lossy(&line).trim_end(),
                            codes[seen]
                        )));
                    }
                    seen += 1;
                }
                continue;
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| Error::io("LMTP read", e))?;
            if n == 0 {
                return Err(Error::Bench("the LMTP server closed the connection".into()));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }
}
