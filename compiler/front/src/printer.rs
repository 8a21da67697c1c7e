//! The canonical pretty-printer behind `rlobj fmt`.
//!
//! Layout depends only on the tree (never on source positions), which makes formatting
//! idempotent: 4-space indent, one declaration per line, minimal parentheses from the
//! precedence table, lines up to [`WIDTH`] columns. A call that does not fit puts one
//! argument per line; a binary chain that still does not fit breaks before its operators.
//! Blank lines: between items (not between consecutive `use`s) and, inside an objective,
//! between groups (inputs · params/consts/states · lets · results) and before a doc comment.

use crate::ast::*;

/// Target line width.
pub const WIDTH: usize = 100;
const INDENT: &str = "    ";

/// Formats a module canonically.
pub fn print(m: &Module) -> String {
    let mut p = Printer {
        out: String::new(),
        indent: 0,
    };
    p.module(m);
    p.out
}

/// Formats one expression on a single line (for diagnostics and docs).
pub fn print_expr(e: &Expr) -> String {
    let mut p = Printer {
        out: String::new(),
        indent: 0,
    };
    p.expr(e, 0);
    p.out
}

/// Formats a type.
pub fn print_type(t: &TypeExpr) -> String {
    type_str(t)
}

/// Binding strength: higher binds tighter. Atoms are 8.
fn prec(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Where(..) => 1,
        ExprKind::Binary(op, ..) => binop_prec(*op),
        ExprKind::Unary(..) => 7,
        _ => 8,
    }
}

fn binop_prec(op: BinOp) -> u8 {
    match op {
        BinOp::Or => 2,
        BinOp::And => 3,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
        BinOp::Add | BinOp::Sub => 5,
        BinOp::Mul | BinOp::Div => 6,
    }
}

fn binop_str(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::And => "&&",
        BinOp::Or => "||",
    }
}

/// A string literal with the language's escapes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path(p: &[Ident]) -> String {
    p.iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join("::")
}

fn type_str(t: &TypeExpr) -> String {
    if let (TypeKind::F32(Some(s)) | TypeKind::Bool(Some(s)), Some(axis)) = (&t.kind, &t.channel) {
        let elem = if matches!(t.kind, TypeKind::F32(_)) {
            "f32"
        } else {
            "bool"
        };
        return format!("{elem}[{}, {}]", s.name, axis.name);
    }
    match &t.kind {
        TypeKind::F32(None) => "f32".to_string(),
        TypeKind::F32(Some(s)) => format!("f32[{}]", s.name),
        TypeKind::Bool(None) => "bool".to_string(),
        TypeKind::Bool(Some(s)) => format!("bool[{}]", s.name),
        TypeKind::Id(s) => format!("id[{}]", s.name),
        TypeKind::Str => "str".to_string(),
        TypeKind::Enum(v) => v
            .iter()
            .map(|(s, _)| quote(s))
            .collect::<Vec<_>>()
            .join(" | "),
        TypeKind::Error => "<error>".to_string(),
    }
}

/// The single-line form of an expression, or `None` when it must span lines (a block
/// with `let`s or comments).
fn flat(e: &Expr, min: u8) -> Option<String> {
    let inner = match &e.kind {
        ExprKind::Number { raw, .. } => raw.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => quote(s),
        ExprKind::Var(p) => path(p),
        ExprKind::Error => "<error>".to_string(),
        ExprKind::Unary(op, x) => {
            let o = if *op == UnOp::Neg { "-" } else { "!" };
            format!("{o}{}", flat(x, 7)?)
        }
        ExprKind::Binary(op, l, r) => {
            let p = binop_prec(*op);
            format!("{} {} {}", flat(l, p)?, binop_str(*op), flat(r, p + 1)?)
        }
        ExprKind::Where(l, r) => format!("{} where {}", flat(l, 1)?, flat(r, 2)?),
        ExprKind::Call {
            callee,
            space,
            args,
        } => {
            let mut s = path(callee);
            if let Some(sp) = space {
                s.push_str(&format!("[{}]", sp.name));
            }
            s.push('(');
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                if let Some(n) = &a.name {
                    s.push_str(&format!("{}: ", n.name));
                }
                s.push_str(&flat(&a.value, 0)?);
            }
            s.push(')');
            s
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            let mut s = format!("if {} {}", flat(cond, 0)?, flat_block(then)?);
            let mut other = &**otherwise;
            loop {
                match other {
                    Else::Block(b) => {
                        s.push_str(&format!(" else {}", flat_block(b)?));
                        break;
                    }
                    Else::If(x) => match &x.kind {
                        ExprKind::If {
                            cond,
                            then,
                            otherwise,
                        } => {
                            s.push_str(&format!(
                                " else if {} {}",
                                flat(cond, 0)?,
                                flat_block(then)?
                            ));
                            other = otherwise;
                        }
                        // Not produced by the parser; keep it printable.
                        _ => {
                            s.push_str(&format!(" else {{ {} }}", flat(x, 0)?));
                            break;
                        }
                    },
                }
            }
            s
        }
    };
    Some(if prec(e) < min {
        format!("({inner})")
    } else {
        inner
    })
}

