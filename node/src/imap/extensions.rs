//! Commands of the extensions imap-codec has no grammar for, parsed with nom (the parser
//! combinators imap-codec itself is written with): LIST-EXTENDED (RFC 5258) with LIST-STATUS
//! (RFC 5819) and SPECIAL-USE's options (RFC 6154), CREATE-SPECIAL-USE's `CREATE ... (USE (...))`
//! (RFC 6154 3), and ESEARCH's `SEARCH RETURN (...)` (RFC
//! 4731), whose search keys are then imap-codec's own: the command is decoded again without the
//! `RETURN (...)`; OBJECTID's (RFC 8474) `STATUS ... (MAILBOXID)` and FETCH of `EMAILID` and
//! `THREADID` (the FETCH decoded again by imap-codec without those two items); and RFC 5464's
//! GETMETADATA with its options where the RFC's examples put them, which imap-codec decodes
//! once they are moved where the RFC's ABNF puts them.
//!
//! The [`super::protocol::Machine`] tries this grammar only on a command imap-codec refused, so
//! every command imap-codec knows keeps its decoding; what this module answers is a complete
//! command or nothing (the client then gets the usual `BAD`).

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::imap_types::IntoStatic;
use imap_codec::CommandCodec;
use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take, take_while1};
use nom::character::complete::{char, digit1};
use nom::combinator::{all_consuming, map, map_res, opt, recognize, value};
use nom::multi::separated_list1;
use nom::sequence::{delimited, pair, preceded, terminated, tuple};
use nom::IResult;

use super::esearch::SearchReturn;

/// A command of an extension imap-codec does not parse.
#[derive(Clone, Debug, PartialEq)]
pub enum ExtendedCommand {
    List(ListCommand),
    /// `[UID] SEARCH RETURN (...) ...`: `command` is the SEARCH without its `RETURN (...)`.
    Search {
        returns: SearchReturn,
        command: Command<'static>,
    },
    /// STATUS with RFC 8474's MAILBOXID among its items (RFC 3501's items in `items`).
    Status {
        mailbox: String,
        items: Vec<StatusDataItemName>,
        mailbox_id: bool,
    },
    /// CREATE-SPECIAL-USE's (RFC 6154 3) `CREATE mailbox (USE (\Sent ...))`: the mailbox as
    /// sent, the uses' attributes as written, without their backslash.
    Create {
        mailbox: String,
        uses: Vec<String>,
    },
    /// `[UID] FETCH` asking for EMAILID or THREADID: `command` is the FETCH without them (with
    /// `UID` in their place when nothing else was asked).
    Fetch {
        email_id: bool,
        thread_id: bool,
        command: Command<'static>,
    },
}

/// RFC 5258's LIST: selection options, a reference, one or more patterns, return options.
/// RFC 3501's `LIST reference pattern` is the same with no options and one pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCommand {
    pub selection: ListSelection,
    pub reference: String,
    pub patterns: Vec<String>,
    pub returns: ListReturn,
}

/// Which names a LIST chooses (RFC 5258 3.1, RFC 6154 5.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListSelection {
    /// `SUBSCRIBED`: the subscribed names, existing or not.
    pub subscribed: bool,
    /// `RECURSIVEMATCH`: also a name whose inferior meets the other options (`CHILDINFO`).
    pub recursive_match: bool,
    /// `SPECIAL-USE`: only mailboxes with a special use.
    pub special_use: bool,
}

/// What a LIST tells of each name (RFC 5258 3.2, RFC 5819, RFC 6154 5.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReturn {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    /// `STATUS (...)`: a STATUS answer after each selectable mailbox listed.
    pub status: Option<Vec<StatusDataItemName>>,
}

