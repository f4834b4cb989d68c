//! LMTP (RFC 2033) as a pure state machine: bytes in, [`Event`]s out. No I/O, no clock, no
//! actors, so arbitrary input can be thrown at it (the property test in `tests.rs`).
//!
//! The session ([`super::session`]) feeds what it reads with [`Machine::feed`] and takes events
//! with [`Machine::next_event`] until there is none, writes the replies, and only then reads
//! again: that is PIPELINING (RFC 2920), every command of a batch answered in order, the
//! answers written together.
//!
//! Bounds: a command line is at most [`MAX_LINE`] bytes (a longer one is answered 500 and skipped
//! to its end, never buffered), the unconsumed input of a command never exceeds it, and message
//! data is copied into the body only up to the size limit (the rest is read and dropped, and
//! the message refused with 552 once its end arrives). So a client holds at most one message
//! of the size limit plus one line in memory.

/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4 allows 512; parameters such as a long
/// address with SIZE and BODY fit in this with room to spare).
pub const MAX_LINE: usize = 2048;
/// Recipients per transaction (RFC 5321 4.5.3.1.8 asks for at least 100).
pub const MAX_RECIPIENTS: usize = 1000;
/// Longest address (RFC 5321 4.5.3.1.3: a path of 256 octets).
pub const MAX_PATH: usize = 256;

/// A reply: a code, an enhanced status code (RFC 3463), and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<&'static str>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (the greeting, 354, LHLO's lines).
    pub fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// The reply as it goes on the wire. Text is made safe first: no CR or LF in a line.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let count = self.lines.len().max(1);
        for i in 0..count {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let separator = if i + 1 < count { '-' } else { ' ' };
            let clean: String = text
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                .collect();
            let line = match self.enhanced {
                Some(enhanced) => format!("{}{separator}{enhanced} {clean}\r\n", self.code),
                None => format!("{}{separator}{clean}\r\n", self.code),
            };
            out.extend_from_slice(line.as_bytes());
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lhlo(String),
    /// HELO and EHLO: SMTP's greetings, which an LMTP server must refuse (RFC 2033 4.1).
    SmtpGreeting,
    Mail {
        /// The reverse path without brackets; empty for the null sender `<>`.
        from: String,
        size: Option<u64>,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
}

/// Why a line is not a command this server takes; the reply it earns.
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    let text =
        std::str::from_utf8(line).map_err(|_| Reply::new(500, "5.5.2", "command line is not UTF-8"))?;
    let (verb, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let no_arguments = |command: Command| {
        if rest.trim().is_empty() {
            Ok(command)
        } else {
            Err(Reply::new(
                501,
                "5.5.4",
                format!("{} takes no arguments", verb.to_ascii_uppercase()),
            ))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" => {
            let host = rest.trim();
            if host.is_empty() {
                return Err(Reply::new(501, "5.5.4", "LHLO needs the client's name"));
            }
            Ok(Command::Lhlo(host.to_string()))
        }
        "HELO" | "EHLO" => Ok(Command::SmtpGreeting),
        "MAIL" => {
            let (path, params) = path_argument(rest, "FROM:")?;
            let mut size = None;
            for param in params {
                let (key, value) = match param.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (param, None),
                };
                match (key.to_ascii_uppercase().as_str(), value) {
                    ("SIZE", Some(v)) => {
                        size = Some(
                            v.parse::<u64>()
                                .map_err(|_| Reply::new(501, "5.5.4", format!("SIZE={v} is not a number")))?,
                        )
                    }
                    ("BODY", Some(v))
                        if v.eq_ignore_ascii_case("8BITMIME") || v.eq_ignore_ascii_case("7BIT") => {}
                    _ => {
                        return Err(Reply::new(
                            555,
                            "5.5.4",
                            format!("MAIL parameter {param} is not supported"),
                        ))
                    }
                }
            }
            Ok(Command::Mail { from: path, size })
        }
        "RCPT" => {
            let (path, params) = path_argument(rest, "TO:")?;
            if let Some(param) = params.into_iter().next() {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("RCPT parameter {param} is not supported"),
                ));
            }
            if path.is_empty() {
                return Err(Reply::new(501, "5.1.3", "a recipient cannot be the null address"));
            }
            Ok(Command::Rcpt { to: path })
        }
        "DATA" => no_arguments(Command::Data),
        "RSET" => no_arguments(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arguments(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_arguments(Command::StartTls),
        "" => Err(Reply::new(500, "5.5.2", "empty command line")),
        _ => Err(Reply::new(
            500,
            "5.5.1",
            format!("unknown command {:?}", truncate(verb, 32)),
        )),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// `FROM:<path> params` or `TO:<path> params`: the path without brackets and the parameters.
fn path_argument<'a>(rest: &'a str, keyword: &str) -> Result<(String, Vec<&'a str>), Reply> {
    let syntax = || Reply::new(501, "5.5.4", format!("syntax: {keyword}<address> [parameters]"));
    match rest.get(..keyword.len()) {
        Some(start) if start.eq_ignore_ascii_case(keyword) => {}
        _ => return Err(syntax()),
    }
    // Some clients put a space after the colon; accept it.
    let rest = rest[keyword.len()..].trim_start();
    let Some(rest) = rest.strip_prefix('<') else {
        return Err(syntax());
    };
    let close = closing_bracket(rest).ok_or_else(syntax)?;
    let path = &rest[..close];
    if path.len() > MAX_PATH {
        return Err(Reply::new(501, "5.1.3", "address is too long"));
    }
    // A source route (`@a,@b:user@c`, RFC 5321 4.1.1.3) is obsolete and ignored.
    let path = match path.starts_with('@') {
        true => path.split_once(':').map(|(_, p)| p).ok_or_else(syntax)?,
        false => path,
    };
    let params = rest[close + 1..].split_ascii_whitespace().collect();
    Ok((path.to_string(), params))
}

/// The `>` closing a path, skipping one inside a quoted local part.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// A recipient address split for delivery: the local part (unquoted), the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

/// `local@domain` (the domain may be absent: `postmaster`). A quoted local part is unquoted.
pub fn split_address(path: &str) -> Result<Address, Reply> {
    let bad = || {
        Reply::new(
            501,
            "5.1.3",
            format!("{:?} is not an address", truncate(path, 64)),
        )
    };
    let (local, domain) = match path.rfind('@') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, ""),
    };
    let local = if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            out.push(if c == '\\' {
                chars.next().ok_or_else(bad)?
            } else {
                c
            });
        }
        out
    } else {
        local.to_string()
    };
    if local.is_empty() || local.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad());
    }
    Ok(Address {
        local,
        domain: domain.to_string(),
    })
}

