//! One IMAP connection: reads bytes into the [`Machine`], carries out each command in the state
//! RFC 3501 3 allows it (not authenticated, authenticated, selected, logout), and writes the
//! responses.
//!
//! Logins go through [`crate::auth`] like every other front end: the per-address failure delay,
//! the decoy hash for unknown users. A password is refused before TLS unless the listener allows
//! it in plaintext (`PRIVACYREQUIRED`, and `LOGINDISABLED` in the capabilities). Mailboxes are
//! created, renamed, deleted and subscribed with the same Directory messages as
//! `mailmesh mailbox create` and LMTP delivery, so they replicate like every other change.

use std::borrow::Cow;
use std::num::{NonZeroU32, NonZeroU64};
use std::rc::Rc;
use std::time::Duration;

use imap_codec::encode::Encoder;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{Command, CommandBody, SelectParameter};
use imap_codec::imap_types::core::{IString, NString, QuotedChar, Tag, Text, Vec1};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::metadata::{
    Entry, EntryValue, GetMetadataOption, MetadataCode, MetadataResponse,
};
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::flag::{Flag, FlagNameAttribute, FlagPerm};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::response::{
    Bye, Capability, Code, CodeOther, Data, Greeting, Response, Status, StatusKind,
};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use imap_codec::GreetingCodec;
use mailmesh_actors::directory::OpenedMailbox;
use mailmesh_actors::directory::{
    CreateMailbox, DeleteMailbox, ListAnnotation, ListMailboxes, ListSubscriptions, OpenMailbox,
    RenameMailbox, Subscribe,
};
use mailmesh_actors::mailbox::{GetAnnotations, GetState, MailboxState, SetAnnotation, SetAnnotations};
use mailmesh_actors::MailError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::direct::{self, Backend, Direct, Route};
use super::esearch::SearchReturn;
use super::extensions::{ExtendedCommand, ListCommand};
use super::listing;
use super::messages::{self, ObjectIds, Selected};
use super::metadata;
use super::protocol::{continuation, encode, other_code, status, Event, Expect, Machine};
use super::special_use;
use super::utf7;
use super::ImapContext;
use crate::auth::sasl::{self, Credentials};
use crate::auth::AuthError;
use crate::client_tls::Connection;
use crate::listener::Peer;

/// RFC 3501 5.4: the autologout timer is at least 30 minutes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Read buffer per connection.
const READ_CHUNK: usize = 16 * 1024;
/// The longest command (line and literals) before a login: LOGIN's and AUTHENTICATE's
/// arguments are small, so a connection that has not logged in holds little memory.
pub const MAX_MESSAGE_BEFORE_LOGIN: u32 = 8 * 1024;
/// Room for an APPEND's command line around its message: the limit after a login is
/// `limits.max_message_bytes` plus this ([`super::ImapContext::max_command_bytes`]).
pub const COMMAND_ROOM: u64 = 64 * 1024;
/// Responses gathered beyond this are written before the next command is carried out (and
/// within a FETCH, between messages).
pub(super) const FLUSH_AT: usize = 64 * 1024;
/// The hierarchy separator of mailbox names (the store's own, `names::HIERARCHY_SEPARATOR`).
const SEPARATOR: char = mailmesh_protocol::names::HIERARCHY_SEPARATOR;

