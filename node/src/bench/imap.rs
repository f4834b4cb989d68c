//! IMAP figures on real nodes, from a plain TCP client that speaks the commands line by line:
//!
//! - a large mailbox read by one session: SELECT, `UID FETCH 1:* (FLAGS)` (time and bytes of
//!   the answer), `UID SEARCH UNSEEN`, and the resident memory the selected session adds to the
//!   node;
//! - the time from an LMTP delivery to the untagged EXISTS on an IDLE session, on the node that
//!   took the delivery and on its peer (replication over QUIC in between);
//! - APPENDs of 2 KB messages from 16 concurrent sessions, each answered once durable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::driver;
use super::lmtp::{free_tcp_port, Session as LmtpSession};
use super::nodes::{load, message, poll_until, Cluster, CpuTime, DEADLINE};
use crate::error::Error;

/// Concurrent APPEND sessions, as the figure asks.
pub const APPEND_SESSIONS: usize = 16;

const PASSWORD: &str = "bench";

/// The `[imap]`, `[lmtp]` and `[[users]]` sections of a bench node with `users` users u0, u1...
fn front_ends(imap_port: u16, lmtp_port: u16, users: usize) -> Result<String, Error> {
    let hash = crate::auth::hash_password(PASSWORD.as_bytes()).map_err(Error::Bench)?;
    let mut extra = format!(
        "\n[imap]\nlisten = \"127.0.0.1:{imap_port}\"\n\n[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\n"
    );
    for user in 0..users {
        extra.push_str(&format!(
            "\n[[users]]\nname = \"u{user}\"\npassword_hash = {hash:?}\n"
        ));
    }
    Ok(extra)
}

pub struct LargeMailbox {
    pub messages: usize,
    /// SELECT, the second one (the first reads the mailbox from disk into the page cache).
    pub select_secs: f64,
    pub fetch_secs: f64,
    pub fetch_bytes: usize,
    pub search_secs: f64,
    /// The node's resident memory with the session selected, FETCH and SEARCH done, minus once
    /// it had logged in.
    pub session_bytes: i64,
    /// What the login itself added: the password hash (argon2, about 19 MB while it runs) in
    /// memory the allocator keeps for reuse. Dovecot's figure leaves it out too: its logins are
    /// checked in another process.
    pub login_bytes: i64,
    pub cpu: CpuTime,
}

/// Loads `count` small messages into one INBOX (through the operator socket, as concurrent
/// deliveries would be committed), marks every tenth \Seen, and reads the mailbox over IMAP.
pub fn large_mailbox(root: &std::path::Path, count: usize) -> Result<LargeMailbox, Error> {
    let cluster = Cluster::new(root)?;
    let imap_port = free_tcp_port()?;
    let spec = cluster.node("n1", &front_ends(imap_port, free_tcp_port()?, 1)?)?;
    spec.write_config(&[])?;
    let node = spec.start()?;
    node.create_mailbox("u0", "INBOX")?;
    load(&node, "u0", "INBOX", count, 300)?;
    let target = format!("127.0.0.1:{imap_port}");
    {
        // Every tenth message seen, so UNSEEN has work to do and FLAGS is not always empty.
        let mut setup = ImapClient::login(&target, "u0")?;
        setup.command("SELECT INBOX")?;
        let seen: Vec<String> = (1..=count).step_by(10).map(|n| n.to_string()).collect();
        for chunk in seen.chunks(1000) {
            setup.command(&format!("UID STORE {} +FLAGS.SILENT (\\Seen)", chunk.join(",")))?;
        }
        setup.command("LOGOUT")?;
    }
    let (rss_before_login, _) = node.resident_memory()?;
    let mut client = ImapClient::login(&target, "u0")?;
    let (rss_before, _) = node.resident_memory()?;
    let cpu_before = CpuTime::of(&[&node])?;
    client.command("SELECT INBOX")?;
    client.command("UNSELECT")?;
    let (select_secs, answer) = timed(|| client.command("SELECT INBOX"))?;
    let exists = format!("* {count} EXISTS");
    if !answer.lines().any(|l| l == exists) {
        return Err(Error::Bench(format!("SELECT did not say {exists:?}: {answer}")));
    }
    let (fetch_secs, fetched) = timed(|| client.command("UID FETCH 1:* (FLAGS)"))?;
    let fetch_lines = fetched.lines().filter(|l| l.contains(" FETCH (")).count();
    if fetch_lines != count {
        return Err(Error::Bench(format!(
            "UID FETCH 1:* answered {fetch_lines} messages of {count}"
        )));
    }
    let (search_secs, found) = timed(|| client.command("UID SEARCH UNSEEN"))?;
    let hits = found
        .lines()
        .find_map(|l| l.strip_prefix("* SEARCH"))
        .map(|uids| uids.split_whitespace().count())
        .unwrap_or(0);
    let unseen = count - count.div_ceil(10);
    if hits != unseen {
        return Err(Error::Bench(format!(
            "UID SEARCH UNSEEN found {hits} messages, {unseen} are unseen"
        )));
    }
    let (rss_after, _) = node.resident_memory()?;
    let cpu = CpuTime::of(&[&node])?.since(cpu_before);
    client.command("LOGOUT")?;
    node.stop()?;
    Ok(LargeMailbox {
        messages: count,
        select_secs,
        fetch_secs,
        // The lines as they came, each with its CRLF.
        fetch_bytes: fetched.len() + fetched.lines().count(),
        search_secs,
        session_bytes: rss_after as i64 - rss_before as i64,
        login_bytes: rss_before as i64 - rss_before_login as i64,
        cpu,
    })
}