/// What the session must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<R> {
    /// Send this reply.
    Reply(Reply),
    /// A RCPT to check: the session answers it and, when accepted, calls
    /// [`Machine::accept_recipient`].
    Recipient(String),
    /// The message is complete (dot-unstuffed, without the terminating dot): deliver it to every
    /// accepted recipient and send one reply for each, in RCPT order.
    Message {
        from: String,
        recipients: Vec<R>,
        body: Vec<u8>,
    },
    /// The message was larger than the limit: send one 552 per accepted recipient.
    MessageTooLarge { recipients: usize },
    /// The session dropped the message's data for lack of memory ([`Machine::drop_data`]):
    /// send one 452 (try again later) per accepted recipient.
    MessageDropped { recipients: usize },
    /// STARTTLS was accepted: send 220, then the TLS handshake; then [`Machine::tls_started`].
    StartTls,
    /// QUIT: send the reply (221), then close.
    Quit(Reply),
}

#[derive(Debug)]
enum Mode {
    Command,
    /// Skipping the rest of an overlong command line.
    SkipLine,
    Data {
        body: Vec<u8>,
        dropped: Option<Dropped>,
        at_line_start: bool,
    },
}

/// Why a message's data is being read and thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    TooLarge,
    NoMemory,
}

/// One LMTP session's protocol state; `R` is what the session knows of an accepted recipient.
#[derive(Debug)]
pub struct Machine<R> {
    input: Vec<u8>,
    mode: Mode,
    max_message: u64,
    greeted: bool,
    from: Option<String>,
    recipients: Vec<R>,
    /// Whether STARTTLS is offered (the listener has a certificate and TLS is not active yet).
    pub starttls_offered: bool,
    /// Waiting for the session to settle a RCPT or STARTTLS before the next command.
    waiting: bool,
    /// The name the client gave in LHLO (for the Received header).
    client_name: Option<String>,
}

