//! Comments: split off before parsing, re-attached to statements afterwards.
//!
//! Rules (the printer relies on them for `print(parse(print(m))) == print(m)`):
//! * `//!` lines before the end of the first item are the module doc; later ones are comments.
//! * A comment on the same line right after a statement is that statement's `trailing`.
//! * Comments between statements lead the next statement; `///` there are its doc when it
//!   has a doc slot (`fn`, `objective`, declarations), else plain comments.
//! * Comments inside a statement that holds no finer statement move to its leading
//!   comments (the tree has no slot inside expressions), so no text is ever lost.
//! * Comments after the last statement of a file or objective are its trailing comments.
//!
//! A `///` or `//!` kept as a plain comment stores `/…` or `!…`, so it prints back verbatim.

use crate::ast::*;
use crate::lexer::Token;
use crate::syntax_error::SyntaxError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Doc,
    ModuleDoc,
}

#[derive(Clone, Debug)]
struct Trivium {
    kind: Kind,
    text: String,
    span: Span,
}

impl Trivium {
    /// The text as a plain comment (after `//`).
    fn plain(self) -> String {
        match self.kind {
            Kind::Plain => self.text,
            Kind::Doc => format!("/{}", self.text),
            Kind::ModuleDoc => format!("!{}", self.text),
        }
    }
}

/// The comments of a file, in source order.
pub struct Trivia(Vec<Trivium>);

/// Separates comment tokens from the tokens the grammar sees.
pub fn split(tokens: Vec<(Token, Span)>) -> (Trivia, Vec<(Token, Span)>) {
    let mut trivia = Vec::new();
    let mut rest = Vec::with_capacity(tokens.len());
    for (t, span) in tokens {
        match t {
            Token::Comment(text) => trivia.push(Trivium {
                kind: Kind::Plain,
                text,
                span,
            }),
            Token::DocComment(text) => trivia.push(Trivium {
                kind: Kind::Doc,
                text,
                span,
            }),
            Token::ModuleDoc(text) => trivia.push(Trivium {
                kind: Kind::ModuleDoc,
                text,
                span,
            }),
            t => rest.push((t, span)),
        }
    }
    (Trivia(trivia), rest)
}

/// Where each comment of one container goes.
struct Placement {
    leading: Vec<Vec<Trivium>>,
    trailing: Vec<Option<Trivium>>,
    inside: Vec<Vec<Trivium>>,
    rest: Vec<Trivium>,
}

fn place(stmts: &[Span], comments: Vec<Trivium>, src: &str) -> Placement {
    let n = stmts.len();
    let mut p = Placement {
        leading: vec![Vec::new(); n],
        trailing: vec![None; n],
        inside: vec![Vec::new(); n],
        rest: Vec::new(),
    };
    for c in comments {
        // First statement that starts after the comment.
        let i = stmts.partition_point(|s| s.start < c.span.end);
        if i > 0 {
            let prev = stmts[i - 1];
            if prev.start <= c.span.start && c.span.start < prev.end {
                p.inside[i - 1].push(c);
                continue;
            }
            let between = src.get(prev.end..c.span.start).unwrap_or("\n");
            if p.trailing[i - 1].is_none() && c.kind != Kind::ModuleDoc && !between.contains('\n') {
                p.trailing[i - 1] = Some(c);
                continue;
            }
        }
        if i < n {
            p.leading[i].push(c);
        } else {
            p.rest.push(c);
        }
    }
    p
}

/// Splits a statement's comments into (plain leading, doc) given whether it has a doc slot.
fn leading_and_doc(list: Vec<Trivium>, has_doc: bool) -> (Vec<String>, Vec<String>) {
    let mut leading = Vec::new();
    let mut doc = Vec::new();
    for c in list {
        if has_doc && c.kind == Kind::Doc {
            doc.push(c.text);
        } else {
            leading.push(c.plain());
        }
    }
    (leading, doc)
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Use(u) => u.span,
        Item::Fn(f) => f.span,
        Item::Objective(o) => o.span,
        Item::Error(s) => *s,
    }
}

