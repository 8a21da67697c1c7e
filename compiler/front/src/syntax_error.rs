//! Syntax errors: the public [`SyntaxError`], the nesting pre-check that bounds recursion
//! before chumsky runs, and the translation of chumsky's `Rich` errors into coded messages.

use crate::ast::{FileId, Span};
use crate::lexer::{LexError, Token};
use chumsky::error::{Rich, RichPattern, RichReason};
use chumsky::span::SimpleSpan;

/// Most brackets/blocks open at once. Real objectives stay below ~10.
pub const MAX_NESTING: usize = 128;
/// Bound on expression depth: the sum over open brackets of (operators so far + 1).
/// A left-associated chain of `n` operators is `n` deep; this keeps trees shallow enough
/// for every recursive pass (printer, checker, drop) on a small stack.
pub const MAX_EXPR_DEPTH: usize = 512;

/// One syntax error (codes E0001–E0099; see [`crate::parser`] for the table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub code: &'static str,
    pub span: Span,
    /// One line: what is wrong.
    pub message: String,
    /// Short text shown under the span.
    pub label: String,
    pub hint: Option<String>,
}

impl From<LexError> for SyntaxError {
    fn from(e: LexError) -> Self {
        SyntaxError {
            code: e.code,
            span: e.span,
            message: e.message,
            label: e.label,
            hint: e.hint,
        }
    }
}

fn err(
    code: &'static str,
    span: Span,
    message: String,
    label: &str,
    hint: Option<&str>,
) -> SyntaxError {
    SyntaxError {
        code,
        span,
        message,
        label: label.to_string(),
        hint: hint.map(str::to_string),
    }
}

fn closer(open: &Token) -> Token {
    match open {
        Token::LParen | Token::CallParen => Token::RParen,
        Token::LBracket => Token::RBracket,
        _ => Token::RBrace,
    }
}

fn is_op(t: &Token) -> bool {
    matches!(
        t,
        Token::Plus
            | Token::Minus
            | Token::Star
            | Token::Slash
            | Token::Bang
            | Token::EqEq
            | Token::NotEq
            | Token::Lt
            | Token::Le
            | Token::Gt
            | Token::Ge
            | Token::AndAnd
            | Token::OrOr
            | Token::Where
            | Token::If
            | Token::Else
    )
}

/// Starts a new statement or sibling expression: the operator count of the level restarts.
fn is_reset(t: &Token) -> bool {
    matches!(
        t,
        Token::Comma
            | Token::Use
            | Token::Fn
            | Token::Objective
            | Token::Input
            | Token::Param
            | Token::Const
            | Token::State
            | Token::Let
            | Token::Loss
            | Token::Metric
            | Token::Output
            | Token::Update
    )
}

/// Checks delimiter balance and nesting bounds in one linear pass over the tokens.
/// E0014/E0015 are fatal (the caller does not parse); E0012/E0013 are reported and parsing
/// goes on.
pub fn check_nesting(file: FileId, toks: &[(Token, SimpleSpan)]) -> Vec<SyntaxError> {
    let span = |s: &SimpleSpan| Span::new(file, s.start, s.end);
    let mut errors = Vec::new();
    // (open token, its span, operators seen at this level)
    let mut stack: Vec<(Token, SimpleSpan, usize)> = Vec::new();
    let mut top_ops = 0usize;
    let mut depth = 1usize;
    for (t, s) in toks {
        match t {
            Token::LParen | Token::CallParen | Token::LBracket | Token::LBrace => {
                stack.push((t.clone(), *s, 0));
                depth += 1;
                if stack.len() > MAX_NESTING {
                    errors.push(err(
                        "E0014",
                        span(s),
                        format!("nesting too deep: more than {MAX_NESTING} open brackets"),
                        "too deeply nested",
                        Some("split the expression with `let`"),
                    ));
                    return errors;
                }
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                let found = stack.iter().rposition(|(open, _, _)| closer(open) == *t);
                match found {
                    Some(i) => {
                        if i + 1 != stack.len() {
                            if let Some((open, os, _)) = stack.last() {
                                errors.push(err(
                                    "E0013",
                                    span(s),
                                    format!(
                                        "mismatched closing delimiter: expected {}, found {t}",
                                        closer(open)
                                    ),
                                    "mismatched",
                                    None,
                                ));
                                errors.push(err(
                                    "E0012",
                                    span(os),
                                    format!("unclosed delimiter {open}"),
                                    "never closed",
                                    None,
                                ));
                            }
                        }
                        for (_, _, ops) in stack.drain(i..) {
                            depth -= ops + 1;
                        }
                    }
                    None => errors.push(err(
                        "E0013",
                        span(s),
                        format!("unmatched closing delimiter {t}"),
                        "no matching opening delimiter",
                        None,
                    )),
                }
            }
            _ if is_op(t) => {
                match stack.last_mut() {
                    Some((_, _, ops)) => *ops += 1,
                    None => top_ops += 1,
                }
                depth += 1;
                if depth > MAX_EXPR_DEPTH {
                    errors.push(err(
                        "E0015",
                        span(s),
                        format!(
                            "expression too long or too deeply nested (limit {MAX_EXPR_DEPTH})"
                        ),
                        "expression too complex",
                        Some("split it into several `let`s"),
                    ));
                    return errors;
                }
            }
            _ if is_reset(t) => {
                let ops = match stack.last_mut() {
                    Some((_, _, ops)) => ops,
                    None => &mut top_ops,
                };
                depth -= *ops;
                *ops = 0;
            }
            _ => {}
        }
    }
    for (open, s, _) in stack {
        errors.push(err(
            "E0012",
            span(&s),
            format!("unclosed delimiter {open}"),
            "never closed",
            None,
        ));
    }
    errors
}