/// The tag and command of a whole message (line and literals), or `None` when it is not one
/// this module knows.
pub fn parse(message: &[u8]) -> Option<(String, ExtendedCommand)> {
    if let Ok((rest, (tag, (uid, returns)))) =
        pair(terminated(command_tag, char(' ')), search_return)(message)
    {
        return search(tag, uid, returns, rest);
    }
    if let Ok((rest, (tag, uid))) = pair(
        terminated(command_tag, char(' ')),
        terminated(
            map(opt(tag_no_case("UID ")), |u| u.is_some()),
            tag_no_case("FETCH "),
        ),
    )(message)
    {
        return fetch(tag, uid, rest);
    }
    if let Ok((_, (tag, command))) = all_consuming(terminated(
        pair(terminated(command_tag, char(' ')), status_command),
        tag("\r\n"),
    ))(message)
    {
        return Some((tag, command));
    }
    if let Ok((_, (tag, command))) = all_consuming(terminated(
        pair(terminated(command_tag, char(' ')), create_special_use),
        tag("\r\n"),
    ))(message)
    {
        return Some((tag, command));
    }
    let (_, parsed) = all_consuming(terminated(
        pair(terminated(command_tag, char(' ')), list_command),
        tag("\r\n"),
    ))(message)
    .ok()?;
    let (tag, list) = parsed;
    Some((tag, ExtendedCommand::List(list)))
}

/// RFC 5464's GETMETADATA in the order of its examples, options after the mailbox
/// (`GETMETADATA INBOX (MAXSIZE 1024) (/shared/comment)`), rewritten to the order of its ABNF,
/// options first, which imap-codec decodes (the two disagree: RFC 5464 erratum 3280; clients
/// send either). `None` when `message` is not a GETMETADATA with options after the mailbox.
pub fn getmetadata_in_example_order(message: &[u8]) -> Option<Vec<u8>> {
    let options = recognize(delimited(
        char('('),
        take_while1(|b| b != b'(' && b != b')' && b != b'{' && b != b'\r' && b != b'\n'),
        char(')'),
    ));
    /// The tag, the mailbox and the options, as they came.
    type Parts<'a> = (&'a [u8], &'a [u8], &'a [u8]);
    let parsed: IResult<&[u8], Parts> = tuple((
        terminated(recognize(command_tag), tag_no_case(" GETMETADATA ")),
        terminated(recognize(astring), char(' ')),
        terminated(options, char(' ')),
    ))(message);
    let (rest, (tag, mailbox, options)) = parsed.ok()?;
    let mut plain = Vec::with_capacity(message.len());
    for part in [tag, b" GETMETADATA ", options, b" ", mailbox, b" ", rest] {
        plain.extend_from_slice(part);
    }
    Some(plain)
}

/// The SEARCH after its `RETURN (...)`, decoded by imap-codec as `tag [UID ]SEARCH rest`.
fn search(tag: String, uid: bool, returns: SearchReturn, rest: &[u8]) -> Option<(String, ExtendedCommand)> {
    let mut plain = format!("{tag} {}SEARCH ", if uid { "UID " } else { "" }).into_bytes();
    plain.extend_from_slice(rest);
    let (remaining, command) = CommandCodec::default().decode(&plain).ok()?;
    if !remaining.is_empty() || !matches!(command.body, CommandBody::Search { .. }) {
        return None;
    }
    let command = command.into_static();
    Some((tag, ExtendedCommand::Search { returns, command }))
}

/// `["UID" SP] "SEARCH" SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")" SP`
/// (RFC 4731 3.1); SAVE (RFC 5182) is not offered, so it fails the command.
fn search_return(input: &[u8]) -> IResult<&[u8], (bool, SearchReturn)> {
    let option = alt((
        value(0, tag_no_case("MIN")),
        value(1, tag_no_case("MAX")),
        value(2, tag_no_case("ALL")),
        value(3, tag_no_case("COUNT")),
    ));
    let (input, uid) = map(opt(tag_no_case("UID ")), |u| u.is_some())(input)?;
    let (input, options) = delimited(
        tag_no_case("SEARCH RETURN ("),
        opt(separated_list1(char(' '), option)),
        tag(") "),
    )(input)?;
    let options = options.unwrap_or_default();
    let returns = SearchReturn {
        min: options.contains(&0),
        max: options.contains(&1),
        // `RETURN ()` is `RETURN (ALL)`.
        all: options.contains(&2) || options.is_empty(),
        count: options.contains(&3),
    };
    Ok((input, (uid, returns)))
}

