//! The `.obj` parser: tokens from [`crate::lexer`] → [`ast::Module`], built with chumsky 0.13.
//!
//! Comments never reach the grammar: they are split off before parsing and re-attached to
//! statements afterwards ([`crate::trivia`]), so a comment can never cause a syntax error.
//! Nesting is bounded before parsing ([`crate::syntax_error::check_nesting`]) so recursion,
//! and the depth of the resulting tree, stay small on any input.
//!
//! Recovery works at three levels, each producing `Error` nodes: a bad parenthesised
//! expression or call argument list, a bad declaration (skipped to the next declaration
//! keyword or `}`), and a bad item (skipped to the next `use`, `fn` or `objective`).
//!
//! Syntax-error codes (semantic codes start at E0100):
//!
//! | code  | meaning |
//! |-------|---------|
//! | E0001 | invalid character |
//! | E0002 | unterminated string |
//! | E0003 | unknown escape in a string |
//! | E0004 | malformed or out-of-range number |
//! | E0005 | unknown attribute (only `@grad` exists) |
//! | E0010 | unexpected token (generic "expected …, found …") |
//! | E0011 | unexpected end of file |
//! | E0012 | unclosed delimiter `(`, `[` or `{` |
//! | E0013 | unmatched or mismatched closing delimiter |
//! | E0014 | nesting too deep (more than [`MAX_NESTING`] levels of brackets/blocks) |
//! | E0015 | expression too long or too deeply nested (operator chain limit) |
//! | E0016 | expected an expression |
//! | E0017 | expected a type |
//! | E0018 | expected a declaration inside `objective { … }` |
//! | E0019 | expected an item (`use`, `fn` or `objective`) at the top level |
//! | E0020 | `if` without `else` |
//! | E0021 | invalid `use` path |

use crate::ast::*;
use crate::lexer::{self, Token};
use crate::syntax_error::{self, convert_rich};
use crate::trivia;
use chumsky::input::ValueInput;
use chumsky::pratt::{infix, left, prefix};
use chumsky::prelude::*;

pub use crate::syntax_error::{SyntaxError, MAX_EXPR_DEPTH, MAX_NESTING};

type Ex<'a> = extra::Err<Rich<'a, Token, SimpleSpan>>;

/// Parses one file. Always returns a module (possibly with `Error` nodes) and every syntax
/// error found, sorted by position.
pub fn parse(file: FileId, src: &str) -> (Module, Vec<SyntaxError>) {
    let (tokens, lex_errs) = lexer::lex(file, src);
    let mut errors: Vec<SyntaxError> = lex_errs.into_iter().map(SyntaxError::from).collect();
    let (trivia, toks) = trivia::split(tokens);
    let toks: Vec<(Token, SimpleSpan)> = toks
        .into_iter()
        .map(|(t, s)| (t, SimpleSpan::from(s.start..s.end)))
        .collect();

    let nesting = syntax_error::check_nesting(file, &toks);
    let fatal = nesting
        .iter()
        .any(|e| e.code == "E0014" || e.code == "E0015");
    errors.extend(nesting);
    if fatal {
        // Parsing a pathologically nested input would only produce a pathological tree.
        let span = Span::new(file, 0, src.len());
        let module = Module {
            doc: Vec::new(),
            items: vec![Item::Error(span)],
            trailing_comments: Vec::new(),
        };
        errors.sort_by_key(|e| (e.span.start, e.span.end));
        return (module, errors);
    }

    let eoi = SimpleSpan::from(src.len()..src.len());
    let input = toks.as_slice().map(eoi, |(t, s)| (t, s));
    let (out, rich) = module_parser(file).parse(input).into_output_errors();
    let delim_reported: Vec<usize> = errors
        .iter()
        .filter(|e| e.code == "E0012" || e.code == "E0013")
        .map(|e| e.span.start)
        .collect();
    // `f (x)`: a `(` after whitespace following a name is a likely attempted call.
    let spaced_calls: Vec<usize> = toks
        .windows(2)
        .filter(|w| matches!(w[0].0, Token::Ident(_)) && w[1].0 == Token::LParen)
        .map(|w| w[1].1.start)
        .collect();
    for e in rich {
        let mut err = convert_rich(file, e);
        // An unbalanced delimiter was already reported precisely; its echo is noise.
        if err.code == "E0011" && !delim_reported.is_empty() {
            continue;
        }
        if spaced_calls.contains(&err.span.start) {
            err.hint =
                Some("to call a function, write `(` right after its name: `f(x)`".to_string());
        }
        errors.push(err);
    }
    let mut module = out.unwrap_or_else(|| Module {
        doc: Vec::new(),
        items: vec![Item::Error(Span::new(file, 0, src.len()))],
        trailing_comments: Vec::new(),
    });
    errors.extend(trivia::attach(&mut module, trivia, src));
    errors.sort_by_key(|e| (e.span.start, e.span.end));
    errors.dedup_by(|a, b| a.span == b.span && a.code == b.code);
    (module, errors)
}

