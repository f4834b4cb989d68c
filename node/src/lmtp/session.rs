//! One LMTP connection: reads bytes into the [`Machine`], carries out its events (recipient
//! checks, deliveries, STARTTLS), and writes the replies.
//!
//! Replies are gathered while the machine has input to work through and written when it has
//! none, which is what lets a PIPELINING client send a whole transaction at once. A message is
//! delivered to all its recipients at the same time and each reply is written after that
//! recipient's copies are durable, in RCPT order. A client that goes away before the final dot
//! has delivered nothing: the machine hands over a message only once it is complete.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::delivery::{Delivered, Recipient};
use super::protocol::{split_address, Event, Machine, Reply};
use super::{LmtpContext, Reservation};
use crate::client_tls::Connection;
use crate::listener::Peer;

/// How long a client may stay silent (RFC 5321 4.5.3.2 suggests 5 minutes for commands and
/// 10 minutes between data blocks).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Read buffer per connection.
const READ_CHUNK: usize = 16 * 1024;

pub async fn serve(mut conn: Connection, peer: Peer, ctx: Rc<LmtpContext>) {
    let starttls = ctx.tls.is_some() && !conn.is_tls();
    let mut machine: Machine<Recipient> = Machine::new(ctx.max_message_bytes, starttls);
    let mut out = Vec::with_capacity(512);
    Reply::plain(220, vec![format!("{} LMTP mailmesh ready", ctx.node_name)]).encode(&mut out);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut reservation = Reservation::new(&ctx.data_budget);
    loop {
        while let Some(event) = machine.next_event() {
            match event {
                Event::Reply(reply) => reply.encode(&mut out),
                Event::Recipient(to) => match ctx.resolve(&to) {
                    Ok(recipient) => {
                        machine.accept_recipient(recipient);
                        Reply::new(250, "2.1.5", "recipient ok").encode(&mut out);
                    }
                    Err(reply) => {
                        machine.refuse_recipient();
                        reply.encode(&mut out);
                    }
                },
                Event::Message {
                    from,
                    recipients,
                    body,
                } => {
                    let message = Rc::new(with_trace_headers(
                        &ctx,
                        &peer,
                        &machine,
                        conn.is_tls(),
                        &from,
                        body,
                    ));
                    // Every recipient's delivery starts now, so their appends share commits.
                    let pending: Vec<_> = recipients
                        .iter()
                        .map(|recipient| {
                            let ctx = ctx.clone();
                            let recipient = recipient.clone();
                            let from = from.clone();
                            let message = message.clone();
                            actix::spawn(
                                async move { ctx.deliverer.deliver(&recipient, &from, message).await },
                            )
                        })
                        .collect();
                    for (recipient, delivery) in recipients.iter().zip(pending) {
                        let outcome = delivery
                            .await
                            .unwrap_or_else(|_| Delivered::Failed("delivery task stopped".into()));
                        reply_for(recipient, outcome).encode(&mut out);
                    }
                }
                Event::MessageTooLarge { recipients } => {
                    for _ in 0..recipients {
                        Reply::new(
                            552,
                            "5.3.4",
                            format!(
                                "message exceeds the size limit of {} bytes",
                                ctx.max_message_bytes
                            ),
                        )
                        .encode(&mut out);
                    }
                }
                Event::MessageDropped { recipients } => {
                    for _ in 0..recipients {
                        Reply::new(
                            452,
                            "4.3.1",
                            "the server has no memory for this message now; try again later",
                        )
                        .encode(&mut out);
                    }
                }
                Event::StartTls => {
                    let Some(tls) = &ctx.tls else {
                        return;
                    };
                    Reply::new(220, "2.0.0", "ready to start TLS").encode(&mut out);
                    if write(&mut conn, &mut out).await.is_err() {
                        return;
                    }
                    conn = match conn.upgrade(tls, &peer.display.to_string()).await {
                        Some(conn) => conn,
                        None => return,
                    };
                    machine.tls_started();
                }
                Event::Quit(reply) => {
                    reply.encode(&mut out);
                    let _ = write(&mut conn, &mut out).await;
                    let _ = conn.shutdown().await;
                    return;
                }
            }
        }
        // Account for the message data the machine now holds; over the budget, it is dropped.
        if !reservation.resize(machine.data_bytes() as u64) {
            debug!(peer = %peer.display, "LMTP data budget exhausted; dropping this message");
            machine.drop_data();
            reservation.resize(0);
        }
        if !out.is_empty() && write(&mut conn, &mut out).await.is_err() {
            return;
        }
        let read = match tokio::time::timeout(IDLE_TIMEOUT, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                Reply::new(421, "4.4.2", "idle too long; closing").encode(&mut out);
                let _ = write(&mut conn, &mut out).await;
                return;
            }
        };
        machine.feed(&buf[..read]);
    }
}