/// Where a connection is (RFC 3501 3).
#[derive(Debug)]
pub enum State {
    NotAuthenticated,
    /// AUTHENTICATE PLAIN sent its empty challenge and waits for the client's response.
    Authenticating(Tag<'static>),
    Authenticated(String),
    Selected {
        user: String,
        mailbox: Selected,
    },
    /// Logged in at the INBOX's primary (`[imap] direct = "proxy"`): the session relays there.
    Proxied(Box<Backend>),
}

impl State {
    fn user(&self) -> Option<&str> {
        match self {
            State::Authenticated(user) | State::Selected { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// What the loop does after a command.
enum Flow {
    Continue,
    StartTls,
    Close,
}

pub async fn serve(mut conn: Connection, peer: Peer, ctx: Rc<ImapContext>) {
    let mut machine = Machine::new(MAX_MESSAGE_BEFORE_LOGIN);
    let mut out = Vec::with_capacity(512);
    let mut state = State::NotAuthenticated;
    let greeting = Greeting::ok(
        Some(Code::Capability(ctx.capabilities(&conn, &state))),
        "mailmesh IMAP ready",
    )
    .expect("a valid greeting");
    out.extend_from_slice(&GreetingCodec::default().encode(&greeting).dump());
    let mut buf = vec![0u8; READ_CHUNK];
    // The tag of the IDLE in progress (RFC 2177).
    let mut idling: Option<Tag<'static>> = None;
    let mut enabled = Enabled::default();
    // How many bytes of `buf` the last read put there (the machine's input).
    let mut fed = 0;
    loop {
        while let Some(event) = machine.next_event() {
            let flow = match event {
                Event::ContinueLiteral => {
                    encode(&continuation("ready for the literal"), &mut out);
                    Flow::Continue
                }
                Event::Refused(response) => {
                    if let State::Authenticating(_) = state {
                        state = State::NotAuthenticated;
                        machine.expect(Expect::Command);
                    }
                    encode(&response, &mut out);
                    if let Some(tag) = idling.take() {
                        machine.expect(Expect::Command);
                        tagged(&tag, StatusKind::Bad, None, "IDLE ended: expected DONE", &mut out);
                    }
                    Flow::Continue
                }
                Event::IdleDone(done) => {
                    machine.expect(Expect::Command);
                    if let Some(tag) = idling.take() {
                        if done {
                            tagged(&tag, StatusKind::Ok, None, "IDLE terminated", &mut out);
                        } else {
                            tagged(&tag, StatusKind::Bad, None, "IDLE ended: expected DONE", &mut out);
                        }
                    }
                    Flow::Continue
                }
                Event::Command(Command {
                    tag,
                    body: CommandBody::Idle,
                }) => {
                    if start_idle(&mut state, &tag, &mut out).await {
                        machine.expect(Expect::IdleDone);
                        idling = Some(tag);
                    }
                    Flow::Continue
                }
                Event::Extended { tag, command } => {
                    extended_command(&ctx, &mut conn, &mut state, &mut enabled, &tag, command, &mut out)
                        .await;
                    Flow::Continue
                }
                Event::AuthenticateData(data) => {
                    machine.expect(Expect::Command);
                    let State::Authenticating(tag) = std::mem::replace(&mut state, State::NotAuthenticated)
                    else {
                        // The machine expects these only while authenticating.
                        continue;
                    };
                    state = match data {
                        AuthenticateData::Cancel => {
                            tagged(&tag, StatusKind::Bad, None, "authentication cancelled", &mut out);
                            State::NotAuthenticated
                        }
                        AuthenticateData::Continue(data) => {
                            let credentials = sasl::plain(data.declassify());
                            finish_login(&ctx, &peer, &conn, &tag, credentials, Some("PLAIN"), &mut out).await
                        }
                    };
                    Flow::Continue
                }
                Event::Command(command) => {
                    let flow = command_flow(
                        &ctx,
                        &peer,
                        &mut conn,
                        &mut state,
                        &mut enabled,
                        command,
                        &mut out,
                    )
                    .await;
                    if let State::Authenticating(_) = state {
                        machine.expect(Expect::AuthenticateData);
                    }
                    flow
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    let _ = write(&mut conn, &mut out).await;
                    let _ = conn.shutdown().await;
                    return;
                }
                Flow::StartTls => {
                    let Some(tls) = &ctx.tls else { return };
                    if write(&mut conn, &mut out).await.is_err() {
                        return;
                    }
                    conn = match conn.upgrade(tls, &peer.display.to_string()).await {
                        Some(conn) => conn,
                        None => return,
                    };
                    machine.discard_input();
                }
            }
            if let State::Proxied(_) = state {
                let State::Proxied(backend) = std::mem::replace(&mut state, State::NotAuthenticated) else {
                    return;
                };
                // What the client pipelined behind its login (already read, the tail of the
                // last read) is the primary's to answer, after the login.
                let pipelined = buf[fed - machine.unhandled().min(fed)..fed].to_vec();
                if write(&mut conn, &mut out).await.is_ok() {
                    proxy(conn, &peer, *backend, pipelined).await;
                }
                return;
            }
            machine.set_max_message(match state.user() {
                Some(_) => ctx.max_command_bytes,
                None => MAX_MESSAGE_BEFORE_LOGIN,
            });
            if out.len() >= FLUSH_AT && write(&mut conn, &mut out).await.is_err() {
                return;
            }
        }
        if !out.is_empty() && write(&mut conn, &mut out).await.is_err() {
            return;
        }
        let read = loop {
            // While idling in a selected mailbox, the mailbox's changes wake the session as well
            // as the client's bytes; otherwise only the client's.
            let watched = match (&idling, &mut state) {
                (Some(_), State::Selected { mailbox, .. }) => mailbox.changes.as_mut(),
                _ => None,
            };
            let Some(changes) = watched else {
                break tokio::time::timeout(IDLE_TIMEOUT, conn.read(&mut buf)).await;
            };
            let wake = tokio::select! {
                read = tokio::time::timeout(IDLE_TIMEOUT, conn.read(&mut buf)) => Wake::Read(read),
                changed = changes.changed() => Wake::Changed(changed.is_ok()),
            };
            match wake {
                Wake::Read(read) => break read,
                Wake::Changed(open) => {
                    let State::Selected { mailbox, .. } = &mut state else {
                        continue;
                    };
                    if !open {
                        // The actor is gone (the mailbox was deleted): nothing more to wait for.
                        mailbox.changes = None;
                        continue;
                    }
                    if let Err(e) = mailbox.refresh(true, &mut out).await {
                        info!(mailbox = %mailbox.name, error = %e, "imap session could not bring its message numbers up to date");
                    }
                    if !out.is_empty() && write(&mut conn, &mut out).await.is_err() {
                        return;
                    }
                }
            }
        };
        let read = match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                bye("autologout: idle too long", &mut out);
                let _ = write(&mut conn, &mut out).await;
                return;
            }
        };
        machine.feed(&buf[..read]);
        fed = read;
    }
}

/// Whether a command uses CONDSTORE, which turns it on (RFC 7162 3.1): FETCH of MODSEQ or with
/// CHANGEDSINCE, STORE with UNCHANGEDSINCE, SEARCH with MODSEQ.
fn enables_condstore(body: &CommandBody<'_>) -> bool {
    use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
    match body {
        CommandBody::Fetch {
            macro_or_item_names,
            modifiers,
            ..
        } => {
            !modifiers.is_empty()
                || matches!(macro_or_item_names, MacroOrMessageDataItemNames::MessageDataItemNames(names)
                    if names.contains(&MessageDataItemName::ModSeq))
        }
        CommandBody::Store { modifiers, .. } => !modifiers.is_empty(),
        CommandBody::Search { criteria, .. } => criteria.as_ref().iter().any(super::search::has_modseq),
        _ => false,
    }
}

/// The extensions a client turned on (RFC 7162 3.1: CONDSTORE by ENABLE, SELECT (CONDSTORE) or
/// a command that uses it; QRESYNC by ENABLE only; IMAP4rev2 by ENABLE only, RFC 9051 6.3.1);
/// they stay on for the connection.
#[derive(Debug, Default)]
struct Enabled {
    condstore: bool,
    qresync: bool,
    /// RFC 9051's behaviour: no `* 0 RECENT` and no `[UNSEEN n]` on SELECT, a `* LIST` of the
    /// selected mailbox instead, and SEARCH answered as ESEARCH.
    rev2: bool,
}

/// What woke an idling session.
enum Wake {
    Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    /// The mailbox changed (true), or its actor is gone (false).
    Changed(bool),
}

/// IDLE (RFC 2177): what is new is told first, then the continuation request; answers whether
/// the session now idles (it needs a login).
async fn start_idle(state: &mut State, tag: &Tag<'static>, out: &mut Vec<u8>) -> bool {
    match state {
        State::Selected { mailbox, .. } => {
            if let Err(e) = mailbox.refresh(true, out).await {
                info!(mailbox = %mailbox.name, error = %e, "imap session could not bring its message numbers up to date");
            }
        }
        State::Authenticated(_) => {}
        // A proxied session relays before it reads another command: never here.
        State::NotAuthenticated | State::Authenticating(_) | State::Proxied(_) => {
            tagged(tag, StatusKind::Bad, None, "IDLE needs a login first", out);
            return false;
        }
    }
    encode(&continuation("idling"), out);
    true
}

pub(super) async fn write(conn: &mut Connection, out: &mut Vec<u8>) -> std::io::Result<()> {
    let result = tokio::time::timeout(IDLE_TIMEOUT, async {
        conn.write_all(out).await?;
        conn.flush().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)));
    out.clear();
    result
}

fn tagged(tag: &Tag<'static>, kind: StatusKind, code: Option<Code<'static>>, text: &str, out: &mut Vec<u8>) {
    encode(&status(Some(tag.clone()), kind, code, text.to_string()), out);
}

pub(super) fn untagged(data: Data<'_>, out: &mut Vec<u8>) {
    encode(&Response::Data(data), out);
}

fn bye(text: &'static str, out: &mut Vec<u8>) {
    let bye = Bye {
        code: None,
        text: Text::try_from(text).expect("a valid text"),
    };
    encode(&Response::Status(Status::Bye(bye)), out);
}

/// A command's outcome: the tagged status to send.
pub(super) struct Outcome {
    kind: StatusKind,
    code: Option<Code<'static>>,
    text: String,
}

impl Outcome {
    pub(super) fn ok(text: impl Into<String>) -> Outcome {
        Outcome {
            kind: StatusKind::Ok,
            code: None,
            text: text.into(),
        }
    }
    pub(super) fn no(text: impl Into<String>) -> Outcome {
        Outcome {
            kind: StatusKind::No,
            code: None,
            text: text.into(),
        }
    }
    pub(super) fn bad(text: impl Into<String>) -> Outcome {
        Outcome {
            kind: StatusKind::Bad,
            code: None,
            text: text.into(),
        }
    }
    pub(super) fn with_code(mut self, code: Code<'static>) -> Outcome {
        self.code = Some(code);
        self
    }
}

async fn command_flow(
    ctx: &ImapContext,
    peer: &Peer,
    conn: &mut Connection,
    state: &mut State,
    enabled: &mut Enabled,
    command: Command<'static>,
    out: &mut Vec<u8>,
) -> Flow {
    let Command { tag, body } = command;
    let mut flow = Flow::Continue;
    if let State::Selected { mailbox, .. } = state {
        // RFC 7162 3.1: a command that uses CONDSTORE turns it on, before its own answers.
        if enables_condstore(&body) {
            enabled.condstore = true;
        }
        mailbox.condstore = enabled.condstore;
        mailbox.qresync = enabled.qresync;
    }
    // RFC 3501 7.4.1: no untagged EXPUNGE while answering FETCH, STORE or SEARCH (the client
    // could not tell which message a number meant).
    let expunges_allowed = !matches!(
        body,
        CommandBody::Fetch { .. } | CommandBody::Store { .. } | CommandBody::Search { .. }
    );
    let outcome = match body {
        // Any state.
        CommandBody::Capability => {
            untagged(Data::Capability(ctx.capabilities(conn, state)), out);
            Outcome::ok("CAPABILITY completed")
        }
        CommandBody::Noop => Outcome::ok("NOOP completed"),
        CommandBody::Logout => {
            bye("logging out", out);
            flow = Flow::Close;
            Outcome::ok("LOGOUT completed")
        }
        CommandBody::Id { .. } => {
            // RFC 2971: the server's own parameters; the client's are only logged.
            let parameters = vec![
                (istring("name"), NString(Some(istring(super::IMPLEMENTATION)))),
                (
                    istring("version"),
                    NString(Some(istring(env!("CARGO_PKG_VERSION")))),
                ),
            ];
            untagged(
                Data::Id {
                    parameters: Some(parameters),
                },
                out,
            );
            Outcome::ok("ID completed")
        }
        // Not authenticated.
        CommandBody::StartTLS => {
            if conn.is_tls() {
                Outcome::bad("TLS is already active")
            } else if ctx.tls.is_none() {
                Outcome::bad("STARTTLS is not offered here (no certificate configured)")
            } else if state.user().is_some() {
                Outcome::bad("STARTTLS only before a login")
            } else {
                flow = Flow::StartTls;
                Outcome::ok("begin TLS negotiation now")
            }
        }
        CommandBody::Login { username, password } => {
            if state.user().is_some() {
                Outcome::bad("already logged in")
            } else if !ctx.tls_options.password_allowed(conn.is_tls()) {
                Outcome::no("a password needs TLS here: STARTTLS first")
                    .with_code(other_code("PRIVACYREQUIRED"))
            } else {
                let credentials = match std::str::from_utf8(username.as_ref()) {
                    Ok(user) => Ok(Credentials {
                        user: user.to_string(),
                        password: password.declassify().as_ref().to_vec(),
                    }),
                    Err(_) => Err(AuthError::Failed),
                };
                *state = finish_login(ctx, peer, conn, &tag, credentials, None, out).await;
                return flow;
            }
        }
        CommandBody::Authenticate {
            mechanism,
            initial_response,
        } => {
            if state.user().is_some() {
                Outcome::bad("already logged in")
            } else if mechanism != AuthMechanism::Plain {
                Outcome::no(format!("mechanism {mechanism} is not supported (PLAIN)"))
            } else if !ctx.tls_options.password_allowed(conn.is_tls()) {
                Outcome::no("a password needs TLS here: STARTTLS first")
                    .with_code(other_code("PRIVACYREQUIRED"))
            } else {
                match initial_response {
                    Some(data) => {
                        let credentials = sasl::plain(data.declassify());
                        *state = finish_login(ctx, peer, conn, &tag, credentials, Some("PLAIN"), out).await;
                    }
                    None => {
                        // RFC 3501 6.2.2: an empty challenge asks for PLAIN's response.
                        encode(&continuation_empty(), out);
                        *state = State::Authenticating(tag);
                    }
                }
                return flow;
            }
        }
        other => match state.user().map(str::to_string) {
            None => Outcome::bad(format!("{} needs a login first", other.name())),
            Some(user) => authenticated_command(ctx, &user, conn, state, enabled, &tag, other, out).await,
        },
    };
    if let (State::Selected { mailbox, .. }, Flow::Continue) = (&mut *state, &flow) {
        // What other sessions, deliveries, replication and this command added or took away,
        // told before the command completes (NOOP's purpose, RFC 3501 6.1.2).
        if let Err(e) = mailbox.refresh(expunges_allowed, out).await {
            info!(mailbox = %mailbox.name, error = %e, "imap session could not bring its message numbers up to date");
        }
    }
    let code = outcome.code.clone();
    tagged(&tag, outcome.kind, code, &outcome.text, out);
    flow
}

/// `+ ` with nothing after it: PLAIN's empty challenge.
fn continuation_empty() -> Response<'static> {
    use imap_codec::imap_types::response::CommandContinuationRequest;
    Response::CommandContinuationRequest(CommandContinuationRequest::base64(Vec::<u8>::new()))
}

/// Checks the credentials (waiting out the address's failure delay first, in
/// [`crate::auth::Authenticator::verify`]), answers, and says the state the connection is in next.
async fn finish_login(
    ctx: &ImapContext,
    peer: &Peer,
    conn: &Connection,
    tag: &Tag<'static>,
    credentials: Result<Credentials, AuthError>,
    mechanism: Option<&str>,
    out: &mut Vec<u8>,
) -> State {
    let (outcome, password) = match credentials {
        Ok(credentials) => (
            ctx.auth
                .verify(peer.ip, &credentials.user, &credentials.password)
                .await,
            credentials.password,
        ),
        Err(e) => (Err(e), Vec::new()),
    };
    match outcome {
        Ok(user) => {
            // The password is checked first: a referral tells where a user's mail lives, which
            // only the user may learn.
            match direct::route(&ctx.directing, &ctx.directory, &user, mechanism).await {
                Route::Here => {}
                Route::Referral(url) => {
                    info!(peer = %peer.display, %user, %url, "imap login referred to the INBOX's primary");
                    tagged(
                        tag,
                        StatusKind::No,
                        Some(Code::Referral(Cow::Owned(url))),
                        "log in at the primary of your INBOX",
                        out,
                    );
                    return State::NotAuthenticated;
                }
                Route::Proxy { primary, imap, trust } => {
                    let address = imap.address.clone();
                    match direct::login_at_primary(
                        primary.clone(),
                        imap,
                        trust,
                        tag.inner(),
                        &user,
                        &password,
                    )
                    .await
                    {
                        Ok(backend) => {
                            info!(peer = %peer.display, %user, %primary, %address, "imap login proxied to the INBOX's primary");
                            return State::Proxied(Box::new(backend));
                        }
                        Err(why) => {
                            warn!(peer = %peer.display, %user, %primary, %address, why, "imap: the INBOX's primary is unreachable; served here");
                        }
                    }
                }
            }
            info!(peer = %peer.display, %user, "imap login");
            let state = State::Authenticated(user);
            // RFC 3501 6.2.3: the capabilities as they are now, with the OK.
            let code = Code::Capability(ctx.capabilities(conn, &state));
            tagged(tag, StatusKind::Ok, Some(code), "logged in", out);
            state
        }
        Err(AuthError::Failed) => {
            info!(peer = %peer.display, "imap login failed");
            tagged(
                tag,
                StatusKind::No,
                Some(other_code("AUTHENTICATIONFAILED")),
                "authentication failed",
                out,
            );
            State::NotAuthenticated
        }
        Err(e @ AuthError::Malformed(_)) => {
            tagged(tag, StatusKind::Bad, None, &e.to_string(), out);
            State::NotAuthenticated
        }
    }
}

/// Relays the rest of a proxied session, and logs how it ended.
async fn proxy(conn: Connection, peer: &Peer, backend: Backend, pipelined: Vec<u8>) {
    let (primary, address) = (backend.primary.clone(), backend.address.clone());
    let (up, down, ended) = direct::relay(conn, backend, pipelined).await;
    info!(peer = %peer.display, %primary, %address, bytes_to_primary = up, bytes_to_client = down, closed_by = ended, "imap proxied session ended");
}

/// The commands of a logged-in user.
#[allow(clippy::too_many_arguments)]
async fn authenticated_command(
    ctx: &ImapContext,
    user: &str,
    conn: &mut Connection,
    state: &mut State,
    enabled: &mut Enabled,
    tag: &Tag<'static>,
    body: CommandBody<'static>,
    out: &mut Vec<u8>,
) -> Outcome {
    let result = match body {
        CommandBody::Namespace => {
            let personal = Namespace::new(istring(""), Some(separator()));
            untagged(
                Data::Namespace {
                    personal: vec![personal],
                    other: Vec::new(),
                    shared: Vec::new(),
                },
                out,
            );
            Ok(Outcome::ok("NAMESPACE completed"))
        }
        CommandBody::Enable { capabilities } => {
            // RFC 5161: only extensions this server implements are enabled: CONDSTORE,
            // QRESYNC (which implies CONDSTORE, RFC 7162 3.2.3) and IMAP4rev2 (RFC 9051), not
            // UTF8=ACCEPT or METADATA.
            let mut now = Vec::new();
            for capability in capabilities.into_inner() {
                // imap-codec has no variant of its own for QRESYNC or IMAP4rev2: atoms.
                let other = |name: &str| {
                    matches!(&capability, CapabilityEnable::Other(_))
                        && capability.to_string().eq_ignore_ascii_case(name)
                };
                if capability == CapabilityEnable::CondStore {
                    enabled.condstore = true;
                    now.push(capability);
                } else if other("QRESYNC") {
                    enabled.condstore = true;
                    enabled.qresync = true;
                    now.push(capability);
                } else if other("IMAP4rev2") {
                    enabled.rev2 = true;
                    now.push(capability);
                }
            }
            if let State::Selected { mailbox, .. } = state {
                mailbox.condstore = enabled.condstore;
                mailbox.qresync = enabled.qresync;
            }
            untagged(Data::Enabled { capabilities: now }, out);
            Ok(Outcome::ok("ENABLE completed"))
        }
        CommandBody::Create { mailbox } => create(ctx, user, &mailbox).await,
        CommandBody::Delete { mailbox } => delete(ctx, user, &mailbox).await,
        CommandBody::Rename { from, to } => rename(ctx, user, &from, &to).await,
        CommandBody::Subscribe { mailbox } => subscribe(ctx, user, &mailbox, true).await,
        CommandBody::Unsubscribe { mailbox } => subscribe(ctx, user, &mailbox, false).await,
        CommandBody::List {
            reference,
            mailbox_wildcard,
        } => match plain_list(&reference, &mailbox_wildcard) {
            Ok(command) => list(ctx, user, &command, out).await,
            Err(e) => Err(e),
        },
        CommandBody::Lsub {
            reference,
            mailbox_wildcard,
        } => lsub(ctx, user, &reference, &mailbox_wildcard, out).await,
        CommandBody::Status { mailbox, item_names } => {
            status_command(ctx, user, &mailbox, &item_names, out).await
        }
        CommandBody::Select { mailbox, parameters } => {
            select(ctx, user, state, enabled, &mailbox, &parameters, false, out).await
        }
        CommandBody::Examine { mailbox, parameters } => {
            select(ctx, user, state, enabled, &mailbox, &parameters, true, out).await
        }
        CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } => messages::append(ctx, user, &mailbox, &flags, date.as_ref(), message).await,
        CommandBody::Check if matches!(state, State::Selected { .. }) => Ok(Outcome::ok("CHECK completed")),
        body @ (CommandBody::Unselect | CommandBody::Close) => {
            match std::mem::replace(state, State::Authenticated(user.to_string())) {
                State::Selected { mailbox, .. } => {
                    // RFC 3501 6.4.2: CLOSE expunges the \Deleted messages silently, unless the
                    // mailbox was examined; UNSELECT (RFC 3691) never does.
                    let expunged = if matches!(body, CommandBody::Close) {
                        messages::expunge_silently(&mailbox).await
                    } else {
                        Ok(())
                    };
                    expunged.map(|()| {
                        Outcome::ok(if mailbox.read_only {
                            format!("{} closed (it was examined)", mailbox.name)
                        } else {
                            format!("{} closed", mailbox.name)
                        })
                    })
                }
                previous => {
                    *state = previous;
                    Ok(Outcome::bad("no mailbox is selected"))
                }
            }
        }
        CommandBody::Fetch {
            sequence_set,
            macro_or_item_names,
            uid,
            modifiers,
        } => match state {
            State::Selected { mailbox, .. } => {
                messages::fetch(
                    conn,
                    mailbox,
                    &sequence_set,
                    macro_or_item_names,
                    uid,
                    modifiers,
                    ObjectIds::default(),
                    out,
                )
                .await
            }
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::Store {
            sequence_set,
            kind,
            response,
            flags,
            uid,
            modifiers,
        } => match state {
            State::Selected { mailbox, .. } => {
                messages::store(
                    conn,
                    mailbox,
                    &sequence_set,
                    kind,
                    response,
                    &flags,
                    uid,
                    &modifiers,
                    out,
                )
                .await
            }
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::Expunge => match state {
            State::Selected { mailbox, .. } => messages::expunge(mailbox, None, out).await,
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::ExpungeUid { sequence_set } => match state {
            State::Selected { mailbox, .. } => messages::expunge(mailbox, Some(&sequence_set), out).await,
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::Copy {
            sequence_set,
            mailbox: target,
            uid,
        } => match state {
            State::Selected { mailbox, .. } => {
                messages::transfer(ctx, user, mailbox, &sequence_set, &target, uid, false, out).await
            }
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::Move {
            sequence_set,
            mailbox: target,
            uid,
        } => match state {
            State::Selected { mailbox, .. } => {
                messages::transfer(ctx, user, mailbox, &sequence_set, &target, uid, true, out).await
            }
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::Search {
            charset,
            criteria,
            uid,
        } => match state {
            State::Selected { mailbox, .. } => {
                let charset = charset.as_ref().map(|c| c.as_ref().to_string());
                // RFC 9051 6.4.4: a rev2 session's SEARCH is answered as `RETURN (ALL)`.
                let esearch = enabled.rev2.then(|| {
                    let all = SearchReturn {
                        all: true,
                        ..SearchReturn::default()
                    };
                    (tag.as_ref(), all)
                });
                messages::search(conn, mailbox, charset.as_deref(), criteria, uid, esearch, out).await
            }
            _ => Ok(Outcome::bad("no mailbox is selected")),
        },
        CommandBody::Check => Ok(Outcome::bad("no mailbox is selected")),
        CommandBody::GetMetadata {
            options,
            mailbox,
            entries,
        } => get_metadata(ctx, user, &options, mailbox, &entries, out).await,
        CommandBody::SetMetadata {
            mailbox,
            entry_values,
        } => set_metadata(ctx, user, &mailbox, &entry_values).await,
        other => Ok(Outcome::bad(format!(
            "{} is not supported by this server",
            other.name()
        ))),
    };
    result.unwrap_or_else(refusal)
}

async fn create(ctx: &ImapContext, user: &str, mailbox: &ImapMailbox<'_>) -> Result<Outcome, MailError> {
    let name = mailbox_name(mailbox)?;
    // RFC 3501 6.3.3: a trailing separator says the client means to create inferiors under it.
    let name = name.strip_suffix(SEPARATOR).unwrap_or(&name).to_string();
    ctx.directory
        .send(CreateMailbox {
            user: user.to_string(),
            name,
        })
        .await??;
    Ok(Outcome::ok("CREATE completed"))
}

/// CREATE-SPECIAL-USE (RFC 6154 3): the mailbox made, then its uses written as its
/// `/private/specialuse` annotation ([`special_use`]). A use this server does not offer is
/// refused before anything is made (`NO [USEATTR]`); if the annotation cannot be written the
/// new mailbox is deleted again, since RFC 6154 asks that no mailbox be made then.
async fn create_special_use(
    ctx: &ImapContext,
    user: &str,
    mailbox: &str,
    uses: &[String],
) -> Result<Outcome, MailError> {
    let mut known = Vec::new();
    for written in uses {
        match special_use::known_use(written) {
            Some(attribute) if !known.contains(&attribute) => known.push(attribute),
            Some(_) => {}
            None => {
                return Ok(Outcome::no(format!(
                    "special use \\{written} is not offered here (only \\Drafts, \\Sent, \\Trash, \\Junk, \\Archive)"
                ))
                .with_code(other_code("USEATTR")))
            }
        }
    }
    let name = from_wire(mailbox)?;
    let name = name.strip_suffix(SEPARATOR).unwrap_or(&name).to_string();
    ctx.directory
        .send(CreateMailbox {
            user: user.to_string(),
            name: name.clone(),
        })
        .await??;
    if known.is_empty() {
        return Ok(Outcome::ok("CREATE completed"));
    }
    let annotated = async {
        open_mailbox(ctx, user, &name)
            .await?
            .addr
            .send(SetAnnotation {
                entry: special_use::ANNOTATION.to_string(),
                value: Some(special_use::annotation_value(&known)),
            })
            .await?
    };
    match annotated.await {
        Ok(_) => Ok(Outcome::ok("CREATE completed")),
        Err(e) => {
            let undone = ctx
                .directory
                .send(DeleteMailbox {
                    user: user.to_string(),
                    name: name.clone(),
                })
                .await;
            if !matches!(undone, Ok(Ok(_))) {
                warn!(%user, mailbox = %name, "a mailbox whose special use could not be recorded was not deleted again");
            }
            Ok(Outcome::no(format!("the special use could not be recorded: {e}"))
                .with_code(other_code("USEATTR")))
        }
    }
}

async fn delete(ctx: &ImapContext, user: &str, mailbox: &ImapMailbox<'_>) -> Result<Outcome, MailError> {
    let name = mailbox_name(mailbox)?;
    ctx.directory
        .send(DeleteMailbox {
            user: user.to_string(),
            name,
        })
        .await??;
    Ok(Outcome::ok("DELETE completed"))
}

async fn rename(
    ctx: &ImapContext,
    user: &str,
    from: &ImapMailbox<'_>,
    to: &ImapMailbox<'_>,
) -> Result<Outcome, MailError> {
    let from = mailbox_name(from)?;
    let to = mailbox_name(to)?;
    ctx.directory
        .send(RenameMailbox {
            user: user.to_string(),
            from,
            to_user: None,
            to,
        })
        .await??;
    Ok(Outcome::ok("RENAME completed"))
}

async fn subscribe(
    ctx: &ImapContext,
    user: &str,
    mailbox: &ImapMailbox<'_>,
    subscribed: bool,
) -> Result<Outcome, MailError> {
    let name = mailbox_name(mailbox)?;
    ctx.directory
        .send(Subscribe {
            user: user.to_string(),
            name,
            subscribed,
        })
        .await??;
    Ok(Outcome::ok(if subscribed {
        "SUBSCRIBE completed"
    } else {
        "UNSUBSCRIBE completed"
    }))
}

/// GETMETADATA (RFC 5464 4.2): the entries asked for, and below them to DEPTH, in one METADATA
/// response; what MAXSIZE leaves out is counted in `[METADATA LONGENTRIES n]`.
async fn get_metadata(
    ctx: &ImapContext,
    user: &str,
    options: &[GetMetadataOption],
    mailbox: ImapMailbox<'static>,
    entries: &Vec1<Entry<'static>>,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    let mut requested = Vec::new();
    for entry in entries.as_ref() {
        match metadata::entry_name(entry, metadata::Use::Get) {
            Ok(name) => requested.push(name),
            Err(problem) => return Ok(Outcome::bad(problem)),
        }
    }
    let name = mailbox_name(&mailbox)?;
    let stored = if name.is_empty() {
        // Server annotations: none exist here (see `metadata`'s header).
        Vec::new()
    } else {
        open_mailbox(ctx, user, &name)
            .await?
            .addr
            .send(GetAnnotations)
            .await??
    };
    let answer = metadata::select(&stored, &requested, metadata::GetOptions::from_command(options));
    let longest = answer.longest_left_out;
    if let Some(values) = metadata::entry_values(answer) {
        untagged(
            Data::Metadata {
                mailbox,
                items: MetadataResponse::WithValues(values),
            },
            out,
        );
    }
    let outcome = Outcome::ok("GETMETADATA completed");
    Ok(match longest {
        Some(size) => outcome.with_code(Code::Metadata(MetadataCode::LongEntries(clamp(size as u64)))),
        None => outcome,
    })
}

/// SETMETADATA (RFC 5464 4.3): every entry set (NIL: removed) in one write of the mailbox, or
/// none.
async fn set_metadata(
    ctx: &ImapContext,
    user: &str,
    mailbox: &ImapMailbox<'_>,
    entry_values: &Vec1<EntryValue<'static>>,
) -> Result<Outcome, MailError> {
    let limits = ctx.metadata;
    let mut entries = Vec::new();
    for EntryValue { entry, value } in entry_values.as_ref() {
        let name = match metadata::entry_name(entry, metadata::Use::Set) {
            Ok(name) => name,
            Err(problem) => return Ok(Outcome::bad(problem)),
        };
        let mut value = metadata::set_value(value);
        if let (special_use::ANNOTATION, Some(uses)) = (name.as_str(), &value) {
            value = match special_use::checked_value(uses) {
                Ok(value) => value,
                Err(word) => {
                    return Ok(Outcome::no(format!(
                    "{word} is not a special use offered here (\\Drafts, \\Sent, \\Trash, \\Junk, \\Archive)"
                ))
                    .with_code(other_code("USEATTR")))
                }
            };
        }
        if value.as_ref().is_some_and(|v| v.len() > limits.max_value_bytes) {
            return Ok(too_large_annotation(limits.max_value_bytes));
        }
        entries.push((name, value));
    }
    let name = mailbox_name(mailbox)?;
    if name.is_empty() {
        return Ok(Outcome::no(
            "server annotations are not kept here: annotate a mailbox instead",
        ));
    }
    let opened = open_mailbox(ctx, user, &name).await?;
    opened
        .addr
        .send(SetAnnotations {
            entries,
            max_entries: limits.max_entries,
        })
        .await??;
    Ok(Outcome::ok("SETMETADATA completed"))
}

/// `NO [METADATA MAXSIZE n]`: a value over the limit (RFC 5464 4.3).
fn too_large_annotation(max: usize) -> Outcome {
    Outcome::no(format!("an annotation value may hold at most {max} bytes"))
        .with_code(Code::Metadata(MetadataCode::MaxSize(clamp(max as u64))))
}

/// RFC 3501's `LIST reference pattern`: RFC 5258's LIST with no options and one pattern (as
/// sent; [`list`] decodes them).
fn plain_list(reference: &ImapMailbox<'_>, pattern: &ListMailbox<'_>) -> Result<ListCommand, MailError> {
    Ok(ListCommand {
        reference: wire_name(reference)?,
        patterns: vec![wire_pattern(pattern)?],
        ..ListCommand::default()
    })
}

/// A LIST pattern as the client sent it, not decoded.
fn wire_pattern(pattern: &ListMailbox<'_>) -> Result<String, MailError> {
    match pattern {
        ListMailbox::Token(token) => utf8(token.as_ref()),
        ListMailbox::String(string) => utf8(string.as_ref()),
    }
}

/// The commands of extensions imap-codec has no grammar for: carried out like the others
/// (a login needed; in the selected state the session's news told before the tagged answer).
async fn extended_command(
    ctx: &ImapContext,
    conn: &mut Connection,
    state: &mut State,
    enabled: &mut Enabled,
    tag: &Tag<'static>,
    command: ExtendedCommand,
    out: &mut Vec<u8>,
) {
    // RFC 3501 7.4.1: no untagged EXPUNGE while answering FETCH or SEARCH.
    let expunges_allowed = !matches!(
        command,
        ExtendedCommand::Search { .. } | ExtendedCommand::Fetch { .. }
    );
    let outcome = match (state.user().map(str::to_string), command) {
        (None, ExtendedCommand::List(_)) => Outcome::bad("LIST needs a login first"),
        (None, ExtendedCommand::Search { .. }) => Outcome::bad("SEARCH needs a login first"),
        (None, ExtendedCommand::Status { .. }) => Outcome::bad("STATUS needs a login first"),
        (None, ExtendedCommand::Fetch { .. }) => Outcome::bad("FETCH needs a login first"),
        (None, ExtendedCommand::Create { .. }) => Outcome::bad("CREATE needs a login first"),
        (Some(user), ExtendedCommand::Create { mailbox, uses }) => {
            create_special_use(ctx, &user, &mailbox, &uses)
                .await
                .unwrap_or_else(refusal)
        }
        (
            Some(user),
            ExtendedCommand::Status {
                mailbox,
                items,
                mailbox_id,
            },
        ) => match from_wire(&mailbox) {
            Ok(name) => status_answer(ctx, &user, &name, &items, mailbox_id, out)
                .await
                .unwrap_or_else(refusal),
            Err(e) => refusal(e),
        },
        (
            Some(_),
            ExtendedCommand::Fetch {
                email_id,
                thread_id,
                command,
            },
        ) => {
            if enables_condstore(&command.body) {
                enabled.condstore = true;
            }
            match (&mut *state, command.body) {
                (
                    State::Selected { mailbox, .. },
                    CommandBody::Fetch {
                        sequence_set,
                        macro_or_item_names,
                        uid,
                        modifiers,
                    },
                ) => {
                    mailbox.condstore = enabled.condstore;
                    let ids = ObjectIds { email_id, thread_id };
                    messages::fetch(
                        conn,
                        mailbox,
                        &sequence_set,
                        macro_or_item_names,
                        uid,
                        modifiers,
                        ids,
                        out,
                    )
                    .await
                    .unwrap_or_else(refusal)
                }
                _ => Outcome::bad("no mailbox is selected"),
            }
        }
        (Some(user), ExtendedCommand::List(command)) => {
            list(ctx, &user, &command, out).await.unwrap_or_else(refusal)
        }
        (Some(_), ExtendedCommand::Search { returns, command }) => {
            // RFC 7162 3.1: a MODSEQ key turns CONDSTORE on, as in a plain SEARCH.
            if enables_condstore(&command.body) {
                enabled.condstore = true;
            }
            match (&mut *state, command.body) {
                (
                    State::Selected { mailbox, .. },
                    CommandBody::Search {
                        charset,
                        criteria,
                        uid,
                    },
                ) => {
                    mailbox.condstore = enabled.condstore;
                    let charset = charset.as_ref().map(|c| c.as_ref().to_string());
                    let esearch = Some((tag.as_ref(), returns));
                    messages::search(conn, mailbox, charset.as_deref(), criteria, uid, esearch, out)
                        .await
                        .unwrap_or_else(refusal)
                }
                _ => Outcome::bad("no mailbox is selected"),
            }
        }
    };
    if let State::Selected { mailbox, .. } = state {
        if let Err(e) = mailbox.refresh(expunges_allowed, out).await {
            info!(mailbox = %mailbox.name, error = %e, "imap session could not bring its message numbers up to date");
        }
    }
    tagged(tag, outcome.kind, outcome.code, &outcome.text, out);
}

/// LIST, RFC 3501's and RFC 5258's: [`listing::list`] chooses the names; a STATUS answer follows
/// each existing one when RETURN (STATUS ...) asks (RFC 5819).
async fn list(
    ctx: &ImapContext,
    user: &str,
    command: &ListCommand,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    // The reference and patterns as the client sent them (modified UTF-7), decoded once here.
    let command = &ListCommand {
        reference: from_wire(&command.reference)?,
        patterns: command
            .patterns
            .iter()
            .map(|p| from_wire(p))
            .collect::<Result<_, _>>()?,
        ..command.clone()
    };
    if command.patterns.iter().all(String::is_empty) {
        // RFC 3501 6.3.8: an empty pattern asks for the hierarchy separator and root.
        untagged(
            Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter: Some(separator()),
                mailbox: imap_mailbox("").expect("\"\" is a valid mailbox string"),
            },
            out,
        );
        return Ok(Outcome::ok("LIST completed"));
    }
    let mut existing: Vec<String> = ctx
        .directory
        .send(ListMailboxes {
            user: user.to_string(),
        })
        .await??
        .into_iter()
        .map(|info| info.name)
        .collect();
    // INBOX always exists for a client (a delivery creates it when the first message comes).
    if !existing.iter().any(|n| n == "INBOX") {
        existing.push("INBOX".to_string());
    }
    let subscribed = if command.selection.subscribed || command.returns.subscribed {
        ctx.directory
            .send(ListSubscriptions {
                user: user.to_string(),
            })
            .await??
    } else {
        Vec::new()
    };
    // The configured uses and those CREATE-SPECIAL-USE recorded on the mailboxes.
    let annotated = ctx
        .directory
        .send(ListAnnotation {
            user: user.to_string(),
            entry: special_use::ANNOTATION.to_string(),
        })
        .await??;
    let uses = ctx.special_use.with_annotated(&annotated);
    for listed in listing::list(command, &existing, &subscribed, &uses) {
        let Some(mailbox) = imap_mailbox(&listed.name) else {
            continue;
        };
        let items = listed
            .attributes
            .iter()
            .map(|&attribute| FlagNameAttribute::from(atom(attribute)))
            .collect();
        let at = out.len();
        untagged(
            Data::List {
                items,
                delimiter: Some(separator()),
                mailbox: mailbox.clone(),
            },
            out,
        );
        if listed.subscribed_child {
            // RFC 5258's extended data, which imap-codec does not encode: after the name,
            // before the line's CRLF.
            debug_assert!(out[at..].ends_with(b"\r\n"));
            out.truncate(out.len() - 2);
            out.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
        }
        if let (true, Some(items)) = (listed.status, &command.returns.status) {
            // A mailbox deleted in between is left out of the STATUS answers, not an error.
            if let Ok(state) = mailbox_state(ctx, user, &listed.name).await {
                untagged(
                    Data::Status {
                        mailbox,
                        items: Cow::Owned(status_items(&state, items)),
                    },
                    out,
                );
            }
        }
    }
    Ok(Outcome::ok("LIST completed"))
}

/// LSUB (RFC 3501 6.3.9): the subscribed names a pattern matches.
async fn lsub(
    ctx: &ImapContext,
    user: &str,
    reference: &ImapMailbox<'_>,
    pattern: &ListMailbox<'_>,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    let full = format!(
        "{}{}",
        mailbox_name(reference)?,
        from_wire(&wire_pattern(pattern)?)?
    );
    let names: Vec<String> = ctx
        .directory
        .send(ListSubscriptions {
            user: user.to_string(),
        })
        .await??;
    for name in names.iter().filter(|name| list_matches(&full, name)) {
        let Some(mailbox) = imap_mailbox(name) else {
            continue;
        };
        untagged(
            Data::Lsub {
                items: Vec::new(),
                delimiter: Some(separator()),
                mailbox,
            },
            out,
        );
    }
    Ok(Outcome::ok("LSUB completed"))
}

/// The mailbox's actor, INBOX made first if the user has none yet.
pub(super) async fn open_mailbox(
    ctx: &ImapContext,
    user: &str,
    name: &str,
) -> Result<OpenedMailbox, MailError> {
    let open = || OpenMailbox {
        user: user.to_string(),
        name: name.to_string(),
    };
    let opened = match ctx.directory.send(open()).await? {
        // INBOX always exists for a client (LIST shows it): made here when a user selects it
        // before the first delivery did, as LMTP does for the first message.
        Err(MailError::UnknownMailbox { .. }) if name == "INBOX" => {
            match ctx
                .directory
                .send(CreateMailbox {
                    user: user.to_string(),
                    name: name.to_string(),
                })
                .await?
            {
                // Another session (or a delivery) made it in between: as good.
                Ok(_) | Err(MailError::MailboxExists { .. }) => {}
                Err(e) => return Err(e),
            }
            ctx.directory.send(open()).await??
        }
        other => other?,
    };
    Ok(opened)
}

async fn mailbox_state(ctx: &ImapContext, user: &str, name: &str) -> Result<MailboxState, MailError> {
    open_mailbox(ctx, user, name).await?.addr.send(GetState).await?
}

async fn status_command(
    ctx: &ImapContext,
    user: &str,
    mailbox: &ImapMailbox<'static>,
    items: &[StatusDataItemName],
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    let name = mailbox_name(mailbox)?;
    status_answer(ctx, user, &name, items, false, out).await
}

/// STATUS of the mailbox `name`, with RFC 8474's MAILBOXID when `mailbox_id`.
async fn status_answer(
    ctx: &ImapContext,
    user: &str,
    name: &str,
    items: &[StatusDataItemName],
    mailbox_id: bool,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    let opened = open_mailbox(ctx, user, name).await?;
    let state = opened.addr.send(GetState).await??;
    let Some(mailbox) = imap_mailbox(name) else {
        return Ok(Outcome::no("a mailbox name IMAP cannot carry"));
    };
    let at = out.len();
    untagged(
        Data::Status {
            mailbox,
            items: Cow::Owned(status_items(&state, items)),
        },
        out,
    );
    if mailbox_id {
        // imap-codec has no MAILBOXID item: it goes last in the list, before `)` and CRLF.
        debug_assert!(out[at..].ends_with(b")\r\n"));
        out.truncate(out.len() - 3);
        if !out.ends_with(b"(") {
            out.push(b' ');
        }
        out.extend_from_slice(format!("MAILBOXID ({}))\r\n", opened.info.id).as_bytes());
    }
    Ok(Outcome::ok("STATUS completed"))
}

/// The STATUS items of a mailbox's state, in the order asked.
fn status_items(state: &MailboxState, items: &[StatusDataItemName]) -> Vec<StatusDataItem> {
    let mut answered = Vec::new();
    for item in items {
        let value = match item {
            StatusDataItemName::Messages => Some(StatusDataItem::Messages(clamp(state.exists))),
            // No message is \Recent on this server: the flag has no replicated meaning (RFC 9051
            // dropped it).
            StatusDataItemName::Recent => Some(StatusDataItem::Recent(0)),
            StatusDataItemName::UidNext => NonZeroU32::new(state.uidnext.0).map(StatusDataItem::UidNext),
            StatusDataItemName::UidValidity => {
                NonZeroU32::new(state.uidvalidity.0).map(StatusDataItem::UidValidity)
            }
            StatusDataItemName::Unseen => Some(StatusDataItem::Unseen(clamp(state.unseen))),
            StatusDataItemName::HighestModSeq => Some(StatusDataItem::HighestModSeq(state.highestmodseq.0)),
            // Not counted by the store (yet): left out rather than guessed.
            StatusDataItemName::Deleted | StatusDataItemName::DeletedStorage => None,
        };
        answered.extend(value);
    }
    answered
}

#[allow(clippy::too_many_arguments)]
async fn select(
    ctx: &ImapContext,
    user: &str,
    state: &mut State,
    enabled: &mut Enabled,
    mailbox: &ImapMailbox<'_>,
    parameters: &[SelectParameter],
    read_only: bool,
    out: &mut Vec<u8>,
) -> Result<Outcome, MailError> {
    // RFC 3501 6.3.1: a SELECT deselects the current mailbox first, even when it then fails.
    *state = State::Authenticated(user.to_string());
    let mut resync = None;
    for parameter in parameters {
        match parameter {
            SelectParameter::CondStore => enabled.condstore = true,
            // RFC 7162 3.2.5: only once the client enabled QRESYNC.
            SelectParameter::QResync { .. } if !enabled.qresync => {
                return Ok(Outcome::bad("QRESYNC is not enabled: ENABLE QRESYNC first"))
            }
            // RFC 7162 3.2.5.2's seq-match-data (known sequence numbers and their uids) is
            // taken and not used. It lets a server skip VANISHED below the last pair that still
            // matches, on the reasoning that uids only grow, so equal numbers at equal uids mean
            // nothing below went. Here a message can appear below uids a client knows (a
            // replicated append, a UID promotion), so a pair can match although a message
            // below it went: using it could leave out a vanished uid. Without it the answer is
            // every known uid the mailbox lacks, complete, which RFC 7162 allows (VANISHED
            // (EARLIER) may name more than changed).
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                seq_match_data: _,
            } => resync = Some((*uid_validity, *mod_sequence_value, known_uids.clone())),
        }
    }
    let name = mailbox_name(mailbox)?;
    let (mut selected, mailbox_state) = Selected::open(ctx, user, name, read_only).await?;
    selected.condstore = enabled.condstore;
    selected.qresync = enabled.qresync;
    let system = [
        Flag::Answered,
        Flag::Flagged,
        Flag::Deleted,
        Flag::Seen,
        Flag::Draft,
    ];
    untagged(Data::Flags(system.to_vec()), out);
    // The count of the session's own map: its numbers are what later commands name.
    untagged(Data::Exists(selected.map.len()), out);
    let mut codes = Vec::new();
    if enabled.rev2 {
        // RFC 9051 6.3.2: a LIST of the mailbox (its name as stored) instead of RECENT and
        // the first unseen message, which rev2 dropped.
        if let Some(listed) = imap_mailbox(&selected.name) {
            untagged(
                Data::List {
                    items: Vec::new(),
                    delimiter: Some(separator()),
                    mailbox: listed,
                },
                out,
            );
        }
    } else {
        untagged(Data::Recent(0), out);
        if let Some(first) = selected
            .first_unseen(mailbox_state.unseen)
            .await?
            .and_then(NonZeroU32::new)
        {
            codes.push(Code::Unseen(first));
        }
    }
    if let Some(uidvalidity) = NonZeroU32::new(mailbox_state.uidvalidity.0) {
        codes.push(Code::UidValidity(uidvalidity));
    }
    if let Some(uidnext) = NonZeroU32::new(selected.uidnext) {
        codes.push(Code::UidNext(uidnext));
    }
    if let Some(modseq) = NonZeroU64::new(mailbox_state.highestmodseq.0) {
        codes.push(Code::HighestModSeq(modseq));
    }
    let permanent = if read_only {
        Vec::new()
    } else {
        let mut flags: Vec<FlagPerm> = system.into_iter().map(FlagPerm::Flag).collect();
        flags.push(FlagPerm::Asterisk);
        flags
    };
    codes.push(Code::PermanentFlags(permanent));
    // RFC 8474 4.1: the mailbox's id, the same on every node and across renames.
    codes.push(Code::Other(CodeOther::unvalidated(
        format!("MAILBOXID ({})", selected.id).into_bytes(),
    )));
    for code in codes {
        encode(
            &status(None, StatusKind::Ok, Some(code), "mailbox state".to_string()),
            out,
        );
    }
    // With another UIDVALIDITY the client's cache is void whole: nothing to resync.
    if let Some((uidvalidity, since, known)) = resync {
        if uidvalidity.get() == mailbox_state.uidvalidity.0 {
            selected.resync(since.get(), known.as_ref(), out).await?;
        }
    }
    *state = State::Selected {
        user: user.to_string(),
        mailbox: selected,
    };
    Ok(if read_only {
        Outcome::ok("EXAMINE completed").with_code(Code::ReadOnly)
    } else {
        Outcome::ok("SELECT completed").with_code(Code::ReadWrite)
    })
}

/// The answer to an actor's refusal, with RFC 5530's response codes where one fits.
fn refusal(error: MailError) -> Outcome {
    let text = error.to_string();
    match error {
        MailError::UnknownMailbox { .. } | MailError::UnknownMailboxId(_) | MailError::MailboxDeleted(_) => {
            Outcome::no(text).with_code(other_code("NONEXISTENT"))
        }
        MailError::MailboxExists { .. } => Outcome::no(text).with_code(other_code("ALREADYEXISTS")),
        MailError::InvalidName(_) => Outcome::no(text).with_code(other_code("CANNOT")),
        MailError::NotAllowed(_) => Outcome::no(text).with_code(other_code("CANNOT")),
        MailError::ShuttingDown | MailError::Store(_) => {
            Outcome::no(format!("{text}; try again later")).with_code(other_code("UNAVAILABLE"))
        }
        MailError::NotHeldHere { .. } => Outcome::no(text).with_code(other_code("UNAVAILABLE")),
        MailError::MessageTooLarge { .. } => Outcome::no(text).with_code(Code::TooBig),
        MailError::EmptyMessage => Outcome::no(text).with_code(other_code("CANNOT")),
        MailError::AnnotationTooLarge { max, .. } => too_large_annotation(max),
        MailError::TooManyAnnotations { .. } => {
            Outcome::no(text).with_code(Code::Metadata(MetadataCode::TooMany))
        }
        _ => Outcome::no(text),
    }
}

/// A mailbox name as the store spells it (UTF-8): the client's modified UTF-7 (RFC 3501 5.1.3)
/// decoded; one that is not valid modified UTF-7 is refused (`NO [CANNOT]`, naming the name).
pub(super) fn mailbox_name(mailbox: &ImapMailbox<'_>) -> Result<String, MailError> {
    from_wire(&wire_name(mailbox)?)
}

/// A mailbox name as the client sent it, not decoded.
fn wire_name(mailbox: &ImapMailbox<'_>) -> Result<String, MailError> {
    match mailbox {
        ImapMailbox::Inbox => Ok("INBOX".to_string()),
        ImapMailbox::Other(other) => utf8(other.as_ref()),
    }
}

/// A name or a LIST pattern from the wire (modified UTF-7) as the store spells it. The
/// wildcards `%` and `*` are printable ASCII, so a pattern decodes like a name.
pub(super) fn from_wire(name: &str) -> Result<String, MailError> {
    utf7::decode(name).map_err(|e| {
        MailError::InvalidName(mailmesh_protocol::names::NameError::Mailbox {
            name: e.name,
            reason: e.reason,
        })
    })
}

fn utf8(bytes: &[u8]) -> Result<String, MailError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        MailError::InvalidName(mailmesh_protocol::names::NameError::Mailbox {
            name: String::from_utf8_lossy(bytes).into_owned(),
            reason: "not UTF-8",
        })
    })
}

