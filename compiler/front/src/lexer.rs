//! Hand-written lexer: `&str` → `Vec<(Token, Span)>` with byte offsets.
//!
//! Comments are tokens (the parser filters them and re-attaches them to statements) so the
//! formatter never loses text. Lexing never stops at an error: a malformed number or string
//! still yields a token so the parser reports only genuine follow-on problems.

use crate::ast::{FileId, Span};
use std::fmt;

/// One lexical token. Payloads are owned so the token stream outlives the source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Token {
    Ident(String),
    /// The number's source text; the lexer has checked that it parses as a finite f64.
    Number(String),
    /// A string literal's value, escapes already resolved.
    Str(String),
    // Keywords.
    Use,
    Objective,
    Fn,
    Input,
    Param,
    Const,
    State,
    Let,
    Loss,
    Metric,
    Output,
    Update,
    If,
    Else,
    Where,
    As,
    In,
    True,
    False,
    /// `@grad`
    AtGrad,
    // Punctuation.
    ColonColon,
    Colon,
    Arrow,
    Pipe,
    Comma,
    Assign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Bang,
    Plus,
    Minus,
    Star,
    Slash,
    LParen,
    /// A `(` glued to the identifier or `]` before it (`f(x)`, `mean[seq](x)`): a call.
    /// A `(` after whitespace always groups, so `let t = x` followed by `(a + b) * c` on
    /// the next line of a block stays two statements.
    CallParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    /// `// text` — the text after `//`, trailing whitespace removed.
    Comment(String),
    /// `/// text` — the text after `///`.
    DocComment(String),
    /// `//! text` — the text after `//!`.
    ModuleDoc(String),
}

impl Token {
    /// The keyword token for an identifier-shaped word, if it is one.
    pub fn keyword(word: &str) -> Option<Token> {
        Some(match word {
            "use" => Token::Use,
            "objective" => Token::Objective,
            "fn" => Token::Fn,
            "input" => Token::Input,
            "param" => Token::Param,
            "const" => Token::Const,
            "state" => Token::State,
            "let" => Token::Let,
            "loss" => Token::Loss,
            "metric" => Token::Metric,
            "output" => Token::Output,
            "update" => Token::Update,
            "if" => Token::If,
            "else" => Token::Else,
            "where" => Token::Where,
            "as" => Token::As,
            "in" => Token::In,
            "true" => Token::True,
            "false" => Token::False,
            _ => return None,
        })
    }

    /// True for `//`, `///` and `//!` comments.
    pub fn is_comment(&self) -> bool {
        matches!(
            self,
            Token::Comment(_) | Token::DocComment(_) | Token::ModuleDoc(_)
        )
    }

    /// The fixed spelling of keywords and punctuation.
    pub fn text(&self) -> Option<&'static str> {
        Some(match self {
            Token::Use => "use",
            Token::Objective => "objective",
            Token::Fn => "fn",
            Token::Input => "input",
            Token::Param => "param",
            Token::Const => "const",
            Token::State => "state",
            Token::Let => "let",
            Token::Loss => "loss",
            Token::Metric => "metric",
            Token::Output => "output",
            Token::Update => "update",
            Token::If => "if",
            Token::Else => "else",
            Token::Where => "where",
            Token::As => "as",
            Token::In => "in",
            Token::True => "true",
            Token::False => "false",
            Token::AtGrad => "@grad",
            Token::ColonColon => "::",
            Token::Colon => ":",
            Token::Arrow => "->",
            Token::Pipe => "|",
            Token::Comma => ",",
            Token::Assign => "=",
            Token::EqEq => "==",
            Token::NotEq => "!=",
            Token::Lt => "<",
            Token::Le => "<=",
            Token::Gt => ">",
            Token::Ge => ">=",
            Token::AndAnd => "&&",
            Token::OrOr => "||",
            Token::Bang => "!",
            Token::Plus => "+",
            Token::Minus => "-",
            Token::Star => "*",
            Token::Slash => "/",
            Token::LParen | Token::CallParen => "(",
            Token::RParen => ")",
            Token::LBracket => "[",
            Token::RBracket => "]",
            Token::LBrace => "{",
            Token::RBrace => "}",
            _ => return None,
        })
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = self.text() {
            return write!(f, "`{t}`");
        }
        match self {
            Token::Ident(s) => write!(f, "identifier `{s}`"),
            Token::Number(s) => write!(f, "number `{s}`"),
            Token::Str(s) => write!(f, "string {s:?}"),
            Token::Comment(_) => write!(f, "comment"),
            Token::DocComment(_) => write!(f, "doc comment"),
            Token::ModuleDoc(_) => write!(f, "module doc comment"),
            _ => write!(f, "token"),
        }
    }
}

