//! Builtin functions: elementwise math, `clamp`/`min`/`max`/`select`, reductions
//! (`op[C](x where m, …)`), segment ops, quantile, scans, shift and structural values.

use super::calls::ParamSpec;
use super::{Lowerer, Sp, Tensor, Value};
use crate::ast::{Arg, Expr, ExprKind, Ident, Span};
use crate::diag::{codes, Diagnostic};
use rlobj_ir::{
    BinaryOp, Elem, Op, ReduceOp, ScanOp, SegmentOp, SpaceId, SpaceKind, Structural, UnaryOp,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Builtin {
    Unary(UnaryOp),
    MinMax(BinaryOp),
    Clamp,
    Pow,
    StopGrad,
    Float,
    Select,
    Reduce(ReduceOp),
    Segment(SegmentOp),
    Quantile,
    Scan(ScanOp),
    Shift,
    Structural(Structural),
    Error,
}

/// Every builtin name (user functions may not reuse them).
pub(crate) const BUILTIN_NAMES: &[&str] = &[
    "exp",
    "log",
    "log1p",
    "expm1",
    "sqrt",
    "rsqrt",
    "abs",
    "sign",
    "tanh",
    "sigmoid",
    "softplus",
    "log_sigmoid",
    "floor",
    "ceil",
    "recip",
    "min",
    "max",
    "clamp",
    "pow",
    "sg",
    "float",
    "select",
    "sum",
    "mean",
    "count",
    "var",
    "std",
    "logsumexp",
    "softmax",
    "log_softmax",
    "rank",
    "topk",
    "colsum",
    "quantile",
    "cumsum",
    "cumsum_rev",
    "cummin",
    "cummax",
    "cummin_rev",
    "cummax_rev",
    "scan_rev",
    "scan",
    "shift",
    "position",
    "row_index",
    "width",
    "error",
];

pub fn is_builtin(name: &str) -> bool {
    BUILTIN_NAMES.contains(&name)
}

fn builtin(name: &str, has_space: bool) -> Option<Builtin> {
    use Builtin as B;
    Some(match name {
        "exp" => B::Unary(UnaryOp::Exp),
        "log" => B::Unary(UnaryOp::Log),
        "log1p" => B::Unary(UnaryOp::Log1p),
        "expm1" => B::Unary(UnaryOp::Expm1),
        "sqrt" => B::Unary(UnaryOp::Sqrt),
        "rsqrt" => B::Unary(UnaryOp::Rsqrt),
        "abs" => B::Unary(UnaryOp::Abs),
        "sign" => B::Unary(UnaryOp::Sign),
        "tanh" => B::Unary(UnaryOp::Tanh),
        "sigmoid" => B::Unary(UnaryOp::Sigmoid),
        "softplus" => B::Unary(UnaryOp::Softplus),
        "log_sigmoid" => B::Unary(UnaryOp::LogSigmoid),
        "floor" => B::Unary(UnaryOp::Floor),
        "ceil" => B::Unary(UnaryOp::Ceil),
        "recip" => B::Unary(UnaryOp::Recip),
        // `max[seq](x)` is a reduction, `max(a, b)` elementwise.
        "min" if has_space => B::Reduce(ReduceOp::Min),
        "max" if has_space => B::Reduce(ReduceOp::Max),
        "min" => B::MinMax(BinaryOp::Min),
        "max" => B::MinMax(BinaryOp::Max),
        "clamp" => B::Clamp,
        "pow" => B::Pow,
        "sg" => B::StopGrad,
        "float" => B::Float,
        "select" => B::Select,
        "sum" => B::Reduce(ReduceOp::Sum),
        "mean" => B::Reduce(ReduceOp::Mean),
        "count" => B::Reduce(ReduceOp::Count),
        "var" => B::Reduce(ReduceOp::Var { ddof: 0 }),
        "std" => B::Reduce(ReduceOp::Std { ddof: 0 }),
        "logsumexp" => B::Reduce(ReduceOp::LogSumExp),
        "softmax" => B::Segment(SegmentOp::Softmax),
        "log_softmax" => B::Segment(SegmentOp::LogSoftmax),
        "rank" => B::Segment(SegmentOp::Rank),
        "topk" => B::Segment(SegmentOp::TopK),
        "colsum" => B::Segment(SegmentOp::ColumnSum),
        "quantile" => B::Quantile,
        "cumsum" => B::Scan(ScanOp::Cumsum),
        "cumsum_rev" => B::Scan(ScanOp::CumsumRev),
        "cummin" => B::Scan(ScanOp::CumMin),
        "cummax" => B::Scan(ScanOp::CumMax),
        "cummin_rev" => B::Scan(ScanOp::CumMinRev),
        "cummax_rev" => B::Scan(ScanOp::CumMaxRev),
        "scan_rev" => B::Scan(ScanOp::ScanRev),
        "scan" => B::Scan(ScanOp::ScanFwd),
        "shift" => B::Shift,
        "position" => B::Structural(Structural::TokPosition),
        "row_index" => B::Structural(Structural::RowIndex),
        "width" => B::Structural(Structural::Width),
        "error" => B::Error,
        _ => return None,
    })
}

/// Parameter names of a builtin: (name, required).
fn builtin_params(b: Builtin) -> &'static [(&'static str, bool)] {
    match b {
        Builtin::Unary(_) | Builtin::StopGrad | Builtin::Float => &[("x", true)],
        Builtin::MinMax(_) => &[],
        Builtin::Clamp => &[("x", true), ("lo", true), ("hi", true)],
        Builtin::Pow => &[("base", true), ("exponent", true)],
        Builtin::Select => &[("cond", true), ("then", true), ("otherwise", true)],
        Builtin::Reduce(ReduceOp::Count) => &[("x", false), ("empty", false)],
        Builtin::Reduce(ReduceOp::Var { .. } | ReduceOp::Std { .. }) => {
            &[("x", true), ("ddof", false), ("empty", false)]
        }
        Builtin::Reduce(_) => &[("x", true), ("empty", false)],
        Builtin::Segment(SegmentOp::TopK) => &[("x", true), ("k", true)],
        Builtin::Segment(_) => &[("x", true)],
        Builtin::Quantile => &[("x", true), ("q", true), ("empty", false)],
        Builtin::Scan(ScanOp::ScanRev | ScanOp::ScanFwd) => &[("x", true), ("decay", true)],
        Builtin::Scan(_) => &[("x", true)],
        Builtin::Shift => &[("x", true), ("k", true), ("fill", false)],
        Builtin::Structural(_) => &[],
        Builtin::Error => &[("message", true)],
    }
}

