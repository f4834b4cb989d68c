//! One ManageSieve connection: reads bytes into the [`Machine`], carries out each command line
//! (logins through [`crate::auth`], scripts through the Directory actor, STARTTLS), and writes
//! the responses.
//!
//! Responses are gathered while the machine has lines to work through and written when it has
//! none (or when they pile up past [`FLUSH_AT`]), so a client that sends several commands at once
//! gets every answer in order. Scripts are written with the same Directory messages as
//! `mailmesh sieve put|activate`, so they replicate as versions and deleted markers like every
//! other sieve change; a script is compiled before it is stored, and one that does not compile
//! is refused with the compiler's line and reason, nothing stored.

use std::rc::Rc;
use std::time::Duration;

use mailmesh_actors::directory::{
    DeleteScript, GetScript, ListMailboxes, ListScripts, PutScript, RenameScript, SetActiveScript,
};
use mailmesh_actors::MailError;
use mailmesh_protocol::names::validate_script_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::protocol::{
    encode_string, parse_command, parse_sasl_response, Code, Command, Machine, Parsed, Response, SaslResponse,
};
use super::SieveContext;
use crate::auth::sasl::{self, Credentials, Login, LoginStep};
use crate::auth::AuthError;
use crate::client_tls::Connection;
use crate::listener::Peer;
use crate::sieve;

/// How long a client may stay silent (RFC 5804 does not say; IMAP's autologout is 30 minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Read buffer per connection.
const READ_CHUNK: usize = 16 * 1024;
/// The longest string a client may send before it has logged in: PLAIN's and LOGIN's answers
/// are a few hundred bytes, so a connection that has not logged in holds little memory.
pub const MAX_LITERAL_BEFORE_LOGIN: usize = 8 * 1024;
/// Responses gathered beyond this are written before the next command is carried out, so a
/// client pipelining GETSCRIPTs cannot make the server hold them all.
const FLUSH_AT: usize = 64 * 1024;

/// Where a connection is in logging in.
enum Stage {
    Anonymous,
    /// PLAIN sent its empty challenge and waits for the client's response.
    Plain,
    /// LOGIN asked for the user name or the password.
    Login(Login),
    Authenticated(String),
}

/// What the loop does after a command.
enum Flow {
    Continue,
    StartTls,
    Close,
}