/// `"CREATE" SP mailbox SP "(" "USE" SP "(" [use-attr *(SP use-attr)] ")" ")"` (RFC 6154 3
/// with RFC 4466's create-params; USE is the only parameter this server knows).
fn create_special_use(input: &[u8]) -> IResult<&[u8], ExtendedCommand> {
    let (input, mailbox) = preceded(tag_no_case("CREATE "), astring)(input)?;
    let use_attr = map_res(preceded(char('\\'), take_while1(is_atom_char)), text);
    let (input, uses) = delimited(
        tag_no_case(" (USE ("),
        opt(separated_list1(char(' '), use_attr)),
        tag("))"),
    )(input)?;
    let uses = uses.unwrap_or_default();
    Ok((input, ExtendedCommand::Create { mailbox, uses }))
}

/// `"STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"` with MAILBOXID (RFC 8474 4.2).
fn status_command(input: &[u8]) -> IResult<&[u8], ExtendedCommand> {
    let (input, mailbox) = preceded(tag_no_case("STATUS "), astring)(input)?;
    let item = alt((map(status_item, Some), value(None, tag_no_case("MAILBOXID"))));
    let (input, all) = preceded(
        char(' '),
        delimited(char('('), separated_list1(char(' '), item), char(')')),
    )(input)?;
    let mailbox_id = all.iter().any(Option::is_none);
    let items = all.into_iter().flatten().collect();
    let mailbox = if mailbox.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_string()
    } else {
        mailbox
    };
    Ok((
        input,
        ExtendedCommand::Status {
            mailbox,
            items,
            mailbox_id,
        },
    ))
}

/// `sequence-set SP ("(" items ")" / item) rest`: EMAILID and THREADID taken out of the items,
/// the rest decoded by imap-codec as `tag [UID ]FETCH sequence-set (items) rest`.
fn fetch(tag: String, uid: bool, input: &[u8]) -> Option<(String, ExtendedCommand)> {
    let set: IResult<&[u8], &[u8]> = terminated(take_while1(|b| b != b' '), char(' '))(input);
    let (input, set) = set.ok()?;
    let (rest, items): (&[u8], Vec<&[u8]>) = if input.first() == Some(&b'(') {
        let end = closing_paren(input)?;
        (&input[end + 1..], top_level_items(&input[1..end])?)
    } else {
        let end = input.iter().position(|&b| b == b' ' || b == b'\r')?;
        (&input[end..], vec![&input[..end]])
    };
    let is = |item: &[u8], name: &str| item.eq_ignore_ascii_case(name.as_bytes());
    let email_id = items.iter().any(|i| is(i, "EMAILID"));
    let thread_id = items.iter().any(|i| is(i, "THREADID"));
    if !email_id && !thread_id {
        return None;
    }
    let mut kept: Vec<&[u8]> = items
        .into_iter()
        .filter(|i| !is(i, "EMAILID") && !is(i, "THREADID"))
        .collect();
    if kept.is_empty() {
        // FETCH needs an item; UID is the one any answer may carry anyway.
        kept.push(b"UID");
    }
    let mut plain = format!("{tag} {}FETCH ", if uid { "UID " } else { "" }).into_bytes();
    plain.extend_from_slice(set);
    plain.extend_from_slice(b" (");
    plain.extend_from_slice(&kept.join(&b' '));
    plain.push(b')');
    plain.extend_from_slice(rest);
    let (remaining, command) = CommandCodec::default().decode(&plain).ok()?;
    if !remaining.is_empty() || !matches!(command.body, CommandBody::Fetch { .. }) {
        return None;
    }
    let command = command.into_static();
    Some((
        tag,
        ExtendedCommand::Fetch {
            email_id,
            thread_id,
            command,
        },
    ))
}

/// Where the parenthesis that opens `input` closes, skipping brackets and quoted strings.
fn closing_paren(input: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for (at, &b) in input.iter().enumerate() {
        if quoted {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'(' | b'[' => depth += 1,
            b')' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at);
                }
            }
            b'{' | b'\r' | b'\n' => return None,
            _ => {}
        }
    }
    None
}