/// Parses a standalone expression (for tests and the REPL-like `--set` values).
pub fn parse_expr(file: FileId, src: &str) -> (Option<Expr>, Vec<SyntaxError>) {
    let (tokens, lex_errs) = lexer::lex(file, src);
    let mut errors: Vec<SyntaxError> = lex_errs.into_iter().map(SyntaxError::from).collect();
    let (_, toks) = trivia::split(tokens);
    let toks: Vec<(Token, SimpleSpan)> = toks
        .into_iter()
        .map(|(t, s)| (t, SimpleSpan::from(s.start..s.end)))
        .collect();
    let nesting = syntax_error::check_nesting(file, &toks);
    if !nesting.is_empty() {
        errors.extend(nesting);
        return (None, errors);
    }
    let eoi = SimpleSpan::from(src.len()..src.len());
    let input = toks.as_slice().map(eoi, |(t, s)| (t, s));
    let (out, rich) = expr_parser(file)
        .then_ignore(end())
        .parse(input)
        .into_output_errors();
    errors.extend(rich.into_iter().map(|e| convert_rich(file, e)));
    (out, errors)
}

fn sp(file: FileId, s: SimpleSpan) -> Span {
    Span::new(file, s.start, s.end)
}

fn ident<'a, I>(file: FileId) -> impl Parser<'a, I, Ident, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    select! { Token::Ident(s) => s }
        .map_with(move |name, e| Ident {
            name,
            span: sp(file, e.span()),
        })
        .labelled("identifier")
}

/// `[space]`
fn space<'a, I>(file: FileId) -> impl Parser<'a, I, Ident, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    ident(file)
        .labelled("space name")
        .delimited_by(just(Token::LBracket), just(Token::RBracket))
}

/// `[space]` or `[space, axis]` after `f32`/`bool`: the index space and a channel axis.
fn dims<'a, I>(file: FileId) -> impl Parser<'a, I, (Ident, Option<Ident>), Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    ident(file)
        .labelled("space name")
        .then(
            just(Token::Comma)
                .ignore_then(ident(file).labelled("channel axis"))
                .or_not(),
        )
        .delimited_by(just(Token::LBracket), just(Token::RBracket))
}

/// `f32[S]`, `f32[S, axis]`, `bool`, `id[seq]`, `str`, `"a" | "b"`.
fn type_parser<'a, I>(file: FileId) -> impl Parser<'a, I, TypeExpr, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    let word = |w: &'static str| select! { Token::Ident(s) if s == w => () };
    let split = |d: Option<(Ident, Option<Ident>)>| match d {
        Some((space, axis)) => (Some(space), axis),
        None => (None, None),
    };
    let f32_ = word("f32").ignore_then(dims(file).or_not()).map(move |d| {
        let (space, axis) = split(d);
        (TypeKind::F32(space), axis)
    });
    let bool_ = word("bool").ignore_then(dims(file).or_not()).map(move |d| {
        let (space, axis) = split(d);
        (TypeKind::Bool(space), axis)
    });
    let id_ = word("id")
        .ignore_then(space(file))
        .map(|s| (TypeKind::Id(s), None));
    let str_ = word("str").to((TypeKind::Str, None));
    let lit = select! { Token::Str(s) => s }.map_with(move |s, e| (s, sp(file, e.span())));
    let enum_ = lit
        .then(
            just(Token::Pipe)
                .ignore_then(lit)
                .repeated()
                .collect::<Vec<_>>(),
        )
        .map(|(first, mut rest)| {
            rest.insert(0, first);
            (TypeKind::Enum(rest), None)
        });
    choice((f32_, bool_, id_, str_, enum_))
        .map_with(move |(kind, channel), e| TypeExpr {
            kind,
            channel,
            span: sp(file, e.span()),
        })
        .labelled("type")
}