/// A stored name as an IMAP mailbox, in modified UTF-7; `None` for one IMAP cannot carry (the
/// store's names are validated, so none should be).
fn imap_mailbox(name: &str) -> Option<ImapMailbox<'static>> {
    ImapMailbox::try_from(utf7::encode(name)).ok()
}

fn istring(text: &str) -> IString<'static> {
    IString::try_from(text.to_string()).expect("a valid string")
}

fn atom(text: &'static str) -> imap_codec::imap_types::core::Atom<'static> {
    imap_codec::imap_types::core::Atom::try_from(text).expect("a valid atom")
}

fn separator() -> QuotedChar {
    QuotedChar::try_from(SEPARATOR).expect("a valid separator")
}

fn clamp(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// RFC 3501 6.3.8's wildcards: `*` matches anything, `%` anything but the separator. INBOX
/// matches in any case.
pub fn list_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((b'%', rest)) => {
                let stop = n.iter().position(|&b| b == SEPARATOR as u8).unwrap_or(n.len());
                (0..=stop).any(|i| go(rest, &n[i..]))
            }
            Some((&c, rest)) => n.first() == Some(&c) && go(rest, &n[1..]),
        }
    }
    let folded;
    let pattern =
        if pattern.len() >= 5 && pattern[..5].eq_ignore_ascii_case("INBOX") && name.starts_with("INBOX") {
            folded = format!("INBOX{}", &pattern[5..]);
            folded.as_str()
        } else {
            pattern
        };
    go(pattern.as_bytes(), name.as_bytes())
}