fn flat_block(b: &Block) -> Option<String> {
    if !b.lets.is_empty() {
        return None;
    }
    Some(format!("{{ {} }}", flat(&b.value, 0)?))
}

struct Printer {
    out: String,
    indent: usize,
}

impl Printer {
    fn col(&self) -> usize {
        let line = self.out.rsplit('\n').next().unwrap_or("");
        line.chars().count()
    }

    fn newline(&mut self) {
        // Never leave trailing spaces on the line being closed.
        while self.out.ends_with(' ') {
            self.out.pop();
        }
        self.out.push('\n');
        for _ in 0..self.indent {
            self.out.push_str(INDENT);
        }
    }

    /// Starts a fresh line at the current indent (no-op at the start of the output).
    fn line(&mut self) {
        if !self.out.is_empty() {
            self.newline();
        }
    }

    fn blank(&mut self) {
        while self.out.ends_with(' ') {
            self.out.pop();
        }
        if !self.out.is_empty() {
            self.out.push('\n');
        }
    }

    fn comment_lines(&mut self, prefix: &str, lines: &[String]) {
        for l in lines {
            self.line();
            self.out.push_str(prefix);
            self.out.push_str(l);
        }
    }

    fn trailing(&mut self, c: &Comments) {
        if let Some(t) = &c.trailing {
            self.out.push_str(" //");
            self.out.push_str(t);
        }
    }

    fn module(&mut self, m: &Module) {
        self.comment_lines("//!", &m.doc);
        let mut prev_use = false;
        for (i, item) in m.items.iter().enumerate() {
            let is_use = matches!(item, Item::Use(_));
            if (i > 0 && !(prev_use && is_use)) || (i == 0 && !m.doc.is_empty()) {
                self.blank();
            }
            prev_use = is_use;
            match item {
                Item::Use(u) => self.use_decl(u),
                Item::Fn(f) => self.fn_decl(f),
                Item::Objective(o) => self.objective(o),
                Item::Error(_) => {
                    self.line();
                    self.out.push_str("<error>");
                }
            }
        }
        if !m.trailing_comments.is_empty() && !self.out.is_empty() {
            self.blank();
        }
        self.comment_lines("//", &m.trailing_comments);
        if !self.out.is_empty() {
            self.out.push('\n');
        }
    }

    fn use_decl(&mut self, u: &UseDecl) {
        self.comment_lines("//", &u.comments.leading);
        self.line();
        self.out.push_str("use ");
        match &u.source {
            UseSource::Std(p) => {
                self.out.push_str("std");
                for seg in p {
                    self.out.push_str("::");
                    self.out.push_str(&seg.name);
                }
            }
            UseSource::File { path, .. } => self.out.push_str(&quote(path)),
        }
        match &u.target {
            UseTarget::Module => {}
            UseTarget::Glob(_) => self.out.push_str("::*"),
            UseTarget::Names(n) if n.len() == 1 => {
                self.out.push_str("::");
                self.out.push_str(&n[0].name);
            }
            UseTarget::Names(n) => {
                let names: Vec<&str> = n.iter().map(|i| i.name.as_str()).collect();
                self.out.push_str(&format!("::{{{}}}", names.join(", ")));
            }
        }
        self.trailing(&u.comments);
    }

