//! Expressions: names, operators, `if`, blocks, and the helpers that turn values into IR
//! nodes (constants, explicit broadcasts).

use super::{Binding, BindingKind, Lowerer, Sp, Tensor, Value};
use crate::ast::{BinOp, Block, Else, Expr, ExprKind, Ident, Span, UnOp};
use crate::diag::{codes, Diagnostic};
use rlobj_ir::{BinaryOp, Elem, Node, NodeId, Op, SpaceId, SrcSpan, UnaryOp};

pub(crate) fn src_span(span: Span) -> SrcSpan {
    SrcSpan {
        file: span.file,
        start: span.start as u32,
        end: span.end as u32,
    }
}

impl Lowerer<'_> {
    /// Appends a node when lowering concretely; the generic check only tracks the type.
    pub fn emit(&mut self, op: Op, elem: Elem, space: Sp, span: Span) -> Value {
        let node = match (self.concrete, space) {
            (true, Sp::Known(space)) => Some(self.prog.push(Node {
                op,
                elem,
                space,
                span: src_span(span),
            })),
            _ => None,
        };
        Value::Tensor(Tensor { elem, space, node })
    }

    /// The value as a node in its own space (compile-time values become batch constants).
    pub fn node_of(&mut self, value: &Value, span: Span) -> Option<NodeId> {
        if !self.concrete {
            return None;
        }
        let (number, elem) = match value {
            Value::Num(n) => (*n, Elem::F32),
            Value::Bool(b) => (f64::from(u8::from(*b)), Elem::Bool),
            Value::Tensor(t) => return t.node,
            _ => return None,
        };
        let key = (number.to_bits(), elem == Elem::Bool);
        if let Some(node) = self.const_nodes.get(&key) {
            return Some(*node);
        }
        let node = self.prog.push(Node {
            op: Op::Const(number),
            elem,
            space: SpaceId::BATCH,
            span: src_span(span),
        });
        self.const_nodes.insert(key, node);
        Some(node)
    }

    /// The value as a node in `space` (which the caller checked is within the value's
    /// space), inserting an explicit `Broadcast`.
    pub fn coerce(&mut self, value: &Value, space: Sp, span: Span) -> Option<NodeId> {
        let node = self.node_of(value, span)?;
        let Sp::Known(target) = space else {
            return None;
        };
        let from = self.prog.node(node).space;
        if from == target {
            return Some(node);
        }
        if let Some(existing) = self.broadcast_nodes.get(&(node, target)) {
            return Some(*existing);
        }
        let elem = self.prog.node(node).elem;
        let broadcast = self.prog.push(Node {
            op: Op::Broadcast(node),
            elem,
            space: target,
            span: src_span(span),
        });
        self.broadcast_nodes.insert((node, target), broadcast);
        Some(broadcast)
    }

    /// The space of a runtime-usable value (compile-time numbers and bools are batch values).
    pub fn space_of(value: &Value) -> Option<Sp> {
        match value {
            Value::Num(_) | Value::Bool(_) => Some(Sp::Known(SpaceId::BATCH)),
            Value::Tensor(t) => Some(t.space),
            _ => None,
        }
    }

    pub fn elem_of(value: &Value) -> Option<Elem> {
        match value {
            Value::Num(_) => Some(Elem::F32),
            Value::Bool(_) => Some(Elem::Bool),
            Value::Tensor(t) => Some(t.elem),
            _ => None,
        }
    }

    /// The finer of several spaces, or an error naming the two unrelated operands.
    pub fn join_spaces(&mut self, operands: &[(Sp, Span)], whole: Span) -> Option<Sp> {
        let mut result: Option<(Sp, Span)> = None;
        for &(space, span) in operands {
            let Some((current, current_span)) = result else {
                result = Some((space, span));
                continue;
            };
            match (current, space) {
                (Sp::Any, _) | (_, Sp::Any) => result = Some((Sp::Any, span)),
                _ if self.within(space, current) => result = Some((space, span)),
                _ if self.within(current, space) => {}
                _ => {
                    let (a, b) = (self.space_name(current), self.space_name(space));
                    self.report(
                        Diagnostic::error(
                            codes::UNRELATED_SPACES,
                            format!("cannot combine values in unrelated spaces `{a}` and `{b}`"),
                            whole,
                            format!("`{a}` and `{b}` do not nest"),
                        )
                        .with_secondary(current_span, format!("this is in `{a}`"))
                        .with_secondary(span, format!("this is in `{b}`"))
                        .with_hint(
                            "reduce both to a space that contains them, e.g. `mean[batch](…)`",
                        ),
                    );
                    return None;
                }
            }
        }
        result.map(|(space, _)| space)
    }

    /// Requires an f32 operand; reports at the operand otherwise.
    pub fn expect_f32(&mut self, value: &Value, span: Span, what: &str) -> bool {
        match value {
            Value::Num(_) => true,
            Value::Tensor(t) if t.elem == Elem::F32 => true,
            Value::Poison => false,
            Value::Bool(_) | Value::Tensor(_) | Value::Chan(_) => {
                let found = self.type_name(value);
                self.report(
                    Diagnostic::error(
                        codes::EXPECTED_F32,
                        format!("{what} needs `f32`, found `{found}`"),
                        span,
                        "expected f32",
                    )
                    .with_hint("convert a bool to 0/1 with `float(…)`"),
                );
                false
            }
            Value::Str(_) | Value::AnyStr => {
                self.report_string_as_value(span);
                false
            }
        }
    }

    pub fn expect_bool(&mut self, value: &Value, span: Span, what: &str) -> bool {
        match value {
            Value::Bool(_) => true,
            Value::Tensor(t) if t.elem == Elem::Bool => true,
            Value::Poison => false,
            Value::Num(_) | Value::Tensor(_) | Value::Chan(_) => {
                let found = self.type_name(value);
                self.report(
                    Diagnostic::error(
                        codes::EXPECTED_BOOL,
                        format!("{what} needs `bool`, found `{found}`"),
                        span,
                        "expected bool",
                    )
                    .with_hint("compare to get a bool, e.g. `x > 0`"),
                );
                false
            }
            Value::Str(_) | Value::AnyStr => {
                self.report_string_as_value(span);
                false
            }
        }
    }

    pub fn report_string_as_value(&mut self, span: Span) {
        self.report(
            Diagnostic::error(
                codes::STRING_AS_VALUE,
                "a string is not a tensor value",
                span,
                "compile-time string",
            )
            .with_hint(
                "strings can only be compared (`mode == \"a\"`) or passed to `str` parameters",
            ),
        );
    }

    pub fn lookup(&self, name: &str) -> Option<&Binding> {
        let frame = self.frame()?;
        frame
            .scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.iter().rev())
            .find(|b| b.name == name)
    }

    /// Adds a name to the innermost scope; a name defined twice in one body is an error
    /// showing both definitions.
    pub fn define(&mut self, name: &Ident, value: Value, kind: BindingKind) {
        if let Some(previous) = self.lookup(&name.name) {
            let previous_span = previous.span;
            self.report(
                Diagnostic::error(
                    codes::DUPLICATE_NAME,
                    format!("`{}` is defined twice", name.name),
                    name.span,
                    "defined again here",
                )
                .with_secondary(previous_span, "first defined here")
                .with_hint("give the second definition another name"),
            );
        }
        if let Some(scope) = self.frames.last_mut().and_then(|f| f.scopes.last_mut()) {
            scope.push(Binding {
                name: name.name.clone(),
                value,
                span: name.span,
                kind,
            });
        }
    }

    /// Evaluates an expression; one that reads a channelled name is lowered once per
    /// channel (see [`super::channel`]).
    pub fn expr(&mut self, expr: &Expr) -> Value {
        match self.unroll_channels(expr) {
            Some(value) => value,
            None => self.expr_plain(expr),
        }
    }

    /// Evaluates an expression with channelled names standing for their current component.
    pub(super) fn expr_plain(&mut self, expr: &Expr) -> Value {
        match &expr.kind {
            ExprKind::Number { value, .. } => Value::Num(*value),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Var(path) => self.variable(path, expr.span),
            ExprKind::Unary(op, operand) => self.unary(*op, operand, expr.span),
            ExprKind::Binary(op, lhs, rhs) => self.binary(*op, lhs, rhs, expr.span),
            ExprKind::Call {
                callee,
                space,
                args,
            } => self.call(callee, space.as_ref(), args, expr.span),
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => self.if_expr(cond, then, otherwise, expr.span),
            ExprKind::Where(value, _) => {
                self.report(
                    Diagnostic::error(
                        codes::MISPLACED_WHERE,
                        "`where` is only allowed as the first argument of a reduction or segment op",
                        expr.span,
                        "not inside a reduction",
                    )
                    .with_secondary(value.span, "this value is restricted")
                    .with_hint("write it inside the reduction: `mean[batch](x where keep)`, or use `select(keep, x, 0)`"),
                );
                Value::Poison
            }
            ExprKind::Error => Value::Poison,
        }
    }

    fn variable(&mut self, path: &[Ident], span: Span) -> Value {
        let [name] = path else {
            return self.qualified_value(path, span);
        };
        if let Some(binding) = self.lookup(&name.name) {
            if binding.kind == BindingKind::Ids {
                let defined = binding.span;
                self.report(
                    Diagnostic::error(
                        codes::ID_AS_VALUE,
                        format!(
                            "`{}` is an id input: it declares a space and has no value",
                            name.name
                        ),
                        span,
                        "not a value",
                    )
                    .with_secondary(defined, "declared here")
                    .with_hint("use the space it declares, e.g. `count[grp]()` or `mean[grp](x)`"),
                );
                return Value::Poison;
            }
            if let Value::Chan(chan) = &binding.value {
                return self
                    .channel_component(chan)
                    .unwrap_or(Value::Chan(chan.clone()));
            }
            return binding.value.clone();
        }
        if self.find_function(&name.name).is_some() || super::is_builtin(&name.name) {
            self.report(
                Diagnostic::error(
                    codes::FUNCTION_AS_VALUE,
                    format!("`{}` is a function, not a value", name.name),
                    span,
                    "function used as a value",
                )
                .with_hint(format!("call it: `{}(…)`", name.name)),
            );
            return Value::Poison;
        }
        let mut diagnostic = Diagnostic::error(
            codes::UNKNOWN_NAME,
            format!("unknown name `{}`", name.name),
            span,
            "not defined in this scope",
        );
        let visible: Vec<String> = self
            .frame()
            .map(|f| f.scopes.iter().flatten().map(|b| b.name.clone()).collect())
            .unwrap_or_default();
        if let Some(close) = super::closest(&name.name, visible.iter().map(String::as_str)) {
            diagnostic = diagnostic.with_hint(format!("did you mean `{close}`?"));
        } else {
            diagnostic = diagnostic.with_hint(
                "names must be defined (by `let`, a declaration or a parameter) before use",
            );
        }
        self.report(diagnostic);
        Value::Poison
    }

    fn qualified_value(&mut self, path: &[Ident], span: Span) -> Value {
        let shown: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
        let shown = shown.join("::");
        if self.resolve_qualified(path, false).is_some() {
            self.report(
                Diagnostic::error(
                    codes::FUNCTION_AS_VALUE,
                    format!("`{shown}` is a function, not a value"),
                    span,
                    "function used as a value",
                )
                .with_hint(format!("call it: `{shown}(…)`")),
            );
        }
        Value::Poison
    }

    fn unary(&mut self, op: UnOp, operand: &Expr, span: Span) -> Value {
        let value = self.expr(operand);
        match op {
            UnOp::Neg => {
                if !self.expect_f32(&value, operand.span, "negation") {
                    return Value::Poison;
                }
                if let Value::Num(n) = value {
                    return Value::Num(-n);
                }
                self.unary_node(UnaryOp::Neg, &value, Elem::F32, span)
            }
            UnOp::Not => {
                if !self.expect_bool(&value, operand.span, "`!`") {
                    return Value::Poison;
                }
                if let Value::Bool(b) = value {
                    return Value::Bool(!b);
                }
                self.unary_node(UnaryOp::Not, &value, Elem::Bool, span)
            }
        }
    }

    pub fn unary_node(&mut self, op: UnaryOp, value: &Value, elem: Elem, span: Span) -> Value {
        let Some(space) = Self::space_of(value) else {
            return Value::Poison;
        };
        match self.node_of(value, span) {
            Some(node) => self.emit(Op::Unary(op, node), elem, space, span),
            None => Value::Tensor(Tensor {
                elem,
                space,
                node: None,
            }),
        }
    }

    fn binary(&mut self, op: BinOp, lhs: &Expr, rhs: &Expr, span: Span) -> Value {
        let left = self.expr(lhs);
        let right = self.expr(rhs);
        if left == Value::Poison || right == Value::Poison {
            return Value::Poison;
        }
        let is_string = |v: &Value| matches!(v, Value::Str(_) | Value::AnyStr);
        if matches!(op, BinOp::Eq | BinOp::Ne) && (is_string(&left) || is_string(&right)) {
            return self.compare_strings(op, &left, &right, (lhs.span, rhs.span), span);
        }
        let (ir_op, operand_elem, result_elem) = match op {
            BinOp::Add => (BinaryOp::Add, Some(Elem::F32), Elem::F32),
            BinOp::Sub => (BinaryOp::Sub, Some(Elem::F32), Elem::F32),
            BinOp::Mul => (BinaryOp::Mul, Some(Elem::F32), Elem::F32),
            BinOp::Div => (BinaryOp::Div, Some(Elem::F32), Elem::F32),
            BinOp::Lt => (BinaryOp::Lt, Some(Elem::F32), Elem::Bool),
            BinOp::Le => (BinaryOp::Le, Some(Elem::F32), Elem::Bool),
            BinOp::Gt => (BinaryOp::Gt, Some(Elem::F32), Elem::Bool),
            BinOp::Ge => (BinaryOp::Ge, Some(Elem::F32), Elem::Bool),
            BinOp::Eq => (BinaryOp::Eq, None, Elem::Bool),
            BinOp::Ne => (BinaryOp::Ne, None, Elem::Bool),
            BinOp::And => (BinaryOp::And, Some(Elem::Bool), Elem::Bool),
            BinOp::Or => (BinaryOp::Or, Some(Elem::Bool), Elem::Bool),
        };
        let what = format!("`{}`", binop_symbol(op));
        let ok = match operand_elem {
            Some(Elem::F32) => {
                let a = self.expect_f32(&left, lhs.span, &what);
                self.expect_f32(&right, rhs.span, &what) && a
            }
            Some(Elem::Bool) => {
                let a = self.expect_bool(&left, lhs.span, &what);
                self.expect_bool(&right, rhs.span, &what) && a
            }
            None => match Self::elem_of(&left) {
                Some(Elem::F32) => self.expect_f32(&right, rhs.span, &what),
                Some(Elem::Bool) => self.expect_bool(&right, rhs.span, &what),
                None => false,
            },
        };
        if !ok {
            return Value::Poison;
        }
        if let Some(folded) = fold_binary(op, &left, &right) {
            return folded;
        }
        self.binary_node(
            ir_op,
            &[(&left, lhs.span), (&right, rhs.span)],
            result_elem,
            span,
        )
    }

    /// An elementwise node over operands joined to their finest space.
    pub fn binary_node(
        &mut self,
        op: BinaryOp,
        operands: &[(&Value, Span); 2],
        elem: Elem,
        span: Span,
    ) -> Value {
        let values = [operands[0].0.clone(), operands[1].0.clone()];
        let spans = [operands[0].1, operands[1].1];
        let Some([a, b]) = self.joined_nodes(&values, &spans, span) else {
            return self.poison_or_unknown(&values, &spans, elem, span);
        };
        let space = Sp::Known(self.prog.node(a).space);
        self.emit(Op::Binary(op, a, b), elem, space, span)
    }

    /// Operands coerced to their common (finest) space; `None` in the generic check or
    /// after an error.
    pub fn joined_nodes<const N: usize>(
        &mut self,
        values: &[Value; N],
        spans: &[Span; N],
        whole: Span,
    ) -> Option<[NodeId; N]> {
        let mut operands = Vec::with_capacity(N);
        for (value, span) in values.iter().zip(spans) {
            operands.push((Self::space_of(value)?, *span));
        }
        let space = self.join_spaces(&operands, whole)?;
        if !self.concrete {
            return None;
        }
        let mut nodes = [NodeId(0); N];
        for (i, (value, span)) in values.iter().zip(spans).enumerate() {
            nodes[i] = self.coerce(value, space, *span)?;
        }
        Some(nodes)
    }

    /// After `joined_nodes` failed: an unknown-valued tensor in the generic check if the
    /// spaces are compatible, or poison after an error.
    pub fn poison_or_unknown(
        &mut self,
        values: &[Value],
        spans: &[Span],
        elem: Elem,
        whole: Span,
    ) -> Value {
        if self.concrete {
            return Value::Poison;
        }
        let mut operands = Vec::new();
        for (value, span) in values.iter().zip(spans) {
            match Self::space_of(value) {
                Some(space) => operands.push((space, *span)),
                None => return Value::Poison,
            }
        }
        match self.join_spaces(&operands, whole) {
            Some(space) => Value::Tensor(Tensor {
                elem,
                space,
                node: None,
            }),
            None => Value::Poison,
        }
    }

    fn compare_strings(
        &mut self,
        op: BinOp,
        left: &Value,
        right: &Value,
        spans: (Span, Span),
        whole: Span,
    ) -> Value {
        let equal = match (left, right) {
            (Value::Str(a), Value::Str(b)) => Some(a == b),
            (Value::Str(_) | Value::AnyStr, Value::Str(_) | Value::AnyStr) => None,
            _ => {
                let (non_string, span) = if matches!(left, Value::Str(_) | Value::AnyStr) {
                    (right, spans.1)
                } else {
                    (left, spans.0)
                };
                let found = self.type_name(non_string);
                self.report(
                    Diagnostic::error(
                        codes::COMPARE_MISMATCH,
                        format!("cannot compare a string with `{found}`"),
                        span,
                        "expected a string",
                    )
                    .with_secondary(whole, "in this comparison"),
                );
                return Value::Poison;
            }
        };
        match equal {
            Some(eq) => Value::Bool(if op == BinOp::Eq { eq } else { !eq }),
            None => Value::Tensor(Tensor {
                elem: Elem::Bool,
                space: Sp::Any,
                node: None,
            }),
        }
    }

    fn if_expr(&mut self, cond: &Expr, then: &Block, otherwise: &Else, span: Span) -> Value {
        let condition = self.expr(cond);
        match condition {
            Value::Bool(true) => return self.block(then),
            Value::Bool(false) => return self.else_branch(otherwise),
            Value::Poison => {
                self.block(then);
                self.else_branch(otherwise);
                return Value::Poison;
            }
            _ => {}
        }
        if !self.expect_bool(&condition, cond.span, "an `if` condition") {
            return Value::Poison;
        }
        let then_value = self.block(then);
        let else_value = self.else_branch(otherwise);
        let else_span = match otherwise {
            Else::Block(block) => block.value.span,
            Else::If(expr) => expr.span,
        };
        let then_span = then.value.span;
        if then_value == Value::Poison || else_value == Value::Poison {
            return Value::Poison;
        }
        // A generic condition that is really compile time (a `str` parameter compared).
        let generic_condition = matches!(
            condition,
            Value::Tensor(Tensor {
                space: Sp::Any,
                node: None,
                ..
            })
        );
        if generic_condition
            && !self.concrete
            && matches!(then_value, Value::Str(_) | Value::AnyStr)
        {
            return Value::AnyStr;
        }
        for (value, value_span) in [(&then_value, then_span), (&else_value, else_span)] {
            if matches!(value, Value::Str(_) | Value::AnyStr) {
                self.report_string_as_value(value_span);
                return Value::Poison;
            }
        }
        let (then_elem, else_elem) = (Self::elem_of(&then_value), Self::elem_of(&else_value));
        if then_elem != else_elem {
            let (a, b) = (self.type_name(&then_value), self.type_name(&else_value));
            self.report(
                Diagnostic::error(
                    codes::BRANCH_MISMATCH,
                    format!("the branches of this `if` differ: `{a}` and `{b}`"),
                    else_span,
                    format!("this is `{b}`"),
                )
                .with_secondary(then_span, format!("this is `{a}`"))
                .with_hint("both branches must be f32, or both bool; convert with `float(…)`"),
            );
            return Value::Poison;
        }
        let elem = then_elem.unwrap_or(Elem::F32);
        let values = [condition, then_value, else_value];
        let spans = [cond.span, then_span, else_span];
        match self.joined_nodes(&values, &spans, span) {
            Some([c, a, b]) => {
                let space = Sp::Known(self.prog.node(c).space);
                self.emit(Op::Select(c, a, b), elem, space, span)
            }
            None => self.poison_or_unknown(&values, &spans, elem, span),
        }
    }

    fn else_branch(&mut self, otherwise: &Else) -> Value {
        match otherwise {
            Else::Block(block) => self.block(block),
            Else::If(expr) => self.expr(expr),
        }
    }

    pub fn block(&mut self, block: &Block) -> Value {
        if let Some(frame) = self.frames.last_mut() {
            frame.scopes.push(Vec::new());
        }
        for binding in &block.lets {
            let value = self.expr(&binding.value);
            self.define(&binding.name, value, BindingKind::Let);
        }
        let value = self.expr(&block.value);
        if let Some(frame) = self.frames.last_mut() {
            frame.scopes.pop();
        }
        value
    }
}

pub(crate) fn binop_symbol(op: BinOp) -> &'static str {
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

/// Folds an operator on two compile-time values.
fn fold_binary(op: BinOp, left: &Value, right: &Value) -> Option<Value> {
    match (left, right) {
        (Value::Num(a), Value::Num(b)) => Some(match op {
            BinOp::Add => Value::Num(a + b),
            BinOp::Sub => Value::Num(a - b),
            BinOp::Mul => Value::Num(a * b),
            BinOp::Div => Value::Num(a / b),
            BinOp::Lt => Value::Bool(a < b),
            BinOp::Le => Value::Bool(a <= b),
            BinOp::Gt => Value::Bool(a > b),
            BinOp::Ge => Value::Bool(a >= b),
            BinOp::Eq => Value::Bool(a == b),
            BinOp::Ne => Value::Bool(a != b),
            BinOp::And | BinOp::Or => return None,
        }),
        (Value::Bool(a), Value::Bool(b)) => Some(match op {
            BinOp::And => Value::Bool(*a && *b),
            BinOp::Or => Value::Bool(*a || *b),
            BinOp::Eq => Value::Bool(a == b),
            BinOp::Ne => Value::Bool(a != b),
            _ => return None,
        }),
        _ => None,
    }
}
