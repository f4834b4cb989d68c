//! Sieve tokens (RFC 5228 section 8.1): identifiers, tags, numbers with K/M/G quantifiers,
//! quoted and multi-line strings, and the punctuation of the grammar. Comments (`#` to the end of
//! the line, `/* ... */`) and white space are skipped. Every token carries the line and column
//! where it starts, so that a parse error can point at it.

use super::error::ParseError;

/// Where a token starts: 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    Identifier(String),
    /// A tagged argument, without its colon, lower-cased (tags are case-insensitive).
    Tag(String),
    Number(u64),
    String(String),
    LeftBracket,
    RightBracket,
    LeftParen,
    RightParen,
    LeftBrace,
    RightBrace,
    Comma,
    Semicolon,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub at: Position,
}

/// Splits a script into tokens.
pub fn tokenize(source: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer {
        chars: source.chars().collect(),
        index: 0,
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    loop {
        lexer.skip_space_and_comments()?;
        let Some(c) = lexer.peek() else { return Ok(tokens) };
        let at = lexer.position();
        let kind = match c {
            '[' => lexer.punct(TokenKind::LeftBracket),
            ']' => lexer.punct(TokenKind::RightBracket),
            '(' => lexer.punct(TokenKind::LeftParen),
            ')' => lexer.punct(TokenKind::RightParen),
            '{' => lexer.punct(TokenKind::LeftBrace),
            '}' => lexer.punct(TokenKind::RightBrace),
            ',' => lexer.punct(TokenKind::Comma),
            ';' => lexer.punct(TokenKind::Semicolon),
            '"' => TokenKind::String(lexer.quoted_string()?),
            ':' => {
                lexer.bump();
                match lexer.peek() {
                    Some(c) if is_identifier_start(c) => {
                        TokenKind::Tag(lexer.identifier().to_ascii_lowercase())
                    }
                    _ => return Err(ParseError::at(at, "a ':' must be followed by a tag name")),
                }
            }
            c if c.is_ascii_digit() => TokenKind::Number(lexer.number(at)?),
            c if is_identifier_start(c) => {
                let word = lexer.identifier();
                if word.eq_ignore_ascii_case("text") && lexer.peek() == Some(':') {
                    lexer.bump();
                    TokenKind::String(lexer.multiline_string(at)?)
                } else {
                    TokenKind::Identifier(word.to_ascii_lowercase())
                }
            }
            other => {
                return Err(ParseError::at(at, format!("unexpected character {other:?}")));
            }
        };
        tokens.push(Token { kind, at });
    }
}

fn is_identifier_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

struct Lexer {
    chars: Vec<char>,
    index: usize,
    line: u32,
    column: u32,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.index).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.index + offset).copied()
    }

    fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.index += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn punct(&mut self, kind: TokenKind) -> TokenKind {
        self.bump();
        kind
    }

    fn skip_space_and_comments(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r' | '\n') => {
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                Some('/') if self.peek_at(1) == Some('*') => {
                    let at = self.position();
                    self.bump();
                    self.bump();
                    loop {
                        match self.bump() {
                            Some('*') if self.peek() == Some('/') => {
                                self.bump();
                                break;
                            }
                            Some(_) => {}
                            None => return Err(ParseError::at(at, "unterminated /* comment")),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn identifier(&mut self) -> String {
        let mut word = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                self.bump();
            } else {
                break;
            }
        }
        word
    }

    fn number(&mut self, at: Position) -> Result<u64, ParseError> {
        let mut value: u64 = 0;
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            self.bump();
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c as u8 - b'0')))
                .ok_or_else(|| ParseError::at(at, "number too large"))?;
        }
        let multiplier: u64 = match self.peek() {
            Some('k' | 'K') => 1 << 10,
            Some('m' | 'M') => 1 << 20,
            Some('g' | 'G') => 1 << 30,
            _ => 1,
        };
        if multiplier != 1 {
            self.bump();
        }
        if self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ParseError::at(at, "a number may only be followed by K, M or G"));
        }
        value
            .checked_mul(multiplier)
            .ok_or_else(|| ParseError::at(at, "number too large"))
    }

    /// `"..."`: `\\` and `\"` stand for themselves; RFC 5228 2.4.2 drops the backslash of any
    /// other escape.
    fn quoted_string(&mut self) -> Result<String, ParseError> {
        let at = self.position();
        self.bump();
        let mut value = String::new();
        loop {
            match self.bump() {
                Some('"') => return Ok(value),
                Some('\\') => match self.bump() {
                    Some(c) => value.push(c),
                    None => return Err(ParseError::at(at, "unterminated string")),
                },
                Some(c) => value.push(c),
                None => return Err(ParseError::at(at, "unterminated string")),
            }
        }
    }

    /// `text:` up to a line holding only `.`; a line's leading `..` stands for `.`.
    fn multiline_string(&mut self, at: Position) -> Result<String, ParseError> {
        // After "text:": optional white space, then a comment or the end of the line.
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
        match self.peek() {
            Some('#') => {
                while let Some(c) = self.bump() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            Some('\r') if self.peek_at(1) == Some('\n') => {
                self.bump();
                self.bump();
            }
            Some('\n') => {
                self.bump();
            }
            _ => {
                return Err(ParseError::at(
                    at,
                    "text: must be followed by the end of the line",
                ))
            }
        }
        let mut value = String::new();
        loop {
            let mut line = String::new();
            let mut ended = false;
            while let Some(c) = self.bump() {
                line.push(c);
                if c == '\n' {
                    ended = true;
                    break;
                }
            }
            let content = line.trim_end_matches('\n').trim_end_matches('\r');
            if content == "." {
                return Ok(value);
            }
            if !ended {
                return Err(ParseError::at(
                    at,
                    "multi-line string not terminated by a '.' line",
                ));
            }
            match line.strip_prefix('.') {
                Some(rest) if rest.starts_with('.') => value.push_str(rest),
                _ => value.push_str(&line),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<TokenKind> {
        tokenize(source).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn numbers_take_quantifiers_and_overflow_is_an_error() {
        assert_eq!(
            kinds("1K 2m 3G 7"),
            vec![
                TokenKind::Number(1024),
                TokenKind::Number(2 << 20),
                TokenKind::Number(3 << 30),
                TokenKind::Number(7)
            ]
        );
        assert!(tokenize("99999999999999999999").is_err());
        assert!(tokenize("20000000000G").is_err());
        assert!(tokenize("12x").is_err());
    }

    #[test]
    fn strings_escapes_and_multiline_dot_stuffing() {
        assert_eq!(
            kinds(r#""a\"b\\c\d""#),
            vec![TokenKind::String("a\"b\\cd".into())]
        );
        assert_eq!(
            kinds("text: # comment\r\nline1\r\n..dot\r\n.\r\n"),
            vec![TokenKind::String("line1\r\n.dot\r\n".into())]
        );
        assert!(tokenize("text:\nno end\n").is_err());
        assert!(tokenize("\"open").is_err());
    }

    #[test]
    fn comments_are_skipped_and_positions_count_lines_and_columns() {
        let tokens = tokenize("# one\n/* two\n */  keep;").unwrap();
        assert_eq!(tokens[0].kind, TokenKind::Identifier("keep".into()));
        assert_eq!(tokens[0].at, Position { line: 3, column: 6 });
        assert_eq!(tokens[1].at, Position { line: 3, column: 10 });
        let error = tokenize("keep;\n  /* open").unwrap_err();
        assert_eq!((error.line, error.column), (2, 3));
    }

    #[test]
    fn tags_are_lower_cased() {
        assert_eq!(kinds(":Contains"), vec![TokenKind::Tag("contains".into())]);
        assert!(tokenize(": x").is_err());
    }
}