/// `{ let a = …  value }` around a given expression parser.
fn block_parser<'a, I, P>(file: FileId, expr: P) -> impl Parser<'a, I, Block, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
    P: Parser<'a, I, Expr, Ex<'a>> + Clone,
{
    let_parser(file, expr.clone())
        .repeated()
        .collect::<Vec<_>>()
        .then(expr)
        .delimited_by(just(Token::LBrace), just(Token::RBrace))
        .map_with(move |(lets, value), e| Block {
            lets,
            value: Box::new(value),
            span: sp(file, e.span()),
        })
        .recover_with(via_parser(
            nested_delimiters(
                Token::LBrace,
                Token::RBrace,
                [
                    (Token::LParen, Token::RParen),
                    (Token::LBracket, Token::RBracket),
                ],
                |s| s,
            )
            .map(move |s: SimpleSpan| {
                let span = sp(file, s);
                Block {
                    lets: Vec::new(),
                    value: Box::new(Expr {
                        kind: ExprKind::Error,
                        span,
                    }),
                    span,
                }
            }),
        ))
        .labelled("block")
}

fn let_parser<'a, I, P>(file: FileId, expr: P) -> impl Parser<'a, I, Let, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
    P: Parser<'a, I, Expr, Ex<'a>> + Clone,
{
    just(Token::Let)
        .ignore_then(ident(file))
        .then_ignore(just(Token::Assign))
        .then(expr)
        .map_with(move |(name, value), e| Let {
            comments: Comments::default(),
            name,
            value,
            span: sp(file, e.span()),
        })
}