fn takes_space(b: Builtin) -> bool {
    matches!(
        b,
        Builtin::Reduce(_)
            | Builtin::Segment(_)
            | Builtin::Quantile
            | Builtin::Scan(_)
            | Builtin::Shift
    )
}

fn takes_where(b: Builtin) -> bool {
    matches!(
        b,
        Builtin::Reduce(_) | Builtin::Segment(_) | Builtin::Quantile
    )
}

impl Lowerer<'_> {
    pub fn call_builtin(
        &mut self,
        name: &Ident,
        space: Option<&Ident>,
        args: &[Arg],
        span: Span,
    ) -> Value {
        let Some(b) = builtin(&name.name, space.is_some()) else {
            return Value::Poison;
        };
        if let Builtin::MinMax(op) = b {
            return self.min_max(op, &name.name, args, span);
        }
        let target = match (takes_space(b), space) {
            (true, Some(ident)) => match self.resolve_space(ident) {
                Some(target) => Some((target, ident.span)),
                None => return Value::Poison,
            },
            (true, None) => {
                self.report(
                    Diagnostic::error(
                        codes::MISSING_SPACE,
                        format!("`{}` needs a space: `{}[C](…)`", name.name, name.name),
                        name.span,
                        "missing `[space]`",
                    )
                    .with_hint(format!(
                        "say where it operates, e.g. `{}[seq](…)` or `{}[batch](…)`",
                        name.name, name.name
                    )),
                );
                return Value::Poison;
            }
            (false, Some(ident)) => {
                self.report(
                    Diagnostic::error(
                        codes::UNEXPECTED_SPACE,
                        format!("`{}` is elementwise and takes no `[space]`", name.name),
                        ident.span,
                        "unexpected space",
                    )
                    .with_hint(format!("write `{}(…)`", name.name)),
                );
                return Value::Poison;
            }
            (false, None) => None,
        };
        let specs = ParamSpec::of_builtin(builtin_params(b));
        let Some(bound) = self.bind_args(&name.name, &specs, args, span) else {
            return Value::Poison;
        };
        // `x where m` is allowed only as the first argument of reductions and segment ops.
        let (first, mask) = match bound.first().copied().flatten() {
            Some(Expr {
                kind: ExprKind::Where(value, keep),
                ..
            }) if takes_where(b) => (Some(&**value), Some(&**keep)),
            other => (other, None),
        };
        let mut exprs: Vec<Option<&Expr>> = bound;
        if !exprs.is_empty() {
            exprs[0] = first;
        }
        match b {
            Builtin::Unary(op) => self.elementwise_unary(op, exprs[0], span),
            Builtin::StopGrad => self.stop_grad(exprs[0], span),
            Builtin::Float => self.float_of(exprs[0], span),
            Builtin::Clamp => self.clamp(&exprs, span),
            Builtin::Pow => self.pow(&exprs, span),
            Builtin::Select => self.select(&exprs, span),
            Builtin::Structural(kind) => {
                let space = match kind {
                    Structural::TokPosition => SpaceId::TOK,
                    Structural::RowIndex => SpaceId::SEQ,
                    Structural::Width => SpaceId::BATCH,
                };
                self.emit(Op::Structural(kind), Elem::F32, Sp::Known(space), span)
            }
            Builtin::Error => self.error_call(exprs[0], span),
            Builtin::Reduce(op) => self.reduce(op, target, &exprs, mask, span),
            Builtin::Segment(op) => self.segment(op, target, &exprs, mask, span),
            Builtin::Quantile => self.quantile(target, &exprs, mask, span),
            Builtin::Scan(op) => self.scan(op, target, &exprs, span),
            Builtin::Shift => self.shift(target, &exprs, span),
            Builtin::MinMax(_) => Value::Poison,
        }
    }

    fn arg(&mut self, expr: Option<&Expr>) -> (Value, Span) {
        match expr {
            Some(e) => (self.expr(e), e.span),
            None => (Value::Poison, Span::default()),
        }
    }

    fn elementwise_unary(&mut self, op: UnaryOp, x: Option<&Expr>, span: Span) -> Value {
        let (value, arg_span) = self.arg(x);
        if !self.expect_f32(&value, arg_span, "this function") {
            return Value::Poison;
        }
        if let Value::Num(n) = value {
            if let Some(folded) = fold_unary(op, n) {
                return Value::Num(folded);
            }
        }
        self.unary_node(op, &value, Elem::F32, span)
    }

    fn stop_grad(&mut self, x: Option<&Expr>, span: Span) -> Value {
        let (value, arg_span) = self.arg(x);
        match value {
            // A channelled value never reaches a builtin (it is unrolled first).
            Value::Num(_) | Value::Bool(_) | Value::Poison | Value::Chan(_) => value,
            Value::Str(_) | Value::AnyStr => {
                self.report_string_as_value(arg_span);
                Value::Poison
            }
            Value::Tensor(t) => match t.node {
                Some(node) => self.emit(Op::StopGrad(node), t.elem, t.space, span),
                None => value,
            },
        }
    }

    fn float_of(&mut self, x: Option<&Expr>, span: Span) -> Value {
        let (value, arg_span) = self.arg(x);
        match value {
            Value::Bool(b) => Value::Num(f64::from(u8::from(b))),
            Value::Num(_) | Value::Poison | Value::Chan(_) => value,
            Value::Tensor(t) if t.elem == Elem::F32 => value,
            Value::Tensor(_) => self.unary_node(UnaryOp::ToF32, &value, Elem::F32, span),
            Value::Str(_) | Value::AnyStr => {
                self.report_string_as_value(arg_span);
                Value::Poison
            }
        }
    }

    /// A bool operand of `sum`/`mean`/… becomes 0/1.
    pub fn bool_to_f32(&mut self, value: Value, span: Span) -> Value {
        match value {
            Value::Bool(b) => Value::Num(f64::from(u8::from(b))),
            Value::Tensor(t) if t.elem == Elem::Bool => {
                self.unary_node(UnaryOp::ToF32, &value, Elem::F32, span)
            }
            other => other,
        }
    }

    fn min_max(&mut self, op: BinaryOp, name: &str, args: &[Arg], span: Span) -> Value {
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            self.report(
                Diagnostic::error(
                    codes::UNKNOWN_ARGUMENT,
                    format!("`{name}` takes only positional arguments"),
                    named.span,
                    "unexpected name",
                )
                .with_hint(format!(
                    "for the {name} over a space write `{name}[seq](x)`"
                )),
            );
            return Value::Poison;
        }
        if args.len() < 2 {
            self.report(
                Diagnostic::error(
                    codes::TOO_FEW_ARGUMENTS,
                    format!("elementwise `{name}` needs at least two arguments"),
                    span,
                    "one argument",
                )
                .with_hint(format!("to reduce over a space write `{name}[batch](x)`")),
            );
            return Value::Poison;
        }
        let mut acc = self.expr(&args[0].value);
        let mut acc_span = args[0].value.span;
        for arg in &args[1..] {
            let next = self.expr(&arg.value);
            let a = self.expect_f32(&acc, acc_span, &format!("`{name}`"));
            if !(self.expect_f32(&next, arg.value.span, &format!("`{name}`")) && a) {
                return Value::Poison;
            }
            acc = match (&acc, &next) {
                (Value::Num(a), Value::Num(b)) => Value::Num(if op == BinaryOp::Min {
                    a.min(*b)
                } else {
                    a.max(*b)
                }),
                _ => self.binary_node(
                    op,
                    &[(&acc, acc_span), (&next, arg.value.span)],
                    Elem::F32,
                    span,
                ),
            };
            acc_span = span;
        }
        acc
    }

    fn clamp(&mut self, exprs: &[Option<&Expr>], span: Span) -> Value {
        let (x, x_span) = self.arg(exprs[0]);
        let (lo, lo_span) = self.arg(exprs[1]);
        let (hi, hi_span) = self.arg(exprs[2]);
        let ok = [(&x, x_span), (&lo, lo_span), (&hi, hi_span)]
            .into_iter()
            .fold(true, |ok, (v, s)| self.expect_f32(v, s, "`clamp`") && ok);
        if !ok {
            return Value::Poison;
        }
        if let (Value::Num(x), Value::Num(lo), Value::Num(hi)) = (&x, &lo, &hi) {
            return Value::Num(x.max(*lo).min(*hi));
        }
        let values = [x, lo, hi];
        let spans = [x_span, lo_span, hi_span];
        match self.joined_nodes(&values, &spans, span) {
            Some([a, b, c]) => {
                let space = Sp::Known(self.prog.node(a).space);
                self.emit(Op::Clamp(a, b, c), Elem::F32, space, span)
            }
            None => self.poison_or_unknown(&values, &spans, Elem::F32, span),
        }
    }

    fn pow(&mut self, exprs: &[Option<&Expr>], span: Span) -> Value {
        let (a, a_span) = self.arg(exprs[0]);
        let (b, b_span) = self.arg(exprs[1]);
        let first = self.expect_f32(&a, a_span, "`pow`");
        if !(self.expect_f32(&b, b_span, "`pow`") && first) {
            return Value::Poison;
        }
        if let (Value::Num(a), Value::Num(b)) = (&a, &b) {
            return Value::Num(a.powf(*b));
        }
        self.binary_node(
            BinaryOp::Pow,
            &[(&a, a_span), (&b, b_span)],
            Elem::F32,
            span,
        )
    }

    fn select(&mut self, exprs: &[Option<&Expr>], span: Span) -> Value {
        let (c, c_span) = self.arg(exprs[0]);
        let (a, a_span) = self.arg(exprs[1]);
        let (b, b_span) = self.arg(exprs[2]);
        if !self.expect_bool(&c, c_span, "`select`") {
            return Value::Poison;
        }
        if let Value::Bool(taken) = c {
            return if taken { a } else { b };
        }
        let (ea, eb) = (Self::elem_of(&a), Self::elem_of(&b));
        if ea.is_none() || eb.is_none() {
            if matches!(a, Value::Str(_) | Value::AnyStr) {
                self.report_string_as_value(a_span);
            } else if matches!(b, Value::Str(_) | Value::AnyStr) {
                self.report_string_as_value(b_span);
            }
            return Value::Poison;
        }
        if ea != eb {
            let (ta, tb) = (self.type_name(&a), self.type_name(&b));
            self.report(
                Diagnostic::error(
                    codes::BRANCH_MISMATCH,
                    format!("`select` branches differ: `{ta}` and `{tb}`"),
                    b_span,
                    format!("this is `{tb}`"),
                )
                .with_secondary(a_span, format!("this is `{ta}`")),
            );
            return Value::Poison;
        }
        let elem = ea.unwrap_or(Elem::F32);
        let values = [c, a, b];
        let spans = [c_span, a_span, b_span];
        match self.joined_nodes(&values, &spans, span) {
            Some([c, a, b]) => {
                let space = Sp::Known(self.prog.node(c).space);
                self.emit(Op::Select(c, a, b), elem, space, span)
            }
            None => self.poison_or_unknown(&values, &spans, elem, span),
        }
    }

    fn error_call(&mut self, message: Option<&Expr>, span: Span) -> Value {
        if !self.concrete {
            return Value::Poison;
        }
        let text = match message.map(|m| &m.kind) {
            Some(ExprKind::Str(s)) => s.clone(),
            _ => "error() reached".to_string(),
        };
        self.report(
            Diagnostic::error(
                codes::ERROR_REACHED,
                text,
                span,
                "reached with these compile-time values",
            )
            .with_hint("check the const/string arguments that select this branch"),
        );
        Value::Poison
    }

    /// A compile-time number argument (`empty:`, `fill:`); generic values pass.
    pub fn const_number(&mut self, expr: Option<&Expr>, default: f64, what: &str) -> Option<f64> {
        let Some(expr) = expr else {
            return Some(default);
        };
        match self.expr(expr) {
            Value::Num(n) => Some(n),
            Value::Poison => None,
            Value::Tensor(Tensor {
                node: None,
                space: Sp::Any,
                ..
            }) if !self.concrete => Some(default),
            other => {
                let found = self.type_name(&other);
                self.report(
                    Diagnostic::error(codes::EXPECTED_CONST_NUMBER, format!("{what} must be a compile-time number, found `{found}`"), expr.span, "not known at compile time")
                        .with_hint("use a literal or a `const`; runtime values (`param`, inputs) cannot be used here"),
                );
                None
            }
        }
    }

    /// A compile-time integer argument (`ddof:`, shift offsets); generic values pass.
    pub fn const_integer(
        &mut self,
        expr: Option<&Expr>,
        default: i64,
        what: &str,
        min: i64,
    ) -> Option<i64> {
        let Some(expr) = expr else {
            return Some(default);
        };
        let value = self.expr(expr);
        let bad = match &value {
            Value::Num(n) if n.fract() == 0.0 && *n >= min as f64 && n.abs() < 1e6 => {
                return Some(*n as i64)
            }
            Value::Poison => return None,
            Value::Tensor(Tensor {
                node: None,
                space: Sp::Any,
                ..
            }) if !self.concrete => return Some(default),
            Value::Num(n) => format!("{n}"),
            other => format!("`{}`", self.type_name(other)),
        };
        let range = if min == 0 {
            "a non-negative integer"
        } else {
            "an integer"
        };
        self.report(
            Diagnostic::error(
                codes::EXPECTED_CONST_INT,
                format!("{what} must be {range} known at compile time, found {bad}"),
                expr.span,
                format!("expected {range}"),
            )
            .with_hint("use an integer literal or a `const`"),
        );
        None
    }

    /// Checks `x where m` for reductions and segment ops: returns (x, mask, element space).
    fn masked_operand(
        &mut self,
        x: Option<&Expr>,
        mask: Option<&Expr>,
        target: Sp,
        target_span: Span,
        whole: Span,
        convert_bool: bool,
    ) -> Option<(Value, Option<Value>, Sp)> {
        let (mut value, x_span) = self.arg(x);
        if value == Value::Poison {
            return None;
        }
        if convert_bool {
            value = self.bool_to_f32(value, x_span);
        } else if !self.expect_f32(&value, x_span, "this operation") {
            return None;
        }
        if matches!(value, Value::Str(_) | Value::AnyStr) {
            self.report_string_as_value(x_span);
            return None;
        }
        let mut operands = vec![(Self::space_of(&value)?, x_span)];
        let mask_value = match mask {
            Some(m) => {
                let mask_value = self.expr(m);
                if !self.expect_bool(&mask_value, m.span, "a `where` mask") {
                    return None;
                }
                operands.push((Self::space_of(&mask_value)?, m.span));
                Some(mask_value)
            }
            None => None,
        };
        let space = self.join_spaces(&operands, whole)?;
        if !self.within(space, target) {
            let (from, to) = (self.space_name(space), self.space_name(target));
            let related = self.within(target, space);
            let (code, message, hint) = if related {
                (
                    codes::REDUCE_TO_FINER,
                    format!("cannot reduce a value in `{from}` to the finer space `{to}`"),
                    "a coarse value broadcasts to finer spaces by itself: use it directly"
                        .to_string(),
                )
            } else {
                (
                    codes::UNRELATED_SPACES,
                    format!("cannot reduce a value in `{from}` to the unrelated space `{to}`"),
                    "reduce to a space that contains both, e.g. `[batch]`".to_string(),
                )
            };
            self.report(
                Diagnostic::error(
                    code,
                    message,
                    target_span,
                    format!("`{to}` does not contain `{from}`"),
                )
                .with_secondary(x_span, format!("this is in `{from}`"))
                .with_hint(hint),
            );
            return None;
        }
        Some((value, mask_value, space))
    }

    fn operand_nodes(
        &mut self,
        value: &Value,
        mask: Option<&Value>,
        space: Sp,
        span: Span,
    ) -> Option<(rlobj_ir::NodeId, Option<rlobj_ir::NodeId>)> {
        let node = self.coerce(value, space, span)?;
        let mask = match mask {
            Some(m) => Some(self.coerce(m, space, span)?),
            None => None,
        };
        Some((node, mask))
    }

    fn reduce(
        &mut self,
        op: ReduceOp,
        target: Option<(Sp, Span)>,
        exprs: &[Option<&Expr>],
        mask: Option<&Expr>,
        span: Span,
    ) -> Value {
        let Some((target, target_span)) = target else {
            return Value::Poison;
        };
        let (op, empty_index) = match op {
            ReduceOp::Var { .. } | ReduceOp::Std { .. } => {
                let Some(ddof) = self.const_integer(exprs[1], 0, "`ddof`", 0) else {
                    return Value::Poison;
                };
                let ddof = ddof as u32;
                (
                    if matches!(op, ReduceOp::Var { .. }) {
                        ReduceOp::Var { ddof }
                    } else {
                        ReduceOp::Std { ddof }
                    },
                    2,
                )
            }
            _ => (op, 1),
        };
        let Some(empty) = self.const_number(exprs[empty_index], 0.0, "`empty`") else {
            return Value::Poison;
        };
        let operand = if op == ReduceOp::Count && exprs[0].is_none() {
            // `count[C]()` counts the elements one level finer than C.
            let child = self.count_child(target);
            Some((Value::Num(1.0), None, child))
        } else {
            self.masked_operand(exprs[0], mask, target, target_span, span, true)
        };
        let Some((value, mask_value, space)) = operand else {
            return Value::Poison;
        };
        match self.operand_nodes(&value, mask_value.as_ref(), space, span) {
            Some((arg, mask)) => self.emit(
                Op::Reduce {
                    op,
                    arg,
                    mask,
                    empty,
                },
                Elem::F32,
                target,
                span,
            ),
            None => Value::Tensor(Tensor {
                elem: Elem::F32,
                space: target,
                node: None,
            }),
        }
    }

    /// The space `count[C]()` counts: tokens for `seq` and `id[tok]` spaces, rows otherwise.
    fn count_child(&self, target: Sp) -> Sp {
        match target {
            Sp::Known(space) => match self.prog.spaces.get(space.index()).map(|s| &s.kind) {
                Some(SpaceKind::Seq | SpaceKind::RowSegments { .. } | SpaceKind::Tok) => {
                    Sp::Known(SpaceId::TOK)
                }
                _ => Sp::Known(SpaceId::SEQ),
            },
            Sp::Any => Sp::Any,
        }
    }

    fn segment(
        &mut self,
        op: SegmentOp,
        target: Option<(Sp, Span)>,
        exprs: &[Option<&Expr>],
        mask: Option<&Expr>,
        span: Span,
    ) -> Value {
        let Some((target, target_span)) = target else {
            return Value::Poison;
        };
        if op == SegmentOp::ColumnSum && !self.colsum_space_ok(target, target_span) {
            return Value::Poison;
        }
        let Some((value, mask_value, space)) =
            self.masked_operand(exprs[0], mask, target, target_span, span, false)
        else {
            return Value::Poison;
        };
        if op == SegmentOp::ColumnSum && !self.colsum_operand_ok(space, exprs[0], span) {
            return Value::Poison;
        }
        let k = match (op, exprs.get(1).copied().flatten()) {
            (SegmentOp::TopK, Some(k_expr)) => match self.value_in(k_expr, target, "`k`") {
                Some(k) => Some(k),
                None => return Value::Poison,
            },
            _ => None,
        };
        let elem = if op == SegmentOp::TopK {
            Elem::Bool
        } else {
            Elem::F32
        };
        let within = match target {
            Sp::Known(s) => s,
            Sp::Any => SpaceId::BATCH,
        };
        let nodes = self.operand_nodes(&value, mask_value.as_ref(), space, span);
        let k_node = match &k {
            Some(k) => self.coerce(k, target, span),
            None => None,
        };
        match nodes {
            Some((arg, mask)) if k.is_none() || k_node.is_some() => self.emit(
                Op::Segment {
                    op,
                    arg,
                    mask,
                    within,
                    k: k_node,
                },
                elem,
                space,
                span,
            ),
            _ => Value::Tensor(Tensor {
                elem,
                space,
                node: None,
            }),
        }
    }

    /// `colsum[C]` sums across the rows of each `C` segment, so `C` must be whole rows:
    /// `batch` or an `id[seq]` group space.
    fn colsum_space_ok(&mut self, target: Sp, target_span: Span) -> bool {
        let Sp::Known(space) = target else {
            return true;
        };
        let kind = self.prog.spaces.get(space.index()).map(|s| s.kind.clone());
        if matches!(kind, Some(SpaceKind::Batch | SpaceKind::RowGroups { .. })) {
            return true;
        }
        let shown = self.space_name(target);
        self.report(
            Diagnostic::error(
                codes::BAD_COLSUM_SPACE,
                format!("`colsum` sums across rows, not within `{shown}`"),
                target_span,
                "expected `batch` or an `id[seq]` group space",
            )
            .with_hint(
                "use `colsum[grp](…)` with `input g: id[seq] as grp`, or `colsum[batch](…)`",
            ),
        );
        false
    }

    /// `colsum`'s operand (after `where`) must be per token: positions exist only there.
    fn colsum_operand_ok(&mut self, space: Sp, x: Option<&Expr>, whole: Span) -> bool {
        if matches!(space, Sp::Known(SpaceId::TOK) | Sp::Any) {
            return true;
        }
        let shown = self.space_name(space);
        self.report(
            Diagnostic::error(
                codes::COLSUM_NOT_TOKENS,
                format!("`colsum` sums token values by position, found a value in `{shown}`"),
                x.map(|e| e.span).unwrap_or(whole),
                "expected a `tok` value",
            )
            .with_hint(
                "broadcast a per-row value to tokens first, e.g. `to_tok(s)` from `std::adv`",
            ),
        );
        false
    }

    /// An f32 argument that must be coarser than or equal to `space` (it is broadcast there).
    fn value_in(&mut self, expr: &Expr, space: Sp, what: &str) -> Option<Value> {
        let value = self.expr(expr);
        if !self.expect_f32(&value, expr.span, what) {
            return None;
        }
        let value_space = Self::space_of(&value)?;
        if !self.within(space, value_space) {
            self.report_finer_than_expected(&value, space, expr.span, expr.span);
            return None;
        }
        Some(value)
    }

    fn quantile(
        &mut self,
        target: Option<(Sp, Span)>,
        exprs: &[Option<&Expr>],
        mask: Option<&Expr>,
        span: Span,
    ) -> Value {
        let Some((target, target_span)) = target else {
            return Value::Poison;
        };
        let Some(empty) = self.const_number(exprs[2], 0.0, "`empty`") else {
            return Value::Poison;
        };
        let Some((value, mask_value, space)) =
            self.masked_operand(exprs[0], mask, target, target_span, span, false)
        else {
            return Value::Poison;
        };
        let Some(q_expr) = exprs[1] else {
            return Value::Poison;
        };
        let Some(q) = self.value_in(q_expr, target, "`q`") else {
            return Value::Poison;
        };
        let nodes = self.operand_nodes(&value, mask_value.as_ref(), space, span);
        let q_node = self.coerce(&q, target, q_expr.span);
        match (nodes, q_node) {
            (Some((arg, mask)), Some(q)) => self.emit(
                Op::Quantile {
                    arg,
                    mask,
                    q,
                    empty,
                },
                Elem::F32,
                target,
                span,
            ),
            _ => Value::Tensor(Tensor {
                elem: Elem::F32,
                space: target,
                node: None,
            }),
        }
    }

    /// Scans and shifts run along `seq` or an `id[tok]` space, on token values.
    fn scan_operand(
        &mut self,
        name: &str,
        target: Option<(Sp, Span)>,
        x: Option<&Expr>,
    ) -> Option<(Value, SpaceId, Span)> {
        let (target, target_span) = target?;
        let within = match target {
            Sp::Known(space) => {
                let kind = self.prog.spaces.get(space.index()).map(|s| s.kind.clone());
                if !matches!(kind, Some(SpaceKind::Seq | SpaceKind::RowSegments { .. })) {
                    let shown = self.space_name(target);
                    self.report(
                        Diagnostic::error(codes::BAD_SCAN_SPACE, format!("`{name}` runs along token order, not along `{shown}`"), target_span, "expected `seq` or an `id[tok]` space")
                            .with_hint(format!("use `{name}[seq](…)`, or a space declared by `input t: id[tok] as turn`")),
                    );
                    return None;
                }
                space
            }
            Sp::Any => SpaceId::SEQ,
        };
        let (value, x_span) = self.arg(x);
        if !self.expect_f32(&value, x_span, &format!("`{name}`")) {
            return None;
        }
        match Self::space_of(&value)? {
            Sp::Known(SpaceId::TOK) | Sp::Any => Some((value, within, x_span)),
            other => {
                let shown = self.space_name(other);
                self.report(
                    Diagnostic::error(
                        codes::SCAN_NOT_TOKENS,
                        format!("`{name}` scans token values, found a value in `{shown}`"),
                        x_span,
                        "expected a `tok` value",
                    )
                    .with_hint("scans follow token order inside rows; pass a per-token value"),
                );
                None
            }
        }
    }

    fn scan(
        &mut self,
        op: ScanOp,
        target: Option<(Sp, Span)>,
        exprs: &[Option<&Expr>],
        span: Span,
    ) -> Value {
        let Some((value, within, _)) = self.scan_operand(scan_name(op), target, exprs[0]) else {
            return Value::Poison;
        };
        let coef = match exprs.get(1).copied().flatten() {
            Some(decay) => match self.value_in(decay, Sp::Known(SpaceId::TOK), "`decay`") {
                Some(c) => Some((c, decay.span)),
                None => return Value::Poison,
            },
            None => None,
        };
        let arg = self.node_of(&value, span);
        let coef_node = coef
            .as_ref()
            .and_then(|(c, s)| self.coerce(c, Sp::Known(SpaceId::TOK), *s));
        let space = Self::space_of(&value).unwrap_or(Sp::Any);
        match arg {
            Some(arg) if coef.is_none() || coef_node.is_some() => self.emit(
                Op::Scan {
                    op,
                    arg,
                    coef: coef_node,
                    within,
                },
                Elem::F32,
                space,
                span,
            ),
            _ => Value::Tensor(Tensor {
                elem: Elem::F32,
                space,
                node: None,
            }),
        }
    }

    fn shift(&mut self, target: Option<(Sp, Span)>, exprs: &[Option<&Expr>], span: Span) -> Value {
        let Some((value, within, _)) = self.scan_operand("shift", target, exprs[0]) else {
            return Value::Poison;
        };
        let Some(offset) = self.const_integer(exprs[1], 0, "the shift offset", i64::from(i32::MIN))
        else {
            return Value::Poison;
        };
        let Some(fill) = self.const_number(exprs[2], 0.0, "`fill`") else {
            return Value::Poison;
        };
        let space = Self::space_of(&value).unwrap_or(Sp::Any);
        match self.node_of(&value, span) {
            Some(arg) => self.emit(
                Op::Shift {
                    arg,
                    offset: offset as i32,
                    fill,
                    within,
                },
                Elem::F32,
                space,
                span,
            ),
            None => Value::Tensor(Tensor {
                elem: Elem::F32,
                space,
                node: None,
            }),
        }
    }
}

fn scan_name(op: ScanOp) -> &'static str {
    match op {
        ScanOp::Cumsum => "cumsum",
        ScanOp::CumsumRev => "cumsum_rev",
        ScanOp::ScanRev => "scan_rev",
        ScanOp::ScanFwd => "scan",
        ScanOp::CumMin => "cummin",
        ScanOp::CumMax => "cummax",
        ScanOp::CumMinRev => "cummin_rev",
        ScanOp::CumMaxRev => "cummax_rev",
    }
}

/// Folds elementwise math on compile-time numbers (same f64 formulas as the interpreter).
fn fold_unary(op: UnaryOp, x: f64) -> Option<f64> {
    Some(match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Log1p => x.ln_1p(),
        UnaryOp::Expm1 => x.exp_m1(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Sign | UnaryOp::Softplus | UnaryOp::LogSigmoid | UnaryOp::Not | UnaryOp::ToF32 => {
            return None
        }
    })
}
