//! Channel (ensemble) axes: `input rewards: f32[seq, chan]` with `const chan = 3`.
//!
//! The axis has a compile-time size and is unrolled here, so the IR and every backend see
//! `chan` ordinary values. An expression that reads a channelled name (and does not reduce
//! it with `op[chan](…)`) is lowered once per channel with that name standing for its k-th
//! component; everything else in it is shared (CSE merges the copies). Functions,
//! builtins, `if` and operators therefore need no channel logic at all. Channel reductions
//! (`sum`, `mean`, `max`, `min`, `var`, `std`, `logsumexp`, `count` over `[chan]`) lower
//! their argument once per channel and combine the components with ordinary IR.

use super::calls::ParamSpec;
use super::{Chan, Lowerer, Tensor, Value};
use crate::ast::{Arg, Block, Else, Expr, ExprKind, Ident, Span};
use crate::diag::{codes, Diagnostic};
use rlobj_ir::{BinaryOp, Elem, Op, UnaryOp};

/// The largest channel count; unrolling makes programs grow linearly with it.
pub(crate) const MAX_CHANNELS: usize = 256;

/// A channel axis an expression reads without reducing it: name, count, first use.
type FreeAxis = (String, usize, Span);

impl Lowerer<'_> {
    /// Lowers `expr` once per channel when it reads a channelled name of an axis that is not
    /// being unrolled already; `None` when it reads none.
    pub(super) fn unroll_channels(&mut self, expr: &Expr) -> Option<Value> {
        if self.channel_axes.is_empty() {
            return None;
        }
        let mut found = Vec::new();
        self.free_axes(expr, &mut Vec::new(), &mut found);
        match found.as_slice() {
            [] => None,
            [(axis, count, _)] => {
                let (axis, count) = (axis.clone(), *count);
                let mut parts = Vec::with_capacity(count);
                for k in 0..count {
                    self.channel_at.push((axis.clone(), k));
                    parts.push(self.expr_plain(expr));
                    self.channel_at.pop();
                }
                if parts.contains(&Value::Poison) {
                    return Some(Value::Poison);
                }
                Some(Value::Chan(Chan { axis, parts }))
            }
            [(a, _, a_span), (b, _, b_span), ..] => {
                self.report(
                    Diagnostic::error(
                        codes::CHANNEL_MISMATCH,
                        format!("this combines values over two channel axes, `{a}` and `{b}`"),
                        expr.span,
                        "two channel axes",
                    )
                    .with_secondary(*a_span, format!("channelled over `{a}`"))
                    .with_secondary(*b_span, format!("channelled over `{b}`"))
                    .with_hint(format!(
                        "reduce one of them first, e.g. `sum[{b}](…)`; an expression has at most one channel axis"
                    )),
                );
                Some(Value::Poison)
            }
        }
    }

    /// The component a channelled binding stands for inside an unrolled expression.
    pub(super) fn channel_component(&self, chan: &Chan) -> Option<Value> {
        let (_, k) = self
            .channel_at
            .iter()
            .rev()
            .find(|(a, _)| *a == chan.axis)?;
        chan.parts.get(*k).cloned()
    }

    /// Collects the channel axes `expr` reads and does not reduce (distinct, in order).
    /// `locals` are the `let`s of enclosing blocks: name → the axis their value has.
    fn free_axes(
        &self,
        expr: &Expr,
        locals: &mut Vec<(String, Option<(String, usize)>)>,
        found: &mut Vec<FreeAxis>,
    ) {
        match &expr.kind {
            ExprKind::Var(path) => {
                let [name] = path.as_slice() else { return };
                let axis = match locals.iter().rev().find(|(n, _)| *n == name.name) {
                    Some((_, axis)) => axis.clone(),
                    None => match self.lookup(&name.name).map(|b| &b.value) {
                        Some(Value::Chan(c)) => Some((c.axis.clone(), c.parts.len())),
                        _ => None,
                    },
                };
                if let Some((axis, count)) = axis {
                    let active = self.channel_at.iter().any(|(a, _)| *a == axis);
                    if !active && !found.iter().any(|(a, _, _)| *a == axis) {
                        found.push((axis, count, expr.span));
                    }
                }
            }
            ExprKind::Unary(_, x) => self.free_axes(x, locals, found),
            ExprKind::Binary(_, a, b) | ExprKind::Where(a, b) => {
                self.free_axes(a, locals, found);
                self.free_axes(b, locals, found);
            }
            ExprKind::Call { space, args, .. } => {
                let reduced = space
                    .as_ref()
                    .filter(|s| self.channel_axis(s).is_some())
                    .map(|s| s.name.clone());
                let mut inner = Vec::new();
                for arg in args {
                    self.free_axes(&arg.value, locals, &mut inner);
                }
                for axis in inner {
                    if Some(&axis.0) != reduced.as_ref() && !found.iter().any(|f| f.0 == axis.0) {
                        found.push(axis);
                    }
                }
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                self.free_axes(cond, locals, found);
                self.block_axes(then, locals, found);
                match &**otherwise {
                    Else::Block(block) => self.block_axes(block, locals, found),
                    Else::If(e) => self.free_axes(e, locals, found),
                }
            }
            ExprKind::Number { .. } | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Error => {}
        }
    }

    fn block_axes(
        &self,
        block: &Block,
        locals: &mut Vec<(String, Option<(String, usize)>)>,
        found: &mut Vec<FreeAxis>,
    ) {
        let mark = locals.len();
        for binding in &block.lets {
            let mut own = Vec::new();
            self.free_axes(&binding.value, locals, &mut own);
            let axis = own.first().map(|(a, n, _)| (a.clone(), *n));
            for f in own {
                if !found.iter().any(|g| g.0 == f.0) {
                    found.push(f);
                }
            }
            locals.push((binding.name.name.clone(), axis));
        }
        self.free_axes(&block.value, locals, found);
        locals.truncate(mark);
    }

    /// The channel count when `ident` names a channel axis usable here: an axis declared
    /// by the objective, seen from the objective body (not from inside a function), and
    /// not shadowed by an index space.
    pub(super) fn channel_axis(&self, ident: &Ident) -> Option<usize> {
        let in_objective = self.frame().is_some_and(|f| f.call.is_none());
        if !in_objective || self.lookup_space(&ident.name).is_some() {
            return None;
        }
        self.channel_axes.get(&ident.name).copied()
    }

    /// Whether `ident` (written where a space goes) names a const rather than a space:
    /// `param w: f32[chan]`.
    pub(super) fn names_channel_const(&self, ident: &Ident) -> bool {
        self.lookup_space(&ident.name).is_none()
            && matches!(
                self.lookup(&ident.name).map(|b| &b.kind),
                Some(super::BindingKind::Const)
            )
    }

    /// Validates `axis` as a channel axis for a declaration and registers it: it must be
    /// an integer `const` from 1 to [`MAX_CHANNELS`] declared before. `None` after an error
    /// (the name is then registered with count 0, so later `op[axis](…)` stay silent).
    pub(super) fn declare_channel_axis(&mut self, axis: &Ident) -> Option<usize> {
        let count = self.check_channel_axis(axis);
        if self.lookup_space(&axis.name).is_none() {
            self.channel_axes
                .entry(axis.name.clone())
                .or_insert(count.unwrap_or(0));
        }
        count
    }

    fn check_channel_axis(&mut self, axis: &Ident) -> Option<usize> {
        let binding = self
            .lookup(&axis.name)
            .map(|b| (b.kind.clone(), b.value.clone(), b.span));
        let (value, defined) = match binding {
            Some((super::BindingKind::Const, value, defined)) => (value, defined),
            other => {
                let mut diagnostic = Diagnostic::error(
                    codes::CHANNEL_NOT_CONST,
                    format!("channel axis `{}` is not a `const`", axis.name),
                    axis.span,
                    "expected the name of an integer const",
                )
                .with_hint(format!(
                    "declare the channel count before this line: `const {} = 3`",
                    axis.name
                ));
                if let Some((_, _, defined)) = other {
                    diagnostic = diagnostic.with_secondary(defined, "defined here, not as a const");
                }
                self.report(diagnostic);
                return None;
            }
        };
        let bad = match &value {
            Value::Num(n) if n.fract() == 0.0 && *n >= 1.0 && *n <= MAX_CHANNELS as f64 => {
                return Some(*n as usize);
            }
            Value::Poison => return None,
            Value::Num(n) => format!("{n}"),
            other => format!("a `{}`", self.type_name(other)),
        };
        self.report(
            Diagnostic::error(
                codes::CHANNEL_BAD_SIZE,
                format!(
                    "channel axis `{}` has size {bad}, not an integer from 1 to {MAX_CHANNELS}",
                    axis.name
                ),
                axis.span,
                "bad channel count",
            )
            .with_secondary(defined, "const declared here")
            .with_hint(format!(
                "the const is the number of channels, e.g. `const {} = 3` (change it with `--set {}=K`)",
                axis.name, axis.name
            )),
        );
        None
    }

    /// `op[chan](x, …)`: lowers `x` once per channel and combines the components.
    pub(super) fn channel_reduce(
        &mut self,
        name: &Ident,
        axis: &Ident,
        count: usize,
        args: &[Arg],
        span: Span,
    ) -> Value {
        if count == 0 {
            return Value::Poison; // the axis declaration was already reported
        }
        let specs: &[(&str, bool)] = match name.name.as_str() {
            "sum" | "mean" | "max" | "min" | "logsumexp" => &[("x", true)],
            "var" | "std" => &[("x", true), ("ddof", false)],
            "count" => &[],
            other => {
                self.report(
                    Diagnostic::error(
                        codes::CHANNEL_OP,
                        format!("`{other}` does not run over a channel axis"),
                        axis.span,
                        format!("`{}` is a channel axis, not an index space", axis.name),
                    )
                    .with_hint(format!(
                        "over a channel axis use sum, mean, max, min, var, std, logsumexp or count; \
                         `{other}[seq](…)` etc. run per channel by themselves"
                    )),
                );
                return Value::Poison;
            }
        };
        let specs = ParamSpec::of_builtin(specs);
        let Some(bound) = self.bind_args(&name.name, &specs, args, span) else {
            return Value::Poison;
        };
        if name.name == "count" {
            return Value::Num(count as f64);
        }
        let ddof = match name.name.as_str() {
            "var" | "std" => {
                let Some(ddof) = self.const_integer(bound[1], 0, "`ddof`", 0) else {
                    return Value::Poison;
                };
                if ddof as usize >= count {
                    self.report(
                        Diagnostic::error(
                            codes::EXPECTED_CONST_INT,
                            format!(
                                "`ddof: {ddof}` leaves no degrees of freedom over {count} channels of `{}`",
                                axis.name
                            ),
                            bound[1].map_or(span, |e| e.span),
                            format!("must be below {count}"),
                        )
                        .with_hint("use `ddof: 0` (population) or more channels"),
                    );
                    return Value::Poison;
                }
                ddof as usize
            }
            _ => 0,
        };
        let Some(x) = bound[0] else {
            return Value::Poison;
        };
        let mut parts = Vec::with_capacity(count);
        for k in 0..count {
            self.channel_at.push((axis.name.clone(), k));
            let value = self.expr(x);
            self.channel_at.pop();
            let value = self.bool_to_f32(value, x.span);
            if !self.expect_f32(&value, x.span, &format!("`{}[{}]`", name.name, axis.name)) {
                return Value::Poison;
            }
            parts.push(value);
        }
        let n = count as f64;
        match name.name.as_str() {
            "sum" => self.fold_parts(BinaryOp::Add, &parts, span),
            "mean" => {
                let total = self.fold_parts(BinaryOp::Add, &parts, span);
                self.arith(BinaryOp::Div, &total, &Value::Num(n), span)
            }
            "max" => self.fold_parts(BinaryOp::Max, &parts, span),
            "min" => self.fold_parts(BinaryOp::Min, &parts, span),
            "var" | "std" => {
                let total = self.fold_parts(BinaryOp::Add, &parts, span);
                let mean = self.arith(BinaryOp::Div, &total, &Value::Num(n), span);
                let squares: Vec<Value> = parts
                    .iter()
                    .map(|p| {
                        let d = self.arith(BinaryOp::Sub, p, &mean, span);
                        self.arith(BinaryOp::Mul, &d, &d, span)
                    })
                    .collect();
                let total = self.fold_parts(BinaryOp::Add, &squares, span);
                let var = self.arith(BinaryOp::Div, &total, &Value::Num(n - ddof as f64), span);
                if name.name == "var" {
                    var
                } else {
                    self.math(UnaryOp::Sqrt, &var, span)
                }
            }
            _ => {
                // logsumexp: m + log Σ exp(x_k − m) with m = max_k x_k held constant (the
                // gradient is the softmax either way; this keeps `max` out of it).
                let max = self.fold_parts(BinaryOp::Max, &parts, span);
                let shift = match &max {
                    Value::Tensor(t) => match t.node {
                        Some(node) => self.emit(Op::StopGrad(node), Elem::F32, t.space, span),
                        None => max.clone(),
                    },
                    other => other.clone(),
                };
                let exps: Vec<Value> = parts
                    .iter()
                    .map(|p| {
                        let d = self.arith(BinaryOp::Sub, p, &shift, span);
                        self.math(UnaryOp::Exp, &d, span)
                    })
                    .collect();
                let total = self.fold_parts(BinaryOp::Add, &exps, span);
                let log = self.math(UnaryOp::Log, &total, span);
                self.arith(BinaryOp::Add, &shift, &log, span)
            }
        }
    }

    /// `parts[0] op parts[1] op …`, folding compile-time numbers.
    fn fold_parts(&mut self, op: BinaryOp, parts: &[Value], span: Span) -> Value {
        let mut acc = parts.first().cloned().unwrap_or(Value::Poison);
        for part in &parts[1.min(parts.len())..] {
            acc = self.arith(op, &acc, part, span);
        }
        acc
    }

    /// An f32 binary operation on two values (folded when both are numbers).
    fn arith(&mut self, op: BinaryOp, a: &Value, b: &Value, span: Span) -> Value {
        if let (Value::Num(x), Value::Num(y)) = (a, b) {
            let folded = match op {
                BinaryOp::Add => Some(x + y),
                BinaryOp::Sub => Some(x - y),
                BinaryOp::Mul => Some(x * y),
                BinaryOp::Div => Some(x / y),
                BinaryOp::Max => Some(x.max(*y)),
                BinaryOp::Min => Some(x.min(*y)),
                _ => None,
            };
            if let Some(v) = folded {
                return Value::Num(v);
            }
        }
        if *a == Value::Poison || *b == Value::Poison {
            return Value::Poison;
        }
        self.binary_node(op, &[(a, span), (b, span)], Elem::F32, span)
    }

    /// An f32 unary function of a value (folded on numbers).
    fn math(&mut self, op: UnaryOp, x: &Value, span: Span) -> Value {
        if let Value::Num(v) = x {
            let folded = match op {
                UnaryOp::Sqrt => Some(v.sqrt()),
                UnaryOp::Exp => Some(v.exp()),
                UnaryOp::Log => Some(v.ln()),
                _ => None,
            };
            if let Some(v) = folded {
                return Value::Num(v);
            }
        }
        match x {
            Value::Tensor(Tensor { .. }) => self.unary_node(op, x, Elem::F32, span),
            _ => Value::Poison,
        }
    }

    /// Reports a channelled loss/metric/output/update; true when `value` is channelled.
    pub(super) fn reject_channelled(&mut self, value: &Value, span: Span, what: &str) -> bool {
        let Value::Chan(chan) = value else {
            return false;
        };
        let shown = self.type_name(value);
        self.report(
            Diagnostic::error(
                codes::CHANNEL_NOT_REDUCED,
                format!("{what} is channelled (`{shown}`)"),
                span,
                format!("one value per channel of `{}`", chan.axis),
            )
            .with_hint(format!(
                "reduce it with sum[{0}](…) (or mean[{0}], max[{0}], …)",
                chan.axis
            )),
        );
        true
    }
}