/// Re-attaches the comments to the parsed module. Returns no errors today; the signature
/// leaves room for comment lints.
pub fn attach(module: &mut Module, trivia: Trivia, src: &str) -> Vec<SyntaxError> {
    // Up to the end of the first item: a `//!` inside it moves to the top when printed.
    let first_item = module
        .items
        .first()
        .map_or(usize::MAX, |i| item_span(i).end);
    let mut comments = Vec::new();
    for c in trivia.0 {
        if c.kind == Kind::ModuleDoc && c.span.start < first_item {
            module.doc.push(c.text);
        } else {
            comments.push(c);
        }
    }
    // Error items have no comment slot; their comments flow to the neighbours.
    let anchors: Vec<usize> = (0..module.items.len())
        .filter(|&i| !matches!(module.items[i], Item::Error(_)))
        .collect();
    let spans: Vec<Span> = anchors
        .iter()
        .map(|&i| item_span(&module.items[i]))
        .collect();
    let p = place(&spans, comments, src);
    module.trailing_comments = p.rest.into_iter().map(Trivium::plain).collect();
    let parts = p.leading.into_iter().zip(p.trailing).zip(p.inside);
    for (&idx, ((leading, trailing), inside)) in anchors.iter().zip(parts) {
        let trailing = trailing.map(Trivium::plain);
        match &mut module.items[idx] {
            Item::Use(u) => {
                let mut all = leading;
                all.extend(inside);
                u.comments = Comments {
                    leading: all.into_iter().map(Trivium::plain).collect(),
                    trailing,
                };
            }
            Item::Fn(f) => attach_fn(f, leading, trailing, inside, src),
            Item::Objective(o) => attach_objective(o, leading, trailing, inside, src),
            Item::Error(_) => {}
        }
    }
    Vec::new()
}

fn attach_fn(
    f: &mut FnDecl,
    leading: Vec<Trivium>,
    trailing: Option<String>,
    inside: Vec<Trivium>,
    src: &str,
) {
    let spans: Vec<Span> = if f.expr_body {
        Vec::new()
    } else {
        f.body.lets.iter().map(|l| l.span).collect()
    };
    let p = place(&spans, inside, src);
    let mut outer = leading;
    for (l, ((lead, trail), ins)) in f
        .body
        .lets
        .iter_mut()
        .zip(p.leading.into_iter().zip(p.trailing).zip(p.inside))
    {
        let mut all = lead;
        all.extend(ins);
        l.comments = Comments {
            leading: all.into_iter().map(Trivium::plain).collect(),
            trailing: trail.map(Trivium::plain),
        };
    }
    // Comments in the signature or around the final value have no slot of their own.
    outer.extend(p.rest);
    let (lead, doc) = leading_and_doc(outer, true);
    f.comments = Comments {
        leading: lead,
        trailing,
    };
    f.doc = doc;
}

fn attach_objective(
    o: &mut ObjectiveDecl,
    leading: Vec<Trivium>,
    trailing: Option<String>,
    inside: Vec<Trivium>,
    src: &str,
) {
    let spans: Vec<Span> = o.decls.iter().map(|d| d.span).collect();
    let p = place(&spans, inside, src);
    for (d, ((lead, trail), ins)) in o
        .decls
        .iter_mut()
        .zip(p.leading.into_iter().zip(p.trailing).zip(p.inside))
    {
        let mut all = lead;
        all.extend(ins);
        let (lead, doc) = leading_and_doc(all, true);
        d.comments = Comments {
            leading: lead,
            trailing: trail.map(Trivium::plain),
        };
        d.doc = doc;
    }
    o.trailing_comments = p.rest.into_iter().map(Trivium::plain).collect();
    let (lead, doc) = leading_and_doc(leading, true);
    o.comments = Comments {
        leading: lead,
        trailing,
    };
    o.doc = doc;
}