fn describe(p: &RichPattern<'_, Token>) -> String {
    match p {
        RichPattern::Token(t) => format!("{}", &**t),
        RichPattern::Label(l) => l.to_string(),
        RichPattern::Identifier(i) => format!("`{i}`"),
        RichPattern::Any => "any token".to_string(),
        RichPattern::SomethingElse => "something else".to_string(),
        RichPattern::EndOfInput => "end of file".to_string(),
        _ => "something else".to_string(),
    }
}

/// `a`, `a or b`, `a, b or c`.
fn join_or(items: &[String]) -> String {
    match items {
        [] => "something else".to_string(),
        [a] => a.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

const ELSE_LABEL: &str = "`else` (every `if` needs an `else` branch)";

/// Translates one chumsky error into a coded, actionable [`SyntaxError`].
pub fn convert_rich(file: FileId, e: Rich<'_, Token, SimpleSpan>) -> SyntaxError {
    let s = *e.span();
    let span = Span::new(file, s.start, s.end);
    let (expected, found) = match e.reason() {
        RichReason::Custom(msg) => {
            return err("E0010", span, msg.clone(), "here", None);
        }
        RichReason::ExpectedFound { expected, found } => (expected, found.as_deref().cloned()),
        #[allow(unreachable_patterns)]
        _ => return err("E0010", span, "syntax error".to_string(), "here", None),
    };
    let mut exp: Vec<String> = Vec::new();
    for p in expected {
        let d = describe(p);
        if !exp.contains(&d) {
            exp.push(d);
        }
    }
    // `select!` adds "something else"; an identifier is already an expression.
    let has_expr = exp.iter().any(|x| x == "expression");
    exp.retain(|x| x != "something else" && !(has_expr && x == "identifier"));
    let has = |l: &str| exp.iter().any(|x| x == l);
    let found_s = found
        .as_ref()
        .map_or("end of file".to_string(), |t| t.to_string());
    let (code, hint): (&'static str, Option<&str>) = if found.is_none() {
        ("E0011", Some("the file ends in the middle of a construct"))
    } else if has(ELSE_LABEL) {
        (
            "E0020",
            Some("write `if c { a } else { b }`: both branches are computed or one is folded away"),
        )
    } else if has("declaration") {
        (
            "E0018",
            Some("an objective holds `input`, `param`, `const`, `state`, `let`, `loss`, `metric`, `output` and `update` declarations"),
        )
    } else if has("item") {
        (
            "E0019",
            Some("a file holds `use` imports, `fn` definitions and at most one `objective`"),
        )
    } else if has("type") {
        ("E0017", Some("types are `f32`, `f32[space]`, `bool[space]`, `id[space]`, `str` or `\"a\" | \"b\"`"))
    } else if has("expression") {
        ("E0016", None)
    } else if has("`std` or a file path string") {
        (
            "E0021",
            Some("write `use std::module::{names}` or `use \"file.obj\"::{names}`"),
        )
    } else {
        ("E0010", None)
    };
    let exp: Vec<String> = exp
        .into_iter()
        .map(|x| {
            if x == ELSE_LABEL {
                "`else`".to_string()
            } else {
                x
            }
        })
        .collect();
    let message = format!("expected {}, found {found_s}", join_or(&exp));
    SyntaxError {
        code,
        span,
        message,
        label: format!("unexpected {found_s}"),
        hint: hint.map(str::to_string),
    }
}