fn expr_parser<'a, I>(file: FileId) -> impl Parser<'a, I, Expr, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    recursive(move |expr| {
        let path = ident(file)
            .separated_by(just(Token::ColonColon))
            .at_least(1)
            .collect::<Vec<_>>();
        let arg = ident(file)
            .then_ignore(just(Token::Colon))
            .or_not()
            .then(expr.clone())
            .map(|(name, value)| Arg { name, value });
        let args = arg
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<_>>()
            .delimited_by(just(Token::CallParen), just(Token::RParen))
            .recover_with(via_parser(nested_delimiters(
                Token::CallParen,
                Token::RParen,
                [
                    (Token::LParen, Token::RParen),
                    (Token::LBracket, Token::RBracket),
                    (Token::LBrace, Token::RBrace),
                ],
                move |s: SimpleSpan| {
                    vec![Arg {
                        name: None,
                        value: Expr {
                            kind: ExprKind::Error,
                            span: sp(file, s),
                        },
                    }]
                },
            )))
            .labelled("argument list");
        let call_tail = space(file).or_not().then(args).or_not();
        let var_or_call = path.then(call_tail).map(|(callee, tail)| match tail {
            Some((space, args)) => ExprKind::Call {
                callee,
                space,
                args,
            },
            None => ExprKind::Var(callee),
        });

        let literal = select! {
            Token::Number(raw) => ExprKind::Number { value: raw.parse::<f64>().unwrap_or(0.0), raw },
            Token::True => ExprKind::Bool(true),
            Token::False => ExprKind::Bool(false),
            Token::Str(s) => ExprKind::Str(s),
        };

        let block = block_parser(file, expr.clone());
        let if_ = recursive(|if_| {
            just(Token::If)
                .ignore_then(expr.clone())
                .then(block.clone())
                .then(
                    just(Token::Else)
                        .labelled("`else` (every `if` needs an `else` branch)")
                        .ignore_then(block.clone().map(Else::Block).or(if_.map(Else::If))),
                )
                .map_with(move |((cond, then), otherwise), e| Expr {
                    kind: ExprKind::If {
                        cond: Box::new(cond),
                        then,
                        otherwise: Box::new(otherwise),
                    },
                    span: sp(file, e.span()),
                })
        });

        let parens = expr
            .clone()
            .delimited_by(just(Token::LParen), just(Token::RParen))
            .recover_with(via_parser(nested_delimiters(
                Token::LParen,
                Token::RParen,
                [
                    (Token::CallParen, Token::RParen),
                    (Token::LBracket, Token::RBracket),
                    (Token::LBrace, Token::RBrace),
                ],
                move |s: SimpleSpan| Expr {
                    kind: ExprKind::Error,
                    span: sp(file, s),
                },
            )));

        let atom = choice((
            literal.or(var_or_call).map_with(move |kind, e| Expr {
                kind,
                span: sp(file, e.span()),
            }),
            if_,
            parens,
        ))
        .labelled("expression")
        .boxed();

        let bin =
            move |l: Expr,
                  op: BinOp,
                  r: Expr,
                  e: &mut chumsky::input::MapExtra<'a, '_, I, Ex<'a>>| Expr {
                kind: ExprKind::Binary(op, Box::new(l), Box::new(r)),
                span: sp(file, e.span()),
            };
        atom.pratt((
            infix(
                left(1),
                just(Token::Where),
                move |l: Expr, _, r: Expr, e| Expr {
                    kind: ExprKind::Where(Box::new(l), Box::new(r)),
                    span: sp(file, e.span()),
                },
            ),
            infix(left(2), select! { Token::OrOr => BinOp::Or }, bin),
            infix(left(3), select! { Token::AndAnd => BinOp::And }, bin),
            infix(
                left(4),
                select! {
                    Token::EqEq => BinOp::Eq,
                    Token::NotEq => BinOp::Ne,
                    Token::Lt => BinOp::Lt,
                    Token::Le => BinOp::Le,
                    Token::Gt => BinOp::Gt,
                    Token::Ge => BinOp::Ge,
                },
                bin,
            ),
            infix(
                left(5),
                select! { Token::Plus => BinOp::Add, Token::Minus => BinOp::Sub },
                bin,
            ),
            infix(
                left(6),
                select! { Token::Star => BinOp::Mul, Token::Slash => BinOp::Div },
                bin,
            ),
            prefix(
                7,
                select! { Token::Minus => UnOp::Neg, Token::Bang => UnOp::Not },
                move |op, r: Expr, e| Expr {
                    kind: ExprKind::Unary(op, Box::new(r)),
                    span: sp(file, e.span()),
                },
            ),
        ))
        .labelled("expression")
    })
}

/// Tokens that start a declaration inside an objective.
const DECL_START: &[Token] = &[
    Token::Input,
    Token::Param,
    Token::Const,
    Token::State,
    Token::Let,
    Token::Loss,
    Token::Metric,
    Token::Output,
    Token::Update,
];

const ITEM_START: &[Token] = &[Token::Use, Token::Fn, Token::Objective];

/// A balanced token tree: one non-delimiter token or a bracketed group (depth is bounded by
/// the nesting pre-check).
fn token_tree<'a, I>() -> impl Parser<'a, I, (), Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    recursive(|tt| {
        let group =
            |open: Token, close: Token| tt.clone().repeated().delimited_by(just(open), just(close));
        choice((
            group(Token::LParen, Token::RParen),
            group(Token::CallParen, Token::RParen),
            group(Token::LBracket, Token::RBracket),
            group(Token::LBrace, Token::RBrace),
            none_of([
                Token::LParen,
                Token::CallParen,
                Token::RParen,
                Token::LBracket,
                Token::RBracket,
                Token::LBrace,
                Token::RBrace,
            ])
            .ignored(),
        ))
    })
}

