//! Span erasure, so trees from different sources (e.g. `m` and `parse(print(m))`) compare
//! with `==`. Comments are content and are kept.

use crate::ast::*;

const Z: Span = Span {
    file: 0,
    start: 0,
    end: 0,
};

fn id(i: &Ident) -> Ident {
    Ident {
        name: i.name.clone(),
        span: Z,
    }
}

fn ids(v: &[Ident]) -> Vec<Ident> {
    v.iter().map(id).collect()
}

impl Module {
    /// A copy with every [`Span`] zeroed (file 0, 0..0).
    pub fn without_spans(&self) -> Module {
        Module {
            doc: self.doc.clone(),
            items: self.items.iter().map(Item::without_spans).collect(),
            trailing_comments: self.trailing_comments.clone(),
        }
    }
}

impl Item {
    pub fn without_spans(&self) -> Item {
        match self {
            Item::Use(u) => Item::Use(UseDecl {
                comments: u.comments.clone(),
                source: match &u.source {
                    UseSource::Std(p) => UseSource::Std(ids(p)),
                    UseSource::File { path, .. } => UseSource::File {
                        path: path.clone(),
                        span: Z,
                    },
                },
                target: match &u.target {
                    UseTarget::Module => UseTarget::Module,
                    UseTarget::Names(n) => UseTarget::Names(ids(n)),
                    UseTarget::Glob(_) => UseTarget::Glob(Z),
                },
                span: Z,
            }),
            Item::Fn(f) => Item::Fn(FnDecl {
                comments: f.comments.clone(),
                doc: f.doc.clone(),
                name: id(&f.name),
                params: f
                    .params
                    .iter()
                    .map(|p| FnParam {
                        name: id(&p.name),
                        ty: p.ty.without_spans(),
                        default: p.default.as_ref().map(Expr::without_spans),
                        span: Z,
                    })
                    .collect(),
                ret: f.ret.as_ref().map(TypeExpr::without_spans),
                body: f.body.without_spans(),
                expr_body: f.expr_body,
                span: Z,
            }),
            Item::Objective(o) => Item::Objective(ObjectiveDecl {
                comments: o.comments.clone(),
                doc: o.doc.clone(),
                name: id(&o.name),
                decls: o.decls.iter().map(Decl::without_spans).collect(),
                span: Z,
                trailing_comments: o.trailing_comments.clone(),
            }),
            Item::Error(_) => Item::Error(Z),
        }
    }
}

impl TypeExpr {
    pub fn without_spans(&self) -> TypeExpr {
        let kind = match &self.kind {
            TypeKind::F32(s) => TypeKind::F32(s.as_ref().map(id)),
            TypeKind::Bool(s) => TypeKind::Bool(s.as_ref().map(id)),
            TypeKind::Id(s) => TypeKind::Id(id(s)),
            TypeKind::Str => TypeKind::Str,
            TypeKind::Enum(v) => TypeKind::Enum(v.iter().map(|(s, _)| (s.clone(), Z)).collect()),
            TypeKind::Error => TypeKind::Error,
        };
        TypeExpr {
            kind,
            channel: self.channel.as_ref().map(id),
            span: Z,
        }
    }
}

impl Block {
    pub fn without_spans(&self) -> Block {
        Block {
            lets: self.lets.iter().map(Let::without_spans).collect(),
            value: Box::new(self.value.without_spans()),
            span: Z,
        }
    }
}

impl Let {
    pub fn without_spans(&self) -> Let {
        Let {
            comments: self.comments.clone(),
            name: id(&self.name),
            value: self.value.without_spans(),
            span: Z,
        }
    }
}

impl Decl {
    pub fn without_spans(&self) -> Decl {
        let e = Expr::without_spans;
        let kind = match &self.kind {
            DeclKind::Input {
                name,
                ty,
                grad,
                declares,
                default,
            } => DeclKind::Input {
                name: id(name),
                ty: ty.without_spans(),
                grad: grad.map(|_| Z),
                declares: declares.as_ref().map(|d| SpaceDecl {
                    name: id(&d.name),
                    parent: d.parent.as_ref().map(id),
                }),
                default: default.as_ref().map(e),
            },
            DeclKind::Param { name, ty, default } => DeclKind::Param {
                name: id(name),
                ty: ty.without_spans(),
                default: e(default),
            },
            DeclKind::Const { name, ty, value } => DeclKind::Const {
                name: id(name),
                ty: ty.as_ref().map(TypeExpr::without_spans),
                value: e(value),
            },
            DeclKind::State { name, ty, init } => DeclKind::State {
                name: id(name),
                ty: ty.without_spans(),
                init: e(init),
            },
            DeclKind::Let(l) => DeclKind::Let(l.without_spans()),
            DeclKind::Loss(v) => DeclKind::Loss(e(v)),
            DeclKind::Metric { name, value } => DeclKind::Metric {
                name: id(name),
                value: e(value),
            },
            DeclKind::Output { name, value } => DeclKind::Output {
                name: id(name),
                value: e(value),
            },
            DeclKind::Update { name, value } => DeclKind::Update {
                name: id(name),
                value: e(value),
            },
            DeclKind::Error => DeclKind::Error,
        };
        Decl {
            comments: self.comments.clone(),
            doc: self.doc.clone(),
            kind,
            span: Z,
        }
    }
}

impl Expr {
    /// Recursion depth equals tree depth, which the parser bounds
    /// ([`crate::parser::MAX_EXPR_DEPTH`]).
    pub fn without_spans(&self) -> Expr {
        let b = |x: &Expr| Box::new(x.without_spans());
        let kind = match &self.kind {
            ExprKind::Number { value, raw } => ExprKind::Number {
                value: *value,
                raw: raw.clone(),
            },
            ExprKind::Bool(v) => ExprKind::Bool(*v),
            ExprKind::Str(s) => ExprKind::Str(s.clone()),
            ExprKind::Var(p) => ExprKind::Var(ids(p)),
            ExprKind::Unary(op, x) => ExprKind::Unary(*op, b(x)),
            ExprKind::Binary(op, l, r) => ExprKind::Binary(*op, b(l), b(r)),
            ExprKind::Call {
                callee,
                space,
                args,
            } => ExprKind::Call {
                callee: ids(callee),
                space: space.as_ref().map(id),
                args: args
                    .iter()
                    .map(|a| Arg {
                        name: a.name.as_ref().map(id),
                        value: a.value.without_spans(),
                    })
                    .collect(),
            },
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => ExprKind::If {
                cond: b(cond),
                then: then.without_spans(),
                otherwise: Box::new(match &**otherwise {
                    Else::Block(bl) => Else::Block(bl.without_spans()),
                    Else::If(x) => Else::If(x.without_spans()),
                }),
            },
            ExprKind::Where(l, r) => ExprKind::Where(b(l), b(r)),
            ExprKind::Error => ExprKind::Error,
        };
        Expr { kind, span: Z }
    }
}