async fn write(conn: &mut Connection, out: &mut Vec<u8>) -> std::io::Result<()> {
    let result = tokio::time::timeout(IDLE_TIMEOUT, async {
        conn.write_all(out).await?;
        conn.flush().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)));
    out.clear();
    result
}

fn reply_for(recipient: &Recipient, outcome: Delivered) -> Reply {
    match outcome {
        Delivered::Stored => Reply::new(250, "2.0.0", format!("<{}> delivered", recipient.address)),
        Delivered::Rejected(reason) => Reply::new(
            550,
            "5.7.1",
            format!("<{}> rejected: {reason}", recipient.address),
        ),
        Delivered::Failed(why) => Reply::new(
            451,
            "4.3.0",
            format!("<{}> not delivered, try again later: {why}", recipient.address),
        ),
    }
}

impl LmtpContext {
    /// The user (and folder) an address delivers to, or the reply refusing it. Tried in turn:
    /// the whole address as a user name (users may be named `alice@example.org`), the local
    /// part, then the local part up to its first `+` with the rest as a folder. User names are
    /// lower case, so the address is compared in lower case; the folder keeps its case.
    pub fn resolve(&self, path: &str) -> Result<Recipient, Reply> {
        let address = split_address(path)?;
        let users = self.auth.users();
        let local = address.local.to_ascii_lowercase();
        let whole = format!("{local}@{}", address.domain.to_ascii_lowercase());
        let found = |user: &str, folder: Option<&str>| Recipient {
            address: path.to_string(),
            user: user.to_string(),
            folder: folder.map(str::to_string),
        };
        if !address.domain.is_empty() && users.contains(&whole) {
            return Ok(found(&whole, None));
        }
        if users.contains(&local) {
            return Ok(found(&local, None));
        }
        if let Some(plus) = local.find('+') {
            let folder = &address.local[plus + 1..];
            if users.contains(&local[..plus]) && !folder.is_empty() {
                return Ok(found(&local[..plus], Some(folder)));
            }
        }
        Err(Reply::new(550, "5.1.1", format!("<{path}>: no such user here")))
    }
}

/// `Return-Path` (RFC 5321 4.4: the delivering server adds it) and a `Received` line (RFC 5321
/// 4.4, "trace information") in front of the message. One header block for all recipients, so
/// the body is stored once however many get it.
fn with_trace_headers(
    ctx: &LmtpContext,
    peer: &Peer,
    machine: &Machine<Recipient>,
    tls: bool,
    from: &str,
    body: Vec<u8>,
) -> Vec<u8> {
    let client = machine.client_name().unwrap_or("unknown");
    let headers = format!(
        "Return-Path: <{from}>\r\nReceived: from {client} ({})\r\n\tby {} (mailmesh) with {};\r\n\t{}\r\n",
        peer.display,
        ctx.node_name,
        if tls { "LMTPS" } else { "LMTP" },
        rfc5322_date(time::OffsetDateTime::now_utc()),
    );
    let mut message = Vec::with_capacity(headers.len() + body.len());
    message.extend_from_slice(headers.as_bytes());
    message.extend_from_slice(&body);
    message
}

/// `Wed, 02 Dec 2026 10:11:58 +0000`.
pub fn rfc5322_date(t: time::OffsetDateTime) -> String {
    let weekday = t.weekday().to_string();
    let month = t.month().to_string();
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        &weekday[..3],
        t.day(),
        &month[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
