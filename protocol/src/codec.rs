//! Framing: each frame is a 4-byte big-endian length followed by that many bytes of rmp-serde
//! (MessagePack). The decoder is sans-IO: feed it bytes as they arrive, take frames out. It never
//! panics on any input; everything wrong with the bytes is a [`CodecError`].

use crate::ids::NodeId;
use crate::wire::{Frame, Hello, Request, Response, PROTOCOL_VERSION};

/// Default largest frame: 16 MiB. Bodies travel in chunks well below it.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;
const LENGTH_PREFIX: usize = 4;
/// Deepest MessagePack nesting accepted inside one frame.
const MAX_DEPTH: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("could not encode frame: {0}")]
    Encode(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer speaks protocol version {theirs}, this node speaks {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("peer says it is {actual:?}, but this connection is for {expected:?}")]
    WrongPeer { expected: NodeId, actual: NodeId },
    #[error("expected a Hello frame first, got {0}")]
    NotHello(&'static str),
    #[error("peer refused the connection: {0}")]
    Refused(String),
}

/// Encodes one frame with its length prefix. Fails (without writing) if the frame would exceed
/// `max_frame`, so an oversize batch is the sender's error, never the receiver's surprise.
pub fn encode_frame(frame: &Frame, max_frame: u32) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(LENGTH_PREFIX + body_bytes(frame));
    out.resize(LENGTH_PREFIX, 0);
    rmp_serde::encode::write(&mut out, frame).map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = out.len() - LENGTH_PREFIX;
    if len > max_frame as usize {
        return Err(CodecError::Oversize {
            len,
            max: max_frame as usize,
        });
    }
    out[..LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// The body bytes a frame carries, to size its buffer once: a frame of bodies grown by doubling
/// from empty copied each megabyte about once more through its reallocations.
fn body_bytes(frame: &Frame) -> usize {
    // Per part: its Guid, offset, flag and MessagePack markers, well under 64 bytes.
    const PART_OVERHEAD: usize = 64;
    match frame {
        Frame::Request {
            request: Request::Bodies { parts },
            ..
        } => parts.iter().map(|p| p.data.len() + PART_OVERHEAD).sum::<usize>() + PART_OVERHEAD,
        Frame::Request {
            request: Request::BodyChunk { data, .. },
            ..
        }
        | Frame::Response {
            response: Response::Body { data, .. },
            ..
        } => data.len() + PART_OVERHEAD,
        _ => 0,
    }
}

/// Incremental decoder for one byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max_frame: max_frame as usize,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an error the stream is
    /// out of step and the connection must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        if self.buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..LENGTH_PREFIX].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(CodecError::Empty);
        }
        if len > self.max_frame {
            return Err(CodecError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        let frame = decode_frame_body(&self.buf[LENGTH_PREFIX..LENGTH_PREFIX + len])?;
        self.buf.drain(..LENGTH_PREFIX + len);
        Ok(Some(frame))
    }
}

/// Decodes one frame's bytes (what follows its length prefix), for a transport that has read
/// the whole frame already: no copy into a [`FrameDecoder`]'s buffer first (a body request is
/// megabytes). The caller has checked the length against its limit.
pub fn decode_frame_body(body: &[u8]) -> Result<Frame, CodecError> {
    if body.is_empty() {
        return Err(CodecError::Empty);
    }
    let mut de = rmp_serde::Deserializer::new(body);
    // Frames nest about ten levels deep. rmp-serde's default limit (1024) lets a frame that
    // hides deeply nested arrays in an ignored field overflow a 2 MiB thread stack in a debug
    // build (tests/codec_fuzz.rs, deeply_nested_unknown_field_is_malformed).
    de.set_max_depth(MAX_DEPTH);
    let frame: Frame =
        serde::Deserialize::deserialize(&mut de).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let consumed = de.get_ref().len();
    if consumed != 0 {
        return Err(CodecError::Malformed(format!(
            "{consumed} trailing bytes after the frame"
        )));
    }
    Ok(frame)
}

/// The Hello this node sends.
pub fn hello(node: NodeId, max_frame: u32) -> Frame {
    Frame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        node,
        max_frame,
    })
}

/// Checks the first frame from a peer. `expected` is the peer this connection is for, when known
/// (the dialing side knows whom it dialed; TLS has already checked the certificate's name).
pub fn check_hello(frame: &Frame, expected: Option<&NodeId>) -> Result<Hello, HandshakeError> {
    let hello = match frame {
        Frame::Hello(h) => h,
        Frame::Refuse { reason } => return Err(HandshakeError::Refused(reason.clone())),
        Frame::Request { .. } => return Err(HandshakeError::NotHello("Request")),
        Frame::Response { .. } => return Err(HandshakeError::NotHello("Response")),
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.protocol,
        });
    }
    if let Some(expected) = expected {
        if &hello.node != expected {
            return Err(HandshakeError::WrongPeer {
                expected: expected.clone(),
                actual: hello.node.clone(),
            });
        }
    }
    Ok(hello.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::BodyPart;

    /// A frame of bodies is written into one buffer sized up front: had the size been short,
    /// the buffer would have doubled past the frame's length.
    #[test]
    fn body_frames_are_encoded_into_one_presized_buffer() {
        let parts: Vec<BodyPart> = (0..500u32)
            .map(|i| BodyPart {
                guid: crate::Guid::of(&i.to_be_bytes()),
                offset: u64::from(i) * 1_000_000_007,
                data: serde_bytes::ByteBuf::from(vec![(i % 251) as u8; 2048 + i as usize]),
                last: i % 2 == 0,
            })
            .collect();
        let frame = Frame::Request {
            id: u64::MAX,
            request: Request::Bodies { parts },
        };
        let out = encode_frame(&frame, DEFAULT_MAX_FRAME).unwrap();
        assert!(
            out.capacity() <= LENGTH_PREFIX + body_bytes(&frame),
            "the buffer grew"
        );
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(&out);
        assert_eq!(dec.next_frame().unwrap(), Some(frame));
    }

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let frames = vec![
            hello(NodeId::new("a").unwrap(), DEFAULT_MAX_FRAME),
            Frame::Request {
                id: 7,
                request: Request::MissingBodies {
                    guids: vec![crate::Guid::of(b"x")],
                },
            },
            Frame::Response {
                id: 7,
                response: Response::Ok,
            },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend(encode_frame(f, DEFAULT_MAX_FRAME).unwrap());
        }
        for split in [1, 3, 5, 64] {
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            for piece in bytes.chunks(split) {
                dec.push(piece);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames);
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn oversize_and_garbage_are_errors() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&100u32.to_be_bytes());
        assert_eq!(dec.next_frame(), Err(CodecError::Oversize { len: 100, max: 16 }));
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]);
        assert!(matches!(dec.next_frame(), Err(CodecError::Malformed(_))));
        let big = Frame::Refuse {
            reason: "x".repeat(100),
        };
        assert!(matches!(encode_frame(&big, 16), Err(CodecError::Oversize { .. })));
    }

    #[test]
    fn handshake_checks_version_and_name() {
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        assert!(check_hello(&hello(a.clone(), 1024), Some(&a)).is_ok());
        assert!(matches!(
            check_hello(&hello(a.clone(), 1024), Some(&b)),
            Err(HandshakeError::WrongPeer { .. })
        ));
        let old = Frame::Hello(Hello {
            protocol: 0,
            node: a,
            max_frame: 1,
        });
        assert!(matches!(
            check_hello(&old, None),
            Err(HandshakeError::VersionMismatch { .. })
        ));
    }
}