/// The items of a FETCH list split at the spaces outside brackets and parentheses
/// (`BODY[HEADER.FIELDS (A B)]<0.10>` is one item).
fn top_level_items(list: &[u8]) -> Option<Vec<&[u8]>> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut start = 0;
    for (at, &b) in list.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'(' | b'[' if !quoted => depth += 1,
            b')' | b']' if !quoted => depth = depth.checked_sub(1)?,
            b' ' if !quoted && depth == 0 => {
                items.push(&list[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    (!items.iter().any(|i| i.is_empty())).then_some(items)
}

/// RFC 3501's `tag`: `1*<any ASTRING-CHAR except "+">`.
fn command_tag(input: &[u8]) -> IResult<&[u8], String> {
    map_res(take_while1(|b| is_astring_char(b) && b != b'+'), text)(input)
}

/// `"LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]`.
fn list_command(input: &[u8]) -> IResult<&[u8], ListCommand> {
    let (input, _) = tag_no_case("LIST ")(input)?;
    let (input, selection) = opt(terminated(selection_options, char(' ')))(input)?;
    let (input, reference) = terminated(astring, char(' '))(input)?;
    let (input, patterns) = alt((
        delimited(char('('), separated_list1(char(' '), list_mailbox), char(')')),
        map(list_mailbox, |one| vec![one]),
    ))(input)?;
    let (input, returns) = opt(preceded(tag_no_case(" RETURN "), return_options))(input)?;
    let selection = selection.unwrap_or_default();
    let mut returns = returns.unwrap_or_default();
    // RFC 5258 3.1: RECURSIVEMATCH alone is an error (this server has it for SUBSCRIBED
    // only); SUBSCRIBED implies its return option.
    if selection.recursive_match && !selection.subscribed {
        return Err(nom::Err::Failure(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Verify,
        )));
    }
    if selection.subscribed {
        returns.subscribed = true;
    }
    // RFC 6154 5.1: the selection option implies the return option.
    if selection.special_use {
        returns.special_use = true;
    }
    let reference = if reference.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_string()
    } else {
        reference
    };
    Ok((
        input,
        ListCommand {
            selection,
            reference,
            patterns,
            returns,
        },
    ))
}

#[derive(Clone, Copy)]
enum SelectOption {
    Subscribed,
    Remote,
    RecursiveMatch,
    SpecialUse,
}

/// `"(" [list-select-option *(SP list-select-option)] ")"`; an option this server does not
/// know fails the command (RFC 5258 3.1: BAD).
fn selection_options(input: &[u8]) -> IResult<&[u8], ListSelection> {
    let option = alt((
        value(SelectOption::Subscribed, tag_no_case("SUBSCRIBED")),
        value(SelectOption::Remote, tag_no_case("REMOTE")),
        value(SelectOption::RecursiveMatch, tag_no_case("RECURSIVEMATCH")),
        value(SelectOption::SpecialUse, tag_no_case("SPECIAL-USE")),
    ));
    map(
        delimited(char('('), opt(separated_list1(char(' '), option)), char(')')),
        |options| {
            let mut selection = ListSelection::default();
            for option in options.unwrap_or_default() {
                match option {
                    SelectOption::Subscribed => selection.subscribed = true,
                    // Every mailbox of this server is local to the cluster: nothing to add.
                    SelectOption::Remote => {}
                    SelectOption::RecursiveMatch => selection.recursive_match = true,
                    SelectOption::SpecialUse => selection.special_use = true,
                }
            }
            selection
        },
    )(input)
}

#[derive(Clone)]
enum ReturnOption {
    Subscribed,
    Children,
    SpecialUse,
    Status(Vec<StatusDataItemName>),
}