/// Milliseconds from an LMTP delivery's first byte to the untagged EXISTS on an IDLE session.
pub struct IdleLatency {
    pub deliveries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub struct IdleLatencies {
    pub same_node: IdleLatency,
    pub across: IdleLatency,
}

/// Two linked nodes, each with IMAP and LMTP; `deliveries` messages delivered one at a time on
/// n1, watched by an IDLE session on n1 and, separately, by one on n2.
pub fn idle_latency(root: &std::path::Path, deliveries: usize) -> Result<IdleLatencies, Error> {
    let cluster = Cluster::new(root)?;
    let (imap_a, lmtp_a, imap_b) = (free_tcp_port()?, free_tcp_port()?, free_tcp_port()?);
    let spec_a = cluster.node("n1", &front_ends(imap_a, lmtp_a, 1)?)?;
    let spec_b = cluster.node("n2", &front_ends(imap_b, free_tcp_port()?, 1)?)?;
    spec_a.write_config(&[&spec_b])?;
    spec_b.write_config(&[&spec_a])?;
    let a = spec_a.start()?;
    let b = spec_b.start()?;
    let lmtp = format!("127.0.0.1:{lmtp_a}");
    let mut delivery = LmtpSession::open(&lmtp, 0)?;
    // The first delivery makes the INBOX; the peer must have it before a session selects it.
    delivery.deliver(&message(usize::MAX, 2048))?;
    poll_until("the INBOX on the peer", Duration::from_millis(10), || {
        Ok((b.message_count("u0", "INBOX")? == 1).then_some(()))
    })?;
    let same_node = watch(&format!("127.0.0.1:{imap_a}"), &mut delivery, deliveries, 1)?;
    let across = watch(
        &format!("127.0.0.1:{imap_b}"),
        &mut delivery,
        deliveries,
        1 + deliveries,
    )?;
    a.stop()?;
    b.stop()?;
    Ok(IdleLatencies { same_node, across })
}

/// Delivers `count` messages through `delivery` while a session on `imap` idles on the INBOX
/// (holding `already` messages); times each delivery to its EXISTS.
fn watch(imap: &str, delivery: &mut LmtpSession, count: usize, already: usize) -> Result<IdleLatency, Error> {
    let mut client = ImapClient::login(imap, "u0")?;
    client.command("SELECT INBOX")?;
    client.start_idle()?;
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let exists = format!("* {} EXISTS", already + i + 1);
        let start = Instant::now();
        delivery.send_delivery(&message(already + i, 2048))?;
        client.wait_for_line(&exists)?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        delivery.finish_delivery()?;
    }
    client.stop_idle()?;
    client.command("LOGOUT")?;
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    Ok(IdleLatency {
        deliveries: count,
        p50_ms: percentile(50),
        p99_ms: percentile(99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    })
}

pub struct Appends {
    pub appends: usize,
    pub secs: f64,
    pub cpu: CpuTime,
}

/// `count` APPENDs of `size`-byte messages (LITERAL+, so each is one write) from
/// [`APPEND_SESSIONS`] sessions at once, each sent after the previous one's tagged OK.
pub fn appends(root: &std::path::Path, count: usize, size: usize) -> Result<Appends, Error> {
    let cluster = Cluster::new(root)?;
    let imap_port = free_tcp_port()?;
    let spec = cluster.node("n1", &front_ends(imap_port, free_tcp_port()?, APPEND_SESSIONS)?)?;
    spec.write_config(&[])?;
    let node = spec.start()?;
    let target = format!("127.0.0.1:{imap_port}");
    let mut clients = (0..APPEND_SESSIONS)
        .map(|user| ImapClient::login(&target, &format!("u{user}")))
        .collect::<Result<Vec<_>, _>>()?;
    // Each INBOX made by a first, untimed APPEND.
    for client in &mut clients {
        client.append("INBOX", &message(usize::MAX, size))?;
    }
    let cpu_before = CpuTime::of(&[&node])?;
    let start = Instant::now();
    let exchanges = clients
        .into_iter()
        .map(|client| client.into_appends("INBOX", size))
        .collect::<Result<Vec<_>, _>>()?;
    driver::drive(exchanges, count)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = CpuTime::of(&[&node])?.since(cpu_before);
    let stored: u64 = (0..APPEND_SESSIONS)
        .map(|u| node.message_count(&format!("u{u}"), "INBOX"))
        .sum::<Result<u64, Error>>()?;
    if stored != (count + APPEND_SESSIONS) as u64 {
        return Err(Error::Bench(format!(
            "IMAP APPEND: {stored} messages stored, {} were acknowledged",
            count + APPEND_SESSIONS
        )));
    }
    node.stop()?;
    Ok(Appends {
        appends: count,
        secs,
        cpu,
    })
}

fn timed<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<(f64, T), Error> {
    let start = Instant::now();
    let out = f()?;
    Ok((start.elapsed().as_secs_f64(), out))
}

/// `APPEND` of `body` with a non-synchronizing literal (LITERAL+): one write.
fn append_command(tag: &str, mailbox: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{tag} APPEND {mailbox} {{{}+}}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    out
}

/// A session's timed APPENDs, for [`driver::drive`].
struct AppendExchange {
    mailbox: String,
    size: usize,
    /// The tag of the APPEND in flight.
    tag: String,
}

impl driver::Exchange for AppendExchange {
    fn request(&mut self, i: usize) -> Vec<u8> {
        self.tag = format!("t{i}");
        append_command(&self.tag, &self.mailbox, &message(i, self.size))
    }