fn decl_parser<'a, I>(file: FileId) -> impl Parser<'a, I, Decl, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    let expr = expr_parser(file);
    let ty = type_parser(file);
    let name = || ident(file);
    let default = just(Token::Assign).ignore_then(expr.clone());

    let input = just(Token::Input)
        .ignore_then(name())
        .then_ignore(just(Token::Colon))
        .then(ty.clone())
        .then(
            just(Token::AtGrad)
                .map_with(move |_, e| sp(file, e.span()))
                .or_not(),
        )
        .then(
            just(Token::As)
                .ignore_then(name())
                .then(just(Token::In).ignore_then(name()).or_not())
                .or_not(),
        )
        .then(default.clone().or_not())
        .map(
            |((((name, ty), grad), declares), default)| DeclKind::Input {
                name,
                ty,
                grad,
                declares: declares.map(|(name, parent)| SpaceDecl { name, parent }),
                default,
            },
        );
    let param = just(Token::Param)
        .ignore_then(name())
        .then_ignore(just(Token::Colon))
        .then(ty.clone())
        .then(default.clone())
        .map(|((name, ty), default)| DeclKind::Param { name, ty, default });
    let const_ = just(Token::Const)
        .ignore_then(name())
        .then(just(Token::Colon).ignore_then(ty.clone()).or_not())
        .then(default.clone())
        .map(|((name, ty), value)| DeclKind::Const { name, ty, value });
    let state = just(Token::State)
        .ignore_then(name())
        .then_ignore(just(Token::Colon))
        .then(ty)
        .then(default.clone())
        .map(|((name, ty), init)| DeclKind::State { name, ty, init });
    let let_ = let_parser(file, expr.clone()).map(DeclKind::Let);
    let loss = just(Token::Loss)
        .ignore_then(default.clone())
        .map(DeclKind::Loss);
    let named = |kw: Token| just(kw).ignore_then(name()).then(default.clone());
    let metric = named(Token::Metric).map(|(name, value)| DeclKind::Metric { name, value });
    let output = named(Token::Output).map(|(name, value)| DeclKind::Output { name, value });
    let update = named(Token::Update).map(|(name, value)| DeclKind::Update { name, value });

    let decl = choice((
        input, param, const_, state, let_, loss, metric, output, update,
    ))
    .map_with(move |kind, e| Decl {
        comments: Comments::default(),
        doc: Vec::new(),
        kind,
        span: sp(file, e.span()),
    })
    .labelled("declaration");

    // Skip to the next declaration keyword, `}` or item keyword, keeping brackets balanced.
    let stop = one_of(DECL_START)
        .or(one_of(ITEM_START))
        .or(just(Token::RBrace))
        .ignored();
    let skip = token_tree()
        .or(one_of([Token::RParen, Token::RBracket]).ignored())
        .then(token_tree().and_is(stop.not()).repeated())
        .map_with(move |_, e| Decl {
            comments: Comments::default(),
            doc: Vec::new(),
            kind: DeclKind::Error,
            span: sp(file, e.span()),
        });
    decl.recover_with(via_parser(skip))
}

