//! ManageSieve (RFC 5804) as a pure parser and encoder: bytes in, [`Parsed`] command lines out;
//! [`Response`]s and strings to bytes. No I/O, no clock, no actors, so arbitrary input can be
//! thrown at it (the property test in `tests.rs`).
//!
//! A command line is a run of tokens ended by CRLF: atoms (the command name, numbers), quoted
//! strings, and literals `{n+}` CRLF followed by `n` octets (the line goes on after them). RFC
//! 5804 has clients send non-synchronizing literals `{n+}`; `{n}` is taken the same way (there is
//! no continuation to wait for in ManageSieve), since some clients send it. A bare LF ends a line
//! too.
//!
//! Bounds: the bytes of a line outside its literals are at most [`MAX_LINE`] (a longer line is
//! answered NO and skipped to its end, never buffered), a quoted string at most [`MAX_QUOTED`]
//! octets (RFC 5804 4), a line at most [`MAX_TOKENS`] tokens, and a literal at most the limit the
//! machine was made with: a larger one is read and dropped, and the line answered
//! `NO (QUOTA/MAXSIZE)`. So a client holds at most one literal of that limit plus one line.

/// Longest command line outside its literals, CRLF included.
pub const MAX_LINE: usize = 8 * 1024;
/// Longest quoted string (RFC 5804 4: "quoted strings ... limited to 1024 octets").
pub const MAX_QUOTED: usize = 1024;
/// Tokens on one line; the longest command (RENAMESCRIPT) has three.
pub const MAX_TOKENS: usize = 8;
/// Digits of a literal's length: more than any size this server takes.
const MAX_LITERAL_DIGITS: usize = 10;

/// One token of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A bare word: a command name or a number.
    Atom(String),
    /// A quoted string or a literal, as octets.
    String(Vec<u8>),
}

/// What the machine makes of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Line(Vec<Token>),
    /// The line was malformed or too long: the answer it gets (it has been skipped).
    Invalid(Response),
}

#[derive(Debug)]
enum State {
    Tokens,
    Literal {
        remaining: usize,
        bytes: Vec<u8>,
    },
    /// A literal over the limit: its octets are dropped, then the rest of its line.
    DropLiteral {
        remaining: usize,
        error: Response,
    },
    /// A malformed line: skipped to its LF, then answered with `error`.
    SkipLine {
        error: Response,
    },
}

/// The command parser of one connection.
#[derive(Debug)]
pub struct Machine {
    input: Vec<u8>,
    tokens: Vec<Token>,
    /// Bytes of the current line outside its literals.
    line_bytes: usize,
    max_literal: usize,
    state: State,
}

impl Machine {
    /// A parser taking literals of at most `max_literal` octets.
    pub fn new(max_literal: usize) -> Machine {
        Machine {
            input: Vec::new(),
            tokens: Vec::new(),
            line_bytes: 0,
            max_literal,
            state: State::Tokens,
        }
    }

    /// Changes the literal limit for the lines to come (a session raises it once a user has
    /// logged in: before that, no command needs a large string).
    pub fn set_max_literal(&mut self, max_literal: usize) {
        self.max_literal = max_literal;
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Bytes held: the unparsed input and a literal being read.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        let literal = match &self.state {
            State::Literal { bytes, .. } => bytes.len(),
            _ => 0,
        };
        self.input.len() + literal
    }

    /// Drops everything read and not yet parsed. After STARTTLS, nothing a client sent in the
    /// clear before the handshake may be taken as sent under TLS (the command injection of
    /// RFC 2595 / CVE-2011-0411).
    pub fn discard_input(&mut self) {
        self.input.clear();
        self.tokens.clear();
        self.line_bytes = 0;
        self.state = State::Tokens;
    }