/// `"(" [return-option *(SP return-option)] ")"`.
fn return_options(input: &[u8]) -> IResult<&[u8], ListReturn> {
    let option = alt((
        value(ReturnOption::Subscribed, tag_no_case("SUBSCRIBED")),
        value(ReturnOption::Children, tag_no_case("CHILDREN")),
        value(ReturnOption::SpecialUse, tag_no_case("SPECIAL-USE")),
        map(
            preceded(
                tag_no_case("STATUS "),
                delimited(char('('), separated_list1(char(' '), status_item), char(')')),
            ),
            ReturnOption::Status,
        ),
    ));
    map(
        delimited(char('('), opt(separated_list1(char(' '), option)), char(')')),
        |options| {
            let mut returns = ListReturn::default();
            for option in options.unwrap_or_default() {
                match option {
                    ReturnOption::Subscribed => returns.subscribed = true,
                    ReturnOption::Children => returns.children = true,
                    ReturnOption::SpecialUse => returns.special_use = true,
                    ReturnOption::Status(items) => returns.status = Some(items),
                }
            }
            returns
        },
    )(input)
}

/// RFC 3501's `status-att`, with CONDSTORE's HIGHESTMODSEQ (RFC 7162).
fn status_item(input: &[u8]) -> IResult<&[u8], StatusDataItemName> {
    alt((
        value(StatusDataItemName::Messages, tag_no_case("MESSAGES")),
        value(StatusDataItemName::Recent, tag_no_case("RECENT")),
        value(StatusDataItemName::UidNext, tag_no_case("UIDNEXT")),
        value(StatusDataItemName::UidValidity, tag_no_case("UIDVALIDITY")),
        value(StatusDataItemName::Unseen, tag_no_case("UNSEEN")),
        value(StatusDataItemName::HighestModSeq, tag_no_case("HIGHESTMODSEQ")),
    ))(input)
}

/// `astring = 1*ASTRING-CHAR / string`.
fn astring(input: &[u8]) -> IResult<&[u8], String> {
    alt((map_res(take_while1(is_astring_char), text), string))(input)
}

/// `list-mailbox = 1*list-char / string`: an atom that may hold `%`, `*` and `]`.
fn list_mailbox(input: &[u8]) -> IResult<&[u8], String> {
    alt((
        map_res(
            take_while1(|b| is_atom_char(b) || matches!(b, b'%' | b'*' | b']')),
            text,
        ),
        string,
    ))(input)
}

/// `string = quoted / literal`.
fn string(input: &[u8]) -> IResult<&[u8], String> {
    alt((quoted, literal))(input)
}

/// `DQUOTE *QUOTED-CHAR DQUOTE`, `\` escaping `"` and `\`.
fn quoted(input: &[u8]) -> IResult<&[u8], String> {
    let (mut rest, _) = char('"')(input)?;
    let mut bytes = Vec::new();
    loop {
        match rest.split_first() {
            Some((b'"', after)) => {
                let text = String::from_utf8(bytes).map_err(|_| fail(rest))?;
                return Ok((after, text));
            }
            Some((b'\\', after)) => match after.split_first() {
                Some((&c @ (b'"' | b'\\'), after)) => {
                    bytes.push(c);
                    rest = after;
                }
                _ => return Err(fail(rest)),
            },
            Some((&c, after)) if c != b'\r' && c != b'\n' && c != 0 => {
                bytes.push(c);
                rest = after;
            }
            _ => return Err(fail(rest)),
        }
    }
}

/// `"{" number ["+"] "}" CRLF *CHAR8` (LITERAL+'s form too: the machine has read the bytes).
fn literal(input: &[u8]) -> IResult<&[u8], String> {
    let (input, length) = delimited(
        char('{'),
        terminated(
            map_res(map_res(digit1, std::str::from_utf8), str::parse::<usize>),
            opt(char('+')),
        ),
        tag("}\r\n"),
    )(input)?;
    map_res(take(length), text)(input)
}

fn text(bytes: &[u8]) -> Result<String, std::string::FromUtf8Error> {
    String::from_utf8(bytes.to_vec())
}

fn fail(input: &[u8]) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Char))
}