/// A lexical error; `code` is one of the `E000x` codes documented in [`crate::parser`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexError {
    pub code: &'static str,
    pub span: Span,
    pub message: String,
    pub label: String,
    pub hint: Option<String>,
}

/// Lexes a whole file. Always returns every token it could make, plus every error.
pub fn lex(file: FileId, src: &str) -> (Vec<(Token, Span)>, Vec<LexError>) {
    let mut lx = Lexer {
        file,
        src,
        bytes: src.as_bytes(),
        pos: 0,
        toks: Vec::new(),
        errs: Vec::new(),
    };
    lx.run();
    (lx.toks, lx.errs)
}

struct Lexer<'a> {
    file: FileId,
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    toks: Vec<(Token, Span)>,
    errs: Vec<LexError>,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Lexer<'_> {
    fn peek(&self, off: usize) -> Option<u8> {
        self.bytes.get(self.pos + off).copied()
    }

    fn span(&self, start: usize) -> Span {
        Span::new(self.file, start, self.pos)
    }

    fn push(&mut self, tok: Token, start: usize) {
        let span = self.span(start);
        self.toks.push((tok, span));
    }

    fn error(
        &mut self,
        code: &'static str,
        span: Span,
        message: String,
        label: &str,
        hint: Option<&str>,
    ) {
        self.errs.push(LexError {
            code,
            span,
            message,
            label: label.to_string(),
            hint: hint.map(str::to_string),
        });
    }

    fn run(&mut self) {
        while let Some(b) = self.peek(0) {
            let start = self.pos;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                b'/' if self.peek(1) == Some(b'/') => self.comment(),
                b'0'..=b'9' => self.number(),
                b'"' => self.string(),
                b'@' => self.attribute(),
                _ if is_ident_start(b) => {
                    while self.peek(0).is_some_and(is_ident_char) {
                        self.pos += 1;
                    }
                    let word = &self.src[start..self.pos];
                    let tok =
                        Token::keyword(word).unwrap_or_else(|| Token::Ident(word.to_string()));
                    self.push(tok, start);
                }
                _ => self.punct(b),
            }
        }
    }

    fn comment(&mut self) {
        let start = self.pos;
        while self.peek(0).is_some_and(|b| b != b'\n') {
            self.pos += 1;
        }
        let text = &self.src[start..self.pos];
        let tok = if let Some(rest) = text.strip_prefix("//!") {
            Token::ModuleDoc(rest.trim_end().to_string())
        } else if let Some(rest) = text.strip_prefix("///").filter(|r| !r.starts_with('/')) {
            Token::DocComment(rest.trim_end().to_string())
        } else {
            Token::Comment(text[2..].trim_end().to_string())
        };
        self.push(tok, start);
    }

    fn number(&mut self) {
        let start = self.pos;
        let digits = |lx: &mut Self| {
            let s = lx.pos;
            while lx.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                lx.pos += 1;
            }
            lx.pos > s
        };
        digits(self);
        let mut ok = true;
        if self.peek(0) == Some(b'.') {
            self.pos += 1;
            ok &= digits(self);
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(0), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            ok &= digits(self);
        }
        // Letters, digits or dots glued to a number (`3x`, `1.2.3`) make it malformed.
        while self.peek(0).is_some_and(|b| is_ident_char(b) || b == b'.') {
            self.pos += 1;
            ok = false;
        }
        let raw = &self.src[start..self.pos];
        let finite = raw.parse::<f64>().is_ok_and(f64::is_finite);
        if !ok || !finite {
            let span = self.span(start);
            let (label, hint) = if ok {
                ("number out of range", "numbers must fit in an f64")
            } else {
                (
                    "malformed number",
                    "numbers look like `3`, `0.2`, `1e-6` or `2.5E+3`",
                )
            };
            self.error(
                "E0004",
                span,
                format!("malformed number `{raw}`"),
                label,
                Some(hint),
            );
            self.push(Token::Number("0".to_string()), start);
        } else {
            self.push(Token::Number(raw.to_string()), start);
        }
    }

    fn string(&mut self) {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            let rest = &self.src[self.pos..];
            let Some(c) = rest.chars().next() else {
                self.unterminated(start);
                break;
            };
            match c {
                '"' => {
                    self.pos += 1;
                    break;
                }
                '\n' | '\r' => {
                    self.unterminated(start);
                    break;
                }
                '\\' => {
                    let esc_start = self.pos;
                    self.pos += 1;
                    let next = self.src[self.pos..].chars().next();
                    match next {
                        Some('"') => value.push('"'),
                        Some('\\') => value.push('\\'),
                        Some('n') => value.push('\n'),
                        Some(other) if other != '\n' && other != '\r' => {
                            value.push(other);
                        }
                        _ => continue,
                    }
                    let len = next.map_or(0, char::len_utf8);
                    self.pos += len;
                    if !matches!(next, Some('"' | '\\' | 'n')) {
                        let span = self.span(esc_start);
                        let text = &self.src[esc_start..self.pos];
                        self.error(
                            "E0003",
                            span,
                            format!("unknown escape `{text}` in string"),
                            "unknown escape",
                            Some("the escapes are `\\\"`, `\\\\` and `\\n`"),
                        );
                    }
                }
                _ => {
                    value.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
        self.push(Token::Str(value), start);
    }

    fn unterminated(&mut self, start: usize) {
        let span = self.span(start);
        self.error(
            "E0002",
            span,
            "unterminated string".to_string(),
            "this string is never closed",
            Some("close it with `\"` on the same line"),
        );
    }

    fn attribute(&mut self) {
        let start = self.pos;
        self.pos += 1;
        while self.peek(0).is_some_and(is_ident_char) {
            self.pos += 1;
        }
        let word = &self.src[start + 1..self.pos];
        if word == "grad" {
            self.push(Token::AtGrad, start);
        } else {
            let span = self.span(start);
            let text = &self.src[start..self.pos];
            self.error(
                "E0005",
                span,
                format!("unknown attribute `{text}`"),
                "unknown attribute",
                Some("the only attribute is `@grad`, after an input's type"),
            );
        }
    }

    fn punct(&mut self, b: u8) {
        let start = self.pos;
        let two = self.peek(1);
        let (tok, len) = match (b, two) {
            (b':', Some(b':')) => (Token::ColonColon, 2),
            (b':', _) => (Token::Colon, 1),
            (b'-', Some(b'>')) => (Token::Arrow, 2),
            (b'-', _) => (Token::Minus, 1),
            (b'|', Some(b'|')) => (Token::OrOr, 2),
            (b'|', _) => (Token::Pipe, 1),
            (b'&', Some(b'&')) => (Token::AndAnd, 2),
            (b'=', Some(b'=')) => (Token::EqEq, 2),
            (b'=', _) => (Token::Assign, 1),
            (b'!', Some(b'=')) => (Token::NotEq, 2),
            (b'!', _) => (Token::Bang, 1),
            (b'<', Some(b'=')) => (Token::Le, 2),
            (b'<', _) => (Token::Lt, 1),
            (b'>', Some(b'=')) => (Token::Ge, 2),
            (b'>', _) => (Token::Gt, 1),
            (b',', _) => (Token::Comma, 1),
            (b'+', _) => (Token::Plus, 1),
            (b'*', _) => (Token::Star, 1),
            (b'/', _) => (Token::Slash, 1),
            (b'(', _) => {
                let glued = self.toks.last().is_some_and(|(t, s)| {
                    s.end == start && matches!(t, Token::Ident(_) | Token::RBracket)
                });
                (
                    if glued {
                        Token::CallParen
                    } else {
                        Token::LParen
                    },
                    1,
                )
            }
            (b')', _) => (Token::RParen, 1),
            (b'[', _) => (Token::LBracket, 1),
            (b']', _) => (Token::RBracket, 1),
            (b'{', _) => (Token::LBrace, 1),
            (b'}', _) => (Token::RBrace, 1),
            _ => {
                let c = self.src[start..].chars().next().unwrap_or('\u{fffd}');
                self.pos += c.len_utf8().max(1);
                let span = self.span(start);
                let hint = match c {
                    '&' => Some("logical and is `&&`"),
                    ';' => Some("statements need no semicolons"),
                    '.' => Some("numbers start with a digit: `0.5`"),
                    _ => None,
                };
                self.error(
                    "E0001",
                    span,
                    format!("invalid character `{}`", c.escape_debug()),
                    "not valid here",
                    hint,
                );
                return;
            }
        };
        self.pos += len;
        self.push(tok, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Token> {
        lex(0, src).0.into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn lexes_operators_and_comments() {
        let t = toks("a::b -> |x| != <= @grad /// d\n//! m\n// c");
        assert_eq!(t[1], Token::ColonColon);
        assert_eq!(t[3], Token::Arrow);
        assert!(t.contains(&Token::AtGrad));
        assert!(t.contains(&Token::DocComment(" d".into())));
        assert!(t.contains(&Token::ModuleDoc(" m".into())));
        assert!(t.contains(&Token::Comment(" c".into())));
    }

    #[test]
    fn reports_errors() {
        for (src, code) in [
            ("\"abc", "E0002"),
            ("\"a\\q\"", "E0003"),
            ("1e", "E0004"),
            ("$", "E0001"),
            ("@x", "E0005"),
        ] {
            let (_, errs) = lex(0, src);
            assert_eq!(errs.first().map(|e| e.code), Some(code), "{src}");
        }
    }
}