    fn fn_decl(&mut self, f: &FnDecl) {
        self.comment_lines("//", &f.comments.leading);
        self.comment_lines("///", &f.doc);
        self.line();
        let params: Vec<Option<String>> = f
            .params
            .iter()
            .map(|p| {
                let d = match &p.default {
                    Some(d) => format!(" = {}", flat(d, 0)?),
                    None => String::new(),
                };
                Some(format!("{}: {}{d}", p.name.name, type_str(&p.ty)))
            })
            .collect();
        let ret = f
            .ret
            .as_ref()
            .map(|t| format!(" -> {}", type_str(t)))
            .unwrap_or_default();
        let one_line: Option<Vec<String>> = params.iter().cloned().collect();
        let sig = one_line.map(|ps| format!("fn {}({}){ret}", f.name.name, ps.join(", ")));
        match sig.filter(|s| self.col() + s.len() + 2 <= WIDTH) {
            Some(s) => self.out.push_str(&s),
            None => {
                self.out.push_str(&format!("fn {}(", f.name.name));
                self.indent += 1;
                for p in &f.params {
                    self.newline();
                    self.out
                        .push_str(&format!("{}: {}", p.name.name, type_str(&p.ty)));
                    if let Some(d) = &p.default {
                        self.out.push_str(" = ");
                        self.expr(d, 0);
                    }
                    self.out.push(',');
                }
                self.indent -= 1;
                self.newline();
                self.out.push(')');
                self.out.push_str(&ret);
            }
        }
        if f.expr_body && f.body.lets.is_empty() {
            self.out.push_str(" =");
            let fits = flat(&f.body.value, 0).is_some_and(|s| self.col() + 1 + s.len() <= WIDTH);
            self.indent += 1;
            if fits {
                self.out.push(' ');
            } else {
                self.newline();
            }
            self.expr(&f.body.value, 0);
            self.indent -= 1;
        } else {
            self.out.push(' ');
            self.block(&f.body);
        }
        self.trailing(&f.comments);
    }

    /// `{`, the lets and the value on their own lines, `}`.
    fn block(&mut self, b: &Block) {
        self.out.push('{');
        self.indent += 1;
        for l in &b.lets {
            self.let_(l);
        }
        self.newline();
        // After a `let`, a leading `-` would continue the let's value as a subtraction.
        let min = if !b.lets.is_empty() && starts_with_minus(&b.value, 0) {
            8
        } else {
            0
        };
        self.expr(&b.value, min);
        self.indent -= 1;
        self.newline();
        self.out.push('}');
    }

    fn let_(&mut self, l: &Let) {
        self.comment_lines("//", &l.comments.leading);
        self.line();
        self.out.push_str(&format!("let {} = ", l.name.name));
        self.expr(&l.value, 0);
        self.trailing(&l.comments);
    }

    fn objective(&mut self, o: &ObjectiveDecl) {
        self.comment_lines("//", &o.comments.leading);
        self.comment_lines("///", &o.doc);
        self.line();
        self.out.push_str(&format!("objective {} {{", o.name.name));
        self.indent += 1;
        let mut prev: Option<u8> = None;
        for d in &o.decls {
            let g = group(&d.kind).or(prev);
            if prev.is_some() && (g != prev || !d.doc.is_empty()) {
                self.blank();
            }
            prev = g;
            self.decl(d);
        }
        self.comment_lines("//", &o.trailing_comments);
        self.indent -= 1;
        self.newline();
        self.out.push('}');
        self.trailing(&o.comments);
    }

    fn decl(&mut self, d: &Decl) {
        self.comment_lines("//", &d.comments.leading);
        if let DeclKind::Let(l) = &d.kind {
            // A let's own comments (only in hand-built trees) print with the declaration's.
            self.comment_lines("//", &l.comments.leading);
        }
        self.comment_lines("///", &d.doc);
        self.line();
        match &d.kind {
            DeclKind::Input {
                name,
                ty,
                grad,
                declares,
                default,
            } => {
                self.out
                    .push_str(&format!("input {}: {}", name.name, type_str(ty)));
                if grad.is_some() {
                    self.out.push_str(" @grad");
                }
                if let Some(sd) = declares {
                    self.out.push_str(&format!(" as {}", sd.name.name));
                    if let Some(p) = &sd.parent {
                        self.out.push_str(&format!(" in {}", p.name));
                    }
                }
                if let Some(e) = default {
                    self.out.push_str(" = ");
                    self.expr(e, 0);
                }
            }
            DeclKind::Param { name, ty, default } => {
                self.assign(&format!("param {}: {}", name.name, type_str(ty)), default)
            }
            DeclKind::Const {
                name,
                ty: Some(ty),
                value,
            } => self.assign(&format!("const {}: {}", name.name, type_str(ty)), value),
            DeclKind::Const {
                name,
                ty: None,
                value,
            } => self.assign(&format!("const {}", name.name), value),
            DeclKind::State { name, ty, init } => {
                self.assign(&format!("state {}: {}", name.name, type_str(ty)), init)
            }
            DeclKind::Let(l) => {
                self.assign(&format!("let {}", l.name.name), &l.value);
                self.trailing(&l.comments);
            }
            DeclKind::Loss(v) => self.assign("loss", v),
            DeclKind::Metric { name, value } => {
                self.assign(&format!("metric {}", name.name), value)
            }
            DeclKind::Output { name, value } => {
                self.assign(&format!("output {}", name.name), value)
            }
            DeclKind::Update { name, value } => {
                self.assign(&format!("update {}", name.name), value)
            }
            DeclKind::Error => self.out.push_str("<error>"),
        }
        self.trailing(&d.comments);
    }

