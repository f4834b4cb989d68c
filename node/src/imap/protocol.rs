//! The sans-IO side of an IMAP connection: bytes in, decoded commands out, with every buffer
//! bounded. Splitting into lines and literals is imap-codec's `Fragmentizer`; the grammar is its
//! `CommandCodec` (and `AuthenticateDataCodec` for the lines of an AUTHENTICATE exchange). What
//! this module adds is the server's policy on literals (RFC 3501 7.5, RFC 7888 LITERAL+): a
//! synchronizing literal within the limit gets a continuation request, one over it is refused
//! before a byte of it is read; a non-synchronizing one over the limit is read and thrown away
//! (the client sends it regardless), then refused.
//!
//! Responses are encoded with imap-codec's `ResponseCodec`; [`encode`] appends one to a buffer.

use super::extensions::ExtendedCommand;
use imap_codec::decode::Decoder;
use imap_codec::encode::Encoder;
use imap_codec::fragmentizer::{DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::Command;
use imap_codec::imap_types::core::{LiteralMode, Tag, Text};
use imap_codec::imap_types::response::{
    Code, CodeOther, CommandContinuationRequest, Response, Status, StatusBody, StatusKind, Tagged,
};
use imap_codec::imap_types::IntoStatic;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec, ResponseCodec};

/// What the next complete message from the client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A command (`tag SP command ... CRLF`).
    Command,
    /// One line of an AUTHENTICATE exchange (base64, or `*` to cancel).
    AuthenticateData,
    /// The `DONE` that ends an IDLE (RFC 2177).
    IdleDone,
}

/// What the machine found in the bytes fed to it.
#[derive(Debug)]
pub enum Event {
    Command(Command<'static>),
    /// A command of an extension imap-codec has no grammar for ([`super::extensions`]).
    Extended {
        tag: Tag<'static>,
        command: ExtendedCommand,
    },
    AuthenticateData(AuthenticateData<'static>),
    /// The line that ends an IDLE: `DONE` (true), or anything else (false), which ends it too,
    /// with BAD.
    IdleDone(bool),
    /// A synchronizing literal within the limit was announced: the client waits for a
    /// continuation request before it sends the literal.
    ContinueLiteral,
    /// The client's message is refused; the session sends this response and goes on with the
    /// next message.
    Refused(Response<'static>),
}

/// Bytes in, [`Event`]s out.
pub struct Machine {
    fragments: Fragmentizer,
    /// The largest message (command line plus its literals) taken whole.
    max_message: u32,
    expect: Expect,
    /// A non-synchronizing literal over the limit is being read and thrown away; the message is
    /// refused with this once it ends.
    refuse_when_complete: Option<&'static str>,
    /// A new limit, applied at the next point where nothing received is pending.
    pending_max: Option<u32>,
    /// Bytes fed and not yet part of a message handed out (or skipped): the fragmentizer does
    /// not say, so it is counted here from the fragments' ends (which count every byte of a
    /// message, also those past the limit it dropped).
    unhandled: usize,
    /// Where the last fragment of the current message ended, from the message's start.
    message_end: usize,
}

impl Machine {
    pub fn new(max_message: u32) -> Machine {
        Machine {
            // The fragmentizer keeps at most `max_message` bytes of a message and drops the rest
            // (it keeps splitting, so the next message is still found where it starts).
            fragments: Fragmentizer::new(max_message),
            max_message,
            expect: Expect::Command,
            refuse_when_complete: None,
            pending_max: None,
            unhandled: 0,
            message_end: 0,
        }
    }

    /// Bytes read from the client. Call only after [`Machine::next_event`] answered `None`, so
    /// that at most one read's worth of bytes waits here.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.fragments.enqueue_bytes(bytes);
        self.unhandled += bytes.len();
    }

    /// How many of the bytes fed are behind the last message handed out: the client's
    /// pipelined input. They are the tail of the last [`Machine::feed`] (it is called only once
    /// everything before was consumed), so a proxied session passes them on from there.
    pub fn unhandled(&self) -> usize {
        self.unhandled
    }

    /// The current message ended (handed out or skipped) where its last fragment ended.
    fn message_done(&mut self) {
        self.unhandled = self.unhandled.saturating_sub(self.message_end);
        self.message_end = 0;
    }

    pub fn expect(&mut self, expect: Expect) {
        self.expect = expect;
    }

    /// The limit for the messages after the current one (a logged-in user may send more). The
    /// fragmentizer's limit is fixed when it is made, so a new one takes over once every byte
    /// received has been handled and no message is under way: swapping earlier would lose
    /// pipelined input.
    pub fn set_max_message(&mut self, max_message: u32) {
        self.pending_max = (max_message != self.max_message).then_some(max_message);
    }

    fn apply_pending_max(&mut self) {
        if let Some(max) = self.pending_max {
            if self.fragments.message_bytes().is_empty() {
                self.max_message = max;
                self.fragments = Fragmentizer::new(max);
                self.pending_max = None;
            }
        }
    }

    /// Forgets bytes received but not yet handled: after STARTTLS, whatever the client sent in
    /// plaintext behind the command must not be taken as coming over TLS (RFC 3501 11.1's
    /// command injection).
    pub fn discard_input(&mut self) {
        self.max_message = self.pending_max.take().unwrap_or(self.max_message);
        self.fragments = Fragmentizer::new(self.max_message);
        self.refuse_when_complete = None;
        self.unhandled = 0;
        self.message_end = 0;
    }

    /// Bytes of the current message held (at most the limit, whatever the client sends).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.fragments.message_bytes().len()
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let Some(fragment) = self.fragments.progress() else {
                // Every byte fed so far is consumed: a good moment for a new limit.
                self.apply_pending_max();
                return None;
            };
            self.message_end = match fragment {
                FragmentInfo::Line { end, .. } | FragmentInfo::Literal { end, .. } => end,
            };
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                end,
                ..
            } = fragment
            {
                let fits = (end as u64).saturating_add(length as u64) <= self.max_message as u64;
                match (mode, fits) {
                    (LiteralMode::Sync, true) => return Some(Event::ContinueLiteral),
                    (LiteralMode::Sync, false) => {
                        // RFC 3501 7.5: the client sends nothing more of this command until a
                        // continuation request, so the message ends here for both sides.
                        let tag = self.tag();
                        self.fragments.skip_message();
                        self.message_done();
                        self.refuse_when_complete = None;
                        return Some(Event::Refused(too_big(tag, self.max_message)));
                    }
                    (LiteralMode::NonSync, true) => continue,
                    (LiteralMode::NonSync, false) => {
                        // RFC 7888 4: the literal follows regardless; read it, keep none of it.
                        self.fragments.poison_message();
                        self.refuse_when_complete = Some("literal over the size limit");
                        continue;
                    }
                }
            }
            if !self.fragments.is_message_complete() {
                continue;
            }
            self.message_done();
            return Some(self.decode_complete());
        }
    }

    fn tag(&self) -> Option<Tag<'static>> {
        self.fragments.decode_tag().map(IntoStatic::into_static)
    }

    fn decode_complete(&mut self) -> Event {
        if self.refuse_when_complete.take().is_some() {
            return Event::Refused(too_big(self.tag(), self.max_message));
        }
        match self.expect {
            Expect::Command => match self.fragments.decode_message(&CommandCodec::default()) {
                Ok(command) => Event::Command(command.into_static()),
                Err(DecodeMessageError::MessageTooLong { .. }) => {
                    Event::Refused(too_big(self.tag(), self.max_message))
                }
                Err(_) => {
                    let message = self.fragments.message_bytes();
                    if let Some(plain) = super::extensions::getmetadata_in_example_order(message) {
                        if let Ok((_, command)) = CommandCodec::default().decode(&plain) {
                            return Event::Command(command.into_static());
                        }
                    }
                    if let Some((tag, command)) = super::extensions::parse(self.fragments.message_bytes()) {
                        if let Ok(tag) = Tag::try_from(tag) {
                            return Event::Extended { tag, command };
                        }
                    }
                    let tag = self.tag();
                    let text = match &tag {
                        Some(_) => "unknown command or bad arguments",
                        None => "a command starts with a tag",
                    };
                    Event::Refused(bad(tag, text))
                }
            },
            Expect::AuthenticateData => {
                match self.fragments.decode_message(&AuthenticateDataCodec::default()) {
                    Ok(data) => Event::AuthenticateData(data.into_static()),
                    Err(_) => {
                        // RFC 3501 6.2.2: a response that cannot be decoded ends the exchange with BAD.
                        Event::AuthenticateData(AuthenticateData::Cancel)
                    }
                }
            }
            Expect::IdleDone => {
                Event::IdleDone(self.fragments.decode_message(&IdleDoneCodec::default()).is_ok())
            }
        }
    }
}

