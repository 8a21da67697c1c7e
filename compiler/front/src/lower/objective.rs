//! Objective declarations (inputs, params, consts, states, lets, loss, metrics, outputs,
//! updates) → an IR [`Program`], and the generic check of every function.

use super::{BindingKind, Chan, Frame, Lowerer, Sp, Tensor, Value};
use crate::ast::{Decl, DeclKind, Expr, Ident, ObjectiveDecl, SpaceDecl, Span, TypeExpr, TypeKind};
use crate::diag::{codes, Diagnostic};
use crate::modules::{ModId, World};
use rlobj_ir::{
    ChannelSlot, ConstValue, Elem, Input, InputKind, Op, Param, Program, Space, SpaceId, SpaceKind,
    State, StateId,
};
use std::collections::HashMap;

use super::expr::src_span;

/// Checks every function of every loaded module once, with caller-dependent spaces left
/// open: names, arities and element types.
pub(crate) fn check_functions(world: &World) -> Vec<Diagnostic> {
    let mut lowerer = Lowerer::new(world, "", false);
    for func in 0..world.fns.len() {
        lowerer.check_generic_body(func);
    }
    lowerer.diags
}

impl Lowerer<'_> {
    /// The value a parameter stands for while its function is checked generically.
    fn generic_param(&mut self, ty: &TypeExpr) -> Value {
        if self.reject_signature_channel(ty) {
            return Value::Poison;
        }
        let (elem, space) = match &ty.kind {
            TypeKind::F32(space) => (Elem::F32, space),
            TypeKind::Bool(space) => (Elem::Bool, space),
            TypeKind::Str | TypeKind::Enum(_) => return Value::AnyStr,
            TypeKind::Id(_) => {
                self.report(
                    Diagnostic::error(
                        codes::INVALID_TYPE,
                        "`id` types are only for objective inputs",
                        ty.span,
                        "not allowed in a function",
                    )
                    .with_hint(
                        "take the values instead, and reduce over the space the id input declares",
                    ),
                );
                return Value::Poison;
            }
            TypeKind::Error => return Value::Poison,
        };
        let space = space
            .as_ref()
            .and_then(|s| self.lookup_space(&s.name))
            .unwrap_or(Sp::Any);
        Value::Tensor(Tensor {
            elem,
            space,
            node: None,
        })
    }

    /// Channel axes are unrolled in the objective; a function sees one channel at a time
    /// and is written over ordinary values, so its signature cannot name one.
    fn reject_signature_channel(&mut self, ty: &TypeExpr) -> bool {
        let Some(axis) = &ty.channel else {
            return false;
        };
        self.report(
            Diagnostic::error(
                codes::CHANNEL_IN_SIGNATURE,
                format!(
                    "a function type cannot have a channel axis (`{}`)",
                    axis.name
                ),
                axis.span,
                "channel axis in a function signature",
            )
            .with_hint(
                "write the function over one channel (`f32[seq]`) and call it with a channelled \
                 value: the call is made once per channel",
            ),
        );
        true
    }

    fn check_default_type(&mut self, ty: &TypeExpr, value: &Value, span: Span) {
        match &ty.kind {
            TypeKind::F32(_) => {
                self.expect_f32(value, span, "this default");
            }
            TypeKind::Bool(_) => {
                self.expect_bool(value, span, "this default");
            }
            TypeKind::Enum(options) => {
                if let Value::Str(s) = value {
                    if !options.iter().any(|(o, _)| o == s) {
                        self.report_not_in_enum(s, options, span, ty.span);
                    }
                }
            }
            _ => {}
        }
    }

    /// Checks a function body with generic parameters, as a call with no arguments would
    /// after binding (defaults are already checked).
    fn check_generic_body(&mut self, func: usize) {
        let world = self.world;
        let def = &world.fns[func];
        let mut space_vars = HashMap::new();
        for param in &def.decl.params {
            if let TypeKind::F32(Some(space)) | TypeKind::Bool(Some(space)) = &param.ty.kind {
                if !matches!(space.name.as_str(), "batch" | "seq" | "tok") {
                    space_vars.insert(space.name.clone(), Sp::Any);
                }
            }
        }
        self.frames.push(Frame {
            module: def.module,
            scopes: vec![Vec::new()],
            space_vars,
            call: None,
        });
        for param in &def.decl.params {
            let value = self.generic_param(&param.ty);
            if let Some(default) = &param.default {
                let default_value = self.expr(default);
                self.check_default_type(&param.ty, &default_value, default.span);
            }
            self.define(&param.name, value, BindingKind::Param);
        }
        if let Some(ret) = &def.decl.ret {
            self.reject_signature_channel(ret);
        }
        self.active_fns.push(func);
        let result = self.block(&def.decl.body);
        self.active_fns.pop();
        if let (Some(ret), false) = (&def.decl.ret, result == Value::Poison) {
            let expected = match &ret.kind {
                TypeKind::F32(_) => Some(Elem::F32),
                TypeKind::Bool(_) => Some(Elem::Bool),
                _ => None,
            };
            if let (Some(expected), Some(found)) = (expected, Self::elem_of(&result)) {
                if expected != found {
                    let shown = self.type_name(&result);
                    self.report(
                        Diagnostic::error(codes::RETURN_MISMATCH, format!("the body is `{shown}`, but the function declares another return type"), def.decl.body.value.span, format!("this is `{shown}`"))
                            .with_secondary(ret.span, "declared return type"),
                    );
                }
            }
        }
        self.frames.pop();
    }
}