pub async fn serve(mut conn: Connection, peer: Peer, ctx: Rc<SieveContext>) {
    let mut machine = Machine::new(MAX_LITERAL_BEFORE_LOGIN);
    let mut out = Vec::with_capacity(512);
    let mut state = Stage::Anonymous;
    ctx.capabilities(&conn, &state).encode(&mut out);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while let Some(parsed) = machine.next_line() {
            let flow = match parsed {
                Parsed::Invalid(response) => {
                    if matches!(state, Stage::Plain | Stage::Login(_)) {
                        state = Stage::Anonymous;
                    }
                    response.encode(&mut out);
                    Flow::Continue
                }
                Parsed::Line(tokens) => match std::mem::replace(&mut state, Stage::Anonymous) {
                    pending @ (Stage::Plain | Stage::Login(_)) => {
                        let response = match parse_sasl_response(tokens) {
                            Ok(SaslResponse::Cancel) => Err(Response::no("authentication cancelled")),
                            Ok(SaslResponse::Data(data)) => Ok(data),
                            Err(response) => Err(response),
                        };
                        state = match response {
                            Ok(data) => sasl_step(&ctx, &peer, pending, Some(&data), &mut out).await,
                            Err(response) => {
                                response.encode(&mut out);
                                Stage::Anonymous
                            }
                        };
                        Flow::Continue
                    }
                    current => {
                        state = current;
                        match parse_command(tokens) {
                            Ok(command) => {
                                command_flow(&ctx, &peer, &conn, &mut state, command, &mut out).await
                            }
                            Err(response) => {
                                response.encode(&mut out);
                                Flow::Continue
                            }
                        }
                    }
                },
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
                    // RFC 5804 2.2: the capabilities again, as they are under TLS.
                    ctx.capabilities(&conn, &state).encode(&mut out);
                }
            }
            machine.set_max_literal(match state {
                Stage::Authenticated(_) => ctx.max_script_bytes,
                _ => MAX_LITERAL_BEFORE_LOGIN,
            });
            if out.len() >= FLUSH_AT && write(&mut conn, &mut out).await.is_err() {
                return;
            }
        }
        if !out.is_empty() && write(&mut conn, &mut out).await.is_err() {
            return;
        }
        let read = match tokio::time::timeout(IDLE_TIMEOUT, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                Response::bye("idle too long; closing").encode(&mut out);
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

async fn command_flow(
    ctx: &SieveContext,
    peer: &Peer,
    conn: &Connection,
    state: &mut Stage,
    command: Command,
    out: &mut Vec<u8>,
) -> Flow {
    // Commands any connection may send.
    match command {
        Command::Capability => {
            ctx.capabilities(conn, state).encode(out);
            return Flow::Continue;
        }
        Command::Logout => {
            Response::ok_text("Logout completed").encode(out);
            return Flow::Close;
        }
        Command::Noop(tag) => {
            let response = Response::ok_text("NOOP completed");
            match tag {
                Some(tag) => response.with_code(Code::Tag(tag)),
                None => response,
            }
            .encode(out);
            return Flow::Continue;
        }
        Command::StartTls => {
            let response = if conn.is_tls() {
                Response::no("TLS is already active")
            } else if ctx.tls.is_none() {
                Response::no("STARTTLS is not offered here (no certificate configured)")
            } else if matches!(state, Stage::Authenticated(_)) {
                Response::no("STARTTLS only before AUTHENTICATE")
            } else {
                Response::ok_text("Begin TLS negotiation now").encode(out);
                return Flow::StartTls;
            };
            response.encode(out);
            return Flow::Continue;
        }
        Command::Authenticate { mechanism, initial } => {
            if matches!(state, Stage::Authenticated(_)) {
                Response::no("already authenticated").encode(out);
                return Flow::Continue;
            }
            if !ctx.tls_options.password_allowed(conn.is_tls()) {
                Response::no("authentication needs TLS here: STARTTLS first")
                    .with_code(Code::EncryptNeeded)
                    .encode(out);
                return Flow::Continue;
            }
            *state = match mechanism.as_str() {
                "PLAIN" => sasl_step(ctx, peer, Stage::Plain, initial.as_deref(), out).await,
                "LOGIN" => {
                    let initial = match initial.as_deref().map(sasl::decode_base64).transpose() {
                        Ok(initial) => initial,
                        Err(e) => {
                            Response::no(e.to_string()).encode(out);
                            return Flow::Continue;
                        }
                    };
                    match Login::start(initial.as_deref()) {
                        Ok((login, step)) => login_step(ctx, peer, login, Ok(step), out).await,
                        Err(e) => finish_login(ctx, peer, Err(e), out).await,
                    }
                }
                other => {
                    Response::no(format!("mechanism {other} is not supported (PLAIN, LOGIN)")).encode(out);
                    Stage::Anonymous
                }
            };
            return Flow::Continue;
        }
        _ => {}
    }
    let Stage::Authenticated(user) = state else {
        Response::no("authenticate first").encode(out);
        return Flow::Continue;
    };
    if let Command::Unauthenticate = command {
        *state = Stage::Anonymous;
        Response::ok().encode(out);
        return Flow::Continue;
    }
    let user = user.clone();
    let response = match script_command(ctx, &user, command, out).await {
        Ok(response) => response,
        Err(response) => response,
    };
    response.encode(out);
    Flow::Continue
}

/// One step of PLAIN or LOGIN: `data` is the client's (base64) response, `None` when
/// AUTHENTICATE PLAIN came without an initial response. Writes the challenge or the outcome;
/// answers the state the connection is in next.
async fn sasl_step(
    ctx: &SieveContext,
    peer: &Peer,
    pending: Stage,
    data: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Stage {
    let decoded = match data.map(sasl::decode_base64).transpose() {
        Ok(decoded) => decoded,
        Err(e) => {
            Response::no(e.to_string()).encode(out);
            return Stage::Anonymous;
        }
    };
    match (pending, decoded) {
        (Stage::Plain, None) => {
            // RFC 5804 2.1: an empty challenge asks for the response.
            encode_string(b"", out);
            out.extend_from_slice(b"\r\n");
            Stage::Plain
        }
        (Stage::Plain, Some(message)) => finish_login(ctx, peer, sasl::plain(&message), out).await,
        (Stage::Login(mut login), Some(answer)) => {
            let step = login.answer(&answer);
            login_step(ctx, peer, login, step, out).await
        }
        (Stage::Login(_), None) => {
            Response::no("LOGIN expects an answer").encode(out);
            Stage::Anonymous
        }
        (other, _) => other,
    }
}

/// LOGIN's next challenge, or its outcome.
async fn login_step(
    ctx: &SieveContext,
    peer: &Peer,
    login: Login,
    step: Result<LoginStep, AuthError>,
    out: &mut Vec<u8>,
) -> Stage {
    match step {
        Ok(LoginStep::Challenge(text)) => {
            encode_string(sasl::encode_base64(text.as_bytes()).as_bytes(), out);
            out.extend_from_slice(b"\r\n");
            Stage::Login(login)
        }
        Ok(LoginStep::Done(credentials)) => finish_login(ctx, peer, Ok(credentials), out).await,
        Err(e) => finish_login(ctx, peer, Err(e), out).await,
    }
}

/// Checks the credentials a mechanism gave (waiting out the address's failure delay first, in
/// [`crate::auth::Authenticator::verify`]) and answers.
async fn finish_login(
    ctx: &SieveContext,
    peer: &Peer,
    credentials: Result<Credentials, AuthError>,
    out: &mut Vec<u8>,
) -> Stage {
    let outcome = match credentials {
        Ok(credentials) => {
            ctx.auth
                .verify(peer.ip, &credentials.user, &credentials.password)
                .await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(user) => {
            info!(peer = %peer.display, %user, "managesieve login");
            Response::ok_text("Logged in").encode(out);
            Stage::Authenticated(user)
        }
        Err(AuthError::Failed) => {
            info!(peer = %peer.display, "managesieve login failed");
            Response::no("authentication failed").encode(out);
            Stage::Anonymous
        }
        Err(e @ AuthError::Malformed(_)) => {
            Response::no(e.to_string()).encode(out);
            Stage::Anonymous
        }
    }
}

/// The commands of a logged-in user. GETSCRIPT and LISTSCRIPTS write their data to `out` before
/// the answered OK.
async fn script_command(
    ctx: &SieveContext,
    user: &str,
    command: Command,
    out: &mut Vec<u8>,
) -> Result<Response, Response> {
    let directory = &ctx.directory;
    let user = user.to_string();
    match command {
        Command::HaveSpace { name, size } => {
            check_name(&name)?;
            ctx.check_size(size)?;
            Ok(Response::ok())
        }
        Command::CheckScript { script } => {
            ctx.check_size(script.len() as u64)?;
            let compiled = compile(&script)?;
            warnings(ctx, &user, &compiled, None).await
        }
        Command::PutScript { name, script } => {
            check_name(&name)?;
            ctx.check_size(script.len() as u64)?;
            let compiled = compile(&script)?;
            let answer = warnings(ctx, &user, &compiled, Some(&name)).await?;
            directory
                .send(PutScript {
                    user,
                    name,
                    content: script,
                })
                .await
                .map_err(MailError::from)
                .and_then(|r| r)
                .map_err(refusal)?;
            Ok(answer)
        }
        Command::ListScripts => {
            let scripts = directory
                .send(ListScripts { user })
                .await
                .map_err(MailError::from)
                .and_then(|r| r)
                .map_err(refusal)?;
            for (name, active) in scripts {
                encode_string(name.as_bytes(), out);
                if active {
                    out.extend_from_slice(b" ACTIVE");
                }
                out.extend_from_slice(b"\r\n");
            }
            Ok(Response::ok())
        }
        Command::SetActive { name } => {
            let name = if name.is_empty() {
                None
            } else {
                // The script must still compile: one stored by an older node, or replicated from
                // one, could not; activating it would keep every message in INBOX.
                let script = directory
                    .send(GetScript {
                        user: user.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(MailError::from)
                    .and_then(|r| r)
                    .map_err(refusal)?;
                compile(&script)?;
                Some(name)
            };
            directory
                .send(SetActiveScript { user, name })
                .await
                .map_err(MailError::from)
                .and_then(|r| r)
                .map_err(refusal)?;
            Ok(Response::ok())
        }
        Command::GetScript { name } => {
            let script = directory
                .send(GetScript { user, name })
                .await
                .map_err(MailError::from)
                .and_then(|r| r)
                .map_err(refusal)?;
            // Always a literal: a script has line breaks, and clients expect one.
            out.extend_from_slice(format!("{{{}}}\r\n", script.len()).as_bytes());
            out.extend_from_slice(&script);
            out.extend_from_slice(b"\r\n");
            Ok(Response::ok())
        }
        Command::DeleteScript { name } => {
            directory
                .send(DeleteScript { user, name })
                .await
                .map_err(MailError::from)
                .and_then(|r| r)
                .map_err(|e| match e {
                    MailError::NotAllowed(_) => {
                        Response::no("the active script cannot be deleted; SETACTIVE \"\" first")
                            .with_code(Code::Active)
                    }
                    other => refusal(other),
                })?;
            Ok(Response::ok())
        }
        Command::RenameScript { from, to } => {
            check_name(&to)?;
            directory
                .send(RenameScript { user, from, to })
                .await
                .map_err(MailError::from)
                .and_then(|r| r)
                .map_err(refusal)?;
            Ok(Response::ok())
        }
        // Handled before a login is needed.
        Command::Capability
        | Command::Logout
        | Command::Noop(_)
        | Command::StartTls
        | Command::Unauthenticate
        | Command::Authenticate { .. } => Ok(Response::ok()),
    }
}

fn check_name(name: &str) -> Result<(), Response> {
    validate_script_name(name).map_err(|e| Response::no(e.to_string()))
}

fn compile(script: &[u8]) -> Result<sieve::Script, Response> {
    sieve::compile(script).map_err(|e| Response::no(e.to_string()))
}

/// `OK`, or `OK (WARNINGS)` naming what the script refers to that does not exist now: a
/// `fileinto` mailbox without `:create` (the message would be kept in INBOX) and an `include`d
/// script without `:optional` (a run-time error: kept in INBOX). `name` is the script being
/// stored, which counts as existing.
async fn warnings(
    ctx: &SieveContext,
    user: &str,
    script: &sieve::Script,
    name: Option<&str>,
) -> Result<Response, Response> {
    let targets = script.fileinto_without_create();
    let includes = script.required_includes();
    let mut notes = Vec::new();
    if !targets.is_empty() {
        let mailboxes: Vec<String> = ctx
            .directory
            .send(ListMailboxes {
                user: user.to_string(),
            })
            .await
            .map_err(MailError::from)
            .and_then(|r| r)
            .map_err(refusal)?
            .into_iter()
            .map(|info| info.name)
            .collect();
        for target in targets {
            if !target.eq_ignore_ascii_case("INBOX") && !mailboxes.iter().any(|m| m == target) {
                notes.push(format!(
                    "fileinto {target:?}: no such mailbox, so those messages are kept in INBOX until it exists (or use :create)"
                ));
            }
        }
    }
    if !includes.is_empty() {
        let scripts = ctx
            .directory
            .send(ListScripts {
                user: user.to_string(),
            })
            .await
            .map_err(MailError::from)
            .and_then(|r| r)
            .map_err(refusal)?;
        for include in includes {
            if Some(include) != name && !scripts.iter().any(|(s, _)| s == include) {
                notes.push(format!(
                    "include {include:?}: no such script, so deliveries keep every message in INBOX until it exists (or use :optional)"
                ));
            }
        }
    }
    if notes.is_empty() {
        Ok(Response::ok())
    } else {
        Ok(Response::ok_text(notes.join("; ")).with_code(Code::Warnings))
    }
}

/// The answer to a Directory error.
fn refusal(error: MailError) -> Response {
    let text = error.to_string();
    match error {
        MailError::UnknownScript { .. } => Response::no(text).with_code(Code::NonExistent),
        MailError::ScriptExists { .. } => Response::no(text).with_code(Code::AlreadyExists),
        MailError::ScriptTooLarge { .. } => Response::no(text).with_code(Code::QuotaMaxSize),
        MailError::ShuttingDown | MailError::Store(_) => {
            Response::no(format!("{text}; try again later")).with_code(Code::TryLater)
        }
        _ => Response::no(text),
    }
}

impl SieveContext {
    fn capabilities<'a>(&'a self, conn: &Connection, state: &'a Stage) -> super::protocol::Capabilities<'a> {
        let authenticated = match state {
            Stage::Authenticated(user) => Some(user.as_str()),
            _ => None,
        };
        super::protocol::Capabilities {
            implementation: super::IMPLEMENTATION,
            sasl: if authenticated.is_none() && self.tls_options.password_allowed(conn.is_tls()) {
                super::SASL_MECHANISMS
            } else {
                &[]
            },
            sieve: sieve::SIEVE_EXTENSIONS,
            starttls: self.tls.is_some() && !conn.is_tls() && authenticated.is_none(),
            owner: authenticated,
            unauthenticate: true,
        }
    }

    fn check_size(&self, size: u64) -> Result<(), Response> {
        if size > self.max_script_bytes as u64 {
            return Err(Response::no(format!(
                "a script of {size} bytes is over the limit of {} bytes",
                self.max_script_bytes
            ))
            .with_code(Code::QuotaMaxSize));
        }
        Ok(())
    }
}