/// `tag BAD [TOOBIG] ...` (RFC 4469's code, which RFC 7888 names for an oversize literal); an
/// untagged BAD when the tag could not be read.
fn too_big(tag: Option<Tag<'static>>, max: u32) -> Response<'static> {
    status(
        tag,
        StatusKind::Bad,
        Some(Code::TooBig),
        format!("command or literal over the limit of {max} bytes"),
    )
}

fn bad(tag: Option<Tag<'static>>, text: &str) -> Response<'static> {
    status(tag, StatusKind::Bad, None, text.to_string())
}

/// A status response, tagged or not. `text` must not be empty nor hold CR or LF; a text that
/// does is replaced by a fixed one rather than sent broken. A character outside ASCII (a
/// mailbox name in an error) is written as its `\u{...}` escape: IMAP's text is 7-bit.
pub fn status(
    tag: Option<Tag<'static>>,
    kind: StatusKind,
    code: Option<Code<'static>>,
    text: String,
) -> Response<'static> {
    let text = if text.is_ascii() {
        text
    } else {
        text.chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    c.escape_unicode().to_string()
                }
            })
            .collect()
    };
    let text = Text::try_from(text).unwrap_or_else(|_| Text::try_from("(no text)").expect("a valid text"));
    let body = StatusBody { kind, code, text };
    Response::Status(match tag {
        Some(tag) => Status::Tagged(Tagged { tag, body }),
        None => Status::Untagged(body),
    })
}

/// A response code this crate has no variant for (RFC 5530's AUTHENTICATIONFAILED,
/// PRIVACYREQUIRED, ALREADYEXISTS, NONEXISTENT, ...).
pub fn other_code(atom: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(atom.as_bytes()))
}

/// `+ text`: the continuation request for a literal or an AUTHENTICATE step.
pub fn continuation(text: &'static str) -> Response<'static> {
    Response::CommandContinuationRequest(
        CommandContinuationRequest::basic(None, text).expect("a valid continuation text"),
    )
}

/// Appends `response` on the wire.
pub fn encode(response: &Response<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&ResponseCodec::default().encode(response).dump());
}