impl<R> Machine<R> {
    pub fn new(max_message: u64, starttls_offered: bool) -> Machine<R> {
        Machine {
            input: Vec::new(),
            mode: Mode::Command,
            max_message,
            greeted: false,
            from: None,
            recipients: Vec::new(),
            starttls_offered,
            waiting: false,
            client_name: None,
        }
    }

    /// The name the client gave in its last LHLO.
    pub fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// Bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Whether input is buffered (the bound on what a client can make the server hold).
    #[cfg(test)]
    pub fn has_pending_input(&self) -> bool {
        !self.input.is_empty()
    }

    pub fn accept_recipient(&mut self, recipient: R) {
        self.recipients.push(recipient);
        self.waiting = false;
    }

    pub fn refuse_recipient(&mut self) {
        self.waiting = false;
    }

    /// Bytes of message data held now (0 outside DATA).
    pub fn data_bytes(&self) -> usize {
        match &self.mode {
            Mode::Data { body, .. } => body.len(),
            _ => 0,
        }
    }

    /// Frees the message data read so far and drops the rest as it comes: the session has no
    /// memory left for it. The message is then refused with 452 once its end arrives.
    pub fn drop_data(&mut self) {
        if let Mode::Data { body, dropped, .. } = &mut self.mode {
            *body = Vec::new();
            dropped.get_or_insert(Dropped::NoMemory);
        }
    }

    /// After the handshake: RFC 3207 4.2, the client starts over, and anything it pipelined
    /// after STARTTLS in plaintext is dropped (it could be an attacker's injection).
    pub fn tls_started(&mut self) {
        self.input.clear();
        self.greeted = false;
        self.client_name = None;
        self.reset_transaction();
        self.starttls_offered = false;
        self.waiting = false;
    }

    fn reset_transaction(&mut self) {
        self.from = None;
        self.recipients.clear();
    }