/// RFC 3501's ATOM-CHAR: any CHAR but atom-specials (`(){ `, CTL, `%*`, `"\`, `]`).
fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever follows a command name this grammar knows, parsing ends without a panic.
        #[test]
        fn arbitrary_arguments_never_panic(
            name in prop::sample::select(vec!["LIST ", "UID FETCH ", "FETCH ", "SEARCH RETURN (", "STATUS "]),
            rest in prop::collection::vec(
                prop::sample::select(b"()[]{}<> \"\\\r\n*%+0123456789AELIMSTUVX".to_vec()),
                0..64,
            ),
        ) {
            let mut message = format!("a {name}").into_bytes();
            message.extend_from_slice(&rest);
            message.extend_from_slice(b"\r\n");
            let _ = parse(&message);
        }
    }

    #[test]
    fn search_return_keeps_imap_codecs_search_keys() {
        let got = parse(b"a1 UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 UNSEEN SUBJECT {3}\r\nabc\r\n");
        let Some((tag, ExtendedCommand::Search { returns, command })) = got else {
            panic!("{got:?}");
        };
        assert_eq!(tag, "a1");
        assert_eq!(
            returns,
            SearchReturn {
                min: true,
                count: true,
                ..Default::default()
            }
        );
        let CommandBody::Search {
            charset,
            criteria,
            uid,
        } = command.body
        else {
            panic!("not a search");
        };
        assert!(uid);
        assert_eq!(charset.map(|c| c.as_ref().to_string()), Some("UTF-8".to_string()));
        assert_eq!(criteria.as_ref().len(), 2);
        let got = parse(b"t search return () all\r\n");
        assert!(
            matches!(&got, Some((_, ExtendedCommand::Search { returns, .. })) if returns.all && !returns.min),
            "{got:?}"
        );
        for bad in [
            "a SEARCH RETURN (SAVE) ALL\r\n",
            "a SEARCH RETURN (MIN) BOGUS\r\n",
            "a SEARCH RETURN (MIN)\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn objectid_items_are_taken_out_and_the_rest_left_to_imap_codec() {
        let got = parse(b"a UID FETCH 1:* (FLAGS EMAILID BODY.PEEK[HEADER.FIELDS (EMAILID X)] THREADID) (CHANGEDSINCE 5)\r\n");
        let Some((
            _,
            ExtendedCommand::Fetch {
                email_id,
                thread_id,
                command,
            },
        )) = got
        else {
            panic!("{got:?}");
        };
        assert!(email_id && thread_id);
        let CommandBody::Fetch {
            macro_or_item_names,
            uid,
            modifiers,
            ..
        } = command.body
        else {
            panic!("not a fetch");
        };
        assert!(uid);
        assert_eq!(modifiers.len(), 1);
        let text = format!("{macro_or_item_names:?}");
        assert!(text.contains("Flags") && text.contains("BodyExt"), "{text}");
        let got = parse(b"a FETCH 2 EMAILID\r\n");
        let Some((
            _,
            ExtendedCommand::Fetch {
                email_id: true,
                thread_id: false,
                command,
            },
        )) = got
        else {
            panic!("{got:?}");
        };
        assert!(format!("{:?}", command.body).contains("Uid"));
        let got = parse(b"s STATUS inbox (MESSAGES MAILBOXID)\r\n");
        assert_eq!(
            got.map(|(_, c)| c),
            Some(ExtendedCommand::Status {
                mailbox: "INBOX".into(),
                items: vec![StatusDataItemName::Messages],
                mailbox_id: true,
            })
        );
        for bad in [
            "a FETCH 1 (FLAGS BOGUS EMAILID)\r\n",
            "a FETCH 1 (FLAGS EMAILID\r\n",
            "a FETCH 1 (FLAGS  EMAILID)\r\n",
            "a STATUS INBOX (MAILBOXID BOGUS)\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn getmetadata_options_after_the_mailbox_move_before_it() {
        let got = getmetadata_in_example_order(
            b"a GETMETADATA \"INBOX\" (MAXSIZE 1024 DEPTH 1) (/shared/comment {3}\r\n/ab)\r\n",
        );
        assert_eq!(
            got.as_deref(),
            Some(&b"a GETMETADATA (MAXSIZE 1024 DEPTH 1) \"INBOX\" (/shared/comment {3}\r\n/ab)\r\n"[..])
        );
        let plain = got.unwrap();
        let (_, command) = CommandCodec::default().decode(&plain).unwrap();
        assert!(matches!(command.body, CommandBody::GetMetadata { ref options, .. } if options.len() == 2));
        for other in [
            "a GETMETADATA INBOX /shared/comment\r\n",
            "a GETMETADATA (DEPTH 1) INBOX /shared\r\n",
            "a SETMETADATA INBOX (/shared/comment \"x\") x\r\n",
        ] {
            assert_eq!(getmetadata_in_example_order(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn create_takes_rfc_6154s_use_parameter() {
        let got = parse(b"a CREATE \"My Sent\" (USE (\\Sent \\Archive))\r\n");
        assert_eq!(
            got,
            Some((
                "a".to_string(),
                ExtendedCommand::Create {
                    mailbox: "My Sent".into(),
                    uses: vec!["Sent".into(), "Archive".into()],
                }
            ))
        );
        let got = parse(b"a create Drafts (use ())\r\n");
        assert!(matches!(got, Some((_, ExtendedCommand::Create { uses, .. })) if uses.is_empty()));
        for bad in [
            "a CREATE Sent (USE (Sent))\r\n",
            "a CREATE Sent (USE (\\Sent)\r\n",
            "a CREATE Sent (OTHER (\\Sent))\r\n",
            "a CREATE Sent (USE (\\Sent)) x\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    fn list(line: &str) -> ListCommand {
        match parse(line.as_bytes()) {
            Some((_, ExtendedCommand::List(list))) => list,
            other => panic!("{line:?} is not a LIST: {other:?}"),
        }
    }

    #[test]
    fn the_rfc_5258_forms_parse_with_their_options_and_patterns() {
        let got =
            list("a1 LIST (SUBSCRIBED REMOTE RECURSIVEMATCH) \"\" (\"INBOX\" Sent%) RETURN (CHILDREN)\r\n");
        assert_eq!(
            got,
            ListCommand {
                selection: ListSelection {
                    subscribed: true,
                    recursive_match: true,
                    special_use: false,
                },
                reference: String::new(),
                patterns: vec!["INBOX".into(), "Sent%".into()],
                returns: ListReturn {
                    subscribed: true,
                    children: true,
                    special_use: false,
                    status: None,
                },
            }
        );
        let got = list("t list () inbox * return (status (MESSAGES uidnext HIGHESTMODSEQ) subscribed)\r\n");
        assert_eq!(got.reference, "INBOX");
        assert_eq!(got.patterns, ["*"]);
        assert!(got.returns.subscribed && !got.selection.subscribed);
        assert_eq!(
            got.returns.status,
            Some(vec![
                StatusDataItemName::Messages,
                StatusDataItemName::UidNext,
                StatusDataItemName::HighestModSeq
            ])
        );
        let got = list("a LIST (SPECIAL-USE) \"\" %\r\n");
        assert!(got.selection.special_use && got.returns.special_use);
    }

    #[test]
    fn quoted_and_literal_names_and_escapes_are_read_whole() {
        let got = list("a LIST {4}\r\nWork ({5+}\r\nA b c \"x\\\"y\") RETURN ()\r\n");
        assert_eq!(got.reference, "Work");
        assert_eq!(got.patterns, ["A b c", "x\"y"]);
        assert_eq!(got.returns, ListReturn::default());
    }

    #[test]
    fn what_rfc_5258_calls_an_error_is_not_a_command() {
        for line in [
            // RECURSIVEMATCH needs SUBSCRIBED.
            "a LIST (RECURSIVEMATCH) \"\" *\r\n",
            "a LIST (SPECIAL-USE RECURSIVEMATCH) \"\" *\r\n",
            // Unknown options, an empty pattern list, trailing bytes, no CRLF.
            "a LIST (BOGUS) \"\" *\r\n",
            "a LIST \"\" * RETURN (BOGUS)\r\n",
            "a LIST \"\" ()\r\n",
            "a LIST \"\" * extra\r\n",
            "a LIST \"\" *",
            "+a LIST \"\" *\r\n",
            // A literal longer than what follows it.
            "a LIST {9}\r\nab *\r\n",
            "a LIST \"\" (\"unterminated)\r\n",
        ] {
            assert_eq!(parse(line.as_bytes()), None, "{line:?}");
        }
    }
}