/// Lowers the objective of module `module` with const overrides applied.
pub(crate) fn lower_objective(
    world: &World,
    module: ModId,
    objective: &ObjectiveDecl,
    overrides: &[(String, String)],
) -> (Program, Vec<Diagnostic>) {
    let mut lowerer = Lowerer::new(world, &objective.name.name, true);
    lowerer.frames.push(Frame {
        module,
        scopes: vec![Vec::new()],
        space_vars: HashMap::new(),
        call: None,
    });
    let mut state = ObjectiveState::default();
    for decl in &objective.decls {
        lowerer.lower_decl(decl, &mut state, overrides);
    }
    if lowerer.prog.loss.is_none()
        && lowerer.prog.outputs.is_empty()
        && state.loss_span.is_none()
        && !state.had_output
    {
        lowerer.report(
            Diagnostic::error(
                codes::NO_LOSS_OR_OUTPUT,
                format!(
                    "objective `{}` has no `loss` and no `output`",
                    objective.name.name
                ),
                objective.name.span,
                "produces nothing",
            )
            .with_hint("add `loss = …` (a batch scalar), or `output name = …` for a transform"),
        );
    }
    if state.loss_span.is_none() && state.had_output {
        if let Some(grad) = state.first_grad {
            lowerer.report(
                Diagnostic::error(
                    codes::GRAD_WITHOUT_LOSS,
                    "`@grad` in an objective without a loss",
                    grad,
                    "nothing to differentiate",
                )
                .with_hint("add a `loss = …`, or remove `@grad`"),
            );
        }
    }
    (lowerer.prog, lowerer.diags)
}

#[derive(Default)]
struct ObjectiveState {
    loss_span: Option<Span>,
    had_output: bool,
    first_grad: Option<Span>,
    updated: HashMap<String, Span>,
    results: HashMap<String, Span>,
}