    fn answered(&mut self, read: &[u8]) -> Result<bool, Error> {
        let tagged = driver::complete_lines(read).find_map(|line| {
            line.strip_prefix(self.tag.as_bytes())
                .and_then(|rest| rest.strip_prefix(b" "))
        });
        match tagged {
            None => Ok(false),
            Some(status) if status.starts_with(b"OK") => Ok(true),
            Some(status) => Err(Error::Bench(format!(
                "IMAP APPEND: {} {}",
                self.tag,
                String::from_utf8_lossy(status)
            ))),
        }
    }
}

/// Bytes the client asks the socket for at once.
const READ_SIZE: usize = 64 * 1024;

/// An IMAP client that is enough for the figures: commands without literals in their answers.
struct ImapClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Where the next line starts in `buffer`: lines are taken by moving this, not by moving the
    /// bytes after them (draining each line from the front moved the rest of a 64 KiB read for
    /// every one of a FETCH's 100,000 lines, and that was most of the FETCH figure).
    start: usize,
    /// How many bytes from `start` are known to hold no line end: a line longer than a read
    /// (SEARCH's 590 KB of uids) is looked through once, not again from its start after each
    /// read.
    scanned: usize,
    tag: usize,
}

impl ImapClient {
    fn login(target: &str, user: &str) -> Result<ImapClient, Error> {
        let stream = TcpStream::connect(target)
            .map_err(|e| Error::io(format!("cannot connect to IMAP on {target}"), e))?;
        stream
            .set_read_timeout(Some(DEADLINE))
            .map_err(|e| Error::io("socket", e))?;
        let _ = stream.set_nodelay(true);
        let mut client = ImapClient {
            stream,
            buffer: Vec::new(),
            start: 0,
            scanned: 0,
            tag: 0,
        };
        let greeting = client.line()?;
        if !greeting.starts_with("* OK") {
            return Err(Error::Bench(format!("IMAP greeted with {greeting:?}")));
        }
        client.command(&format!("LOGIN {user} {PASSWORD}"))?;
        Ok(client)
    }

