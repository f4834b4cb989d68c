//! The load generator of the throughput rows (LMTP deliveries, IMAP APPENDs): every session
//! driven by one thread, over non-blocking sockets.
//!
//! The figures are the node's; the client shares the machine's two cores with it. With a
//! thread per session, each answer woke one of 16 client threads, and those threads crowded
//! the node's own (its flush thread waited for a core): the client cost more than the
//! node's work per transaction allowed. One thread on a current-thread tokio runtime takes
//! every answer that is ready at one wake-up, and never runs beside itself.
//!
//! Each session still sends a transaction only after the previous one's last answer, so the
//! node sees exactly the concurrency the row names.

use std::cell::Cell;
use std::net::TcpStream;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::nodes::DEADLINE;
use crate::error::Error;

/// One session's protocol, as the driver needs it.
pub trait Exchange {
    /// The bytes of transaction `i`.
    fn request(&mut self, i: usize) -> Vec<u8>;
    /// Whether `read`, everything read since the request went, holds the whole answer; an
    /// error for an answer that is not a success.
    fn answered(&mut self, read: &[u8]) -> Result<bool, Error>;
}

/// Runs transactions `0..count` over `sessions`, each session taking the next number as soon
/// as its last transaction was answered. The first error wins.
pub fn drive<E: Exchange + 'static>(sessions: Vec<(TcpStream, E)>, count: usize) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("the bench client's runtime", e))?;
    let local = tokio::task::LocalSet::new();
    let next = Rc::new(Cell::new(0));
    local.block_on(&runtime, async {
        let tasks: Vec<_> = sessions
            .into_iter()
            .map(|(stream, exchange)| {
                tokio::task::spawn_local(session(stream, exchange, next.clone(), count))
            })
            .collect();
        let mut first_error = None;
        for task in tasks {
            let result = task
                .await
                .unwrap_or_else(|_| Err(Error::Bench("a bench session panicked".into())));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

async fn session<E: Exchange>(
    stream: TcpStream,
    mut exchange: E,
    next: Rc<Cell<usize>>,
    count: usize,
) -> Result<(), Error> {
    stream.set_nonblocking(true).map_err(|e| Error::io("socket", e))?;
    let mut stream = tokio::net::TcpStream::from_std(stream).map_err(|e| Error::io("socket", e))?;
    let mut read = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let i = next.get();
        if i >= count {
            return Ok(());
        }
        next.set(i + 1);
        stream
            .write_all(&exchange.request(i))
            .await
            .map_err(|e| Error::io("bench write", e))?;
        read.clear();
        loop {
            let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
                .await
                .map_err(|_| Error::Bench(format!("no answer within {DEADLINE:?}")))?
                .map_err(|e| Error::io("bench read", e))?;
            if n == 0 {
                return Err(Error::Bench("the server closed the connection".into()));
            }
            read.extend_from_slice(&chunk[..n]);
            if exchange.answered(&read)? {
                break;
            }
        }
    }
}

/// The complete lines (CRLF or LF ended) at the start of `read`, without their line ends.
pub fn complete_lines(read: &[u8]) -> impl Iterator<Item = &[u8]> {
    let complete = read.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
    read[..complete]
        .split_inclusive(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\n").unwrap_or(line))
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_given() {
        let lines: Vec<&[u8]> = complete_lines(b"250 a\r\n354 b\n250 par").collect();
        assert_eq!(lines, vec![b"250 a".as_slice(), b"354 b".as_slice()]);
        assert_eq!(complete_lines(b"no end").count(), 0);
    }
}
