//! RFC 5228 section 8.2's generic grammar, independent of what any command means:
//!
//! ```text
//! commands  = *command
//! command   = identifier arguments (";" / block)
//! arguments = *argument [ test / test-list ]
//! argument  = string-list / number / tag
//! test      = identifier arguments
//! test-list = "(" test *("," test) ")"
//! block     = "{" commands "}"
//! ```
//!
//! `validate` gives the commands and tests their meaning. Nesting is bounded so that a hostile
//! script cannot exhaust the stack.

use super::error::ParseError;
use super::lexer::{Position, Token, TokenKind};
use super::limits::MAX_NESTING;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    Tag {
        name: String,
        at: Position,
    },
    Number {
        value: u64,
        at: Position,
    },
    /// A single string or a bracketed list; `list` says which was written.
    Strings {
        values: Vec<String>,
        list: bool,
        at: Position,
    },
}

impl Argument {
    pub fn at(&self) -> Position {
        match self {
            Self::Tag { at, .. } | Self::Number { at, .. } | Self::Strings { at, .. } => *at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericTest {
    pub name: String,
    pub arguments: Vec<Argument>,
    pub tests: Vec<GenericTest>,
    /// Whether the tests were written as a parenthesised list.
    pub test_list: bool,
    pub at: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericCommand {
    pub name: String,
    pub arguments: Vec<Argument>,
    pub tests: Vec<GenericTest>,
    pub test_list: bool,
    pub block: Option<Vec<GenericCommand>>,
    pub at: Position,
}

pub fn parse(tokens: &[Token]) -> Result<Vec<GenericCommand>, ParseError> {
    let mut parser = Parser { tokens, index: 0 };
    let commands = parser.commands(0)?;
    match parser.peek() {
        None => Ok(commands),
        Some(token) => Err(ParseError::at(token.at, "unexpected '}' without a matching '{'")),
    }
}

struct Parser<'a> {
    tokens: &'a [Token],
    index: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.index)
    }

    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.index);
        self.index += 1;
        token
    }

    fn end_position(&self) -> Position {
        self.tokens
            .last()
            .map_or(Position { line: 1, column: 1 }, |t| t.at)
    }

    fn commands(&mut self, depth: usize) -> Result<Vec<GenericCommand>, ParseError> {
        let mut commands = Vec::new();
        while let Some(token) = self.peek() {
            if token.kind == TokenKind::RightBrace {
                break;
            }
            commands.push(self.command(depth)?);
        }
        Ok(commands)
    }

    fn command(&mut self, depth: usize) -> Result<GenericCommand, ParseError> {
        let token = self.next().cloned().expect("commands() checked a token is there");
        let TokenKind::Identifier(name) = token.kind else {
            return Err(ParseError::at(
                token.at,
                format!("expected a command, found {}", describe(&token.kind)),
            ));
        };
        let (arguments, tests, test_list) = self.arguments(depth)?;
        let block = match self.next().cloned() {
            Some(Token {
                kind: TokenKind::Semicolon,
                ..
            }) => None,
            Some(Token {
                kind: TokenKind::LeftBrace,
                at,
            }) => {
                if depth + 1 > MAX_NESTING {
                    return Err(ParseError::at(
                        at,
                        format!("blocks nested deeper than {MAX_NESTING}"),
                    ));
                }
                let block = self.commands(depth + 1)?;
                match self.next() {
                    Some(Token {
                        kind: TokenKind::RightBrace,
                        ..
                    }) => Some(block),
                    _ => return Err(ParseError::at(at, "block '{' is never closed by '}'")),
                }
            }
            Some(other) => {
                return Err(ParseError::at(
                    other.at,
                    format!(
                        "expected ';' or '{{' after command {name:?}, found {}",
                        describe(&other.kind)
                    ),
                ));
            }
            None => {
                return Err(ParseError::at(
                    self.end_position(),
                    format!("command {name:?} is not ended by ';'"),
                ));
            }
        };
        Ok(GenericCommand {
            name,
            arguments,
            tests,
            test_list,
            block,
            at: token.at,
        })
    }

    #[allow(clippy::type_complexity)]
    fn arguments(&mut self, depth: usize) -> Result<(Vec<Argument>, Vec<GenericTest>, bool), ParseError> {
        let mut arguments = Vec::new();
        while let Some(token) = self.peek().cloned() {
            match token.kind {
                TokenKind::Tag(name) => {
                    self.index += 1;
                    arguments.push(Argument::Tag { name, at: token.at });
                }
                TokenKind::Number(value) => {
                    self.index += 1;
                    arguments.push(Argument::Number { value, at: token.at });
                }
                TokenKind::String(value) => {
                    self.index += 1;
                    arguments.push(Argument::Strings {
                        values: vec![value],
                        list: false,
                        at: token.at,
                    });
                }
                TokenKind::LeftBracket => {
                    self.index += 1;
                    arguments.push(Argument::Strings {
                        values: self.string_list(token.at)?,
                        list: true,
                        at: token.at,
                    });
                }
                _ => break,
            }
        }
        let Some(token) = self.peek().cloned() else {
            return Ok((arguments, Vec::new(), false));
        };
        match token.kind {
            TokenKind::Identifier(_) => Ok((arguments, vec![self.test(depth + 1)?], false)),
            TokenKind::LeftParen => {
                self.index += 1;
                let mut tests = vec![self.test(depth + 1)?];
                loop {
                    match self.next().cloned() {
                        Some(Token {
                            kind: TokenKind::Comma,
                            ..
                        }) => tests.push(self.test(depth + 1)?),
                        Some(Token {
                            kind: TokenKind::RightParen,
                            ..
                        }) => break,
                        Some(other) => {
                            return Err(ParseError::at(
                                other.at,
                                format!(
                                    "expected ',' or ')' in a test list, found {}",
                                    describe(&other.kind)
                                ),
                            ));
                        }
                        None => return Err(ParseError::at(token.at, "test list '(' is never closed by ')'")),
                    }
                }
                Ok((arguments, tests, true))
            }
            _ => Ok((arguments, Vec::new(), false)),
        }
    }

    fn test(&mut self, depth: usize) -> Result<GenericTest, ParseError> {
        let Some(token) = self.next().cloned() else {
            return Err(ParseError::at(
                self.end_position(),
                "expected a test, found the end of the script",
            ));
        };
        let TokenKind::Identifier(name) = token.kind else {
            return Err(ParseError::at(
                token.at,
                format!("expected a test, found {}", describe(&token.kind)),
            ));
        };
        if depth > MAX_NESTING {
            return Err(ParseError::at(
                token.at,
                format!("tests nested deeper than {MAX_NESTING}"),
            ));
        }
        let (arguments, tests, test_list) = self.arguments(depth)?;
        Ok(GenericTest {
            name,
            arguments,
            tests,
            test_list,
            at: token.at,
        })
    }

    fn string_list(&mut self, open: Position) -> Result<Vec<String>, ParseError> {
        let mut values = Vec::new();
        loop {
            match self.next().cloned() {
                Some(Token {
                    kind: TokenKind::String(value),
                    ..
                }) => values.push(value),
                Some(other) => {
                    return Err(ParseError::at(
                        other.at,
                        format!(
                            "expected a string in a string list, found {}",
                            describe(&other.kind)
                        ),
                    ));
                }
                None => return Err(ParseError::at(open, "string list '[' is never closed by ']'")),
            }
            match self.next().cloned() {
                Some(Token {
                    kind: TokenKind::Comma,
                    ..
                }) => {}
                Some(Token {
                    kind: TokenKind::RightBracket,
                    ..
                }) => return Ok(values),
                Some(other) => {
                    return Err(ParseError::at(
                        other.at,
                        format!(
                            "expected ',' or ']' in a string list, found {}",
                            describe(&other.kind)
                        ),
                    ));
                }
                None => return Err(ParseError::at(open, "string list '[' is never closed by ']'")),
            }
        }
    }
}

fn describe(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Identifier(name) => format!("identifier {name:?}"),
        TokenKind::Tag(name) => format!("tag :{name}"),
        TokenKind::Number(n) => format!("number {n}"),
        TokenKind::String(_) => "a string".to_string(),
        TokenKind::LeftBracket => "'['".to_string(),
        TokenKind::RightBracket => "']'".to_string(),
        TokenKind::LeftParen => "'('".to_string(),
        TokenKind::RightParen => "')'".to_string(),
        TokenKind::LeftBrace => "'{'".to_string(),
        TokenKind::RightBrace => "'}'".to_string(),
        TokenKind::Comma => "','".to_string(),
        TokenKind::Semicolon => "';'".to_string(),
    }
}
