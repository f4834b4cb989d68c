//! A raw IMAP connection for the process tests that send what no client library would
//! (malformed input, replayed RFC exchanges): answers read line by line, a literal inside an
//! answer read whole into its line, every read bounded by the deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use super::DEADLINE;

/// A raw connection whose answers are read line by line; a literal inside an answer (a line
/// ending in `{n}`) is read whole into its line, so its bytes are never taken for lines.
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read and not yet taken as lines.
    pub buf: Vec<u8>,
}

/// What came back for one command.
pub struct Answer {
    pub lines: Vec<String>,
    /// The server closed the connection before the tagged line.
    pub closed: bool,
}

impl Answer {
    /// The status word of `tag`'s line (`OK`, `NO`, `BAD`), if it came.
    pub fn status_of(&self, tag: &[u8]) -> Option<&str> {
        let prefix = format!("{} ", String::from_utf8_lossy(tag));
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(' ').next())
    }

    pub fn said_bye(&self) -> bool {
        self.lines.iter().any(|l| l.starts_with("* BYE"))
    }

    /// NO or BAD, tagged or (when the tag could not be read) untagged, or a BYE.
    pub fn refused(&self, tag: &[u8]) -> bool {
        matches!(self.status_of(tag), Some("NO") | Some("BAD"))
            || self
                .lines
                .iter()
                .any(|l| l.starts_with("* BAD") || l.starts_with("* NO"))
            || self.said_bye()
    }
}

impl Conn {
    pub fn open(address: &str) -> Conn {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        let greeting = conn.line().unwrap().expect("a greeting");
        assert!(greeting.starts_with("* OK"), "{greeting}");
        conn
    }

    /// Sends `bytes`; false when the server has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The next answer line (a literal in it read whole), `None` at the end of the stream. A
    /// read that waits longer than the deadline is the test's failure: the server hangs.
    pub fn line(&mut self) -> Result<Option<String>, String> {
        let mut line = Vec::new();
        loop {
            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                if !self.fill()? {
                    return Ok(None);
                }
                continue;
            };
            let piece: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
            line.extend_from_slice(&piece);
            match literal_length(&piece) {
                Some(n) => {
                    while self.buf.len() < n {
                        if !self.fill()? {
                            return Ok(None);
                        }
                    }
                    line.extend(self.buf.drain(..n));
                }
                None => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            }
        }
    }

    /// The next line, for a test that expects one: a server that closes the connection or stays
    /// silent past the deadline fails the test.
    pub fn next_line(&mut self) -> String {
        match self.line() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the server closed the connection"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends one line (the CRLF added); the server must still be there.
    pub fn send_line(&mut self, line: &str) {
        assert!(
            self.send(format!("{line}\r\n").as_bytes()),
            "the server closed the connection"
        );
    }

    /// Lines up to the first that `done` accepts, that one included.
    pub fn until(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.next_line();
            let last = done(&line);
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Sends `command` under `tag`; every line up to the tagged one, that one included.
    pub fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send_line(&format!("{tag} {command}"));
        let prefix = format!("{tag} ");
        self.until(|l| l.starts_with(&prefix))
    }

    /// Reads more bytes; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(format!(
                "no answer within {DEADLINE:?}; so far {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every line up to the one tagged `tag` (or the end of the stream).
    pub fn until_tagged(&mut self, tag: &[u8]) -> Result<Answer, String> {
        let prefix = format!("{} ", String::from_utf8_lossy(tag));
        let mut lines = Vec::new();
        loop {
            match self.line()? {
                None => return Ok(Answer { lines, closed: true }),
                Some(line) => {
                    let done = line.starts_with(&prefix);
                    lines.push(line);
                    if done {
                        return Ok(Answer { lines, closed: false });
                    }
                }
            }
        }
    }
}

/// `n` when a line ends with a literal announcement `{n}` (answers use only synchronizing
/// literals).
pub fn literal_length(line: &[u8]) -> Option<usize> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&inner[open + 1..]).ok()?.parse().ok()
}