    /// The next event the buffered input makes, if any.
    pub fn next_event(&mut self) -> Option<Event<R>> {
        if self.waiting {
            return None;
        }
        loop {
            match &mut self.mode {
                Mode::SkipLine => match self.input.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.input.drain(..=i);
                        self.mode = Mode::Command;
                    }
                    None => {
                        self.input.clear();
                        return None;
                    }
                },
                Mode::Command => {
                    let Some(end) = self.input.iter().position(|&b| b == b'\n') else {
                        if self.input.len() > MAX_LINE {
                            self.input.clear();
                            self.mode = Mode::SkipLine;
                            return Some(Event::Reply(Reply::new(500, "5.5.2", "line too long")));
                        }
                        return None;
                    };
                    if end + 1 > MAX_LINE {
                        self.input.drain(..=end);
                        return Some(Event::Reply(Reply::new(500, "5.5.2", "line too long")));
                    }
                    let mut line: Vec<u8> = self.input.drain(..=end).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Some(self.command(&line));
                }
                Mode::Data {
                    body,
                    dropped,
                    at_line_start,
                } => {
                    if self.input.is_empty() {
                        return None;
                    }
                    if *at_line_start && self.input[0] == b'.' {
                        let next = (self.input.get(1).copied(), self.input.get(2).copied());
                        match next {
                            (None, _) | (Some(b'\r'), None) => return None,
                            (Some(b'\r'), Some(b'\n')) | (Some(b'\n'), _) => {
                                let consumed = if self.input[1] == b'\n' { 2 } else { 3 };
                                self.input.drain(..consumed);
                                let body = std::mem::take(body);
                                let dropped = *dropped;
                                self.mode = Mode::Command;
                                let from = self.from.take().unwrap_or_default();
                                let recipients = std::mem::take(&mut self.recipients);
                                return Some(match dropped {
                                    Some(Dropped::TooLarge) => Event::MessageTooLarge {
                                        recipients: recipients.len(),
                                    },
                                    Some(Dropped::NoMemory) => Event::MessageDropped {
                                        recipients: recipients.len(),
                                    },
                                    None => Event::Message {
                                        from,
                                        recipients,
                                        body,
                                    },
                                });
                            }
                            // Dot-unstuffing (RFC 5321 4.5.2): a leading dot is removed.
                            _ => {
                                self.input.drain(..1);
                                *at_line_start = false;
                                continue;
                            }
                        }
                    }
                    let (take, ends_line) = match self.input.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (self.input.len(), false),
                    };
                    if dropped.is_none() {
                        if (body.len() + take) as u64 > self.max_message {
                            *dropped = Some(Dropped::TooLarge);
                            *body = Vec::new();
                        } else {
                            body.extend_from_slice(&self.input[..take]);
                        }
                    }
                    self.input.drain(..take);
                    *at_line_start = ends_line;
                }
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Event<R> {
        let command = match parse_command(line) {
            Ok(command) => command,
            Err(reply) => return Event::Reply(reply),
        };
        let bad_sequence = |text: &str| Event::Reply(Reply::new(503, "5.5.1", text.to_string()));
        match command {
            Command::Lhlo(name) => {
                self.greeted = true;
                self.client_name = Some(name);
                self.reset_transaction();
                let mut lines = vec![
                    "mailmesh".to_string(),
                    "PIPELINING".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                    "8BITMIME".to_string(),
                    format!("SIZE {}", self.max_message),
                ];
                if self.starttls_offered {
                    lines.push("STARTTLS".to_string());
                }
                Event::Reply(Reply::plain(250, lines))
            }
            Command::SmtpGreeting => Event::Reply(Reply::new(500, "5.5.1", "this is LMTP: use LHLO")),
            Command::Mail { from, size } => {
                if !self.greeted {
                    return bad_sequence("send LHLO first");
                }
                if self.from.is_some() {
                    return bad_sequence("a transaction is already open (RSET to start over)");
                }
                if let Some(size) = size {
                    if size > self.max_message {
                        return Event::Reply(Reply::new(
                            552,
                            "5.3.4",
                            format!("message size {size} exceeds the limit of {}", self.max_message),
                        ));
                    }
                }
                self.from = Some(from);
                Event::Reply(Reply::new(250, "2.1.0", "sender ok"))
            }
            Command::Rcpt { to } => {
                if self.from.is_none() {
                    return bad_sequence("send MAIL FROM first");
                }
                if self.recipients.len() >= MAX_RECIPIENTS {
                    return Event::Reply(Reply::new(452, "4.5.3", "too many recipients"));
                }
                self.waiting = true;
                Event::Recipient(to)
            }
            Command::Data => {
                if self.from.is_none() {
                    return bad_sequence("send MAIL FROM first");
                }
                if self.recipients.is_empty() {
                    return bad_sequence("no valid recipients");
                }
                self.mode = Mode::Data {
                    body: Vec::new(),
                    dropped: None,
                    at_line_start: true,
                };
                Event::Reply(Reply::plain(354, vec!["end data with <CR><LF>.<CR><LF>".into()]))
            }
            Command::Rset => {
                self.reset_transaction();
                Event::Reply(Reply::new(250, "2.0.0", "ok"))
            }
            Command::Noop => Event::Reply(Reply::new(250, "2.0.0", "ok")),
            Command::Quit => Event::Quit(Reply::new(221, "2.0.0", "bye")),
            Command::Vrfy => Event::Reply(Reply::new(252, "2.5.0", "not verified; send RCPT to try")),
            Command::Help => Event::Reply(Reply::new(
                214,
                "2.0.0",
                "LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS (RFC 2033)",
            )),
            Command::StartTls => {
                if !self.starttls_offered {
                    return Event::Reply(Reply::new(502, "5.5.1", "STARTTLS is not available"));
                }
                if self.from.is_some() {
                    return bad_sequence("STARTTLS inside a transaction");
                }
                self.waiting = true;
                Event::StartTls
            }
        }
    }
}