impl Lowerer<'_> {
    fn lower_decl(
        &mut self,
        decl: &Decl,
        state: &mut ObjectiveState,
        overrides: &[(String, String)],
    ) {
        match &decl.kind {
            DeclKind::Input {
                name,
                ty,
                grad,
                declares,
                default,
            } => self.lower_input(name, ty, *grad, declares.as_ref(), default.as_ref(), state),
            DeclKind::Param { name, ty, default } => self.lower_param(name, ty, default),
            DeclKind::Const { name, ty, value } => {
                self.lower_const(name, ty.as_ref(), value, overrides)
            }
            DeclKind::State { name, ty, init } => self.lower_state(name, ty, init),
            DeclKind::Let(binding) => {
                let value = self.expr(&binding.value);
                self.define(&binding.name, value, BindingKind::Let);
            }
            DeclKind::Loss(expr) => {
                if let Some(first) = state.loss_span {
                    self.report(
                        Diagnostic::error(
                            codes::MULTIPLE_LOSSES,
                            "an objective has exactly one `loss`",
                            decl.span,
                            "second loss",
                        )
                        .with_secondary(first, "first loss")
                        .with_hint("add the terms: `loss = a + b`"),
                    );
                    return;
                }
                state.loss_span = Some(decl.span);
                let value = self.expr(expr);
                if let Some(node) = self.batch_scalar(&value, expr.span, ScalarUse::Loss) {
                    self.prog.loss = Some(node);
                }
            }
            DeclKind::Metric { name, value } => {
                self.check_result_name(name, state);
                let value = self.expr(value);
                let span = name.span.join(decl.span);
                if let Some(node) = self.batch_scalar(&value, span, ScalarUse::Metric) {
                    self.prog.metrics.push((name.name.clone(), node));
                }
            }
            DeclKind::Output { name, value } => {
                self.check_result_name(name, state);
                state.had_output = true;
                let result = self.expr(value);
                if self.reject_channelled(&result, value.span, &format!("output `{}`", name.name)) {
                    return;
                }
                if matches!(result, Value::Str(_) | Value::AnyStr) {
                    self.report(
                        Diagnostic::error(
                            codes::OUTPUT_NOT_TENSOR,
                            format!("output `{}` is a compile-time string", name.name),
                            value.span,
                            "not a tensor",
                        )
                        .with_hint("outputs are f32 or bool values"),
                    );
                    return;
                }
                if let Some(node) = self.node_of(&result, value.span) {
                    self.prog.outputs.push((name.name.clone(), node));
                }
            }
            DeclKind::Update { name, value } => self.lower_update(name, value, state),
            DeclKind::Error => {}
        }
    }

    fn check_result_name(&mut self, name: &Ident, state: &mut ObjectiveState) {
        if let Some(previous) = state.results.get(&name.name) {
            let previous = *previous;
            self.report(
                Diagnostic::error(
                    codes::DUPLICATE_NAME,
                    format!("`{}` is produced twice", name.name),
                    name.span,
                    "defined again here",
                )
                .with_secondary(previous, "first defined here"),
            );
        } else {
            state.results.insert(name.name.clone(), name.span);
        }
    }

    fn lower_input(
        &mut self,
        name: &Ident,
        ty: &TypeExpr,
        grad: Option<Span>,
        declares: Option<&SpaceDecl>,
        default: Option<&Expr>,
        state: &mut ObjectiveState,
    ) {
        let input_id = rlobj_ir::InputId(self.prog.inputs.len() as u32);
        let (elem, space_ident) = match &ty.kind {
            TypeKind::Id(indexed) => {
                self.lower_id_input(name, indexed, grad, declares, default, ty.span);
                return;
            }
            TypeKind::F32(space) => (Elem::F32, space),
            TypeKind::Bool(space) => (Elem::Bool, space),
            TypeKind::Str | TypeKind::Enum(_) => {
                self.report(
                    Diagnostic::error(codes::INVALID_TYPE, "inputs are tensors: `f32[…]`, `bool[…]` or `id[…]`", ty.span, "not an input type")
                        .with_hint("compile-time strings are declared with `const name: \"a\" | \"b\" = \"a\"`"),
                );
                self.define(name, Value::Poison, BindingKind::Input);
                return;
            }
            TypeKind::Error => {
                self.define(name, Value::Poison, BindingKind::Input);
                return;
            }
        };
        if let (Some(ident), None) = (space_ident, &ty.channel) {
            if self.names_channel_const(ident) {
                self.report(
                    Diagnostic::error(
                        codes::INVALID_TYPE,
                        format!("`{}` is a const, not an index space", ident.name),
                        ident.span,
                        "a channel axis needs a row space before it",
                    )
                    .with_hint(format!(
                        "a channelled input is `f32[seq, {0}]` or `f32[tok, {0}]`; per-channel \
                         scalars are params: `param w: f32[{0}] = 1.0`",
                        ident.name
                    )),
                );
                self.define(name, Value::Poison, BindingKind::Input);
                return;
            }
        }
        let channels = match &ty.channel {
            Some(axis) => match self.declare_channel_axis(axis) {
                Some(count) => Some((axis.name.clone(), count)),
                None => {
                    self.define(name, Value::Poison, BindingKind::Input);
                    return;
                }
            },
            None => None,
        };
        let space = match space_ident {
            None => Some(SpaceId::BATCH),
            Some(ident) => match self.resolve_space(ident) {
                Some(Sp::Known(space)) => Some(space),
                _ => None,
            },
        };
        if let (Some(grad_span), Elem::Bool) = (grad, elem) {
            self.report(
                Diagnostic::error(
                    codes::GRAD_NOT_F32,
                    format!("`@grad` on `{}`, which is not `f32`", name.name),
                    grad_span,
                    "gradients exist only for f32 inputs",
                )
                .with_secondary(ty.span, "this input is bool"),
            );
        }
        let grad = match (grad, &channels) {
            (Some(grad_span), Some((axis, _))) => {
                self.report(
                    Diagnostic::error(
                        codes::CHANNEL_GRAD,
                        format!(
                            "`@grad` on `{}`, which is channelled over `{axis}`",
                            name.name
                        ),
                        grad_span,
                        "gradients are not returned for channelled inputs",
                    )
                    .with_secondary(ty.span, "channelled input")
                    .with_hint(
                        "differentiate with respect to an unchannelled input (e.g. `logp`); \
                         channel inputs are rewards, scores and other data",
                    ),
                );
                None
            }
            _ => grad,
        };
        if grad.is_some() && state.first_grad.is_none() {
            state.first_grad = grad;
        }
        if declares.is_some() {
            self.report(
                Diagnostic::error(
                    codes::INVALID_TYPE,
                    "only `id[…]` inputs declare spaces",
                    ty.span,
                    "not an id input",
                )
                .with_hint("write `input name: id[seq] as grp`"),
            );
        }
        let default_value = match default {
            Some(expr) => match (self.expr(expr), elem) {
                (Value::Num(n), Elem::F32) => Some(n),
                (Value::Bool(b), Elem::Bool) => Some(f64::from(u8::from(b))),
                (Value::Poison, _) => None,
                (other, _) => {
                    let found = self.type_name(&other);
                    self.report(
                        Diagnostic::error(codes::BAD_INPUT_DEFAULT, format!("the default of `{}` must be a compile-time {}, found `{found}`", name.name, super::elem_name(elem)), expr.span, "not a compile-time value of the input's type")
                            .with_secondary(ty.span, "input type")
                            .with_hint("use a literal such as `1.0`; it fills the whole tensor when the batch lacks it"),
                    );
                    None
                }
            },
            None => None,
        };
        let Some(space) = space else {
            self.define(name, Value::Poison, BindingKind::Input);
            return;
        };
        if let Some((axis, count)) = channels {
            self.lower_channel_input(name, elem, space, default_value, (axis, count), ty.span);
            return;
        }
        self.prog.inputs.push(Input {
            name: name.name.clone(),
            kind: InputKind::Value {
                elem,
                space,
                default: default_value,
                grad: grad.is_some() && elem == Elem::F32,
            },
            span: src_span(name.span),
            channel: None,
        });
        let value = self.emit(Op::Input(input_id), elem, Sp::Known(space), name.span);
        self.define(name, value, BindingKind::Input);
    }

    /// `input rewards: f32[seq, chan]`: one IR input per channel (`rewards[0]`, …), each
    /// reading one column of the batch tensor `rewards`.
    fn lower_channel_input(
        &mut self,
        name: &Ident,
        elem: Elem,
        space: SpaceId,
        default: Option<f64>,
        (axis, count): (String, usize),
        ty_span: Span,
    ) {
        if space == SpaceId::BATCH {
            self.report(
                Diagnostic::error(
                    codes::INVALID_TYPE,
                    format!("channelled input `{}` needs a row space", name.name),
                    ty_span,
                    "`batch` has one element",
                )
                .with_hint(format!(
                    "write `f32[seq, {axis}]` or `f32[tok, {axis}]`; per-channel scalars are \
                     params: `param w: f32[{axis}] = 1.0`"
                )),
            );
            self.define(name, Value::Poison, BindingKind::Input);
            return;
        }
        let mut parts = Vec::with_capacity(count);
        for k in 0..count {
            let id = rlobj_ir::InputId(self.prog.inputs.len() as u32);
            self.prog.inputs.push(Input {
                name: format!("{}[{k}]", name.name),
                kind: InputKind::Value {
                    elem,
                    space,
                    default,
                    grad: false,
                },
                span: src_span(name.span),
                channel: Some(ChannelSlot {
                    tensor: name.name.clone(),
                    axis: axis.clone(),
                    index: k as u32,
                    count: count as u32,
                }),
            });
            parts.push(self.emit(Op::Input(id), elem, Sp::Known(space), name.span));
        }
        self.define(name, Value::Chan(Chan { axis, parts }), BindingKind::Input);
    }

    fn lower_id_input(
        &mut self,
        name: &Ident,
        indexed: &Ident,
        grad: Option<Span>,
        declares: Option<&SpaceDecl>,
        default: Option<&Expr>,
        ty_span: Span,
    ) {
        self.define(name, Value::Poison, BindingKind::Ids);
        if let Some(grad_span) = grad {
            self.report(
                Diagnostic::error(
                    codes::GRAD_NOT_F32,
                    format!("`@grad` on `{}`, which is an id input", name.name),
                    grad_span,
                    "gradients exist only for f32 inputs",
                )
                .with_secondary(ty_span, "this input holds ids"),
            );
        }
        if let Some(default) = default {
            self.report(
                Diagnostic::error(
                    codes::BAD_INPUT_DEFAULT,
                    "id inputs cannot have a default",
                    default.span,
                    "remove this default",
                )
                .with_hint("every row's ids must come from the batch"),
            );
        }
        let is_tok = match indexed.name.as_str() {
            "tok" => true,
            "seq" => false,
            other => {
                self.report(
                    Diagnostic::error(codes::BAD_ID_SPACE, format!("`id[{other}]`: id inputs index `tok` (segments in rows) or `seq` (groups of rows)"), indexed.span, "expected `tok` or `seq`")
                        .with_hint("use `id[seq] as grp in parent` to nest groups"),
                );
                return;
            }
        };
        let space_name = declares.map_or(name, |d| &d.name);
        let taken = self.lookup_space(&space_name.name).is_some();
        if taken {
            let previous = self.space_decl_spans.get(&space_name.name).copied();
            let mut diagnostic = Diagnostic::error(
                codes::SPACE_REDEFINED,
                format!("the space `{}` is already declared", space_name.name),
                space_name.span,
                "declared again",
            );
            diagnostic = match previous {
                Some(span) => diagnostic.with_secondary(span, "first declared here"),
                None => diagnostic.with_note(format!("`{}` is a built-in space", space_name.name)),
            };
            self.report(diagnostic.with_hint("choose another name with `as name`"));
            return;
        }
        let parent = match (declares.and_then(|d| d.parent.as_ref()), is_tok) {
            (None, _) => SpaceId::BATCH,
            (Some(parent), true) => {
                self.report(
                    Diagnostic::error(
                        codes::BAD_SPACE_PARENT,
                        "token segment spaces always nest in `seq`",
                        parent.span,
                        "`in …` is not allowed here",
                    )
                    .with_hint("remove `in …`; `in` is for `id[seq]` group spaces"),
                );
                return;
            }
            (Some(parent), false) => match self.lookup_space(&parent.name) {
                Some(Sp::Known(space))
                    if space == SpaceId::BATCH
                        || matches!(
                            self.prog.spaces[space.index()].kind,
                            SpaceKind::RowGroups { .. }
                        ) =>
                {
                    space
                }
                _ => {
                    self.report(
                        Diagnostic::error(codes::BAD_SPACE_PARENT, format!("`{}` is not a group space declared before", parent.name), parent.span, "expected a group space")
                            .with_hint("the parent must be `batch` or a space declared earlier by an `id[seq]` input"),
                    );
                    return;
                }
            },
        };
        let input = rlobj_ir::InputId(self.prog.inputs.len() as u32);
        let space = SpaceId(self.prog.spaces.len() as u32);
        let kind = if is_tok {
            SpaceKind::RowSegments { input }
        } else {
            SpaceKind::RowGroups { input, parent }
        };
        self.prog.spaces.push(Space {
            name: space_name.name.clone(),
            kind,
        });
        self.prog.inputs.push(Input {
            name: name.name.clone(),
            kind: InputKind::Ids { space },
            span: src_span(name.span),
            channel: None,
        });
        self.objective_spaces.insert(space_name.name.clone(), space);
        self.space_decl_spans
            .insert(space_name.name.clone(), space_name.span);
    }

    fn lower_param(&mut self, name: &Ident, ty: &TypeExpr, default: &Expr) {
        // `f32[chan]` or `f32[batch, chan]`: one runtime scalar per channel.
        let axis = match (&ty.kind, &ty.channel) {
            (TypeKind::F32(Some(s)) | TypeKind::Bool(Some(s)), None)
                if self.names_channel_const(s) =>
            {
                Some(s)
            }
            (TypeKind::F32(Some(s)) | TypeKind::Bool(Some(s)), Some(axis)) if s.name == "batch" => {
                Some(axis)
            }
            _ => None,
        };
        let channels = match axis {
            Some(axis) => match self.declare_channel_axis(axis) {
                Some(count) => Some((axis.name.clone(), count)),
                None => {
                    self.define(name, Value::Poison, BindingKind::RuntimeParam);
                    return;
                }
            },
            None => None,
        };
        let elem = match &ty.kind {
            _ if channels.is_some() => Some(if matches!(ty.kind, TypeKind::Bool(_)) {
                Elem::Bool
            } else {
                Elem::F32
            }),
            TypeKind::F32(None) => Some(Elem::F32),
            TypeKind::Bool(None) => Some(Elem::Bool),
            TypeKind::F32(Some(s)) if s.name == "batch" => Some(Elem::F32),
            TypeKind::Bool(Some(s)) if s.name == "batch" => Some(Elem::Bool),
            TypeKind::Error => None,
            _ => {
                self.report(
                    Diagnostic::error(
                        codes::BAD_PARAM_TYPE,
                        format!("param `{}` must be a scalar `f32` or `bool`", name.name),
                        ty.span,
                        "not a runtime scalar",
                    )
                    .with_hint("per-token values are inputs; compile-time strings are `const`s"),
                );
                None
            }
        };
        let value = self.expr(default);
        let Some(elem) = elem else {
            self.define(name, Value::Poison, BindingKind::RuntimeParam);
            return;
        };
        let number = match (&value, elem) {
            (Value::Num(n), Elem::F32) => Some(*n),
            (Value::Bool(b), Elem::Bool) => Some(f64::from(u8::from(*b))),
            (Value::Poison, _) => None,
            (other, _) => {
                self.report_const_mismatch(name, other, default.span, ty.span, elem);
                None
            }
        };
        if let Some((axis, count)) = channels {
            let mut parts = Vec::with_capacity(count);
            for k in 0..count {
                let param_id = rlobj_ir::ParamId(self.prog.params.len() as u32);
                self.prog.params.push(Param {
                    name: format!("{}[{k}]", name.name),
                    elem,
                    default: number.unwrap_or(0.0),
                    span: src_span(name.span),
                });
                let batch = Sp::Known(SpaceId::BATCH);
                parts.push(self.emit(Op::Param(param_id), elem, batch, name.span));
            }
            self.define(
                name,
                Value::Chan(Chan { axis, parts }),
                BindingKind::RuntimeParam,
            );
            return;
        }
        let param_id = rlobj_ir::ParamId(self.prog.params.len() as u32);
        self.prog.params.push(Param {
            name: name.name.clone(),
            elem,
            default: number.unwrap_or(0.0),
            span: src_span(name.span),
        });
        let value = self.emit(
            Op::Param(param_id),
            elem,
            Sp::Known(SpaceId::BATCH),
            name.span,
        );
        self.define(name, value, BindingKind::RuntimeParam);
    }

    fn report_const_mismatch(
        &mut self,
        name: &Ident,
        value: &Value,
        span: Span,
        ty_span: Span,
        elem: Elem,
    ) {
        let found = self.type_name(value);
        let (code, label) = match value {
            Value::Tensor(_) | Value::Chan(_) => {
                (codes::CONST_NOT_COMPILE_TIME, "not known at compile time")
            }
            _ => (codes::CONST_TYPE_MISMATCH, "wrong type"),
        };
        self.report(
            Diagnostic::error(
                code,
                format!(
                    "`{}` needs a compile-time `{}`, found `{found}`",
                    name.name,
                    super::elem_name(elem)
                ),
                span,
                label,
            )
            .with_secondary(ty_span, "declared type")
            .with_hint(
                "defaults are literals or consts; runtime values are not known when compiling",
            ),
        );
    }

    fn lower_const(
        &mut self,
        name: &Ident,
        ty: Option<&TypeExpr>,
        value_expr: &Expr,
        overrides: &[(String, String)],
    ) {
        let mut value = self.expr(value_expr);
        if let Value::Tensor(_) | Value::Chan(_) = value {
            self.report(
                Diagnostic::error(codes::CONST_NOT_COMPILE_TIME, format!("const `{}` is not known at compile time", name.name), value_expr.span, "a runtime value")
                    .with_hint("a const is a literal or built from other consts; use `param` for a runtime scalar"),
            );
            value = Value::Poison;
        }
        if let Some(ty) = ty {
            value = self.check_const_type(name, ty, value, value_expr.span);
        }
        if let Some((_, text)) = overrides.iter().rev().find(|(n, _)| *n == name.name) {
            value = self.apply_override(name, ty, &value, text);
        }
        let recorded = match &value {
            Value::Num(n) => Some(ConstValue::F32(*n)),
            Value::Bool(b) => Some(ConstValue::Bool(*b)),
            Value::Str(s) => Some(ConstValue::Str(s.clone())),
            _ => None,
        };
        if let Some(recorded) = recorded {
            self.prog.consts.push((name.name.clone(), recorded));
        }
        self.define(name, value, BindingKind::Const);
    }

    fn check_const_type(&mut self, name: &Ident, ty: &TypeExpr, value: Value, span: Span) -> Value {
        let ok = match (&ty.kind, &value) {
            (_, Value::Poison) | (TypeKind::Error, _) => true,
            (TypeKind::F32(None), Value::Num(_))
            | (TypeKind::Bool(None), Value::Bool(_))
            | (TypeKind::Str, Value::Str(_)) => true,
            (TypeKind::Enum(options), Value::Str(s)) => {
                if !options.iter().any(|(o, _)| o == s) {
                    self.report_not_in_enum(s, options, span, ty.span);
                    return Value::Poison;
                }
                true
            }
            (TypeKind::F32(Some(_)) | TypeKind::Bool(Some(_)) | TypeKind::Id(_), _) => {
                self.report(
                    Diagnostic::error(
                        codes::INVALID_TYPE,
                        "a const is a single compile-time value and has no space",
                        ty.span,
                        "not a const type",
                    )
                    .with_hint("write `const k: f32 = 3`, or use an input for per-element values"),
                );
                return Value::Poison;
            }
            _ => false,
        };
        if ok {
            return value;
        }
        let found = self.type_name(&value);
        self.report(
            Diagnostic::error(
                codes::CONST_TYPE_MISMATCH,
                format!("const `{}` does not match its declared type", name.name),
                span,
                format!("this is `{found}`"),
            )
            .with_secondary(ty.span, "declared type"),
        );
        Value::Poison
    }

    /// Parses `--set name=text` for a const, by the const's type.
    fn apply_override(
        &mut self,
        name: &Ident,
        ty: Option<&TypeExpr>,
        current: &Value,
        text: &str,
    ) -> Value {
        let parsed = match (ty.map(|t| &t.kind), current) {
            (Some(TypeKind::Enum(options)), _) => {
                if options.iter().any(|(o, _)| o == text) {
                    Ok(Value::Str(text.to_string()))
                } else {
                    let allowed: Vec<String> = options.iter().map(|(o, _)| o.clone()).collect();
                    Err(format!("expected one of {}", allowed.join(", ")))
                }
            }
            (Some(TypeKind::Str), _) | (None, Value::Str(_)) => Ok(Value::Str(text.to_string())),
            (Some(TypeKind::Bool(_)), _) | (None, Value::Bool(_)) => match text {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err("expected `true` or `false`".to_string()),
            },
            _ => text
                .trim()
                .parse::<f64>()
                .map(Value::Num)
                .map_err(|_| "expected a number".to_string()),
        };
        match parsed {
            Ok(value) => value,
            Err(expected) => {
                self.report(
                    Diagnostic::error(
                        codes::BAD_OVERRIDE,
                        format!("cannot set `{}={text}`: {expected}", name.name),
                        name.span,
                        "const declared here",
                    )
                    .with_hint("the override must have the const's type"),
                );
                Value::Poison
            }
        }
    }

    fn lower_state(&mut self, name: &Ident, ty: &TypeExpr, init: &Expr) {
        let channelled = match (&ty.kind, &ty.channel) {
            (_, Some(axis)) => Some(axis),
            (TypeKind::F32(Some(s)), None) if self.names_channel_const(s) => Some(s),
            _ => None,
        };
        if let Some(axis) = channelled {
            self.report(
                Diagnostic::error(
                    codes::CHANNEL_NOT_REDUCED,
                    format!("state `{}` has a channel axis `{}`", name.name, axis.name),
                    ty.span,
                    "states are single numbers",
                )
                .with_hint(format!(
                    "keep one state per quantity, and reduce channelled values with sum[{}](…) before updating it",
                    axis.name
                )),
            );
            self.define(name, Value::Poison, BindingKind::State(StateId(u32::MAX)));
            return;
        }
        let scalar = matches!(&ty.kind, TypeKind::F32(None))
            || matches!(&ty.kind, TypeKind::F32(Some(s)) if s.name == "batch");
        if !scalar {
            self.report(
                Diagnostic::error(
                    codes::BAD_STATE_TYPE,
                    format!("state `{}` must be an `f32` scalar", name.name),
                    ty.span,
                    "expected `f32`",
                )
                .with_hint(
                    "persistent state is one number per objective (a coefficient, a dual variable)",
                ),
            );
        }
        let value = self.expr(init);
        let init_value = match &value {
            Value::Num(n) => *n,
            Value::Poison => 0.0,
            _ if !scalar => 0.0,
            other => {
                self.report_const_mismatch(name, other, init.span, ty.span, Elem::F32);
                0.0
            }
        };
        let state_id = StateId(self.prog.states.len() as u32);
        self.prog.states.push(State {
            name: name.name.clone(),
            init: init_value,
            span: src_span(name.span),
        });
        let value = self.emit(
            Op::State(state_id),
            Elem::F32,
            Sp::Known(SpaceId::BATCH),
            name.span,
        );
        self.define(name, value, BindingKind::State(state_id));
    }

    fn lower_update(&mut self, name: &Ident, value: &Expr, state: &mut ObjectiveState) {
        let target = self.lookup(&name.name).map(|b| (b.kind.clone(), b.span));
        let state_id = match target {
            Some((BindingKind::State(id), _)) => id,
            Some((_, defined)) => {
                self.report(
                    Diagnostic::error(
                        codes::UPDATE_NOT_STATE,
                        format!("`{}` is not a state", name.name),
                        name.span,
                        "only states can be updated",
                    )
                    .with_secondary(defined, "defined here")
                    .with_hint(format!("declare it as `state {}: f32 = 0.0`", name.name)),
                );
                return;
            }
            None => {
                self.report(
                    Diagnostic::error(
                        codes::UPDATE_NOT_STATE,
                        format!("`{}` is not a declared state", name.name),
                        name.span,
                        "unknown state",
                    )
                    .with_hint(format!(
                        "declare it first: `state {}: f32 = 0.0`",
                        name.name
                    )),
                );
                return;
            }
        };
        if let Some(previous) = state.updated.get(&name.name) {
            let previous = *previous;
            self.report(
                Diagnostic::error(
                    codes::STATE_UPDATED_TWICE,
                    format!("state `{}` is updated twice", name.name),
                    name.span,
                    "second update",
                )
                .with_secondary(previous, "first update")
                .with_hint("combine both into one `update` expression"),
            );
            return;
        }
        state.updated.insert(name.name.clone(), name.span);
        let result = self.expr(value);
        if let Some(node) = self.batch_scalar(&result, value.span, ScalarUse::Update) {
            self.prog.updates.push((state_id, node));
        }
    }

    /// A loss, metric or update value: an f32 batch scalar (metrics accept bools as 0/1).
    fn batch_scalar(
        &mut self,
        value: &Value,
        span: Span,
        usage: ScalarUse,
    ) -> Option<rlobj_ir::NodeId> {
        let (not_scalar, wrong_elem, what) = match usage {
            ScalarUse::Loss => (codes::LOSS_NOT_SCALAR, codes::LOSS_NOT_F32, "the loss"),
            ScalarUse::Metric => (
                codes::METRIC_NOT_SCALAR,
                codes::METRIC_NOT_SCALAR,
                "a metric",
            ),
            ScalarUse::Update => (
                codes::UPDATE_NOT_SCALAR,
                codes::UPDATE_NOT_SCALAR,
                "a state update",
            ),
        };
        if self.reject_channelled(value, span, what) {
            return None;
        }
        let value = if usage == ScalarUse::Metric {
            self.bool_to_f32(value.clone(), span)
        } else {
            value.clone()
        };
        match &value {
            Value::Poison => return None,
            Value::Str(_) | Value::AnyStr => {
                self.report_string_as_value(span);
                return None;
            }
            _ => {}
        }
        let found = self.type_name(&value);
        if Self::elem_of(&value) != Some(Elem::F32) {
            self.report(
                Diagnostic::error(
                    wrong_elem,
                    format!("{what} must be `f32`, found `{found}`"),
                    span,
                    "expected f32",
                )
                .with_hint("convert with `float(…)`"),
            );
            return None;
        }
        if Self::space_of(&value) != Some(Sp::Known(SpaceId::BATCH)) {
            let space = Self::space_of(&value).map_or("?".to_string(), |s| self.space_name(s));
            self.report(
                Diagnostic::error(
                    not_scalar,
                    format!("{what} must be a batch scalar, found `{found}`"),
                    span,
                    format!("this is one value per `{space}` element"),
                )
                .with_hint("reduce it, e.g. `mean[batch](…)`"),
            );
            return None;
        }
        self.node_of(&value, span)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScalarUse {
    Loss,
    Metric,
    Update,
}