    fn assign(&mut self, head: &str, value: &Expr) {
        self.out.push_str(head);
        self.out.push_str(" = ");
        self.expr(value, 0);
    }

    /// Prints `e` at the cursor, breaking lines only when its flat form does not fit.
    fn expr(&mut self, e: &Expr, min: u8) {
        if let Some(s) = flat(e, min) {
            if self.col() + s.len() <= WIDTH {
                self.out.push_str(&s);
                return;
            }
        }
        let parens = prec(e) < min;
        if parens {
            self.out.push('(');
        }
        match &e.kind {
            ExprKind::Unary(op, x) => {
                self.out.push_str(if *op == UnOp::Neg { "-" } else { "!" });
                self.expr(x, 7);
            }
            ExprKind::Binary(op, l, r) => {
                let p = binop_prec(*op);
                self.chain(l, p, binop_str(*op), r, p + 1);
            }
            ExprKind::Where(l, r) => self.chain(l, 1, "where", r, 2),
            ExprKind::Call {
                callee,
                space,
                args,
            } => {
                self.out.push_str(&path(callee));
                if let Some(sp) = space {
                    self.out.push_str(&format!("[{}]", sp.name));
                }
                self.out.push('(');
                self.indent += 1;
                for a in args {
                    self.newline();
                    if let Some(n) = &a.name {
                        self.out.push_str(&format!("{}: ", n.name));
                    }
                    self.expr(&a.value, 0);
                    self.out.push(',');
                }
                self.indent -= 1;
                self.newline();
                self.out.push(')');
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                self.out.push_str("if ");
                self.expr(cond, 0);
                self.out.push(' ');
                self.block(then);
                match &**otherwise {
                    Else::Block(b) => {
                        self.out.push_str(" else ");
                        self.block(b);
                    }
                    Else::If(x) if matches!(x.kind, ExprKind::If { .. }) => {
                        self.out.push_str(" else ");
                        self.expr(x, 0);
                    }
                    Else::If(x) => {
                        let b = Block {
                            lets: Vec::new(),
                            value: Box::new(x.clone()),
                            span: x.span,
                        };
                        self.out.push_str(" else ");
                        self.block(&b);
                    }
                }
            }
            // Atoms without a flat form do not exist; print them flat anyway.
            _ => {
                let s = flat(e, 8).unwrap_or_default();
                self.out.push_str(&s);
            }
        }
        if parens {
            self.out.push(')');
        }
    }

    /// `l op r`, breaking before `op` (one indent deeper) when `r` does not fit.
    fn chain(&mut self, l: &Expr, lmin: u8, op: &str, r: &Expr, rmin: u8) {
        self.expr(l, lmin);
        let rflat = flat(r, rmin);
        let fits_here = rflat
            .as_ref()
            .is_some_and(|s| self.col() + op.len() + 2 + s.len() <= WIDTH);
        let cont = (self.indent + 1) * INDENT.len() + op.len() + 1;
        let fits_next = rflat.as_ref().is_some_and(|s| cont + s.len() <= WIDTH);
        // A call or `if` on the right that cannot fit anyway breaks itself more readably.
        let breaks_itself =
            rmin <= prec(r) && matches!(r.kind, ExprKind::Call { .. } | ExprKind::If { .. });
        if fits_here || (!fits_next && breaks_itself) {
            self.out.push(' ');
        } else {
            self.indent += 1;
            self.newline();
            self.indent -= 1;
        }
        self.out.push_str(op);
        self.out.push(' ');
        self.expr(r, rmin);
    }
}

/// Declaration groups separated by blank lines; `None` (errors) joins the previous group.
fn group(k: &DeclKind) -> Option<u8> {
    Some(match k {
        DeclKind::Input { .. } => 0,
        DeclKind::Param { .. } | DeclKind::Const { .. } | DeclKind::State { .. } => 1,
        DeclKind::Let(_) => 2,
        DeclKind::Loss(_)
        | DeclKind::Metric { .. }
        | DeclKind::Output { .. }
        | DeclKind::Update { .. } => 3,
        DeclKind::Error => return None,
    })
}

/// Whether the printed form of `e` (at context precedence `min`) begins with `-`.
fn starts_with_minus(e: &Expr, min: u8) -> bool {
    if prec(e) < min {
        return false;
    }
    match &e.kind {
        ExprKind::Unary(op, _) => *op == UnOp::Neg,
        ExprKind::Binary(op, l, _) => starts_with_minus(l, binop_prec(*op)),
        ExprKind::Where(l, _) => starts_with_minus(l, 1),
        _ => false,
    }
}
