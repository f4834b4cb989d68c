//! The client side of the operator socket, for the one-shot commands: blocking, one request at a
//! time (a command makes one or two).

use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::protocol::{encode_frame, Reply, Request, RequestEnvelope, ResponseEnvelope, VERSION};
use super::server::socket_path;
use crate::error::Error;

pub struct OperatorClient {
    stream: UnixStream,
}

impl OperatorClient {
    /// Connects to the node running on `data_dir`; `None` if none is (no socket, or one left by
    /// a node that was killed).
    pub fn connect(data_dir: &Path) -> Result<Option<Self>, Error> {
        let path = socket_path(data_dir);
        match UnixStream::connect(&path) {
            Ok(stream) => Ok(Some(OperatorClient { stream })),
            Err(e) if matches!(e.kind(), IoKind::NotFound | IoKind::ConnectionRefused) => Ok(None),
            Err(e) => Err(Error::io(
                format!("cannot reach the node's operator socket {}", path.display()),
                e,
            )),
        }
    }

    /// Sends `request` and waits for the node's answer.
    pub fn call(&mut self, request: Request) -> Result<Reply, Error> {
        let frame = encode_frame(&RequestEnvelope {
            version: VERSION,
            request,
        });
        let lost = |e| Error::io("the operator connection to the node failed", e);
        self.stream.write_all(&frame).map_err(lost)?;
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).map_err(lost)?;
        let length = u32::from_be_bytes(length) as u64;
        let mut body = Vec::new();
        (&mut self.stream)
            .take(length)
            .read_to_end(&mut body)
            .map_err(lost)?;
        if body.len() as u64 != length {
            return Err(lost(std::io::Error::new(
                IoKind::UnexpectedEof,
                "the node closed the connection within an answer",
            )));
        }
        let response: ResponseEnvelope = rmp_serde::from_slice(&body).map_err(|e| {
            Error::io(
                "the node's answer cannot be decoded (is it another version of mailmesh?)",
                std::io::Error::new(IoKind::InvalidData, e),
            )
        })?;
        response.result.map_err(Error::Operator)
    }
}