    /// Sends one command and returns everything the server answered up to and including its
    /// tagged OK (anything else is an error).
    fn command(&mut self, command: &str) -> Result<String, Error> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        self.send(format!("{tag} {command}\r\n").as_bytes())?;
        self.until_tagged(&tag, command)
    }

    fn append(&mut self, mailbox: &str, body: &[u8]) -> Result<(), Error> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        self.send(&append_command(&tag, mailbox, body))?;
        self.until_tagged(&tag, "APPEND").map(|_| ())
    }

    /// The session's socket and its timed APPENDs of `size`-byte messages to `mailbox`, for
    /// [`driver::drive`]. Nothing may be left unread.
    fn into_appends(self, mailbox: &str, size: usize) -> Result<(TcpStream, AppendExchange), Error> {
        if self.start < self.buffer.len() {
            return Err(Error::Bench(
                "IMAP: unread answers before the timed APPENDs".into(),
            ));
        }
        let exchange = AppendExchange {
            mailbox: mailbox.to_string(),
            size,
            tag: String::new(),
        };
        Ok((self.stream, exchange))
    }

    fn start_idle(&mut self) -> Result<(), Error> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        self.send(format!("{tag} IDLE\r\n").as_bytes())?;
        let line = self.line()?;
        if !line.starts_with('+') {
            return Err(Error::Bench(format!("IDLE answered {line:?}")));
        }
        Ok(())
    }

    fn stop_idle(&mut self) -> Result<(), Error> {
        self.send(b"DONE\r\n")?;
        let tag = format!("b{}", self.tag);
        self.until_tagged(&tag, "IDLE").map(|_| ())
    }

    /// Reads lines until `wanted` comes (others, such as FETCH or RECENT, are skipped).
    fn wait_for_line(&mut self, wanted: &str) -> Result<(), Error> {
        loop {
            if self.line()? == wanted {
                return Ok(());
            }
        }
    }

    /// The lines answered before the tagged OK of `tag`, each ended by `\n`. They are copied
    /// once, from the read buffer into the answer, and made text once at the end.
    fn until_tagged(&mut self, tag: &str, command: &str) -> Result<String, Error> {
        let mut answer = Vec::new();
        loop {
            let line = self.next_line()?;
            let line = &self.buffer[line];
            let status = line
                .strip_prefix(tag.as_bytes())
                .and_then(|r| r.strip_prefix(b" "));
            if let Some(status) = status {
                if !status.starts_with(b"OK") {
                    let line = String::from_utf8_lossy(line);
                    return Err(Error::Bench(format!("IMAP {command}: {line}")));
                }
                return Ok(String::from_utf8(answer)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
            }
            answer.extend_from_slice(line);
            answer.push(b'\n');
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io("IMAP write", e))
    }

    /// One line, without its CRLF.
    fn line(&mut self) -> Result<String, Error> {
        let line = self.next_line()?;
        Ok(String::from_utf8_lossy(&self.buffer[line]).into_owned())
    }

    /// Where the next line is in `buffer`, without its CRLF (it stays there until the next
    /// read).
    fn next_line(&mut self) -> Result<std::ops::Range<usize>, Error> {
        loop {
            let from = self.start + self.scanned;
            if let Some(at) = memchr::memchr(b'\n', &self.buffer[from..]) {
                let line = self.start..from + at;
                self.start = line.end + 1;
                self.scanned = 0;
                let text = &self.buffer[line.clone()];
                let kept = text.len() - text.iter().rev().take_while(|&&b| b == b'\r').count();
                return Ok(line.start..line.start + kept);
            }
            self.scanned = self.buffer.len() - self.start;
            // Only a partial line is left: keep it, drop what was read before it.
            self.buffer.drain(..self.start);
            self.start = 0;
            // Read straight into the buffer's tail: a 64 KiB array zeroed on the stack at every
            // call cost more than the rest of the line (80 of a FETCH's 105 ms, all client).
            let filled = self.buffer.len();
            self.buffer.resize(filled + READ_SIZE, 0);
            let read = self.stream.read(&mut self.buffer[filled..]);
            self.buffer.truncate(filled + *read.as_ref().unwrap_or(&0));
            let n = read.map_err(|e| Error::io("IMAP read", e))?;
            if n == 0 {
                return Err(Error::Bench("the IMAP server closed the connection".into()));
            }
        }
    }
}