impl ImapContext {
    /// The capabilities advertised: only what this server implements.
    pub fn capabilities(&self, conn: &Connection, state: &State) -> Vec1<Capability<'static>> {
        let mut caps: Vec<Capability<'static>> = vec![
            Capability::Imap4Rev1,
            // RFC 9051, turned on by ENABLE IMAP4rev2 (what of it is done: README).
            Capability::from(atom("IMAP4rev2")),
            Capability::LiteralPlus,
            Capability::Id,
            Capability::Enable,
        ];
        caps.push(Capability::Namespace);
        caps.push(Capability::Unselect);
        caps.push(Capability::UidPlus);
        caps.push(Capability::Move);
        caps.push(Capability::Idle);
        caps.push(Capability::CondStore);
        caps.push(Capability::QResync);
        caps.push(Capability::ListExtended);
        caps.push(Capability::from(atom("LIST-STATUS")));
        caps.push(Capability::from(atom("SPECIAL-USE")));
        caps.push(Capability::from(atom("CREATE-SPECIAL-USE")));
        caps.push(Capability::from(atom("ESEARCH")));
        caps.push(Capability::from(atom("OBJECTID")));
        caps.push(Capability::Metadata);
        caps.push(Capability::Binary);
        if self.directing.borrow().mode == Direct::Referral {
            caps.push(Capability::LoginReferrals);
        }
        if state.user().is_none() {
            if self.tls.is_some() && !conn.is_tls() {
                caps.push(Capability::StartTls);
            }
            if self.tls_options.password_allowed(conn.is_tls()) {
                caps.push(Capability::Auth(AuthMechanism::Plain));
                caps.push(Capability::SaslIr);
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        Vec1::<Capability<'static>>::try_from(caps).expect("at least IMAP4rev1")
    }
}