    /// The next complete line, or `None` until more input arrives.
    pub fn next_line(&mut self) -> Option<Parsed> {
        loop {
            match &mut self.state {
                State::Tokens => match self.next_token() {
                    Step::Wait => {
                        if self.line_bytes + self.input.len() > MAX_LINE {
                            self.fail(no("command line too long"));
                            continue;
                        }
                        return None;
                    }
                    Step::Continue => {}
                    Step::EndOfLine => {
                        self.line_bytes = 0;
                        return Some(Parsed::Line(std::mem::take(&mut self.tokens)));
                    }
                    Step::Fail(error) => self.fail(error),
                },
                State::Literal { remaining, bytes } => {
                    let take = (*remaining).min(self.input.len());
                    bytes.extend_from_slice(&self.input[..take]);
                    self.input.drain(..take);
                    *remaining -= take;
                    if *remaining > 0 {
                        return None;
                    }
                    let bytes = std::mem::take(bytes);
                    self.state = State::Tokens;
                    if let Err(error) = self.push(Token::String(bytes)) {
                        self.fail(error);
                    }
                }
                State::DropLiteral { remaining, error } => {
                    let take = (*remaining).min(self.input.len());
                    self.input.drain(..take);
                    *remaining -= take;
                    if *remaining > 0 {
                        return None;
                    }
                    let error = error.clone();
                    self.state = State::SkipLine { error };
                }
                State::SkipLine { error } => match self.input.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.input.drain(..=end);
                        let error = error.clone();
                        self.state = State::Tokens;
                        self.tokens.clear();
                        self.line_bytes = 0;
                        return Some(Parsed::Invalid(error));
                    }
                    None => {
                        self.input.clear();
                        return None;
                    }
                },
            }
        }
    }

    fn fail(&mut self, error: Response) {
        self.tokens.clear();
        self.state = State::SkipLine { error };
    }

    fn push(&mut self, token: Token) -> Result<(), Response> {
        if self.tokens.len() >= MAX_TOKENS {
            return Err(no("too many arguments"));
        }
        self.tokens.push(token);
        Ok(())
    }

    /// Consumes `n` bytes of the line outside literals.
    fn consume(&mut self, n: usize) {
        self.input.drain(..n);
        self.line_bytes += n;
    }

    fn next_token(&mut self) -> Step {
        let spaces = self.input.iter().take_while(|&&b| b == b' ').count();
        self.consume(spaces);
        if self.line_bytes > MAX_LINE {
            return Step::Fail(no("command line too long"));
        }
        let Some(&first) = self.input.first() else {
            return Step::Wait;
        };
        match first {
            b'\n' => {
                self.consume(1);
                Step::EndOfLine
            }
            b'\r' => match self.input.get(1) {
                None => Step::Wait,
                Some(b'\n') => {
                    self.consume(2);
                    Step::EndOfLine
                }
                Some(_) => Step::Fail(no("a CR not followed by LF")),
            },
            b'"' => self.quoted(),
            b'{' => self.literal_header(),
            b if is_atom_char(b) => {
                let length = self.input.iter().take_while(|&&b| is_atom_char(b)).count();
                match self.input.get(length) {
                    None => Step::Wait,
                    Some(b' ' | b'\r' | b'\n') => {
                        // Atom characters are ASCII.
                        let atom = String::from_utf8_lossy(&self.input[..length]).into_owned();
                        self.consume(length);
                        match self.push(Token::Atom(atom)) {
                            Ok(()) => Step::Continue,
                            Err(e) => Step::Fail(e),
                        }
                    }
                    Some(_) => Step::Fail(no("unexpected character after a word")),
                }
            }
            _ => Step::Fail(no(
                "unexpected character: expected a word, a quoted string or a literal",
            )),
        }
    }

    fn quoted(&mut self) -> Step {
        let mut value = Vec::new();
        let mut i = 1;
        loop {
            let Some(&b) = self.input.get(i) else {
                return Step::Wait;
            };
            match b {
                b'"' => break,
                b'\\' => match self.input.get(i + 1) {
                    None => return Step::Wait,
                    Some(&escaped @ (b'"' | b'\\')) => {
                        value.push(escaped);
                        i += 2;
                    }
                    Some(_) => {
                        return Step::Fail(no("in a quoted string, only \\\" and \\\\ may be escaped"))
                    }
                },
                b'\r' | b'\n' | 0 => {
                    return Step::Fail(no("a quoted string cannot hold CR, LF or NUL; send a literal"))
                }
                _ => {
                    value.push(b);
                    i += 1;
                }
            }
            if value.len() > MAX_QUOTED {
                return Step::Fail(no(format!(
                    "a quoted string is at most {MAX_QUOTED} octets; send a literal"
                )));
            }
        }
        if std::str::from_utf8(&value).is_err() {
            return Step::Fail(no("a quoted string is not UTF-8"));
        }
        self.consume(i + 1);
        match self.push(Token::String(value)) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Fail(e),
        }
    }

    /// `{n+}` or `{n}`, then CRLF; the literal's octets follow.
    fn literal_header(&mut self) -> Step {
        let digits = self.input[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_LITERAL_DIGITS {
            return Step::Fail(no("literal length too large"));
        }
        let mut at = 1 + digits;
        if at == self.input.len() {
            return Step::Wait;
        }
        if digits == 0 {
            return Step::Fail(no("a literal is {length+} followed by CRLF"));
        }
        if self.input[at] == b'+' {
            at += 1;
        }
        match self.input.get(at) {
            None => return Step::Wait,
            Some(b'}') => at += 1,
            Some(_) => return Step::Fail(no("a literal is {length+} followed by CRLF")),
        }
        match (self.input.get(at), self.input.get(at + 1)) {
            (None, _) | (Some(b'\r'), None) => return Step::Wait,
            (Some(b'\n'), _) => at += 1,
            (Some(b'\r'), Some(b'\n')) => at += 2,
            _ => return Step::Fail(no("a literal's length must end its line")),
        }
        // At most ten digits: fits in u64.
        let length: u64 = std::str::from_utf8(&self.input[1..1 + digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(u64::MAX);
        self.consume(at);
        if length > self.max_literal as u64 {
            self.state = State::DropLiteral {
                remaining: length as usize,
                error: Response::no(format!(
                    "a string of {length} octets is over the limit of {} octets",
                    self.max_literal
                ))
                .with_code(Code::QuotaMaxSize),
            };
            return Step::Continue;
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Step::Fail(no("too many arguments"));
        }
        let length = length as usize;
        self.state = State::Literal {
            remaining: length,
            bytes: Vec::with_capacity(length.min(64 * 1024)),
        };
        Step::Continue
    }
}

enum Step {
    Wait,
    Continue,
    EndOfLine,
    Fail(Response),
}

/// ATOM-CHAR of RFC 5804 4: any CHAR but atom-specials ( `(`, `)`, `{`, SP, CTL, `%`, `*`, `"`,
/// `\`, `]`).
fn is_atom_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn no(text: impl Into<String>) -> Response {
    Response::no(text)
}

/// A command, its arguments checked for form (names are UTF-8; the session checks the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capability,
    Logout,
    /// With the tag to echo back (RFC 5804 2.13).
    Noop(Option<Vec<u8>>),
    StartTls,
    Unauthenticate,
    Authenticate {
        mechanism: String,
        /// The initial response, still base64.
        initial: Option<Vec<u8>>,
    },
    HaveSpace {
        name: String,
        size: u64,
    },
    PutScript {
        name: String,
        script: Vec<u8>,
    },
    ListScripts,
    /// An empty name deactivates.
    SetActive {
        name: String,
    },
    GetScript {
        name: String,
    },
    DeleteScript {
        name: String,
    },
    RenameScript {
        from: String,
        to: String,
    },
    CheckScript {
        script: Vec<u8>,
    },
}

/// The command a line holds, or the answer a malformed one gets.
pub fn parse_command(tokens: Vec<Token>) -> Result<Command, Response> {
    let mut tokens = tokens.into_iter();
    let name = match tokens.next() {
        None => return Err(no("empty command line")),
        Some(Token::String(_)) => return Err(no("a command starts with its name")),
        Some(Token::Atom(name)) => name.to_ascii_uppercase(),
    };
    let arguments: Vec<Token> = tokens.collect();
    let arity = |wanted: &[usize]| {
        if wanted.contains(&arguments.len()) {
            Ok(())
        } else {
            let expected = match wanted {
                [0] => "no arguments".to_string(),
                [n] => format!("{n} argument{}", if *n == 1 { "" } else { "s" }),
                _ => format!(
                    "{} arguments",
                    wanted
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            };
            Err(no(format!("{name} takes {expected}")))
        }
    };
    let string = |i: usize| -> Result<Vec<u8>, Response> {
        match &arguments[i] {
            Token::String(bytes) => Ok(bytes.clone()),
            Token::Atom(_) => Err(no(format!(
                "argument {} of {name} must be a quoted string or a literal",
                i + 1
            ))),
        }
    };
    let text = |i: usize| -> Result<String, Response> {
        String::from_utf8(string(i)?).map_err(|_| no(format!("argument {} of {name} is not UTF-8", i + 1)))
    };
    match name.as_str() {
        "CAPABILITY" => arity(&[0]).map(|()| Command::Capability),
        "LOGOUT" => arity(&[0]).map(|()| Command::Logout),
        "STARTTLS" => arity(&[0]).map(|()| Command::StartTls),
        "UNAUTHENTICATE" => arity(&[0]).map(|()| Command::Unauthenticate),
        "LISTSCRIPTS" => arity(&[0]).map(|()| Command::ListScripts),
        "NOOP" => {
            arity(&[0, 1])?;
            let tag = if arguments.is_empty() {
                None
            } else {
                Some(string(0)?)
            };
            Ok(Command::Noop(tag))
        }
        "AUTHENTICATE" => {
            arity(&[1, 2])?;
            let mechanism = text(0)?.to_ascii_uppercase();
            let initial = if arguments.len() == 2 {
                Some(string(1)?)
            } else {
                None
            };
            Ok(Command::Authenticate { mechanism, initial })
        }
        "HAVESPACE" => {
            arity(&[2])?;
            let name = text(0)?;
            let size = match &arguments[1] {
                Token::Atom(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => digits
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= u64::from(u32::MAX))
                    .ok_or_else(|| no("HAVESPACE's size is a number up to 4294967295"))?,
                _ => return Err(no("HAVESPACE's second argument is a number")),
            };
            Ok(Command::HaveSpace { name, size })
        }
        "PUTSCRIPT" => {
            arity(&[2])?;
            Ok(Command::PutScript {
                name: text(0)?,
                script: string(1)?,
            })
        }
        "SETACTIVE" => {
            arity(&[1])?;
            Ok(Command::SetActive { name: text(0)? })
        }
        "GETSCRIPT" => {
            arity(&[1])?;
            Ok(Command::GetScript { name: text(0)? })
        }
        "DELETESCRIPT" => {
            arity(&[1])?;
            Ok(Command::DeleteScript { name: text(0)? })
        }
        "RENAMESCRIPT" => {
            arity(&[2])?;
            Ok(Command::RenameScript {
                from: text(0)?,
                to: text(1)?,
            })
        }
        "CHECKSCRIPT" => {
            arity(&[1])?;
            Ok(Command::CheckScript { script: string(0)? })
        }
        _ => Err(no(format!("unknown command {name}"))),
    }
}

/// The SASL response a client sent on its own line while authenticating: a string, or `"*"`
/// to cancel (RFC 5804 2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslResponse {
    /// Still base64.
    Data(Vec<u8>),
    Cancel,
}

pub fn parse_sasl_response(tokens: Vec<Token>) -> Result<SaslResponse, Response> {
    match tokens.as_slice() {
        [Token::String(s)] if s == b"*" => Ok(SaslResponse::Cancel),
        [Token::String(s)] => Ok(SaslResponse::Data(s.clone())),
        _ => Err(no(
            "expected one string with the SASL response, or \"*\" to cancel",
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bye,
}

/// Response codes (RFC 5804 1.3) this server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    EncryptNeeded,
    QuotaMaxSize,
    TryLater,
    Active,
    NonExistent,
    AlreadyExists,
    /// The script was stored (or checked) but will not do all it says (RFC 5804 1.3).
    Warnings,
    /// NOOP's tag, echoed.
    Tag(Vec<u8>),
}

/// An `OK`, `NO` or `BYE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub code: Option<Code>,
    pub text: Option<String>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            status: Status::Ok,
            code: None,
            text: None,
        }
    }

    pub fn ok_text(text: impl Into<String>) -> Response {
        Response {
            text: Some(text.into()),
            ..Response::ok()
        }
    }

    pub fn no(text: impl Into<String>) -> Response {
        Response {
            status: Status::No,
            code: None,
            text: Some(text.into()),
        }
    }

    pub fn bye(text: impl Into<String>) -> Response {
        Response {
            status: Status::Bye,
            code: None,
            text: Some(text.into()),
        }
    }

    pub fn with_code(mut self, code: Code) -> Response {
        self.code = Some(code);
        self
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self.status {
            Status::Ok => b"OK",
            Status::No => b"NO",
            Status::Bye => b"BYE",
        });
        if let Some(code) = &self.code {
            out.extend_from_slice(b" (");
            match code {
                Code::EncryptNeeded => out.extend_from_slice(b"ENCRYPT-NEEDED"),
                Code::QuotaMaxSize => out.extend_from_slice(b"QUOTA/MAXSIZE"),
                Code::TryLater => out.extend_from_slice(b"TRYLATER"),
                Code::Active => out.extend_from_slice(b"ACTIVE"),
                Code::NonExistent => out.extend_from_slice(b"NONEXISTENT"),
                Code::AlreadyExists => out.extend_from_slice(b"ALREADYEXISTS"),
                Code::Warnings => out.extend_from_slice(b"WARNINGS"),
                Code::Tag(tag) => {
                    out.extend_from_slice(b"TAG ");
                    encode_string(tag, out);
                }
            }
            out.push(b')');
        }
        if let Some(text) = &self.text {
            out.push(b' ');
            encode_string(text.as_bytes(), out);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A string as the server sends it: quoted when it can be (UTF-8, no CR, LF or NUL, at most
/// [`MAX_QUOTED`] octets), else a literal `{n}` CRLF and the octets.
pub fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    let quotable = bytes.len() <= MAX_QUOTED
        && std::str::from_utf8(bytes).is_ok()
        && !bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0));
    if quotable {
        out.push(b'"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    }
}

/// What the CAPABILITY response lists (RFC 5804 1.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities<'a> {
    pub implementation: &'a str,
    /// Empty when no mechanism may be used now (a password over plaintext refused).
    pub sasl: &'a [&'a str],
    pub sieve: &'a [&'a str],
    pub starttls: bool,
    /// The logged-in user (RFC 5804 1.7 "OWNER"), after AUTHENTICATE.
    pub owner: Option<&'a str>,
    pub unauthenticate: bool,
}

impl Capabilities<'_> {
    /// The capability lines and the closing OK.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut line = |name: &str, value: Option<&str>| {
            encode_string(name.as_bytes(), out);
            if let Some(value) = value {
                out.push(b' ');
                encode_string(value.as_bytes(), out);
            }
            out.extend_from_slice(b"\r\n");
        };
        line("IMPLEMENTATION", Some(self.implementation));
        line("SASL", Some(&self.sasl.join(" ")));
        line("SIEVE", Some(&self.sieve.join(" ")));
        if self.starttls {
            line("STARTTLS", None);
        }
        if let Some(owner) = self.owner {
            line("OWNER", Some(owner));
        }
        if self.unauthenticate {
            line("UNAUTHENTICATE", None);
        }
        line("VERSION", Some("1.0"));
        Response::ok().encode(out);
    }
}
