//! The spanned syntax tree of one `.obj` file, as the parser produces it and the formatter
//! prints it.
//!
//! Parentheses are not nodes: the printer inserts the minimal parentheses the precedence
//! table needs, so `parse(print(m))` equals `m` up to spans (compare with
//! [`Module::without_spans`]). Comments are kept on the statement they precede
//! (`comments`) or end (`trailing`) so that `rlobj fmt` never drops text.
//! Nodes that failed to parse are `Error` variants that later passes skip silently.

/// Which loaded source a span points into (index into the source map of the session).
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span { file, start, end }
    }
    /// The smallest span covering both (same file assumed).
    pub fn join(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// An identifier with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// Leading `//` comments (each without the `//`) and an optional trailing comment on the
/// statement's last line.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Comments {
    pub leading: Vec<String>,
    pub trailing: Option<String>,
}

/// One file.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    /// `//!` lines at the top of the file.
    pub doc: Vec<String>,
    pub items: Vec<Item>,
    /// Comments after the last item.
    pub trailing_comments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Use(UseDecl),
    Fn(FnDecl),
    Objective(ObjectiveDecl),
    /// An item that failed to parse; the error was already reported.
    Error(Span),
}

/// `use std::ppo::{ratio, clip}` · `use std::ppo::ratio` · `use std::ppo` · `use "util.obj"::{f}`
#[derive(Clone, Debug, PartialEq)]
pub struct UseDecl {
    pub comments: Comments,
    pub source: UseSource,
    pub target: UseTarget,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum UseSource {
    /// `std::a::b` — a module of the embedded standard library (`stdlib/a/b.obj`).
    Std(Vec<Ident>),
    /// `"path.obj"` — a file relative to the importing file.
    File { path: String, span: Span },
}

#[derive(Clone, Debug, PartialEq)]
pub enum UseTarget {
    /// `use std::ppo` — names are used qualified: `ppo::ratio(..)`.
    Module,
    /// `use std::ppo::{a, b}` or `use std::ppo::a`.
    Names(Vec<Ident>),
    /// `use std::ppo::*`
    Glob(Span),
}

/// `fn name(params) -> type = expr` or `fn name(params) -> type { lets… expr }`
#[derive(Clone, Debug, PartialEq)]
pub struct FnDecl {
    pub comments: Comments,
    /// `///` lines, without the slashes.
    pub doc: Vec<String>,
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: Option<TypeExpr>,
    pub body: Block,
    /// true for the `= expr` form (kept so the printer reproduces it).
    pub expr_body: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    pub span: Span,
}

/// `f32`, `f32[tok]`, `bool[S]`, `f32[seq, chan]`, `id[seq]`, `str`, `"a" | "b"`.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeKind,
    /// The channel axis of `f32[space, axis]` / `bool[space, axis]`: a `const` of the
    /// objective giving the number of channels (`f32[axis]` alone parses as a space and
    /// is told apart when lowering).
    pub channel: Option<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    /// `f32` or `f32[space]`.
    F32(Option<Ident>),
    /// `bool` or `bool[space]`.
    Bool(Option<Ident>),
    /// `id[seq]` / `id[tok]`: an id input that declares a segment space.
    Id(Ident),
    /// `str`: a compile-time string.
    Str,
    /// `"a" | "b" | …`: a compile-time string restricted to these values.
    Enum(Vec<(String, Span)>),
    /// Failed to parse.
    Error,
}

/// `{ let a = …  let b = …  value }`
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub lets: Vec<Let>,
    pub value: Box<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Let {
    pub comments: Comments,
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveDecl {
    pub comments: Comments,
    pub doc: Vec<String>,
    pub name: Ident,
    pub decls: Vec<Decl>,
    pub span: Span,
    /// Comments after the last declaration, before `}`.
    pub trailing_comments: Vec<String>,
}

/// One declaration inside `objective { … }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    pub comments: Comments,
    pub doc: Vec<String>,
    pub kind: DeclKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DeclKind {
    /// `input name: type [@grad] [as space [in parent]] [= default]`
    Input {
        name: Ident,
        ty: TypeExpr,
        grad: Option<Span>,
        /// For `id[…]` inputs: the space it declares, and the space it nests in.
        declares: Option<SpaceDecl>,
        default: Option<Expr>,
    },
    /// `param name: type = default` (runtime scalar)
    Param {
        name: Ident,
        ty: TypeExpr,
        default: Expr,
    },
    /// `const name[: type] = value` (compile time)
    Const {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Expr,
    },
    /// `state name: f32 = init` (persistent scalar)
    State {
        name: Ident,
        ty: TypeExpr,
        init: Expr,
    },
    Let(Let),
    /// `loss = expr`
    Loss(Expr),
    /// `metric name = expr`
    Metric {
        name: Ident,
        value: Expr,
    },
    /// `output name = expr`
    Output {
        name: Ident,
        value: Expr,
    },
    /// `update name = expr`
    Update {
        name: Ident,
        value: Expr,
    },
    /// Failed to parse.
    Error,
}

/// `as grp` or `as sub in grp` after an `id[…]` input.
#[derive(Clone, Debug, PartialEq)]
pub struct SpaceDecl {
    pub name: Ident,
    pub parent: Option<Ident>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal; `raw` is the source text so the printer reproduces it.
    Number {
        value: f64,
        raw: String,
    },
    Bool(bool),
    Str(String),
    /// `name` or `module::name`.
    Var(Vec<Ident>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args)`, `ppo::f(args)`, `mean[seq](args)`.
    Call {
        callee: Vec<Ident>,
        space: Option<Ident>,
        args: Vec<Arg>,
    },
    /// `if c { … } else if d { … } else { … }`
    If {
        cond: Box<Expr>,
        then: Block,
        otherwise: Box<Else>,
    },
    /// `value where keep` — only meaningful as the first argument of a reduction.
    Where(Box<Expr>, Box<Expr>),
    /// Failed to parse.
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Else {
    Block(Block),
    If(Expr),
}

/// A call argument: positional or `name: value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}