fn use_parser<'a, I>(file: FileId) -> impl Parser<'a, I, UseDecl, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    let names = ident(file)
        .separated_by(just(Token::Comma))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(just(Token::LBrace), just(Token::RBrace))
        .map(UseTarget::Names);
    let glob = just(Token::Star).map_with(move |_, e| UseTarget::Glob(sp(file, e.span())));
    let explicit = names.or(glob);

    let std_word =
        select! { Token::Ident(s) if s == "std" => () }.labelled("`std` or a file path string");
    let std_src = std_word
        .ignore_then(
            just(Token::ColonColon)
                .ignore_then(ident(file))
                .repeated()
                .at_least(1)
                .collect::<Vec<Ident>>(),
        )
        .then(
            just(Token::ColonColon)
                .ignore_then(explicit.clone())
                .or_not(),
        )
        .map(|(mut segs, target)| match target {
            Some(t) => (UseSource::Std(segs), t),
            None if segs.len() >= 2 => {
                let last = segs.pop().map(|i| vec![i]).unwrap_or_default();
                (UseSource::Std(segs), UseTarget::Names(last))
            }
            None => (UseSource::Std(segs), UseTarget::Module),
        });
    let file_src = select! { Token::Str(s) => s }
        .map_with(move |path, e| UseSource::File {
            path,
            span: sp(file, e.span()),
        })
        .labelled("`std` or a file path string")
        .then(
            just(Token::ColonColon)
                .ignore_then(explicit.or(ident(file).map(|i| UseTarget::Names(vec![i]))))
                .or_not()
                .map(|t| t.unwrap_or(UseTarget::Module)),
        );
    just(Token::Use)
        .ignore_then(std_src.or(file_src))
        .map_with(move |(source, target), e| UseDecl {
            comments: Comments::default(),
            source,
            target,
            span: sp(file, e.span()),
        })
}

fn fn_parser<'a, I>(file: FileId) -> impl Parser<'a, I, FnDecl, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    let expr = expr_parser(file);
    let param = ident(file)
        .then_ignore(just(Token::Colon))
        .then(type_parser(file))
        .then(just(Token::Assign).ignore_then(expr.clone()).or_not())
        .map_with(move |((name, ty), default), e| FnParam {
            name,
            ty,
            default,
            span: sp(file, e.span()),
        })
        .labelled("parameter");
    let params = param
        .separated_by(just(Token::Comma))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(
            just(Token::CallParen).or(just(Token::LParen)),
            just(Token::RParen),
        );
    let body = just(Token::Assign)
        .ignore_then(expr.clone())
        .map(|value| {
            let span = value.span;
            (
                Block {
                    lets: Vec::new(),
                    value: Box::new(value),
                    span,
                },
                true,
            )
        })
        .or(block_parser(file, expr).map(|b| (b, false)))
        .labelled("`=` or a `{` block");
    just(Token::Fn)
        .ignore_then(ident(file).labelled("function name"))
        .then(params)
        .then(just(Token::Arrow).ignore_then(type_parser(file)).or_not())
        .then(body)
        .map_with(
            move |(((name, params), ret), (body, expr_body)), e| FnDecl {
                comments: Comments::default(),
                doc: Vec::new(),
                name,
                params,
                ret,
                body,
                expr_body,
                span: sp(file, e.span()),
            },
        )
}

fn objective_parser<'a, I>(file: FileId) -> impl Parser<'a, I, ObjectiveDecl, Ex<'a>> + Clone
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    // A missing `}` is reported but the declarations are kept.
    let close = just(Token::RBrace)
        .ignored()
        .recover_with(via_parser(empty()));
    just(Token::Objective)
        .ignore_then(ident(file).labelled("objective name"))
        .then_ignore(just(Token::LBrace))
        .then(decl_parser(file).repeated().collect::<Vec<_>>())
        .then_ignore(close)
        .map_with(move |(name, decls), e| ObjectiveDecl {
            comments: Comments::default(),
            doc: Vec::new(),
            name,
            decls,
            span: sp(file, e.span()),
            trailing_comments: Vec::new(),
        })
}

fn module_parser<'a, I>(file: FileId) -> impl Parser<'a, I, Module, Ex<'a>>
where
    I: ValueInput<'a, Token = Token, Span = SimpleSpan>,
{
    let item = choice((
        use_parser(file).map(Item::Use),
        fn_parser(file).map(Item::Fn),
        objective_parser(file).map(Item::Objective),
    ))
    .labelled("item");
    let skip = any()
        .then(any().and_is(one_of(ITEM_START).not()).repeated())
        .map_with(move |_, e| Item::Error(sp(file, e.span())));
    item.recover_with(via_parser(skip))
        .repeated()
        .collect::<Vec<_>>()
        .then_ignore(end())
        .map(|items| Module {
            doc: Vec::new(),
            items,
            trailing_comments: Vec::new(),
        })
}
